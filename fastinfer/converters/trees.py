"""Gradient-boosted trees: LightGBM, XGBoost, CatBoost, and quantile LightGBM sets.

LightGBM and XGBoost go through onnxmltools (ai.onnx.ml ``TreeEnsembleRegressor``),
CatBoost through its own ONNX export. Each result is brought to the contract
(``features`` -> ``prediction`` [N, K]) by ``graph.conform``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx

from ..errors import ConversionError
from ..families import Family
from ..native import is_quantile_set
from . import ConvertedGraph, register, type_names
from .graph import concat_columns, conform, finish, iter_graphs

# onnxmltools' LightGBM / XGBoost converters emit ai.onnx.ml opset 1 and accept at most 15.
_CONVERTER_OPSET = 15

_LIGHTGBM_TYPES = ("lightgbm.Booster", "lightgbm.LGBMRegressor")


def _float_input(n_features: int):
    from onnxmltools.convert.common.data_types import FloatTensorType

    return [("features", FloatTensorType([None, n_features]))]


def _tree_node(model: onnx.ModelProto) -> onnx.NodeProto:
    nodes = [n for g in iter_graphs(model.graph) for n in g.node if n.op_type == "TreeEnsembleRegressor"]
    if len(nodes) != 1:
        raise ConversionError(f"expected one TreeEnsembleRegressor node, found {len(nodes)}")
    return nodes[0]


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto:
    return next(a for a in node.attribute if a.name == name)


# ---------------------------------------------------------------- LightGBM


def _lightgbm_booster(native: Any) -> Any:
    """The booster whose trees ``native.predict`` uses (trimmed to the best iteration)."""
    import lightgbm

    booster = native if isinstance(native, lightgbm.Booster) else native.booster_
    best = getattr(native, "best_iteration_", None) if not isinstance(native, lightgbm.Booster) else None
    best = best if best else booster.best_iteration
    if best and 0 < best < booster.num_trees():
        booster = lightgbm.Booster(model_str=booster.model_to_string(num_iteration=best))
    return booster


def _walk(native: dict, index: int, by_id: dict[int, int], true_ids: list[int], false_ids: list[int]):
    """Pairs (native dump node, ONNX node index) along the same paths (left = true branch)."""
    yield native, index
    if "split_index" in native:
        yield from _walk(native["left_child"], by_id.get(true_ids[index], -1), by_id, true_ids, false_ids)
        yield from _walk(native["right_child"], by_id.get(false_ids[index], -1), by_id, true_ids, false_ids)


def fix_lightgbm_splits(model: onnx.ModelProto, booster: Any) -> int:
    """Make float32 split thresholds and missing-value routing match LightGBM exactly.

    LightGBM compares ``double(x) <= threshold`` (a double); onnxmltools stores the threshold
    rounded to the nearest float32, so an input equal to a threshold that was rounded *up*
    takes the other branch. The float32 ``w`` with ``x <= w <=> x <= t`` for every float32
    ``x`` is the largest float32 not above ``t``. LightGBM also routes NaN by ``missing_type``:
    ``NaN`` -> ``default_left``; ``None`` -> as the value 0.0 (left iff ``0 <= t``).

    The ONNX nodes are matched to the dump tree by walking both from the root (true branch =
    left child) and checked (feature, rounded threshold) before anything changes; a tree
    that does not match is left as it is (the parity gate then judges it). Returns the number of split nodes adjusted.
    """
    node = _tree_node(model)
    tree_ids = list(_attr(node, "nodes_treeids").ints)
    node_ids = list(_attr(node, "nodes_nodeids").ints)
    true_ids = list(_attr(node, "nodes_truenodeids").ints)
    false_ids = list(_attr(node, "nodes_falsenodeids").ints)
    features = list(_attr(node, "nodes_featureids").ints)
    modes = [m.decode() for m in _attr(node, "nodes_modes").strings]
    values_attr, tracks_attr = _attr(node, "nodes_values"), _attr(node, "nodes_missing_value_tracks_true")
    values, tracks = list(values_attr.floats), list(tracks_attr.ints)
    if len(tracks) != len(values):
        return 0
    by_tree: dict[int, dict[int, int]] = {}
    for i, (t, n) in enumerate(zip(tree_ids, node_ids)):
        by_tree.setdefault(t, {})[n] = i
    changed = 0
    for tree_index, info in enumerate(booster.dump_model()["tree_info"]):
        by_id = by_tree.get(tree_index, {})
        children = {c for i in by_id.values() if modes[i] != "LEAF" for c in (true_ids[i], false_ids[i])}
        roots = [i for n, i in by_id.items() if n not in children]
        if len(roots) != 1:
            continue
        plan = []
        for nat, i in _walk(info["tree_structure"], roots[0], by_id, true_ids, false_ids):
            if i < 0:
                break
            if "split_index" not in nat:
                if modes[i] != "LEAF":
                    break
                continue
            if nat.get("decision_type") != "<=" or modes[i] != "BRANCH_LEQ" or features[i] != nat["split_feature"]:
                break
            t = float(nat["threshold"])
            if np.float32(t) != np.float32(values[i]):
                break
            w = np.float32(t)
            if float(w) > t:
                w = np.nextafter(w, np.float32(-np.inf))
            missing = nat.get("missing_type", "None")
            if missing == "NaN":
                track = int(bool(nat.get("default_left", True)))
            elif missing == "None":
                track = int(t >= 0.0)
            else:  # "Zero": NaN is missing and goes the default way
                track = int(bool(nat.get("default_left", True)))
            plan.append((i, float(w), track))
        else:
            for i, w, track in plan:
                if values[i] != w or tracks[i] != track:
                    changed += 1
                values[i], tracks[i] = w, track
    del values_attr.floats[:]
    values_attr.floats.extend(values)
    del tracks_attr.ints[:]
    tracks_attr.ints.extend(tracks)
    return changed


# LightGBM reads |x| <= kZeroThreshold (1e-35f) as 0.0 (its row parsers skip such values).
_LIGHTGBM_ZERO = float(np.float32(1e-35))


def fold_zero_snap(model: onnx.ModelProto, eps: float) -> int:
    """Fold LightGBM's ``x = 0 if |x| <= eps`` into the split thresholds it would change.

    Only a split whose threshold lies within eps of 0 can route a snapped value unlike the
    raw one; for those the float32 threshold that gives the raw value the snapped value's
    branch is exact: ``snap(x) <= t`` is ``x <= eps`` when ``0 <= t``, else ``x < -eps``;
    ``snap(x) < t`` is ``x <= eps`` when ``0 < t``, else ``x < -eps`` (GT and GTE are the
    negations). NaN is not snapped, so its routing is unchanged. The graph stays a bare
    tree ensemble (which the forest kernel can serve). Returns the splits rewritten.
    """
    node = _tree_node(model)
    modes = [m.decode() for m in _attr(node, "nodes_modes").strings]
    values_attr = _attr(node, "nodes_values")
    values = list(values_attr.floats)
    e = np.float32(eps)
    above_eps, below_minus_eps = np.nextafter(e, np.float32(np.inf)), np.nextafter(-e, np.float32(-np.inf))
    changed = 0
    for i, (mode, t) in enumerate(zip(modes, values)):
        if mode in ("BRANCH_LEQ", "BRANCH_GT") and -e <= t < e:
            values[i] = float(e if t >= 0 else below_minus_eps)
        elif mode in ("BRANCH_LT", "BRANCH_GTE") and -e < t <= e:
            values[i] = float(above_eps if t > 0 else -e)
        else:
            continue
        changed += 1
    del values_attr.floats[:]
    values_attr.floats.extend(values)
    return changed


def lightgbm_graph(native: Any, n_features: int) -> onnx.ModelProto:
    """A contract graph (K = 1) for one LightGBM regressor or booster."""
    from onnxmltools import convert_lightgbm

    booster = _lightgbm_booster(native)
    if booster.num_feature() != n_features:
        raise ConversionError(f"LightGBM model has {booster.num_feature()} features, expected {n_features}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_lightgbm(
            booster, initial_types=_float_input(n_features), target_opset=_CONVERTER_OPSET, zipmap=False
        )
    fix_lightgbm_splits(model, booster)
    fold_zero_snap(model, _LIGHTGBM_ZERO)
    return conform(model, n_features, 1)


@register("lightgbm", accepts=_LIGHTGBM_TYPES)
def convert_lightgbm_model(native: Any, family: Family, n_features: int, seq_len: int | None) -> ConvertedGraph:
    return finish(lightgbm_graph(native, n_features), ("prediction",), "lightgbm", ("onnxmltools", "lightgbm"))


# ---------------------------------------------------------------- XGBoost


def _xgboost_booster(native: Any) -> Any:
    """A copy of the booster trimmed as ``predict`` trims it, with features renamed f0..fN."""
    booster = native.get_booster() if hasattr(native, "get_booster") else native
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

    booster = _xgboost_booster(native)
    if booster.num_features() != n_features:
        raise ConversionError(f"XGBoost model has {booster.num_features()} features, expected {n_features}")
    model = convert_xgboost(booster, initial_types=_float_input(n_features), target_opset=_CONVERTER_OPSET)
    return conform(model, n_features, 1)


@register("xgboost", accepts=("xgboost.XGBRegressor", "xgboost.Booster"))
def convert_xgboost_model(native: Any, family: Family, n_features: int, seq_len: int | None) -> ConvertedGraph:
    objective = _xgboost_objective(native)
    if objective is not None and not objective.startswith(
        ("reg:squarederror", "reg:absoluteerror", "reg:pseudohuber", "reg:quantileerror")
    ):
        raise ConversionError(
            f"family {family.name!r}: XGBoost objective {objective!r} is not supported "
            "(identity-link regression objectives only)"
        )
    return finish(xgboost_graph(native, n_features), ("prediction",), "xgboost", ("onnxmltools", "xgboost"))


def _xgboost_objective(native: Any) -> str | None:
    import json

    booster = native.get_booster() if hasattr(native, "get_booster") else native
    try:
        return json.loads(booster.save_config())["learner"]["objective"]["name"]
    except (KeyError, ValueError):
        return None


# ---------------------------------------------------------------- CatBoost


def catboost_graph(native: Any, n_features: int) -> onnx.ModelProto:
    from catboost.utils import convert_to_onnx_object

    if native.get_cat_feature_indices():
        raise ConversionError("CatBoost models with categorical features have no ONNX export here")
    model = convert_to_onnx_object(native)
    # Declared (N), returned (N, 1) (NOTES.md): conform reshapes to [N, 1] either way.
    return conform(model, n_features, 1, output="predictions")


@register("catboost", accepts=("catboost.CatBoostRegressor", "catboost.CatBoost"))
def convert_catboost_model(native: Any, family: Family, n_features: int, seq_len: int | None) -> ConvertedGraph:
    loss = str(native.get_all_params().get("loss_function", "RMSE"))
    if loss.startswith(("MultiQuantile", "MultiRMSE", "Logloss", "CrossEntropy", "MultiClass")):
        raise ConversionError(
            f"family {family.name!r}: CatBoost loss {loss!r} is not supported "
            "(single-output regression only; train one model per quantile)"
        )
    return finish(catboost_graph(native, n_features), ("prediction",), "catboost", ("catboost",))


# ---------------------------------------------------------------- quantile LightGBM set


def _is_lightgbm_quantile_set(obj: Any) -> bool:
    return (
        is_quantile_set(obj)
        and len(obj["models"]) > 0
        and len(obj["models"]) == len(obj["quantiles"])
        and all(type_names(m) & set(_LIGHTGBM_TYPES) for m in obj["models"])
    )


def quantile_columns(quantiles: list[float]) -> tuple[str, ...]:
    return tuple(f"q{float(q):g}" for q in quantiles)


@register(
    "quantile_lightgbm",
    accepts=("dict{'quantiles': [q, ...], 'models': [lightgbm.LGBMRegressor | lightgbm.Booster, ...]}",),
    match=_is_lightgbm_quantile_set,
)
def convert_quantile_lightgbm(native: Any, family: Family, n_features: int, seq_len: int | None) -> ConvertedGraph:
    columns = quantile_columns(native["quantiles"])
    if len(set(columns)) != len(columns):
        raise ConversionError(f"family {family.name!r}: duplicate quantiles {native['quantiles']}")
    graphs = [lightgbm_graph(m, n_features) for m in native["models"]]
    model = concat_columns(graphs, [1] * len(graphs), [f"q{i}_" for i in range(len(graphs))], name="quantiles")
    return finish(model, columns, "quantile_lightgbm", ("onnxmltools", "lightgbm"))
