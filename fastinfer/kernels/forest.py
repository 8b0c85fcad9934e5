"""Compiled evaluation of ONNX ``TreeEnsembleRegressor`` nodes (ai.onnx.ml).

The node's attributes are read once into flat arrays and evaluated by numba
kernels that reproduce ONNX Runtime's CPU implementation
(``onnxruntime/core/providers/cpu/ml/tree_ensemble_common.h`` and
``tree_ensemble_aggregator.h``) bit for bit:

* a split compares the float32 feature with the float32 threshold as ORT does;
* NaN follows IEEE comparison unless ``nodes_missing_value_tracks_true`` sends it
  to the true branch;
* leaf values are summed tree by tree in the node list's tree order, in the
  threshold type (float32: ORT 1.32 refuses double tensors for a float input),
  then divided by the number of trees for AVERAGE and the base value added last.

Two layouts serve two kernels:

``fast``  every split rewritten as ``x <= t`` (LT/GT/GTE become LEQ on an
          adjacent float32 threshold, with the children swapped where needed),
          each tree packed breadth-first, the two children of a node in adjacent
          slots so that the next slot is ``left + (x <= t)``, and every leaf a
          slot that points to itself.  A tree then takes exactly ``depth`` steps
          with no data-dependent branch, which lets one row walk 8 trees at once
          and a batch walk 8 rows through one tree at once.  Used for one target
          with SUM or AVERAGE and no EQ/NEQ split: every converter's output here.
``generic`` the node's modes kept as they are, any number of targets, SUM,
          AVERAGE, MIN and MAX; one tree at a time.

NaN routing in ``fast``: each row is copied to ``[x, x with NaN as -inf, NaN]``.
A split whose NaN goes to the ``x <= t`` side reads feature ``F + f``, other
splits read ``f`` (NaN compares false), and a leaf reads slot ``2F`` (always
NaN) with a zero offset, so it never moves; its threshold word holds its value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import onnx
from numba import njit, prange
from onnx import helper, numpy_helper

__all__ = ["ForestKernel", "TreeEnsembleInfo", "find_tree_ensembles", "warmup"]

ML_DOMAIN = "ai.onnx.ml"
_MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5, "LEAF": 6}
_LEAF = 6
_AGGREGATES = {"SUM": 0, "AVERAGE": 1, "MIN": 2, "MAX": 3}
_LANES = 8  # trees (one row) or rows (batch) walked together
_BLOCK = 128  # rows per batch block: one tree's nodes stay in L1 across it
_PARALLEL_MIN_ROWS = 1024  # below this a thread fork costs more than it saves


# --------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TreeEnsembleInfo:
    """What `find_tree_ensembles` reports about one TreeEnsembleRegressor node."""

    index: int  # position in graph.node
    name: str
    input: str
    output: str
    n_targets: int
    n_trees: int
    n_nodes: int
    n_features: int  # max feature id + 1
    modes: tuple[str, ...]  # distinct split modes
    aggregate_function: str
    post_transform: str
    threshold_dtype: str  # "float32" or "float64" (double tensors)
    has_missing_tracks: bool
    supported: bool
    reason: str  # why not supported, "" when supported


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


def _floats(attrs: dict, name: str) -> np.ndarray | None:
    """`name` or `name_as_tensor` as float32.

    Double tensors are refused: ONNX Runtime 1.32 refuses them too when the
    input is float ("could not unpack tensor attribute"), so there is no
    reference to match.
    """
    if name + "_as_tensor" in attrs:
        arr = np.asarray(attrs[name + "_as_tensor"]).ravel()
        if arr.dtype != np.float32:
            raise ValueError(
                f"{name}_as_tensor has dtype {arr.dtype}; only float32 is supported "
                "(ONNX Runtime refuses other types for a float input)"
            )
        return arr
    if name in attrs:
        return np.asarray(attrs[name], dtype=np.float32)
    return None


class _Raw:
    """The node's attributes as numpy arrays, validated the way ORT validates them."""

    def __init__(self, node: onnx.NodeProto):
        if node.op_type != "TreeEnsembleRegressor" or node.domain != ML_DOMAIN:
            raise ValueError(
                f"node {node.name!r} is {node.domain or 'ai.onnx'}.{node.op_type}; "
                "only ai.onnx.ml.TreeEnsembleRegressor is supported"
            )
        a = _attrs(node)
        self.name = node.name
        self.post_transform = a.get("post_transform", "NONE")
        self.aggregate = a.get("aggregate_function", "SUM")
        self.n_targets = int(a.get("n_targets", 0))
        ints = lambda k: np.asarray(a.get(k, []), dtype=np.int64)  # noqa: E731
        self.treeids, self.nodeids = ints("nodes_treeids"), ints("nodes_nodeids")
        self.featureids = ints("nodes_featureids")
        self.trueids, self.falseids = ints("nodes_truenodeids"), ints("nodes_falsenodeids")
        self.missing = ints("nodes_missing_value_tracks_true")
        modes = a.get("nodes_modes", [])
        bad = sorted(set(modes) - set(_MODES))
        if bad:
            raise ValueError(f"node {node.name!r}: unsupported nodes_modes {bad}")
        self.modes = np.array([_MODES[m] for m in modes], dtype=np.int64)
        self.values = _floats(a, "nodes_values")
        self.t_ids, self.t_nodeids = ints("target_ids"), ints("target_nodeids")
        self.t_treeids = ints("target_treeids")
        self.weights = _floats(a, "target_weights")
        self.base = _floats(a, "base_values")
        # ORT sums in the threshold type, float32 here (double tensors are refused).
        self.dtype = np.float32
        n = len(self.treeids)
        if n == 0 or self.values is None:
            raise ValueError(f"node {node.name!r} has no nodes")
        for k in ("nodeids", "featureids", "trueids", "falseids", "modes", "values"):
            if len(getattr(self, k)) != n:
                raise ValueError(
                    f"node {node.name!r}: nodes_{k} has {len(getattr(self, k))} entries, nodes_treeids has {n}"
                )
        if self.weights is None or not (
            len(self.t_ids) == len(self.t_nodeids) == len(self.t_treeids) == len(self.weights)
        ):
            raise ValueError(f"node {node.name!r}: target_* attributes are missing or of unequal length")
        if self.n_targets <= 0:
            raise ValueError(f"node {node.name!r}: n_targets must be positive")
        if self.aggregate not in _AGGREGATES:
            raise ValueError(f"node {node.name!r}: aggregate_function {self.aggregate!r} unknown")
        if np.any(self.featureids < 0):
            raise ValueError(f"node {node.name!r}: negative feature id")
        self.weights = self.weights.astype(self.dtype)
        self.base = np.zeros(0, self.dtype) if self.base is None else self.base.astype(self.dtype)

    def why_unsupported(self) -> str:
        if self.post_transform != "NONE":
            return f"post_transform {self.post_transform} (only NONE is supported)"
        return ""


