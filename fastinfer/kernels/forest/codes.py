"""Named codes of the forest pipeline: split modes, aggregates, post-transforms, links, and
every offset of the packed arrays the kernels read.

The enums name what ONNX Runtime names (``ml_common.h``: ``NODE_MODE``, ``AGGREGATE_FUNCTION``,
``POST_EVAL_TRANSFORM``). The kernels compare against the plain module-level ints below, which
numba folds into constants; the enums are the one place those ints are defined.
"""

from __future__ import annotations

from enum import IntEnum


class SplitMode(IntEnum):
    """``nodes_modes`` of a TreeEnsembleRegressor, in ORT's ``NODE_MODE`` order."""

    BRANCH_LEQ = 0
    BRANCH_LT = 1
    BRANCH_GTE = 2
    BRANCH_GT = 3
    BRANCH_EQ = 4
    BRANCH_NEQ = 5
    LEAF = 6


class Aggregate(IntEnum):
    """``aggregate_function``: how the trees' leaf values are combined per target."""

    SUM = 0
    AVERAGE = 1
    MIN = 2
    MAX = 3


class PostTransform(IntEnum):
    """``post_transform`` values the kernels reproduce (PROBIT is refused: no reference kept)."""

    NONE = 0
    LOGISTIC = 1
    SOFTMAX = 2
    SOFTMAX_ZERO = 3


class Link(IntEnum):
    """An elementwise op after the trees in the graph: ``Exp`` (log-link objectives) or
    ``Sigmoid`` (one-column logistic: ORT ignores LOGISTIC on one target)."""

    IDENTITY = 0
    EXP = 1
    SIGMOID = 2


class ExpVariant(IntEnum):
    """Which of ONNX Runtime's (MLAS) float32 ``Exp`` kernels this CPU runs (see ``finish.py``)."""

    SCALEF = 0  # AVX-512F: vscalefps rebuilds 2^m in one rounding
    TWO_SCALE = 1  # FMA3 / NEON: 2^m as two exponent factors (overflow, normal)


# Plain ints for the kernels (numba folds module-level ints into constants).
BRANCH_LEQ, BRANCH_LT, BRANCH_GTE, BRANCH_GT, BRANCH_EQ, BRANCH_NEQ, LEAF = (int(m) for m in SplitMode)
AGG_SUM, AGG_AVERAGE, AGG_MIN, AGG_MAX = (int(a) for a in Aggregate)
POST_NONE, POST_LOGISTIC, POST_SOFTMAX, POST_SOFTMAX_ZERO = (int(p) for p in PostTransform)
LINK_IDENTITY, LINK_EXP, LINK_SIGMOID = (int(k) for k in Link)
EXP_SCALEF, EXP_TWO_SCALE = (int(v) for v in ExpVariant)

# ------------------------------------------------------------------ the extended row
# Every split the node and bitvector kernels evaluate is ``ext[column] <= threshold`` on a row
# extended to ``2F + 1 + C`` columns (F features, C categorical chains):
#   [0, F)        the features as given
#   [F, 2F)       the features with NaN replaced by -inf, for splits that send NaN to the
#                 ``<=`` side (``missing_value_tracks_true`` on a LEQ/LT, off on a GTE/GT)
#   2F            always NaN: the column a leaf reads, so ``NaN <= value`` never moves it
#   2F + 1 + c    0.0 when the row is a member of categorical chain c (a run of BRANCH_EQ on
#                 one feature, compiled to one membership test), else 1.0; tested ``<= 0.5``


def nan_low_column(feature: int, n_features: int) -> int:
    return n_features + feature


def leaf_column(n_features: int) -> int:
    return 2 * n_features


def chain_column(chain: int, n_features: int) -> int:
    return 2 * n_features + 1 + chain


def n_ext_columns(n_features: int, n_chains: int) -> int:
    return 2 * n_features + 1 + n_chains


CHAIN_THRESHOLD = 0.5  # member -> 0.0 <= 0.5 (the "equal" branch), non-member -> 1.0

