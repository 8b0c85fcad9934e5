"""scikit-learn forests and linear models, through skl2onnx.

Trees are converted with float32 inputs (a float64 tree graph is one ONNX Runtime refuses,
NOTES.md); skl2onnx then adjusts each threshold so that ``float32(x) <= t`` keeps
scikit-learn's branch. A scaler is accepted in front of a linear model only: in front of
trees, float32 scaling moves rows across split thresholds.
"""

from __future__ import annotations

from typing import Any

import onnx

from ..errors import ConversionError
from ..families import Family
from . import ConvertedGraph, register, type_names
from .graph import OPSETS, conform, finish

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


@register(
    "sklearn",
    accepts=TREES + LINEAR + (PIPELINE + f"({' | '.join(SCALERS)} ..., linear model)",),
    match=lambda obj: _is(obj, TREES + LINEAR + (PIPELINE,)),
)
def convert_sklearn_model(native: Any, family: Family, n_features: int, seq_len: int | None) -> ConvertedGraph:
    return finish(sklearn_graph(native, n_features), ("prediction",), "sklearn", ("skl2onnx", "scikit-learn"))
