"""LightGBM: ``model.txt`` (and pickled boosters / LGBMRegressor / LGBMClassifier / LGBMRanker), and
quantile sets of them.

Graphs are built from LightGBM's own dump (``Booster.dump_model``) into the tree-graph contract
(``fastinfer.adapters.trees``), one gadget per split reproducing LightGBM's decision for every float32
input: ``double(x) <= threshold`` with |x| <= 1e-35 read as 0, each ``missing_type``, and categorical
splits by LightGBM's rule (NaN, negative codes and unseen codes go right; a float is truncated to its
code). Objectives (``objective_of``):

======================================  =====  ==============  ==========================
objective                               K      post_transform  tail
======================================  =====  ==============  ==========================
regression, regression_l1, huber, fair,  1     NONE            -
quantile, mape, lambdarank, rank_xendcg
poisson, gamma, tweedie                  1     NONE            Exp
binary (sigmoid s: leaves * s)           2     SOFTMAX         - (class 0's score is 0)
cross_entropy                            1     NONE            Sigmoid
multiclass                               K     SOFTMAX         -
multiclassova (sigmoid s)                K     LOGISTIC        - (K independent sigmoids)
======================================  =====  ==============  ==========================

``boosting=rf`` (``average_output``) averages: aggregate AVERAGE when one tree grows per iteration
(ONNX divides by all trees), leaves / iterations otherwise.
DART models are stored as plain trees. Linear trees, ``sqrt`` targets and other objectives are refused
with the objective named. Classifiers predict one probability per class (binary: [1 - p, p]), named
``p_<label>``; categorical columns carry the integer codes the model was trained on.

A quantile set (``quantile_lightgbm``) is the artifact ``{"quantiles": [...], "models": [...]}``:
one LightGBM model per quantile, one output column each (``q0.1``, ...), in artifact order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..converters.graph import concat_columns, finish
from ..errors import ConversionError
from .base import (
    BINARY,
    JOBLIB,
    LIGHTGBM_TXT,
    MULTICLASS,
    PICKLES,
    REGRESSION,
    Adapter,
    FileFormat,
    Trained,
    as_output,
    class_columns,
    dump_joblib,
    generic_names,
    memo,
    task_of,
)
from .lightgbm_file import Malformed, read_model_text
from .trees import (
    EXP,
    LEFT,
    LEQ,
    RIGHT,
    SIGMOID,
    Forest,
    Objective,
    binary_objective,
    lightgbm_numeric,
    membership,
    tree_graph,
)

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family

# ---------------------------------------------------------------- the file format


def _model_text(data: bytes) -> str:
    """The text LightGBM is given: checked (``lightgbm_file``), repaired where that is safe."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed(f"not a LightGBM text model (byte {exc.start} is not UTF-8)") from None
    return read_model_text(text).text


def _load_text(data: bytes) -> Any:
    import lightgbm

    try:
        text = _model_text(data)
    except Malformed as exc:
        raise Malformed(f"malformed LightGBM model ({exc})") from None
    return lightgbm.Booster(model_str=text)  # the very text that was checked


def _check_text(data: bytes) -> str | None:
    try:
        _model_text(data)
    except Malformed as exc:
        return f"malformed LightGBM model ({exc})"
    return None


TEXT = FileFormat(LIGHTGBM_TXT, _load_text, check=_check_text, crash_probe=True)


# ---------------------------------------------------------------- objectives

_IDENTITY = ("regression", "regression_l1", "huber", "fair", "quantile", "mape", "lambdarank", "rank_xendcg")
_LOG_LINK = ("poisson", "gamma", "tweedie")


def parse_objective(objective: str, num_class: int) -> Objective:
    """LightGBM's objective line (``binary sigmoid:1``, ``multiclassova num_class:3 sigmoid:1``, ...)
    in contract terms; ``ConversionError`` naming it when the contract cannot express it."""
    name, *params = str(objective).split()
    flags = {p for p in params if ":" not in p}
    options = dict(p.split(":", 1) for p in params if ":" in p)
    try:
        sigmoid = float(options.get("sigmoid", 1.0))
    except ValueError:
        sigmoid = float("nan")
    if "sqrt" in flags:
        raise ConversionError(f"LightGBM objective {objective!r} (sqrt-transformed target) is not converted")
    if name in _IDENTITY:
        return Objective(name)
    if name in _LOG_LINK:
        return Objective(name, link=EXP)
    if name == "binary" and np.isfinite(sigmoid):
        return binary_objective(name, sigmoid)
    if name in ("cross_entropy", "xentropy"):
        return Objective(name, link=SIGMOID)
    if name == "multiclass" and num_class > 1:
        return Objective(name, num_class, "SOFTMAX")
    if name == "multiclassova" and num_class > 1 and np.isfinite(sigmoid):
        return Objective(name, num_class, "LOGISTIC", scale=sigmoid)
    raise ConversionError(
        f"LightGBM objective {objective!r} is not supported (supported: {', '.join(_IDENTITY + _LOG_LINK)}, "
        "binary, cross_entropy, multiclass, multiclassova)"
    )


