"""XGBoost: ``model.json`` / ``model.ubj`` (and pickled XGBRegressor / Booster).

Files are opened from their verified bytes (``XGBRegressor.load_model(bytearray)``, which reads
JSON and UBJ alike). Graphs go through onnxmltools on a copy of the booster trimmed as
``predict`` trims it and with its features renamed f0..fN (onnxmltools needs that pattern).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..converters.graph import ONNXMLTOOLS_OPSET, conform, finish, onnxmltools_input
from ..errors import ConversionError
from .base import PICKLES, XGBOOST_JSON, XGBOOST_UBJ, Adapter, FileFormat, Trained, as_output, generic_names

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family


def _load(data: bytes) -> Any:
    import xgboost

    if len(data) < 2:  # XGBoost aborts the process on an empty buffer (its file reader checks this)
        raise ValueError(f"not an XGBoost model ({len(data)} bytes)")
    model = xgboost.XGBRegressor()
    model.load_model(bytearray(data))
    return model


# XGBoost's JSON and UBJ parsers crash on some damaged files (fuzzing: a negative node index).
JSON = FileFormat(XGBOOST_JSON, _load, crash_probe=True)
UBJ = FileFormat(XGBOOST_UBJ, _load, crash_probe=True)


def _booster(model: Any) -> Any:
    return model.get_booster() if hasattr(model, "get_booster") else model


def _trimmed_booster(native: Any) -> Any:
    """A copy of the booster trimmed as ``predict`` trims it, with features renamed f0..fN."""
    booster = _booster(native)
    try:  # XGBModel.predict uses best_iteration when the model was early-stopped
        best = native.best_iteration if hasattr(native, "get_booster") else None
    except AttributeError:
        best = None
    booster = booster[: best + 1] if best is not None else booster.copy()
    # Trained on a named DataFrame: onnxmltools needs the f%d pattern (NOTES.md).
    booster.feature_names = None
    booster.feature_types = None
    return booster


def xgboost_graph(native: Any, n_features: int) -> onnx.ModelProto:
    from onnxmltools import convert_xgboost

    booster = _trimmed_booster(native)
    if booster.num_features() != n_features:
        raise ConversionError(f"XGBoost model has {booster.num_features()} features, expected {n_features}")
    model = convert_xgboost(booster, initial_types=onnxmltools_input(n_features), target_opset=ONNXMLTOOLS_OPSET)
    return conform(model, n_features, 1)


def objective(native: Any) -> str | None:
    """The learner's objective name (``reg:squarederror``, ``binary:logistic``, ...), where recorded."""
    try:
        return json.loads(_booster(native).save_config())["learner"]["objective"]["name"]
    except (KeyError, ValueError):
        return None


IDENTITY_OBJECTIVES = ("reg:squarederror", "reg:absoluteerror", "reg:pseudohuber", "reg:quantileerror")


class XGBoostAdapter(Adapter):
    name = "xgboost"
    accepts = ("xgboost.XGBRegressor", "xgboost.Booster")
    formats = (JSON, UBJ, *PICKLES)
    tolerance = 1e-4  # XGBoost itself is float32 throughout; only summation order differs
    libraries = ("onnxmltools", "xgboost")

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        if hasattr(model, "get_booster"):
            return super().predict(model, X)
        import xgboost

        return as_output(model.predict(xgboost.DMatrix(X, feature_names=model.feature_names)))

    def feature_names(self, model: Any) -> list[str] | None:
        names = _booster(model).feature_names
        names = None if names is None else [str(n) for n in names]
        return None if names is None or generic_names(names) else names

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        name = objective(model)
        if name is not None and not name.startswith(IDENTITY_OBJECTIVES):
            raise ConversionError(
                f"XGBoost objective {name!r} is not supported (identity-link regression objectives only)"
            )
        return finish(xgboost_graph(model, n_features), ("prediction",), self.converter, self.libraries)

    def train(self, family: Family, X: Any, y: np.ndarray, size, seed: int) -> Trained:
        import xgboost

        model = xgboost.XGBRegressor(
            n_estimators=size.trees, max_depth=size.depth, learning_rate=0.1, random_state=seed, n_jobs=1
        ).fit(X, y)
        return XGBOOST_JSON, lambda p: model.save_model(str(p))


XGBOOST = XGBoostAdapter()
