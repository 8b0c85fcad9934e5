"""scikit-learn forests and linear models (and Pipelines of scalers in front of a linear model).

Graphs go through skl2onnx. Trees are converted with float32 inputs (a float64 tree graph is
one ONNX Runtime refuses, NOTES.md); skl2onnx then adjusts each threshold so that
``float32(x) <= t`` keeps scikit-learn's branch. A scaler is accepted in front of a linear
model only: in front of trees, float32 scaling moves rows across split thresholds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..converters.graph import OPSETS, conform, finish
from ..errors import ConversionError
from .base import JOBLIB, PICKLES, Adapter, Trained, dump_joblib, type_names

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family

TREES = (
    "sklearn.RandomForestRegressor",
    "sklearn.ExtraTreesRegressor",
    "sklearn.DecisionTreeRegressor",
    "sklearn.ExtraTreeRegressor",
)
LINEAR = (
    "sklearn.Ridge",
    "sklearn.Lasso",
    "sklearn.ElasticNet",
    "sklearn.LinearRegression",
    "sklearn.RidgeCV",
    "sklearn.LassoCV",
    "sklearn.ElasticNetCV",
)
SCALERS = ("sklearn.StandardScaler", "sklearn.MinMaxScaler", "sklearn.RobustScaler", "sklearn.MaxAbsScaler")
PIPELINE = "sklearn.Pipeline"


def _is(obj: Any, names: tuple[str, ...]) -> bool:
    return bool(type_names(obj) & set(names))


def _check_supported(native: Any) -> None:
    if _is(native, (PIPELINE,)):
        steps = [step for _, step in native.steps if step not in (None, "passthrough")]
        if not steps or not _is(steps[-1], LINEAR + TREES):
            raise ConversionError(f"Pipeline must end in one of {', '.join(LINEAR + TREES)}")
        if _is(steps[-1], TREES) and len(steps) > 1:
            raise ConversionError(
                "a Pipeline with a transformer in front of trees is not converted: float32 "
                "scaling moves rows across split thresholds (train the trees unscaled)"
            )
        for step in steps[:-1]:
            if not _is(step, SCALERS):
                raise ConversionError(
                    f"Pipeline step {type(step).__name__} is not supported "
                    f"(supported in front of a linear model: {', '.join(SCALERS)})"
                )


def sklearn_graph(native: Any, n_features: int) -> onnx.ModelProto:
    """A contract graph (K = 1) for a supported scikit-learn regressor."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    _check_supported(native)
    seen = getattr(native, "n_features_in_", n_features)
    if seen != n_features:
        raise ConversionError(f"{type(native).__name__} was fitted on {seen} features, expected {n_features}")
    model = convert_sklearn(
        native, initial_types=[("features", FloatTensorType([None, n_features]))], target_opset=dict(OPSETS)
    )
    return conform(model, n_features, 1)


def _forest(cls_name: str) -> Callable:
    def factory(size, seed: int) -> Any:
        import sklearn.ensemble

        return getattr(sklearn.ensemble, cls_name)(
            n_estimators=max(5, size.trees // 2), max_depth=size.depth + 2, random_state=seed, n_jobs=1
        )

    return factory


def _linear(cls_name: str, **kwargs: Any) -> Callable:
    def factory(size, seed: int) -> Any:
        import sklearn.linear_model

        return getattr(sklearn.linear_model, cls_name)(**kwargs)

    return factory


# The estimator the test writer trains for each family the adapter serves.
_TRAINERS: dict[str, Callable] = {
    "random_forest": _forest("RandomForestRegressor"),
    "extra_trees": _forest("ExtraTreesRegressor"),
    "ridge": _linear("Ridge", alpha=1.0),
    "lasso": _linear("Lasso", alpha=1e-4),
    "elastic_net": _linear("ElasticNet", alpha=1e-4),
    "linear_regression": _linear("LinearRegression"),
}


class SklearnAdapter(Adapter):
    name = "sklearn"
    accepts = (*TREES, *LINEAR, PIPELINE + f"({' | '.join(SCALERS)} ..., linear model)")
    formats = PICKLES
    # Forests: float32 leaves averaged; linear: a float32 dot product against float64 — the
    # error is relative to |coef|·|x|, which exceeds |output| when terms cancel, hence 1e-4.
    tolerance = 1e-4
    libraries = ("skl2onnx", "scikit-learn")

    def handles(self, obj: Any) -> bool:
        return _is(obj, (*TREES, *LINEAR, PIPELINE))

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        return finish(sklearn_graph(model, n_features), ("prediction",), self.converter, self.libraries)

    def train(self, family: Family, X: Any, y: np.ndarray, size, seed: int) -> Trained:
        return JOBLIB, dump_joblib(_TRAINERS[family.name](size, seed).fit(X, y))


SKLEARN = SklearnAdapter()