class _Trees:
    """Trees in ORT's order, each walked breadth-first from its root.

    ORT takes a root at every change of tree id in the node list and the first
    listed node as that root; a tree id that comes back after another tree is
    refused here rather than evaluated twice.
    """

    def __init__(self, raw: _Raw):
        self.raw = raw
        index = {}
        for i, key in enumerate(zip(raw.treeids.tolist(), raw.nodeids.tolist())):
            if key in index:
                raise ValueError(f"node {raw.name!r}: node {key[1]} of tree {key[0]} is listed twice")
            index[key] = i
        starts = [0] + [i for i in range(1, len(raw.treeids)) if raw.treeids[i] != raw.treeids[i - 1]]
        tids = raw.treeids[starts].tolist()
        if len(set(tids)) != len(tids):
            raise ValueError(f"node {raw.name!r}: a tree's nodes are not listed contiguously")
        self.roots = starts
        self.children = np.full((len(raw.treeids), 2), -1, dtype=np.int64)  # (false, true)
        for i in np.flatnonzero(raw.modes != _LEAF):
            t = int(raw.treeids[i])
            for side, ids in ((0, raw.falseids), (1, raw.trueids)):
                j = index.get((t, int(ids[i])))
                if j is None or j == i:
                    raise ValueError(
                        f"node {raw.name!r}: tree {t} node {raw.nodeids[i]} points to a missing node or to itself"
                    )
                self.children[i, side] = j
        # Leaf weights sorted by (tree, node, position), as ORT sorts them;
        # weights on split nodes are ignored, as ORT ignores them.
        order = np.lexsort((np.arange(len(raw.t_ids)), raw.t_nodeids, raw.t_treeids))
        self.leaf_w: dict[int, list[tuple[int, float]]] = {}
        for k in order:
            j = index.get((int(raw.t_treeids[k]), int(raw.t_nodeids[k])))
            if j is None:
                raise ValueError(f"node {raw.name!r}: a target weight names a missing node")
            if raw.modes[j] == _LEAF:
                tid = int(raw.t_ids[k])
                if raw.n_targets > 1 and not 0 <= tid < raw.n_targets:
                    raise ValueError(f"node {raw.name!r}: target id {tid} outside 0..{raw.n_targets - 1}")
                self.leaf_w.setdefault(j, []).append((tid, raw.weights[k]))
        for i in np.flatnonzero(raw.modes == _LEAF):
            if i not in self.leaf_w:
                raise ValueError(f"node {raw.name!r}: leaf {raw.nodeids[i]} of tree {raw.treeids[i]} has no weight")

    def pack(self, swap: np.ndarray | None = None) -> tuple[list, int]:
        """Breadth-first slots per tree: ([source node per slot], [depth], {slot: left child slot}).

        A split's two children take adjacent slots, (false, true), or (true,
        false) where `swap` is set.  A node reached twice is copied.
        """
        raw = self.raw
        limit = 4 * len(raw.treeids)
        trees, total = [], 0
        for r in self.roots:
            slots, depth, left, q = [r], [0], {}, 0
            while q < len(slots):
                i = slots[q]
                if raw.modes[i] != _LEAF:
                    a, b = int(self.children[i, 0]), int(self.children[i, 1])
                    left[q] = len(slots)
                    slots += [b, a] if swap is not None and swap[i] else [a, b]
                    depth += [depth[q] + 1] * 2
                    if len(slots) > limit:
                        raise ValueError(f"node {raw.name!r}: tree {raw.treeids[r]} has a cycle")
                q += 1
            trees.append((slots, depth, left))
            total += len(slots)
        return trees, total


