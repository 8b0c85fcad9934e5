"""scikit-learn forests, gradient-boosted trees (GradientBoosting*, HistGradientBoosting*) and
linear models (generalised ones included; Pipelines of scalers in front of a linear model),
regressors and classifiers.

Graphs go through skl2onnx. Trees are converted with float32 inputs (a float64 tree graph is
one ONNX Runtime refuses, NOTES.md); skl2onnx then adjusts each threshold so that
``float32(x) <= t`` keeps scikit-learn's branch. A scaler is accepted in front of a linear
model only: in front of trees, float32 scaling moves rows across split thresholds.

Classifiers predict ``predict_proba`` (one column per class, ``p_<label>``). A forest classifier's
``TreeEnsembleClassifier`` is rebuilt as the tree-graph contract's regressor (``trees.exported_trees``):
K class-probability targets summed over trees whose weights skl2onnx already divided by the number
of trees (SUM, NONE); a binary forest is one P(class 1) column and the [1 - p, p] tail. A boosted
classifier's raw scores start from its baseline (base_values): SOFTMAX over K classes, and a binary
one is softmax([0, s]) = [1 - p, p] with p = sigmoid(s), as the tree libraries' binary objectives.
HistGradientBoosting routes NaN as it learned to (missing-value tracks); its categorical splits are
not converted by skl2onnx (the native model serves).
LogisticRegression (``zipmap=False``) is its linear graph: ``LinearClassifier`` (LOGISTIC, or
SOFTMAX then an L1 ``Normalizer``), its probabilities output.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..converters.graph import OPSETS, conform, finish, prune_dead_nodes
from ..errors import ConversionError
from .base import (
    BINARY,
    JOBLIB,
    MULTICLASS,
    PICKLES,
    REGRESSION,
    Adapter,
    Trained,
    as_output,
    class_columns,
    dump_joblib,
    predict_quietly,
    task_of,
    type_names,
)
from .trees import exported_trees, f32_at_most, tree_graph

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family

TREES = (
    "sklearn.RandomForestRegressor",
    "sklearn.ExtraTreesRegressor",
    "sklearn.DecisionTreeRegressor",
    "sklearn.ExtraTreeRegressor",
    "sklearn.RandomForestClassifier",
    "sklearn.ExtraTreesClassifier",
    "sklearn.DecisionTreeClassifier",
    "sklearn.ExtraTreeClassifier",
    # Boosted trees: one raw score per class plus a baseline (base_values), sigmoid / softmax
    "sklearn.GradientBoostingRegressor",
    "sklearn.HistGradientBoostingRegressor",
    "sklearn.GradientBoostingClassifier",
    "sklearn.HistGradientBoostingClassifier",
)
LINEAR = (
    "sklearn.Ridge",
    "sklearn.Lasso",
    "sklearn.ElasticNet",
    "sklearn.LinearRegression",
    "sklearn.RidgeCV",
    "sklearn.LassoCV",
    "sklearn.ElasticNetCV",
    "sklearn.LogisticRegression",
    "sklearn.SGDRegressor",
    "sklearn.HuberRegressor",
    "sklearn.BayesianRidge",
    "sklearn.ARDRegression",
    "sklearn.Lars",
    "sklearn.LassoLars",
    "sklearn.LarsCV",
    "sklearn.LassoLarsCV",
    "sklearn.LassoLarsIC",
    "sklearn.OrthogonalMatchingPursuit",
    "sklearn.TheilSenRegressor",
    "sklearn.QuantileRegressor",
    "sklearn.LinearSVR",
    # Generalised linear models: exp(x·w + b) (skl2onnx: MatMul, Add, Exp)
    "sklearn.PoissonRegressor",
    "sklearn.GammaRegressor",
    "sklearn.TweedieRegressor",
)
HIST_GRADIENT_BOOSTING = ("sklearn.HistGradientBoostingRegressor", "sklearn.HistGradientBoostingClassifier")
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


def _check_hist_gradient_boosting(estimator: Any) -> None:
    """What skl2onnx converts wrongly: a categorical split (written as a numeric one), and a
    regressor's log link (poisson, gamma: the graph would give the raw log prediction)."""
    link = getattr(getattr(estimator, "_loss", None), "link", None)
    if not hasattr(estimator, "classes_") and link is not None and type(link).__name__ != "IdentityLink":
        raise ConversionError(
            f"{type(estimator).__name__}(loss={estimator.loss!r}) predicts through a {type(link).__name__}, "
            "which skl2onnx leaves out: the native model serves"
        )
    for iteration in estimator._predictors:
        for predictor in iteration:
            if predictor.nodes["is_categorical"].any():
                raise ConversionError(
                    f"{type(estimator).__name__} has categorical splits (categorical_features), which "
                    "skl2onnx does not convert: the native model serves"
                )


def _final(native: Any) -> Any:
    """The estimator that predicts (a Pipeline's last step)."""
    return native.steps[-1][1] if _is(native, (PIPELINE,)) else native


def _classes(native: Any) -> Any:
    """The class labels of a classifier (None for a regressor)."""
    final = _final(native)
    return getattr(final, "classes_", None) if hasattr(final, "predict_proba") else None


