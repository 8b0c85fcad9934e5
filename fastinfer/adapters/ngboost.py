"""NGBoost (NGBRegressor, Normal): no converter library exists, so the graph is built here.

``NGBRegressor.pred_param`` computes, for the two Normal parameters p = (loc, log scale)::

    p = init_params - learning_rate * sum_i scalings[i] * [tree_ij.predict(X[:, col_idxs[i]]) for j]

Every base learner is a scikit-learn ``DecisionTreeRegressor``, so the whole sum is one
ai.onnx.ml ``TreeEnsembleRegressor`` with two targets: tree ij adds its leaf values times
``-learning_rate * scalings[i]`` to target j, its split features are mapped back through
``col_idxs[i]`` (column subsampling), and ``base_values`` are ``init_params``. Then
``prediction = [p0, exp(p1)]`` as ``pred_dist(X).params`` gives ``loc`` and ``scale``.

Splits reproduce scikit-learn exactly: it compares ``float32(x) <= t`` with a float64
``t``, which for every float32 ``x`` is ``x <= w`` with ``w`` the largest float32 not above
``t``; NaN goes where ``missing_go_to_left`` says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..converters import INPUT_NAME, OUTPUT_NAME
from ..converters.graph import OPSETS, finish, input_dims
from ..errors import ConversionError
from .base import JOBLIB, PICKLES, Adapter, Trained, dump_joblib, type_names

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family

_LEAF = -1  # scikit-learn's TREE_LEAF


def float32_floor(t: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 threshold."""
    w = t.astype(np.float32)
    up = w.astype(np.float64) > t
    w[up] = np.nextafter(w[up], np.float32(-np.inf))
    return w


def _add_tree(attrs: dict[str, list], tree_id: int, tree: Any, columns: np.ndarray, target: int, coef: float) -> None:
    t = tree.tree_
    n = t.node_count
    is_leaf = t.children_left == _LEAF
    thresholds = float32_floor(t.threshold)
    missing_left = getattr(t, "missing_go_to_left", np.zeros(n, dtype=np.uint8))
    for node in range(n):
        attrs["nodes_treeids"].append(tree_id)
        attrs["nodes_nodeids"].append(node)
        if is_leaf[node]:
            attrs["nodes_modes"].append("LEAF")
            attrs["nodes_featureids"].append(0)
            attrs["nodes_values"].append(0.0)
            attrs["nodes_truenodeids"].append(0)
            attrs["nodes_falsenodeids"].append(0)
            attrs["nodes_missing_value_tracks_true"].append(0)
            attrs["target_treeids"].append(tree_id)
            attrs["target_nodeids"].append(node)
            attrs["target_ids"].append(target)
            attrs["target_weights"].append(float(coef * t.value[node].ravel()[0]))
        else:
            attrs["nodes_modes"].append("BRANCH_LEQ")
            attrs["nodes_featureids"].append(int(columns[t.feature[node]]))
            attrs["nodes_values"].append(float(thresholds[node]))
            attrs["nodes_truenodeids"].append(int(t.children_left[node]))
            attrs["nodes_falsenodeids"].append(int(t.children_right[node]))
            attrs["nodes_missing_value_tracks_true"].append(int(missing_left[node]))


def _check(native: Any, n_features: int) -> None:
    if getattr(native, "Dist", None) is None or native.Dist.__name__ != "Normal":
        dist = getattr(getattr(native, "Dist", None), "__name__", None)
        raise ConversionError(f"only the Normal distribution is supported, got {dist}")
    if not native.base_models:
        raise ConversionError("NGBRegressor is not fitted (no base models)")
    if not (len(native.base_models) == len(native.scalings) == len(native.col_idxs)):
        raise ConversionError("NGBRegressor base_models, scalings and col_idxs differ in length")
    for models in native.base_models:
        for m in models:
            if not type_names(m) & {"sklearn.DecisionTreeRegressor", "sklearn.ExtraTreeRegressor"}:
                raise ConversionError(
                    f"NGBoost base learner {type(m).__name__} is not supported (DecisionTreeRegressor only)"
                )
    if native.init_params is None or len(native.init_params) != 2:
        raise ConversionError("NGBRegressor (Normal) must have two fitted init_params")
    used = max((int(np.max(c)) for c in native.col_idxs if len(c)), default=-1)
    if used >= n_features:
        raise ConversionError(f"NGBRegressor uses feature {used}, but n_features is {n_features}")


def ngboost_graph(native: Any, n_features: int) -> onnx.ModelProto:
    _check(native, n_features)
    keys = (
        "nodes_treeids",
        "nodes_nodeids",
        "nodes_modes",
        "nodes_featureids",
        "nodes_values",
        "nodes_truenodeids",
        "nodes_falsenodeids",
        "nodes_missing_value_tracks_true",
        "target_treeids",
        "target_nodeids",
        "target_ids",
        "target_weights",
    )
    attrs: dict[str, list] = {k: [] for k in keys}
    tree_id = 0
    for models, scaling, cols in zip(native.base_models, native.scalings, native.col_idxs):
        coef = -float(native.learning_rate) * float(scaling)
        for target, tree in enumerate(models):
            _add_tree(attrs, tree_id, tree, np.asarray(cols, dtype=np.int64), target, coef)
            tree_id += 1
    base = [float(v) for v in np.asarray(native.init_params, dtype=np.float64)]
    nodes = [
        helper.make_node(
            "TreeEnsembleRegressor",
            [INPUT_NAME],
            ["params"],
            domain="ai.onnx.ml",
            name="ngboost_trees",
            n_targets=2,
            aggregate_function="SUM",
            post_transform="NONE",
            base_values=base,
            **attrs,
        ),
        helper.make_node("Slice", ["params", "c0", "c1", "axis1"], ["loc"], name="ngboost_loc"),
        helper.make_node("Slice", ["params", "c1", "c2", "axis1"], ["log_scale"], name="ngboost_log_scale"),
        helper.make_node("Exp", ["log_scale"], ["scale"], name="ngboost_exp"),
        helper.make_node("Concat", ["loc", "scale"], [OUTPUT_NAME], axis=1, name="ngboost_concat"),
    ]
    inits = [
        numpy_helper.from_array(np.array([v], dtype=np.int64), name)
        for name, v in (("c0", 0), ("c1", 1), ("c2", 2), ("axis1", 1))
    ]
    graph = helper.make_graph(
        nodes,
        "ngboost",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, input_dims(n_features, None))],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS.items()])
    model.ir_version = 8
    return model


class NGBoostAdapter(Adapter):
    name = "ngboost"
    accepts = ("ngboost.NGBRegressor",)
    formats = PICKLES
    # Two-target float32 tree sum for (loc, log scale); exp turns the absolute error of
    # log scale into a relative error of scale of the same size.
    tolerance = 1e-4
    libraries = ("ngboost", "scikit-learn")

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        params = model.pred_dist(X).params
        return np.column_stack([params["loc"], params["scale"]]).astype(np.float64)

    def output_columns(self, model: Any) -> tuple[str, ...]:
        return ("loc", "scale")

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        return finish(ngboost_graph(model, n_features), ("loc", "scale"), self.converter, self.libraries)

    def train(self, family: Family, X: Any, y: np.ndarray, size, seed: int) -> Trained:
        from ngboost import NGBRegressor

        model = NGBRegressor(n_estimators=size.trees, learning_rate=0.05, verbose=False, random_state=seed)
        return JOBLIB, dump_joblib(model.fit(np.asarray(X, dtype=np.float64), np.asarray(y)))


NGBOOST = NGBoostAdapter()