def _below(t: float, strict: bool) -> float:
    """Largest float32 <= t (strict: < t), NaN when none exists, as a float32 value."""
    if np.isnan(t) or (strict and t == -np.inf):
        return np.float32(np.nan)
    with np.errstate(over="ignore"):
        f = np.float32(t)
    if f > t or (strict and f == t):
        f = np.nextafter(f, np.float32(-np.inf))
    return f


def _normalise(mode: int, t: float, missing_true: bool) -> tuple[float, bool, bool]:
    """A split as ``x <= t'``: returns (t', swap children, NaN goes to the x <= t' side)."""
    if mode in (0, 1):  # LEQ, LT
        tt, swap, nan_le = _below(t, mode == 1), False, missing_true
    else:  # GTE, GT: the complement of LT, LEQ
        tt = np.float32(np.inf) if np.isnan(t) else _below(t, mode == 2)
        swap, nan_le = True, not missing_true
    if np.isnan(tt) and nan_le:  # "x is NaN": flip to "x <= inf", NaN false
        tt, swap, nan_le = np.float32(np.inf), not swap, False
    return tt, swap, nan_le


# --------------------------------------------------------------------- kernels

# Unsigned constants keep index arithmetic unsigned: numba then emits no
# negative-index wraparound code on the traversal's critical path.
_U1 = np.uint64(1)
_M16 = np.uint32(0xFFFF)
_S16 = np.uint32(16)


@njit(cache=True, nogil=True)
def _fill_ext(x, ext, F, nan_le):
    """ext = [x, x with NaN as -inf (only when some split needs it), NaN] (module docstring)."""
    for f in range(F):
        ext[f] = x[f]
    if nan_le:
        for f in range(F):
            v = x[f]
            ext[F + f] = -np.inf if v != v else v
    ext[2 * F] = np.nan


@njit(cache=True, nogil=True)
def _fast_one(X, out, ext, vals, nodes, ti, leaf, cst):
    """One row (X[0]): groups of 8 trees of equal depth walked together.

    Trees are visited sorted by depth so a group wastes few steps; each leaf
    value goes to vals[tree] and the sum runs in tree order, as ORT's does.
    """
    nf = nodes.view(np.float32)
    n_trees = np.int64(ti[0])
    F = np.int64(ti[1])
    _fill_ext(X[0], ext, F, ti[2])
    g = np.int64(5 + 2 * n_trees)
    for _ in range(ti[4]):
        p0 = np.uint64(ti[g + 1])
        p1 = np.uint64(ti[g + 2])
        p2 = np.uint64(ti[g + 3])
        p3 = np.uint64(ti[g + 4])
        p4 = np.uint64(ti[g + 5])
        p5 = np.uint64(ti[g + 6])
        p6 = np.uint64(ti[g + 7])
        p7 = np.uint64(ti[g + 8])
        for _ in range(ti[g]):
            # next = node + offset to its children + (x <= threshold)
            w0 = nodes[p0 + p0 + _U1]
            w1 = nodes[p1 + p1 + _U1]
            w2 = nodes[p2 + p2 + _U1]
            w3 = nodes[p3 + p3 + _U1]
            w4 = nodes[p4 + p4 + _U1]
            w5 = nodes[p5 + p5 + _U1]
            w6 = nodes[p6 + p6 + _U1]
            w7 = nodes[p7 + p7 + _U1]
            p0 = p0 + np.uint64(w0 >> _S16) + np.uint64(ext[np.uint64(w0 & _M16)] <= nf[p0 + p0])
            p1 = p1 + np.uint64(w1 >> _S16) + np.uint64(ext[np.uint64(w1 & _M16)] <= nf[p1 + p1])
            p2 = p2 + np.uint64(w2 >> _S16) + np.uint64(ext[np.uint64(w2 & _M16)] <= nf[p2 + p2])
            p3 = p3 + np.uint64(w3 >> _S16) + np.uint64(ext[np.uint64(w3 & _M16)] <= nf[p3 + p3])
            p4 = p4 + np.uint64(w4 >> _S16) + np.uint64(ext[np.uint64(w4 & _M16)] <= nf[p4 + p4])
            p5 = p5 + np.uint64(w5 >> _S16) + np.uint64(ext[np.uint64(w5 & _M16)] <= nf[p5 + p5])
            p6 = p6 + np.uint64(w6 >> _S16) + np.uint64(ext[np.uint64(w6 & _M16)] <= nf[p6 + p6])
            p7 = p7 + np.uint64(w7 >> _S16) + np.uint64(ext[np.uint64(w7 & _M16)] <= nf[p7 + p7])
        vals[ti[g + 9]] = leaf[p0]
        vals[ti[g + 10]] = leaf[p1]
        vals[ti[g + 11]] = leaf[p2]
        vals[ti[g + 12]] = leaf[p3]
        vals[ti[g + 13]] = leaf[p4]
        vals[ti[g + 14]] = leaf[p5]
        vals[ti[g + 15]] = leaf[p6]
        vals[ti[g + 16]] = leaf[p7]
        g += 17
    s = cst[0]
    for t in range(n_trees):
        s += vals[t]
    if ti[3] == 1:
        s = s / cst[1]
    out[0, 0] = s + cst[2]


