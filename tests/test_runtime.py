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


def test_screen_makes_the_float32_copy_and_counts_what_float32_cannot_hold():
    """One pass gives the graph's float32 rows and the count numpy's astype + isfinite would give:
    NaN, ±inf and float64 values beyond float32's range (which become inf there)."""
    from fastinfer.kernels.screen import float32_screened

    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 7)) * 1e3
    X[[1, 2, 3, 4, 5], [0, 1, 2, 3, 4]] = [np.nan, np.inf, -np.inf, 1e39, -3.5e38]
    X[6, 5] = 3.4e38  # fits in float32
    with np.errstate(over="ignore"):
        cases = (X, np.asfortranarray(X), X[:, ::2], X.reshape(5, 10, 7), X.astype(np.float32), X[:0])
    for given in cases:
        with np.errstate(over="ignore"):
            want = np.asarray(given).astype(np.float32)
        got, bad = float32_screened(given)
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert bad == int((~np.isfinite(want)).sum())
    same = cases[4]
    assert float32_screened(same)[0] is same  # already the graph's dtype: no copy
    ints = np.arange(12, dtype=np.int64).reshape(3, 4)
    got, bad = float32_screened(ints)
    assert bad == 0 and np.array_equal(got, ints.astype(np.float32))


def _session(graph):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda X: session.run(None, {name: np.ascontiguousarray(X, dtype=np.float32)})[0]


def _linear_graph(coefficients, intercepts, targets: int, post_transform: str = "NONE"):
    from onnx import TensorProto, helper

    n_features = len(coefficients) // targets
    node = helper.make_node(
        "LinearRegressor",
        ["features"],
        ["variable"],
        domain="ai.onnx.ml",
        coefficients=list(coefficients),
        intercepts=list(intercepts),
        targets=targets,
        post_transform=post_transform,
    )
    graph = helper.make_graph(
        [node],
        "linear",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, targets])],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)], ir_version=9
    )


def test_linear_backend_serves_plain_linear_graphs_and_agrees_with_onnx_runtime(compiled_run, synthetic):
    """A run's Ridge (one LinearRegressor, then a Reshape) gets the BLAS product as a candidate,
    equal to ONNX Runtime to float32 rounding and of the same shape; so does a two-target
    LinearRegressor. A post-transform or any other graph is not offered the backend."""
    X, _ = synthetic
    ridge = ModelLoader(compiled_run).load(TARGET, "ridge")
    assert ridge.runtime._linear is not None
    rows = _rows(ridge, X, 4096).astype(np.float32)
    got, want = ridge.runtime._runner(runtime.LINEAR)(rows), ridge.runtime.run_latency(rows)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=runtime.AGREEMENT_RTOL * np.abs(want).max())
    ridge.predict(rows)
    assert runtime.LINEAR in ridge.runtime.choices[4096].timings_us
    assert ModelLoader(compiled_run).load(TARGET, "lightgbm").runtime._linear is None

    rng = np.random.default_rng(5)
    coefficients, intercepts = rng.standard_normal(2 * 9), rng.standard_normal(2)
    graph = _linear_graph(coefficients, intercepts, targets=2)
    rt = runtime.GraphRuntime(graph, "two-targets", _session(graph), lambda: _session(graph))
    rows = rng.standard_normal((300, 9)).astype(np.float32)
    got, want = rt._runner(runtime.LINEAR)(rows), rt.run_latency(rows)
    assert got.shape == want.shape == (300, 2)
    np.testing.assert_allclose(got, want, rtol=0, atol=runtime.AGREEMENT_RTOL * np.abs(want).max())
    assert runtime.linear_weights(_linear_graph(coefficients, intercepts, 2, "SOFTMAX")) is None


