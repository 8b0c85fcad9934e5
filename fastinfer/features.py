"""Features from OHLCV bars: the spec's ``FeatureBuilder`` and the incremental ``StreamingFeatures``.

Both compute the definitions in ``fastinfer.kernels.indicators`` (its docstring has the
formulas, warm-up lengths and flat-price values). Names: the spec's names are the defaults and
follow TA-Lib (Wilder RSI/ATR, Bollinger std with ddof 0); named variants add a suffix:

- ``_sma``: RSI / ATR with simple means over the period instead of Wilder smoothing
  (``rsi_14_sma``, ``atr_14_sma``), as the upstream TRAINING code computed them;
- ``_ddof1``: Bollinger bands with the sample std, pandas' default
  (``bb_upper_ddof1``, ``bb_lower_ddof1``, ``bb_pct_ddof1``).

A bar whose open, high, low, close or volume is missing (not finite) is not a bar for that
symbol: both paths skip it, and the streaming path marks the symbol ``stale``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import FeatureBuildError, StateError
from .kernels import indicators as _k

if TYPE_CHECKING:
    import pandas as pd

KNOWN_FEATURES: tuple[str, ...] = _k.FEATURES
DEFAULT_FEATURES: tuple[str, ...] = KNOWN_FEATURES[:14]
OHLCV = ("open", "high", "low", "close", "volume")
# pandas-based, in fastinfer.feature_builder; importing them from here loads pandas only then.
_BUILDER_NAMES = ("FeatureBuilder", "ohlcv_arrays", "check_time_order", "TIME_COLUMNS")


def __getattr__(name: str) -> Any:
    if name in _BUILDER_NAMES:
        from . import feature_builder

        return getattr(feature_builder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_features(features: Iterable[str] | None) -> tuple[str, ...]:
    """The requested feature names as a tuple (default: ``DEFAULT_FEATURES``), checked."""
    if features is None:
        return DEFAULT_FEATURES
    if isinstance(features, str):
        raise FeatureBuildError(f"features must be a list of names, not the string {features!r}")
    names = tuple(features)
    unknown = [f for f in names if f not in KNOWN_FEATURES]
    if unknown:
        raise FeatureBuildError(f"unknown feature(s) {unknown}; known features: {list(KNOWN_FEATURES)}")
    if not names:
        raise FeatureBuildError(f"no features requested; known features: {list(KNOWN_FEATURES)}")
    if len(set(names)) != len(names):
        dup = sorted({f for f in names if names.count(f) > 1})
        raise FeatureBuildError(f"feature(s) requested twice: {dup}")
    return names


# ---------------------------------------------------------------- StreamingFeatures

STATE_VERSION = 1
_STATE_KIND = "fastinfer.StreamingFeatures"
_STATE_ARRAYS = ("closes", "true_ranges", "volumes", "floats", "ints")


def _layout() -> dict[str, Any]:
    """What a saved state depends on besides its version: kernel features and parameters."""
    return {
        "kernel_features": list(_k.FEATURES),
        "params": [
            list(_k.RETURN_HORIZONS),
            _k.RSI_PERIOD,
            _k.ATR_PERIOD,
            _k.BB_PERIOD,
            _k.BB_NSTD,
            _k.VOL_PERIOD,
            _k.MACD_FAST,
            _k.MACD_SLOW,
            _k.MACD_SIGNAL,
            _k.CLOSE_WINDOW,
        ],
        "n_float": _k.N_FLOAT,
        "n_int": _k.N_INT,
    }


def _encode(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode(d: Any, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    try:
        if d["dtype"] != dtype.str or tuple(d["shape"]) != shape:
            raise StateError(f"state array {name!r}: expected {dtype.str} {shape}, got {d['dtype']} {d['shape']}")
        raw = base64.b64decode(d["data"].encode("ascii"), validate=True)
    except (KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise StateError(f"state array {name!r} is malformed ({e!r})") from None
    if len(raw) != dtype.itemsize * int(np.prod(shape)):
        raise StateError(f"state array {name!r}: {len(raw)} bytes do not fill {shape}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


class StreamingFeatures:
    """Incremental features for many symbols: one jitted call per bar, no allocation per bar.

    ``update`` returns ``out``, the same (n_symbols, len(features)) array every bar (float32 by
    default; ``dtype=np.float64`` for full precision). ``stale[i]`` is True when symbol i's
    last bar was missing (its row then repeats its last features); ``n_bars[i]`` counts the
    valid bars it has seen. State round-trips through ``state_dict`` / ``from_state_dict``
    (JSON-safe, versioned; save it with ``fastinfer.atomic.write_atomic_json``).
    """

    def __init__(self, symbols: Sequence[str], features: Sequence[str] | None = None, dtype: Any = np.float32):
        if isinstance(symbols, str):
            raise FeatureBuildError(f"symbols must be a list of names, not the string {symbols!r}")
        self.symbols = tuple(str(s) for s in symbols)
        if not self.symbols:
            raise FeatureBuildError("no symbols given")
        if len(set(self.symbols)) != len(self.symbols):
            dup = sorted({s for s in self.symbols if self.symbols.count(s) > 1})
            raise FeatureBuildError(f"symbol(s) listed twice: {dup}")
        self.features = resolve_features(features)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise FeatureBuildError(f"dtype must be float32 or float64, got {self.dtype}")
        n = len(self.symbols)
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self._shape = (n,)
        self._state = _k.new_state(n)
        self._cols = np.full(_k.N_FEATURES, -1, dtype=np.int64)
        for j, name in enumerate(self.features):
            self._cols[KNOWN_FEATURES.index(name)] = j
        self.out = np.full((n, len(self.features)), np.nan, dtype=self.dtype)
        self.stale = np.zeros(n, dtype=np.bool_)

    @property
    def n_bars(self) -> np.ndarray:
        """Valid bars seen per symbol (a read-only view)."""
        v = self._state.ints[:, _k.I_COUNT]
        v.flags.writeable = False
        return v

    def _input(self, a: Any, name: str) -> np.ndarray:
        if type(a) is np.ndarray and a.dtype == np.float64 and a.shape == self._shape and a.flags.c_contiguous:
            return a  # the hot path: no conversion
        a = np.ascontiguousarray(a, dtype=np.float64)
        if a.shape != self._shape:
            raise FeatureBuildError(f"{name}: expected shape {self._shape} (one value per symbol), got {a.shape}")
        return a

    def update(self, open: Any, high: Any, low: Any, close: Any, volume: Any) -> np.ndarray:
        """Advance every symbol by one bar (arrays of length n_symbols, NaN = missing); return ``out``."""
        s = self._state
        _k.update_bar(
            self._input(open, "open"),
            self._input(high, "high"),
            self._input(low, "low"),
            self._input(close, "close"),
            self._input(volume, "volume"),
            s.closes,
            s.true_ranges,
            s.volumes,
            s.floats,
            s.ints,
            self._cols,
            self.out,
            self.stale,
        )
        return self.out

    def warm_start(self, history: Mapping[str, pd.DataFrame]) -> np.ndarray:
        """Replace the state of each symbol in ``history`` by its bars (an OHLCV DataFrame each,
        oldest first); symbols not in ``history`` keep theirs. Returns ``out``."""
        unknown = [s for s in history if s not in self._index]
        if unknown:
            raise FeatureBuildError(f"warm_start: unknown symbol(s) {unknown}; symbols: {list(self.symbols)}")
        from .feature_builder import ohlcv_arrays

        st = self._state
        for sym, df in history.items():
            a = ohlcv_arrays(df, where=f"history of {sym!r}")
            i = self._index[sym]
            _k.reset_symbol(st, i)
            self.stale[i] = _k.update_series(
                i, a["open"], a["high"], a["low"], a["close"], a["volume"], *st, self._cols, self.out
            )
        return self.out

    def state_dict(self) -> dict[str, Any]:
        """Everything a restart needs, JSON-serialisable (arrays as base64 of their raw bytes)."""
        return {
            "version": STATE_VERSION,
            "kind": _STATE_KIND,
            "symbols": list(self.symbols),
            "features": list(self.features),
            "dtype": self.dtype.name,
            "layout": _layout(),
            "stale": [bool(x) for x in self.stale],
            "arrays": {name: _encode(a) for name, a in zip(_STATE_ARRAYS, self._state)},
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> StreamingFeatures:
        """Rebuild from ``state_dict()``; a corrupt, foreign or other-version state is a ``StateError``."""
        if not isinstance(state, Mapping):
            raise StateError(f"feature state must be a dict, got {type(state).__name__}")
        if state.get("kind") != _STATE_KIND:
            raise StateError(f"not a StreamingFeatures state (kind={state.get('kind')!r})")
        if state.get("version") != STATE_VERSION:
            raise StateError(f"feature state version {state.get('version')!r}; this fastinfer reads {STATE_VERSION}")
        if state.get("layout") != _layout():
            raise StateError("feature state was written by kernels with other features or parameters")
        try:
            self = cls(state["symbols"], state["features"], dtype=state["dtype"])
            stale = np.asarray(state["stale"], dtype=np.bool_)
            arrays = state["arrays"]
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"feature state is malformed ({e!r})") from None
        n = len(self.symbols)
        if stale.shape != (n,) or not isinstance(arrays, Mapping):
            raise StateError("feature state is malformed (stale flags or arrays do not match the symbols)")
        fresh = self._state
        loaded = [_decode(arrays.get(name), name, a.dtype, a.shape) for name, a in zip(_STATE_ARRAYS, fresh)]
        self._state = _k.IndicatorState(*loaded)
        if (self._state.ints[:, _k.I_COUNT] < 0).any():
            raise StateError("feature state is corrupt (negative bar count)")
        nan = np.full(n, np.nan)
        self.update(nan, nan, nan, nan, nan)  # a bar of missing values only rewrites ``out``
        self.stale[:] = stale
        return self
