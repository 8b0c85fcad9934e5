"""Per-symbol ring buffers: one contiguous ``(n_symbols, T, F)`` float32 array, numba kernels.

State lives in three arrays the caller owns:

* ``data``  float32 ``(n_symbols, T, F)``: the rows; row ``state[s, POS]`` is written next.
* ``state`` int64 ``(n_symbols, 2)``: ``[:, POS]`` the next write position, ``[:, COUNT]``
  the number of valid rows (capped at ``T``).
* ``stamps`` int64 ``(n_symbols,)``: the bar time of each symbol's newest row, or
  ``NO_STAMP``; used for time-to-live in bar time (never the wall clock).

The oldest valid row of symbol ``s`` is ``(pos - count) mod T``. Reads copy the rows out in
chronological order (oldest first); while ``count < T`` the front of the sequence is padded
with zeros (``PAD_ZEROS``) or with copies of the oldest row (``PAD_REPEAT_FIRST``; zeros
while the symbol has no row at all).

``state`` and ``stamps`` must have one row per symbol of ``data``. Every kernel checks its
indices and shapes and returns a status code instead of raising, so that a bad call can never
write out of bounds; the Python layer (``fastinfer.buffers``) turns codes into errors. A row
containing NaN/inf (after the cast to float32) is never written. No kernel allocates.

Leaf module: imports nothing from the rest of fastinfer.
"""

from __future__ import annotations

import numpy as np
from numba import njit

POS = 0
COUNT = 1

PAD_ZEROS = 0
PAD_REPEAT_FIRST = 1

# "No bar time known" in a stamps array / as the stamp argument of a push.
NO_STAMP = np.iinfo(np.int64).min

# Status codes (a value >= 0 is the first non-finite column of a rejected row).
OK = -1
BAD_INDEX = -2
BAD_SHAPE = -3
BAD_TIME = -4  # the stamp is older than the symbol's newest row