def test_a_backend_that_disagrees_with_onnx_runtime_is_never_chosen(
    compiled_run, synthetic, caplog, tmp_path, monkeypatch
):
    X, _ = synthetic
    monkeypatch.setattr(runtime, "_DEFAULT_CACHE", runtime.ChoiceCache(tmp_path))  # no choice made before
    ridge = ModelLoader(compiled_run).load(TARGET, "ridge")
    rows = _rows(ridge, X, 700)
    honest = ridge.runtime._runner(runtime.LINEAR)
    ridge.runtime._run[runtime.LINEAR] = lambda R: honest(R) * (1 + 1e-3)  # fast and wrong
    with caplog.at_level("WARNING", logger="fastinfer.runtime"):
        ridge.predict(rows)
    choice = ridge.runtime.choices[runtime.size_class(700)]
    assert runtime.LINEAR not in choice.timings_us and choice.backend != runtime.LINEAR
    assert "backend linear disagrees with ONNX Runtime here" in caplog.text


def test_a_cached_choice_made_without_a_candidate_is_made_again(compiled_run, synthetic, tmp_path, monkeypatch):
    """A choice cached before a backend existed (an older fastinfer, the same version string)
    is calibrated again, so a new, faster backend is not ignored for ever."""
    X, _ = synthetic
    cache = runtime.ChoiceCache(tmp_path)
    monkeypatch.setattr(runtime, "_DEFAULT_CACHE", cache)
    ridge = ModelLoader(compiled_run).load(TARGET, "ridge")
    cache.put(ridge.runtime.sha256, 512, runtime.Choice(runtime.ORT_LATENCY, 512, {runtime.ORT_LATENCY: 1.0}))
    ridge.predict(_rows(ridge, X, 512))
    assert runtime.LINEAR in ridge.runtime.choices[512].timings_us
    assert runtime.LINEAR in runtime.ChoiceCache(tmp_path).get(ridge.runtime.sha256, 512).timings_us


@pytest.mark.parametrize(
    "damage",
    [
        {"backend": "onnxruntime", "rows": "x"},
        {"backend": "onnxruntime", "rows": 1, "timings_us": {"onnxruntime": float("nan")}},
        {"backend": "onnxruntime", "rows": 1, "timings_us": ["a"]},
        {"backend": "onnxruntime", "rows": 1, "refused": ["rm -rf"]},
        {"backend": "gpu-magic", "rows": 1},
        ["not", "a", "choice"],
        {"rows": 1},
    ],
)
def test_a_damaged_cache_entry_costs_a_calibration_and_nothing_else(
    compiled_run, synthetic, tmp_path, monkeypatch, damage
):
    """Every entry is checked on reading (JSON allows NaN, any type anywhere): a bad one is
    dropped, predict works, and the cache is written back clean."""
    import json

    from ._hardening import hostile

    hostile("runtime cache", f"entry {json.dumps(damage)[:40]}")
    X, _ = synthetic
    model = ModelLoader(compiled_run).load(TARGET, "xgboost")
    key = f"{model.runtime.sha256}:{runtime.machine_key()}"
    (tmp_path / runtime.CACHE_FILE).write_text(json.dumps({key: {"512": damage}, "other": {"64": damage}}))
    cache = runtime.ChoiceCache(tmp_path)
    monkeypatch.setattr(runtime, "_DEFAULT_CACHE", cache)
    assert cache.get(model.runtime.sha256, 512) is None
    model = ModelLoader(compiled_run).load(TARGET, "xgboost")
    rows = _rows(model, X, 512)
    np.testing.assert_array_equal(model.predict(rows), ModelLoader(compiled_run).load(TARGET, "xgboost").predict(rows))
    written = json.loads((tmp_path / runtime.CACHE_FILE).read_text())
    assert list(written) == [key] and runtime.Choice.from_json(written[key]["512"]) is not None


