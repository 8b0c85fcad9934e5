"""The parity gate: every converted graph against its native model, on probe rows.

``probe_rows`` draws deterministic float32 rows at realistic scales, zeros, extremes,
NaN rows (only for families whose native model routes NaN itself) and rows placed exactly
on the split thresholds of the graph's trees (``tree_thresholds``), and just above them,
where a float32 graph is most likely to take another branch than a float64 native model.

``check_parity`` runs the graph in ONNX Runtime (CPU, one thread) and the adapter's ``predict``
on the same rows. The error is measured per output column relative to that column's
scale, ``max_i |native[i, k]|`` over the probes (floored at ``SCALE_FLOOR``), so that a
model whose outputs are all near zero is judged against its own magnitude and a
two-column NGBoost output is not judged by the larger column. A failed gate is a
report with ``passed=False`` and a reason, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def probe_rows(
    family: Family | str,
    n_features: int,
    rng_seed: int = 0,
    seq_len: int | None = None,
    thresholds: Mapping[int, np.ndarray] | None = None,
    feature_scale: Any = None,
    max_threshold_rows: int = 512,
) -> np.ndarray:
    """Deterministic float32 probes, [N, F] (or [N, T, F] for sequential families).

    Blocks: 64 Gaussian rows and 16 heavy-tailed (Student t, 3 dof) rows at
    ``feature_scale`` (per feature or scalar; default 1), 8 rows at ±10x scale, 2 all-zero
    rows; with ``family.handles_nan`` an all-NaN row, one NaN per feature and 16 rows with
    20 % NaN; with ``thresholds`` (see ``tree_thresholds``) rows with one feature exactly
    on a finite threshold and rows just above it (up to ``max_threshold_rows``, evenly sampled).
    """
    family = resolve(family)
    rng = np.random.default_rng(rng_seed)
    scale = _scale(feature_scale, n_features)
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
        # Finite rows only: a threshold at float32 max (LightGBM's "all finite values go
        # left" split) has +inf just above it, and non-finite inputs are refused upstream.
        pairs = [
            (f, v)
            for f, vals in sorted(thresholds.items())
            if 0 <= f < n_features
            for v in vals
            if np.isfinite(np.nextafter(np.float32(v), np.float32(np.inf)))
        ]
        pairs = (
            [
                pairs[i]
                for i in np.unique(np.linspace(0, len(pairs) - 1, min(len(pairs), max_threshold_rows // 2)).astype(int))
            ]
            if pairs
            else []
        )
        if pairs:
            base = rng.normal(size=(2 * len(pairs), n_features)) * scale
            for r, (f, v) in enumerate(pairs):
                v32 = np.float32(v)
                base[2 * r, f] = v32
                base[2 * r + 1, f] = np.nextafter(v32, np.float32(np.inf))
            blocks.append(base)
    rows = np.vstack(blocks).astype(np.float32)
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


def check_parity(
    native: Any, graph: ConvertedGraph | onnx.ModelProto, probes: np.ndarray, family: Family | str
) -> ParityReport:
    """Compare the graph (ONNX Runtime, CPU, 1 thread) with the native model on ``probes``."""
    family = resolve(family)
    tolerance = tolerance_for(family)
    model = graph.model if isinstance(graph, ConvertedGraph) else graph
    probes = np.ascontiguousarray(probes, dtype=np.float32)
    n = int(probes.shape[0]) if probes.ndim else 0
    if n == 0:
        return _fail("no probe rows", tolerance, 0)
    try:
        got = _session(model).run([OUTPUT_NAME], {INPUT_NAME: probes})[0]
    except Exception as exc:  # ORT raises its own types for refused graphs and bad inputs
        return _fail(f"ONNX Runtime could not run the graph: {type(exc).__name__}: {exc}", tolerance, n)
    try:
        want = adapter_of(native, family).predict(native, probes.astype(np.float64))
    except Exception as exc:  # the native library's own errors
        return _fail(f"native prediction failed: {type(exc).__name__}: {exc}", tolerance, n)
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    want = want.reshape(n, -1) if want.ndim == 1 else want
    if got.shape != want.shape:
        return _fail(f"shape mismatch: graph {got.shape}, native {want.shape}", tolerance, n)
    both_nan = np.isnan(got) & np.isnan(want)
    diff = np.where(both_nan, 0.0, np.abs(got - want))
    diff[np.isnan(diff)] = np.inf  # NaN on one side only
    finite_want = np.where(np.isfinite(want), np.abs(want), 0.0)
    scale = np.maximum(finite_want.max(axis=0), SCALE_FLOOR)
    rel = diff / scale
    max_abs, max_rel = float(diff.max()), float(rel.max())
    if max_rel <= tolerance:
        return ParityReport(max_abs, max_rel, tolerance, True, n, f"max relative error {max_rel:.3g} <= {tolerance:g}")
    row, col = np.unravel_index(int(np.argmax(rel)), rel.shape)
    return _fail(
        f"max relative error {max_rel:.3g} > {tolerance:g} (scale {scale[col]:.3g}) at probe row {row}, "
        f"column {col}: graph {got[row, col]!r}, native {want[row, col]!r}",
        tolerance,
        n,
        max_abs,
        max_rel,
    )
