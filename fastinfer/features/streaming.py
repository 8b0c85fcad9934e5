"""``StreamingFeatures``: a compiled feature program run incrementally, one jitted call per bar.

State is contiguous arrays laid out (slot, n_symbols) (see ``fastinfer.kernels.feature_program``);
``update`` validates its inputs (before anything changes), then makes a single call into the
interpreter, which allocates nothing. ``state_dict`` is JSON-safe and versioned: it carries
the feature names and definitions, so ``from_state_dict`` recompiles the program and refuses
a state whose program hash differs (other definitions, parameters or kernel version).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import state as _state
from ..errors import FeatureBuildError, StateError
from ..kernels import feature_program as K
from .compiler import check_names, compile_features
from .definitions import FeatureDefinitions
from .errors import FeatureDefinitionError
from .graph import OHLCV
from .program import FeatureProgram
from .vocabulary import DEFAULT_FEATURES

if TYPE_CHECKING:
    import pandas as pd

STATE_VERSION = 2
STATE_KIND = "features"  # the fastinfer.state envelope's kind
_ARRAYS = ("registers", "float_state", "int_state", "bars", "user_state")
# Input dtypes a bar may carry: floats and integers (booleans, text, complex, times are refused).
_NUMERIC_KINDS = "fiu"
_KIND_NAMES = {
    "b": "bool",
    "c": "complex",
    "M": "datetime64",
    "m": "timedelta64",
    "O": "object",
    "U": "str",
    "S": "bytes",
}


class ProgramState(NamedTuple):
    """Per-symbol views of the state arrays, symbol first (row i is symbol i)."""

    registers: np.ndarray  # (n, n_registers): inputs, constants, every op's last output
    float_state: np.ndarray  # (n, n_float_slots): rings and sums
    int_state: np.ndarray  # (n, n_int_slots): run counters, deques
    bars: np.ndarray  # (n,): valid bars seen
    user_state: np.ndarray  # (n, width): user primitives' state rows

    @property
    def closes(self) -> np.ndarray:
        """Each symbol's last valid close, (n, 1)."""
        return self.registers[:, 3:4]


_F64 = np.dtype(np.float64)


def _ready(a: Any, shape: tuple[int, ...]) -> bool:
    """Already what the kernel takes: a C-contiguous float64 ndarray of ``shape`` (the hot path)."""
    return type(a) is np.ndarray and a.dtype is _F64 and a.shape == shape and a.flags.c_contiguous


