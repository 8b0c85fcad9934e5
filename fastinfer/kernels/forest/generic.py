"""Step 4b: the generic kernel — ORT's per-node modes and aggregators, one tree at a time.

The reference path: any number of targets and weights per leaf, SUM/AVERAGE/MIN/MAX, every
split mode evaluated as ORT evaluates it (BRANCH_EQ runs node by node). Slower than the node
kernels; used where they cannot go and to check them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .codes import (
    AGG_AVERAGE,
    AGG_MIN,
    BLOCK,
    BRANCH_EQ,
    BRANCH_GT,
    BRANCH_GTE,
    BRANCH_LEQ,
    BRANCH_LT,
    GEN_CHILDREN,
    GEN_END_WEIGHT,
    GEN_FEATURE,
    GEN_FIRST_WEIGHT,
    GEN_MODE,
    GEN_TRACKS,
    LEAF,
)
from .finish import finish_rows

_ZERO = np.float32(0.0)


@njit(cache=True, nogil=True)
def _generic_row(x, sums, has, gi, thr, wt, wv, roots, agg):
    """One row's per-target aggregates into sums, has[j] = some reached leaf scored target j."""
    for j in range(sums.shape[0]):
        sums[j] = _ZERO
        has[j] = False
    for k in range(roots.shape[0]):
        p = roots[k]
        while gi[p, GEN_MODE] != LEAF:
            v = x[gi[p, GEN_FEATURE]]
            th = thr[p]
            m = gi[p, GEN_MODE]
            if m == BRANCH_LEQ:
                c = v <= th
            elif m == BRANCH_LT:
                c = v < th
            elif m == BRANCH_GTE:
                c = v >= th
            elif m == BRANCH_GT:
                c = v > th
            elif m == BRANCH_EQ:
                c = v == th
            else:
                c = v != th
            if gi[p, GEN_TRACKS] == 1 and v != v:
                c = True
            p = gi[p, GEN_CHILDREN] + (1 if c else 0)
        for w in range(gi[p, GEN_FIRST_WEIGHT], gi[p, GEN_END_WEIGHT]):
            j = wt[w]
            val = wv[w]
            if agg <= AGG_AVERAGE:
                sums[j] += val
            elif agg == AGG_MIN:
                if not has[j] or val < sums[j]:
                    sums[j] = val
            else:
                if not has[j] or val > sums[j]:
                    sums[j] = val
            has[j] = True


@njit(cache=True, nogil=True)
def generic_rows(X, out, sums, has, gi, thr, wt, wv, roots, fin, fconst, agg):
    for i in range(X.shape[0]):
        _generic_row(X[i], sums, has, gi, thr, wt, wv, roots, agg)
        finish_rows(sums, has, out, i, 1, fin, fconst)


@njit(cache=True, nogil=True, parallel=True)
def generic_rows_parallel(X, out, gi, thr, wt, wv, roots, fin, fconst, agg, K):
    N = X.shape[0]
    n_blocks = (N + BLOCK - 1) // BLOCK
    for b in prange(n_blocks):
        sums = np.empty(K, dtype=np.float32)
        has = np.empty(K, dtype=np.bool_)
        for i in range(b * BLOCK, min(N, (b + 1) * BLOCK)):
            _generic_row(X[i], sums, has, gi, thr, wt, wv, roots, agg)
            finish_rows(sums, has, out, i, 1, fin, fconst)