def _float32_safe_thresholds(estimator: Any, model: onnx.ModelProto) -> None:
    """HistGradientBoosting compares float64 x with float64 thresholds, and skl2onnx rounds each
    threshold to the nearest float32: a float32 row between the two takes the other branch. Each
    threshold becomes the largest float32 not above it, which keeps every float32 row on its side.

    skl2onnx numbers the trees by iteration (times the number of raw scores, plus the score's
    index) and the nodes by their index in the predictor's node array.
    """
    node = next(n for n in model.graph.node if n.op_type in ("TreeEnsembleRegressor", "TreeEnsembleClassifier"))
    attrs = {a.name: a for a in node.attribute}
    predictors = estimator._predictors  # [iteration][raw score] -> TreePredictor
    per_iteration = len(predictors[0])
    values = list(attrs["nodes_values"].floats)
    for j, (tree, index, mode) in enumerate(
        zip(attrs["nodes_treeids"].ints, attrs["nodes_nodeids"].ints, attrs["nodes_modes"].strings)
    ):
        if mode == b"BRANCH_LEQ":
            iteration, score = divmod(tree, per_iteration)
            values[j] = f32_at_most(float(predictors[iteration][score].nodes["num_threshold"][index]))
    del attrs["nodes_values"].floats[:]
    attrs["nodes_values"].floats.extend(values)


def sklearn_graph(native: Any, n_features: int) -> onnx.ModelProto:
    """A contract graph for a supported scikit-learn regressor (K = 1) or classifier (K classes)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    _check_supported(native)
    seen = getattr(native, "n_features_in_", n_features)
    if seen != n_features:
        raise ConversionError(f"{type(native).__name__} was fitted on {seen} features, expected {n_features}")
    if _is(_final(native), HIST_GRADIENT_BOOSTING):
        _check_hist_gradient_boosting(_final(native))
    classes = _classes(native)
    model = convert_sklearn(
        native,
        initial_types=[("features", FloatTensorType([None, n_features]))],
        target_opset=dict(OPSETS),
        options={id(_final(native)): {"zipmap": False}} if classes is not None else None,
    )
    if _is(_final(native), HIST_GRADIENT_BOOSTING):
        _float32_safe_thresholds(_final(native), model)
    if classes is None:
        return conform(model, n_features, 1)
    if _is(_final(native), TREES):
        attrs, objective, base, aggregate = exported_trees(model)
        return tree_graph(
            attrs,
            n_features,
            objective.n_scores,
            aggregate=aggregate,
            post_transform=objective.post_transform,
            base_values=base,
            link=objective.link,
            name="sklearn_forest",
        )
    model = conform(model, n_features, len(classes), output="probabilities")
    prune_dead_nodes(model)  # the label output's nodes
    return model


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


# The estimator the test writer trains for each family the adapter serves, per task: classifiers
# are the forests' classifiers and, for every linear family, LogisticRegression.
_TRAINERS: dict[str, Callable] = {
    "random_forest": _forest("RandomForestRegressor"),
    "extra_trees": _forest("ExtraTreesRegressor"),
    "ridge": _linear("Ridge", alpha=1.0),
    "lasso": _linear("Lasso", alpha=1e-4),
    "elastic_net": _linear("ElasticNet", alpha=1e-4),
    "linear_regression": _linear("LinearRegression"),
}
_CLASSIFIERS: dict[str, Callable] = {
    "random_forest": _forest("RandomForestClassifier"),
    "extra_trees": _forest("ExtraTreesClassifier"),
}


class SklearnAdapter(Adapter):
    name = "sklearn"
    accepts = (*TREES, *LINEAR, PIPELINE + f"({' | '.join(SCALERS)} ..., linear model)")
    formats = PICKLES
    tasks = (REGRESSION, BINARY, MULTICLASS)
    # Forests: float32 leaves averaged; linear: a float32 dot product against float64 — the
    # error is relative to |coef|·|x|, which exceeds |output| when terms cancel, hence 1e-4.
    tolerance = 1e-4
    libraries = ("skl2onnx", "scikit-learn")

    def handles(self, obj: Any) -> bool:
        return _is(obj, (*TREES, *LINEAR, PIPELINE))

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        """``predict_proba`` for classifiers (one column per class), ``predict`` for regressors."""
        if _classes(model) is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="X does not have valid feature names")
                return as_output(model.predict_proba(X))
        return as_output(predict_quietly(model, X))

    def output_columns(self, model: Any) -> tuple[str, ...]:
        classes = _classes(model)
        return ("prediction",) if classes is None else class_columns(classes)

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        return finish(sklearn_graph(model, n_features), self.output_columns(model), self.converter, self.libraries)

    def train(self, family: Family, X: Any, y: np.ndarray, size, seed: int) -> Trained:
        if task_of(y) == REGRESSION:
            return JOBLIB, dump_joblib(_TRAINERS[family.name](size, seed).fit(X, y))
        classifier = _CLASSIFIERS.get(family.name, _linear("LogisticRegression", max_iter=1000))
        return JOBLIB, dump_joblib(classifier(size, seed).fit(X, y))


SKLEARN = SklearnAdapter()
