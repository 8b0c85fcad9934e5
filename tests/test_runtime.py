"""One runtime behind every entry point (issue #17): each verified graph served by its fastest
backend per batch size, the choice cached on disk, results equal to the native library."""

from __future__ import annotations

import numpy as np
import pytest

from fastinfer import families as fam
from fastinfer import runtime
from fastinfer.engine import InferenceEngine
from fastinfer.errors import InferenceError
from fastinfer.loader import ModelLoader

from .conftest import ALL_FAMILIES, TARGET

SEQ_LEN = 20


def _rows(model, X, n: int) -> np.ndarray:
    """n rows of the synthetic features in the model's order (windows for sequence models)."""
    from fastinfer import testing

    ordered = X[list(model.feature_order)].to_numpy()
    reps = int(np.ceil((n + SEQ_LEN) / len(ordered)))
    ordered = np.tile(ordered, (reps, 1))
    if model.family.sequential:
        return testing.windows(ordered, SEQ_LEN)[:n]
    return ordered[:n]


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("n_rows", [1, 4096])
def test_engine_predict_equals_native_at_every_batch_size(compiled_run, synthetic, family, n_rows):
    """Whatever backend the runtime picks for this batch size, engine.predict gives the native
    library's predictions within the family's parity tolerance (the same bound the converter's
    gate holds the graph to: relative to the output column's scale)."""
    X, _ = synthetic
    served = ModelLoader(compiled_run).load(TARGET, family)
    native = ModelLoader(compiled_run, prefer_onnx=False).load(TARGET, family)
    rows = _rows(served, X, n_rows)
    engine = InferenceEngine()
    call = engine.predict_sequential if served.family.category is fam.Category.SEQUENTIAL else engine.predict
    got, want = call(served, rows, family), call(native, rows, family)
    assert got.shape == want.shape and got.dtype == np.float64
    scale = np.maximum(np.abs(want).reshape(len(want), -1).max(axis=0), 1e-12)
    err = (np.abs(got - want).reshape(len(want), -1) / scale).max()
    assert err <= served.family.adapter.tolerance, (family, n_rows, err)
    if served.backend == "onnx":
        choice = served.runtime.choices[runtime.size_class(n_rows)]
        assert choice.backend in runtime.BACKENDS


def test_forest_backends_are_bit_identical_to_onnx_runtime(compiled_run, synthetic):
    X, _ = synthetic
    for family in ("lightgbm", "xgboost", "catboost", "random_forest", "extra_trees"):
        model = ModelLoader(compiled_run).load(TARGET, family)
        rt = model.runtime
        assert rt._forest_kernel() is not None, (family, rt.forest_reason)
        rows = _rows(model, X, 700).astype(np.float32)
        reference = rt._runner(runtime.ORT_LATENCY)(rows)
        for mode in rt._forest.modes:
            got = rt._runner(f"forest:{mode}")(rows)
            np.testing.assert_array_equal(got.reshape(reference.shape), reference, err_msg=f"{family} {mode}")


def test_choice_is_calibrated_once_cached_on_disk_and_reused(compiled_run, synthetic, tmp_path, monkeypatch):
    X, _ = synthetic
    cache = runtime.ChoiceCache(tmp_path)
    monkeypatch.setattr(runtime, "_DEFAULT_CACHE", cache)
    model = ModelLoader(compiled_run).load(TARGET, "xgboost")
    rows = _rows(model, X, 512)
    model.predict(rows)
    choice = model.runtime.choices[512]
    assert set(choice.timings_us) >= {"onnxruntime", "forest:node"} and choice.backend == min(
        choice.timings_us, key=choice.timings_us.get
    )
    assert cache.path.is_file()
    calls = []
    monkeypatch.setattr(runtime, "median_us", lambda *a, **k: calls.append(a) or 1.0)
    again = ModelLoader(compiled_run).load(TARGET, "xgboost")
    monkeypatch.setattr(runtime, "_DEFAULT_CACHE", runtime.ChoiceCache(tmp_path))  # a new process reads the file
    again = ModelLoader(compiled_run).load(TARGET, "xgboost")
    np.testing.assert_array_equal(again.predict(rows), model.predict(rows))
    assert not calls and again.runtime.choices[512].backend == choice.backend
    (tmp_path / runtime.CACHE_FILE).write_text("{not json")  # a damaged cache costs a calibration, nothing else
    monkeypatch.setattr(runtime, "_DEFAULT_CACHE", runtime.ChoiceCache(tmp_path))
    third = ModelLoader(compiled_run).load(TARGET, "xgboost")
    np.testing.assert_array_equal(third.predict(rows), model.predict(rows))
    assert calls


def test_forest_kernel_setting_on_and_off(compiled_run, synthetic):
    from dataclasses import replace

    from fastinfer.config import ExecutorSettings, Settings

    X, _ = synthetic
    for mode, prefix in (("on", "forest:"), ("off", "onnxruntime")):
        settings = replace(Settings(), executor=replace(ExecutorSettings(), forest_kernel=mode))
        model = ModelLoader(compiled_run, settings=settings).load(TARGET, "lightgbm")
        model.predict(_rows(model, X, 64))
        assert model.runtime.choices[64].backend.startswith(prefix)


def test_named_inputs_are_placed_by_name_once_per_column_set(compiled_run, synthetic):
    from fastinfer.features import FeatureVector

    X, _ = synthetic
    model = ModelLoader(compiled_run).load(TARGET, "lightgbm")
    ordered = X[list(model.feature_order)].iloc[:8]
    want = model.predict(ordered.to_numpy())
    shuffled = ordered[sorted(ordered.columns, reverse=True)]
    np.testing.assert_array_equal(model.predict(shuffled), want)
    assert len(model._placements) == 1
    np.testing.assert_array_equal(model.predict(shuffled), want)  # the cached placement
    vector = FeatureVector(shuffled.to_numpy(), shuffled.columns)
    np.testing.assert_array_equal(model.predict(vector), want)
    np.testing.assert_array_equal(InferenceEngine().predict(model, vector[:1], "lightgbm"), want[:1])
    wider = FeatureVector(np.hstack([shuffled.to_numpy(), np.ones((8, 1))]), [*shuffled.columns, "other"])
    np.testing.assert_array_equal(model.predict(wider), want)  # a run-wide vector: this model's subset
    with pytest.raises(InferenceError, match="missing feature"):
        model.predict(FeatureVector(shuffled.to_numpy()[:, 1:], shuffled.columns[1:]))
    with pytest.raises(InferenceError, match="in the model's feature_order"):
        model.predict(shuffled.to_numpy()[:, 1:])  # unnamed: only its width can be checked
