"""SeqBufferManager: the spec's rolling feature sequence for sequential models, for many symbols.

The spec's single-symbol use works as written::

    buffer = SeqBufferManager(seq_len=60, n_features=200, symbol="AAPL")
    buffer.push(new_features)              # (n_features,) or (1, n_features)
    sequence = buffer.get_sequence()       # (1, seq_len, n_features) float32, oldest row first

and the same object holds many symbols: ``push(symbol, row)``, ``get_sequence(symbol)``,
``get_batch(symbols)``, ``push_all(block)``. All symbols share one contiguous
``(capacity, seq_len, n_features)`` float32 array driven by ``fastinfer.kernels.ring``.

Symbols. Names are strings (``None`` names the anonymous symbol of a manager built without
``symbol``/``symbols``). They are registered up front (``symbols=``, ``symbol=``,
``add_symbols``) or on their first ``push``; indices are given in registration order and
never change. Registering past the current capacity reallocates (doubling), which is the
only allocation outside construction, so register the universe up front to keep the bar
loop allocation-free. Anywhere a symbol is accepted, an ``int`` index is accepted too; for
``get_batch`` an int64 array from ``indices(...)`` is the zero-copy path.

Readiness and padding. ``ready(symbol)`` is true once ``warmup_bars`` rows are in (and,
with a time-to-live and ``now``, the newest row is not older than it). Before the ring is
full a sequence is front-padded: ``padding="repeat_first"`` repeats the oldest row,
``"zeros"`` fills zeros (a symbol with no row yet reads as zeros either way).

Bad rows. A row of the wrong shape or with a NaN/inf (after the float32 cast) raises
``InferenceError`` naming the symbol and the shape or column; it never enters the buffer.

Time-to-live in bar time. With ``ttl`` set each push must carry ``timestamp=`` (the bar's
time, supplied by the caller: replays and historical runs behave exactly as live ones). A
push whose bar is more than ``ttl`` after the symbol's previous bar first empties that
symbol's ring; ``expire(now)`` does the same for every symbol idle longer than ``ttl``.
Timestamps may be ``datetime`` (naive means UTC; aware ones are converted), pandas
``Timestamp``, ``numpy.datetime64`` or an int of nanoseconds since the epoch; a timestamp
older than the symbol's newest is rejected (an equal one is accepted), and
``check_timestamp(t)`` tells beforehand, changing nothing, whether ``push_all`` would refuse
``t``. ``ttl`` is a ``timedelta``, ``numpy.timedelta64`` or a number of seconds.

One call per bar. ``push_and_get_sequence(symbol, features, out)`` and
``push_all_and_get_batch(block, out)`` push and read in one jitted call: the ring is mirrored
(``fastinfer.kernels.ring``), so each window is one contiguous copy. They behave exactly as
``push`` followed by ``get_sequence`` (``push_all`` followed by ``get_batch`` of every
symbol), errors included: a refused row or block leaves the buffer and ``out`` untouched.

Limits. ``seq_len`` and ``n_features`` are at most ``MAX_SEQ_LEN`` / ``MAX_FEATURES`` and
their product at most ``MAX_WINDOW`` floats, so a hostile size is a ``ConfigError`` here
rather than a huge allocation later; ``ttl`` must fit int64 nanoseconds. Rows of any real
dtype are accepted (float16 and integers are cast), bool / complex / object rows are not.

State. ``to_dict()``/``from_dict()`` use the state envelope of ``fastinfer.state`` (kind
``"seqbuffer"``, version 2: rows as a base64 float32 array, every count and stamp a bounded
integer, a sha256 over the whole payload). Version 1 dicts (the flat format before the
envelope, sha256 over the rows only) are still read. ``save(path)`` writes atomically
(``fastinfer.atomic``), ``load(path)`` reads with bounded size and nesting and raises
``StateError`` naming the file and the field on corruption or a seq_len / n_features mismatch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from . import state as _state
from .config import MAX_SEQ_LEN, ModelSettings
from .errors import ConfigError, InferenceError, StateError
from .kernels import ring as _ring
from .state import short_repr

KIND = "seqbuffer"  # the state envelope's kind
VERSION = 2
LEGACY_FORMAT = "fastinfer.seqbuffer"  # version 1: a flat dict with a sha256 over the rows only
PADDINGS = {"zeros": _ring.PAD_ZEROS, "repeat_first": _ring.PAD_REPEAT_FIRST}
MAX_FEATURES = 1_000_000
MAX_WINDOW = 1 << 26  # seq_len x n_features per symbol: 256 MiB of float32, twice that mirrored

_NO_STAMP = _ring.NO_STAMP
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)  # the row dtypes the kernels are compiled for
_MISSING = object()  # "no second argument": push(features) for the default symbol
_EPOCH = datetime(1970, 1, 1)


_NS_PER_UNIT = {
    "W": 604_800 * 10**9,
    "D": 86_400 * 10**9,
    "h": 3_600 * 10**9,
    "m": 60 * 10**9,
    "s": 10**9,
    "ms": 10**6,
    "us": 10**3,
    "ns": 1,
}
_MAX_STAMP = np.iinfo(np.int64).max


def _datetime64_ns(ts: np.datetime64) -> int:
    """Exact ns of a datetime64 of any unit (numpy's own cast to [ns] wraps around silently)."""
    unit, count = np.datetime_data(ts.dtype)
    raw = int(ts.astype(np.int64))
    if unit in ("Y", "M"):  # calendar units: through days, from a range that cannot overflow [D]
        if abs(raw * count) > 10**6:
            raise InferenceError(f"timestamp {ts!r} is outside the int64 nanosecond range")
        return _datetime64_ns(ts.astype("datetime64[D]"))
    if unit in _NS_PER_UNIT:
        return raw * count * _NS_PER_UNIT[unit]
    # ps, fs, as: finer than ns (truncated toward the past, as numpy's cast does)
    return (raw * count) // {"ps": 10**3, "fs": 10**6, "as": 10**9}[unit]


def timestamp_ns(ts: Any) -> int:
    """A bar time as int nanoseconds since the epoch (UTC).

    Anything else (a string, a float, a bool, NaT, a time outside the int64 nanosecond
    range, about years 1677..2262) is an ``InferenceError``.
    """
    if isinstance(ts, bool):
        raise InferenceError(f"timestamp {ts!r}: expected a datetime, numpy datetime64 or int ns since the epoch")
    if isinstance(ts, (int, np.integer)):
        value = int(ts)
    elif isinstance(ts, np.datetime64):
        if np.isnat(ts):
            raise InferenceError("timestamp is NaT")
        value = _datetime64_ns(ts)
    elif isinstance(ts, datetime):
        value = getattr(ts, "value", None)  # pandas.Timestamp: ns since the epoch, UTC if aware
        if not isinstance(value, (int, np.integer)):
            if ts.tzinfo is not None and ts.utcoffset() is not None:
                try:
                    ts = ts.astimezone(UTC).replace(tzinfo=None)
                except OverflowError:
                    raise InferenceError(f"timestamp {ts!r} is outside the int64 nanosecond range") from None
            d = ts - _EPOCH
            value = (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000
        value = int(value)
    else:
        raise InferenceError(
            f"timestamp {short_repr(ts)}: expected a datetime, pandas Timestamp, numpy datetime64 "
            "or int ns since the epoch"
        )
    if value == _NO_STAMP:
        raise InferenceError("timestamp is NaT")
    if not _NO_STAMP < value <= _MAX_STAMP:
        raise InferenceError(f"timestamp {short_repr(ts)} is outside the int64 nanosecond range")
    return value


def _ttl_ns(ttl: Any) -> int:
    """0 for no time-to-live, else a positive number of nanoseconds that fits int64."""
    if ttl is None:
        return 0
    if isinstance(ttl, bool):
        raise ConfigError(f"ttl {ttl!r}: expected a timedelta or a number of seconds")
    if isinstance(ttl, np.timedelta64):
        if np.isnat(ttl):
            raise ConfigError("ttl is NaT")
        unit, count = np.datetime_data(ttl.dtype)
        if unit not in _NS_PER_UNIT:  # Y/M have no fixed length; sub-ns units round to nothing
            raise ConfigError(f"ttl {ttl!r}: use a unit from weeks to nanoseconds")
        ns = int(ttl.astype(np.int64)) * count * _NS_PER_UNIT[unit]  # exact: numpy's cast to [ns] wraps
    elif isinstance(ttl, timedelta):
        value = getattr(ttl, "value", None)  # pandas.Timedelta carries exact ns
        ns = (
            int(value)
            if isinstance(value, (int, np.integer))
            else ((ttl.days * 86_400 + ttl.seconds) * 1_000_000_000 + ttl.microseconds * 1_000)
        )
    elif isinstance(ttl, (int, np.integer)):
        ns = int(ttl) * 1_000_000_000
    elif isinstance(ttl, (float, np.floating)):
        if not math.isfinite(ttl) or abs(ttl) > _MAX_STAMP / 1e9:
            raise ConfigError(f"ttl {short_repr(ttl)} seconds: not a finite number of int64 nanoseconds")
        ns = round(float(ttl) * 1e9)
    else:
        raise ConfigError(f"ttl {short_repr(ttl)}: expected a timedelta or a number of seconds")
    if not 0 < ns <= _MAX_STAMP:
        raise ConfigError(f"ttl {short_repr(ttl)}: must be positive and at most {_MAX_STAMP} ns (~292 years)")
    return ns


def _size(name: str, value: Any, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [1, {hi}], got {short_repr(value)}")
    return int(value)


def _names(symbols: Any, what: str) -> list[Any]:
    """A list from an iterable of symbols; a bare string is refused (it would be one symbol per letter)."""
    if isinstance(symbols, (str, bytes)):
        raise InferenceError(
            f"{what}: expected a list of symbol names, got the string {short_repr(symbols)} "
            f"(write [{short_repr(symbols)}])"
        )
    try:
        return list(symbols)
    except TypeError:
        raise InferenceError(f"{what}: expected a list of symbol names, got {type(symbols).__name__}") from None


class SeqBufferManager:
    """Rolling ``(seq_len, n_features)`` float32 sequences for one or many symbols.

    ``SeqBufferManager(seq_len, n_features, symbol=None, *, symbols=None, warmup_bars=None,
    padding=None, ttl=None, settings=None)``: ``seq_len`` None takes
    ``settings.seq_buffer_size``; ``warmup_bars`` defaults to ``settings.seq_warmup_bars``
    (capped at ``seq_len``) and ``padding`` to ``settings.seq_padding``; ``settings``
    defaults to ``ModelSettings()``. ``symbol`` names the default symbol used when
    ``push``/``get_sequence``/``ready`` get none; with neither ``symbol`` nor ``symbols``
    the manager holds one anonymous symbol (named ``None``). A bad argument is a
    ``ConfigError`` (sizes, padding, ttl) or an ``InferenceError`` (symbols) naming it.
    """

    def __init__(
        self,
        seq_len: int | None,
        n_features: int,
        symbol: str | None = None,
        *,
        symbols: Iterable[str] | None = None,
        warmup_bars: int | None = None,
        padding: str | None = None,
        ttl: Any = None,
        settings: ModelSettings | None = None,
    ):
        settings = settings if settings is not None else ModelSettings()
        self._seq_len = _size("seq_len", settings.seq_buffer_size if seq_len is None else seq_len, MAX_SEQ_LEN)
        self._n_features = _size("n_features", n_features, MAX_FEATURES)
        if self._seq_len * self._n_features > MAX_WINDOW:
            raise ConfigError(
                f"seq_len x n_features = {self._seq_len * self._n_features} floats per symbol (limit {MAX_WINDOW})"
            )
        if warmup_bars is None:
            warmup_bars = min(settings.seq_warmup_bars, self._seq_len)
        if (
            isinstance(warmup_bars, bool)
            or not isinstance(warmup_bars, (int, np.integer))
            or not 0 <= warmup_bars <= self._seq_len
        ):
            raise ConfigError(
                f"warmup_bars must be an integer in [0, seq_len={self._seq_len}], got {short_repr(warmup_bars)}"
            )
        self._warmup = int(warmup_bars)
        padding = settings.seq_padding if padding is None else padding
        if padding not in PADDINGS:
            raise ConfigError(f"padding must be one of {', '.join(map(repr, PADDINGS))}, got {short_repr(padding)}")
        self._padding = padding
        self._pad = PADDINGS[padding]
        self._ttl = _ttl_ns(ttl)

        self._names: list[str | None] = []
        self._index: dict[str | None, int] = {}
        self._n = 0
        self._alloc(0)
        names = _names(symbols, "symbols") if symbols is not None else []
        if symbol is not None and symbol not in names:
            names.append(symbol)
        if not names:
            self._register(None)  # the spec's single, unnamed buffer
            self._default = 0
        else:
            self.add_symbols(names)
            self._default = None if symbol is None else self._index[symbol]

    # ---------------------------------------------------------------- storage

    def _alloc(self, capacity: int) -> None:
        data, state = _ring.allocate(capacity, self._seq_len, self._n_features)
        if self._n:
            data[: self._n] = self._data
            state[: self._n] = self._state
        self._cap_data, self._cap_state = data, state
        self._cap_bad = np.full(capacity, -1, dtype=np.int64)
        self._views()

    def _views(self) -> None:
        # Kernels see exactly the registered symbols: their bounds checks are then exact.
        n = self._n
        self._data = self._cap_data[:n]
        self._state = self._cap_state[:n]
        self._stamps = self._state[:, _ring.STAMP]  # a view: the kernels keep it current
        self._bad = self._cap_bad[:n]
        self._all = np.arange(n, dtype=np.int64)

    def _register(self, name: str | None) -> int:
        if name is not None and not isinstance(name, str):
            raise InferenceError(f"symbol {name!r}: names must be strings (ints are indices)")
        if self._n == self._cap_data.shape[0]:
            self._alloc(max(1, 2 * self._n))
        i = self._n
        self._names.append(name)
        self._index[name] = i
        self._n += 1
        self._views()
        return i

    def add_symbol(self, symbol: str) -> int:
        """Register ``symbol`` (no-op if known); returns its index."""
        i = self._index.get(symbol)
        return self._register(symbol) if i is None else i

    def add_symbols(self, symbols: Iterable[str]) -> np.ndarray:
        """Register several symbols, reallocating at most once; returns their indices (int64)."""
        symbols = _names(symbols, "add_symbols")
        new = [s for s in dict.fromkeys(symbols) if s not in self._index]
        if self._n + len(new) > self._cap_data.shape[0]:
            self._alloc(max(self._n + len(new), 2 * self._n))
        for s in new:
            self._register(s)
        return self.indices(symbols)

    # ---------------------------------------------------------------- lookup

    def _idx(self, symbol: Any) -> int:
        if type(symbol) is int or isinstance(symbol, np.integer):
            if not 0 <= symbol < self._n:
                raise InferenceError(f"symbol index {int(symbol)} out of range (0..{self._n - 1})")
            return int(symbol)
        try:
            return self._index[symbol]
        except (KeyError, TypeError):
            raise InferenceError(f"unknown symbol {symbol!r}") from None

    def _default_idx(self) -> int:
        if self._default is None:
            raise InferenceError("this buffer holds several symbols and has no default: pass the symbol")
        return self._default

    def index(self, symbol: Any) -> int:
        """The index of a registered symbol (an int is checked and returned)."""
        return self._idx(symbol)

    def indices(self, symbols: Iterable[Any]) -> np.ndarray:
        """Indices (int64 array) of registered symbols, for the allocation-free batch path."""
        return np.array([self._idx(s) for s in _names(symbols, "symbols")], dtype=np.int64)

    # ---------------------------------------------------------------- push

    def push(self, symbol: Any, features: Any = _MISSING, *, timestamp: Any = None) -> None:
        """``push(features)`` for the default symbol, or ``push(symbol, features)``.

        ``features``: (F,) or (1, F); any real dtype (stored as float32). An unknown symbol
        name is registered. ``timestamp``: the bar time (required when ``ttl`` is set).
        """
        if features is _MISSING:
            features = symbol
            i = self._default_idx()
        else:
            i = self._push_index(symbol)
        row = self._row(i, features)
        stamp = self._stamp(i, timestamp)
        code = _ring.push(self._data, self._state, i, row, stamp, self._ttl)
        if code != _ring.OK:
            raise self._row_error(i, row, code, stamp)

    def push_and_get_sequence(
        self, symbol: Any, features: Any, out: np.ndarray | None = None, *, timestamp: Any = None
    ) -> np.ndarray:
        """``push(symbol, features)`` then ``get_sequence(symbol, out)`` in one jitted call.

        ``symbol`` None means the default symbol. Returns ``out`` ((1, seq_len, F) or
        (seq_len, F) float32; allocated when None). A refused row raises as ``push`` does and
        leaves both the buffer and ``out`` untouched.
        """
        # The checks of push / get_sequence, with their common cases inlined: this is the per-bar
        # call, and each Python-level call here costs about as much as copying a thousand floats.
        i = self._index.get(symbol, -1) if type(symbol) is str else -1
        if i < 0:
            i = self._default_idx() if symbol is None else self._push_index(symbol)
        row = features
        if type(row) is not np.ndarray or row.ndim != 1 or (row.dtype is not _F32 and row.dtype is not _F64):
            row = self._row(i, features)
        stamp = _NO_STAMP if timestamp is None and not self._ttl else self._stamp(i, timestamp)
        if out is None:
            out = np.empty((1, self._seq_len, self._n_features), dtype=np.float32)
        target = out
        if type(out) is not np.ndarray or out.ndim != 3 or out.dtype is not _F32 or out.shape[0] != 1:
            target = self._out3(out)
        elif not out.flags.writeable:  # numba types a read-only array apart: no kernel takes it
            raise self._out_error(out, 1)
        code = _ring.push_read(self._data, self._state, i, row, stamp, self._ttl, target, 0, self._pad)
        if code != _ring.OK:
            raise self._out_error(out, 1) if code == _ring.BAD_OUT else self._row_error(i, row, code, stamp)
        return out

    def _push_index(self, symbol: Any) -> int:
        """The index a push goes to: an int is checked, an unknown name is registered."""
        if type(symbol) is int or isinstance(symbol, np.integer):
            return self._idx(symbol)
        try:
            i = self._index.get(symbol)
        except TypeError:  # unhashable (a list, a dict): not a name
            raise InferenceError(f"symbol {short_repr(symbol)}: names must be strings (ints are indices)") from None
        return self._register(symbol) if i is None else i

    def _stamp(self, i: int, timestamp: Any) -> int:
        if timestamp is None:
            if self._ttl:
                raise InferenceError(f"symbol {self._names[i]!r}: a bar timestamp is required when ttl is set")
            return _NO_STAMP
        return timestamp_ns(timestamp)

    def push_all(self, block: Any, *, timestamp: Any = None, strict: bool = True) -> int:
        """One bar for every registered symbol: ``block`` is (n_symbols, F) in index order.

        ``strict`` (default): if any row is bad, raise and write nothing. Otherwise bad rows
        are skipped (their symbols keep their state), ``rejected_columns`` tells which, and
        the number skipped is returned. ``timestamp`` is the bar time of the whole block.
        """
        return self._push_rows(self._all, block, timestamp, strict)

    def push_all_and_get_batch(
        self, block: Any, out: np.ndarray | None = None, *, timestamp: Any = None, strict: bool = True
    ) -> np.ndarray:
        """``push_all(block, strict=strict)`` then ``get_batch(None, out)`` in one jitted call.

        Returns ``out`` ((n_symbols, seq_len, F) float32; allocated when None). Non-strict,
        skipped rows are in ``rejected_columns`` and their symbols read their unchanged
        sequence; a refused block raises as ``push_all`` does and leaves the buffer and ``out``
        untouched. This is the live predictor's one call per bar.
        """
        block = self._block(self._all, block)
        stamp = self._block_stamp(timestamp)
        if out is None:
            out = np.empty((self._n, self._seq_len, self._n_features), dtype=np.float32)
        elif type(out) is not np.ndarray or out.dtype is not _F32 or out.ndim != 3 or not out.flags.writeable:
            raise self._out_error(out, self._n)
        code = _ring.push_block_read(
            self._data, self._state, self._all, block, self._bad, strict, stamp, self._ttl, out, self._pad
        )
        if code == _ring.BAD_OUT:
            raise self._out_error(out, self._n)
        self._block_outcome(self._all, block, code, strict, stamp)
        return out

    def push_many(self, symbols: Any, block: Any, *, timestamp: Any = None, strict: bool = True) -> int:
        """Like ``push_all`` for a subset: ``block[i]`` goes to ``symbols[i]`` (names, ints or
        an int64 index array; names must be registered)."""
        idx = symbols if isinstance(symbols, np.ndarray) and symbols.dtype == np.int64 else self.indices(symbols)
        return self._push_rows(idx, block, timestamp, strict)

    def _push_rows(self, idx: np.ndarray, block: Any, timestamp: Any, strict: bool) -> int:
        block = self._block(idx, block)
        stamp = self._block_stamp(timestamp)
        code = _ring.push_block(self._data, self._state, idx, block, self._bad, strict, stamp, self._ttl)
        return self._block_outcome(idx, block, code, strict, stamp)

    def _block(self, idx: np.ndarray, block: Any) -> np.ndarray:
        """``block`` as an (n, F) float32/float64 array, or ``InferenceError``."""
        if type(block) is not np.ndarray:
            try:
                block = np.asarray(block, dtype=np.float64)
            except (TypeError, ValueError):
                raise InferenceError(f"feature block is not numeric ({type(block).__name__})") from None
        n = idx.shape[0]
        if (
            block.ndim != 2
            or block.shape[0] != n
            or block.shape[1] != self._n_features
            or block.dtype.kind not in "fiu"
        ):
            raise InferenceError(
                f"feature block has shape {block.shape} and dtype {block.dtype}, "
                f"expected ({n}, {self._n_features}) real numbers"
            )
        if n > self._bad.shape[0]:
            raise InferenceError(f"{n} rows but only {self._n} symbols are registered")
        if block.dtype is not _F32 and block.dtype is not _F64:
            block = block.astype(np.float64)  # float16, ints, other byte orders: exact in float64
        return block

    def _block_outcome(self, idx: np.ndarray, block: np.ndarray, code: int, strict: bool, stamp: int) -> int:
        """The kernel's status code as the rejected-row count, or the ``InferenceError`` it means."""
        n = idx.shape[0]
        if code == _ring.BAD_INDEX:
            raise InferenceError(f"symbol index out of range (0..{self._n - 1}) in {short_repr(idx.tolist())}")
        if code == _ring.BAD_TIME:
            raise InferenceError(
                f"bar timestamp {stamp} ns is older than the newest row of some symbol; block rejected"
            )
        if code < 0:
            raise InferenceError(f"feature block has shape {block.shape}, expected ({n}, {self._n_features})")
        if code and strict:
            bad = [(self._names[idx[k]], int(self._bad[k])) for k in np.flatnonzero(self._bad[:n] >= 0)[:5]]
            where = ", ".join(f"symbol {s!r} column {c}" for s, c in bad)
            raise InferenceError(f"{code} feature row(s) with NaN/inf ({where}); block rejected, nothing written")
        return code

    def _block_stamp(self, timestamp: Any) -> int:
        if timestamp is None:
            if self._ttl:
                raise InferenceError("a bar timestamp is required when ttl is set")
            return _NO_STAMP
        return timestamp_ns(timestamp)

    def check_timestamp(self, timestamp: Any = None) -> int:
        """Raise the ``InferenceError`` that ``push_all(block, timestamp=timestamp)`` would raise
        for this bar time (not a timestamp / NaT / out of range, older than some symbol's newest
        row, missing while ``ttl`` is set), changing nothing. Returns the time in ns (or
        ``NO_STAMP`` for None). Lets a caller refuse a bar before it updates anything else."""
        stamp = self._block_stamp(timestamp)
        if stamp != _NO_STAMP and self._n and stamp < self._stamps.max():  # NO_STAMP is int64's minimum
            raise InferenceError(
                f"bar timestamp {stamp} ns is older than the newest row of some symbol; block rejected"
            )
        return stamp

    @property
    def rejected_columns(self) -> np.ndarray:
        """After a non-strict ``push_all``/``push_many``: per row, -1 or its first non-finite column."""
        return self._bad

    def _row(self, i: int, features: Any) -> np.ndarray:
        if type(features) is np.ndarray and features.ndim == 1 and (features.dtype is _F32 or features.dtype is _F64):
            return features  # the hot path: the kernel checks the length
        if type(features) is not np.ndarray:
            try:
                features = np.asarray(features, dtype=np.float64)
            except (TypeError, ValueError):
                raise InferenceError(
                    f"symbol {self._names[i]!r}: features are not numeric ({type(features).__name__})"
                ) from None
        if features.ndim == 2 and features.shape[0] == 1:
            features = features[0]
        if features.ndim != 1 or features.shape[0] != self._n_features or features.dtype.kind not in "fiu":
            raise InferenceError(
                f"symbol {self._names[i]!r}: feature row has shape {features.shape} and dtype {features.dtype}, "
                f"expected ({self._n_features},) or (1, {self._n_features}) real numbers"
            )
        if features.dtype is not _F32 and features.dtype is not _F64:
            features = features.astype(np.float64)  # float16, ints, other byte orders: exact in float64
        return features

    def _row_error(self, i: int, row: np.ndarray, code: int, stamp: int) -> InferenceError:
        name = self._names[i]
        if code == _ring.BAD_SHAPE:
            return InferenceError(
                f"symbol {name!r}: feature row has shape {row.shape} and dtype {row.dtype}, "
                f"expected ({self._n_features},) or (1, {self._n_features}) real numbers"
            )
        if code == _ring.BAD_TIME:
            return InferenceError(
                f"symbol {name!r}: bar timestamp {stamp} ns is older than its newest row "
                f"({int(self._stamps[i])} ns); row rejected"
            )
        if code >= 0:
            return InferenceError(
                f"symbol {name!r}: non-finite value {float(row[code])} at column {code}; row rejected"
            )
        return InferenceError(f"symbol {name!r}: feature row rejected (shape {row.shape})")

    # ---------------------------------------------------------------- read

    def get_sequence(self, symbol: Any = None, out: np.ndarray | None = None) -> np.ndarray:
        """The sequence of ``symbol`` (default symbol if None), oldest row first.

        Returns (1, seq_len, F) float32; with ``out`` ((1, seq_len, F) or (seq_len, F)
        float32) it is filled and returned, allocating nothing.
        """
        i = self._default_idx() if symbol is None else self._idx(symbol)
        if out is None:
            out = np.empty((1, self._seq_len, self._n_features), dtype=np.float32)
        if _ring.read(self._data, self._state, i, self._out3(out), 0, self._pad) != _ring.OK:
            raise self._out_error(out, 1)
        return out

    def _out3(self, out: Any) -> np.ndarray:
        """A single sequence's ``out`` as the (1, T, F) float32 array the kernels write; the
        kernels check T and F."""
        if type(out) is not np.ndarray or out.dtype is not _F32 or out.ndim not in (2, 3) or not out.flags.writeable:
            raise self._out_error(out, 1)
        if out.ndim == 2:
            return out[np.newaxis]
        if out.shape[0] != 1:
            raise self._out_error(out, 1)
        return out

    def _out_error(self, out: Any, n: int) -> InferenceError:
        got = f"shape {out.shape} and dtype {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
        if isinstance(out, np.ndarray) and not out.flags.writeable:
            got = f"read-only {got}"
        return InferenceError(f"out has {got}, expected a writable ({n}, {self._seq_len}, {self._n_features}) float32")

    def get_batch(self, symbols: Any = None, out: np.ndarray | None = None) -> np.ndarray:
        """Sequences of ``symbols`` (all registered if None) as (n, seq_len, F) float32.

        ``symbols``: names or ints, or an int64 index array (from ``indices``) for the
        allocation-free path together with ``out``.
        """
        if symbols is None:
            idx = self._all
        elif isinstance(symbols, np.ndarray) and symbols.dtype == np.int64:
            idx = symbols
        else:
            idx = self.indices(symbols)
        if out is None:
            out = np.empty((idx.shape[0], self._seq_len, self._n_features), dtype=np.float32)
        elif type(out) is not np.ndarray or out.dtype is not _F32 or out.ndim != 3 or not out.flags.writeable:
            raise self._out_error(out, idx.shape[0])
        code = _ring.read_batch(self._data, self._state, idx, out, self._pad)
        if code == _ring.BAD_INDEX:
            raise InferenceError(f"symbol index out of range (0..{self._n - 1}) in {short_repr(idx.tolist())}")
        if code != _ring.OK:
            raise self._out_error(out, idx.shape[0])
        return out

    # ---------------------------------------------------------------- readiness, time

    def count(self, symbol: Any = None) -> int:
        """Rows held for ``symbol`` (at most seq_len)."""
        i = self._default_idx() if symbol is None else self._idx(symbol)
        return int(self._state[i, _ring.COUNT])

    def last_timestamp(self, symbol: Any = None) -> int | None:
        """Bar time (ns since the epoch) of the symbol's newest row, None if never stamped."""
        i = self._default_idx() if symbol is None else self._idx(symbol)
        stamp = int(self._stamps[i])
        return None if stamp == _NO_STAMP else stamp

    def ready(self, symbol: Any = None, now: Any = None) -> bool:
        """At least ``warmup_bars`` rows in, and (with ttl and ``now``, a bar time) not stale."""
        i = self._default_idx() if symbol is None else self._idx(symbol)
        if self._state[i, _ring.COUNT] < self._warmup:
            return False
        if self._ttl and now is not None:
            stamp = self._stamps[i]
            return stamp == _NO_STAMP or timestamp_ns(now) - int(stamp) <= self._ttl
        return True

    def ready_mask(self, now: Any = None, out: np.ndarray | None = None) -> np.ndarray:
        """``ready`` for every registered symbol as a bool array (filled into ``out`` if given)."""
        if out is None:
            out = np.empty(self._n, dtype=bool)
        np.greater_equal(self._state[:, _ring.COUNT], self._warmup, out=out)
        if self._ttl and now is not None:
            cutoff = max(timestamp_ns(now) - self._ttl, _NO_STAMP)  # stays an int64
            out &= (self._stamps >= cutoff) | (self._stamps == _NO_STAMP)
        return out

    def expire(self, now: Any) -> int:
        """Empty every symbol whose newest row is more than ``ttl`` older than bar time ``now``.

        Returns how many were emptied (0 without a ttl).
        """
        if not self._ttl:
            return 0
        return int(_ring.expire_before(self._state, max(timestamp_ns(now) - self._ttl, _NO_STAMP)))

    def reset(self, symbol: Any = _MISSING) -> None:
        """Empty one symbol's ring (and forget its time), or every ring when called without one."""
        sl = slice(None) if symbol is _MISSING else self._idx(symbol)
        self._state[sl, _ring.POS] = 0
        self._state[sl, _ring.COUNT] = 0
        self._state[sl, _ring.STAMP] = _NO_STAMP

    # ---------------------------------------------------------------- properties

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def n_features(self) -> int:
        return self._n_features

    @property
    def warmup_bars(self) -> int:
        return self._warmup

    @property
    def padding(self) -> str:
        return self._padding

    @property
    def ttl(self) -> timedelta | None:
        return None if not self._ttl else timedelta(microseconds=self._ttl / 1_000)

    @property
    def ttl_ns(self) -> int:
        """The time-to-live in nanoseconds, 0 for none."""
        return self._ttl

    @property
    def symbols(self) -> list[str | None]:
        return list(self._names)

    @property
    def n_symbols(self) -> int:
        return self._n

    def __len__(self) -> int:
        return self._n

    def __contains__(self, symbol: Any) -> bool:
        try:
            return symbol in self._index
        except TypeError:  # unhashable: never a symbol
            return False

    def __repr__(self) -> str:
        return (
            f"SeqBufferManager(seq_len={self._seq_len}, n_features={self._n_features}, "
            f"symbols={self._n}, warmup_bars={self._warmup}, padding={self._padding!r}, ttl_ns={self._ttl})"
        )

    # ---------------------------------------------------------------- state

    def to_dict(self) -> dict[str, Any]:
        """A ``fastinfer.state`` envelope (kind "seqbuffer", version 2); ``from_dict(to_dict())``
        reads back identically.

        Rows are stored chronologically and end-aligned (zeros in front), so equal contents
        give equal dicts whatever the ring positions were.
        """
        rows = np.zeros((self._n, self._seq_len, self._n_features), dtype=np.float32)
        _ring.read_batch(self._data, self._state, self._all, rows, _ring.PAD_ZEROS)
        payload = {
            "seq_len": self._seq_len,
            "n_features": self._n_features,
            "warmup_bars": self._warmup,
            "padding": self._padding,
            "ttl_ns": self._ttl or None,
            "symbols": list(self._names),
            "default_index": self._default,
            "counts": [int(c) for c in self._state[:, _ring.COUNT]],
            "stamps": [None if s == _NO_STAMP else int(s) for s in self._stamps],
            "rows": _state.encode_array(rows),
        }
        return _state.wrap(KIND, VERSION, payload)

    @classmethod
    def from_dict(
        cls,
        state: Any,
        *,
        seq_len: int | None = None,
        n_features: int | None = None,
        source: str = "buffer state",
    ) -> SeqBufferManager:
        """Rebuild from ``to_dict()`` output (or a version 1 dict); every field is checked and a
        bad one is a ``StateError`` naming it.

        ``seq_len`` / ``n_features``: what the caller expects; a state of another shape is
        a ``StateError`` rather than a silently different buffer.
        """
        if isinstance(state, dict) and state.get("format") == LEGACY_FORMAT:
            payload = _payload_of_version_1(state, source)
        else:
            _, payload = _state.unwrap(state, KIND, {VERSION}, source=source)

        def fail(field: str, problem: str) -> StateError:
            return StateError(f"{source}: field {field!r}: {problem}")

        for key in _PAYLOAD_KEYS:
            if key not in payload:
                raise fail(key, "missing")

        def integer(field: str, lo: int, hi: int, value: Any = _MISSING) -> int:
            return _state.integer(payload[field] if value is _MISSING else value, field, lo, hi, source=source)

        t = integer("seq_len", 1, MAX_SEQ_LEN)
        f = integer("n_features", 1, MAX_FEATURES)
        if seq_len is not None and t != seq_len:
            raise fail("seq_len", f"state has {t}, expected {seq_len}")
        if n_features is not None and f != n_features:
            raise fail("n_features", f"state has {f}, expected {n_features}")
        if t * f > MAX_WINDOW:
            raise fail("n_features", f"seq_len x n_features = {t * f} is above the limit {MAX_WINDOW}")
        warmup = integer("warmup_bars", 0, t)
        if not isinstance(payload["padding"], str) or payload["padding"] not in PADDINGS:
            raise fail("padding", f"{short_repr(payload['padding'])} is not one of {', '.join(map(repr, PADDINGS))}")
        ttl = None if payload["ttl_ns"] is None else integer("ttl_ns", 1, _MAX_STAMP)
        names = payload["symbols"]
        if not isinstance(names, list) or not names or not all(s is None or isinstance(s, str) for s in names):
            raise fail("symbols", "expected a non-empty list of strings")
        if len(set(names)) != len(names):
            raise fail("symbols", "duplicate names")
        n = len(names)
        default = None if payload["default_index"] is None else integer("default_index", 0, n - 1)
        counts, stamps = payload["counts"], payload["stamps"]
        if not isinstance(counts, list) or len(counts) != n:
            raise fail("counts", f"expected a list of {n} integers")
        counts = [integer("counts", 0, t, c) for c in counts]
        if not isinstance(stamps, list) or len(stamps) != n:
            raise fail("stamps", f"expected a list of {n} integers or nulls")
        stamps = [_NO_STAMP if s is None else integer("stamps", _NO_STAMP + 1, _MAX_STAMP, s) for s in stamps]
        rows = _state.decode_array(payload["rows"], "rows", dtype="<f4", shape=(n, t, f), finite=True, source=source)

        self = cls(t, f, warmup_bars=warmup, padding=payload["padding"])
        # Rebuild the exact registration order (an anonymous symbol included).
        self._names, self._index, self._n = [], {}, 0
        self._alloc(n)
        for s in names:
            self._register(s)
        self._ttl = ttl or 0
        self._default = default
        # End-aligned in both halves of the mirror: the newest row is at T-1, the next goes to 0.
        self._data[:, :t] = rows
        self._data[:, t:] = rows
        self._state[:, _ring.POS] = 0
        self._state[:, _ring.COUNT] = counts
        self._stamps[:] = stamps
        return self

    def save(self, path: str | Path) -> None:
        """Write ``to_dict()`` atomically (temp file, fsync, rename): a crash keeps the old file; a
        path that cannot take it is a ``StateError``."""
        _state.write_envelope(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, *, seq_len: int | None = None, n_features: int | None = None) -> SeqBufferManager:
        """Read a ``save``d state; ``StateError`` naming the file (and field) if it is corrupt or
        does not match the expected ``seq_len`` / ``n_features``. A missing file raises
        ``FileNotFoundError``."""
        return cls.from_dict(_state.read_bounded(path), seq_len=seq_len, n_features=n_features, source=str(path))


_PAYLOAD_KEYS = (
    "seq_len",
    "n_features",
    "warmup_bars",
    "padding",
    "ttl_ns",
    "symbols",
    "default_index",
    "counts",
    "stamps",
    "rows",
)


def _payload_of_version_1(state: dict[str, Any], source: str) -> dict[str, Any]:
    """A version 1 dict (flat, sha256 over the raw rows) as a version 2 payload, its checksum checked."""
    for key in (*_PAYLOAD_KEYS[:-1], "version", "dtype", "data", "sha256"):
        if key not in state:
            raise StateError(f"{source}: field {key!r}: missing")
    if state["version"] != 1 or isinstance(state["version"], bool):
        raise StateError(f"{source}: field 'version': {short_repr(state['version'])} is not 1 (format {LEGACY_FORMAT})")
    if state["dtype"] != "<f4":
        raise StateError(f"{source}: field 'dtype': {short_repr(state['dtype'])} is not '<f4'")
    if not isinstance(state["data"], str):
        raise StateError(f"{source}: field 'data': expected a base64 string")
    try:
        raw = base64.b64decode(state["data"].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise StateError(f"{source}: field 'data': not valid base64 ({exc})") from None
    if hashlib.sha256(raw).hexdigest() != state["sha256"]:
        raise StateError(f"{source}: field 'data': does not match its sha256 (corrupt state)")
    payload = {key: state[key] for key in _PAYLOAD_KEYS[:-1]}
    n = len(state["symbols"]) if isinstance(state["symbols"], list) else 0
    shape = [n, state["seq_len"], state["n_features"]]
    payload["rows"] = {"dtype": "<f4", "shape": shape, "data": state["data"]}  # decode_array checks it
    return payload
