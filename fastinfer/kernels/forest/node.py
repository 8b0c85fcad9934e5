"""Step 4a: the node kernels — every tree walked slot by slot over the node layout (``pack.py``).

A step is ``slot = slot + offset + (ext[column] <= threshold)``: no data-dependent branch, so
one row walks `LANES` trees at once and a batch walks `LANES` rows through one tree at once.
A group stops early once all its lanes sit on leaves (only leaves have offset 0): trees are as
deep as their longest path, most rows leave far sooner (LightGBM's leaf-wise trees: depth ~10,
mean path ~3). Leaf values are summed per target in tree order in float32, as ORT sums them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .codes import (
    BLOCK,
    FCONST_BASE,
    FIN_FIELDS,
    GROUP_DEPTH,
    GROUP_FIELDS,
    GROUP_ROOTS,
    GROUP_TREES,
    NODE_CHAINS_AT,
    NODE_COLUMN_MASK,
    NODE_DEPTHS_AT,
    NODE_FIN_AT,
    NODE_GROUPS_AT,
    NODE_HAS_AT,
    NODE_N_CHAINS,
    NODE_N_FEATURES,
    NODE_N_GROUPS,
    NODE_N_TARGETS,
    NODE_N_TREES,
    NODE_NAN_LOW,
    NODE_OFFSET_SHIFT,
    NODE_ROOTS_AT,
    NODE_TARGETS_AT,
    NODE_WORD,
)
from .extend import fill_ext
from .finish import finish_rows

# Unsigned constants keep slot arithmetic unsigned: numba then emits no negative-index
# wraparound code on the traversal's critical path (a negative offset wraps around in uint64).
_WORD = np.uint64(NODE_WORD)
_COLUMN = np.uint32(NODE_COLUMN_MASK)
_SHIFT = np.uint32(NODE_OFFSET_SHIFT)
_SIGNED_SHIFT = np.int64(NODE_OFFSET_SHIFT)
_ZERO = np.float32(0.0)


@njit(cache=True, nogil=True, inline="always")
def _offset(w):
    """The word's signed 16-bit offset as a uint64 to add (sign-extended: wraps when negative)."""
    return np.uint64(np.int64(np.int32(w)) >> _SIGNED_SHIFT)


