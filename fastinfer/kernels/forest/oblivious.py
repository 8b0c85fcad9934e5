"""Step 4d: the oblivious kernels — trees whose every level tests one split (CatBoost's).

A tree's leaf is the integer whose bit k is level k's test ``ext[column] <= threshold``: no walk,
one lookup in the tree's leaf table (``pack.ObliviousLayout``). One row tests its levels one by
one. A batch holds a block of `OB_ROWS` rows feature-major (each extended column a level reads is
one contiguous run of the block's values, a "slot"); per tree, `OB_GROUP` levels are tested per
pass across the block's rows (SIMD compares, the leaf indices kept in one small array), then
each row adds its leaf's value. Leaf values are summed per row and target in tree order in
float32, as ORT sums them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from .codes import (
    FCONST_BASE,
    FIN_FIELDS,
    OB_CHAINS_AT,
    OB_FIN_AT,
    OB_GROUP,
    OB_HAS_AT,
    OB_LEAVES_AT,
    OB_LEVEL_COLUMN_AT,
    OB_LEVEL_SLOT_AT,
    OB_N_CHAINS,
    OB_N_FEATURES,
    OB_N_SLOTS,
    OB_N_TARGETS,
    OB_N_TREES,
    OB_NAN_LOW,
    OB_ROWS,
    OB_SLOTS_AT,
    OB_THRESHOLDS_AT,
    OB_TREE_FIELDS,
    OB_TREE_FIRST_LEAF,
    OB_TREE_FIRST_LEVEL,
    OB_TREE_LEAVES,
    OB_TREE_LEVELS,
    OB_TREES_AT,
)
from .extend import fill_ext
from .finish import finish_rows

_ZERO = np.float32(0.0)
_NO_BIT = np.uint32(0)
_NEG_INF = np.float32(-np.inf)

if OB_GROUP != 3:  # the pass below is written out for three levels
    raise ImportError("oblivious.py tests OB_GROUP = 3 levels per pass")


@intrinsic
def _or32(typingctx, a, b):
    """a | b on uint32 as a 32-bit op (numba widens integer arithmetic to 64 bits, which kept the
    vectorised level passes in 64-bit lanes: half the rows per instruction)."""
    sig = types.uint32(types.uint32, types.uint32)

    def codegen(context, builder, signature, args):
        return builder.or_(args[0], args[1])

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _bits(a, ta, bit_a, b, tb, bit_b, c, tc, bit_c):
    """The bits of three levels' tests that hold."""
    return _or32(_or32(bit_a if a <= ta else _NO_BIT, bit_b if b <= tb else _NO_BIT), bit_c if c <= tc else _NO_BIT)


@njit(cache=True, nogil=True)
def oblivious_one_row(X, out, prog, consts, scratch):
    """Row X[0] into out[0]; scratch: ext + per-target sums."""
    T = np.int64(prog[OB_N_TREES])
    F = np.int64(prog[OB_N_FEATURES])
    K = np.int64(prog[OB_N_TARGETS])
    n_chains = np.int64(prog[OB_N_CHAINS])
    n_ext = 2 * F + 1 + n_chains
    ext = scratch[:n_ext]
    sums = scratch[n_ext : n_ext + K]
    fill_ext(X[0], ext, F, prog[OB_NAN_LOW], n_chains, np.int64(prog[OB_CHAINS_AT]), prog, consts)
    trees_at = np.int64(prog[OB_TREES_AT])
    columns = prog[np.int64(prog[OB_LEVEL_COLUMN_AT]) :]
    thresholds = consts[np.int64(prog[OB_THRESHOLDS_AT]) :]
    leaves = consts[np.int64(prog[OB_LEAVES_AT]) :]
    for j in range(K):
        sums[j] = _ZERO
    s = _ZERO
    for t in range(T):
        tree = trees_at + OB_TREE_FIELDS * t
        first = np.int64(prog[tree + OB_TREE_FIRST_LEVEL])
        leaf = np.int64(0)
        for k in range(np.int64(prog[tree + OB_TREE_LEVELS])):
            leaf |= np.int64(ext[columns[first + k]] <= thresholds[first + k]) << k
        at = np.int64(prog[tree + OB_TREE_FIRST_LEAF]) + leaf
        if K == 1:
            s += leaves[at]
        else:
            n_leaves = np.int64(prog[tree + OB_TREE_LEAVES])
            for j in range(K):
                sums[j] += leaves[at + j * n_leaves]
    if K == 1:
        sums[0] = s
    fin_at = np.int64(prog[OB_FIN_AT])
    has_at = np.int64(prog[OB_HAS_AT])
    finish_rows(
        sums, prog[has_at : has_at + K], out, 0, 1, prog[fin_at : fin_at + FIN_FIELDS], consts[: FCONST_BASE + K]
    )


@njit(cache=True, nogil=True, inline="always")
def _fill_block(X, r0, n, prog, consts, row, block):
    """The block's slots: feature columns copied (NaN as -inf in the copies that read it so),
    chain columns from each row's extended row (slots are sorted: chains come last)."""
    F = np.int64(prog[OB_N_FEATURES])
    n_slots = np.int64(prog[OB_N_SLOTS])
    slots_at = np.int64(prog[OB_SLOTS_AT])
    first_chain = n_slots
    for c in range(n_slots):
        column = np.int64(prog[slots_at + c])
        run = block[c * OB_ROWS : c * OB_ROWS + n]
        if column < F:
            for i in range(n):
                run[i] = X[r0 + i, column]
        elif column < 2 * F:
            for i in range(n):
                v = X[r0 + i, column - F]
                run[i] = _NEG_INF if v != v else v
        else:
            first_chain = c
            break
    if first_chain < n_slots:
        n_chains = np.int64(prog[OB_N_CHAINS])
        chains_at = np.int64(prog[OB_CHAINS_AT])
        for i in range(n):
            fill_ext(X[r0 + i], row, F, prog[OB_NAN_LOW], n_chains, chains_at, prog, consts)
            for c in range(first_chain, n_slots):
                block[c * OB_ROWS + i] = row[prog[slots_at + c]]