# The chain section of prog, at chains_at: [n_tables, n_tables table records, one row per chain].
# A table serves every chain of one categorical feature at once: row k of a (codes + 2) x chains
# float32 matrix holds those chains' columns for code k (row `codes`: not a code; row codes + 1:
# NaN), so a row copies one table row instead of testing each chain (thousands in a LightGBM
# model with a 40-code feature).
TABLE_FEATURE = 0
TABLE_CODES = 1  # M: codes 0..M-1 have their own row
TABLE_FIRST_CHAIN = 2
TABLE_N_CHAINS = 3
TABLE_OFFSET = 4  # first float32 in consts
TABLE_FIELDS = 5
TABLE_MAX_CODES = 4096
TABLE_MAX_FLOATS = 1 << 22  # 16 MB per feature at most
# A chain's row (``prog[rows_at + CHAIN_FIELDS * c + field]``).
CHAIN_FEATURE = 0
CHAIN_KIND = 1  # CHAIN_BITSET, CHAIN_LIST or CHAIN_TABLED
CHAIN_OFFSET = 2  # bitset: first uint32 word in prog; list: first float32 value in consts
CHAIN_COUNT = 3  # bitset: words; list: values
CHAIN_NAN_MEMBER = 4  # 1 when NaN takes the "equal" branch (as ORT routes it: normalise._equal_run)
CHAIN_FIELDS = 5
CHAIN_BITSET = 0  # categories are integers in [0, 32 * words): one bit each
CHAIN_LIST = 1  # anything else: compared one by one, as ORT compares them
CHAIN_TABLED = 2  # filled by its feature's table
BITSET_MAX_CATEGORY = 1 << 16  # larger integer categories use the list

# ------------------------------------------------------------------ finishing a row
# ``fin`` (uint32) describes what happens after the trees are summed, ``fconst`` (float32)
# holds its numbers; both are views into each layout's arrays.
FIN_N_TARGETS = 0
FIN_AGGREGATE = 1
FIN_POST_TRANSFORM = 2
FIN_LINK = 3
FIN_BINARY = 4  # 1: write [1 - p, p] (the binary classifier tail Sub(1, p) + Concat)
FIN_USE_BASE = 5  # 1: base_values has one value per target (ORT's use_base_values_)
FIN_EXP_VARIANT = 6
FIN_FIELDS = 7
FCONST_N_TREES = 0
FCONST_ORIGIN = 1  # base_values[0] when base_values has exactly one value (ORT's origin_)
FCONST_BASE = 2  # base_values, one per target, follow
# (per-target "has a score" flags: ``has`` arrays beside ``fin``)

# ------------------------------------------------------------------ the node layout
# A slot is two uint32 words: [threshold (float32 bits; a leaf's value at a leaf), word], with
# word = column | (signed 16-bit offset to the slot's children << NODE_OFFSET_SHIFT). Children
# sit side by side, [greater, less-or-equal], so the next slot is ``slot + offset + (ext[column] <= t)``.
# A leaf has offset 0 and reads the NaN column: it stays where it is. A jump (to a node shared
# by several parents, placed once) reads the NaN column too, so it always moves by its offset.
NODE_WORDS = 2
NODE_THRESHOLD = 0
NODE_WORD = 1
NODE_OFFSET_SHIFT = 16
NODE_COLUMN_MASK = (1 << NODE_OFFSET_SHIFT) - 1
NODE_MAX_OFFSET = (1 << (31 - NODE_OFFSET_SHIFT)) - 1
NODE_MIN_OFFSET = -(1 << (31 - NODE_OFFSET_SHIFT))
LANES = 8  # trees walked together for one row, rows walked together through one tree
BLOCK = 128  # rows per batch block: one tree's slots stay in L1 across the block
PARALLEL_MIN_ROWS = 1024  # below this a thread fork costs more than it saves

# ``prog`` (uint32) of the node layout: a fixed header, then per-tree tables and the groups.
NODE_N_TREES = 0
NODE_N_FEATURES = 1
NODE_N_TARGETS = 2
NODE_N_CHAINS = 3
NODE_NAN_LOW = 4  # 1 when some split reads a NaN-as--inf column (fill that half of ext)
NODE_N_GROUPS = 5
NODE_ROOTS_AT = 6  # offsets in prog of the sections below
NODE_DEPTHS_AT = 7
NODE_TARGETS_AT = 8  # the target each tree's leaves add to
NODE_GROUPS_AT = 9
NODE_CHAINS_AT = 10
NODE_FIN_AT = 11
NODE_HAS_AT = 12
NODE_HEADER = 13
# A group: LANES trees of one row walked together for ``depth`` steps at most.
GROUP_DEPTH = 0
GROUP_ROOTS = 1
GROUP_TREES = 1 + LANES  # where each lane's leaf value goes (n_trees: a padding lane)
GROUP_FIELDS = 1 + 2 * LANES

# ------------------------------------------------------------------ the generic layout
# One int32 row per slot, ORT's modes kept; children side by side as [false, true].
GEN_FEATURE = 0
GEN_MODE = 1
GEN_CHILDREN = 2  # false child's slot; the true child is the next slot
GEN_TRACKS = 3  # splits: missing_value_tracks_true
GEN_FIRST_WEIGHT = 3  # leaves: their weights are wt/wv[GEN_FIRST_WEIGHT:GEN_END_WEIGHT]
GEN_END_WEIGHT = 4
GEN_FIELDS = 5

