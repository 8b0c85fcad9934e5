"""The feature DAG: kernel operations with shared sub-expressions (hash-consing).

Every value a program computes is a ``Ref`` (a node and one of its outputs). ``Graph.op``
returns the existing node when the same operation was already asked for on the same inputs
with the same parameters, so ten features that read ``log_return(close, 1)`` compute it once.
Nodes are created after their inputs, so creation order is a valid execution order.

Each node also knows its warm-up per output: the first bar index (0-based, counting a
symbol's valid bars) from which it is finite when its inputs are finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from ..kernels import feature_program as K
from .errors import FeatureDefinitionError

OHLCV = ("open", "high", "low", "close", "volume")
MAX_NODES = 20_000  # a definitions file is small; far beyond any real feature set
# State values (rings, sums, min/max deques) one symbol keeps: 32 MiB of float64 per symbol.
# Each window is bounded, but a small file could still ask for thousands of them.
MAX_STATE_WORDS = 1 << 22

# Ops reading their first input's history, and how far back (in bars) for a window/lag p.
_RING_LAG = {
    K.OP_LAG: lambda p: p,
    K.OP_DIFF: lambda p: p,
    K.OP_PCT: lambda p: p,
    K.OP_LOGRET: lambda p: p,
    K.OP_SUM: lambda p: p,
    K.OP_MOMENTS: lambda p: p,
    K.OP_MIN: lambda p: p - 1,
    K.OP_MAX: lambda p: p - 1,
    K.OP_WMA: lambda p: p,
    K.OP_MACD: None,  # the slow window: iparams[1] - 1 (see ring_lag)
    K.OP_CCI: lambda p: p - 1,
}
_OUTPUTS = {K.OP_MOMENTS: 2, K.OP_DMI: 3}
OP_NAMES = {getattr(K, name): name[3:].lower() for name in dir(K) if name.startswith("OP_")}  # opcode -> "sum"


class Ref(NamedTuple):
    """Output ``port`` of node ``node``."""

    node: int
    port: int = 0


@dataclass(frozen=True)
class Node:
    """One kernel operation. ``kind`` is "input", "const", "op" or "user"."""

    kind: str
    op: int  # opcode for "op" / "user" nodes, -1 otherwise
    inputs: tuple[Ref, ...] = ()
    iparams: tuple[int, ...] = ()
    fparams: tuple[float, ...] = ()
    n_out: int = 1
    name: str = ""  # input name, or the registered name of a user primitive
    value: float = math.nan  # constants
    warmups: tuple[int, ...] = (0,)

    def ring_lag(self) -> int:
        """How many bars back this node reads its first input (0: it keeps no ring)."""
        if self.kind == "op" and self.op == K.OP_MACD:
            return self.iparams[1] - 1
        lag = _RING_LAG.get(self.op) if self.kind == "op" else None
        return lag(self.iparams[0]) if lag else 0

    def describe(self) -> str:
        if self.kind == "input":
            return self.name
        if self.kind == "const":
            return repr(self.value)
        what = self.name if self.kind == "user" else OP_NAMES[self.op]
        args = [f"%{r.node}" + (f".{r.port}" if r.port else "") for r in self.inputs]
        args += [str(p) for p in self.iparams] + [repr(p) for p in self.fparams]
        return f"{what}({', '.join(args)})"


@dataclass
class Graph:
    """A DAG under construction. ``externals`` are the names of the per-bar external columns."""

    externals: tuple[str, ...] = ()
    nodes: list[Node] = field(default_factory=list)
    _index: dict[tuple, int] = field(default_factory=dict)
    state_words: int = 0  # an upper bound of the per-symbol state of the nodes so far

    def __post_init__(self):
        for name in (*OHLCV, *self.externals):
            self._add(("input", name), Node("input", -1, name=name))

    def _add(self, key: tuple, node: Node) -> int:
        found = self._index.get(key)
        if found is not None:
            return found
        if len(self.nodes) >= MAX_NODES:
            raise FeatureDefinitionError(f"the features need more than {MAX_NODES} operations")
        self.nodes.append(node)
        self._index[key] = len(self.nodes) - 1
        return len(self.nodes) - 1

    def input(self, name: str) -> Ref:
        return Ref(self._index[("input", name)])

    def const(self, value: float) -> Ref:
        value = float(value)
        # float.hex tells -0.0 from 0.0 and is exact; every NaN is one constant
        key = ("const", "nan" if math.isnan(value) else value.hex())
        return Ref(self._add(key, Node("const", -1, value=value)))

    def warmup(self, ref: Ref) -> int:
        return self.nodes[ref.node].warmups[ref.port]

    def op(
        self, op: int, inputs: tuple[Ref, ...], iparams: tuple[int, ...] = (), fparams: tuple[float, ...] = ()
    ) -> tuple[Ref, ...]:
        """The node computing ``op`` on ``inputs``: one Ref per output."""
        inputs = tuple(inputs)
        iparams = tuple(int(p) for p in iparams)
        fparams = tuple(float(p) for p in fparams)
        key = ("op", op, inputs, iparams, tuple(p.hex() for p in fparams))
        n_out = _OUTPUTS.get(op, 1)
        node = Node("op", op, inputs, iparams, fparams, n_out, warmups=self._warmups(op, inputs, iparams))
        if key not in self._index:
            n_float, n_int = K.state_width(op, iparams[0] if iparams else 0)
            self.state_words += n_float + n_int + 2 * node.ring_lag()  # a ring is a power of two >= lag + 1
            if self.state_words > MAX_STATE_WORDS:
                raise FeatureDefinitionError(
                    f"the features need more than {MAX_STATE_WORDS:,} state values per symbol "
                    f"({MAX_STATE_WORDS * 8 >> 20} MiB): too many long windows"
                )
        index = self._add(key, node)
        return tuple(Ref(index, p) for p in range(n_out))

    def op1(self, op: int, *inputs: Ref, iparams: tuple[int, ...] = (), fparams: tuple[float, ...] = ()) -> Ref:
        """``op`` with one output."""
        return self.op(op, inputs, iparams, fparams)[0]

    def user(self, name: str, token: str, inputs: tuple[Ref, ...], params: tuple[float, ...], warmup: int) -> Ref:
        """A node of the registered primitive ``name`` (``token`` identifies its registration)."""
        key = ("user", name, token, tuple(inputs), tuple(float(p).hex() for p in params))
        w = max(self.warmup(r) for r in inputs) + warmup
        node = Node("user", K.OP_USER, tuple(inputs), (), tuple(float(p) for p in params), 1, name, warmups=(w,))
        return Ref(self._add(key, node))

    def _warmups(self, op: int, inputs: tuple[Ref, ...], iparams: tuple[int, ...]) -> tuple[int, ...]:
        w = max((self.warmup(r) for r in inputs), default=0)
        if op in (K.OP_LAG, K.OP_DIFF, K.OP_PCT, K.OP_LOGRET):
            return (w + iparams[0],)
        if op in (K.OP_SUM, K.OP_MIN, K.OP_MAX, K.OP_WMA, K.OP_EMA, K.OP_WILDER, K.OP_CCI):
            return (w + iparams[0] - 1,)
        if op == K.OP_MOMENTS:
            return (w + iparams[0] - 1,) * 2
        if op == K.OP_MACD:
            return (w + iparams[1] - 1,)
        if op == K.OP_DMI:
            n = iparams[0]
            return (n, n, 2 * n - 1)
        return (w,)