@njit(cache=True, nogil=True, inline="always")
def _leaf_indices(idx, block, n, slots, thresholds, first, levels):
    """idx[i] = the leaf of the block's row i in one tree: its levels tested OB_GROUP at a time."""
    for g in range(0, levels, OB_GROUP):
        a0 = np.int64(slots[first + g]) * OB_ROWS
        b0 = np.int64(slots[first + g + 1]) * OB_ROWS
        c0 = np.int64(slots[first + g + 2]) * OB_ROWS
        a = block[a0 : a0 + n]
        b = block[b0 : b0 + n]
        c = block[c0 : c0 + n]
        ta = thresholds[first + g]
        tb = thresholds[first + g + 1]
        tc = thresholds[first + g + 2]
        bit_a = np.uint32(1 << g)
        bit_b = np.uint32(2 << g)
        bit_c = np.uint32(4 << g)
        if g == 0:
            for i in range(n):  # SIMD across the block's rows
                idx[i] = _bits(a[i], ta, bit_a, b[i], tb, bit_b, c[i], tc, bit_c)
        else:
            for i in range(n):
                idx[i] = _or32(idx[i], _bits(a[i], ta, bit_a, b[i], tb, bit_b, c[i], tc, bit_c))


@njit(cache=True, nogil=True)
def _oblivious_block(X, out, r0, r1, prog, consts, scratch, index):
    """Rows r0..r1 (at most OB_ROWS): tree by tree, its levels tested across the block's rows.

    scratch: one row's ext, the block's slots (slot s: rows 0..n-1 at ``s * OB_ROWS``), the sums
    target-major (target j: rows at ``j * OB_ROWS``), the same row-major; index: each row's leaf in
    the current tree.
    """
    T = np.int64(prog[OB_N_TREES])
    F = np.int64(prog[OB_N_FEATURES])
    K = np.int64(prog[OB_N_TARGETS])
    n_slots = np.int64(prog[OB_N_SLOTS])
    n_ext = 2 * F + 1 + np.int64(prog[OB_N_CHAINS])
    n = r1 - r0
    row = scratch[:n_ext]
    block = scratch[n_ext : n_ext + n_slots * OB_ROWS]
    acc = scratch[n_ext + n_slots * OB_ROWS : n_ext + (n_slots + K) * OB_ROWS]
    _fill_block(X, r0, n, prog, consts, row, block)
    for j in range(K * OB_ROWS):
        acc[j] = _ZERO
    trees_at = np.int64(prog[OB_TREES_AT])
    slots = prog[np.int64(prog[OB_LEVEL_SLOT_AT]) :]
    thresholds = consts[np.int64(prog[OB_THRESHOLDS_AT]) :]
    leaves = consts[np.int64(prog[OB_LEAVES_AT]) :]
    idx = index[:n]
    for t in range(T):
        tree = trees_at + OB_TREE_FIELDS * t
        levels = np.int64(prog[tree + OB_TREE_LEVELS])
        if levels == 0:
            for i in range(n):
                idx[i] = 0
        _leaf_indices(idx, block, n, slots, thresholds, np.int64(prog[tree + OB_TREE_FIRST_LEVEL]), levels)
        first_leaf = np.int64(prog[tree + OB_TREE_FIRST_LEAF])
        n_leaves = np.int64(prog[tree + OB_TREE_LEAVES])
        for j in range(K):
            table = leaves[first_leaf + j * n_leaves :]
            sums = acc[j * OB_ROWS : j * OB_ROWS + n]
            for i in range(n):
                sums[i] += table[idx[i]]
    if K > 1:  # finish_rows reads each row's sums side by side
        rows = scratch[n_ext + (n_slots + K) * OB_ROWS : n_ext + (n_slots + 2 * K) * OB_ROWS]
        for j in range(K):
            for i in range(n):
                rows[i * K + j] = acc[j * OB_ROWS + i]
        acc = rows
    fin_at = np.int64(prog[OB_FIN_AT])
    has_at = np.int64(prog[OB_HAS_AT])
    finish_rows(
        acc, prog[has_at : has_at + K], out, r0, n, prog[fin_at : fin_at + FIN_FIELDS], consts[: FCONST_BASE + K]
    )


@njit(cache=True, nogil=True)
def oblivious_rows(X, out, prog, consts, scratch, index):
    N = X.shape[0]
    for r0 in range(0, N, OB_ROWS):
        _oblivious_block(X, out, r0, min(N, r0 + OB_ROWS), prog, consts, scratch, index)


@njit(cache=True, nogil=True, parallel=True)
def oblivious_rows_parallel(X, out, prog, consts, scratch_size):
    N = X.shape[0]
    n_blocks = (N + OB_ROWS - 1) // OB_ROWS
    for b in prange(n_blocks):
        scratch = np.empty(scratch_size, dtype=np.float32)
        index = np.empty(OB_ROWS, dtype=np.uint32)
        _oblivious_block(X, out, b * OB_ROWS, min(N, (b + 1) * OB_ROWS), prog, consts, scratch, index)
