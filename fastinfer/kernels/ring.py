"""Per-symbol ring buffers over a mirrored ring: one contiguous float32 array, numba kernels.

State lives in two arrays the caller owns:

* ``data``  float32 ``(n_symbols, 2T, F)``: every row is written twice, at slot ``p`` and at
  its mirror ``p + T``, so the newest ``count`` rows of symbol ``s`` are always the one
  contiguous block ``data[s, pos + T - count : pos + T]``, oldest first. A read is then one
  straight copy (memcpy speed) instead of two pieces around the wrap; the price is twice the
  memory and a second ``F``-float store per push.
* ``state`` int64 ``(n_symbols, 3)``: ``[:, POS]`` the slot written next (in ``[0, T)``),
  ``[:, COUNT]`` the number of valid rows (capped at ``T``), ``[:, STAMP]`` the bar time of
  the symbol's newest row or ``NO_STAMP``; used for time-to-live in bar time (never the wall
  clock).

Reads copy the rows out in chronological order (oldest first); while ``count < T`` the front
of the sequence is padded with zeros (``PAD_ZEROS``) or with copies of the oldest row
(``PAD_REPEAT_FIRST``; zeros while the symbol has no row at all). ``push_read`` and
``push_block_read`` push and read in one call, so a bar costs one kernel dispatch.

Every kernel checks its indices and shapes and returns a status code instead of raising, so
that a bad call can never write out of bounds; the Python layer (``fastinfer.buffers``) turns
codes into errors. A row containing NaN/inf (after the cast to float32) is never written. No
kernel allocates. Rows are float32 or float64 (the Python layer casts other real dtypes), so
no new dtype ever triggers a compile on the hot path.

Leaf module: imports nothing from the rest of fastinfer.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

POS = 0
COUNT = 1
STAMP = 2

PAD_ZEROS = 0
PAD_REPEAT_FIRST = 1

# "No bar time known" in state[:, STAMP] / as the stamp argument of a push.
NO_STAMP = np.iinfo(np.int64).min

# Status codes (a value >= 0 is the first non-finite column of a rejected row).
OK = -1
BAD_INDEX = -2
BAD_SHAPE = -3
BAD_TIME = -4  # the stamp is older than the symbol's newest row
BAD_OUT = -5  # the output array has the wrong shape


def allocate(n_symbols: int, seq_len: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh, empty ``(data, state)`` for ``n_symbols`` rings of ``seq_len`` x ``n_features``."""
    data = np.zeros((n_symbols, 2 * seq_len, n_features), dtype=np.float32)
    state = np.zeros((n_symbols, 3), dtype=np.int64)
    state[:, STAMP] = NO_STAMP
    return data, state


@intrinsic
def _memcpy(typingctx, dst, dst_start, src, src_start, count):
    """``dst.flat[dst_start : dst_start + count] = src.flat[src_start : ...]`` as one ``llvm.memcpy``.

    Only for C-contiguous arrays of one dtype that do not overlap (``_copy_rows`` checks the
    layouts at compile time; the callers own both arrays)."""
    if dst.dtype != src.dtype or dst.layout != "C" or src.layout != "C":
        return None
    sig = types.void(dst, types.intp, src, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        dst_ty, _, src_ty, _, _ = signature.args
        d = context.make_array(dst_ty)(context, builder, args[0])
        s = context.make_array(src_ty)(context, builder, args[2])
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(dst_ty.dtype)))
        cgutils.raw_memcpy(builder, builder.gep(d.data, [args[1]]), builder.gep(s.data, [args[3]]), args[4], itemsize)
        return context.get_dummy_value()

    return sig, codegen


def _copy_rows(dst, dst_row, src, src_row, n_rows):
    """``dst[dst_row : dst_row + n_rows] = src[src_row : src_row + n_rows]`` for 2-D arrays (numba only)."""
    raise NotImplementedError  # replaced by the overload below inside jitted code


@overload(_copy_rows)
def _copy_rows_impl(dst, dst_row, src, src_row, n_rows):
    if dst.layout == "C" and src.layout == "C" and dst.dtype == src.dtype:

        def contiguous(dst, dst_row, src, src_row, n_rows):  # the window is one block: one memcpy
            f = src.shape[1]
            _memcpy(dst, dst_row * f, src, src_row * f, n_rows * f)

        return contiguous

    def strided(dst, dst_row, src, src_row, n_rows):  # e.g. a caller's non-contiguous out
        for r in range(n_rows):
            for j in range(src.shape[1]):
                dst[dst_row + r, j] = src[src_row + r, j]

    return strided


@njit(cache=True, nogil=True)
def _first_nonfinite_scan(row):
    for j in range(row.shape[0]):
        if not np.isfinite(np.float32(row[j])):
            return j
    return -1


def first_nonfinite(row):
    """Index of the first column that is NaN/inf once cast to float32, or -1."""
    raise NotImplementedError  # numba only; see the overload