@njit(cache=True, nogil=True)
def _fast_block(X, out, r0, r1, ext, acc, nodes, ti, leaf, cst):
    """Rows r0..r1 (at most _BLOCK): tree by tree, 8 rows walked together per tree."""
    nf = nodes.view(np.float32)
    n_trees = np.int64(ti[0])
    F = np.int64(ti[1])
    st = 2 * F + 1
    n = r1 - r0
    for i in range(n):
        _fill_ext(X[r0 + i], ext[st * i : st * (i + 1)], F, ti[2])
        acc[i] = cst[0]
    ust = np.uint64(st)
    for t in range(n_trees):
        root = np.uint64(ti[5 + t])
        d = ti[5 + n_trees + t]
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
                w0 = nodes[p0 + p0 + _U1]
                w1 = nodes[p1 + p1 + _U1]
                w2 = nodes[p2 + p2 + _U1]
                w3 = nodes[p3 + p3 + _U1]
                w4 = nodes[p4 + p4 + _U1]
                w5 = nodes[p5 + p5 + _U1]
                w6 = nodes[p6 + p6 + _U1]
                w7 = nodes[p7 + p7 + _U1]
                if (w0 | w1 | w2 | w3 | w4 | w5 | w6 | w7) >> _S16 == 0:
                    break  # all eight rows at leaves (only leaves have offset 0): a
                    # tree's depth is its longest path, most rows end sooner
                p0 = p0 + np.uint64(w0 >> _S16) + np.uint64(ext[o0 + np.uint64(w0 & _M16)] <= nf[p0 + p0])
                p1 = p1 + np.uint64(w1 >> _S16) + np.uint64(ext[o1 + np.uint64(w1 & _M16)] <= nf[p1 + p1])
                p2 = p2 + np.uint64(w2 >> _S16) + np.uint64(ext[o2 + np.uint64(w2 & _M16)] <= nf[p2 + p2])
                p3 = p3 + np.uint64(w3 >> _S16) + np.uint64(ext[o3 + np.uint64(w3 & _M16)] <= nf[p3 + p3])
                p4 = p4 + np.uint64(w4 >> _S16) + np.uint64(ext[o4 + np.uint64(w4 & _M16)] <= nf[p4 + p4])
                p5 = p5 + np.uint64(w5 >> _S16) + np.uint64(ext[o5 + np.uint64(w5 & _M16)] <= nf[p5 + p5])
                p6 = p6 + np.uint64(w6 >> _S16) + np.uint64(ext[o6 + np.uint64(w6 & _M16)] <= nf[p6 + p6])
                p7 = p7 + np.uint64(w7 >> _S16) + np.uint64(ext[o7 + np.uint64(w7 & _M16)] <= nf[p7 + p7])
            acc[i] += leaf[p0]
            acc[i + 1] += leaf[p1]
            acc[i + 2] += leaf[p2]
            acc[i + 3] += leaf[p3]
            acc[i + 4] += leaf[p4]
            acc[i + 5] += leaf[p5]
            acc[i + 6] += leaf[p6]
            acc[i + 7] += leaf[p7]
            i += 8
        while i < n:
            o = np.uint64(i * st)
            p = root
            for _ in range(d):
                w = nodes[p + p + _U1]
                p = p + np.uint64(w >> _S16) + np.uint64(ext[o + np.uint64(w & _M16)] <= nf[p + p])
            acc[i] += leaf[p]
            i += 1
    for i in range(n):
        s = acc[i]
        if ti[3] == 1:
            s = s / cst[1]
        out[r0 + i, 0] = s + cst[2]


@njit(cache=True, nogil=True)
def _fast_rows(X, out, ext, acc, nodes, ti, leaf, cst):
    N = X.shape[0]
    for r0 in range(0, N, _BLOCK):
        _fast_block(X, out, r0, min(N, r0 + _BLOCK), ext, acc, nodes, ti, leaf, cst)


@njit(cache=True, nogil=True, parallel=True)
def _fast_rows_parallel(X, out, nodes, ti, leaf, cst):
    N = X.shape[0]
    n_blocks = (N + _BLOCK - 1) // _BLOCK
    for b in prange(n_blocks):
        ext = np.empty((2 * np.int64(ti[1]) + 1) * _BLOCK, dtype=np.float32)
        acc = np.empty(_BLOCK, dtype=cst.dtype)
        _fast_block(X, out, b * _BLOCK, min(N, (b + 1) * _BLOCK), ext, acc, nodes, ti, leaf, cst)


