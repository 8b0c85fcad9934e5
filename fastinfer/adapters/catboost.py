"""CatBoost: ``model.cbm`` (and pickled CatBoost models: regressors, classifiers, any loss).

Files are opened from their verified bytes (``CatBoost.load_model(blob=...)``) as the generic
``catboost.CatBoost``; ``predict`` names the prediction type each loss serves natively: class
probabilities for Logloss / CrossEntropy / MultiClass (``p_<label>``, binary [1 - p, p]),
``Exponent`` for Poisson / Tweedie, the raw formula value otherwise.

Categorical features: the model gets them as CatBoost wants them, integer codes (a float column of
codes ``3.0`` is passed as ``"3"``, the text CatBoost reads an int category as; NaN as ``"nan"``, a
category the model has not seen unless it was trained with it); a non-integer value in a categorical
column is refused.
CatBoost exports no ONNX graph for such models, so they stay native with that reason.

Graphs come from CatBoost's own ONNX export; its tree ensemble is rebuilt in the contract form
(``trees.exported_trees``): regressors as they are (an ``Exp`` tail for Poisson / Tweedie), Logloss
as K = 2 with LOGISTIC on [-s, s] (= [1 - p, p]), MultiClass as K with SOFTMAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..converters.graph import finish
from ..errors import ConversionError, MalformedFile
from .base import (
    BINARY,
    CATBOOST_CBM,
    MULTICLASS,
    PICKLES,
    REGRESSION,
    Adapter,
    FileFormat,
    Trained,
    as_output,
    class_columns,
    generic_names,
    memo,
    task_of,
)
from .trees import EXP, exported_trees, tree_graph

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family


def _check(data: bytes) -> str | None:
    """Why the bytes cannot be a whole .cbm file, or None. The file is b"CBM1", the model core's
    size (uint32, little-endian), the core, then optional parts (categorical statistics): a file cut
    inside its core made CatBoost's loader read past the end (a crash, now and then)."""
    if len(data) < 8 or data[:4] != b"CBM1":
        return "not a CatBoost model file (no CBM1 header)"
    core = int.from_bytes(data[4:8], "little")
    if 8 + core > len(data):
        return f"truncated: the model core is {core} bytes, the file holds {len(data) - 8} after its header"
    return None


def _load(data: bytes) -> Any:
    """The model of bytes `_check` accepts (verified ones too: a truncated core is not CatBoost's to read)."""
    import catboost

    problem = _check(data)
    if problem:
        raise MalformedFile(f"malformed CatBoost model ({problem})")
    model = catboost.CatBoost()
    model.load_model(blob=data)
    return model


# CatBoost's binary parser was not fuzzed: structure-checked, and probed when unverified, to be safe.
CBM = FileFormat(CATBOOST_CBM, _load, check=_check, crash_probe=True)

_CLASSIFIER_LOSSES = ("Logloss", "CrossEntropy", "MultiClass")
# One independent probability per label / class (sigmoid of each raw score): CatBoost's predict_proba.
_MULTI_LABEL_LOSSES = ("MultiLogloss", "MultiCrossEntropy", "MultiClassOneVsAll")
_EXP_LOSSES = ("Poisson", "Tweedie")
_MULTI_OUTPUT_LOSSES = ("MultiQuantile", "MultiRMSE", *_MULTI_LABEL_LOSSES)


def _described(model: Any) -> tuple[str, tuple[int, ...]]:
    """(loss function name without parameters, categorical column indices), read once per model."""

    def read(m: Any) -> tuple[str, tuple[int, ...]]:
        loss = str(m.get_all_params().get("loss_function", "RMSE")).split(":")[0]
        return loss, tuple(int(i) for i in m.get_cat_feature_indices())

    return memo(model, "catboost.description", read)


def _prediction_type(loss: str) -> str:
    if loss in _CLASSIFIER_LOSSES or loss in _MULTI_LABEL_LOSSES:
        return "Probability"
    return "Exponent" if loss in _EXP_LOSSES else "RawFormulaVal"