@overload(first_nonfinite, jit_options={"cache": True})
def _first_nonfinite_impl(row):
    if row.dtype == types.float32 and row.layout == "C":

        def float32_row(row):
            # A float32 is NaN/inf iff its exponent bits are all ones. OR-ing that test over the
            # row has no early exit, so it vectorises; the scan runs only for a bad row.
            bits = row.view(np.uint32)
            bad = np.uint32(0)
            for j in range(bits.shape[0]):
                bad |= np.uint32((bits[j] & np.uint32(0x7F800000)) == np.uint32(0x7F800000))
            return _first_nonfinite_scan(row) if bad else -1

        return float32_row
    return lambda row: _first_nonfinite_scan(row)


def _store_row(rows, r, row):
    """``rows[r] = row`` cast to float32 (numba only; see the overload)."""
    raise NotImplementedError


@overload(_store_row, jit_options={"cache": True})
def _store_row_impl(rows, r, row):
    if row.dtype == rows.dtype and row.layout == "C" and rows.layout == "C":

        def same_dtype(rows, r, row):
            _memcpy(rows, r * rows.shape[1], row, 0, rows.shape[1])

        return same_dtype

    def cast(rows, r, row):
        for j in range(rows.shape[1]):
            rows[r, j] = np.float32(row[j])

    return cast


@njit(cache=True, nogil=True)
def _write(data, state, sym, row, stamp, ttl):
    # The caller has validated sym, the row and the stamp.
    if stamp != NO_STAMP:
        # A gap longer than ttl (in bar time) makes the old rows stale: start over.
        if ttl > 0 and state[sym, STAMP] != NO_STAMP and stamp - state[sym, STAMP] > ttl:
            state[sym, POS] = 0
            state[sym, COUNT] = 0
        state[sym, STAMP] = stamp
    t = data.shape[1] // 2
    p = state[sym, POS]
    rows = data[sym]
    _store_row(rows, p, row)
    _store_row(rows, p + t, row)  # the mirror
    p += 1
    if p == t:
        p = 0
    state[sym, POS] = p
    if state[sym, COUNT] < t:
        state[sym, COUNT] += 1


@njit(cache=True, nogil=True)
def _check_push(data, state, sym, row, stamp):
    if sym < 0 or sym >= data.shape[0]:
        return BAD_INDEX
    if row.shape[0] != data.shape[2]:
        return BAD_SHAPE
    if stamp != NO_STAMP and state[sym, STAMP] != NO_STAMP and stamp < state[sym, STAMP]:
        return BAD_TIME
    return first_nonfinite(row)


@njit(cache=True, nogil=True)
def push(data, state, sym, row, stamp, ttl):
    """Append ``row`` (F,) to symbol ``sym``.

    ``stamp``: the row's bar time (any int64 unit, e.g. ns since the epoch) or NO_STAMP.
    ``ttl``: in the same unit, 0 for none; when the gap since the symbol's previous stamp
    exceeds it the ring is emptied before the row goes in. Returns OK, BAD_INDEX,
    BAD_SHAPE, BAD_TIME or the first non-finite column; nothing changes unless OK.
    """
    code = _check_push(data, state, sym, row, stamp)
    if code != OK:
        return code
    _write(data, state, sym, row, stamp, ttl)
    return OK


@njit(cache=True, nogil=True)
def _check_block(data, state, idx, block, bad, stamp):
    n = idx.shape[0]
    if block.shape[0] != n or block.shape[1] != data.shape[2] or bad.shape[0] < n:
        return BAD_SHAPE
    for i in range(n):
        if idx[i] < 0 or idx[i] >= data.shape[0]:
            return BAD_INDEX
    if stamp != NO_STAMP:
        for i in range(n):
            if state[idx[i], STAMP] != NO_STAMP and stamp < state[idx[i], STAMP]:
                return BAD_TIME
    rejected = 0
    for i in range(n):
        bad[i] = first_nonfinite(block[i])
        if bad[i] >= 0:
            rejected += 1
    return rejected


@njit(cache=True, nogil=True)
def push_block(data, state, idx, block, bad, strict, stamp, ttl):
    """Append ``block[i]`` to symbol ``idx[i]`` for every i, all with the same ``stamp``.

    ``bad[i]`` receives -1 or the first non-finite column of row i. Returns the number of
    rejected rows (rejected rows are never written, and their symbols are left as they
    were); with ``strict`` nothing at all is written when any row is rejected. Returns
    BAD_INDEX / BAD_SHAPE / BAD_TIME, with nothing written, for an out-of-range index,
    mismatched shapes, or a stamp older than some symbol's newest row.
    """
    rejected = _check_block(data, state, idx, block, bad, stamp)
    if rejected < 0 or (strict and rejected):
        return rejected
    for i in range(idx.shape[0]):
        if bad[i] < 0:
            _write(data, state, idx[i], block[i], stamp, ttl)
    return rejected


