"""scikit-learn VotingRegressor (weighted average) and StackingRegressor (meta-learner).

Each fitted base estimator is converted through the registry (whatever converter takes
its type: LightGBM, XGBoost, CatBoost, scikit-learn, ...), prefixed, and run on the one
shared input; their [N, 1] outputs are concatenated. Voting then applies
``np.average(..., weights)`` as a MatMul; stacking feeds the concatenation (plus the
features when ``passthrough``) to the final estimator, converted through the registry too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..errors import ConversionError
from ..families import FAMILIES, Family
from . import INPUT_NAME, OUTPUT_NAME, ConvertedGraph, convert, converter_for, register
from .graph import OPSETS, chain, concat_columns, finish, input_dims, weighted_sum

_KEY = "ensemble"


def _member_family(key: str) -> Family:
    return next(f for f in FAMILIES if f.converter == key and f.input_rank == 2)


def member_graph(estimator: Any, n_features: int, role: str) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Convert one fitted member through the registry; a member must give one column."""
    key = converter_for(estimator)
    if key is None:
        raise ConversionError(f"{role} {type(estimator).__module__}.{type(estimator).__qualname__} has no converter")
    graph = convert(estimator, _member_family(key), n_features)
    if graph.n_outputs != 1:
        raise ConversionError(f"{role} {type(estimator).__name__} gives {graph.n_outputs} columns, not 1")
    return graph.model, graph.versions


def _identity(n_features: int) -> onnx.ModelProto:
    """``prediction = features`` ([N, F]): the passthrough columns of a stacker."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME], name="passthrough")],
        "passthrough",
        [helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, input_dims(n_features, None))],
        [helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["N", n_features])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS.items()])
    model.ir_version = 8
    return model


def _members(native: Any, n_features: int) -> tuple[onnx.ModelProto, dict[str, str], int]:
    estimators = [e for e in native.estimators_ if not (isinstance(e, str) and e == "drop")]
    if not estimators:
        raise ConversionError(f"{type(native).__name__} has no fitted estimators")
    graphs, libs = [], {}
    for i, est in enumerate(estimators):
        g, v = member_graph(est, n_features, f"member {i}")
        graphs.append(g)
        libs.update(v)
    merged = concat_columns(graphs, [1] * len(graphs), [f"m{i}_" for i in range(len(graphs))], name="members")
    return merged, libs, len(graphs)


def _voting(native: Any, n_features: int) -> tuple[onnx.ModelProto, dict[str, str]]:
    merged, libs, m = _members(native, n_features)
    weights = native._weights_not_none  # the weights np.average gets in VotingRegressor.predict
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or not np.isfinite(w).all() or w.sum() == 0:
        raise ConversionError(f"VotingRegressor weights {weights} do not fit its {m} estimators")
    return weighted_sum(merged, w / w.sum(), 0.0, name="vote"), libs


def _stacking(native: Any, n_features: int) -> tuple[onnx.ModelProto, dict[str, str]]:
    methods = [m for m in native.stack_method_ if m != "drop"]
    if any(m != "predict" for m in methods):
        raise ConversionError(f"StackingRegressor stack methods {methods} are not supported (predict only)")
    merged, libs, m = _members(native, n_features)
    width = m
    if native.passthrough:
        merged = concat_columns(
            [merged, _identity(n_features)], [m, n_features], ["base_", "pass_"], name="stack_input"
        )
        width += n_features
    final, final_libs = member_graph(native.final_estimator_, width, "final estimator")
    libs.update(final_libs)
    return chain(merged, final, 1, ("stack_", "final_"), name="stacking"), libs


@register(_KEY, accepts=("sklearn.VotingRegressor", "sklearn.StackingRegressor"))
def convert_ensemble(native: Any, family: Family, n_features: int, seq_len: int | None) -> ConvertedGraph:
    names = {f"{c.__module__.split('.')[0]}.{c.__name__}" for c in type(native).__mro__}
    if "sklearn.StackingRegressor" in names:
        model, libs = _stacking(native, n_features)
    else:
        model, libs = _voting(native, n_features)
    converted = finish(model, ("prediction",), _KEY, ("scikit-learn",))
    converted.versions = {**libs, **converted.versions}
    return converted
