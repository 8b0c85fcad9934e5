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

State. ``to_dict()``/``from_dict()`` use a versioned JSON-safe format (rows as base64
little-endian float32 with a sha256); ``save(path)`` writes it atomically
(``fastinfer.atomic``), ``load(path)`` validates it and raises ``StateError`` naming the
file and the field on corruption or a seq_len / n_features mismatch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import read_json, write_atomic_json
from .config import ModelSettings
from .errors import InferenceError, StateError
from .kernels import ring as _ring

FORMAT = "fastinfer.seqbuffer"
VERSION = 1
PADDINGS = {"zeros": _ring.PAD_ZEROS, "repeat_first": _ring.PAD_REPEAT_FIRST}

_NO_STAMP = _ring.NO_STAMP
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
            f"timestamp {ts!r}: expected a datetime, pandas Timestamp, numpy datetime64 or int ns since the epoch"
        )
    if value == _NO_STAMP:
        raise InferenceError("timestamp is NaT")
    if not _NO_STAMP < value <= _MAX_STAMP:
        raise InferenceError(f"timestamp {ts!r} is outside the int64 nanosecond range")
    return value


def _ttl_ns(ttl: Any) -> int:
    """0 for no time-to-live, else a positive number of nanoseconds."""
    if ttl is None:
        return 0
    if isinstance(ttl, bool):
        raise ValueError(f"ttl {ttl!r}: expected a timedelta or a number of seconds")
    if isinstance(ttl, np.timedelta64):
        ns = int(ttl.astype("timedelta64[ns]").astype(np.int64))
    elif isinstance(ttl, timedelta):
        value = getattr(ttl, "value", None)  # pandas.Timedelta carries exact ns
        ns = (
            int(value)
            if isinstance(value, (int, np.integer))
            else ((ttl.days * 86_400 + ttl.seconds) * 1_000_000_000 + ttl.microseconds * 1_000)
        )
    elif isinstance(ttl, (int, float, np.integer, np.floating)):
        ns = round(float(ttl) * 1e9)
    else:
        raise ValueError(f"ttl {ttl!r}: expected a timedelta or a number of seconds")
    if ns <= 0:
        raise ValueError(f"ttl must be positive, got {ttl!r}")
    return ns


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class SeqBufferManager:
    """Rolling ``(seq_len, n_features)`` float32 sequences for one or many symbols.

    ``SeqBufferManager(seq_len, n_features, symbol=None, *, symbols=None, warmup_bars=None,
    padding=None, ttl=None, settings=None)``: ``seq_len`` None takes
    ``settings.seq_buffer_size``; ``warmup_bars`` defaults to ``settings.seq_warmup_bars``
    (capped at ``seq_len``) and ``padding`` to ``settings.seq_padding``; ``settings``
    defaults to ``ModelSettings()``. ``symbol`` names the default symbol used when
    ``push``/``get_sequence``/``ready`` get none; with neither ``symbol`` nor ``symbols``
    the manager holds one anonymous symbol (named ``None``).
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
        self._seq_len = _positive_int("seq_len", settings.seq_buffer_size if seq_len is None else seq_len)
        self._n_features = _positive_int("n_features", n_features)
        if warmup_bars is None:
            warmup_bars = min(settings.seq_warmup_bars, self._seq_len)
        if (
            isinstance(warmup_bars, bool)
            or not isinstance(warmup_bars, (int, np.integer))
            or not 0 <= warmup_bars <= self._seq_len
        ):
            raise ValueError(f"warmup_bars must be an integer in [0, seq_len={self._seq_len}], got {warmup_bars!r}")
        self._warmup = int(warmup_bars)
        padding = settings.seq_padding if padding is None else padding
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(map(repr, PADDINGS))}, got {padding!r}")
        self._padding = padding
        self._pad = PADDINGS[padding]
        self._ttl = _ttl_ns(ttl)

        self._names: list[str | None] = []
        self._index: dict[str | None, int] = {}
        self._n = 0
        self._alloc(0)
        names = list(symbols) if symbols is not None else []
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
        data, state, stamps = _ring.allocate(capacity, self._seq_len, self._n_features)
        if self._n:
            data[: self._n] = self._data
            state[: self._n] = self._state
            stamps[: self._n] = self._stamps
        self._cap_data, self._cap_state, self._cap_stamps = data, state, stamps
        self._cap_bad = np.full(capacity, -1, dtype=np.int64)
        self._views()

    def _views(self) -> None:
        # Kernels see exactly the registered symbols: their bounds checks are then exact.
        n = self._n
        self._data = self._cap_data[:n]
        self._state = self._cap_state[:n]
        self._stamps = self._cap_stamps[:n]
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
        symbols = list(symbols)
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
        return np.array([self._idx(s) for s in symbols], dtype=np.int64)

    # ---------------------------------------------------------------- push

    def push(self, symbol: Any, features: Any = _MISSING, *, timestamp: Any = None) -> None:
        """``push(features)`` for the default symbol, or ``push(symbol, features)``.

        ``features``: (F,) or (1, F); any real dtype (stored as float32). An unknown symbol
        name is registered. ``timestamp``: the bar time (required when ``ttl`` is set).
        """
        if features is _MISSING:
            features = symbol
            i = self._default_idx()
        elif type(symbol) is int or isinstance(symbol, np.integer):
            i = self._idx(symbol)
        else:
            i = self._index.get(symbol)
            if i is None:
                i = self._register(symbol)
        row = self._row(i, features)
        if timestamp is None:
            if self._ttl:
                raise InferenceError(f"symbol {self._names[i]!r}: a bar timestamp is required when ttl is set")
            stamp = _NO_STAMP
        else:
            stamp = timestamp_ns(timestamp)
        code = _ring.push(self._data, self._state, self._stamps, i, row, stamp, self._ttl)
        if code != _ring.OK:
            raise self._row_error(i, row, code, stamp)

    def push_all(self, block: Any, *, timestamp: Any = None, strict: bool = True) -> int:
        """One bar for every registered symbol: ``block`` is (n_symbols, F) in index order.

        ``strict`` (default): if any row is bad, raise and write nothing. Otherwise bad rows
        are skipped (their symbols keep their state), ``rejected_columns`` tells which, and
        the number skipped is returned. ``timestamp`` is the bar time of the whole block.
        """
        return self._push_rows(self._all, block, timestamp, strict)

    def push_many(self, symbols: Any, block: Any, *, timestamp: Any = None, strict: bool = True) -> int:
        """Like ``push_all`` for a subset: ``block[i]`` goes to ``symbols[i]`` (names, ints or
        an int64 index array; names must be registered)."""
        idx = symbols if isinstance(symbols, np.ndarray) and symbols.dtype == np.int64 else self.indices(symbols)
        return self._push_rows(idx, block, timestamp, strict)

    def _push_rows(self, idx: np.ndarray, block: Any, timestamp: Any, strict: bool) -> int:
        if type(block) is not np.ndarray:
            block = np.asarray(block)
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
        stamp = self._block_stamp(timestamp)
        code = _ring.push_block(self._data, self._state, self._stamps, idx, block, self._bad, strict, stamp, self._ttl)
        if code == _ring.BAD_INDEX:
            raise InferenceError(f"symbol index out of range (0..{self._n - 1}) in {idx!r}")
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
        return features

    def _row_error(self, i: int, row: np.ndarray, code: int, stamp: int) -> InferenceError:
        name = self._names[i]
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
        if out.dtype != np.float32 or out.ndim not in (2, 3) or (out.ndim == 3 and out.shape[0] != 1):
            raise InferenceError(
                f"out has shape {out.shape} and dtype {out.dtype}, "
                f"expected (1, {self._seq_len}, {self._n_features}) float32"
            )
        code = _ring.read(self._data, self._state, i, out[0] if out.ndim == 3 else out, self._pad)
        if code != _ring.OK:
            raise InferenceError(f"out has shape {out.shape}, expected (1, {self._seq_len}, {self._n_features})")
        return out

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
        if out.dtype != np.float32 or out.ndim != 3:
            raise InferenceError(
                f"out has shape {out.shape} and dtype {out.dtype}, "
                f"expected ({idx.shape[0]}, {self._seq_len}, {self._n_features}) float32"
            )
        code = _ring.read_batch(self._data, self._state, idx, out, self._pad)
        if code == _ring.BAD_INDEX:
            raise InferenceError(f"symbol index out of range (0..{self._n - 1}) in {idx!r}")
        if code != _ring.OK:
            raise InferenceError(
                f"out has shape {out.shape}, expected ({idx.shape[0]}, {self._seq_len}, {self._n_features})"
            )
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
        return int(_ring.expire_before(self._state, self._stamps, max(timestamp_ns(now) - self._ttl, _NO_STAMP)))

    def reset(self, symbol: Any = _MISSING) -> None:
        """Empty one symbol's ring (and forget its time), or every ring when called without one."""
        sl = slice(None) if symbol is _MISSING else self._idx(symbol)
        self._state[sl] = 0
        self._stamps[sl] = _NO_STAMP

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
        return symbol in self._index

    def __repr__(self) -> str:
        return (
            f"SeqBufferManager(seq_len={self._seq_len}, n_features={self._n_features}, "
            f"symbols={self._n}, warmup_bars={self._warmup}, padding={self._padding!r}, ttl_ns={self._ttl})"
        )

    # ---------------------------------------------------------------- state

    def to_dict(self) -> dict[str, Any]:
        """A versioned, JSON-safe snapshot; ``from_dict(to_dict())`` reads back identically.

        Rows are stored chronologically and end-aligned (zeros in front), so equal contents
        give equal dicts whatever the ring positions were.
        """
        rows = np.zeros((self._n, self._seq_len, self._n_features), dtype="<f4")
        _ring.read_batch(self._data, self._state, self._all, rows, _ring.PAD_ZEROS)
        raw = rows.tobytes()
        return {
            "format": FORMAT,
            "version": VERSION,
            "seq_len": self._seq_len,
            "n_features": self._n_features,
            "warmup_bars": self._warmup,
            "padding": self._padding,
            "ttl_ns": self._ttl or None,
            "symbols": list(self._names),
            "default_index": self._default,
            "counts": [int(c) for c in self._state[:, _ring.COUNT]],
            "stamps": [None if s == _NO_STAMP else int(s) for s in self._stamps],
            "dtype": "<f4",
            "data": base64.b64encode(raw).decode("ascii"),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }

    @classmethod
    def from_dict(
        cls,
        state: Any,
        *,
        seq_len: int | None = None,
        n_features: int | None = None,
        source: str = "buffer state",
    ) -> SeqBufferManager:
        """Rebuild from ``to_dict()`` output; every field is checked (``StateError`` names it).

        ``seq_len`` / ``n_features``: what the caller expects; a state of another shape is
        a ``StateError`` rather than a silently different buffer.
        """

        def fail(field: str, problem: str) -> StateError:
            return StateError(f"{source}: field {field!r}: {problem}")

        if not isinstance(state, dict):
            raise StateError(f"{source}: expected a mapping, got {type(state).__name__}")
        for key in (
            "format",
            "version",
            "seq_len",
            "n_features",
            "warmup_bars",
            "padding",
            "ttl_ns",
            "symbols",
            "default_index",
            "counts",
            "stamps",
            "dtype",
            "data",
            "sha256",
        ):
            if key not in state:
                raise fail(key, "missing")
        if state["format"] != FORMAT:
            raise fail("format", f"{state['format']!r} is not {FORMAT!r}")
        if state["version"] != VERSION or isinstance(state["version"], bool):
            raise fail("version", f"unsupported version {state['version']!r} (this build reads {VERSION})")

        def integer(field: str, lo: int, hi: int | None = None, value: Any = _MISSING) -> int:
            value = state[field] if value is _MISSING else value
            if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
                raise fail(field, f"{value!r} is not an integer in [{lo}, {hi if hi is not None else '∞'}]")
            return value

        t = integer("seq_len", 1)
        f = integer("n_features", 1)
        if seq_len is not None and t != seq_len:
            raise fail("seq_len", f"state has {t}, expected {seq_len}")
        if n_features is not None and f != n_features:
            raise fail("n_features", f"state has {f}, expected {n_features}")
        warmup = integer("warmup_bars", 0, t)
        if state["padding"] not in PADDINGS:
            raise fail("padding", f"{state['padding']!r} is not one of {', '.join(map(repr, PADDINGS))}")
        ttl = None if state["ttl_ns"] is None else integer("ttl_ns", 1)
        names = state["symbols"]
        if not isinstance(names, list) or not names or not all(s is None or isinstance(s, str) for s in names):
            raise fail("symbols", "expected a non-empty list of strings")
        if len(set(names)) != len(names):
            raise fail("symbols", "duplicate names")
        n = len(names)
        default = None if state["default_index"] is None else integer("default_index", 0, n - 1)
        counts, stamps = state["counts"], state["stamps"]
        if not isinstance(counts, list) or len(counts) != n:
            raise fail("counts", f"expected a list of {n} integers")
        counts = [integer("counts", 0, t, c) for c in counts]
        if not isinstance(stamps, list) or len(stamps) != n:
            raise fail("stamps", f"expected a list of {n} integers or nulls")
        stamps = [_NO_STAMP if s is None else integer("stamps", _NO_STAMP + 1, None, s) for s in stamps]
        if state["dtype"] != "<f4":
            raise fail("dtype", f"{state['dtype']!r} is not '<f4'")
        if not isinstance(state["data"], str):
            raise fail("data", "expected a base64 string")
        try:
            raw = base64.b64decode(state["data"].encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise fail("data", f"not valid base64 ({exc})") from None
        if len(raw) != n * t * f * 4:
            raise fail("data", f"{len(raw)} bytes, expected {n * t * f * 4} for {n} × {t} × {f} float32")
        if hashlib.sha256(raw).hexdigest() != state["sha256"]:
            raise fail("data", "does not match its sha256 (corrupt state)")
        rows = np.frombuffer(raw, dtype="<f4").reshape(n, t, f)
        if not np.isfinite(rows).all():
            raise fail("data", "contains NaN/inf")

        self = cls(t, f, warmup_bars=warmup, padding=state["padding"])
        # Rebuild the exact registration order (an anonymous symbol included).
        self._names, self._index, self._n = [], {}, 0
        self._alloc(n)
        for s in names:
            self._register(s)
        self._ttl = ttl or 0
        self._default = default
        self._data[:] = rows
        self._state[:, _ring.POS] = 0  # end-aligned: the newest row is at T-1, the next goes to 0
        self._state[:, _ring.COUNT] = counts
        self._stamps[:] = stamps
        return self

    def save(self, path: str | Path) -> None:
        """Write ``to_dict()`` atomically (temp file, fsync, rename): a crash keeps the old file."""
        write_atomic_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, *, seq_len: int | None = None, n_features: int | None = None) -> SeqBufferManager:
        """Read a ``save``d state; ``StateError`` naming the file (and field) if it is corrupt or
        does not match the expected ``seq_len`` / ``n_features``. A missing file raises
        ``FileNotFoundError``."""
        try:
            state = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StateError(f"{path}: not a valid buffer state file ({exc})") from None
        return cls.from_dict(state, seq_len=seq_len, n_features=n_features, source=str(path))