@njit(cache=True, nogil=True)
def node_one_row(X, out, prog, nodes, consts, scratch):
    """Row X[0] into out[0]: groups of LANES trees of equal depth walked together."""
    nf = nodes.view(np.float32)
    T = np.int64(prog[NODE_N_TREES])
    F = np.int64(prog[NODE_N_FEATURES])
    K = np.int64(prog[NODE_N_TARGETS])
    n_chains = np.int64(prog[NODE_N_CHAINS])
    n_ext = 2 * F + 1 + n_chains
    ext = scratch[:n_ext]
    vals = scratch[n_ext : n_ext + T + 1]
    sums = scratch[n_ext + T + 1 : n_ext + T + 1 + K]
    fill_ext(X[0], ext, F, prog[NODE_NAN_LOW], n_chains, np.int64(prog[NODE_CHAINS_AT]), prog, consts)
    g = np.int64(prog[NODE_GROUPS_AT])
    for _ in range(prog[NODE_N_GROUPS]):
        p0 = np.uint64(prog[g + GROUP_ROOTS])
        p1 = np.uint64(prog[g + GROUP_ROOTS + 1])
        p2 = np.uint64(prog[g + GROUP_ROOTS + 2])
        p3 = np.uint64(prog[g + GROUP_ROOTS + 3])
        p4 = np.uint64(prog[g + GROUP_ROOTS + 4])
        p5 = np.uint64(prog[g + GROUP_ROOTS + 5])
        p6 = np.uint64(prog[g + GROUP_ROOTS + 6])
        p7 = np.uint64(prog[g + GROUP_ROOTS + 7])
        for _ in range(prog[g + GROUP_DEPTH]):
            w0 = nodes[p0 + p0 + _WORD]
            w1 = nodes[p1 + p1 + _WORD]
            w2 = nodes[p2 + p2 + _WORD]
            w3 = nodes[p3 + p3 + _WORD]
            w4 = nodes[p4 + p4 + _WORD]
            w5 = nodes[p5 + p5 + _WORD]
            w6 = nodes[p6 + p6 + _WORD]
            w7 = nodes[p7 + p7 + _WORD]
            if (w0 | w1 | w2 | w3 | w4 | w5 | w6 | w7) >> _SHIFT == 0:
                break  # all eight lanes on leaves
            # next = slot + offset to its children + (x <= threshold)
            p0 = p0 + _offset(w0) + np.uint64(ext[np.uint64(w0 & _COLUMN)] <= nf[p0 + p0])
            p1 = p1 + _offset(w1) + np.uint64(ext[np.uint64(w1 & _COLUMN)] <= nf[p1 + p1])
            p2 = p2 + _offset(w2) + np.uint64(ext[np.uint64(w2 & _COLUMN)] <= nf[p2 + p2])
            p3 = p3 + _offset(w3) + np.uint64(ext[np.uint64(w3 & _COLUMN)] <= nf[p3 + p3])
            p4 = p4 + _offset(w4) + np.uint64(ext[np.uint64(w4 & _COLUMN)] <= nf[p4 + p4])
            p5 = p5 + _offset(w5) + np.uint64(ext[np.uint64(w5 & _COLUMN)] <= nf[p5 + p5])
            p6 = p6 + _offset(w6) + np.uint64(ext[np.uint64(w6 & _COLUMN)] <= nf[p6 + p6])
            p7 = p7 + _offset(w7) + np.uint64(ext[np.uint64(w7 & _COLUMN)] <= nf[p7 + p7])
        # a leaf's value is its threshold word
        vals[prog[g + GROUP_TREES]] = nf[p0 + p0]
        vals[prog[g + GROUP_TREES + 1]] = nf[p1 + p1]
        vals[prog[g + GROUP_TREES + 2]] = nf[p2 + p2]
        vals[prog[g + GROUP_TREES + 3]] = nf[p3 + p3]
        vals[prog[g + GROUP_TREES + 4]] = nf[p4 + p4]
        vals[prog[g + GROUP_TREES + 5]] = nf[p5 + p5]
        vals[prog[g + GROUP_TREES + 6]] = nf[p6 + p6]
        vals[prog[g + GROUP_TREES + 7]] = nf[p7 + p7]
        g += GROUP_FIELDS
    if K == 1:
        s = _ZERO
        for t in range(T):
            s += vals[t]
        sums[0] = s
    else:
        targets_at = np.int64(prog[NODE_TARGETS_AT])
        for k in range(K):
            sums[k] = _ZERO
        for t in range(T):
            sums[prog[targets_at + t]] += vals[t]
    fin_at = np.int64(prog[NODE_FIN_AT])
    has_at = np.int64(prog[NODE_HAS_AT])
    finish_rows(
        sums, prog[has_at : has_at + K], out, 0, 1, prog[fin_at : fin_at + FIN_FIELDS], consts[: FCONST_BASE + K]
    )


