"""scikit-learn VotingRegressor (weighted average) and StackingRegressor (meta-learner).

Each fitted base estimator is converted by the adapter that takes its type (LightGBM, XGBoost,
CatBoost, scikit-learn, ...), prefixed, and run on the one shared input; their [N, 1] outputs
are concatenated. Voting then applies ``np.average(..., weights)`` as a MatMul; stacking feeds
the concatenation (plus the features when ``passthrough``) to the final estimator, converted
by its adapter too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from ..converters import INPUT_NAME, OUTPUT_NAME
from ..converters.graph import OPSETS, chain, concat_columns, finish, input_dims, weighted_sum
from ..errors import ConversionError
from .base import JOBLIB, PICKLES, Adapter, Trained, dump_joblib, type_names

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family


def member_graph(estimator: Any, n_features: int, role: str) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Convert one fitted member by the adapter that takes it; a member must give one column."""
    from . import adapter_for

    adapter = adapter_for(estimator)
    if adapter is None or adapter is ENSEMBLE:
        raise ConversionError(f"{role} {type(estimator).__module__}.{type(estimator).__qualname__} has no converter")
    graph = adapter.convert(estimator, None, n_features, None)
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


def _base_estimators(size, seed: int) -> list:
    import lightgbm
    from sklearn.ensemble import ExtraTreesRegressor
    from sklearn.linear_model import Ridge

    from .lightgbm import _params

    return [
        ("lightgbm", lightgbm.LGBMRegressor(**_params(size, seed))),
        ("ridge", Ridge(alpha=1.0)),
        (
            "extra_trees",
            ExtraTreesRegressor(n_estimators=10, max_depth=size.depth + 2, random_state=seed, n_jobs=1),
        ),
    ]


class EnsembleAdapter(Adapter):
    name = "ensemble"
    accepts = ("sklearn.VotingRegressor", "sklearn.StackingRegressor")
    formats = PICKLES
    # Members' float32 errors, weighted; a stacker's linear layer can amplify by |coef|.
    tolerance = 2e-4
    libraries = ("scikit-learn",)

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        if "sklearn.StackingRegressor" in type_names(model):
            merged, libs = _stacking(model, n_features)
        else:
            merged, libs = _voting(model, n_features)
        converted = finish(merged, ("prediction",), self.converter, self.libraries)
        converted.versions = {**libs, **converted.versions}
        return converted

    def train(self, family: Family, X: Any, y: np.ndarray, size, seed: int) -> Trained:
        from sklearn.ensemble import StackingRegressor, VotingRegressor
        from sklearn.linear_model import Ridge

        if family.name == "meta_learning":  # the stacked meta-learner; "ensemble" is the weighted vote
            model = StackingRegressor(_base_estimators(size, seed), final_estimator=Ridge(alpha=1.0), cv=3)
        else:
            model = VotingRegressor(_base_estimators(size, seed), weights=[0.5, 0.3, 0.2])
        return JOBLIB, dump_joblib(model.fit(X, y))


ENSEMBLE = EnsembleAdapter()
