"""LightGBM: ``model.txt`` (and pickled boosters / LGBMRegressor), and quantile sets of them.

Graphs go through onnxmltools (ai.onnx.ml ``TreeEnsembleRegressor``), then the split
thresholds and missing-value routing are made exact (``fix_lightgbm_splits``) and LightGBM's
reading of |x| <= 1e-35 as 0 is folded into the thresholds (``fold_zero_snap``).

A quantile set (``quantile_lightgbm``) is the artifact ``{"quantiles": [...], "models": [...]}``:
one LightGBM model per quantile, one output column each (``q0.1``, ...), in artifact order.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..converters.graph import (
    ONNXMLTOOLS_OPSET,
    concat_columns,
    conform,
    finish,
    node_attr,
    onnxmltools_input,
    tree_node,
)
from ..errors import ConversionError
from .base import JOBLIB, LIGHTGBM_TXT, PICKLES, Adapter, FileFormat, Trained, dump_joblib, generic_names

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family

# ---------------------------------------------------------------- the file format


def check_lightgbm_text(text: str) -> str | None:
    """Why a LightGBM model.txt is malformed, or None.

    LightGBM's C++ parser trusts the file: a truncated model.txt segfaults the process and a
    damaged key aborts it (std::terminate), so the structure is checked here first: the
    header, ``tree_sizes`` against the tree blocks, and every tree's arrays (lengths, numbers,
    child and feature indices in range).
    """
    head, sep, rest = text.partition("\nTree=")
    if not text.startswith("tree\n") or not sep:
        return "no LightGBM header or no trees"
    trees_text, sep, _ = ("Tree=" + rest).partition("\nend of trees")
    if not sep:
        return "truncated: no 'end of trees' marker"
    header = dict(line.partition("=")[::2] for line in head.splitlines()[1:] if "=" in line)
    try:
        n_features = int(header["max_feature_idx"]) + 1
        sizes = [int(x) for x in header["tree_sizes"].split()] if "tree_sizes" in header else None
    except (KeyError, ValueError):
        return "header lacks a valid max_feature_idx / tree_sizes"
    blocks = [b for b in trees_text.split("\n\n") if b.strip()]
    if sizes is not None and (len(sizes) != len(blocks) or sum(sizes) != len(trees_text.encode()) + 1):
        return f"tree_sizes lists {len(sizes)} trees of {sum(sizes)} bytes, the file has {len(blocks)}"
    for k, block in enumerate(blocks):
        fields = dict(line.partition("=")[::2] for line in block.splitlines())
        try:
            leaves, n_cat = int(fields["num_leaves"]), int(fields.get("num_cat", "0"))
            arrays = (
                {
                    name: fields[name].split()
                    for name in ("split_feature", "threshold", "decision_type", "left_child", "right_child")
                }
                if leaves > 1
                else {}
            )
            leaf_value = [float(x) for x in fields["leaf_value"].split()]
            float(fields.get("shrinkage", "1"))
            nums = {name: [float(x) for x in values] for name, values in arrays.items()}
        except (KeyError, ValueError):
            return f"tree {k}: missing or non-numeric fields"
        if leaves < 1 or n_cat < 0 or len(leaf_value) != leaves:
            return f"tree {k}: num_leaves={leaves} but {len(leaf_value)} leaf values"
        if any(len(v) != leaves - 1 for v in nums.values()):
            return f"tree {k}: split arrays are not num_leaves - 1 long"
        for name in ("left_child", "right_child"):
            if any(not (-leaves <= c < leaves - 1) or c != int(c) for c in nums.get(name, ())):
                return f"tree {k}: {name} index out of range"
        if any(not (0 <= f < n_features) or f != int(f) for f in nums.get("split_feature", ())):
            return f"tree {k}: split_feature out of range"
        if n_cat and len(fields.get("cat_boundaries", "").split()) != n_cat + 1:
            return f"tree {k}: cat_boundaries do not match num_cat"
    # A parameters block cut short makes the parser read past the text: a crash or not,
    # depending on what lies beyond (so a probe alone cannot be relied on for it).
    _, params, tail = text.partition("\nparameters:\n")
    if params and "\nend of parameters" not in tail:
        return "truncated: 'parameters:' without 'end of parameters'"
    return None


def _lightgbm_text(data: bytes) -> tuple[str | None, str | None]:
    """(text, None) for a well-formed LightGBM model.txt, else (None, why)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not a LightGBM text model (byte {exc.start} is not UTF-8)"
    problem = check_lightgbm_text(text)
    return (None, f"malformed LightGBM model ({problem})") if problem else (text, None)


def _load_text(data: bytes) -> Any:
    import lightgbm

    text, problem = _lightgbm_text(data)
    if problem:
        raise ValueError(problem)
    return lightgbm.Booster(model_str=text)  # the very text that was checked


def _check_text(data: bytes) -> str | None:
    return _lightgbm_text(data)[1]


TEXT = FileFormat(LIGHTGBM_TXT, _load_text, check=_check_text, crash_probe=True)


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
    node = tree_node(model)
    tree_ids = list(node_attr(node, "nodes_treeids").ints)
    node_ids = list(node_attr(node, "nodes_nodeids").ints)
    true_ids = list(node_attr(node, "nodes_truenodeids").ints)
    false_ids = list(node_attr(node, "nodes_falsenodeids").ints)
    features = list(node_attr(node, "nodes_featureids").ints)
    modes = [m.decode() for m in node_attr(node, "nodes_modes").strings]
    values_attr, tracks_attr = node_attr(node, "nodes_values"), node_attr(node, "nodes_missing_value_tracks_true")
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
    node = tree_node(model)
    modes = [m.decode() for m in node_attr(node, "nodes_modes").strings]
    values_attr = node_attr(node, "nodes_values")
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
            booster, initial_types=onnxmltools_input(n_features), target_opset=ONNXMLTOOLS_OPSET, zipmap=False
        )
    fix_lightgbm_splits(model, booster)
    fold_zero_snap(model, _LIGHTGBM_ZERO)
    return conform(model, n_features, 1)


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
    accepts = ("lightgbm.Booster", "lightgbm.LGBMRegressor")
    formats = (TEXT, *PICKLES)
    # Same branches (thresholds made exact), leaf values and sums in float32 instead of
    # float64: relative error ~ n_trees * eps32 (6e-8), ~3e-5 at 500 trees.
    tolerance = 1e-4
    libraries = ("onnxmltools", "lightgbm")

    def feature_names(self, model: Any) -> list[str] | None:
        booster = model if hasattr(model, "feature_name") else getattr(model, "booster_", None)
        names = [str(n) for n in booster.feature_name()] if booster is not None else None
        return None if names is None or generic_names(names) else names

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        return finish(lightgbm_graph(model, n_features), ("prediction",), self.converter, self.libraries)

    def train(self, family: Family, X: Any, y: np.ndarray, size, seed: int) -> Trained:
        import lightgbm

        model = lightgbm.LGBMRegressor(**_params(size, seed)).fit(X, y)
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