def allocate(n_symbols: int, seq_len: int, n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh, empty ``(data, state, stamps)`` for ``n_symbols`` rings of ``seq_len`` × ``n_features``."""
    data = np.zeros((n_symbols, seq_len, n_features), dtype=np.float32)
    state = np.zeros((n_symbols, 2), dtype=np.int64)
    stamps = np.full(n_symbols, NO_STAMP, dtype=np.int64)
    return data, state, stamps


@njit(cache=True, nogil=True)
def first_nonfinite(row):
    """Index of the first column that is NaN/inf once cast to float32, or -1."""
    for j in range(row.shape[0]):
        if not np.isfinite(np.float32(row[j])):
            return j
    return -1


@njit(cache=True, nogil=True)
def _write(data, state, stamps, sym, row, stamp, ttl):
    # The caller has validated sym, the row and the stamp.
    if stamp != NO_STAMP:
        # A gap longer than ttl (in bar time) makes the old rows stale: start over.
        if ttl > 0 and stamps[sym] != NO_STAMP and stamp - stamps[sym] > ttl:
            state[sym, POS] = 0
            state[sym, COUNT] = 0
        stamps[sym] = stamp
    t = data.shape[1]
    p = state[sym, POS]
    for j in range(row.shape[0]):
        data[sym, p, j] = row[j]
    p += 1
    if p == t:
        p = 0
    state[sym, POS] = p
    if state[sym, COUNT] < t:
        state[sym, COUNT] += 1


@njit(cache=True, nogil=True)
def push(data, state, stamps, sym, row, stamp, ttl):
    """Append ``row`` (F,) to symbol ``sym``.

    ``stamp``: the row's bar time (any int64 unit, e.g. ns since the epoch) or NO_STAMP.
    ``ttl``: in the same unit, 0 for none; when the gap since the symbol's previous stamp
    exceeds it the ring is emptied before the row goes in. Returns OK, BAD_INDEX,
    BAD_SHAPE, BAD_TIME or the first non-finite column; nothing changes unless OK.
    """
    if sym < 0 or sym >= data.shape[0]:
        return BAD_INDEX
    if row.shape[0] != data.shape[2]:
        return BAD_SHAPE
    if stamp != NO_STAMP and stamps[sym] != NO_STAMP and stamp < stamps[sym]:
        return BAD_TIME
    bad = first_nonfinite(row)
    if bad >= 0:
        return bad
    _write(data, state, stamps, sym, row, stamp, ttl)
    return OK


@njit(cache=True, nogil=True)
def push_block(data, state, stamps, idx, block, bad, strict, stamp, ttl):
    """Append ``block[i]`` to symbol ``idx[i]`` for every i, all with the same ``stamp``.

    ``bad[i]`` receives -1 or the first non-finite column of row i. Returns the number of
    rejected rows (rejected rows are never written, and their symbols are left as they
    were); with ``strict`` nothing at all is written when any row is rejected. Returns
    BAD_INDEX / BAD_SHAPE / BAD_TIME, with nothing written, for an out-of-range index,
    mismatched shapes, or a stamp older than some symbol's newest row.
    """
    n = idx.shape[0]
    if block.shape[0] != n or block.shape[1] != data.shape[2] or bad.shape[0] < n:
        return BAD_SHAPE
    for i in range(n):
        if idx[i] < 0 or idx[i] >= data.shape[0]:
            return BAD_INDEX
    if stamp != NO_STAMP:
        for i in range(n):
            if stamps[idx[i]] != NO_STAMP and stamp < stamps[idx[i]]:
                return BAD_TIME
    rejected = 0
    for i in range(n):
        bad[i] = first_nonfinite(block[i])
        if bad[i] >= 0:
            rejected += 1
    if strict and rejected:
        return rejected
    for i in range(n):
        if bad[i] < 0:
            _write(data, state, stamps, idx[i], block[i], stamp, ttl)
    return rejected


@njit(cache=True, nogil=True)
def _read(data, state, sym, out, pad):
    t = data.shape[1]
    f = data.shape[2]
    c = state[sym, COUNT]
    start = state[sym, POS] - c
    if start < 0:
        start += t
    npad = t - c
    src = start
    for k in range(c):
        for j in range(f):
            out[npad + k, j] = data[sym, src, j]
        src += 1
        if src == t:
            src = 0
    if npad > 0:
        if pad == PAD_REPEAT_FIRST and c > 0:
            for k in range(npad):
                for j in range(f):
                    out[k, j] = out[npad, j]
        else:
            for k in range(npad):
                for j in range(f):
                    out[k, j] = 0.0


@njit(cache=True, nogil=True)
def read(data, state, sym, out, pad):
    """Copy symbol ``sym``'s chronological (T, F) sequence into ``out``. Returns OK or a code."""
    if sym < 0 or sym >= data.shape[0]:
        return BAD_INDEX
    if out.shape[0] != data.shape[1] or out.shape[1] != data.shape[2]:
        return BAD_SHAPE
    _read(data, state, sym, out, pad)
    return OK


@njit(cache=True, nogil=True)
def read_batch(data, state, idx, out, pad):
    """``out[i]`` ← the sequence of symbol ``idx[i]``; ``out`` is (n, T, F). Returns OK or a code."""
    n = idx.shape[0]
    if out.shape[0] != n or out.shape[1] != data.shape[1] or out.shape[2] != data.shape[2]:
        return BAD_SHAPE
    for i in range(n):
        if idx[i] < 0 or idx[i] >= data.shape[0]:
            return BAD_INDEX
    for i in range(n):
        _read(data, state, idx[i], out[i], pad)
    return OK


@njit(cache=True, nogil=True)
def expire_before(state, stamps, cutoff):
    """Empty every ring whose newest stamp is older than ``cutoff``; returns how many were emptied.

    Rings without a stamp (NO_STAMP) are left alone.
    """
    n = 0
    for s in range(state.shape[0]):
        if state[s, COUNT] > 0 and stamps[s] != NO_STAMP and stamps[s] < cutoff:
            state[s, POS] = 0
            state[s, COUNT] = 0
            n += 1
    return n


def warmup() -> None:
    """Compile every kernel on tiny inputs (float32 and float64 rows, both padding rules)."""
    data, state, stamps = allocate(2, 3, 2)
    bad = np.empty(2, dtype=np.int64)
    idx = np.arange(2, dtype=np.int64)
    out = np.empty((3, 2), dtype=np.float32)
    outb = np.empty((2, 3, 2), dtype=np.float32)
    for dtype in (np.float32, np.float64):
        push(data, state, stamps, 0, np.ones(2, dtype=dtype), NO_STAMP, 0)
        push_block(data, state, stamps, idx, np.ones((2, 2), dtype=dtype), bad, True, 1, 0)
    for pad in (PAD_ZEROS, PAD_REPEAT_FIRST):
        read(data, state, 0, out, pad)
        read_batch(data, state, idx, outb, pad)
    expire_before(state, stamps, 0)
