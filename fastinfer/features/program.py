"""A compiled feature program: the DAG laid out for the interpreter kernel, plus its identity.

``FeatureProgram.build(graph, features)`` assigns a register to every value, a ring (a
power-of-two history in ``fstate``) to every series some op reads lagged, state slots to
every stateful op, and emits one ``code`` row per op in creation order, a PUSH right after
each series that has a ring. ``hash`` identifies the program (kernel version, instructions,
constants, feature and external names, user primitives): a saved state is only ever loaded
into the program that wrote it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..kernels import feature_program as K
from .graph import OHLCV, Graph, Node, Ref

# Bump when the meaning of any instruction or state slot changes: old states are then refused.
KERNEL_VERSION = 1


def _ring_width(lag: int) -> int:
    """A power of two holding the current value and ``lag`` older ones."""
    width = 1
    while width < lag + 1:
        width *= 2
    return width


@dataclass(frozen=True, eq=False)
class FeatureProgram:
    """Everything both executions need: the nodes (batch) and the instruction arrays (incremental).

    Attributes:
        features: output names, in output column order.
        externals: names of the external columns, in the order ``update`` takes them.
        nodes: the DAG (``graph.Node``), in execution order; ``outputs[j]`` is feature j's Ref.
        warmups: first valid bar index of each feature (0-based, valid bars).
        code, fparams: one instruction per row (``fastinfer.kernels.feature_program``).
        feature_regs: register of each feature.
        reg_init, fstate_init: initial register / float-state column (constants, NaN rings).
        n_int: int state slots per symbol.
        user_*: the user primitives' callbacks, layout, parameters and initial states.
        hash: sha256 hex of the program's identity.
    """

    features: tuple[str, ...]
    externals: tuple[str, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[Ref, ...]
    warmups: tuple[int, ...]
    code: np.ndarray
    fparams: np.ndarray
    feature_regs: np.ndarray
    reg_init: np.ndarray
    fstate_init: np.ndarray
    n_int: int
    user_addr: np.ndarray
    user_meta: np.ndarray
    user_params: np.ndarray
    user_init: np.ndarray
    ustate_width: int
    hash: str
    registers: dict[Ref, int] = field(repr=False)
    user_tokens: tuple[str, ...] = ()
    # What it was compiled from (a saved state recompiles it from these, then compares hashes).
    definitions: Any = field(default=None, repr=False)
    interval_minutes: float | None = None
    bars_per_day: int | None = None

    @property
    def warmup(self) -> int:
        """The longest warm-up: bars before every feature can be finite (``max(warmups)``)."""
        return max(self.warmups, default=0)

    @property
    def n_ops(self) -> int:
        return int(self.code.shape[0])

    def explain(self) -> str:
        """The instructions, one per line, and which register each feature reads."""
        lines = [f"%{k} = {node.describe()}" for k, node in enumerate(self.nodes) if node.kind != "input"]
        lines += [
            f"{name} <- %{ref.node}" + (f".{ref.port}" if ref.port else "")
            for name, ref in zip(self.features, self.outputs)
        ]
        return "\n".join(lines)

    @classmethod
    def build(
        cls,
        graph: Graph,
        features: tuple[str, ...],
        outputs: tuple[Ref, ...],
        users: dict[int, Any] | None = None,
        *,
        definitions: Any = None,
        interval_minutes: float | None = None,
        bars_per_day: int | None = None,
    ) -> FeatureProgram:
        """Lay ``graph`` out. ``users`` maps a user node index to its registered primitive
        (``fastinfer.features.primitives.UserPrimitive``); the keywords record what the program
        was compiled from."""
        users = users or {}
        nodes = tuple(graph.nodes)
        n_inputs = len(OHLCV) + len(graph.externals)

        # Registers: inputs (fixed rows), then constants, then every op output.
        registers: dict[Ref, int] = {}
        reg_values: list[float] = []
        for k, node in enumerate(nodes):
            if node.kind == "input":
                registers[Ref(k)] = len(reg_values)
                reg_values.append(np.nan)
        assert len(reg_values) == n_inputs
        for k, node in enumerate(nodes):
            if node.kind == "const":
                registers[Ref(k)] = len(reg_values)
                reg_values.append(node.value)
        for k, node in enumerate(nodes):
            if node.kind in ("op", "user"):
                for p in range(node.n_out):
                    registers[Ref(k, p)] = len(reg_values)
                    reg_values.append(np.nan)

        # Rings: every series read lagged gets one, wide enough for its deepest reader.
        lags: dict[Ref, int] = {}
        for node in nodes:
            lag = node.ring_lag()
            if lag:
                src = node.inputs[0]
                lags[src] = max(lags.get(src, 0), lag)
            if node.kind == "op" and node.op == K.OP_MOMENTS:  # also reads x_{t-1} (flat test)
                lags[node.inputs[0]] = max(lags[node.inputs[0]], 1)
        f_init: list[float] = []
        rings: dict[Ref, tuple[int, int]] = {}
        for src in sorted(lags):
            width = _ring_width(lags[src])
            rings[src] = (len(f_init), width - 1)
            f_init.extend([np.nan] * width)

        rows: list[list[int]] = []
        fp_rows: list[list[float]] = []
        n_int = 0
        user_rows: list[tuple[int, Any, Node]] = []

        def push(ref: Ref) -> None:
            if ref in rings:
                row = [-1] * K.N_CODE
                row[K.C_OP] = K.OP_PUSH
                row[K.C_IN0] = registers[ref]
                row[K.C_RING], row[K.C_MASK] = rings[ref]
                rows.append(row)
                fp_rows.append([0.0] * K.N_FPARAMS)

        for k, node in enumerate(nodes):
            if node.kind == "input":
                push(Ref(k))
            if node.kind not in ("op", "user"):
                continue
            row = [-1] * K.N_CODE
            row[K.C_OP] = node.op
            for p in range(node.n_out):
                row[K.C_OUT0 + p] = registers[Ref(k, p)]
            for q, ref in enumerate(node.inputs[:3]):
                row[K.C_IN0 + q] = registers[ref]
            fp = [0.0] * K.N_FPARAMS
            if node.kind == "op":
                for q, value in enumerate(node.iparams):
                    row[K.C_P0 + q] = value
                for q, value in enumerate(node.fparams):
                    fp[q] = value
                if node.ring_lag():
                    row[K.C_RING], row[K.C_MASK] = rings[node.inputs[0]]
                window = node.iparams[0] if node.iparams else 0
                n_f, n_i = K.state_width(node.op, window)
            else:
                row[K.C_P0] = len(user_rows)
                user_rows.append((k, users[k], node))
                n_f, n_i = K.state_width(K.OP_USER, 0)
            row[K.C_F] = len(f_init)
            f_init.extend([0.0] * n_f)
            row[K.C_I] = n_int
            n_int += n_i
            rows.append(row)
            fp_rows.append(fp)
            for p in range(node.n_out):
                push(Ref(k, p))

        # User primitives: per-symbol state rows of their declared widths in ``ustate``.
        n_user = len(user_rows)
        n_par = max((len(node.fparams) for _, _, node in user_rows), default=0)
        widths = [prim.state_width(node.fparams) for _, prim, node in user_rows]
        user_meta = np.zeros((n_user, 4), dtype=np.int64)
        user_params = np.zeros((n_user, max(n_par, 1)))
        user_init = np.zeros((n_user, max(widths, default=1) or 1))
        user_addr = np.zeros(n_user, dtype=np.int64)
        offset = 0
        tokens = []
        for u, ((_, prim, node), width) in enumerate(zip(user_rows, widths)):
            user_meta[u] = (offset, width, len(node.inputs), prim.warmup(node.fparams))
            user_params[u, : len(node.fparams)] = node.fparams
            user_init[u, :width] = prim.initial_state(node.fparams)
            user_addr[u] = prim.address
            tokens.append(prim.token)
            offset += width

        code = np.array(rows, dtype=np.int64).reshape(-1, K.N_CODE)
        fparams = np.array(fp_rows, dtype=np.float64).reshape(-1, K.N_FPARAMS)
        feature_regs = np.array([registers[r] for r in outputs], dtype=np.int64)
        reg_init = np.array(reg_values, dtype=np.float64)
        identity = {
            "kernel": KERNEL_VERSION,
            "features": list(features),
            "externals": list(graph.externals),
            "code": code.tolist(),
            "fparams": [float(x).hex() for x in fparams.ravel()],
            "registers": [float(x).hex() for x in reg_init],
            "feature_regs": feature_regs.tolist(),
            "n_float": len(f_init),
            "n_int": n_int,
            "user": [tokens, user_meta.tolist(), [float(x).hex() for x in user_params.ravel()]],
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return cls(
            features=tuple(features),
            externals=tuple(graph.externals),
            nodes=nodes,
            outputs=tuple(outputs),
            warmups=tuple(graph.warmup(r) for r in outputs),
            code=code,
            fparams=fparams,
            feature_regs=feature_regs,
            reg_init=reg_init,
            fstate_init=np.array(f_init, dtype=np.float64),
            n_int=n_int,
            user_addr=user_addr,
            user_meta=user_meta,
            user_params=user_params,
            user_init=user_init,
            ustate_width=offset,
            hash=digest,
            registers=registers,
            user_tokens=tuple(tokens),
            definitions=definitions,
            interval_minutes=interval_minutes,
            bars_per_day=bars_per_day,
        )