def test_a_refused_candidate_is_remembered_and_a_lone_one_is_checked_too(
    compiled_run, synthetic, tmp_path, monkeypatch
):
    """A candidate refused for disagreeing is cached as considered (a new process does not
    calibrate again); with the forest kernel forced on and every mode disagreeing, the 1-thread
    ONNX Runtime session serves."""
    from dataclasses import replace

    from fastinfer.config import ExecutorSettings, Settings

    X, _ = synthetic
    monkeypatch.setattr(runtime, "_DEFAULT_CACHE", runtime.ChoiceCache(tmp_path))
    monkeypatch.setattr(runtime, "forest_agrees", lambda a, b: False)  # as if the kernel had a bug
    model = ModelLoader(compiled_run).load(TARGET, "lightgbm")
    rows = _rows(model, X, 64)
    want = model.runtime.run_latency(rows.astype(np.float32)).reshape(-1)
    np.testing.assert_array_equal(model.predict(rows), want)
    choice = model.runtime.choices[64]
    assert choice.backend == runtime.ORT_LATENCY and choice.refused and choice.refused[0].startswith("forest:")
    calls = []
    monkeypatch.setattr(runtime, "median_us", lambda *a, **k: calls.append(a) or 1.0)
    again = ModelLoader(compiled_run).load(TARGET, "lightgbm")
    again.predict(rows)
    assert not calls and again.runtime.choices[64].refused == choice.refused

    settings = replace(Settings(), executor=replace(ExecutorSettings(), forest_kernel="on"))
    forced = ModelLoader(compiled_run, settings=settings).load(TARGET, "lightgbm")
    np.testing.assert_array_equal(forced.predict(rows[:1]), want[:1])
    assert forced.runtime.choices[1].backend == runtime.ORT_LATENCY


def test_the_plan_never_serves_a_forest_kernel_that_disagrees(market_run, monkeypatch):
    from dataclasses import replace

    from fastinfer import executor
    from fastinfer.config import Settings
    from fastinfer.predictor import LivePredictor

    settings = replace(Settings(), executor=replace(Settings().executor, forest_kernel="on"))
    monkeypatch.setattr(executor, "forest_agrees", lambda a, b: False)
    live = LivePredictor(market_run, ["A"], 1440.0, settings=settings)
    trees = [c for (_, family), c in live.plan.choices.items() if family in ("lightgbm", "xgboost")]
    assert trees and all(c.engine == "onnxruntime" and "disagreed" in c.reason for c in trees)
    assert not live.plan.forest_kernels


def test_odd_dtypes_and_sequence_windows_are_screened_with_typed_errors(compiled_run, synthetic):
    X, _ = synthetic
    for family in ("ridge", "lightgbm"):
        for prefer_onnx in (True, False):
            model = ModelLoader(compiled_run, prefer_onnx=prefer_onnx).load(TARGET, family)
            rows = _rows(model, X, 8)
            want = model.predict(rows)
            for odd in (rows.astype(">f8"), rows.astype(np.float16), rows.astype(np.int16)):
                got = model.predict(odd)
                assert got.shape == want.shape and np.isfinite(got).all(), (family, odd.dtype)
            np.testing.assert_allclose(model.predict(rows.astype(">f8")), want, rtol=0, atol=0)
    lstm = ModelLoader(compiled_run).load(TARGET, "lstm")
    windows = _rows(lstm, X, 3).copy()
    windows[1, 2, 4] = np.nan
    with pytest.raises(
        InferenceError, match=rf"row 1 feature '{lstm.feature_order[4]}' at time step 2 is np.float(32|64)\(nan\)"
    ):
        lstm.predict(windows)


def test_single_thread_blas_restores_the_thread_count_under_concurrent_callers():
    """BLAS is on one thread inside a block; four threads entering and leaving at once leave it
    on its own count (the lock: unlocked, one caller could save another's 1 and restore it).
    Counts are read on the main thread: with two OpenBLAS copies loaded (numpy's and scipy's),
    OpenBLAS 0.3.31 reports the default count to a worker thread whatever was set."""
    import threading

    probe = runtime.single_thread_blas().libraries

    def blas_threads():
        return [lib.num_threads for lib in probe]

    before = blas_threads()
    with runtime.single_thread_blas():
        assert blas_threads() == [1] * len(probe)
    blocks = [runtime.single_thread_blas() for _ in range(4)]
    entered = []

    def use(block):
        for _ in range(50):
            with block:
                entered.append(1)

    threads = [threading.Thread(target=use, args=(b,)) for b in blocks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(entered) == 200 and blas_threads() == before
