"""Step 2: normalise — the trees in ORT's order with their children and leaf weights, and every
split rewritten as ``ext[column] <= threshold`` on the extended row (``codes.py``).

* LEQ/LT/GTE/GT become LEQ on an adjacent float32 threshold, children swapped where needed, and
  NaN routed by reading the NaN-as--inf copy of the feature when it must go to the ``<=`` side.
* A run of BRANCH_EQ nodes on one feature whose "equal" branches lead to the same subtree (the
  same node, or an identical copy) is the way onnxmltools writes a LightGBM categorical split;
  it becomes one membership test (a `Chain`), evaluated once per row into its own column. A
  lone EQ is a chain of one value; a NEQ is a chain of one value with its branches swapped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .codes import (
    BITSET_MAX_CATEGORY,
    BRANCH_EQ,
    BRANCH_GTE,
    BRANCH_LEQ,
    BRANCH_LT,
    BRANCH_NEQ,
    CHAIN_THRESHOLD,
    LEAF,
    chain_column,
    nan_low_column,
)
from .read import EnsembleAttributes

MAX_EXPANSION = 64  # a tree whose shared nodes expand past 64x its listed nodes is refused
ORT_SET_MAX = 32  # ONNX Runtime 1.32 folds BRANCH_EQ values 1..32 into set nodes (`_equal_run`)


class TreeStructure:
    """Trees in ORT's order: children of every split, each leaf's weights.

    ORT takes a root at every change of tree id in the node list and the first listed node as
    that root; a tree id that comes back after another tree is refused here rather than
    evaluated twice. Nodes may be shared inside a tree (onnxmltools' categorical chains point to
    one subtree); cycles are refused.
    """

    def __init__(self, attrs: EnsembleAttributes):
        self.attrs = a = attrs
        index = {}
        for i, key in enumerate(zip(a.treeids.tolist(), a.nodeids.tolist())):
            if key in index:
                raise ValueError(f"node {a.name!r}: node {key[1]} of tree {key[0]} is listed twice")
            index[key] = i
        starts = [0] + [i for i in range(1, len(a.treeids)) if a.treeids[i] != a.treeids[i - 1]]
        tids = a.treeids[starts].tolist()
        if len(set(tids)) != len(tids):
            raise ValueError(f"node {a.name!r}: a tree's nodes are not listed contiguously")
        self.roots = starts
        self.children = np.full((len(a.treeids), 2), -1, dtype=np.int64)  # (false, true)
        for i in np.flatnonzero(a.modes != LEAF):
            t = int(a.treeids[i])
            for side, ids in ((0, a.falseids), (1, a.trueids)):
                j = index.get((t, int(ids[i])))
                if j is None or j == i:
                    raise ValueError(
                        f"node {a.name!r}: tree {t} node {a.nodeids[i]} points to a missing node or to itself"
                    )
                self.children[i, side] = j
        # Leaf weights sorted by (tree, node, position), as ORT sorts them; weights on split
        # nodes are ignored, as ORT ignores them.
        order = np.lexsort((np.arange(len(a.t_ids)), a.t_nodeids, a.t_treeids))
        self.leaf_weights: dict[int, list[tuple[int, np.float32]]] = {}
        for k in order:
            j = index.get((int(a.t_treeids[k]), int(a.t_nodeids[k])))
            if j is None:
                raise ValueError(f"node {a.name!r}: a target weight names a missing node")
            if a.modes[j] == LEAF:
                tid = int(a.t_ids[k])
                if a.n_targets > 1 and not 0 <= tid < a.n_targets:
                    raise ValueError(f"node {a.name!r}: target id {tid} outside 0..{a.n_targets - 1}")
                self.leaf_weights.setdefault(j, []).append((tid, a.weights[k]))
        for i in np.flatnonzero(a.modes == LEAF):
            if i not in self.leaf_weights:
                raise ValueError(f"node {a.name!r}: leaf {a.nodeids[i]} of tree {a.treeids[i]} has no weight")
        self.shape_ids = self._shape_ids()

    def _shape_ids(self) -> np.ndarray:
        """One id per node, equal for nodes heading identical subtrees; refuses cycles."""
        a = self.attrs
        ids = np.full(len(a.treeids), -1, dtype=np.int64)
        on_path = np.zeros(len(a.treeids), dtype=bool)  # being expanded: an ancestor of what is on top
        interned: dict[tuple, int] = {}
        for r in self.roots:
            stack = [(r, False)]
            while stack:
                i, children_done = stack.pop()
                if children_done:
                    on_path[i] = False
                    f, t = self.children[i]
                    key = (
                        int(a.modes[i]),
                        int(a.featureids[i]),
                        np.float32(a.values[i]).tobytes(),
                        a.is_tracking(i),
                        int(ids[f]),
                        int(ids[t]),
                    )
                    ids[i] = interned.setdefault(key, len(interned))
                elif ids[i] < 0 and a.modes[i] == LEAF:
                    key = ("leaf", tuple((t, float(w)) for t, w in self.leaf_weights[i]))
                    ids[i] = interned.setdefault(key, len(interned))
                elif ids[i] < 0:
                    on_path[i] = True
                    stack.append((i, True))
                    for c in self.children[i]:
                        if on_path[c]:
                            raise ValueError(f"node {a.name!r}: tree {a.treeids[r]} has a cycle")
                        if ids[c] < 0:
                            stack.append((int(c), False))
        return ids

    def pack(self, swap: np.ndarray | None = None) -> list[tuple[list[int], list[int], dict[int, int]]]:
        """Breadth-first slots per tree: ([source node per slot], [depth], {slot: first child slot}).

        A split's two children take adjacent slots, (false, true), or (true, false) where
        `swap` is set. A node reached twice is copied.
        """
        a = self.attrs
        limit = MAX_EXPANSION * len(a.treeids)
        trees, total = [], 0
        for r in self.roots:
            slots, depth, left, q = [r], [0], {}, 0
            while q < len(slots):
                i = slots[q]
                if a.modes[i] != LEAF:
                    f, t = int(self.children[i, 0]), int(self.children[i, 1])
                    left[q] = len(slots)
                    slots += [t, f] if swap is not None and swap[i] else [f, t]
                    depth += [depth[q] + 1] * 2
                q += 1
            total += len(slots)
            if total > limit:
                raise ValueError(f"node {a.name!r}: shared nodes expand past {MAX_EXPANSION}x the listed nodes")
            trees.append((slots, depth, left))
        return trees


def below(t: float, strict: bool) -> np.float32:
    """Largest float32 <= t (strict: < t), NaN when none exists."""
    if np.isnan(t) or (strict and t == -np.inf):
        return np.float32(np.nan)
    with np.errstate(over="ignore"):
        f = np.float32(t)
    if f > t or (strict and f == t):
        f = np.nextafter(f, np.float32(-np.inf))
    return f


def normalise_split(mode: int, t: float, tracks_true: bool) -> tuple[np.float32, bool, bool]:
    """A LEQ/LT/GTE/GT split as ``x <= t'``: (t', the ``<=`` side is the false child, NaN goes to it)."""
    if mode in (BRANCH_LEQ, BRANCH_LT):
        tt, swap, nan_le = below(t, mode == BRANCH_LT), False, tracks_true
    else:  # GTE, GT: the complement of LT, LEQ
        tt = np.float32(np.inf) if np.isnan(t) else below(t, mode == BRANCH_GTE)
        swap, nan_le = True, not tracks_true
    if np.isnan(tt) and nan_le:  # "x is NaN": flip to "x <= inf", NaN false
        tt, swap, nan_le = np.float32(np.inf), not swap, False
    return tt, swap, nan_le


@dataclass(frozen=True)
class Chain:
    """One membership test: is feature ``x`` equal (as float32) to one of ``values``?"""

    feature: int
    values: tuple[float, ...]  # float32 values, in the order met
    nan_member: bool  # NaN takes the member branch (as ORT routes it: see `_equal_run`)

    @property
    def is_bitset(self) -> bool:
        """All values are integers in [0, BITSET_MAX_CATEGORY): one bit each, tested by index."""
        v = np.asarray(self.values, dtype=np.float32)
        return bool(np.all((v >= 0) & (v < BITSET_MAX_CATEGORY) & (v == np.floor(v))))

    def bitset_words(self) -> np.ndarray:
        cats = np.asarray(self.values, dtype=np.float32).astype(np.int64)
        words = np.zeros(int(cats.max()) // 32 + 1, dtype=np.uint32)
        for c in cats:
            words[c // 32] |= np.uint32(1 << (c % 32))
        return words


@dataclass
class NormalTree:
    """One tree as ``ext[column] <= threshold`` splits; node 0 is the root.

    ``le``/``gt``: the child taken when the test holds / fails (-1 at leaves); ``source``: the
    ONNX node of each leaf (its weights), -1 at splits.
    """

    column: list[int] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    le: list[int] = field(default_factory=list)
    gt: list[int] = field(default_factory=list)
    source: list[int] = field(default_factory=list)

    def add(self) -> int:
        for part in (self.column, self.le, self.gt, self.source):
            part.append(-1)
        self.threshold.append(0.0)
        return len(self.column) - 1

    def leaves_in_order(self) -> list[int]:
        """Leaves left to right with the ``<=`` child first (QuickScorer's order)."""
        out, stack = [], [0]
        while stack:
            i = stack.pop()
            if self.le[i] < 0:
                out.append(i)
            else:
                stack += [self.gt[i], self.le[i]]
        return out

    def depth(self) -> int:
        deepest, stack = 0, [(0, 0)]
        while stack:
            i, d = stack.pop()
            deepest = max(deepest, d)
            if self.le[i] >= 0:
                stack += [(self.le[i], d + 1), (self.gt[i], d + 1)]
        return deepest


@dataclass
class NormalForest:
    trees: list[NormalTree]
    chains: list[Chain]
    n_features: int


def normalise(structure: TreeStructure) -> NormalForest:
    """Every tree of ``structure`` as `NormalTree`s over one shared list of chains."""
    a = structure.attrs
    F = a.n_features
    chains: dict[Chain, int] = {}

    def chain_of(c: Chain) -> int:
        return chain_column(chains.setdefault(c, len(chains)), F)

    limit = MAX_EXPANSION * len(a.treeids)
    trees, total = [], 0
    for r in structure.roots:
        tree = NormalTree()
        work = [(r, tree.add())]
        while work:
            i, s = work.pop()
            mode = int(a.modes[i])
            f_child, t_child = (int(c) for c in structure.children[i])
            if mode == LEAF:
                tree.source[s] = i
                continue
            if mode == BRANCH_EQ:
                le_src, gt_src, chain = _equal_run(structure, i)
                tree.column[s], tree.threshold[s] = chain_of(chain), CHAIN_THRESHOLD
            elif mode == BRANCH_NEQ:  # x != v: "equal" is the false branch, NaN is never equal
                chain = Chain(int(a.featureids[i]), (float(a.values[i]),), False)
                le_src, gt_src = f_child, t_child
                tree.column[s], tree.threshold[s] = chain_of(chain), CHAIN_THRESHOLD
            else:
                t, swap, nan_le = normalise_split(mode, float(a.values[i]), a.is_tracking(i))
                f = int(a.featureids[i])
                tree.column[s] = nan_low_column(f, F) if nan_le else f
                tree.threshold[s] = t
                le_src, gt_src = (f_child, t_child) if swap else (t_child, f_child)
            tree.le[s], tree.gt[s] = tree.add(), tree.add()
            work += [(gt_src, tree.gt[s]), (le_src, tree.le[s])]
        total += len(tree.column)
        if total > limit:
            raise ValueError(f"node {a.name!r}: shared nodes expand past {MAX_EXPANSION}x the listed nodes")
        trees.append(tree)
    ordered = sorted(chains, key=chains.__getitem__)
    return NormalForest(trees, ordered, F)


def _ort_set_value(v: float) -> bool:
    """A value ORT 1.32 folds into a set node: an integer in [1, 32] (measured, see `_equal_run`)."""
    return 1.0 <= v <= ORT_SET_MAX and v == int(v)


def continues_equal_run(structure: TreeStructure, parent: int, node: int) -> bool:
    """``node`` is the false child of ``parent``, both BRANCH_EQ on one feature with identical true
    subtrees: the same run, where only ``node``'s value counts."""
    a, c = structure.attrs, structure.children
    return (
        a.modes[parent] == BRANCH_EQ
        and a.modes[node] == BRANCH_EQ
        and c[parent, 0] == node
        and a.featureids[parent] == a.featureids[node]
        and structure.shape_ids[c[parent, 1]] == structure.shape_ids[c[node, 1]]
    )


def ort_ignores_tracking(structure: TreeStructure, parent: int, node: int) -> bool:
    """ORT 1.32 folds ``node`` into ``parent``'s set node, whose NaN flag is the set's first
    node's: ``node``'s own ``missing_value_tracks_true`` is then ignored (see `_equal_run`)."""
    v = structure.attrs.values
    return (
        continues_equal_run(structure, parent, node)
        and _ort_set_value(float(v[parent]))
        and _ort_set_value(float(v[node]))
    )


def _equal_run(structure: TreeStructure, head: int) -> tuple[int, int, Chain]:
    """(member subtree, non-member subtree, chain) of the run of BRANCH_EQ starting at ``head``.

    The run continues down false branches while the next node is a BRANCH_EQ on the same
    feature whose true branch heads an identical subtree; a value is a member when it equals
    one of the run's values, exactly as the nodes one by one decide.

    NaN equals nothing; where it goes follows ONNX Runtime 1.32, measured: ORT folds consecutive
    nodes of such a run whose values are integers in [1, 32] into one set node that keeps only
    its first node's ``missing_value_tracks_true``. So NaN takes the member branch when a node
    that starts a set (or stands alone) tracks missing values; flags inside a set are ignored.
    """
    a = structure.attrs
    values, nan_member, cur = [float(a.values[head])], a.is_tracking(head), head
    while continues_equal_run(structure, cur, nxt := int(structure.children[cur, 0])):
        if not ort_ignores_tracking(structure, cur, nxt):  # nxt starts a set or stands alone
            nan_member = nan_member or a.is_tracking(nxt)
        values.append(float(a.values[nxt]))
        cur = nxt
    chain = Chain(int(a.featureids[head]), tuple(values), nan_member)
    return int(structure.children[head, 1]), int(structure.children[cur, 0]), chain