def _booster(model: Any) -> Any:
    return model if hasattr(model, "model_to_string") else model.booster_


def _header(booster: Any) -> dict[str, str]:
    """The model text's header lines (objective, num_class, feature_infos, ...)."""
    text = booster.model_to_string(num_iteration=1)
    head = text.partition("\nTree=")[0]
    return dict(line.partition("=")[::2] for line in head.splitlines() if "=" in line)


def objective_of(model: Any) -> tuple[Objective | None, int]:
    """(the model's objective in contract terms, or None where it has none; its number of scores),
    read once per loaded model."""

    def read(booster: Any) -> tuple[Objective | None, int]:
        header = _header(booster)
        n_class = int(header.get("num_class", "1"))
        try:
            return parse_objective(header.get("objective", "custom"), n_class), n_class
        except ConversionError:  # served natively as LightGBM predicts it
            return None, n_class

    return memo(_booster(model), "lightgbm.objective", read)


# ---------------------------------------------------------------- the graph


def _lightgbm_booster(native: Any) -> Any:
    """The booster whose trees ``native.predict`` uses (trimmed to the best iteration)."""
    import lightgbm

    booster = native if isinstance(native, lightgbm.Booster) else native.booster_
    best = getattr(native, "best_iteration_", None) if not isinstance(native, lightgbm.Booster) else None
    best = best if best else booster.best_iteration
    if best and 0 < best < booster.num_trees():
        booster = lightgbm.Booster(model_str=booster.model_to_string(num_iteration=best))
    return booster


def _add_tree(forest: Forest, root: dict, target: int, scale: float) -> None:
    """One dumped tree as gadgets (depth-first, root first); leaves add ``leaf_value * scale``."""
    forest.new_tree()
    stack: list[tuple[dict, list, str]] = [(root, [], LEFT)]
    while stack:
        node, exits, side = stack.pop()
        if "split_index" in node:
            f = int(node["split_feature"])
            if node["decision_type"] == "==":
                codes = [int(c) for c in str(node["threshold"]).split("||")]
                gadget = membership(f, codes, inside=LEFT, zero_floor=(LEQ, -1.0), nan_inside=False)
            elif node["decision_type"] == "<=":
                gadget = lightgbm_numeric(f, float(node["threshold"]), node["missing_type"], bool(node["default_left"]))
            else:
                raise ConversionError(f"LightGBM split decision {node['decision_type']!r} is not converted")
            head, open_exits = forest.add(gadget)
            stack.append((node["right_child"], open_exits, RIGHT))
            stack.append((node["left_child"], open_exits, LEFT))
        elif "leaf_coeff" in node or "leaf_features" in node:
            raise ConversionError("LightGBM linear trees (linear_tree=true) are not converted")
        else:
            head = forest.leaf({target: float(node["leaf_value"]) * scale})
        forest.connect([e for e in exits if e[2] == side], {side: head})


