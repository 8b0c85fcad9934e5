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
        trees, nodes, modes = a.treeids.tolist(), a.nodeids.tolist(), a.modes.tolist()
        index = {}
        for i, key in enumerate(zip(trees, nodes)):
            if key in index:
                raise ValueError(f"node {a.name!r}: node {key[1]} of tree {key[0]} is listed twice")
            index[key] = i
        starts = [0] + [i for i in range(1, len(trees)) if trees[i] != trees[i - 1]]
        tids = [trees[i] for i in starts]
        if len(set(tids)) != len(tids):
            raise ValueError(f"node {a.name!r}: a tree's nodes are not listed contiguously")
        self.roots = starts
        children = [[-1, -1] for _ in trees]  # (false, true)
        falses, trues = a.falseids.tolist(), a.trueids.tolist()
        for i, mode in enumerate(modes):
            if mode == LEAF:
                continue
            t = trees[i]
            for side, ids in ((0, falses), (1, trues)):
                j = index.get((t, ids[i]))
                if j is None or j == i:
                    raise ValueError(f"node {a.name!r}: tree {t} node {nodes[i]} points to a missing node or to itself")
                children[i][side] = j
        self.children = np.array(children, dtype=np.int64).reshape(-1, 2)
        # Leaf weights sorted by (tree, node, position), as ORT sorts them; weights on split
        # nodes are ignored, as ORT ignores them.
        order = np.lexsort((np.arange(len(a.t_ids)), a.t_nodeids, a.t_treeids)).tolist()
        t_trees, t_nodes, t_ids, weights = a.t_treeids.tolist(), a.t_nodeids.tolist(), a.t_ids.tolist(), a.weights
        self.leaf_weights: dict[int, list[tuple[int, np.float32]]] = {}
        for k in order:
            j = index.get((t_trees[k], t_nodes[k]))
            if j is None:
                raise ValueError(f"node {a.name!r}: a target weight names a missing node")
            if modes[j] == LEAF:
                tid = t_ids[k]
                if a.n_targets > 1 and not 0 <= tid < a.n_targets:
                    raise ValueError(f"node {a.name!r}: target id {tid} outside 0..{a.n_targets - 1}")
                self.leaf_weights.setdefault(j, []).append((tid, weights[k]))
        for i in np.flatnonzero(a.modes == LEAF):
            if i not in self.leaf_weights:
                raise ValueError(f"node {a.name!r}: leaf {a.nodeids[i]} of tree {a.treeids[i]} has no weight")
        # Every node has one parent at most and no root has one: plain trees, no cycle can be
        # reached. Otherwise (shared nodes) walk them now, which refuses cycles.
        parents = np.bincount(self.children[a.modes != LEAF].ravel(), minlength=len(trees))
        self._shape_ids = None if parents.max(initial=0) <= 1 and not parents[starts].any() else self._walk_shapes()

    @property
    def shape_ids(self) -> np.ndarray:
        """One id per node, equal for nodes heading identical subtrees."""
        if self._shape_ids is None:
            self._shape_ids = self._walk_shapes()
        return self._shape_ids

    def _walk_shapes(self) -> np.ndarray:
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


