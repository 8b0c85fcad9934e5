"""Step 4c: the bitvector kernels — QuickScorer (Lucchese et al., SIGIR 2015).

Every tree keeps a bitvector of the leaves still reachable, all set at first. Per extended
column the splits are sorted by threshold; a row's value is false on (``value > threshold``)
exactly a prefix of them, so the scan stops at the first true split. Each false split clears
the leaves of its ``<=`` subtree. The exit leaf is then the lowest set bit: leaves are numbered
left to right with the ``<=`` child first, and every leaf left of the true exit leaf sits under a
false split on its path. Trees of up to 64 leaves take one word; larger ones several, a false
split clearing its leaf range [lo, hi).

NaN compares false with every threshold, so a NaN scans the whole column: every split on it
is false, as in the node kernels (splits that send NaN to ``<=`` read the NaN-as--inf column).
Leaf values are summed per target in tree order in float32, as ORT sums them.

Batches use the vectorised variant (V-QuickScorer, Lucchese et al. 2016, blockwise as in
BWQS): `VQ_ROWS` rows scan each column's thresholds together, one SIMD compare-and-mask per
threshold for all of them, until every row's value is at or below it; trees go `VQ_TREES` at a
time so the block's bitvectors stay in L1.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .codes import (
    BLOCK,
    BV_ACTIVE_AT,
    BV_CHAINS_AT,
    BV_FIN_AT,
    BV_HAS_AT,
    BV_INIT_AT,
    BV_LEAVES_AT,
    BV_N_ACTIVE,
    BV_N_CHAINS,
    BV_N_FEATURES,
    BV_N_TARGETS,
    BV_N_TREES,
    BV_NAN_LOW,
    BV_STARTS_AT,
    BV_TARGETS_AT,
    BV_THRESHOLDS_AT,
    BV_TREE_OF_AT,
    BV_VQ_BLOCKS_AT,
    BV_VQ_COLS_AT,
    BV_VQ_MASK_AT,
    BV_VQ_N_BLOCKS,
    BV_VQ_STARTS_AT,
    BV_VQ_THR_AT,
    BV_VQ_TREE_AT,
    BV_WORDS,
    FCONST_BASE,
    FIN_FIELDS,
    VQ_BLOCK_FIELDS,
    VQ_ROWS,
)
from .extend import fill_ext
from .finish import finish_rows

_ZERO = np.float32(0.0)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW32 = np.uint64(0xFFFFFFFF)
_U32 = np.uint64(32)
_U1 = np.uint64(1)


@intrinsic
def _lowest_set_bit(typingctx, x):
    """Index of the lowest set bit of a uint64 (llvm.cttz: tzcnt/bsf)."""
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.cttz.i64")
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 0)])

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _clear_range(bv, base, lo, hi):
    """Clear leaf bits lo..hi-1 of the multi-word bitvector starting at bv[base]."""
    for w in range(lo >> 6, ((hi - 1) >> 6) + 1):
        a = max(lo - 64 * w, 0)
        b = min(hi - 64 * w, 64)
        upper = _ALL if b == 64 else (_U1 << np.uint64(b)) - _U1
        lower = (_U1 << np.uint64(a)) - _U1
        bv[base + w] &= ~(upper ^ lower)


@njit(cache=True, nogil=True)
def bitvector_row(X, out, r, prog, words, consts, scratch, bv):
    """Row X[r] into out[r]; scratch: ext + per-target sums, bv: one bitvector per tree."""
    T = np.int64(prog[BV_N_TREES])
    F = np.int64(prog[BV_N_FEATURES])
    K = np.int64(prog[BV_N_TARGETS])
    W = np.int64(prog[BV_WORDS])
    n_chains = np.int64(prog[BV_N_CHAINS])
    n_ext = 2 * F + 1 + n_chains
    ext = scratch[:n_ext]
    sums = scratch[n_ext : n_ext + K]
    fill_ext(X[r], ext, F, prog[BV_NAN_LOW], n_chains, np.int64(prog[BV_CHAINS_AT]), prog, consts)
    init_at = np.int64(prog[BV_INIT_AT])
    for t in range(T * W):
        bv[t] = words[init_at + t]
    active_at = np.int64(prog[BV_ACTIVE_AT])
    starts_at = np.int64(prog[BV_STARTS_AT])
    tree_of_at = np.int64(prog[BV_TREE_OF_AT])
    thresholds_at = np.int64(prog[BV_THRESHOLDS_AT])
    for a in range(prog[BV_N_ACTIVE]):
        v = ext[prog[active_at + a]]
        k = np.int64(prog[starts_at + a])
        end = np.int64(prog[starts_at + a + 1])
        if W == 1:
            while k < end and not (v <= consts[thresholds_at + k]):
                bv[prog[tree_of_at + k]] &= words[k]
                k += 1
        else:
            while k < end and not (v <= consts[thresholds_at + k]):
                lo_hi = words[k]
                _clear_range(bv, np.int64(prog[tree_of_at + k]) * W, np.int64(lo_hi & _LOW32), np.int64(lo_hi >> _U32))
                k += 1
    leaves_at = np.int64(prog[BV_LEAVES_AT])
    targets_at = np.int64(prog[BV_TARGETS_AT])
    for j in range(K):
        sums[j] = _ZERO
    for t in range(T):
        w = 0
        while bv[t * W + w] == 0:  # the exit leaf's bit is never cleared
            w += 1
        leaf = 64 * (t * W + w) + _lowest_set_bit(bv[t * W + w])
        sums[prog[targets_at + t]] += consts[leaves_at + leaf]
    fin_at = np.int64(prog[BV_FIN_AT])
    has_at = np.int64(prog[BV_HAS_AT])
    finish_rows(
        sums, prog[has_at : has_at + K], out, r, 1, prog[fin_at : fin_at + FIN_FIELDS], consts[: FCONST_BASE + K]
    )


@njit(cache=True, nogil=True)
def bitvector_rows(X, out, prog, words, consts, scratch, bv):
    for i in range(X.shape[0]):
        bitvector_row(X, out, i, prog, words, consts, scratch, bv)


@njit(cache=True, nogil=True, parallel=True)
def bitvector_rows_parallel(X, out, prog, words, consts, scratch_size, bv_size):
    N = X.shape[0]
    n_blocks = (N + BLOCK - 1) // BLOCK
    for b in prange(n_blocks):
        scratch = np.empty(scratch_size, dtype=np.float32)
        bv = np.empty(bv_size, dtype=np.uint64)
        for i in range(b * BLOCK, min(N, (b + 1) * BLOCK)):
            bitvector_row(X, out, i, prog, words, consts, scratch, bv)


@njit(cache=True, nogil=True)
def _vq_block(X, out, r0, r1, prog, words, consts, scratch, bv):
    """Rows r0..r1 (at most VQ_ROWS; short blocks repeat their last row) by the vectorised variant."""
    F = np.int64(prog[BV_N_FEATURES])
    K = np.int64(prog[BV_N_TARGETS])
    n_chains = np.int64(prog[BV_N_CHAINS])
    n_ext = 2 * F + 1 + n_chains
    n = r1 - r0
    row = scratch[:n_ext]
    ext_t = scratch[n_ext : n_ext * (1 + VQ_ROWS)]  # column-major: ext_t[c * VQ_ROWS + r]
    acc = scratch[n_ext * (1 + VQ_ROWS) : n_ext * (1 + VQ_ROWS) + K * VQ_ROWS]
    chains_at = np.int64(prog[BV_CHAINS_AT])
    for r in range(VQ_ROWS):
        fill_ext(X[r0 + min(r, n - 1)], row, F, prog[BV_NAN_LOW], n_chains, chains_at, prog, consts)
        for c in range(n_ext):
            ext_t[c * VQ_ROWS + r] = row[c]
    for j in range(K * VQ_ROWS):
        acc[j] = _ZERO
    init_at = np.int64(prog[BV_INIT_AT])
    blocks_at = np.int64(prog[BV_VQ_BLOCKS_AT])
    cols_at = np.int64(prog[BV_VQ_COLS_AT])
    starts_at = np.int64(prog[BV_VQ_STARTS_AT])
    tree_at = np.int64(prog[BV_VQ_TREE_AT])
    thr_at = np.int64(prog[BV_VQ_THR_AT])
    mask_at = np.int64(prog[BV_VQ_MASK_AT])
    leaves_at = np.int64(prog[BV_LEAVES_AT])
    targets_at = np.int64(prog[BV_TARGETS_AT])
    for b in range(prog[BV_VQ_N_BLOCKS]):
        first = np.int64(prog[blocks_at + VQ_BLOCK_FIELDS * b])
        end = np.int64(prog[blocks_at + VQ_BLOCK_FIELDS * b + 1])
        for t in range(end - first):
            start = words[init_at + first + t]
            for r in range(VQ_ROWS):
                bv[t * VQ_ROWS + r] = start
        for e in range(prog[blocks_at + VQ_BLOCK_FIELDS * b + 2], prog[blocks_at + VQ_BLOCK_FIELDS * b + 3]):
            v = ext_t[np.int64(prog[cols_at + e]) * VQ_ROWS : (np.int64(prog[cols_at + e]) + 1) * VQ_ROWS]
            highest = v[0]  # NaN if any row is NaN (a NaN is never at or below a threshold)
            for r in range(1, VQ_ROWS):
                if v[r] > highest or v[r] != v[r]:
                    highest = v[r]
            for k in range(np.int64(prog[starts_at + e]), np.int64(prog[starts_at + e + 1])):
                t = consts[thr_at + k]
                if highest <= t:
                    break  # every row is at or below this threshold, and the ones after it
                base = np.int64(prog[tree_at + k]) * VQ_ROWS
                keep = words[mask_at + k]
                for r in range(VQ_ROWS):
                    bv[base + r] &= _ALL if v[r] <= t else keep
        for t in range(end - first):
            tree = first + t
            k = np.int64(prog[targets_at + tree])
            leaves = leaves_at + 64 * tree
            for r in range(n):
                acc[r * K + k] += consts[leaves + _lowest_set_bit(bv[t * VQ_ROWS + r])]
    fin_at = np.int64(prog[BV_FIN_AT])
    has_at = np.int64(prog[BV_HAS_AT])
    finish_rows(
        acc, prog[has_at : has_at + K], out, r0, n, prog[fin_at : fin_at + FIN_FIELDS], consts[: FCONST_BASE + K]
    )


@njit(cache=True, nogil=True)
def bitvector_blocks(X, out, prog, words, consts, scratch, bv):
    N = X.shape[0]
    for r0 in range(0, N, VQ_ROWS):
        _vq_block(X, out, r0, min(N, r0 + VQ_ROWS), prog, words, consts, scratch, bv)


@njit(cache=True, nogil=True, parallel=True)
def bitvector_blocks_parallel(X, out, prog, words, consts, scratch_size, bv_size):
    N = X.shape[0]
    n_blocks = (N + BLOCK - 1) // BLOCK
    for b in prange(n_blocks):
        scratch = np.empty(scratch_size, dtype=np.float32)
        bv = np.empty(bv_size, dtype=np.uint64)
        for r0 in range(b * BLOCK, min(N, (b + 1) * BLOCK), VQ_ROWS):
            _vq_block(X, out, r0, min(N, r0 + VQ_ROWS, (b + 1) * BLOCK), prog, words, consts, scratch, bv)
