"""CatBoost: ``model.cbm`` (and pickled CatBoost models).

Files are opened from their verified bytes (``load_model(blob=...)``). Graphs come from
CatBoost's own ONNX export; its output is declared (N) but returned (N, 1) (NOTES.md), which
``conform`` reshapes to the contract's [N, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..converters.graph import conform, finish
from ..errors import ConversionError
from .base import CATBOOST_CBM, PICKLES, Adapter, FileFormat, Trained, generic_names

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family


def _load(data: bytes) -> Any:
    import catboost

    model = catboost.CatBoostRegressor()
    model.load_model(blob=data)
    return model


# CatBoost's binary parser was not fuzzed: probed when unverified, to be safe.
CBM = FileFormat(CATBOOST_CBM, _load, crash_probe=True)


def catboost_graph(native: Any, n_features: int) -> onnx.ModelProto:
    from catboost.utils import convert_to_onnx_object

    if native.get_cat_feature_indices():
        raise ConversionError("CatBoost models with categorical features have no ONNX export here")
    model = convert_to_onnx_object(native)
    return conform(model, n_features, 1, output="predictions")


class CatBoostAdapter(Adapter):
    name = "catboost"
    accepts = ("catboost.CatBoostRegressor", "catboost.CatBoost")
    formats = (CBM, *PICKLES)
    tolerance = 1e-4  # float32 borders like CatBoost itself; float32 leaf sums
    libraries = ("catboost",)

    def feature_names(self, model: Any) -> list[str] | None:
        names = model.feature_names_
        names = None if names is None else [str(n) for n in names]
        return None if names is None or generic_names(names) else names

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        loss = str(model.get_all_params().get("loss_function", "RMSE"))
        if loss.startswith(("MultiQuantile", "MultiRMSE", "Logloss", "CrossEntropy", "MultiClass")):
            raise ConversionError(
                f"CatBoost loss {loss!r} is not supported (single-output regression only; train one model per quantile)"
            )
        return finish(catboost_graph(model, n_features), ("prediction",), self.converter, self.libraries)

    def train(self, family: Family, X: Any, y: np.ndarray, size, seed: int) -> Trained:
        import catboost

        model = catboost.CatBoostRegressor(
            iterations=size.trees,
            depth=size.depth,
            random_seed=seed,
            verbose=0,
            thread_count=1,
            allow_writing_files=False,
        ).fit(X, y)
        return CATBOOST_CBM, lambda p: model.save_model(str(p), format="cbm")


CATBOOST = CatBoostAdapter()