@njit(cache=True, nogil=True)
def _generic_row(x, z, has, gi, thr, wt, wv, roots, cfg, base, n_trees, agg):
    """One row, ORT's per-node modes and aggregators. z/has: per-target scratch."""
    T = z.shape[0]
    for j in range(T):
        z[j] = cfg[0]
        has[j] = False
    for k in range(n_trees):
        p = roots[k]
        while gi[p, 1] != 6:
            v = x[gi[p, 0]]
            th = thr[p]
            m = gi[p, 1]
            if m == 0:
                c = v <= th
            elif m == 1:
                c = v < th
            elif m == 2:
                c = v >= th
            elif m == 3:
                c = v > th
            elif m == 4:
                c = v == th
            else:
                c = v != th
            if gi[p, 3] == 1 and v != v:
                c = True
            p = gi[p, 2] + (1 if c else 0)
        for w in range(gi[p, 3], gi[p, 4]):
            j = wt[w]
            val = wv[w]
            if agg <= 1:
                z[j] += val
            elif agg == 2:
                if not has[j] or val < z[j]:
                    z[j] = val
            else:
                if not has[j] or val > z[j]:
                    z[j] = val
            has[j] = True


@njit(cache=True, nogil=True)
def _generic_finish(z, has, out_row, cfg, base, n_trees, agg):
    """FinalizeScores1 (one target) or FinalizeScores (several), as in ORT."""
    T = z.shape[0]
    if T == 1:
        s = z[0]
        if agg == 1:
            s = s / cfg[1]
        if agg >= 2:
            s = s + cfg[2] if has[0] else cfg[2]
        else:
            s = s + cfg[2]
        out_row[0] = s
        return
    use_base = base.shape[0] == T
    for j in range(T):
        s = z[j]
        if agg == 1:
            s = s / cfg[1]
        if agg >= 2:
            b = base[j] if use_base else cfg[0]
            out_row[j] = b + s if has[j] else b
        else:
            out_row[j] = s + base[j] if use_base else s


@njit(cache=True, nogil=True)
def _generic_rows(X, out, z, has, gi, thr, wt, wv, roots, cfg, base, agg):
    n_trees = roots.shape[0]
    for i in range(X.shape[0]):
        _generic_row(X[i], z, has, gi, thr, wt, wv, roots, cfg, base, n_trees, agg)
        _generic_finish(z, has, out[i], cfg, base, n_trees, agg)


@njit(cache=True, nogil=True, parallel=True)
def _generic_rows_parallel(X, out, gi, thr, wt, wv, roots, cfg, base, agg):
    n_trees = roots.shape[0]
    N = X.shape[0]
    T = out.shape[1]
    n_blocks = (N + _BLOCK - 1) // _BLOCK
    for b in prange(n_blocks):
        z = np.empty(T, dtype=cfg.dtype)
        has = np.empty(T, dtype=np.bool_)
        for i in range(b * _BLOCK, min(N, (b + 1) * _BLOCK)):
            _generic_row(X[i], z, has, gi, thr, wt, wv, roots, cfg, base, n_trees, agg)
            _generic_finish(z, has, out[i], cfg, base, n_trees, agg)


# ------------------------------------------------------------------ the kernel


