"""The parity gate: every converted graph against its native model, on probe rows that look like
the data.

``probe_rows`` draws deterministic float32 rows at realistic scales, zeros, extremes, NaN rows (only
for families whose native model routes NaN itself), and rows that put the features on the split
thresholds of the graph's trees (``tree_thresholds``) and on both float32 neighbours of each, where a
float32 graph is most likely to take another branch than a float64 native model. Those rows are
packed: row r puts *every* feature on its r-th threshold value, so every threshold of every feature
and both its neighbours are probed in 3 x (most thresholds of one feature) rows (up to
``max_threshold_rows``). Columns the model reads as categories (``categorical``: column -> codes the
model saw) carry integer codes in every row instead: seen codes, unseen ones (above the largest,
in gaps, large), negative codes and NaN; categorical columns carry integer codes (see the adapters).

``check_parity`` runs the graph in ONNX Runtime (CPU, one thread) and the adapter's ``predict``
on the same rows. The error is measured per output column relative to that column's
scale, ``max_i |native[i, k]|`` over the probes (floored at ``SCALE_FLOOR``), so that a
model whose outputs are all near zero is judged against its own magnitude and a
two-column NGBoost output is not judged by the larger column. A failed gate is a
report with ``passed=False`` and a reason, never an exception; where a feature sitting on a split
threshold explains the disagreement (moving it off the threshold removes it), the reason names
that feature (by name with ``feature_names``) and the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..adapters import adapter_of
from ..families import Family, resolve
from . import INPUT_NAME, OUTPUT_NAME, ConvertedGraph

SCALE_FLOOR = 1e-12  # only stops a 0/0: an all-zero native output must then be matched exactly


@dataclass(frozen=True)
class ParityReport:
    max_abs: float
    max_rel: float
    tolerance: float
    passed: bool
    n_rows: int
    reason: str


def tolerance_for(family: Family | str) -> float:
    """The family's adapter's relative tolerance: max |onnx - native| / scale of the output column."""
    return resolve(family).adapter.tolerance


# ---------------------------------------------------------------- probes


# Ops whose output keeps the input's column order (op -> which inputs carry the columns).
_COLUMN_PRESERVING = {"Identity": slice(0, 1), "Cast": slice(0, 1), "Where": slice(1, 3)}


def tree_thresholds(graph: ConvertedGraph | onnx.ModelProto) -> dict[int, np.ndarray]:
    """Feature index -> sorted unique float32 split thresholds of the graph's tree ensembles.

    Only ensembles that read the graph input's columns are used: the input itself or the
    input passed through column-preserving ops (``_COLUMN_PRESERVING``); a stacker's final
    tree reads its members' outputs, not features.
    """
    model = graph.model if isinstance(graph, ConvertedGraph) else graph
    columns = {i.name for i in model.graph.input}
    for node in model.graph.node:  # nodes are topologically sorted
        if node.op_type in _COLUMN_PRESERVING and columns & set(node.input[_COLUMN_PRESERVING[node.op_type]]):
            columns.update(node.output)
    found: dict[int, list[float]] = {}
    for node in model.graph.node:
        if node.op_type not in ("TreeEnsembleRegressor", "TreeEnsembleClassifier") or node.input[0] not in columns:
            continue
        attrs = {a.name: a for a in node.attribute}
        features = list(attrs["nodes_featureids"].ints)
        modes = [m.decode() for m in attrs["nodes_modes"].strings]
        if "nodes_values_as_tensor" in attrs:
            values = onnx.numpy_helper.to_array(attrs["nodes_values_as_tensor"].t).tolist()
        else:
            values = list(attrs["nodes_values"].floats)
        for f, m, v in zip(features, modes, values):
            if m != "LEAF":
                found.setdefault(f, []).append(v)
    return {f: np.unique(np.asarray(v, dtype=np.float32)) for f, v in sorted(found.items())}


def _scale(feature_scale: Any, n_features: int) -> np.ndarray:
    if feature_scale is None:
        return np.ones(n_features)
    scale = np.broadcast_to(np.asarray(feature_scale, dtype=np.float64), (n_features,)).copy()
    scale[~np.isfinite(scale) | (scale <= 0)] = 1.0
    return scale


def _neighbours(values: np.ndarray) -> np.ndarray:
    """Each float32 value and the float32 values just below and above it, the finite ones."""
    v = np.asarray(values, dtype=np.float32)
    with np.errstate(over="ignore"):
        out = np.concatenate([v, np.nextafter(v, np.float32(-np.inf)), np.nextafter(v, np.float32(np.inf))]).reshape(
            3, -1
        )
    out = out.T.ravel()  # t, below, above for each threshold in turn
    return out[np.isfinite(out)]


def category_codes(seen: Sequence[int]) -> np.ndarray:
    """Codes to probe a categorical column with: the codes the model saw (0..9 when it lists none),
    unseen ones (just above the largest, a gap between seen ones, a large one), negative ones."""
    seen = sorted({int(c) for c in seen}) or list(range(10))
    gaps = sorted(set(range(seen[0], seen[-1] + 1)) - set(seen))[:2]
    extra = [seen[-1] + 1, seen[-1] + 2, *gaps, 1 << 20, -1, -2]
    return np.asarray(seen + extra, dtype=np.float32)


def _codes(categorical: Mapping[int, Sequence[int]] | Sequence[int] | None) -> dict[int, np.ndarray]:
    if categorical is None:
        return {}
    items = categorical.items() if isinstance(categorical, Mapping) else ((int(c), ()) for c in categorical)
    return {int(c): category_codes(seen) for c, seen in items}


def probe_rows(
    family: Family | str,
    n_features: int,
    rng_seed: int = 0,
    seq_len: int | None = None,
    thresholds: Mapping[int, np.ndarray] | None = None,
    feature_scale: Any = None,
    max_threshold_rows: int = 1536,
    *,
    categorical: Mapping[int, Sequence[int]] | Sequence[int] | None = None,
) -> np.ndarray:
    """Deterministic float32 probes, [N, F] (or [N, T, F] for sequential families).

    Blocks: 64 Gaussian rows and 16 heavy-tailed (Student t, 3 dof) rows at
    ``feature_scale`` (per feature or scalar; default 1), 8 rows at ±10x scale, 2 all-zero
    rows; with ``family.handles_nan`` an all-NaN row, one NaN per feature and 16 rows with
    20 % NaN; with ``thresholds`` (see ``tree_thresholds``) the packed threshold rows (module
    docstring; at most ``max_threshold_rows``, each feature's values evenly sampled beyond that).
    ``categorical`` (column -> codes seen, or just the columns): those columns hold integer codes
    in every row, each code of ``category_codes`` in turn in one block (NaN too where handled).
    """
    family = resolve(family)
    rng = np.random.default_rng(rng_seed)
    scale = _scale(feature_scale, n_features)
    codes = {c: v for c, v in _codes(categorical).items() if 0 <= c < n_features}
    blocks = [
        rng.normal(size=(64, n_features)) * scale,
        rng.standard_t(3, size=(16, n_features)) * scale,
        rng.choice([-10.0, 10.0], size=(8, n_features)) * scale * rng.uniform(0.5, 1.0, size=(8, n_features)),
        np.zeros((2, n_features)),
    ]
    if family.handles_nan:
        single = rng.normal(size=(n_features, n_features)) * scale
        single[np.arange(n_features), np.arange(n_features)] = np.nan
        sparse = rng.normal(size=(16, n_features)) * scale
        sparse[rng.random(size=sparse.shape) < 0.2] = np.nan
        blocks += [np.full((1, n_features), np.nan), single, sparse]
    if thresholds and family.input_rank == 2:
        # Finite values only: a threshold at float32 max (LightGBM's "all finite values go left"
        # split) has +inf just above it, and non-finite inputs are refused upstream.
        values = {f: _neighbours(v) for f, v in sorted(thresholds.items()) if 0 <= f < n_features and f not in codes}
        values = {f: v for f, v in values.items() if len(v)}
        if values:
            n_rows = min(max(len(v) for v in values.values()), max_threshold_rows)
            packed = rng.normal(size=(n_rows, n_features)) * scale
            for f, v in values.items():
                pick = (
                    np.arange(n_rows) % len(v) if len(v) <= n_rows else np.linspace(0, len(v) - 1, n_rows).astype(int)
                )
                packed[:, f] = v[pick]
            blocks.append(packed)
    rows = np.vstack(blocks)
    if codes:
        for c, pool in codes.items():  # codes in every block instead of scaled values
            column = rng.choice(pool, size=len(rows))
            if family.handles_nan:
                column[np.isnan(rows[:, c])] = np.nan
            rows[:, c] = column
        longest = max(len(p) for p in codes.values()) + int(family.handles_nan)
        each = rng.normal(size=(longest, n_features)) * scale
        for c, pool in codes.items():
            cycle = np.concatenate([pool, [np.nan]]) if family.handles_nan else pool
            each[:, c] = cycle[np.arange(longest) % len(cycle)]
        rows = np.vstack([rows, each])
    rows = rows.astype(np.float32)
    if family.input_rank == 3:
        if not seq_len:
            raise ValueError(f"family {family.name!r} is sequential: probe_rows needs seq_len")
        steps = rng.normal(size=(rows.shape[0], seq_len, n_features)) * 0.1 * scale
        rows = (rows[:, None, :] + steps).astype(np.float32)
    return rows


# ---------------------------------------------------------------- the gate


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _fail(
    reason: str, tolerance: float, n_rows: int, max_abs: float = float("inf"), max_rel: float = float("inf")
) -> ParityReport:
    return ParityReport(max_abs, max_rel, tolerance, False, n_rows, reason)


def _where_on(value: np.float32, values: np.ndarray) -> tuple[int, str] | None:
    """(index of the threshold, "on" / "just below" / "just above") when ``value`` is a threshold in
    sorted ``values`` or one of its float32 neighbours."""
    k = int(np.searchsorted(values, value))
    for i in (k - 1, k):
        if 0 <= i < len(values):
            t = values[i]
            if value == t:
                return i, "on"
            if value == np.nextafter(t, np.float32(-np.inf)):
                return i, "just below"
            if value == np.nextafter(t, np.float32(np.inf)):
                return i, "just above"
    return None


def _culprit(row: np.ndarray, thresholds: Mapping[int, np.ndarray], agrees) -> tuple[int, float, str] | None:
    """The feature of a failing row whose sitting on a split threshold explains the disagreement:
    moving it half way to the next threshold (or by 1) makes graph and native agree."""
    for f, values in sorted(thresholds.items()):
        if not 0 <= f < len(row) or not np.isfinite(row[f]):
            continue
        hit = _where_on(np.float32(row[f]), values)
        if hit is None:
            continue
        i, where = hit
        t = float(values[i])
        if where == "just below":
            other = float(values[i - 1]) if i > 0 else t - 1.0
        else:
            other = float(values[i + 1]) if i + 1 < len(values) else t + 1.0
        moved = row.copy()
        moved[f] = np.float32((t + other) / 2)
        if agrees(moved):
            return f, t, where
    return None


def check_parity(
    native: Any,
    graph: ConvertedGraph | onnx.ModelProto,
    probes: np.ndarray,
    family: Family | str,
    *,
    feature_names: Sequence[str] | None = None,
) -> ParityReport:
    """Compare the graph (ONNX Runtime, CPU, 1 thread) with the native model on ``probes``.

    ``feature_names`` (the graph's column order) name the feature a refusal blames."""
    family = resolve(family)
    tolerance = tolerance_for(family)
    model = graph.model if isinstance(graph, ConvertedGraph) else graph
    probes = np.ascontiguousarray(probes, dtype=np.float32)
    n = int(probes.shape[0]) if probes.ndim else 0
    if n == 0:
        return _fail("no probe rows", tolerance, 0)
    adapter = adapter_of(native, family)
    try:
        session = _session(model)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: probes})[0]
    except Exception as exc:  # ORT raises its own types for refused graphs and bad inputs
        return _fail(f"ONNX Runtime could not run the graph: {type(exc).__name__}: {exc}", tolerance, n)
    try:
        want = adapter.predict(native, probes.astype(np.float64))
    except Exception as exc:  # the native library's own errors
        return _fail(f"native prediction failed: {type(exc).__name__}: {exc}", tolerance, n)
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    want = want.reshape(n, -1) if want.ndim == 1 else want
    if got.shape != want.shape:
        return _fail(f"shape mismatch: graph {got.shape}, native {want.shape}", tolerance, n)
    finite_want = np.where(np.isfinite(want), np.abs(want), 0.0)
    scale = np.maximum(finite_want.max(axis=0), SCALE_FLOOR)
    rel = _difference(got, want) / scale
    max_abs, max_rel = float(_difference(got, want).max()), float(rel.max())
    if max_rel <= tolerance:
        return ParityReport(max_abs, max_rel, tolerance, True, n, f"max relative error {max_rel:.3g} <= {tolerance:g}")
    row, col = np.unravel_index(int(np.argmax(rel)), rel.shape)
    reason = (
        f"max relative error {max_rel:.3g} > {tolerance:g} (scale {scale[col]:.3g}) at probe row {row}, "
        f"column {col}: graph {got[row, col]!r}, native {want[row, col]!r}"
    )
    if probes.ndim == 2:

        def agrees(moved: np.ndarray) -> bool:
            x = moved[None, :]
            g = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], dtype=np.float64).reshape(1, -1)
            w = np.asarray(adapter.predict(native, x.astype(np.float64)), dtype=np.float64).reshape(1, -1)
            return bool((_difference(g, w) / scale <= tolerance).all())

        try:
            found = _culprit(probes[row], tree_thresholds(model), agrees)
        except Exception:  # a diagnosis must not turn a report into an exception
            found = None
        if found is not None:
            f, t, where = found
            name = (
                f"{feature_names[f]!r} (column {f})"
                if feature_names is not None and f < len(feature_names)
                else f"column {f}"
            )
            reason += (
                f"; feature {name} = {float(probes[row, f])!r} sits {where} split threshold {t!r} "
                "(moving it off the threshold removes the disagreement)"
            )
    return _fail(reason, tolerance, n, max_abs, max_rel)


def _difference(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want|, 0 where both are NaN, inf where only one is."""
    both_nan = np.isnan(got) & np.isnan(want)
    diff = np.where(both_nan, 0.0, np.abs(got - want))
    diff[np.isnan(diff)] = np.inf
    return diff
