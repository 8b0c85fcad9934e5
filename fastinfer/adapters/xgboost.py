"""XGBoost: ``model.json`` / ``model.ubj`` (and pickled XGBRegressor / XGBClassifier / XGBRanker /
Booster).

Files are opened from their verified bytes (the scikit-learn wrapper they were saved from,
``load_model(bytearray)``, which reads JSON and UBJ alike), after the bytes are read and checked here
(``xgboost_file``, for verified bytes too); legacy binary models are refused with how to re-save
them. Graphs are built from the booster's own JSON into the tree-graph contract
(``fastinfer.adapters.trees``): a numeric split is ``x < t`` on the float32 threshold XGBoost
compares against, NaN going the default way; a categorical split is the interval chain of its codes
(the codes listed go right; negative codes, codes XGBoost does not know and non-listed codes go
left; a float is truncated to its code). Objectives:

=====================================  =====  ==============  =======  ==========================
objective                              K      post_transform  tail     intercept (margin)
=====================================  =====  ==============  =======  ==========================
reg:squarederror, reg:absoluteerror,    1     NONE            -        base_score
reg:pseudohuber, reg:squaredlogerror,
reg:quantileerror (one quantile),
rank:pairwise / ndcg / map (raw)
count:poisson, reg:gamma, reg:tweedie   1     NONE            Exp      log(base_score)
reg:logistic                            1     NONE            Sigmoid  logit(base_score)
binary:logistic                         2     SOFTMAX         -        [0, logit(base_score)]
binary:logitraw (served as [1-p, p])    2     SOFTMAX         -        [0, base_score]
multi:softprob, multi:softmax           K     SOFTMAX         -        base_score per class
=====================================  =====  ==============  =======  ==========================

(the intercepts as XGBoost 3.x turns ``base_score`` into a margin: ``ProbToMargin`` of each
objective in ``src/objective``). ``binary:logitraw`` and ``multi:softmax`` natively return a margin and
a class label; fastinfer serves every classifier as class probabilities (``p_<label>``): sigmoid
resp. softmax of XGBoost's own margin. DART trees are weighted by their ``weight_drop``; ``gblinear``
is a linear graph (missing values count as 0, as in XGBoost; its constant is XGBoost's margin at 0).
Other objectives and multi-target models stay native with the objective named.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..converters import INPUT_NAME, OUTPUT_NAME
from ..converters.graph import finish
from ..errors import ConversionError
from .base import (
    BINARY,
    MULTICLASS,
    PICKLES,
    REGRESSION,
    XGBOOST_JSON,
    XGBOOST_UBJ,
    Adapter,
    FileFormat,
    Trained,
    as_output,
    class_columns,
    generic_names,
    memo,
    task_of,
)
from .trees import (
    EXP,
    LEFT,
    LT,
    RIGHT,
    SIGMOID,
    Forest,
    Objective,
    binary_objective,
    membership,
    rows_graph,
    single,
    tree_graph,
)
from .xgboost_file import LEGACY_MESSAGE, Malformed, read_model

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family

# ---------------------------------------------------------------- the file formats


def _load(data: bytes) -> Any:
    """The model of checked bytes: XGBoost's parser only ever sees bytes ``read_model`` accepted
    (verified ones too: a deeply nested JSON overflows its recursive parser's stack)."""
    import xgboost

    try:
        read_model(data)
    except Malformed as exc:
        raise Malformed(_why(exc)) from None
    # The scikit-learn wrapper the file was saved from (XGBoost refuses to load a classifier's file
    # into a regressor); it predicts up to the best iteration of an early-stopped model.
    booster = xgboost.Booster()
    booster.load_model(bytearray(data))
    kind = json.loads(booster.attr("scikit_learn") or "{}").get("_estimator_type")
    model = {"classifier": xgboost.XGBClassifier, "ranker": xgboost.XGBRanker}.get(kind, xgboost.XGBRegressor)()
    model.load_model(bytearray(data))
    return model


def _why(exc: Malformed) -> str:
    return str(exc) if str(exc) == LEGACY_MESSAGE else f"malformed XGBoost model ({exc})"


def _check(data: bytes) -> str | None:
    try:
        read_model(data)
    except Malformed as exc:
        return _why(exc)
    return None


# The in-process check first; then, as a second line, a probe (open and predict) in a throw-away
# interpreter (XGBoost's parsers crashed on fuzzed files: a negative node index).
JSON = FileFormat(XGBOOST_JSON, _load, check=_check, crash_probe=True)
UBJ = FileFormat(XGBOOST_UBJ, _load, check=_check, crash_probe=True)


# ---------------------------------------------------------------- objectives

_IDENTITY = (
    "reg:squarederror",
    "reg:squaredlogerror",
    "reg:absoluteerror",
    "reg:pseudohuber",
    "reg:quantileerror",
    "rank:pairwise",
    "rank:ndcg",
    "rank:map",
)
_LOG_LINK = ("count:poisson", "reg:gamma", "reg:tweedie")
_BINARY = ("binary:logistic", "binary:logitraw")
_MULTI = ("multi:softprob", "multi:softmax")
# Objectives whose base_score XGBoost turns into a margin (ProbToMargin), and how.
_LOGIT = ("binary:logistic", "reg:logistic")


def parse_objective(name: str, n_class: int) -> Objective:
    """An XGBoost objective in contract terms; ``ConversionError`` naming it otherwise."""
    if name in _IDENTITY:
        return Objective(name)
    if name in _LOG_LINK:
        return Objective(name, link=EXP)
    if name == "reg:logistic":
        return Objective(name, link=SIGMOID)
    if name in _BINARY:
        return binary_objective(name)
    if name in _MULTI and n_class > 1:
        return Objective(name, n_class, "SOFTMAX")
    raise ConversionError(
        f"XGBoost objective {name!r} is not supported (supported: {', '.join(_IDENTITY + _LOG_LINK)}, "
        f"reg:logistic, {', '.join(_BINARY + _MULTI)})"
    )


def _booster(model: Any) -> Any:
    return model.get_booster() if hasattr(model, "get_booster") else model


def _config(booster: Any) -> tuple[str, int, int]:
    """(objective name, num_class, num_target) from the booster's configuration."""
    learner = json.loads(booster.save_config())["learner"]
    params = learner["learner_model_param"]
    return learner["objective"]["name"], int(params.get("num_class", 0)), int(params.get("num_target", 1))


def objective(native: Any) -> str | None:
    """The learner's objective name (``reg:squarederror``, ``binary:logistic``, ...), where recorded."""
    try:
        return memo(_booster(native), "xgboost.config", _config)[0]
    except (KeyError, ValueError):
        return None


def _margins(base_score: str, name: str, k: int) -> list[float]:
    """The intercept of each score as XGBoost adds it to the trees' sum (float32)."""
    values = np.array([float(v) for v in str(base_score).strip("[]").split(",")], dtype=np.float32)
    with np.errstate(divide="ignore"):
        if name in _LOGIT:
            values = -np.log(np.float32(1) / values - np.float32(1))
        elif name in _LOG_LINK:
            values = np.log(values)
    values = np.broadcast_to(values, (k,)) if values.size == 1 else values
    if values.size != k or not np.isfinite(values).all():
        raise ConversionError(f"XGBoost base_score {base_score!r} gives no finite margin for {k} score(s) of {name!r}")
    return [float(v) for v in values]


# ---------------------------------------------------------------- graphs


def _trimmed_booster(native: Any) -> Any:
    """A copy of the booster trimmed as ``predict`` trims it (to the best iteration)."""
    booster = _booster(native)
    try:  # XGBModel.predict uses best_iteration when the model was early-stopped
        best = native.best_iteration if hasattr(native, "get_booster") else None
    except AttributeError:
        best = None
    return booster[: best + 1] if best is not None else booster.copy()


def _add_tree(forest: Forest, tree: dict, target: int, weight: float) -> None:
    """One tree of the JSON model as gadgets (root first); leaves add ``leaf * weight``."""
    left, right = tree["left_children"], tree["right_children"]
    values, features, default_left = tree["split_conditions"], tree["split_indices"], tree["default_left"]
    split_type = tree.get("split_type") or [0] * len(left)
    segments = zip(tree["categories_nodes"], tree["categories_segments"], tree["categories_sizes"])
    categories = {int(n): tree["categories"][s : s + z] for n, s, z in segments}
    forest.new_tree()
    stack: list[tuple[int, list, str]] = [(0, [], LEFT)]
    while stack:
        i, exits, side = stack.pop()
        if left[i] == -1:
            head = forest.leaf({target: float(np.float32(values[i])) * weight})
        else:
            f, nan_left = int(features[i]), bool(default_left[i])
            if split_type[i] == 1:  # the listed codes go right
                gadget = membership(f, categories[i], inside=RIGHT, zero_floor=(LT, 0.0), nan_inside=not nan_left)
            else:
                gadget = single(f, LT, float(np.float32(values[i])), nan_left)
            head, open_exits = forest.add(gadget)
            stack.append((int(right[i]), open_exits, RIGHT))
            stack.append((int(left[i]), open_exits, LEFT))
        forest.connect([e for e in exits if e[2] == side], {side: head})


def _linear_graph(weights: np.ndarray, bias: np.ndarray, objective: Objective, n_features: int) -> onnx.ModelProto:
    """gblinear: ``margin = x @ W + b`` with missing (NaN) inputs counted as 0, then the link."""
    k = len(bias)
    init = [
        numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero"),
        numpy_helper.from_array(weights.astype(np.float32), "coefficients"),
        numpy_helper.from_array(bias.astype(np.float32).reshape(1, k), "intercepts"),
    ]
    nodes = [
        helper.make_node("IsNaN", [INPUT_NAME], ["missing"], name="missing"),
        helper.make_node("Where", ["missing", "zero", INPUT_NAME], ["present"], name="missing_as_zero"),
        helper.make_node("MatMul", ["present", "coefficients"], ["product"], name="linear"),
        helper.make_node("Add", ["product", "intercepts"], ["margin"], name="intercept"),
    ]
    width = objective.width
    if objective.binary:  # one margin column: [1 - p, p]
        init.append(numpy_helper.from_array(np.ones(1, dtype=np.float32), "one"))
        nodes += [
            helper.make_node("Sigmoid", ["margin"], ["p"], name="logistic"),
            helper.make_node("Sub", ["one", "p"], ["q"], name="class_0"),
            helper.make_node("Concat", ["q", "p"], [OUTPUT_NAME], axis=1, name="classes"),
        ]
    else:
        if objective.post_transform == "SOFTMAX":
            nodes.append(helper.make_node("Softmax", ["margin"], [OUTPUT_NAME], axis=1, name="link"))
        else:
            op = {EXP: "Exp", SIGMOID: "Sigmoid"}.get(objective.link, "Identity")
            nodes.append(helper.make_node(op, ["margin"], [OUTPUT_NAME], name="link"))
    return rows_graph(nodes, "xgboost_gblinear", n_features, width, init)


def xgboost_graph(native: Any, n_features: int) -> onnx.ModelProto:
    """The contract graph of one XGBoost model (gbtree, dart or gblinear; objectives as above)."""
    booster = _trimmed_booster(native)
    if booster.num_features() != n_features:
        raise ConversionError(f"XGBoost model has {booster.num_features()} features, expected {n_features}")
    learner = json.loads(booster.save_raw("json"))["learner"]
    params = learner["learner_model_param"]
    name = learner["objective"]["name"]
    objective = parse_objective(name, int(params.get("num_class", 0)))
    n_target = int(params.get("num_target", 1))
    if n_target > 1:
        # One scalar-leaf tree per target and round (one_output_per_tree, several quantile alphas): K raw
        # scores, each with its own intercept, no link. Vector-leaf trees stay refused below.
        if name not in _IDENTITY:
            raise ConversionError(f"XGBoost multi-output model ({n_target} targets, {name!r}) is not converted")
        objective = Objective(name, n_target)
    intercept = _margins(params["base_score"], name, objective.raw_scores)
    base = [0.0, *intercept] if objective.binary else intercept
    gb = learner["gradient_booster"]
    if gb["name"] == "gblinear":
        k = objective.raw_scores
        import xgboost

        weights = np.asarray(gb["model"]["weights"], dtype=np.float64).reshape(n_features + 1, k)
        # The constant term as XGBoost computes it: its margin at x = 0 (bias + intercept; how the
        # intercept enters differs across versions and for files saved before XGBoost 1.6).
        zero = xgboost.DMatrix(np.zeros((1, n_features)), feature_names=booster.feature_names)
        constant = np.asarray(booster.predict(zero, output_margin=True), dtype=np.float64).reshape(k)
        return _linear_graph(weights[:n_features], constant, objective, n_features)
    model = gb["gbtree"]["model"] if gb["name"] == "dart" else gb["model"]
    drop = gb.get("weight_drop") or [1.0] * len(model["trees"])
    forest = Forest(objective.n_scores)
    for i, tree in enumerate(model["trees"]):
        if int(tree["tree_param"].get("size_leaf_vector", 1)) > 1:
            raise ConversionError("XGBoost vector-leaf (multi_strategy) trees are not converted")
        _add_tree(forest, tree, objective.target(int(model["tree_info"][i])), float(drop[i]))
    return tree_graph(
        forest.attrs,
        n_features,
        objective.n_scores,
        post_transform=objective.post_transform,
        base_values=base,
        link=objective.link,
        name="xgboost",
    )


# ---------------------------------------------------------------- the adapter


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class XGBoostAdapter(Adapter):
    name = "xgboost"
    # XGBModel: the base of XGBRegressor, XGBClassifier, XGBRanker and the XGBRF* models.
    accepts = ("xgboost.XGBRegressor", "xgboost.XGBClassifier", "xgboost.XGBModel", "xgboost.Booster")
    formats = (JSON, UBJ, *PICKLES)
    tasks = (REGRESSION, BINARY, MULTICLASS)
    reads_categories = True
    # XGBoost itself is float32 throughout (thresholds, leaves, sums): only summation order and the
    # link's float32 arithmetic differ, ~n_trees * eps32 relative to the column's scale.
    tolerance = 1e-4
    libraries = ("xgboost",)

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        """XGBoost's own prediction, as class probabilities for classifiers: binary ``[1 - p, p]``;
        ``binary:logitraw`` and ``multi:softmax`` from XGBoost's margin (sigmoid, softmax)."""
        import xgboost

        booster = _booster(model)
        name, _, _ = memo(booster, "xgboost.config", _config)
        types = booster.feature_types
        data = xgboost.DMatrix(
            X,
            feature_names=booster.feature_names,
            feature_types=types,
            enable_categorical=bool(types and "c" in types),
        )
        try:  # the sklearn wrapper predicts up to its best iteration when early-stopped
            end = model.best_iteration + 1 if hasattr(model, "get_booster") else 0
        except AttributeError:
            end = 0
        margin = name in ("binary:logitraw", "multi:softmax")
        out = booster.predict(data, output_margin=margin, iteration_range=(0, end))
        if name == "multi:softmax":
            out = _softmax(out)
        elif name in _BINARY:
            p = _sigmoid(out) if margin else out
            out = np.column_stack([1.0 - p, p])
        return as_output(out)

    def feature_names(self, model: Any) -> list[str] | None:
        names = _booster(model).feature_names
        names = None if names is None else [str(n) for n in names]
        return None if names is None or generic_names(names) else names

    def output_columns(self, model: Any) -> tuple[str, ...]:
        name, n_class, n_target = memo(_booster(model), "xgboost.config", _config)
        if name in _BINARY or name in _MULTI:
            labels = getattr(model, "classes_", None)
            return class_columns(labels if labels is not None else range(2 if name in _BINARY else n_class))
        return ("prediction",) if n_target <= 1 else tuple(f"prediction_{k}" for k in range(n_target))

    def categorical_features(self, model: Any) -> dict[int, tuple[int, ...]]:
        """Categorical columns (feature type ``c``) -> the codes the trees split on."""

        def read(booster: Any) -> dict[int, tuple[int, ...]]:
            types = booster.feature_types or []
            columns = [i for i, t in enumerate(types) if t == "c"]
            if not columns:
                return {}
            seen: dict[int, set[int]] = {i: set() for i in columns}
            for tree in _trees(json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]):
                for node, start, size in zip(
                    tree["categories_nodes"], tree["categories_segments"], tree["categories_sizes"]
                ):
                    seen[int(tree["split_indices"][node])].update(
                        int(c) for c in tree["categories"][start : start + size]
                    )
            return {i: tuple(sorted(codes)) for i, codes in seen.items()}

        return memo(_booster(model), "xgboost.categorical", read)

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        return finish(xgboost_graph(model, n_features), self.output_columns(model), self.converter, self.libraries)

    def train(self, family: Family, X: Any, y: np.ndarray, size, seed: int) -> Trained:
        import xgboost

        params = dict(n_estimators=size.trees, max_depth=size.depth, learning_rate=0.1, random_state=seed, n_jobs=1)
        categorical = hasattr(X, "dtypes") and any(str(t) == "category" for t in X.dtypes)
        if categorical:
            params.update(enable_categorical=True, tree_method="hist", max_cat_to_onehot=1)
        estimator = xgboost.XGBRegressor if task_of(y) == REGRESSION else xgboost.XGBClassifier
        model = estimator(**params).fit(X, y)
        return XGBOOST_JSON, lambda p: model.save_model(str(p))


def _trees(gradient_booster: dict) -> list[dict]:
    if gradient_booster["name"] == "gblinear":
        return []
    model = gradient_booster["gbtree"]["model"] if gradient_booster["name"] == "dart" else gradient_booster["model"]
    return model["trees"]


XGBOOST = XGBoostAdapter()
