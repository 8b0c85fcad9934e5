"""Step 3: pack — the normalised forest as the flat arrays each kernel reads (``codes.py`` names
every offset).

``NodeLayout``      slots breadth-first per tree, children side by side, leaves as self-loops,
                    shared nodes placed once and reached through jump slots: a tree takes at
                    most ``depth`` branch-free steps; groups of `LANES` trees of equal depth for
                    one row. One target per tree (every converter's regressors and multiclass
                    boosters), SUM or AVERAGE.
``BitvectorLayout`` QuickScorer: per extended column the splits sorted by threshold with the
                    leaves each rules out; the node layout's ensembles made of plain trees.
``ObliviousLayout`` oblivious (symmetric, CatBoost's) trees: per tree one test per level and a
                    leaf table indexed by the tests' bits; SUM or AVERAGE, any targets.
``GenericLayout``   ORT's modes as they are, any targets and aggregates; the reference path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import codes as C
from .normalise import NormalForest, NormalTree, TreeStructure, ort_ignores_tracking
from .read import EnsembleAttributes, OutputTail


def _exp_variant() -> int:
    """The ``Exp`` kernel ONNX Runtime's MLAS picks on this CPU (AVX-512F or not)."""
    from llvmlite import binding

    features = binding.get_host_cpu_features()
    return C.EXP_SCALEF if features.get("avx512f", False) else C.EXP_TWO_SCALE


EXP_VARIANT = _exp_variant()


@dataclass(frozen=True)
class Finish:
    """What happens to a row's per-target sums: ORT's FinalizeScores, post-transform, the tail."""

    fin: np.ndarray  # uint32, FIN_* fields
    fconst: np.ndarray  # float32: n_trees, origin, base values

    @classmethod
    def build(cls, attrs: EnsembleAttributes, n_trees: int, tail: OutputTail) -> Finish:
        K = attrs.n_targets
        if tail.binary and K != 1:
            raise ValueError(f"node {attrs.name!r}: the binary tail [1 - p, p] needs one target, not {K}")
        fin = np.zeros(C.FIN_FIELDS, dtype=np.uint32)
        fin[C.FIN_N_TARGETS] = K
        fin[C.FIN_AGGREGATE] = C.Aggregate[attrs.aggregate]
        fin[C.FIN_POST_TRANSFORM] = C.PostTransform[attrs.post_transform]
        fin[C.FIN_LINK] = tail.link
        fin[C.FIN_BINARY] = tail.binary
        fin[C.FIN_USE_BASE] = len(attrs.base) == K
        fin[C.FIN_EXP_VARIANT] = EXP_VARIANT
        fconst = np.zeros(C.FCONST_BASE + K, dtype=np.float32)
        fconst[C.FCONST_N_TREES] = n_trees
        fconst[C.FCONST_ORIGIN] = attrs.base[0] if len(attrs.base) == 1 else 0.0
        if len(attrs.base) == K:
            fconst[C.FCONST_BASE :] = attrs.base
        return cls(fin, fconst)


def _chain_section_size(forest: NormalForest) -> int:
    return len(_chain_table(forest, 0, 0)[0])