@njit(cache=True, nogil=True)
def _node_block(X, out, r0, r1, prog, nodes, consts, scratch):
    """Rows r0..r1 (at most BLOCK): tree by tree, LANES rows walked together per tree."""
    nf = nodes.view(np.float32)
    T = np.int64(prog[NODE_N_TREES])
    F = np.int64(prog[NODE_N_FEATURES])
    K = np.int64(prog[NODE_N_TARGETS])
    n_chains = np.int64(prog[NODE_N_CHAINS])
    chains_at = np.int64(prog[NODE_CHAINS_AT])
    roots_at = np.int64(prog[NODE_ROOTS_AT])
    depths_at = np.int64(prog[NODE_DEPTHS_AT])
    targets_at = np.int64(prog[NODE_TARGETS_AT])
    st = 2 * F + 1 + n_chains
    n = r1 - r0
    acc = scratch[st * BLOCK : st * BLOCK + K * BLOCK]
    for i in range(n):
        fill_ext(X[r0 + i], scratch[st * i : st * (i + 1)], F, prog[NODE_NAN_LOW], n_chains, chains_at, prog, consts)
        for k in range(K):
            acc[i * K + k] = _ZERO
    ext = scratch
    ust = np.uint64(st)
    for t in range(T):
        root = np.uint64(prog[roots_at + t])
        d = prog[depths_at + t]
        k = np.int64(prog[targets_at + t])
        i = 0
        while i + 8 <= n:
            o0 = np.uint64(i * st)
            o1 = o0 + ust
            o2 = o1 + ust
            o3 = o2 + ust
            o4 = o3 + ust
            o5 = o4 + ust
            o6 = o5 + ust
            o7 = o6 + ust
            p0 = root
            p1 = root
            p2 = root
            p3 = root
            p4 = root
            p5 = root
            p6 = root
            p7 = root
            for _ in range(d):
                w0 = nodes[p0 + p0 + _WORD]
                w1 = nodes[p1 + p1 + _WORD]
                w2 = nodes[p2 + p2 + _WORD]
                w3 = nodes[p3 + p3 + _WORD]
                w4 = nodes[p4 + p4 + _WORD]
                w5 = nodes[p5 + p5 + _WORD]
                w6 = nodes[p6 + p6 + _WORD]
                w7 = nodes[p7 + p7 + _WORD]
                if (w0 | w1 | w2 | w3 | w4 | w5 | w6 | w7) >> _SHIFT == 0:
                    break  # all eight rows on leaves
                p0 = p0 + _offset(w0) + np.uint64(ext[o0 + np.uint64(w0 & _COLUMN)] <= nf[p0 + p0])
                p1 = p1 + _offset(w1) + np.uint64(ext[o1 + np.uint64(w1 & _COLUMN)] <= nf[p1 + p1])
                p2 = p2 + _offset(w2) + np.uint64(ext[o2 + np.uint64(w2 & _COLUMN)] <= nf[p2 + p2])
                p3 = p3 + _offset(w3) + np.uint64(ext[o3 + np.uint64(w3 & _COLUMN)] <= nf[p3 + p3])
                p4 = p4 + _offset(w4) + np.uint64(ext[o4 + np.uint64(w4 & _COLUMN)] <= nf[p4 + p4])
                p5 = p5 + _offset(w5) + np.uint64(ext[o5 + np.uint64(w5 & _COLUMN)] <= nf[p5 + p5])
                p6 = p6 + _offset(w6) + np.uint64(ext[o6 + np.uint64(w6 & _COLUMN)] <= nf[p6 + p6])
                p7 = p7 + _offset(w7) + np.uint64(ext[o7 + np.uint64(w7 & _COLUMN)] <= nf[p7 + p7])
            acc[i * K + k] += nf[p0 + p0]
            acc[(i + 1) * K + k] += nf[p1 + p1]
            acc[(i + 2) * K + k] += nf[p2 + p2]
            acc[(i + 3) * K + k] += nf[p3 + p3]
            acc[(i + 4) * K + k] += nf[p4 + p4]
            acc[(i + 5) * K + k] += nf[p5 + p5]
            acc[(i + 6) * K + k] += nf[p6 + p6]
            acc[(i + 7) * K + k] += nf[p7 + p7]
            i += 8
        while i < n:
            o = np.uint64(i * st)
            p = root
            for _ in range(d):
                w = nodes[p + p + _WORD]
                p = p + _offset(w) + np.uint64(ext[o + np.uint64(w & _COLUMN)] <= nf[p + p])
            acc[i * K + k] += nf[p + p]
            i += 1
    fin_at = np.int64(prog[NODE_FIN_AT])
    has_at = np.int64(prog[NODE_HAS_AT])
    finish_rows(
        acc, prog[has_at : has_at + K], out, r0, n, prog[fin_at : fin_at + FIN_FIELDS], consts[: FCONST_BASE + K]
    )


@njit(cache=True, nogil=True)
def node_rows(X, out, prog, nodes, consts, scratch):
    N = X.shape[0]
    for r0 in range(0, N, BLOCK):
        _node_block(X, out, r0, min(N, r0 + BLOCK), prog, nodes, consts, scratch)


@njit(cache=True, nogil=True, parallel=True)
def node_rows_parallel(X, out, prog, nodes, consts, scratch_size):
    N = X.shape[0]
    n_blocks = (N + BLOCK - 1) // BLOCK
    for b in prange(n_blocks):
        scratch = np.empty(scratch_size, dtype=np.float32)
        _node_block(X, out, b * BLOCK, min(N, (b + 1) * BLOCK), prog, nodes, consts, scratch)