def _rows(X: np.ndarray, categorical: tuple[int, ...]) -> Any:
    """The rows as CatBoost takes them: categorical columns as the integer codes' text, which is how
    CatBoost reads an int category (and no code is too large for it), NaN as ``"nan"``."""
    if not categorical:
        return X
    import catboost

    data = np.asarray(X, dtype=object)
    for c in categorical:
        column = np.asarray(X[:, c], dtype=np.float64)
        finite = np.isfinite(column)
        bad = finite & (column != np.round(column))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = float(column[row])
            raise ValueError(
                f"categorical column {c} holds {value!r} (row {row}): categorical columns carry integer codes"
            )
        data[:, c] = [str(int(v)) if ok else "nan" for v, ok in zip(column.tolist(), finite.tolist())]
    return catboost.Pool(data, cat_features=list(categorical))


class CatBoostAdapter(Adapter):
    name = "catboost"
    accepts = ("catboost.CatBoostRegressor", "catboost.CatBoostClassifier", "catboost.CatBoost")
    formats = (CBM, *PICKLES)
    tasks = (REGRESSION, BINARY, MULTICLASS)
    reads_categories = True
    # float32 borders like CatBoost itself; leaf sums in float32 (CatBoost: double), then the link
    # (exp, sigmoid, softmax), each within the raw score's error relative to the column's scale.
    tolerance = 1e-4
    libraries = ("catboost",)

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        loss, categorical = _described(model)
        return as_output(model.predict(_rows(X, categorical), prediction_type=_prediction_type(loss)))

    def feature_names(self, model: Any) -> list[str] | None:
        names = model.feature_names_
        names = None if names is None else [str(n) for n in names]
        return None if names is None or generic_names(names) else names

    def output_columns(self, model: Any) -> tuple[str, ...]:
        loss, _ = _described(model)
        if loss in _CLASSIFIER_LOSSES or loss in _MULTI_LABEL_LOSSES:
            return class_columns(model.classes_)
        if loss.startswith(_MULTI_OUTPUT_LOSSES):  # CatBoost names no output count: one row tells

            def width(m: Any) -> int:
                row = np.zeros((1, len(m.feature_names_)))
                return int(np.asarray(self.predict(m, row)).reshape(1, -1).shape[1])

            return tuple(f"prediction_{k}" for k in range(memo(model, "catboost.width", width)))
        return ("prediction",)

    def categorical_features(self, model: Any) -> dict[int, tuple[int, ...]]:
        """Categorical columns; the codes CatBoost saw are hashed in the model, so none are listed."""
        return {c: () for c in _described(model)[1]}

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        from catboost.utils import convert_to_onnx_object

        loss, categorical = _described(model)
        if categorical:
            raise ConversionError(
                f"CatBoost cannot export models with categorical features to ONNX (columns {list(categorical)}): "
                "served natively"
            )
        if loss.startswith(_MULTI_OUTPUT_LOSSES):
            raise ConversionError(
                f"CatBoost loss {loss!r} is not supported (multi-output; train one model per quantile or target)"
            )
        if model.feature_names_ is not None and len(model.feature_names_) != n_features:
            raise ConversionError(f"CatBoost model has {len(model.feature_names_)} features, expected {n_features}")
        attrs, objective, base, aggregate = exported_trees(convert_to_onnx_object(model))
        if loss in _CLASSIFIER_LOSSES and objective.name == "regression":
            raise ConversionError(f"CatBoost exported a regressor graph for the classifier loss {loss!r}")
        graph = tree_graph(
            attrs,
            n_features,
            objective.n_scores,
            aggregate=aggregate,
            post_transform=objective.post_transform,
            base_values=base,
            link=EXP if loss in _EXP_LOSSES else objective.link,
            name="catboost",
        )
        return finish(graph, self.output_columns(model), self.converter, self.libraries)

    def train(self, family: Family, X: Any, y: np.ndarray, size, seed: int) -> Trained:
        import catboost

        categorical = [i for i, t in enumerate(getattr(X, "dtypes", [])) if str(t) == "category"]
        if categorical:  # CatBoost takes categorical values as ints or strings
            X = X.copy()
            for i in categorical:
                X.isetitem(i, X.iloc[:, i].astype(int))
        estimator = catboost.CatBoostRegressor if task_of(y) == REGRESSION else catboost.CatBoostClassifier
        model = estimator(
            iterations=size.trees,
            depth=size.depth,
            random_seed=seed,
            verbose=0,
            thread_count=1,
            allow_writing_files=False,
            cat_features=categorical or None,
        ).fit(X, y)
        return CATBOOST_CBM, lambda p: model.save_model(str(p), format="cbm")


CATBOOST = CatBoostAdapter()