class ForestKernel:
    """A TreeEnsembleRegressor compiled to flat arrays; `predict` matches ORT.

    Build with `from_onnx` (a whole graph) or `from_node` (one node).  `layout`
    "auto" picks the fast layout when the node allows it (one target, SUM or
    AVERAGE, no EQ/NEQ split), "generic" forces the general kernel.
    `n_threads` > 1 lets batches of at least `parallel_min_rows` rows run on
    that many numba threads; the default, 1, never starts a thread.

    One instance keeps scratch buffers for its sequential paths, so it must not
    be called from two threads at once (the kernels release the GIL).
    """

    def __init__(
        self,
        node: onnx.NodeProto,
        *,
        layout: str = "auto",
        n_threads: int = 1,
        parallel_min_rows: int = _PARALLEL_MIN_ROWS,
    ):
        raw = _Raw(node)
        reason = raw.why_unsupported()
        if reason:
            raise ValueError(f"TreeEnsembleRegressor {raw.name!r}: {reason}")
        if layout not in ("auto", "generic"):
            raise ValueError(f"layout must be 'auto' or 'generic', not {layout!r}")
        trees = _Trees(raw)
        self.name = raw.name
        self.n_targets = raw.n_targets
        self.n_trees = len(trees.roots)
        self.n_features = int(raw.featureids.max()) + 1
        self.aggregate_function = raw.aggregate
        self.accumulate_dtype = np.dtype(raw.dtype)
        self.n_threads = int(n_threads)
        self.parallel_min_rows = int(parallel_min_rows)
        fast_ok = (
            layout == "auto"
            and raw.n_targets == 1
            and raw.aggregate in ("SUM", "AVERAGE")
            and not np.any((raw.modes == 4) | (raw.modes == 5))
            and 2 * self.n_features < 0xFFFF
        )  # feature ids are 16-bit there
        origin = raw.base[0] if len(raw.base) == 1 else 0.0
        self.layout = "fast" if fast_ok and self._build_fast(raw, trees, origin) else "generic"
        if self.layout == "generic":
            self._build_generic(raw, trees, origin)
        self._out1 = np.empty((1, self.n_targets), dtype=np.float32)

    # -- construction --------------------------------------------------------

    @classmethod
    def from_node(cls, node: onnx.NodeProto, **kw) -> ForestKernel:
        """Kernel for one TreeEnsembleRegressor node (input: float32 (N, F))."""
        return cls(node, **kw)

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto, *, columns=None, **kw) -> ForestKernel:
        """Kernel for a graph that is only "input -> TreeEnsembleRegressor -> output".

        Accepted: one float32 graph input feeding one TreeEnsembleRegressor, then
        a chain of Identity, Cast(to=FLOAT), Reshape, Flatten, Squeeze or
        Unsqueeze ending at the single graph output.  Those tails only reshape,
        so `predict` returns (N, n_targets) whatever shape the graph declares
        (CatBoost's graph declares (N,)).  Anything else raises ValueError.

        ``columns``: graph feature j is column ``columns[j]`` of the rows given to
        `predict`, so a wider matrix (a union of several models' features) is read
        in place, with no gather.
        """
        node = _single_forest_node(model)
        if columns is not None:
            node = _remap_features(node, np.asarray(columns, dtype=np.int64))
        return cls(node, **kw)

    def _build_fast(self, raw: _Raw, trees: _Trees, origin: float) -> bool:
        """Pack the normalised splits as 8-byte nodes (see `_fast_one`).

        A node is two uint32 words: the float32 threshold (a leaf's value for
        float32 forests), and feature | offset-to-children << 16.  A leaf reads
        feature 2F, always NaN, with offset 0, so it stays where it is.
        """
        F = self.n_features
        n = len(raw.treeids)
        norm_t = np.zeros(n, dtype=np.float32)
        swap = np.zeros(n, dtype=bool)
        nan_le = np.zeros(n, dtype=bool)
        for i in np.flatnonzero(raw.modes != _LEAF):
            mt = i < len(raw.missing) and raw.missing[i] == 1
            norm_t[i], swap[i], nan_le[i] = _normalise(int(raw.modes[i]), float(raw.values[i]), mt)
        packed, n_slots = trees.pack(swap)
        if any(left[q] - q > 0xFFFF for _, _, left in packed for q in left):
            return False  # a tree too wide for 16-bit child offsets
        nodes = np.zeros((n_slots, 2), dtype=np.uint32)
        nf = nodes.view(np.float32)
        roots = np.empty(self.n_trees, dtype=np.int64)
        depth = np.empty(self.n_trees, dtype=np.int64)
        base = 0
        for k, (slots, dep, left) in enumerate(packed):
            roots[k] = base
            depth[k] = max(dep)
            for q, i in enumerate(slots):
                s = base + q
                if raw.modes[i] == _LEAF:
                    w = trees.leaf_w[i][0][1]  # ORT: the leaf's first weight
                    nodes[s, 1] = 2 * F
                    nf[s, 0] = w
                else:
                    nodes[s, 1] = (raw.featureids[i] + (F if nan_le[i] else 0)) | ((left[q] - q) << 16)
                    nf[s, 0] = norm_t[i]
            base += len(slots)
        # Groups of 8 trees of equal depth for one row; padded with a leaf whose
        # value lands in vals[n_trees], outside the sum.
        order = np.argsort(depth, kind="stable")
        pad = (-self.n_trees) % _LANES
        order = np.concatenate([order, np.full(pad, -1)])
        groups = []
        for g in range(0, len(order), _LANES):
            idx = order[g : g + _LANES]
            real = idx[idx >= 0]
            groups += [depth[real].max()]
            groups += [roots[i] if i >= 0 else roots[real[0]] for i in idx]
            groups += [i if i >= 0 else self.n_trees for i in idx]
        header = [self.n_trees, F, int(nan_le.any()), _AGGREGATES[raw.aggregate], len(order) // _LANES]
        self._ti = np.concatenate([header, roots, depth, groups]).astype(np.uint32)
        self._nodes = nodes.ravel()
        # Leaf values live in the leaves' threshold words: one load fewer per tree.
        self._leaf = self._nodes.view(np.float32)[::2]
        self._cst = np.array([0, self.n_trees, origin], dtype=raw.dtype)
        self._ext = np.empty((2 * F + 1) * _BLOCK, dtype=np.float32)
        self._vals = np.empty(self.n_trees + 1, dtype=raw.dtype)
        self._acc = np.empty(_BLOCK, dtype=raw.dtype)
        return True

    def _build_generic(self, raw: _Raw, trees: _Trees, origin: float) -> None:
        wt, wv, roots = [], [], []
        base = 0
        packed, n_slots = trees.pack()
        gi = np.zeros((n_slots, 5), dtype=np.int32)
        thr = np.zeros(n_slots, dtype=np.float64)
        for slots, _, left in packed:
            roots.append(base)
            for q, i in enumerate(slots):
                s = base + q
                gi[s, 0] = raw.featureids[i]
                gi[s, 1] = raw.modes[i]
                if raw.modes[i] == _LEAF:
                    ws = trees.leaf_w[i][:1] if raw.n_targets == 1 else trees.leaf_w[i]
                    gi[s, 3] = len(wt)
                    for tid, w in ws:
                        wt.append(0 if raw.n_targets == 1 else tid)
                        wv.append(w)
                    gi[s, 4] = len(wt)
                else:
                    gi[s, 2] = base + left[q]
                    gi[s, 3] = int(i < len(raw.missing) and raw.missing[i] == 1)
                    thr[s] = raw.values[i]
            base += len(slots)
        self._gi, self._thr = gi, thr
        self._wt = np.asarray(wt, dtype=np.int32)
        self._wv = np.asarray(wv, dtype=raw.dtype)
        self._roots = np.asarray(roots, dtype=np.int32)
        self._cfg = np.array([0, self.n_trees, origin], dtype=raw.dtype)
        self._base = raw.base
        self._agg = _AGGREGATES[raw.aggregate]
        self._z = np.zeros(self.n_targets, dtype=raw.dtype)
        self._has = np.zeros(self.n_targets, dtype=np.bool_)

    # -- evaluation ----------------------------------------------------------

    def predict(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Predictions for float32 rows X (N, F), C-contiguous, into out (N, n_targets).

        No allocation when `out` is given (and the batch runs on one thread).
        """
        if X.dtype != np.float32 or X.ndim != 2 or not X.flags.c_contiguous:
            raise ValueError(f"X must be a C-contiguous float32 (N, F) array, got {X.dtype} {X.shape}")
        N, F = X.shape
        if self.n_features > F:
            raise ValueError(f"X has {F} features; the trees read feature {self.n_features - 1}")
        if out is None:
            out = np.empty((N, self.n_targets), dtype=np.float32)
        elif out.shape != (N, self.n_targets) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous float32 {(N, self.n_targets)}")
        parallel = self.n_threads > 1 and self.parallel_min_rows <= N
        if self.layout == "fast":
            if N == 1:
                _fast_one(X, out, self._ext, self._vals, self._nodes, self._ti, self._leaf, self._cst)
            elif parallel:
                with _threads(self.n_threads):
                    _fast_rows_parallel(X, out, self._nodes, self._ti, self._leaf, self._cst)
            else:
                _fast_rows(X, out, self._ext, self._acc, self._nodes, self._ti, self._leaf, self._cst)
        elif parallel:
            with _threads(self.n_threads):
                _generic_rows_parallel(
                    X, out, self._gi, self._thr, self._wt, self._wv, self._roots, self._cfg, self._base, self._agg
                )
        else:
            _generic_rows(
                X,
                out,
                self._z,
                self._has,
                self._gi,
                self._thr,
                self._wt,
                self._wv,
                self._roots,
                self._cfg,
                self._base,
                self._agg,
            )
        return out

    def __repr__(self) -> str:
        return (
            f"ForestKernel({self.name!r}, trees={self.n_trees}, features={self.n_features}, "
            f"targets={self.n_targets}, {self.aggregate_function}, layout={self.layout})"
        )


class _threads:
    """Run numba's parallel kernels on n threads, then restore the caller's count."""

    def __init__(self, n: int):
        self.n = min(n, numba.config.NUMBA_NUM_THREADS)

    def __enter__(self):
        self.prev = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        numba.set_num_threads(self.prev)


# ------------------------------------------------------------------ the graph

_TAIL_OPS = ("Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _single_forest_node(model: onnx.ModelProto) -> onnx.NodeProto:
    """The TreeEnsembleRegressor of an "input -> trees -> reshape-only tail -> output" graph."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise ValueError(f"graph has {len(inputs)} inputs and {len(g.output)} outputs; one of each is supported")
    elem = inputs[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise ValueError(
            f"graph input {inputs[0].name!r} is {onnx.TensorProto.DataType.Name(elem)}; only FLOAT is supported"
        )
    trees = [n for n in g.node if n.op_type == "TreeEnsembleRegressor" and n.domain == ML_DOMAIN]
    others = [n for n in g.node if n not in trees]
    if len(trees) != 1:
        raise ValueError(
            f"graph has {len(trees)} TreeEnsembleRegressor nodes; exactly one is "
            f"supported (use ForestKernel.from_node for each)"
        )
    tree = trees[0]
    if list(tree.input) != [inputs[0].name]:
        raise ValueError(f"TreeEnsembleRegressor {tree.name!r} does not read the graph input directly")
    bad = sorted(
        {
            f"{n.domain + '.' if n.domain else ''}{n.op_type}"
            for n in others
            if n.op_type not in _TAIL_OPS or n.domain not in ("", "ai.onnx")
        }
    )
    if bad:
        raise ValueError(f"unsupported nodes around TreeEnsembleRegressor: {', '.join(bad)}")
    for n in others:
        if n.op_type == "Cast":
            to = next((a.i for a in n.attribute if a.name == "to"), None)
            if to != onnx.TensorProto.FLOAT:
                name = onnx.TensorProto.DataType.Name(to) if to is not None else "?"
                raise ValueError(f"Cast {n.name!r} to {name} after the trees is not supported (only a Cast to FLOAT)")
    # The tail must be one chain from the tree's output to the graph output.
    cur = tree.output[0]
    rest = list(others)
    while rest:
        nxt = [n for n in rest if n.input and n.input[0] == cur]
        if len(nxt) != 1 or any(i != cur and i not in inits for i in nxt[0].input):
            raise ValueError(f"nodes after TreeEnsembleRegressor {tree.name!r} are not a single reshape-only chain")
        cur = nxt[0].output[0]
        rest.remove(nxt[0])
    if cur != g.output[0].name:
        raise ValueError(f"graph output {g.output[0].name!r} is not the trees' output")
    return tree


def _remap_features(node: onnx.NodeProto, columns: np.ndarray) -> onnx.NodeProto:
    """A copy of ``node`` whose splits read feature ``columns[f]`` where they read ``f``."""
    remapped = onnx.NodeProto()
    remapped.CopyFrom(node)
    attr = next(a for a in remapped.attribute if a.name == "nodes_featureids")
    ids = np.asarray(attr.ints, dtype=np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= len(columns)):
        raise ValueError(f"node {node.name!r} reads feature {ids.max()}; only {len(columns)} columns are mapped")
    del attr.ints[:]
    attr.ints.extend(columns[ids].tolist())
    return remapped


def find_tree_ensembles(model: onnx.ModelProto) -> list[TreeEnsembleInfo]:
    """Every TreeEnsembleRegressor node of the graph, with whether ForestKernel can serve it."""
    found = []
    for k, node in enumerate(model.graph.node):
        if node.op_type != "TreeEnsembleRegressor" or node.domain != ML_DOMAIN:
            continue
        try:
            raw = _Raw(node)
            reason = raw.why_unsupported()
            if not reason:
                _Trees(raw)
        except ValueError as e:
            found.append(
                TreeEnsembleInfo(
                    k, node.name, node.input[0], node.output[0], 0, 0, 0, 0, (), "", "", "", False, False, str(e)
                )
            )
            continue
        modes = {m for m, c in _MODES.items() if c != _LEAF and np.any(raw.modes == c)}
        found.append(
            TreeEnsembleInfo(
                index=k,
                name=node.name,
                input=node.input[0],
                output=node.output[0],
                n_targets=raw.n_targets,
                n_trees=len(np.unique(raw.treeids)),
                n_nodes=len(raw.treeids),
                n_features=int(raw.featureids.max()) + 1,
                modes=tuple(sorted(modes)),
                aggregate_function=raw.aggregate,
                post_transform=raw.post_transform,
                threshold_dtype=np.dtype(raw.dtype).name,
                has_missing_tracks=bool(np.any(raw.missing == 1)),
                supported=not reason,
                reason=reason,
            )
        )
    return found


def _synthetic_node(
    n_trees: int = 9, aggregate: str = "SUM", n_targets: int = 1, mode: str = "BRANCH_LEQ"
) -> onnx.NodeProto:
    """A small forest of depth-2 trees over 3 features (warm-up and tests)."""
    tree, node, feat, val, mode_, true, false, miss = [], [], [], [], [], [], [], []
    t_tree, t_node, t_id, t_w = [], [], [], []
    for t in range(n_trees):
        for nid, (f, v, m, tt, ff) in enumerate(
            [(t % 3, 0.5, mode, 1, 2), (1, -0.25, mode, 3, 4), (2, 1.0, mode, 5, 6)] + [(0, 0.0, "LEAF", 0, 0)] * 4
        ):
            tree.append(t)
            node.append(nid)
            feat.append(f)
            val.append(v + 0.1 * t)
            mode_.append(m)
            true.append(tt)
            false.append(ff)
            miss.append(int(nid == 0))
            if m == "LEAF":
                for j in range(n_targets):
                    t_tree.append(t)
                    t_node.append(nid)
                    t_id.append(j)
                    t_w.append(0.1 * nid - 0.05 * t + j)
    return helper.make_node(
        "TreeEnsembleRegressor",
        ["X"],
        ["Y"],
        domain=ML_DOMAIN,
        n_targets=n_targets,
        aggregate_function=aggregate,
        nodes_treeids=tree,
        nodes_nodeids=node,
        nodes_featureids=feat,
        nodes_values=val,
        nodes_modes=mode_,
        nodes_truenodeids=true,
        nodes_falsenodeids=false,
        nodes_missing_value_tracks_true=miss,
        target_treeids=t_tree,
        target_nodeids=t_node,
        target_ids=t_id,
        target_weights=t_w,
        base_values=[0.5] * n_targets,
    )


def warmup() -> None:
    """Compile (or load from numba's cache) every float32 kernel on a tiny forest."""
    X = np.array([[0.1, np.nan, 2.0]] * 3, dtype=np.float32)
    for node, layout in ((_synthetic_node(), "auto"), (_synthetic_node(n_targets=2), "generic")):
        k = ForestKernel.from_node(node, layout=layout, n_threads=2, parallel_min_rows=2)
        k.predict(X[:1])
        k.predict(X)  # parallel path
        k.n_threads = 1
        k.predict(X)  # sequential batch path
