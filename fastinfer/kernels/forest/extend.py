"""Kernel helper: the extended row every node/bitvector split reads (layout in ``codes.py``)."""

from __future__ import annotations

import numpy as np
from numba import njit

from .codes import (
    CHAIN_BITSET,
    CHAIN_COUNT,
    CHAIN_FEATURE,
    CHAIN_FIELDS,
    CHAIN_KIND,
    CHAIN_NAN_MEMBER,
    CHAIN_OFFSET,
    CHAIN_TABLED,
    TABLE_CODES,
    TABLE_FEATURE,
    TABLE_FIELDS,
    TABLE_FIRST_CHAIN,
    TABLE_N_CHAINS,
    TABLE_OFFSET,
)

_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_NEG_INF = np.float32(-np.inf)


@njit(cache=True, nogil=True, inline="always")
def is_member(v, prog, consts, row):
    """Chain membership of the float32 value v, exactly as ORT's run of ``x == value`` nodes decides.

    Bitset chains hold integer categories: v is a member when it is one of them as a float, i.e.
    an integer (``-0.0`` is 0) whose bit is set; non-integers, negatives and values past the
    bitset are not. List chains compare v with each value.
    """
    if v != v:
        return prog[row + CHAIN_NAN_MEMBER] != 0
    offset = np.int64(prog[row + CHAIN_OFFSET])
    count = np.int64(prog[row + CHAIN_COUNT])
    if prog[row + CHAIN_KIND] == CHAIN_BITSET:
        if not (v >= _ZERO and v < np.float32(32 * count)):
            return False
        k = np.int64(v)
        if np.float32(k) != v:
            return False
        return (prog[offset + (k >> 5)] >> np.uint32(k & 31)) & np.uint32(1) != 0
    for j in range(count):  # noqa: SIM110 (a loop numba compiles; any() over a generator it does not)
        if v == consts[offset + j]:
            return True
    return False


@njit(cache=True, nogil=True, inline="always")
def fill_ext(x, ext, n_features, nan_low, n_chains, chains_at, prog, consts):
    """ext = [x, x with NaN as -inf (when some split reads it), NaN, chain memberships]."""
    F = n_features
    for f in range(F):
        ext[f] = x[f]
    if nan_low:
        for f in range(F):
            v = x[f]
            ext[F + f] = _NEG_INF if v != v else v
    ext[2 * F] = np.nan
    n_tables = np.int64(prog[chains_at])
    for t in range(n_tables):  # one table row per categorical feature: all its chains at once
        rec = chains_at + 1 + TABLE_FIELDS * t
        v = x[prog[rec + TABLE_FEATURE]]
        M = np.int64(prog[rec + TABLE_CODES])
        if v != v:
            code = M + 1
        elif v >= _ZERO and v < np.float32(M) and np.float32(np.int64(v)) == v:
            code = np.int64(v)
        else:
            code = M
        width = np.int64(prog[rec + TABLE_N_CHAINS])
        src = np.int64(prog[rec + TABLE_OFFSET]) + code * width
        dst = 2 * F + 1 + np.int64(prog[rec + TABLE_FIRST_CHAIN])
        ext[dst : dst + width] = consts[src : src + width]
    rows_at = chains_at + 1 + TABLE_FIELDS * n_tables
    for c in range(n_chains):
        row = rows_at + CHAIN_FIELDS * c
        if prog[row + CHAIN_KIND] != CHAIN_TABLED:
            ext[2 * F + 1 + c] = _ZERO if is_member(x[prog[row + CHAIN_FEATURE]], prog, consts, row) else _ONE