def lightgbm_graph(native: Any, n_features: int) -> onnx.ModelProto:
    """The contract graph of one LightGBM model (any objective in ``parse_objective``)."""
    booster = _lightgbm_booster(native)
    if booster.num_feature() != n_features:
        raise ConversionError(f"LightGBM model has {booster.num_feature()} features, expected {n_features}")
    dump = booster.dump_model()
    objective = parse_objective(dump.get("objective", "custom"), int(dump.get("num_class", 1)))
    per_iteration = int(dump["num_tree_per_iteration"])
    if per_iteration != objective.raw_scores:
        raise ConversionError(f"LightGBM model grows {per_iteration} trees per iteration for {objective.name!r}")
    trees = dump["tree_info"]
    average = bool(dump.get("average_output"))
    # rf boosting averages each score over the iterations: ONNX's AVERAGE divides by all trees,
    # which is that for one score; with K scores the leaves are divided instead.
    divide = max(1, len(trees) // per_iteration) if average and per_iteration > 1 else 1
    forest = Forest(objective.n_scores)
    for i, info in enumerate(trees):
        _add_tree(forest, info["tree_structure"], objective.target(i % per_iteration), objective.scale / divide)
    return tree_graph(
        forest.attrs,
        n_features,
        objective.n_scores,
        aggregate="AVERAGE" if average and per_iteration == 1 else "SUM",
        post_transform=objective.post_transform,
        link=objective.link,
        name="lightgbm",
    )


def categorical_codes(model: Any) -> dict[int, tuple[int, ...]]:
    """Column -> the category codes LightGBM saw (its ``feature_infos``: ``1:0:4`` for a categorical
    column, ``[min:max]`` or ``none`` otherwise); negative codes (LightGBM's missing) left out."""

    def read(booster: Any) -> dict[int, tuple[int, ...]]:
        infos = _header(booster).get("feature_infos", "").split()
        out = {}
        for i, info in enumerate(infos):
            if info != "none" and not info.startswith("["):
                out[i] = tuple(sorted(int(c) for c in info.split(":") if int(c) >= 0))
        return out

    return memo(_booster(model), "lightgbm.categorical", read)


# ---------------------------------------------------------------- adapters


def _params(size, seed: int) -> dict:
    return dict(
        n_estimators=size.trees,
        num_leaves=size.leaves,
        learning_rate=0.1,
        min_child_samples=5,
        random_state=seed,
        n_jobs=1,
        verbose=-1,
    )


class LightGBMAdapter(Adapter):
    name = "lightgbm"
    # LGBMModel: the base of LGBMRegressor, LGBMClassifier and LGBMRanker.
    accepts = ("lightgbm.Booster", "lightgbm.LGBMRegressor", "lightgbm.LGBMClassifier", "lightgbm.LGBMModel")
    formats = (TEXT, *PICKLES)
    tasks = (REGRESSION, BINARY, MULTICLASS)
    reads_categories = True
    # Same branches (every split exact for float32 inputs), leaf values and sums in float32 instead of
    # float64: the raw score's error ~ n_trees * eps32 * |score| (6e-8 per tree, ~3e-5 at 500 trees).
    # The links keep that bound relative to the column's scale: exp(s) moves by |exp(s)| * err; a
    # sigmoid or softmax by at most err / 4 resp. err / 2 on probabilities <= 1.
    tolerance = 1e-4
    libraries = ("lightgbm",)

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        """What LightGBM's ``Booster.predict`` gives (best iteration, its own output transform), as
        one probability per class for binary models ([1 - p, p])."""
        out = _booster(model).predict(X)
        objective, _ = objective_of(model)
        if objective is not None and objective.binary:
            out = np.column_stack([1.0 - out, out])
        return as_output(out)

    def feature_names(self, model: Any) -> list[str] | None:
        names = [str(n) for n in _booster(model).feature_name()]
        return None if generic_names(names) else names

    def output_columns(self, model: Any) -> tuple[str, ...]:
        objective, n_scores = objective_of(model)
        if objective is not None and objective.classifier:
            labels = getattr(model, "classes_", None)
            return class_columns(labels if labels is not None else range(objective.width))
        return ("prediction",) if n_scores == 1 else tuple(f"prediction_{k}" for k in range(n_scores))

    def categorical_features(self, model: Any) -> dict[int, tuple[int, ...]]:
        return categorical_codes(model)

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        return finish(lightgbm_graph(model, n_features), self.output_columns(model), self.converter, self.libraries)

    def train(self, family: Family, X: Any, y: np.ndarray, size, seed: int) -> Trained:
        import lightgbm

        estimator = lightgbm.LGBMRegressor if task_of(y) == REGRESSION else lightgbm.LGBMClassifier
        model = estimator(**_params(size, seed)).fit(X, y)
        return LIGHTGBM_TXT, lambda p: model.booster_.save_model(str(p))


LIGHTGBM = LightGBMAdapter()

QUANTILES = (0.1, 0.5, 0.9)


def is_quantile_set(obj: Any) -> bool:
    """The quantile LightGBM artifact: ``{"quantiles": [...], "models": [...]}``."""
    return isinstance(obj, dict) and set(obj) >= {"quantiles", "models"}


def quantile_columns(quantiles: list[float]) -> tuple[str, ...]:
    return tuple(f"q{float(q):g}" for q in quantiles)


class QuantileSetAdapter(Adapter):
    name = "quantile_lightgbm"
    accepts = ("dict{'quantiles': [q, ...], 'models': [lightgbm.LGBMRegressor | lightgbm.Booster, ...]}",)
    formats = PICKLES
    tolerance = 1e-4  # one LightGBM graph per column
    libraries = LIGHTGBM.libraries

    def handles(self, obj: Any) -> bool:
        return (
            is_quantile_set(obj)
            and len(obj["models"]) > 0
            and len(obj["models"]) == len(obj["quantiles"])
            and all(LIGHTGBM.handles(m) for m in obj["models"])
        )

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        return np.column_stack([LIGHTGBM.predict(m, X) for m in model["models"]])

    def feature_names(self, model: Any) -> list[str] | None:
        return LIGHTGBM.feature_names(model["models"][0]) if model["models"] else None

    def output_columns(self, model: Any) -> tuple[str, ...]:
        return quantile_columns(model["quantiles"])

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        columns = quantile_columns(model["quantiles"])
        if len(set(columns)) != len(columns):
            raise ConversionError(f"duplicate quantiles {model['quantiles']}")
        graphs = [lightgbm_graph(m, n_features) for m in model["models"]]
        merged = concat_columns(graphs, [1] * len(graphs), [f"q{i}_" for i in range(len(graphs))], name="quantiles")
        return finish(merged, columns, self.converter, self.libraries)

    def train(self, family: Family, X: Any, y: np.ndarray, size, seed: int) -> Trained:
        import lightgbm

        models = [
            lightgbm.LGBMRegressor(objective="quantile", alpha=q, **_params(size, seed)).fit(X, y) for q in QUANTILES
        ]
        return JOBLIB, dump_joblib({"quantiles": list(QUANTILES), "models": models})


QUANTILE_SET = QuantileSetAdapter()