def _chain_table(forest: NormalForest, words_base: int, values_base: int) -> tuple[list[int], list[int], list[float]]:
    """(the chain section, bitset words, consts values) with offsets relative to the given bases.

    Chains come grouped by feature (``normalise``); a feature whose chains are all bitsets over
    at most TABLE_MAX_CODES codes gets a table (``codes.py``), its chains marked CHAIN_TABLED.
    """
    records, rows, words, values = [], [], [], []
    by_feature: dict[int, list[int]] = {}
    for c, chain in enumerate(forest.chains):
        by_feature.setdefault(chain.feature, []).append(c)
    tabled = set()
    for f, members in by_feature.items():
        chains = [forest.chains[c] for c in members]
        if not all(ch.is_bitset for ch in chains):
            continue
        M = int(max(max(ch.values) for ch in chains)) + 1
        if M > C.TABLE_MAX_CODES or (M + 2) * len(members) > C.TABLE_MAX_FLOATS:
            continue
        table = np.ones((M + 2, len(members)), dtype=np.float32)  # 1.0: not a member
        for j, ch in enumerate(chains):
            table[np.asarray(ch.values, dtype=np.float32).astype(np.int64), j] = 0.0
            table[M + 1, j] = 0.0 if ch.nan_member else 1.0
        records += [f, M, members[0], len(members), values_base + len(values)]
        values += table.ravel().tolist()
        tabled.update(members)
    for c, chain in enumerate(forest.chains):
        if c in tabled:
            row = [chain.feature, C.CHAIN_TABLED, 0, 0, chain.nan_member]
        elif chain.is_bitset:
            w = chain.bitset_words()
            row = [chain.feature, C.CHAIN_BITSET, words_base + len(words), len(w), chain.nan_member]
            words += w.tolist()
        else:
            row = [chain.feature, C.CHAIN_LIST, values_base + len(values), len(chain.values), chain.nan_member]
            values += list(chain.values)
        rows += row
    return [len(records) // C.TABLE_FIELDS, *records, *rows], words, values


def _tree_targets(structure: TreeStructure, forest: NormalForest) -> np.ndarray | None:
    """The target each tree adds to, when every tree adds to one target (else None).

    One target: a leaf adds its first weight (ORT's 1-output path reads ``weights[0]``). Several:
    every leaf must carry exactly one weight, the same target throughout its tree.
    """
    K = structure.attrs.n_targets
    targets = np.zeros(len(forest.trees), dtype=np.uint32)
    for t, tree in enumerate(forest.trees):
        seen = set()
        for src in tree.source:
            if src < 0:
                continue
            ws = structure.leaf_weights[src]
            if K > 1 and len(ws) != 1:
                return None
            seen.add(ws[0][0] if K > 1 else 0)
        if len(seen) != 1:
            return None
        targets[t] = seen.pop()
    return targets


def _leaf_value(structure: TreeStructure, src: int) -> np.float32:
    return np.float32(structure.leaf_weights[src][0][1])


def _has_flags(targets: np.ndarray, K: int) -> np.ndarray:
    has = np.zeros(K, dtype=np.uint32)
    has[np.unique(targets)] = 1
    return has


def bitvector_reason(forest: NormalForest) -> str:
    """Why the bitvector layout cannot take this (node-layout) ensemble ("" when it can)."""
    if forest.shared:
        return "trees whose nodes are shared (QuickScorer numbers the leaves of plain trees)"
    return ""


def single_target_trees_reason(attrs: EnsembleAttributes, structure: TreeStructure, forest: NormalForest) -> str:
    """Why the node/bitvector layouts cannot take this ensemble ("" when they can)."""
    if attrs.aggregate not in ("SUM", "AVERAGE"):
        return f"aggregate_function {attrs.aggregate} (the node and bitvector layouts take SUM and AVERAGE)"
    if _tree_targets(structure, forest) is None:
        return "leaves with several weights or trees adding to several targets"
    if C.n_ext_columns(forest.n_features, len(forest.chains)) > C.NODE_COLUMN_MASK:
        return f"{forest.n_features} features and {len(forest.chains)} categorical chains exceed 16-bit columns"
    return ""


@dataclass
class NodeLayout:
    prog: np.ndarray  # uint32
    nodes: np.ndarray  # uint32, NODE_WORDS per slot
    consts: np.ndarray  # float32: fconst, then chain list values
    n_ext: int
    n_trees: int
    n_targets: int
    max_depth: int

    def one_row_scratch(self) -> np.ndarray:
        """ext + one leaf value per tree (+1 for padding lanes) + per-target sums."""
        return np.empty(self.n_ext + self.n_trees + 1 + self.n_targets, dtype=np.float32)

    def block_scratch(self) -> np.ndarray:
        """ext and per-target sums for each row of a block."""
        return np.empty((self.n_ext + self.n_targets) * C.BLOCK, dtype=np.float32)


def _place(tree: NormalTree) -> tuple[list[tuple[bool, int]], dict[int, int]] | None:
    """Breadth-first slots of one tree: [(is a jump, normal node)], {slot: its children's slot}.

    Children sit side by side as [gt, le]. A node shared by several parents is placed once;
    later parents reach it through a jump slot (a step that always moves by its offset). Leaves
    are copied instead: a copy costs no step. None when an offset does not fit in 16 bits.
    """
    slots, left, placed = [(False, 0)], {}, {0: 0}
    q = 0
    while q < len(slots):
        jump, i = slots[q]
        if not jump and not tree.is_leaf(i):
            left[q] = len(slots)
            if left[q] - q > C.NODE_MAX_OFFSET:
                return None
            for c in (tree.gt[i], tree.le[i]):
                if tree.is_leaf(c) or c not in placed:
                    placed.setdefault(c, len(slots))
                    slots.append((False, c))
                else:
                    if placed[c] - len(slots) < C.NODE_MIN_OFFSET:
                        return None
                    slots.append((True, c))
        q += 1
    return slots, left


def _steps(slots: list[tuple[bool, int]], left: dict[int, int], placed_at: dict[int, int]) -> int:
    """The most steps a row can take from the root (jumps count) before it sits on a leaf."""
    memo: dict[int, int] = {}
    stack = [0]
    while stack:
        q = stack[-1]
        jump, i = slots[q]
        nxt = [placed_at[i]] if jump else ([left[q], left[q] + 1] if q in left else [])
        todo = [n for n in nxt if n not in memo]
        if todo:
            stack += todo
            continue
        stack.pop()
        memo[q] = 1 + max(memo[n] for n in nxt) if nxt else 0
    return memo[0]


def pack_nodes(structure: TreeStructure, forest: NormalForest, finish: Finish) -> NodeLayout | None:
    """The node layout, or None when a tree is too wide for 16-bit child offsets."""
    targets = _tree_targets(structure, forest)
    F, n_chains, T = forest.n_features, len(forest.chains), len(forest.trees)
    K = int(finish.fin[C.FIN_N_TARGETS])
    placed, roots, depths = [], np.empty(T, np.int64), np.empty(T, np.int64)
    n_slots = 0
    for k, tree in enumerate(forest.trees):
        layout = _place(tree)
        if layout is None:
            return None
        slots, left = layout
        placed_at = {i: q for q, (jump, i) in enumerate(slots) if not jump and not tree.is_leaf(i)}
        placed.append((slots, left, placed_at))
        roots[k], depths[k] = n_slots, _steps(slots, left, placed_at)
        n_slots += len(slots)
    nodes = np.zeros((n_slots, C.NODE_WORDS), dtype=np.uint32)
    values = nodes.view(np.float32)
    nan_low = False
    for k, (tree, (slots, left, placed_at)) in enumerate(zip(forest.trees, placed)):
        base = roots[k]
        for q, (jump, i) in enumerate(slots):
            s = base + q
            if jump:  # reads the NaN column: never <=, so it always moves by its offset
                offset = placed_at[i] - q
                nodes[s, C.NODE_WORD] = C.leaf_column(F) | ((offset & 0xFFFF) << C.NODE_OFFSET_SHIFT)
            elif tree.is_leaf(i):
                nodes[s, C.NODE_WORD] = C.leaf_column(F)
                values[s, C.NODE_THRESHOLD] = _leaf_value(structure, tree.source[i])
            else:
                column = tree.column[i]
                nan_low |= F <= column < 2 * F
                nodes[s, C.NODE_WORD] = column | ((left[q] - q) << C.NODE_OFFSET_SHIFT)
                values[s, C.NODE_THRESHOLD] = tree.threshold[i]
    # Groups of LANES trees of equal depth for one row; padded with a leaf whose value lands
    # in vals[n_trees], outside the sum.
    order = np.argsort(depths, kind="stable")
    order = np.concatenate([order, np.full((-T) % C.LANES, -1)])
    groups = []
    for g in range(0, len(order), C.LANES):
        idx = order[g : g + C.LANES]
        real = idx[idx >= 0]
        groups += [depths[real].max()]
        groups += [roots[i] if i >= 0 else roots[real[0]] for i in idx]
        groups += [i if i >= 0 else T for i in idx]
    chains_at = C.NODE_HEADER + 3 * T + len(groups)
    words_at = chains_at + _chain_section_size(forest)
    table, words, list_values = _chain_table(forest, words_at, len(finish.fconst))
    fin_at = words_at + len(words)
    has_at = fin_at + C.FIN_FIELDS
    header = np.zeros(C.NODE_HEADER, dtype=np.int64)
    header[C.NODE_N_TREES], header[C.NODE_N_FEATURES], header[C.NODE_N_TARGETS] = T, F, K
    header[C.NODE_N_CHAINS], header[C.NODE_NAN_LOW] = n_chains, nan_low
    header[C.NODE_N_GROUPS] = len(order) // C.LANES
    header[C.NODE_ROOTS_AT] = C.NODE_HEADER
    header[C.NODE_DEPTHS_AT] = C.NODE_HEADER + T
    header[C.NODE_TARGETS_AT] = C.NODE_HEADER + 2 * T
    header[C.NODE_GROUPS_AT] = C.NODE_HEADER + 3 * T
    header[C.NODE_CHAINS_AT], header[C.NODE_FIN_AT], header[C.NODE_HAS_AT] = chains_at, fin_at, has_at
    prog = np.concatenate(
        [header, roots, depths, targets, groups, table, words, finish.fin, _has_flags(targets, K)]
    ).astype(np.uint32)
    consts = np.concatenate([finish.fconst, np.asarray(list_values, dtype=np.float32)]).astype(np.float32)
    return NodeLayout(prog, nodes.ravel(), consts, C.n_ext_columns(F, n_chains), T, K, int(depths.max()))


@dataclass
class BitvectorLayout:
    prog: np.ndarray  # uint32
    words: np.ndarray  # uint64: per sorted split its mask (one word) or lo | hi << 32; then init
    consts: np.ndarray  # float32: fconst, chain list values, thresholds, leaf values
    n_ext: int
    n_trees: int
    n_targets: int
    n_words: int

    def scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """(ext + per-target sums, one leaf bitvector per tree) for one row at a time."""
        return (
            np.empty(self.n_ext + self.n_targets, dtype=np.float32),
            np.empty(self.n_trees * self.n_words, dtype=np.uint64),
        )

    @property
    def vectorised(self) -> bool:
        """Whether the row-block (vectorised) variant exists (one-word trees)."""
        return self.prog[C.BV_VQ_N_BLOCKS] > 0

    def block_scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """(one row's ext, VQ_ROWS rows' ext column-major, their per-target sums; one block's bitvectors)."""
        return (
            np.empty(self.n_ext * (1 + C.VQ_ROWS) + self.n_targets * C.VQ_ROWS, dtype=np.float32),
            np.empty(C.VQ_ROWS * C.VQ_TREES, dtype=np.uint64),
        )


def pack_bitvectors(structure: TreeStructure, forest: NormalForest, finish: Finish) -> BitvectorLayout:
    targets = _tree_targets(structure, forest)
    F, n_chains, T = forest.n_features, len(forest.chains), len(forest.trees)
    K = int(finish.fin[C.FIN_N_TARGETS])
    leaf_orders = [tree.leaves_in_order() for tree in forest.trees]
    W = max(1, max((len(o) + 63) // 64 for o in leaf_orders))
    leaves = np.zeros((T, 64 * W), dtype=np.float32)
    init = np.zeros((T, W), dtype=np.uint64)
    col, thr, tree_of, lo_hi = [], [], [], []
    for t, (tree, order) in enumerate(zip(forest.trees, leaf_orders)):
        position = {leaf: k for k, leaf in enumerate(order)}
        for k, leaf in enumerate(order):
            leaves[t, k] = _leaf_value(structure, tree.source[leaf])
            init[t, k // 64] |= np.uint64(1) << np.uint64(k % 64)
        # The leaves under each node: a contiguous [first, last] range in left-to-right order.
        first, last = {}, {}
        for i in reversed(range(len(tree.column))):  # children are added after their parent
            if tree.le[i] < 0:
                first[i] = last[i] = position[i]
            else:
                first[i], last[i] = first[tree.le[i]], last[tree.gt[i]]
        for i in range(len(tree.column)):
            if tree.le[i] < 0:
                continue
            lo, hi = first[tree.le[i]], last[tree.le[i]] + 1  # false: the <= subtree is out
            if np.isnan(tree.threshold[i]):  # x <= NaN never holds: always false
                init[t] &= ~_range_mask(lo, hi, W)
                continue
            col.append(tree.column[i])
            thr.append(tree.threshold[i])
            tree_of.append(t)
            lo_hi.append((lo, hi))
    col, thr = np.asarray(col, np.int64), np.asarray(thr, np.float32)
    order = np.lexsort((thr, col))  # by column, then threshold
    col, thr = col[order], thr[order]
    tree_of = np.asarray(tree_of, np.int64)[order]
    lo_hi = np.asarray(lo_hi, np.int64).reshape(-1, 2)[order]
    active = np.unique(col)
    starts = [*np.searchsorted(col, active).tolist(), len(col)]
    if W == 1:  # the leaves the split keeps: all but [lo, hi)
        split_words = ~(_bits_below(lo_hi[:, 1]) ^ _bits_below(lo_hi[:, 0]))
    else:
        split_words = (lo_hi[:, 0] | (lo_hi[:, 1] << 32)).astype(np.uint64)
    n = len(col)
    vq = _vectorised_blocks(col, thr, tree_of, split_words, T) if W == 1 else None
    active_at = C.BV_HEADER
    starts_at = active_at + len(active)
    tree_of_at = starts_at + len(starts)
    targets_at = tree_of_at + n
    chains_at = targets_at + T
    words_at = chains_at + _chain_section_size(forest)
    table, words, list_values = _chain_table(forest, words_at, len(finish.fconst))
    fin_at = words_at + len(words)
    has_at = fin_at + C.FIN_FIELDS
    vq_at = has_at + K
    thresholds_at = len(finish.fconst) + len(list_values)
    header = np.zeros(C.BV_HEADER, dtype=np.int64)
    header[C.BV_N_TREES], header[C.BV_N_FEATURES], header[C.BV_N_TARGETS] = T, F, K
    header[C.BV_N_CHAINS] = n_chains
    header[C.BV_NAN_LOW] = bool(np.any((col >= F) & (col < 2 * F)))
    header[C.BV_WORDS], header[C.BV_N_ACTIVE] = W, len(active)
    header[C.BV_ACTIVE_AT], header[C.BV_STARTS_AT], header[C.BV_TREE_OF_AT] = active_at, starts_at, tree_of_at
    header[C.BV_TARGETS_AT], header[C.BV_CHAINS_AT] = targets_at, chains_at
    header[C.BV_FIN_AT], header[C.BV_HAS_AT] = fin_at, has_at
    header[C.BV_THRESHOLDS_AT], header[C.BV_LEAVES_AT] = thresholds_at, thresholds_at + n
    header[C.BV_INIT_AT] = n
    vq_prog, vq_thr, vq_mask = [], np.zeros(0, np.float32), np.zeros(0, np.uint64)
    if vq is not None:
        blocks, entry_cols, entry_starts, vq_tree, vq_thr, vq_mask = vq
        header[C.BV_VQ_N_BLOCKS] = len(blocks) // C.VQ_BLOCK_FIELDS
        header[C.BV_VQ_BLOCKS_AT] = vq_at
        header[C.BV_VQ_COLS_AT] = vq_at + len(blocks)
        header[C.BV_VQ_STARTS_AT] = vq_at + len(blocks) + len(entry_cols)
        header[C.BV_VQ_TREE_AT] = vq_at + len(blocks) + len(entry_cols) + len(entry_starts)
        header[C.BV_VQ_THR_AT] = thresholds_at + n + len(leaves.ravel())
        header[C.BV_VQ_MASK_AT] = n + T * W
        vq_prog = [blocks, entry_cols, entry_starts, vq_tree]
    prog = np.concatenate(
        [header, active, starts, tree_of, targets, table, words, finish.fin, _has_flags(targets, K), *vq_prog]
    ).astype(np.uint32)
    consts = np.concatenate([finish.fconst, np.asarray(list_values, np.float32), thr, leaves.ravel(), vq_thr]).astype(
        np.float32
    )
    return BitvectorLayout(
        prog, np.concatenate([split_words, init.ravel(), vq_mask]), consts, C.n_ext_columns(F, n_chains), T, K, W
    )


def _vectorised_blocks(col, thr, tree_of, masks, T: int):
    """The splits regrouped by blocks of VQ_TREES trees, each block's sorted by column then
    threshold: (blocks, entry columns, entry starts + end, tree within block, thresholds, masks)."""
    blocks, entry_cols, entry_starts, trees, thrs, kept = [], [], [], [], [], []
    n_splits = 0
    for first in range(0, T, C.VQ_TREES):
        end = min(T, first + C.VQ_TREES)
        mine = np.flatnonzero((tree_of >= first) & (tree_of < end))  # keeps the (column, threshold) order
        cols = col[mine]
        block_cols = np.unique(cols)
        blocks += [first, end, len(entry_cols), len(entry_cols) + len(block_cols)]
        entry_cols += block_cols.tolist()
        entry_starts += (n_splits + np.searchsorted(cols, block_cols)).tolist()
        trees.append(tree_of[mine] - first)
        thrs.append(thr[mine])
        kept.append(masks[mine])
        n_splits += len(mine)
    entry_starts.append(n_splits)
    return (
        np.asarray(blocks, np.int64),
        np.asarray(entry_cols, np.int64),
        np.asarray(entry_starts, np.int64),
        np.concatenate(trees),
        np.concatenate(thrs).astype(np.float32),
        np.concatenate(kept).astype(np.uint64),
    )


def _bits_below(n: np.ndarray) -> np.ndarray:
    """uint64 words with bits 0..n-1 set (n in 0..64)."""
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    shifted = np.left_shift(np.uint64(1), np.minimum(n, 63).astype(np.uint64)) - np.uint64(1)
    return np.where(n >= 64, ones, shifted).astype(np.uint64)


def _range_mask(lo: int, hi: int, n_words: int) -> np.ndarray:
    """Bits lo..hi-1 set, over n_words uint64 words."""
    bits = (1 << int(hi)) - (1 << int(lo))
    return np.array([(bits >> (64 * w)) & 0xFFFFFFFFFFFFFFFF for w in range(n_words)], dtype=np.uint64)


@dataclass
class GenericLayout:
    gi: np.ndarray  # int32 (slots, GEN_FIELDS)
    thr: np.ndarray  # float32 thresholds
    wt: np.ndarray  # int32 weight targets
    wv: np.ndarray  # float32 weight values
    roots: np.ndarray  # int32
    fin: np.ndarray
    fconst: np.ndarray


def pack_generic(structure: TreeStructure, finish: Finish) -> GenericLayout:
    a = structure.attrs
    wt, wv, roots, base = [], [], [], 0
    packed = structure.pack()
    n_slots = sum(len(slots) for slots, _, _ in packed)
    gi = np.zeros((n_slots, C.GEN_FIELDS), dtype=np.int32)
    thr = np.zeros(n_slots, dtype=np.float32)
    for slots, _, left in packed:
        roots.append(base)
        parent = {child: q for q, first in left.items() for child in (first, first + 1)}
        for q, i in enumerate(slots):
            s = base + q
            gi[s, C.GEN_FEATURE] = a.featureids[i]
            gi[s, C.GEN_MODE] = a.modes[i]
            if a.modes[i] == C.LEAF:
                ws = structure.leaf_weights[i][:1] if a.n_targets == 1 else structure.leaf_weights[i]
                gi[s, C.GEN_FIRST_WEIGHT] = len(wt)
                for tid, w in ws:
                    wt.append(0 if a.n_targets == 1 else tid)
                    wv.append(w)
                gi[s, C.GEN_END_WEIGHT] = len(wt)
            else:
                gi[s, C.GEN_CHILDREN] = base + left[q]
                folded = q in parent and ort_ignores_tracking(structure, slots[parent[q]], i)
                gi[s, C.GEN_TRACKS] = a.is_tracking(i) and not folded
                thr[s] = a.values[i]
        base += len(slots)
    return GenericLayout(
        gi,
        thr,
        np.asarray(wt, dtype=np.int32),
        np.asarray(wv, dtype=np.float32),
        np.asarray(roots, dtype=np.int32),
        finish.fin,
        finish.fconst,
    )


@dataclass(frozen=True)
class ObliviousTree:
    """One tree whose every level tests one split: leaf ``sum(test_k << k)`` is ``leaves[...]``."""

    columns: tuple[int, ...]  # per level, root first: the extended column tested
    thresholds: tuple[float, ...]  # its threshold (the test is ``ext[column] <= threshold``)
    leaves: tuple[int, ...]  # 2^depth ONNX leaf nodes; bit k of the index: level k's test holds


def _same_split(tree: NormalTree, i: int, j: int) -> bool:
    a, b = np.float32(tree.threshold[i]), np.float32(tree.threshold[j])
    return tree.column[i] == tree.column[j] and a.tobytes() == b.tobytes()


def oblivious_form(tree: NormalTree) -> ObliviousTree | str:
    """The tree in oblivious form, or why it has none.

    Level by level from the root: every node of a level is a leaf (the tree ends there) or every
    one is a split testing the same column against the same threshold. The nodes of level k are
    reached with the tests of levels 0..k-1 as bits of a prefix (a ``<=`` child sets its level's
    bit), so each leaf's index is derived from the tree itself, whatever order the ONNX nodes
    were listed in. Trees with shared nodes are refused: a level's nodes, and the leaf table,
    then stay as many as the nodes the graph lists.
    """
    if tree.shared:
        return "shared nodes"
    frontier = [(0, 0)]  # (normal node, index prefix)
    columns, thresholds = [], []
    for level in range(C.OB_MAX_DEPTH + 1):
        leaves = [tree.is_leaf(i) for i, _ in frontier]
        if all(leaves):
            order = sorted(frontier, key=lambda node_prefix: node_prefix[1])
            return ObliviousTree(tuple(columns), tuple(thresholds), tuple(tree.source[i] for i, _ in order))
        if any(leaves):
            return f"leaves at depth {level} beside splits (not complete to its depth)"
        first = frontier[0][0]
        if not all(_same_split(tree, first, i) for i, _ in frontier):
            return f"level {level} tests more than one split"
        if level == C.OB_MAX_DEPTH:
            break
        columns.append(tree.column[first])
        thresholds.append(tree.threshold[first])
        frontier = [(c, prefix | (b << level)) for i, prefix in frontier for c, b in ((tree.le[i], 1), (tree.gt[i], 0))]
    return f"deeper than {C.OB_MAX_DEPTH} levels"


def _leaf_targets(structure: TreeStructure, src: int) -> dict[int, np.float32] | None:
    """{target: weight} of one leaf as ORT adds it (one target: the first weight only), or None
    when the leaf adds to one target twice (ORT's two additions cannot be one table entry)."""
    weights = structure.leaf_weights[src]
    if structure.attrs.n_targets == 1:
        return {0: np.float32(weights[0][1])}
    out = {}
    for target, w in weights:
        if target in out:
            return None
        out[target] = np.float32(w)
    return out


def oblivious_trees(structure: TreeStructure, forest: NormalForest) -> tuple[list[ObliviousTree], str]:
    """(every tree in oblivious form, "") or ([], why the oblivious layout cannot take the ensemble)."""
    a = structure.attrs
    if a.aggregate not in ("SUM", "AVERAGE"):
        return [], f"aggregate_function {a.aggregate} (the oblivious layout takes SUM and AVERAGE)"
    trees = []
    for t, tree in enumerate(forest.trees):
        form = oblivious_form(tree)
        if isinstance(form, str):
            return [], f"trees that are not oblivious: tree {t} has {form}"
        targets = [_leaf_targets(structure, src) for src in form.leaves]
        if any(m is None for m in targets) or any(m.keys() != targets[0].keys() for m in targets):
            return [], f"leaves of tree {t} adding to different targets, or to one target twice"
        trees.append(form)
    return trees, ""


@dataclass
class ObliviousLayout:
    prog: np.ndarray  # uint32
    consts: np.ndarray  # float32: fconst, chain list values, level thresholds, leaf values
    n_ext: int
    n_slots: int
    n_targets: int

    def one_row_scratch(self) -> np.ndarray:
        """ext + per-target sums."""
        return np.empty(self.n_ext + self.n_targets, dtype=np.float32)

    def block_scratch_size(self) -> int:
        """One row's ext (for chain slots), the block's slots feature-major, its sums target-major
        and row-major (what `finish_rows` reads)."""
        return self.n_ext + (self.n_slots + 2 * self.n_targets) * C.OB_ROWS

    def block_scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """(float32 scratch of `block_scratch_size`, each row's leaf index)."""
        return np.empty(self.block_scratch_size(), dtype=np.float32), np.empty(C.OB_ROWS, dtype=np.uint32)


def pack_oblivious(
    trees: list[ObliviousTree], structure: TreeStructure, forest: NormalForest, finish: Finish
) -> ObliviousLayout:
    """The oblivious layout of `oblivious_trees`' trees.

    Each tree's levels are padded to a multiple of OB_GROUP with tests that never hold
    (``ext[slot 0's column] <= NaN``): they set no bit, so the leaf index is unchanged.
    Leaf values are a dense table per tree and target (target-major: one gather loop per target
    in a batch), ``K x 2^depth``: a target a tree does not score
    holds 0.0 there, which leaves the row's float32 sum unchanged (a sum from +0 is never -0, so
    adding +0 is exact), and ``has`` marks the targets some tree scores, as ORT's has_score does
    for trees whose leaves all score the same targets (`oblivious_trees` requires it).
    """
    F, n_chains, T = forest.n_features, len(forest.chains), len(trees)
    K = int(finish.fin[C.FIN_N_TARGETS])
    slots = sorted({c for tree in trees for c in tree.columns})
    slot_of = {c: s for s, c in enumerate(slots)}
    tree_rows, level_columns, level_slots, thresholds, leaf_values = [], [], [], [], []
    has = np.zeros(K, dtype=np.uint32)
    n_leaf_values = 0
    for tree in trees:
        depth = len(tree.columns)
        pad = -depth % C.OB_GROUP
        tree_rows += [depth + pad, len(level_columns), n_leaf_values, 1 << depth]
        level_columns += [*tree.columns, *slots[:1] * pad]
        level_slots += [*(slot_of[c] for c in tree.columns), *[0] * pad]
        thresholds += [*tree.thresholds, *[np.nan] * pad]
        table = np.zeros((K, 1 << depth), dtype=np.float32)
        for leaf, src in enumerate(tree.leaves):
            for target, w in _leaf_targets(structure, src).items():
                table[target, leaf] = w
                has[target] = 1
        leaf_values.append(table.ravel())
        n_leaf_values += table.size
    slots_at = C.OB_HEADER
    trees_at = slots_at + len(slots)
    level_column_at = trees_at + len(tree_rows)
    level_slot_at = level_column_at + len(level_columns)
    chains_at = level_slot_at + len(level_slots)
    words_at = chains_at + _chain_section_size(forest)
    table, words, list_values = _chain_table(forest, words_at, len(finish.fconst))
    fin_at = words_at + len(words)
    has_at = fin_at + C.FIN_FIELDS
    thresholds_at = len(finish.fconst) + len(list_values)
    header = np.zeros(C.OB_HEADER, dtype=np.int64)
    header[C.OB_N_TREES], header[C.OB_N_FEATURES], header[C.OB_N_TARGETS] = T, F, K
    header[C.OB_N_CHAINS], header[C.OB_N_SLOTS] = n_chains, len(slots)
    header[C.OB_NAN_LOW] = any(F <= c < 2 * F for c in slots)
    header[C.OB_SLOTS_AT], header[C.OB_TREES_AT] = slots_at, trees_at
    header[C.OB_LEVEL_COLUMN_AT], header[C.OB_LEVEL_SLOT_AT] = level_column_at, level_slot_at
    header[C.OB_CHAINS_AT], header[C.OB_FIN_AT], header[C.OB_HAS_AT] = chains_at, fin_at, has_at
    header[C.OB_THRESHOLDS_AT], header[C.OB_LEAVES_AT] = thresholds_at, thresholds_at + len(thresholds)
    prog = np.concatenate([header, slots, tree_rows, level_columns, level_slots, table, words, finish.fin, has]).astype(
        np.uint32
    )
    consts = np.concatenate(
        [
            finish.fconst,
            np.asarray(list_values, np.float32),
            np.asarray(thresholds, np.float32),
            *leaf_values,
        ]
    ).astype(np.float32)
    return ObliviousLayout(prog, consts, C.n_ext_columns(F, n_chains), len(slots), K)