def normalise_splits(attrs: EnsembleAttributes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every LEQ/LT/GTE/GT split as ``x <= t'``: arrays over all nodes of (t', the ``<=`` side is
    the false child, NaN goes to the ``<=`` side); other nodes' entries are unused.

    Thresholds are float32 already, so ``x <= t`` keeps t and ``x < t`` becomes ``x <= t⁻`` (the
    float32 below); GTE/GT are the complements of LT/LEQ, with their children swapped. A split
    left testing "x <= NaN" (never true) that must send NaN to that side is "x is NaN": it
    becomes "x <= inf" (NaN false) with its children swapped back.
    """
    modes, t = attrs.modes, attrs.values.astype(np.float32)
    tracking = np.zeros(len(modes), dtype=bool)
    tracking[: len(attrs.missing)] = attrs.missing == 1
    low_side_true = (modes == BRANCH_LEQ) | (modes == BRANCH_LT)
    strict = (modes == BRANCH_LT) | (modes == BRANCH_GTE)
    with np.errstate(invalid="ignore", over="ignore"):  # below -max is -inf; below -inf is handled next
        tt = np.where(strict, np.nextafter(t, np.float32(-np.inf)), t)
    tt[strict & (t == -np.inf)] = np.nan  # nothing is below -inf
    tt[~low_side_true & np.isnan(t)] = np.inf  # x >= NaN / x > NaN never hold: "x <= inf" is their false side
    swap = ~low_side_true
    nan_le = np.where(low_side_true, tracking, ~tracking)
    flip = np.isnan(tt) & nan_le
    tt[flip] = np.inf
    swap[flip] = ~swap[flip]
    nan_le[flip] = False
    return tt.astype(np.float32), swap, nan_le


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
    ONNX node of each leaf (its weights), -1 at splits. Nodes the ONNX tree shares between
    parents stay shared (``shared``): the tree is then a DAG (the converters' categorical gadgets).
    """

    column: list[int] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    le: list[int] = field(default_factory=list)
    gt: list[int] = field(default_factory=list)
    source: list[int] = field(default_factory=list)
    shared: bool = False

    def add(self) -> int:
        for part in (self.column, self.le, self.gt, self.source):
            part.append(-1)
        self.threshold.append(0.0)
        return len(self.column) - 1

    def is_leaf(self, i: int) -> bool:
        return self.le[i] < 0

    def leaves_in_order(self) -> list[int]:
        """Leaves left to right with the ``<=`` child first (QuickScorer's order; plain trees)."""
        out, stack = [], [0]
        while stack:
            i = stack.pop()
            if self.le[i] < 0:
                out.append(i)
            else:
                stack += [self.gt[i], self.le[i]]
        return out


@dataclass
class NormalForest:
    trees: list[NormalTree]
    chains: list[Chain]
    n_features: int

    @property
    def shared(self) -> bool:
        return any(t.shared for t in self.trees)


def normalise(structure: TreeStructure) -> NormalForest:
    """Every tree of ``structure`` as a `NormalTree` over one list of chains (shared nodes kept shared)."""
    a = structure.attrs
    F = a.n_features
    chains: dict[Chain, int] = {}

    def chain_of(c: Chain) -> int:
        return chain_column(chains.setdefault(c, len(chains)), F)

    thresholds, swaps, nan_les = (v.tolist() for v in normalise_splits(a))
    modes, features, values = a.modes.tolist(), a.featureids.tolist(), a.values.tolist()
    children = structure.children.tolist()
    trees = []
    for r in structure.roots:
        tree = NormalTree()
        made = {r: tree.add()}  # ONNX node -> its normal node (one per ONNX node: sharing kept)
        work = [r]
        while work:
            i = work.pop()
            s = made[i]
            mode = modes[i]
            f_child, t_child = children[i]
            if mode == LEAF:
                tree.source[s] = i
                continue
            if mode == BRANCH_EQ:
                le_src, gt_src, chain = _equal_run(structure, i)
                tree.column[s], tree.threshold[s] = chain_of(chain), CHAIN_THRESHOLD
            elif mode == BRANCH_NEQ:  # x != v: "equal" is the false branch, NaN is never equal
                chain = Chain(features[i], (values[i],), False)
                le_src, gt_src = f_child, t_child
                tree.column[s], tree.threshold[s] = chain_of(chain), CHAIN_THRESHOLD
            else:
                tree.column[s] = nan_low_column(features[i], F) if nan_les[i] else features[i]
                tree.threshold[s] = thresholds[i]
                le_src, gt_src = (f_child, t_child) if swaps[i] else (t_child, f_child)
            for src, side in ((le_src, tree.le), (gt_src, tree.gt)):
                if src in made:
                    tree.shared = True
                else:
                    made[src] = tree.add()
                    work.append(src)
                side[s] = made[src]
        trees.append(tree)
    # Chains grouped by feature (a feature's chains then fill adjacent columns: one table row).
    ordered = sorted(chains, key=lambda c: (c.feature, chains[c]))
    new_column = {chain_column(chains[c], F): chain_column(k, F) for k, c in enumerate(ordered)}
    for tree in trees:
        tree.column = [new_column.get(col, col) for col in tree.column]
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