def check_bar_input(a: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` as a C-contiguous float64 array of ``shape``; ``FeatureBuildError`` naming ``name``
    for text, objects, booleans, complex numbers, times or a wrong shape."""
    if _ready(a, shape):
        return a
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:
        raise FeatureBuildError(f"{name}: not an array of numbers ({str(e)[:100]})") from None
    if arr.dtype.kind not in _NUMERIC_KINDS:
        kind = _KIND_NAMES.get(arr.dtype.kind, str(arr.dtype))
        raise FeatureBuildError(f"{name}: expected float or int values, got {kind} ({arr.dtype})")
    if arr.shape != shape:
        raise FeatureBuildError(f"{name}: expected shape {shape} (one value per symbol), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


class StreamingFeatures:
    """Incremental features for many symbols: one jitted call per bar, no allocation per bar.

    ``StreamingFeatures(symbols, features=None, dtype=np.float32, *, definitions=None,
    interval_minutes=None, bars_per_day=None, program=None)``: ``features`` are names the
    vocabulary or ``definitions`` resolve (default ``DEFAULT_FEATURES``); or pass an already
    compiled ``program``. ``update`` returns ``out``, the same (n_symbols, n_features) array
    every bar (float32 by default; ``dtype=np.float64`` for full precision). ``stale[i]`` is
    True when symbol i's last bar was missing (its row then repeats its last features);
    ``n_bars[i]`` counts the valid bars it has seen. State round-trips through
    ``state_dict`` / ``from_state_dict`` (JSON-safe, versioned; save it with
    ``fastinfer.atomic.write_atomic_json``).
    """

    def __init__(
        self,
        symbols: Sequence[str],
        features: Sequence[str] | None = None,
        dtype: Any = np.float32,
        *,
        definitions: FeatureDefinitions | Mapping | None = None,
        interval_minutes: float | None = None,
        bars_per_day: int | None = None,
        program: FeatureProgram | None = None,
    ):
        if isinstance(symbols, str):
            raise FeatureBuildError(f"symbols must be a list of names, not the string {symbols!r}")
        self.symbols = tuple(str(s) for s in symbols)
        if not self.symbols:
            raise FeatureBuildError("no symbols given")
        if len(set(self.symbols)) != len(self.symbols):
            dup = sorted({s for s in self.symbols if self.symbols.count(s) > 1})
            raise FeatureBuildError(f"symbol(s) listed twice: {dup}")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise FeatureBuildError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if self.dtype not in (np.float32, np.float64):
            raise FeatureBuildError(f"dtype must be float32 or float64, got {self.dtype}")
        if definitions is not None and not isinstance(definitions, FeatureDefinitions):
            definitions = FeatureDefinitions.from_dict(definitions)
        if program is None:
            names = DEFAULT_FEATURES if features is None else check_names(features)
            program = compile_features(names, definitions, interval_minutes=interval_minutes, bars_per_day=bars_per_day)
        elif features is not None and tuple(features) != program.features:
            raise FeatureBuildError("features and program disagree: pass one of them")
        self.program = program
        # what the program was compiled from: a saved state recompiles it from these
        self.definitions = program.definitions
        self.interval_minutes = program.interval_minutes
        self.bars_per_day = program.bars_per_day
        self.features = program.features
        self.externals = program.externals
        n = len(self.symbols)
        self._shape = (n,)
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self._regs = np.ascontiguousarray(np.repeat(program.reg_init[:, None], n, axis=1))
        self._fstate = np.ascontiguousarray(np.repeat(program.fstate_init[:, None], n, axis=1))
        self._istate = np.zeros((program.n_int, n), dtype=np.int64)
        self._count = np.zeros(n, dtype=np.int64)
        self._ustate = np.zeros((n, program.ustate_width))
        self._reset_user_state(slice(None))
        self._sel = np.zeros(n, dtype=np.int64)
        self._scratch = np.zeros(3)
        self._ext = np.full((n, len(self.externals)), np.nan)
        self._ext_index = {name: j for j, name in enumerate(self.externals)}
        self.out = np.full((n, len(self.features)), np.nan, dtype=self.dtype)
        self.stale = np.zeros(n, dtype=np.bool_)
        # Everything update_bar takes after the bar itself: bound once (state is only ever
        # written in place), so a bar costs one argument tuple less to build.
        self._bar_args = (
            program.code,
            program.fparams,
            program.feature_regs,
            self._regs,
            self._fstate,
            self._istate,
            self._count,
            self._sel,
            self.out,
            self.stale,
            *self._kernel_tail(),
        )

    # ------------------------------------------------------------ views

    @property
    def n_bars(self) -> np.ndarray:
        """Valid bars seen per symbol (a read-only view)."""
        v = self._count.view()
        v.flags.writeable = False
        return v

    @property
    def _state(self) -> ProgramState:
        """The state arrays as per-symbol views (row i is symbol i)."""
        return ProgramState(self._regs.T, self._fstate.T, self._istate.T, self._count, self._ustate)

    def _reset_user_state(self, rows: Any) -> None:
        p = self.program
        for u in range(p.user_meta.shape[0]):
            off, width = int(p.user_meta[u, K.U_OFFSET]), int(p.user_meta[u, K.U_WIDTH])
            self._ustate[rows, off : off + width] = p.user_init[u, :width]

    def _kernel_tail(self) -> tuple:
        p = self.program
        return (self._ustate, p.user_addr, p.user_meta, p.user_params, p.user_init, self._scratch)

    # ------------------------------------------------------------ the hot path

    def _external(self, external: Any) -> np.ndarray:
        """The external columns as an (n_symbols, n_external) float64 matrix, checked."""
        n_ext = len(self.externals)
        if external is None:
            if n_ext:
                raise FeatureBuildError(
                    f"external: this program reads external column(s) {list(self.externals)}; pass them"
                )
            return self._ext
        if not n_ext:
            raise FeatureBuildError("external: this program reads no external columns")
        if _ready(external, (self._shape[0], n_ext)):
            return external
        if isinstance(external, Mapping):
            missing = [k for k in self.externals if k not in external]
            unknown = [k for k in external if k not in self._ext_index]
            if missing or unknown:
                raise FeatureBuildError(
                    f"external: missing {missing}, unknown {unknown}; declared: {list(self.externals)}"
                )
            columns = [check_bar_input(external[k], f"external {k!r}", self._shape) for k in self.externals]
            for j, col in enumerate(columns):
                self._ext[:, j] = col
            return self._ext
        return check_bar_input(external, "external", (self._shape[0], n_ext))

    def update(self, open: Any, high: Any, low: Any, close: Any, volume: Any, external: Any = None) -> np.ndarray:
        """Advance every symbol by one bar (arrays of length n_symbols, NaN = missing); return ``out``.

        ``external``: the declared external columns, a dict name → (n_symbols,) array or one
        (n_symbols, n_external) matrix in declared order. Every input is checked before any
        state changes (``FeatureBuildError`` naming it).
        """
        s = self._shape
        bar = (open, high, low, close, volume)
        if not (_ready(open, s) and _ready(high, s) and _ready(low, s) and _ready(close, s) and _ready(volume, s)):
            bar = tuple(check_bar_input(a, name, s) for a, name in zip(bar, OHLCV))
        ext = self._ext if external is None and not self.externals else self._external(external)
        K.update_bar(*bar, ext, *self._bar_args)
        return self.out

    # ------------------------------------------------------------ warm start

    def warm_start(self, history: Mapping[str, pd.DataFrame]) -> np.ndarray:
        """Replace the state of each symbol in ``history`` by its bars (a DataFrame each, oldest
        first, with OHLCV and the external columns); symbols not in ``history`` keep theirs.
        Every frame is checked before any state changes. Returns ``out``."""
        unknown = [s for s in history if s not in self._index]
        if unknown:
            raise FeatureBuildError(f"warm_start: unknown symbol(s) {unknown}; symbols: {list(self.symbols)}")
        from .frames import external_arrays, ohlcv_arrays

        loaded = []
        for sym, df in history.items():
            where = f"history of {sym!r}"
            a = ohlcv_arrays(df, where=where)
            ext = external_arrays(df, self.externals, where=where)
            loaded.append((self._index[sym], a, ext))
        for i, a, ext in loaded:
            self._replace_symbol(i, *(a[k] for k in OHLCV), ext)
        return self.out

    def replay(self, symbol: str, bars: Mapping[str, Any]) -> np.ndarray:
        """Forget ``symbol``'s state, feed it a whole history and return every bar's features,
        (T, n_features) float64: what ``update`` would have produced bar by bar (a missing bar
        repeats the row before). ``bars``: open, high, low, close, volume and the external
        columns as (T,) arrays. One jitted call; ``out`` and ``stale`` end as after the last bar."""
        if symbol not in self._index:
            raise FeatureBuildError(f"replay: unknown symbol {symbol!r}")
        missing = [k for k in (*OHLCV, *self.externals) if k not in bars]
        if missing:
            raise FeatureBuildError(f"replay: missing {missing}")
        length = len(np.asarray(bars["close"]))
        arrays = [check_bar_input(bars[k], k, (length,)) for k in OHLCV]
        ext = np.empty((length, len(self.externals)))
        for j, name in enumerate(self.externals):
            ext[:, j] = check_bar_input(bars[name], f"external {name!r}", (length,))
        record = np.empty((length, len(self.features)))
        self._replace_symbol(self._index[symbol], *arrays, ext, record)
        return record

    def _replace_symbol(self, i: int, o, h, l, c, v, ext: np.ndarray, record: np.ndarray | None = None) -> None:
        """Forget symbol i's state, then feed it a whole history (float64 (T,) arrays, ext (T, E));
        ``record`` (T, n_features) float64 receives every bar's features."""
        p = self.program
        self._regs[:, i] = p.reg_init
        self._fstate[:, i] = p.fstate_init
        self._istate[:, i] = 0
        self._count[i] = 0
        self._reset_user_state(i)
        self.stale[i] = K.update_series(
            i,
            o,
            h,
            l,
            c,
            v,
            np.ascontiguousarray(ext, dtype=np.float64),
            p.code,
            p.fparams,
            p.feature_regs,
            self._regs,
            self._fstate,
            self._istate,
            self._count,
            self._sel,
            self.out,
            np.empty((0, len(self.features))) if record is None else record,
            *self._kernel_tail(),
        )

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything a restart needs, JSON-serialisable: a ``fastinfer.state`` envelope (kind
        "features", version 2, sha256 over the payload) whose payload is::

            {"symbols": [...], "features": [...], "dtype": "float32",
             "definitions": {...} | None, "interval_minutes": ..., "bars_per_day": ...,
             "program": "<sha256 of the compiled program>", "stale": [...],
             "arrays": {"registers", "float_state", "int_state", "bars", "user_state"}}

        Each array is ``fastinfer.state.encode_array`` of a symbol-first view (row i is symbol i).
        """
        payload = {
            "symbols": list(self.symbols),
            "features": list(self.features),
            "dtype": self.dtype.name,
            "definitions": None if self.definitions is None else self.definitions.to_dict(),
            "interval_minutes": self.interval_minutes,
            "bars_per_day": self.bars_per_day,
            "program": self.program.hash,
            "stale": [bool(x) for x in self.stale],
            "arrays": {name: _state.encode_array(a) for name, a in zip(_ARRAYS, self._state)},
        }
        return _state.wrap(STATE_KIND, STATE_VERSION, payload)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], *, source: str = "feature state") -> StreamingFeatures:
        """Rebuild from ``state_dict()``. A corrupt or edited state (checksum), another kind or
        version, or one written by another program (other features, definitions, parameters or
        kernel version) is a ``StateError`` naming the field."""
        _, payload = _state.unwrap(state, STATE_KIND, {STATE_VERSION}, source=source)
        try:
            self = cls(
                payload["symbols"],
                payload["features"],
                dtype=payload["dtype"],
                definitions=payload["definitions"],
                interval_minutes=payload["interval_minutes"],
                bars_per_day=payload["bars_per_day"],
            )
        except FeatureDefinitionError as e:
            raise StateError(f"{source}: its features do not compile here ({e})") from None
        except (KeyError, TypeError, ValueError, ArithmeticError) as e:  # ArithmeticError: a huge number's float()
            raise StateError(f"{source}: malformed ({_state.short_repr(e)})") from None
        self._load(payload, source)
        return self

    def load_state_dict(self, state: Mapping[str, Any], *, source: str = "feature state") -> None:
        """Restore ``state_dict()`` into this instance: the state must come from the same
        program (hash), symbols and dtype, else a ``StateError`` (nothing changes)."""
        _, payload = _state.unwrap(state, STATE_KIND, {STATE_VERSION}, source=source)
        for key, mine in (
            ("symbols", list(self.symbols)),
            ("features", list(self.features)),
            ("dtype", self.dtype.name),
        ):
            if payload.get(key) != mine:
                raise StateError(
                    f"{source}: field {key!r}: {_state.short_repr(payload.get(key))} is not this instance's"
                )
        self._load(payload, source)

    def _load(self, payload: Mapping[str, Any], source: str) -> None:
        if payload.get("program") != self.program.hash:
            raise StateError(
                f"{source}: field 'program': written by another feature program (other features, "
                "definitions, parameters or kernel version)"
            )
        n = len(self.symbols)
        stale, arrays = payload.get("stale"), payload.get("arrays")
        if not isinstance(stale, list) or len(stale) != n or not all(isinstance(x, bool) for x in stale):
            raise StateError(f"{source}: field 'stale': expected {n} booleans, one per symbol")
        if not isinstance(arrays, Mapping):
            raise StateError(f"{source}: field 'arrays': expected an object")
        loaded = [
            _state.decode_array(arrays.get(name), f"arrays.{name}", dtype=a.dtype, shape=a.shape, source=source)
            for name, a in zip(_ARRAYS, self._state)
        ]
        regs, fstate, istate, count, ustate = loaded
        _check_state(self.program, istate, count, source)
        self._regs[...] = regs.T
        self._fstate[...] = fstate.T
        self._istate[...] = istate.T
        self._count[...] = count
        self._ustate[...] = ustate
        nan = np.full(n, np.nan)
        # a bar of missing values only rewrites ``out`` from the registers
        self.update(nan, nan, nan, nan, nan, np.full((n, len(self.externals)), np.nan) if self.externals else None)
        self.stale[:] = stale


def _check_state(program: FeatureProgram, istate: np.ndarray, count: np.ndarray, source: str) -> None:
    """Refuse values the kernel would index with: negative bar counts, deque heads and sizes
    outside their windows (istate is symbol-first here)."""
    if (count < 0).any():
        raise StateError(f"{source}: field 'arrays.bars': negative bar count")
    for row in program.code:
        if row[K.C_OP] in (K.OP_MIN, K.OP_MAX):
            n, s = int(row[K.C_P0]), int(row[K.C_I])
            head, size = istate[:, s + K.I_HEAD], istate[:, s + K.I_SIZE]
            if ((head < 0) | (head >= n) | (size < 0) | (size > n)).any():
                raise StateError(f"{source}: field 'arrays.int_state': a rolling min/max window is out of range")