@njit(cache=True, nogil=True)
def _read(data, state, sym, out, k, pad):
    # out[k] <- the sequence of sym: one contiguous copy of the newest c rows, then padding.
    t = data.shape[1] // 2
    f = data.shape[2]
    c = state[sym, COUNT]
    npad = t - c
    dst = out[k]
    _copy_rows(dst, npad, data[sym], state[sym, POS] + t - c, c)
    if npad > 0:
        if pad == PAD_REPEAT_FIRST and c > 0:
            for r in range(npad):
                for j in range(f):
                    dst[r, j] = dst[npad, j]
        else:
            for r in range(npad):
                for j in range(f):
                    dst[r, j] = 0.0


@njit(cache=True, nogil=True)
def read(data, state, sym, out, k, pad):
    """Copy symbol ``sym``'s chronological (T, F) sequence into ``out[k]`` (``out`` is (n, T, F)).

    Returns OK, BAD_INDEX or BAD_OUT."""
    if sym < 0 or sym >= data.shape[0]:
        return BAD_INDEX
    if k < 0 or k >= out.shape[0] or 2 * out.shape[1] != data.shape[1] or out.shape[2] != data.shape[2]:
        return BAD_OUT
    _read(data, state, sym, out, k, pad)
    return OK


@njit(cache=True, nogil=True)
def read_batch(data, state, idx, out, pad):
    """``out[i]`` <- the sequence of symbol ``idx[i]``; ``out`` is (n, T, F). Returns OK or a code."""
    n = idx.shape[0]
    if out.shape[0] != n or 2 * out.shape[1] != data.shape[1] or out.shape[2] != data.shape[2]:
        return BAD_OUT
    for i in range(n):
        if idx[i] < 0 or idx[i] >= data.shape[0]:
            return BAD_INDEX
    for i in range(n):
        _read(data, state, idx[i], out, i, pad)
    return OK


@njit(cache=True, nogil=True)
def push_read(data, state, sym, row, stamp, ttl, out, k, pad):
    """``push`` then ``read`` of the same symbol into ``out[k]``, in one dispatch.

    Returns OK, or (nothing written, nothing read) the code ``push`` or ``read`` would return."""
    if k < 0 or k >= out.shape[0] or 2 * out.shape[1] != data.shape[1] or out.shape[2] != data.shape[2]:
        return BAD_OUT
    code = _check_push(data, state, sym, row, stamp)
    if code != OK:
        return code
    _write(data, state, sym, row, stamp, ttl)
    _read(data, state, sym, out, k, pad)
    return OK


@njit(cache=True, nogil=True)
def push_block_read(data, state, idx, block, bad, strict, stamp, ttl, out, pad):
    """``push_block`` then ``read_batch`` of the same ``idx`` into ``out``, in one dispatch.

    Returns what ``push_block`` returns (BAD_OUT, with nothing written, for a wrong ``out``).
    The sequences are read unless the block was refused (a negative code, or ``strict`` with
    rejected rows); symbols whose rows were skipped read their unchanged sequence."""
    if out.shape[0] != idx.shape[0] or 2 * out.shape[1] != data.shape[1] or out.shape[2] != data.shape[2]:
        return BAD_OUT
    rejected = _check_block(data, state, idx, block, bad, stamp)
    if rejected < 0 or (strict and rejected):
        return rejected
    for i in range(idx.shape[0]):
        if bad[i] < 0:
            _write(data, state, idx[i], block[i], stamp, ttl)
    for i in range(idx.shape[0]):
        _read(data, state, idx[i], out, i, pad)
    return rejected


@njit(cache=True, nogil=True)
def expire_before(state, cutoff):
    """Empty every ring whose newest stamp is older than ``cutoff``; returns how many were emptied.

    Rings without a stamp (NO_STAMP) are left alone.
    """
    n = 0
    for s in range(state.shape[0]):
        if state[s, COUNT] > 0 and state[s, STAMP] != NO_STAMP and state[s, STAMP] < cutoff:
            state[s, POS] = 0
            state[s, COUNT] = 0
            n += 1
    return n


def warmup() -> None:
    """Compile every kernel on tiny inputs (float32 and float64 rows, both padding rules)."""
    data, state = allocate(2, 3, 2)
    bad = np.empty(2, dtype=np.int64)
    idx = np.arange(2, dtype=np.int64)
    out = np.empty((2, 3, 2), dtype=np.float32)
    for dtype in (np.float32, np.float64):
        push(data, state, 0, np.ones(2, dtype=dtype), NO_STAMP, 0)
        push_block(data, state, idx, np.ones((2, 2), dtype=dtype), bad, True, 1, 0)
        for pad in (PAD_ZEROS, PAD_REPEAT_FIRST):
            push_read(data, state, 0, np.ones(2, dtype=dtype), 2, 0, out, 0, pad)
            push_block_read(data, state, idx, np.ones((2, 2), dtype=dtype), bad, False, 3, 0, out, pad)
    for pad in (PAD_ZEROS, PAD_REPEAT_FIRST):
        read(data, state, 0, out, 0, pad)
        read_batch(data, state, idx, out, pad)
    expire_before(state, 0)