# ------------------------------------------------------------------ the bitvector layout
# QuickScorer: per extended column, the splits sorted by threshold, each with its tree and the
# leaves it rules out when false (one uint64 mask, or a [lo, hi) leaf range past 64 leaves).
BV_N_TREES = 0
BV_N_FEATURES = 1
BV_N_TARGETS = 2
BV_N_CHAINS = 3
BV_NAN_LOW = 4
BV_WORDS = 5  # 64-bit words per tree's leaf bitvector
BV_N_ACTIVE = 6  # extended columns that some split reads
BV_ACTIVE_AT = 7  # their column ids
BV_STARTS_AT = 8  # n_active + 1 offsets into the sorted splits
BV_TREE_OF_AT = 9  # each sorted split's tree
BV_TARGETS_AT = 10
BV_CHAINS_AT = 11
BV_FIN_AT = 12
BV_HAS_AT = 13
BV_THRESHOLDS_AT = 14  # in consts: each sorted split's threshold
BV_LEAVES_AT = 15  # in consts: leaf values, tree t's at [t * 64 * words, ...)
BV_INIT_AT = 16  # in words: each tree's starting bitvector (its leaves, minus always-false splits)
# The vectorised variant (one-word trees only): VQ_ROWS rows scan each threshold list together,
# trees taken VQ_TREES at a time so the block's bitvectors (16 x 128 x 8 bytes) stay in L1.
BV_VQ_N_BLOCKS = 17  # tree blocks (0: no vectorised variant, trees over 64 leaves)
BV_VQ_BLOCKS_AT = 18  # per tree block: first tree, end tree, first column entry, end column entry
BV_VQ_COLS_AT = 19  # per column entry: its extended column
BV_VQ_STARTS_AT = 20  # per column entry (+1): first split, in the block's split order
BV_VQ_TREE_AT = 21  # per split: its tree within the block
BV_VQ_THR_AT = 22  # in consts: per split, its threshold
BV_VQ_MASK_AT = 23  # in words: per split, the leaves it keeps when false
BV_HEADER = 24
VQ_ROWS = 16
VQ_TREES = 128
VQ_BLOCK_FIELDS = 4

# ------------------------------------------------------------------ the oblivious layout
# Oblivious (symmetric) trees, CatBoost's: every node of one level tests the same extended column
# against the same threshold, so a row's leaf is the integer whose bit k is level k's test
# (``ext[column] <= threshold``, level 0 at the root) and the tree needs no walk: one table lookup.
# Batches hold a block of OB_ROWS rows feature-major (one contiguous run of values per extended
# column some level reads: a "slot"), so each level's test runs across the block's rows in SIMD,
# OB_GROUP levels per pass over the block's leaf indices. A tree's levels are padded to a multiple
# of OB_GROUP with tests that never hold (threshold NaN), which set no bit.
OB_N_TREES = 0
OB_N_FEATURES = 1
OB_N_TARGETS = 2
OB_N_CHAINS = 3
OB_NAN_LOW = 4
OB_N_SLOTS = 5  # extended columns some level reads (sorted: features, NaN-as--inf copies, chains)
OB_SLOTS_AT = 6  # their column ids
OB_TREES_AT = 7  # per tree: OB_TREE_FIELDS fields
OB_LEVEL_COLUMN_AT = 8  # per (padded) level of every tree, in tree order: the extended column it tests
OB_LEVEL_SLOT_AT = 9  # the same levels: the slot holding that column in a block
OB_CHAINS_AT = 10
OB_FIN_AT = 11
OB_HAS_AT = 12
OB_THRESHOLDS_AT = 13  # in consts: per (padded) level, its threshold
OB_LEAVES_AT = 14  # in consts: per tree, n_targets x 2^depth leaf values (target-major)
OB_HEADER = 15
OB_TREE_LEVELS = 0  # the tree's depth padded to a multiple of OB_GROUP
OB_TREE_FIRST_LEVEL = 1
OB_TREE_FIRST_LEAF = 2  # offset of its first leaf value from OB_LEAVES_AT
OB_TREE_LEAVES = 3  # 2^depth: the distance between its targets' leaf tables
OB_TREE_FIELDS = 4
OB_MAX_DEPTH = 16  # CatBoost's own limit; a leaf table of 2^16 x targets values per tree at most
OB_GROUP = 3  # levels tested per pass (CatBoost's default depth 6: two passes, no padding)
OB_ROWS = 256  # rows per block: a slot's run (1 KB), the leaf indices and each target's sums stay in L1
