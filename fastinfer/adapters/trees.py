"""Tree ensembles as graphs under the converters' tree-graph contract (shared by the tree adapters).

::

    features ─► ai.onnx.ml.TreeEnsembleRegressor(n_targets=K, aggregate SUM|AVERAGE,
                                                  post_transform NONE|LOGISTIC|SOFTMAX)
             ─► optional link tail: ``Exp`` (log link); ``Sigmoid`` (one-column logistic, K = 1);
                ``Sub(1, p)`` then ``Concat([1 - p, p], axis=1)`` (skl2onnx binary forest: K = 1, NONE)
             ─► prediction [N, K] (or [N, 2])

A binary classifier growing one raw score s is K = 2 with SOFTMAX and class 0's score 0:
softmax([0, s]) = [1 - sigmoid(s), sigmoid(s)] (``Objective.binary``). ONNX Runtime applies LOGISTIC
only for K > 1 (K = 1 gets PROBIT alone), so "K = 1 + LOGISTIC" would return raw scores.

``Forest`` builds the node from a library's own dump (LightGBM, XGBoost). Each native split becomes a
small *gadget*: a list of float32 comparisons (``Test``, ``BRANCH_LEQ`` / ``BRANCH_LT`` only) whose exits
are the split's left or right child. A gadget is exact for every float32 input, NaN included:

* a numeric split is one ``x <= w`` / ``x < t`` node (with a few more where a library reads values
  near zero specially, see ``lightgbm_numeric``);
* a categorical split (a set of integer codes) is a chain over the code *intervals* the library
  maps to each code (LightGBM and XGBoost truncate a float to an int), see ``membership``: two nodes
  per run of consecutive codes, so non-integer, negative, huge and NaN inputs route as natively.

A gadget's exits may point at one child from several nodes: the tree is then a DAG. ONNX Runtime
(1.32) lays each node's false child right after it and takes a node reached twice only as a *true*
child, so every gadget is one false path (each test's false exit is the next test, the last one's a
child) and its other exits are true exits. Nodes are listed tree by tree, each tree's root first
(ONNX Runtime takes the first node listed for a tree id as its root).

``from_classifier`` turns the ``TreeEnsembleClassifier`` of skl2onnx / CatBoost into the same form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..converters import INPUT_NAME, OUTPUT_NAME
from ..converters.graph import OPSETS, input_dims
from ..errors import ConversionError

LEQ, LT = "BRANCH_LEQ", "BRANCH_LT"
LEFT, RIGHT = "left", "right"  # a gadget's exits: the native split's two children
ML = "ai.onnx.ml"

# Links after the trees (the contract's tails), by name.
EXP = "exp"  # log link: prediction = exp(score)
SIGMOID = "sigmoid"  # one-column logistic (ONNX Runtime ignores LOGISTIC when K = 1)
BINARY = "binary"  # one probability column p -> [1 - p, p] (skl2onnx's binary forests)

# Integer codes above this are not all distinct in float32 (the graph's input type).
MAX_CATEGORY = (1 << 24) - 1

_NODE_KEYS = (
    "nodes_treeids",
    "nodes_nodeids",
    "nodes_featureids",
    "nodes_modes",
    "nodes_values",
    "nodes_truenodeids",
    "nodes_falsenodeids",
    "nodes_missing_value_tracks_true",
)
_TARGET_KEYS = ("target_treeids", "target_nodeids", "target_ids", "target_weights")


@dataclass(frozen=True)
class Objective:
    """A library objective in contract terms: how the trees' raw scores become its predictions.

    ``n_scores`` (K) score columns from the trees, ``post_transform`` on them (the node's), then
    ``link``; ``scale`` multiplies every leaf value (LightGBM's sigmoid parameter). ``binary``: the
    library grows one raw score s, served as softmax([0, s]) = [1 - p, p] with p = sigmoid(s): K = 2,
    SOFTMAX, the leaves adding to target 1 (ONNX Runtime applies LOGISTIC only when K > 1, so K = 1
    with LOGISTIC would come out as the raw score).
    """

    name: str
    n_scores: int = 1
    post_transform: str = "NONE"
    link: str | None = None
    scale: float = 1.0
    binary: bool = False

    @property
    def width(self) -> int:
        """Columns of the prediction."""
        return 2 if self.link == BINARY else self.n_scores

    @property
    def classifier(self) -> bool:
        """Whether the prediction is one probability per class (binary: [1 - p, p])."""
        return self.binary or self.link == BINARY or self.n_scores > 1

    @property
    def raw_scores(self) -> int:
        """Scores the library grows (one tree each per iteration): 1 for binary, else K."""
        return 1 if self.binary else self.n_scores

    def target(self, score: int) -> int:
        """The target a tree growing raw score ``score`` adds to."""
        return 1 if self.binary else score


def binary_objective(name: str, scale: float = 1.0) -> Objective:
    return Objective(name, 2, "SOFTMAX", scale=scale, binary=True)


def f32_at_most(t: float) -> float:
    """The largest float32 not above ``t`` (float32 max for ``t`` beyond it): for every float32 ``x``,
    ``x <= t`` (in double) is ``x <= f32_at_most(t)``."""
    with np.errstate(over="ignore"):
        w = np.float32(t)
    if float(w) > t:
        w = np.nextafter(w, np.float32(-np.inf))
    return float(w)


@dataclass(frozen=True)
class Test:
    """One float32 comparison of a gadget. ``true`` / ``false``: the index of the next test in the
    gadget, or ``LEFT`` / ``RIGHT`` (the native split's children). ``nan_true``: NaN takes the true
    branch (ONNX's ``nodes_missing_value_tracks_true``); otherwise NaN compares false."""

    feature: int
    mode: str
    threshold: float
    nan_true: bool
    true: int | str
    false: int | str


def single(feature: int, mode: str, threshold: float, nan_left: bool) -> list[Test]:
    """A plain split: ``x <mode> threshold`` goes left."""
    return [Test(feature, mode, threshold, nan_left, LEFT, RIGHT)]


# LightGBM reads |x| <= kZeroThreshold (1e-35f) as 0.0: its row parsers skip such values.
LIGHTGBM_ZERO = float(np.float32(1e-35))


def lightgbm_numeric(feature: int, threshold: float, missing_type: str, default_left: bool) -> list[Test]:
    """LightGBM's ``NumericalDecision`` (``include/LightGBM/tree.h``) for float32 inputs, exactly.

    LightGBM compares ``double(x) <= threshold``; ``|x| <= E`` (E = 1e-35) is read as 0; NaN is 0
    unless ``missing_type`` is ``NaN``; a value read as 0 (``Zero``) or NaN (``NaN``) goes the
    default way. So NaN goes ``nan_left``, the band |x| <= E goes ``zero_left``, any other x goes
    left iff ``x <= w`` (w: the largest float32 not above the threshold). One node when a single
    comparison sends the band its way (every split whose threshold is not within E of 0 and whose
    band agrees with it); else three, one false path: [x <= w → L] [x < -E → R] [x <= E → L | R]
    (band left, w below it) or [x < -E → L] [x <= E → R] [x <= w → L | R] (band right, w above it).
    """
    e = LIGHTGBM_ZERO
    zero_left = default_left if missing_type == "Zero" else threshold >= 0.0
    nan_left = default_left if missing_type == "NaN" else zero_left
    w = f32_at_most(threshold)
    if (zero_left and w >= e) or (not zero_left and w < -e):
        return single(feature, LEQ, w, nan_left)
    if -e <= w < e:  # the band decides alone: below it left, above it right
        return single(feature, LEQ, e, nan_left) if zero_left else single(feature, LT, -e, nan_left)
    if zero_left:  # w < -E
        return [
            Test(feature, LEQ, w, nan_left, LEFT, 1),
            Test(feature, LT, -e, False, RIGHT, 2),
            Test(feature, LEQ, e, False, LEFT, RIGHT),
        ]
    return [  # band right, w >= E
        Test(feature, LT, -e, nan_left, LEFT, 1),
        Test(feature, LEQ, e, False, RIGHT, 2),
        Test(feature, LEQ, w, False, LEFT, RIGHT),
    ]


def category_runs(categories: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted integer codes as runs of consecutive codes: [0, 1, 2, 5] -> [(0, 2), (5, 5)]."""
    runs: list[tuple[int, int]] = []
    for c in sorted(set(int(c) for c in categories)):
        if runs and c == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], c)
        else:
            runs.append((c, c))
    return runs


def membership(
    feature: int,
    categories: Sequence[int],
    *,
    inside: str,
    zero_floor: tuple[str, float],
    nan_inside: bool,
) -> list[Test]:
    """A categorical split as float32 interval tests: ``x`` is in the set when the library's integer
    code for it (``int(x)``, truncation) is; otherwise (and for codes the library refuses) it goes to
    the other side. Code ``c >= 1`` covers [c, c + 1); code 0 covers what ``zero_floor`` does not cut
    off below 0 (LightGBM: ``x <= -1`` is out, so (-1, 1); XGBoost: ``x < 0`` is out, so [0, 1)).

    Per run [a, b] of the set: ``x below a`` → out, else ``x < b + 1`` → in, else the next run; after
    the last run → out. NaN compares false everywhere, so it ends out, unless ``nan_inside``: the
    first run's upper test then takes it in.
    """
    outside = RIGHT if inside == LEFT else LEFT
    runs = category_runs(categories)
    if runs and (runs[0][0] < 0 or runs[-1][1] > MAX_CATEGORY - 1):
        raise ConversionError(
            f"feature {feature}: categorical split on codes outside 0..{MAX_CATEGORY - 1} "
            f"({runs[0][0]}..{runs[-1][1]}): float32 cannot tell such codes apart"
        )
    if not runs:  # nothing in the set: "x <= inf" sends every value out; NaN (false) as asked
        return [Test(feature, LEQ, float("inf"), False, outside, inside if nan_inside else outside)]
    tests: list[Test] = []
    for k, (a, b) in enumerate(runs):
        nxt: int | str = 2 * k + 2 if k + 1 < len(runs) else outside
        mode, value = zero_floor if a == 0 else (LT, float(a))
        tests.append(Test(feature, mode, value, False, outside, 2 * k + 1))
        tests.append(Test(feature, LT, float(b + 1), nan_inside and k == 0, inside, nxt))
    return tests


class Forest:
    """The attributes of one TreeEnsembleRegressor, built tree by tree, node by node.

    ``add(gadget)`` lists a gadget's tests as nodes of the current tree and returns its head node id
    and its open exits; ``connect`` points those exits at the children once they are built.
    """

    def __init__(self, n_targets: int):
        self.n_targets = int(n_targets)
        self.attrs: dict[str, list] = {k: [] for k in (*_NODE_KEYS, *_TARGET_KEYS)}
        self._tree = -1
        self._size = 0

    def new_tree(self) -> None:
        self._tree += 1
        self._size = 0

    @property
    def n_trees(self) -> int:
        return self._tree + 1

    def _node(self, feature: int, mode: str, value: float, nan_true: bool) -> int:
        a, node = self.attrs, self._size
        self._size += 1
        a["nodes_treeids"].append(self._tree)
        a["nodes_nodeids"].append(node)
        a["nodes_featureids"].append(int(feature))
        a["nodes_modes"].append(mode)
        a["nodes_values"].append(float(value))
        a["nodes_truenodeids"].append(0)
        a["nodes_falsenodeids"].append(0)
        a["nodes_missing_value_tracks_true"].append(int(nan_true))
        return len(a["nodes_nodeids"]) - 1  # position in the lists

    def leaf(self, values: Mapping[int, float]) -> int:
        """A leaf adding ``values[target]`` to each target; returns its node id."""
        position = self._node(0, "LEAF", 0.0, False)
        for target, value in values.items():
            self.attrs["target_treeids"].append(self._tree)
            self.attrs["target_nodeids"].append(self.attrs["nodes_nodeids"][position])
            self.attrs["target_ids"].append(int(target))
            self.attrs["target_weights"].append(float(value))
        return self.attrs["nodes_nodeids"][position]

    def add(self, gadget: Sequence[Test]) -> tuple[int, list[tuple[int, str, str]]]:
        """List a gadget; returns (its head node id, exits as (position, "true"/"false", LEFT/RIGHT))."""
        positions = [self._node(t.feature, t.mode, t.threshold, t.nan_true) for t in gadget]
        ids = self.attrs["nodes_nodeids"]
        exits = []
        for t, position in zip(gadget, positions):
            for side, target in (("true", t.true), ("false", t.false)):
                if isinstance(target, int):
                    self._point(position, side, ids[positions[target]])
                else:
                    exits.append((position, side, target))
        return ids[positions[0]], exits

    def connect(self, exits: Sequence[tuple[int, str, str]], children: Mapping[str, int]) -> None:
        for position, side, label in exits:
            self._point(position, side, children[label])

    def _point(self, position: int, side: str, node_id: int) -> None:
        key = "nodes_truenodeids" if side == "true" else "nodes_falsenodeids"
        self.attrs[key][position] = int(node_id)


def tree_graph(
    attrs: Mapping[str, list],
    n_features: int,
    n_targets: int,
    *,
    aggregate: str = "SUM",
    post_transform: str = "NONE",
    base_values: Sequence[float] | None = None,
    link: str | None = None,
    name: str = "trees",
) -> onnx.ModelProto:
    """The contract graph around one TreeEnsembleRegressor with ``attrs`` (``Forest.attrs`` or a
    converted classifier's), then the ``link`` tail (None, ``EXP`` or ``BINARY``)."""
    if link in (BINARY, SIGMOID) and n_targets != 1:
        raise ConversionError(f"a {link} tail reads one score column, not {n_targets}")
    kwargs = {k: list(v) for k, v in attrs.items() if k.startswith(("nodes_", "target_")) and len(v)}
    if base_values is not None:
        kwargs["base_values"] = [float(v) for v in base_values]
    scores = "scores" if link else OUTPUT_NAME
    nodes = [
        helper.make_node(
            "TreeEnsembleRegressor",
            [INPUT_NAME],
            [scores],
            domain=ML,
            name=name,
            n_targets=int(n_targets),
            aggregate_function=aggregate,
            post_transform=post_transform,
            **kwargs,
        )
    ]
    initializers = []
    width = n_targets
    if link == EXP:
        nodes.append(helper.make_node("Exp", [scores], [OUTPUT_NAME], name="log_link"))
    elif link == SIGMOID:
        nodes.append(helper.make_node("Sigmoid", [scores], [OUTPUT_NAME], name="logistic_link"))
    elif link == BINARY:
        initializers.append(numpy_helper.from_array(np.ones(1, dtype=np.float32), "one"))
        nodes.append(helper.make_node("Sub", ["one", scores], ["complement"], name="class_0"))
        nodes.append(helper.make_node("Concat", ["complement", scores], [OUTPUT_NAME], axis=1, name="classes"))
        width = 2
    elif link is not None:
        raise ValueError(f"unknown link {link!r}")
    return rows_graph(nodes, name, n_features, width, initializers)


def rows_graph(nodes: list, name: str, n_features: int, width: int, initializers: list) -> onnx.ModelProto:
    """The model of ``nodes``: (N, n_features) float rows in, (N, width) out, fastinfer's opsets."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, input_dims(n_features, None))],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", width])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(OPSETS.items())])
    model.ir_version = 8
    return model


def exported_trees(model: onnx.ModelProto) -> tuple[dict[str, list], Objective, list[float] | None, str]:
    """The one tree-ensemble node of a graph skl2onnx or CatBoost exported, as regressor attributes:
    (attrs, objective in contract terms, base_values, aggregate).

    A TreeEnsembleRegressor is taken as it is. A TreeEnsembleClassifier's class weights become target
    weights (``class_*`` → ``target_*``): skl2onnx's binary forests put P(class 1) under class id 0
    alone (ONNX Runtime's "binary case"), which becomes one score column and the ``BINARY`` tail;
    CatBoost's Logloss scores class 1 with the margin s and class 0 with -s under LOGISTIC, i.e.
    [sigmoid(-s), sigmoid(s)] = [1 - p, p], kept as K = 2; K > 2 classes keep their ids as targets
    and the post-transform (SOFTMAX for CatBoost MultiClass, NONE for forests' averaged probabilities).
    """
    nodes = [n for n in model.graph.node if n.op_type in ("TreeEnsembleRegressor", "TreeEnsembleClassifier")]
    if len(nodes) != 1:
        raise ConversionError(f"expected one tree ensemble node, found {len(nodes)}")
    a = {x.name: helper.get_attribute_value(x) for x in nodes[0].attribute}
    if any(k.endswith("_as_tensor") for k in a):
        raise ConversionError("tree ensembles with *_as_tensor attributes are not converted")
    post = a.get("post_transform", b"NONE")
    post = post.decode() if isinstance(post, bytes) else str(post)
    aggregate = a.get("aggregate_function", b"SUM")
    aggregate = aggregate.decode() if isinstance(aggregate, bytes) else str(aggregate)
    base = [float(v) for v in a["base_values"]] if a.get("base_values") else None
    attrs = {key: list(a.get(key, [])) for key in _NODE_KEYS}
    attrs["nodes_modes"] = [m.decode() if isinstance(m, bytes) else m for m in attrs["nodes_modes"]]
    if nodes[0].op_type == "TreeEnsembleRegressor":
        for key in _TARGET_KEYS:
            attrs[key] = list(a[key])
        return attrs, Objective("regression", int(a.get("n_targets", 1)), post), base, aggregate
    labels = a.get("classlabels_int64s") or a.get("classlabels_strings") or []
    ids = np.asarray(a["class_ids"], dtype=np.int64)
    used = sorted(set(ids.tolist()))
    for key in _TARGET_KEYS:
        attrs[key] = list(a["class" + key[len("target") :]])
    if base is not None and len(base) not in (1, len(used)):
        raise ConversionError(f"classifier with {len(base)} base_values for class ids {used[:5]} is not converted")
    if len(labels) == 2 and used == [0] and post == "LOGISTIC":
        # scikit-learn's boosted binary classifiers: one raw score s (from the baseline) under class
        # id 0, which ONNX Runtime's binary case turns into [sigmoid(-s), sigmoid(s)]; served as the
        # tree libraries' binary objective, softmax([0, s]) = [1 - p, p], the score as target 1.
        objective = binary_objective("binary")
        attrs["target_ids"] = [1] * len(ids)
        base = [0.0, base[0] if base else 0.0]
    elif base is not None and post == "NONE":
        raise ConversionError("classifier graphs with base_values and no post-transform are not converted")
    elif len(labels) == 2 and used == [0] and post == "NONE":
        objective = Objective("binary", 1, "NONE", link=BINARY)
    elif len(labels) == 2 and used == [0, 1] and post == "LOGISTIC":
        objective = Objective("binary", 2, "LOGISTIC")
    elif len(labels) > 2 and used == list(range(len(labels))) and post in ("NONE", "SOFTMAX"):
        objective = Objective("multiclass", len(labels), post)
    else:
        raise ConversionError(
            f"classifier with {len(labels)} classes, class ids {used[:5]} and {post} is not converted"
        )
    return attrs, objective, base, aggregate
