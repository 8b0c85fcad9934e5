"""LivePredictor on replayed real bars against the slow reference path; fusion; fallback; intervals."""

from __future__ import annotations

import json
import logging
import tracemalloc
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from fastinfer import executor
from fastinfer.buffers import timestamp_ns
from fastinfer.config import Settings
from fastinfer.converters import parity
from fastinfer.errors import InferenceError, ModelLoadError, StateError
from fastinfer.features import FeatureBuilder, ohlcv_arrays
from fastinfer.loader import ModelLoader
from fastinfer.predictor import LivePredictor, point_column

from ._hardening import hostile
from .conftest import MARKET_FAMILIES, MARKET_TRAIN_BARS

DAILY = 1440.0


def _bars(df):
    a = ohlcv_arrays(df)
    return a["open"], a["high"], a["low"], a["close"], a["volume"]


def _replay(predictor, frames):
    """Feed every bar of each symbol's frame (aligned by position); yield the output after each bar."""
    cols = [_bars(f) for f in frames]
    for t in range(len(frames[0])):
        bar = [np.array([c[k][t] for c in cols]) for k in range(5)]
        yield t, predictor.on_bar(*bar, timestamp=frames[0].index[t])


def test_replay_equals_slow_reference_path(market_run, goog):
    frames = [goog.iloc[MARKET_TRAIN_BARS - 50 : MARKET_TRAIN_BARS + 150], goog.iloc[1500:1700]]
    symbols = ["GOOG", "GOOG_LATER"]
    predictor = LivePredictor(market_run, symbols, DAILY)
    assert {m.backend for m in predictor.models} == {"onnx"}
    native = ModelLoader(market_run, prefer_onnx=False)
    refs = {(m.target, m.family.name): native.load(m.target, m.family.name) for m in predictor.models}
    full = [FeatureBuilder(predictor.union).frame(f) for f in frames]
    got = {key: [] for key in refs}
    inputs = {key: [] for key in refs}  # reference rows, predicted in one batch per model at the end
    for t, out in _replay(predictor, frames):
        for s, frame in enumerate(full):
            row = frame.iloc[t]
            for (target, family), ref in refs.items():
                j = predictor.column_index[(target, family, "prediction")]
                if ref.family.sequential:
                    history = frame.iloc[: t + 1].dropna().to_numpy(dtype=np.float32)
                    T = ref.spec.sequence_length
                    if len(history) < T:  # warm-up: NaN until seq_warmup_bars (capped at T) complete rows
                        assert np.isnan(out[s, j]), (family, t)
                        continue
                    x = history[-T:][:, [predictor.union.index(f) for f in ref.feature_order]][None]
                else:
                    if row.isna().any():
                        assert np.isnan(out[s, j]), (family, t)
                        continue
                    x = row[list(ref.feature_order)].to_numpy(dtype=np.float32)[None]
                inputs[(target, family)].append(x.astype(np.float64))
                got[(target, family)].append(out[s, j])
    for key, rows in inputs.items():
        assert len(rows) > 100, key
        w, g = refs[key].predict(np.concatenate(rows)), np.asarray(got[key], dtype=np.float64)
        scale = np.abs(w).max()
        assert np.max(np.abs(g - w)) <= parity.tolerance_for(key[1]) * scale, key


def test_spec_dict_and_fallback(market_run, goog):
    predictor = LivePredictor(market_run, ["GOOG"], DAILY)
    target = predictor.models[0].target
    bars = goog.iloc[1000:1100]
    a = _bars(bars)
    predictor.on_bar(*(np.array([x[0]]) for x in a))
    assert predictor.predict_with_fallback(target) is None  # nothing warmed up
    assert all(reason.startswith("inputs not ready") for _, reason in predictor.fallback_log[target])
    for t in range(1, len(bars)):
        predictor.on_bar(*(np.array([x[t]]) for x in a))
    view = predictor.as_dict()
    assert set(view) == {"1d", "5d", "10d"} and set(view["1d"]) == set(MARKET_FAMILIES)
    assert predictor.predict_with_fallback(target) == view[target[len("fwd_ret_") :]]["lightgbm"]
    value = predictor.predict_with_fallback(target, ["catboost", "ridge"])
    assert value == view[target[len("fwd_ret_") :]]["ridge"]
    assert predictor.fallback_log[target] == [("catboost", "not in the run")]
    assert predictor.latency.count == len(bars) and predictor.latency.summary()["p50_us"] > 0


def test_interval_mismatch(market_run):
    with pytest.raises(ModelLoadError, match=r"interval mismatch: trained on 1440-minute bars, data is 60-minute"):
        LivePredictor(market_run, ["GOOG"], 60.0)
    settings = Settings()
    settings = replace(settings, predictor=replace(settings.predictor, on_interval_mismatch="skip"))
    with pytest.raises(ModelLoadError, match="no usable model"):
        LivePredictor(market_run, ["GOOG"], 60.0, settings=settings)


def test_fused_graph_equals_each_models_own_graph(market_run):
    loader = ModelLoader(market_run)
    models = [m for m in loader.load_all().values()]
    predictor = LivePredictor(market_run, ["A", "B", "C"], DAILY, loader=loader)
    plan = predictor.plan
    rng = np.random.default_rng(3)
    plan.tabular_input[:] = rng.normal(size=plan.tabular_input.shape) * 10
    for arr in plan.sequence_inputs.values():
        arr[:] = rng.normal(size=arr.shape) * 10
    out = plan.run()
    for m, sl in zip(plan.models, plan.model_slices):
        cols = [predictor.union.index(f) for f in m.feature_order]
        source = plan.sequence_inputs[m.spec.sequence_length] if m.family.sequential else plan.tabular_input
        own = m.run(np.ascontiguousarray(source[..., cols]))
        np.testing.assert_array_equal(out[:, sl], own, err_msg=f"{m.target}/{m.family.name}")
    assert set(plan.fused_graphs) == {"fused-tabular", "fused-seq10"}
    assert len(models) == 15


def test_native_fallback_runs_beside_the_fused_graph(market_run, goog):
    onnx_pred = LivePredictor(market_run, ["GOOG"], DAILY, families=["lightgbm", "ridge"])
    native_loader = ModelLoader(market_run, prefer_onnx=False)
    mixed_loader = ModelLoader(market_run)
    native_loader.load_all(families=["ridge"])
    for key, model in native_loader._cache.items():  # ridge served natively, lightgbm from ONNX
        mixed_loader._cache[key] = model
    mixed = LivePredictor(market_run, ["GOOG"], DAILY, families=["lightgbm", "ridge"], loader=mixed_loader)
    assert sorted(m.backend for m in mixed.models) == ["native"] * 3 + ["onnx"] * 3
    for a, b in zip(_replay(onnx_pred, [goog.iloc[1000:1080]]), _replay(mixed, [goog.iloc[1000:1080]])):
        np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-7)


def test_hot_path_allocates_nothing(market_run, goog):
    predictor = LivePredictor(market_run, ["A", "B"], DAILY)
    a = _bars(goog.iloc[:1200])
    bars = [[np.ascontiguousarray(np.array([x[t], x[t] * 1.01])) for x in a] for t in range(1200)]
    for t in range(100):
        predictor.on_bar(*bars[t])
    tracemalloc.start()
    for t in range(100, 200):  # settle tracemalloc's own bookkeeping
        predictor.on_bar(*bars[t])
    before = tracemalloc.take_snapshot()
    for t in range(200, 1200):
        predictor.on_bar(*bars[t])
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = [s for s in after.compare_to(before, "filename") if s.size_diff > 0]
    # A counter that replaces its int/float object (bars, latency totals) shows as one object
    # of the same size at any bar count; anything allocated per bar would be >= 1,000 objects.
    assert sum(s.count_diff for s in growth) < 10, growth[:5]
    assert sum(s.size_diff for s in growth) < 1024, growth[:5]


def test_provider_selection():
    wanted = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert executor.select_providers(wanted, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert executor.select_providers(wanted, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert executor.select_providers(("CUDAExecutionProvider",), ["CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def _cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs onnxruntime-gpu and a CUDA device (none on this machine)")
def test_cuda_provider_serves_the_fused_graph(market_run, goog):
    cpu = LivePredictor(market_run, ["GOOG"], DAILY)
    settings = Settings()
    gpu = LivePredictor(
        market_run,
        ["GOOG"],
        DAILY,
        settings=replace(
            settings, executor=replace(settings.executor, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
        ),
    )
    assert all(b.session.get_providers()[0] == "CUDAExecutionProvider" for _, b, _ in gpu.plan._groups)
    for (_, a), (_, b) in zip(_replay(cpu, [goog.iloc[1000:1100]]), _replay(gpu, [goog.iloc[1000:1100]])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _with_forest(mode: str) -> Settings:
    settings = Settings()
    return replace(settings, executor=replace(settings.executor, forest_kernel=mode))


def test_forest_kernel_serves_trees_beside_the_fused_graph(market_run, goog):
    off = LivePredictor(market_run, ["A", "B"], DAILY, settings=_with_forest("off"))
    on = LivePredictor(market_run, ["A", "B"], DAILY, settings=_with_forest("on"))
    served = {key: c.engine for key, c in on.plan.choices.items()}
    assert {f for (_, f), e in served.items() if e.startswith("forest:")} >= {"xgboost"}, on.plan.choices
    assert {f for (_, f), e in served.items() if e == "onnxruntime"} >= {"ridge", "mlp", "lstm"}
    assert all(not c.engine.startswith("forest") for c in off.plan.choices.values())
    frames = [goog.iloc[1000:1090], goog.iloc[1200:1290]]
    for (_, a), (_, b) in zip(_replay(off, frames), _replay(on, frames)):
        np.testing.assert_array_equal(a, b)  # the kernel is bit-identical to ORT


def test_forest_kernel_auto_records_its_calibration(market_run):
    auto = LivePredictor(market_run, ["A"], DAILY, settings=_with_forest("auto"))
    calibrated = [c for c in auto.plan.choices.values() if c.timings_us]
    assert calibrated and all(c.engine.startswith(("forest:", "onnxruntime")) for c in calibrated)
    for c in calibrated:
        fastest = min(c.timings_us, key=c.timings_us.get)
        assert c.engine == fastest.partition("x")[0], c  # a forest variant's name carries its thread count
        assert "onnxruntime" in c.timings_us and any(k.startswith("forest:node") for k in c.timings_us)


def test_many_symbols_run_tree_batches_on_the_batch_threads(market_run):
    from fastinfer.executor import PARALLEL_BATCH

    settings = replace(Settings(), executor=replace(Settings().executor, forest_kernel="on", batch_threads=2))
    wide = LivePredictor(market_run, [f"S{i}" for i in range(PARALLEL_BATCH)], DAILY, settings=settings)
    one = LivePredictor(market_run, ["S0"], DAILY, settings=settings)
    assert wide.plan.threads == 2 and one.plan.threads == 1
    assert all(c.threads == 1 for c in one.plan.choices.values())
    assert all(c.threads in (1, 2) for c in wide.plan.choices.values() if c.engine.startswith("forest"))


# ---------------------------------------------------------------- bar time: a refused bar changes nothing


def _stamped(frame):
    """[(open, high, low, close, volume, timestamp)] for two symbols (the second at 1.01× the first)."""
    a = _bars(frame)
    return [(*[np.array([x[t], x[t] * 1.01]) for x in a], frame.index[t]) for t in range(len(frame))]


def test_refused_timestamp_changes_nothing_and_the_next_bar_is_as_if_never_sent(market_run, goog):
    bars = _stamped(goog.iloc[1000:1100])  # ret_60: the LSTM's first row at bar 60, warm at 70
    predictor = LivePredictor(market_run, ["A", "B"], DAILY)
    twin = LivePredictor(market_run, ["A", "B"], DAILY)  # never sees the refused bars
    assert list(predictor.buffers) == [10]  # the LSTM's sequence buffer is in the way
    lstm = [j for j, (_, family, _) in enumerate(predictor.columns) if family == "lstm"]
    bad_times = {
        72: bars[71][5] - pd.Timedelta(days=1),  # older than the previous bar
        73: bars[30][5],  # much older
        74: "2020-01-01",  # not a time
        75: 10**30,  # past int64 ns
        76: np.datetime64("3000-01-01"),  # numpy would wrap it to 1830
        77: pd.NaT,
        90: bars[89][5] - pd.Timedelta(1, "ns"),
    }
    for t, (*ohlcv, ts) in enumerate(bars):
        if t in bad_times:
            assert predictor.buffers[10].last_timestamp("A") == timestamp_ns(bars[t - 1][5])  # rows stamped
            before = predictor.state_dict()
            with pytest.raises(InferenceError, match="timestamp"):
                predictor.on_bar(*ohlcv, timestamp=bad_times[t])
            assert predictor.state_dict() == before and predictor.bars == t
        out = predictor.on_bar(*ohlcv, timestamp=ts)
        expected = twin.on_bar(*ohlcv, timestamp=ts)
        assert np.array_equal(out, expected, equal_nan=True), t
    assert not np.isnan(out[:, lstm]).any()  # the comparison covered warm LSTM outputs


def test_without_sequence_models_a_decreasing_timestamp_is_refused_too(market_run, goog):
    bars = _stamped(goog.iloc[1000:1040])
    predictor = LivePredictor(market_run, ["A", "B"], DAILY, families=["ridge", "lightgbm"])
    assert not predictor.buffers
    for bar in bars[:30]:
        predictor.on_bar(*bar[:5], timestamp=bar[5])
    assert predictor.last_timestamp == timestamp_ns(bars[29][5])
    before = predictor.state_dict()
    with pytest.raises(InferenceError, match="older than the previous bar"):
        predictor.on_bar(*bars[30][:5], timestamp=bars[28][5])
    assert predictor.state_dict() == before
    predictor.on_bar(*bars[30][:5])  # no timestamp: accepted, the last one is kept
    predictor.on_bar(*bars[31][:5], timestamp=bars[29][5])  # equal to the newest: accepted
    # The bar time is state: a restored predictor refuses the same bar.
    restored = LivePredictor(market_run, ["A", "B"], DAILY, families=["ridge", "lightgbm"])
    restored.load_state_dict(json.loads(json.dumps(predictor.state_dict())))
    assert restored.last_timestamp == predictor.last_timestamp == timestamp_ns(bars[29][5])
    with pytest.raises(InferenceError, match="older than the previous bar"):
        restored.on_bar(*bars[32][:5], timestamp=bars[28][5])
    np.testing.assert_array_equal(
        restored.on_bar(*bars[32][:5], timestamp=bars[32][5]), predictor.on_bar(*bars[32][:5], timestamp=bars[32][5])
    )


def test_state_last_timestamp_is_validated_and_older_or_edited_states_are_refused(market_run, goog):
    from fastinfer.state import unwrap, wrap

    bars = _stamped(goog.iloc[1000:1075])  # the LSTM buffer holds stamped rows from bar 60
    predictor = LivePredictor(market_run, ["A", "B"], DAILY)
    for bar in bars:
        predictor.on_bar(*bar[:5], timestamp=bar[5])
    state = json.loads(json.dumps(predictor.state_dict()))
    last = timestamp_ns(bars[-1][5])
    version, payload = unwrap(state, "predictor", {3})
    assert version == 3 and payload["last_timestamp"] == last
    fresh = LivePredictor(market_run, ["A", "B"], DAILY)
    fresh.load_state_dict(state)
    assert fresh.last_timestamp == last and fresh.bars == len(bars)
    missing = {k: v for k, v in payload.items() if k != "last_timestamp"}
    for bad in (
        missing,
        dict(payload, last_timestamp="yesterday"),
        dict(payload, last_timestamp=True),
        dict(payload, last_timestamp=1.5e18),
        dict(payload, last_timestamp=2**63),
        dict(payload, last_timestamp=last - 1),  # older than a buffer row
        dict(payload, last_timestamp=None),
    ):  # each re-wrapped with a valid checksum: a consistent writer's mistake, not corruption
        other = LivePredictor(market_run, ["A", "B"], DAILY)
        with pytest.raises(StateError, match="last_timestamp"):
            other.load_state_dict(wrap("predictor", 3, bad))
        assert other.last_timestamp is None and other.bars == 0  # left as it was
    edited = json.loads(json.dumps(state))
    edited["payload"]["bars"] += 1  # one field changed after the checksum was taken
    for bad_state in (edited, dict(state, version=2), dict(payload, kind="fastinfer.LivePredictor", version=2)):
        with pytest.raises(StateError):
            fresh.load_state_dict(bad_state)
        assert fresh.bars == len(bars)


# ---------------------------------------------------------------- the point column


def test_point_column_is_the_one_rule_for_a_horizon_family_view(market_run, goog):
    assert point_column(("prediction",)) == 0
    assert point_column(["scale", "loc"]) == 1  # a distribution: its location
    assert point_column(["q0.1", "q0.5", "q0.9"]) == 1  # quantiles: the median
    assert point_column(["q0.5", "loc", "prediction"]) == 2  # prediction first, then loc, then q0.5
    assert point_column(["a", "b"]) == 0
    assert point_column(["p_0", "p_1"]) == 1  # a binary classifier: P(class 1)
    assert point_column(["p_down", "p_flat", "p_up"]) == 2  # classes: the last one's probability
    predictor = LivePredictor(market_run, ["GOOG"], DAILY)
    for m, sl in zip(predictor.models, predictor.plan.model_slices):
        assert predictor.layout.points[(m.target, m.family.name)] == sl.start + point_column(m.columns)


def test_a_definitions_error_of_no_one_feature_says_what_it_is(market_run):
    """Definitions that fix another session length than the caller's: the error is the
    disagreement, not "feature None cannot be computed"."""
    with pytest.raises(ModelLoadError, match="the run's features cannot be compiled: bars_per_day is 6 here") as e:
        LivePredictor(market_run, ["GOOG"], DAILY, definitions={"bars_per_day": 7}, bars_per_day=6)
    assert "None" not in e.value.reason and "fix it at 7" in e.value.reason


FAIL_BAR = 100  # every model warmed up by then (ret_60, then the LSTM's 10 rows)


def _explode(*args, **kwargs):
    raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad allocation")


@pytest.mark.parametrize("on_model_error", ["skip", "error"])
def test_a_model_failing_at_run_time_costs_its_columns_for_that_bar_only(
    market_run, goog, monkeypatch, caplog, on_model_error
):
    """One model's graph makes ONNX Runtime fail on one bar: the fused graph serving it fails and so
    does its own session. That bar still completes: the model's columns are NaN, every other model's
    equal a predictor that never failed (to the runtime's agreement tolerance: each ran alone on its
    own backend), the bar is counted and timed, the failure recorded; the next bars are bit for bit
    those of the predictor that never failed. With on_model_error: error the same bar is consumed,
    then an InferenceError says so."""
    from fastinfer.runtime import AGREEMENT_RTOL

    hostile("live bar", f"one model failing inside ONNX Runtime mid-replay (on_model_error: {on_model_error})")
    settings = Settings()
    settings = replace(
        settings,
        executor=replace(settings.executor, forest_kernel="off"),  # every tabular graph in the fused one
        predictor=replace(settings.predictor, on_model_error=on_model_error),
    )
    frames = [goog.iloc[1000:1120], goog.iloc[1500:1620]]
    normal = LivePredictor(market_run, ["A", "B"], DAILY, settings=settings)
    broken = LivePredictor(market_run, ["A", "B"], DAILY, settings=settings)
    victim = next(m for m in broken.models if m.family.name == "mlp")
    fused = next(bound for name, bound, _ in broken.plan._groups if name == "fused-tabular")
    mine = [j for j, (t, f, _) in enumerate(broken.columns) if (t, f) == (victim.target, "mlp")]
    others = [j for j in range(len(broken.columns)) if j not in mine]
    cols = [_bars(f) for f in frames]
    for t in range(len(frames[0])):
        bar = [np.array([c[k][t] for c in cols]) for k in range(5)]
        want = normal.on_bar(*bar, timestamp=frames[0].index[t]).copy()
        if t != FAIL_BAR:
            np.testing.assert_array_equal(broken.on_bar(*bar, timestamp=frames[0].index[t]), want, err_msg=str(t))
            continue
        assert np.isfinite(want).all()  # every model has a prediction to lose on this bar
        with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, logger="fastinfer.predictor"):
            patch.setattr(fused, "run", _explode)
            patch.setattr(victim, "_run", _explode)
            if on_model_error == "error":
                with pytest.raises(InferenceError, match=rf"bar {FAIL_BAR}: 1 model\(s\).*was consumed.*/mlp:.*bad"):
                    broken.on_bar(*bar, timestamp=frames[0].index[t])
                got = broken.predictions
            else:
                got = broken.on_bar(*bar, timestamp=frames[0].index[t])
        assert np.isnan(got[:, mine]).all()
        scale = np.abs(want[:, others]).max(axis=0)
        assert (np.abs(got[:, others] - want[:, others]) <= AGREEMENT_RTOL * scale).all()
        assert broken.bars == normal.bars == FAIL_BAR + 1 and broken.latency.count == FAIL_BAR + 1
        assert any("mlp failed at run time" in r.getMessage() for r in caplog.records)
    record = broken.run_failures[(victim.target, "mlp")]
    assert (record.count, record.last_bar) == (1, FAIL_BAR) and "bad allocation" in record.last_error
    assert set(broken.run_failures) == {(victim.target, "mlp")}
    assert broken.state_dict() == normal.state_dict()  # nothing of the failed bar is missing or doubled


def _library_fails(X):
    raise ValueError("Input contains a value the library cannot take")


def test_a_native_library_failing_at_run_time_costs_its_columns_for_that_bar_only(market_run, goog, monkeypatch):
    """Ridge served by scikit-learn itself (no graph): its library raising on one bar gives NaN for
    that model only; the other natively served models and the graphs deliver, the bar counts."""
    from fastinfer.runtime import AGREEMENT_RTOL

    hostile("live bar", "a natively served model's library raising mid-replay")
    native_loader = ModelLoader(market_run, prefer_onnx=False)
    mixed_loader = ModelLoader(market_run)
    native_loader.load_all(families=["ridge"])
    mixed_loader._cache.update(native_loader._cache)  # ridge served natively, the rest from ONNX
    normal = LivePredictor(market_run, ["GOOG"], DAILY, loader=mixed_loader)
    broken = LivePredictor(market_run, ["GOOG"], DAILY, loader=mixed_loader)
    victim = next(m for m in broken.models if m.family.name == "ridge")
    assert victim.backend == "native"
    mine = [j for j, (t, f, _) in enumerate(broken.columns) if (t, f) == (victim.target, "ridge")]
    others = [j for j in range(len(broken.columns)) if j not in mine]
    fail = 80  # every model warmed up
    for t, (o, h, l, c, v) in enumerate(zip(*_bars(goog.iloc[1000:1090]))):
        bar = [np.array([x]) for x in (o, h, l, c, v)]
        want = normal.on_bar(*bar).copy()
        with monkeypatch.context() as patch:
            if t == fail:
                patch.setattr(victim, "_run", _library_fails)  # the model's own library call
            got = broken.on_bar(*bar)
        if t != fail:
            np.testing.assert_array_equal(got, want, err_msg=str(t))
            continue
        assert np.isfinite(want).all() and np.isnan(got[:, mine]).all()
        scale = np.abs(want[:, others]).max(axis=0)  # each model alone on its own backend: its agreement
        assert (np.abs(got[:, others] - want[:, others]) <= AGREEMENT_RTOL * scale).all()
    assert broken.bars == normal.bars == 90 and broken.run_failures[(victim.target, "ridge")].count == 1


def test_families_given_as_a_generator_serve_every_target(market_run):
    """load_all and usable_models read the families once: a generator (or any one-pass iterable)
    asked for every target, not only the first, and an unknown name is simply not in the run."""
    as_list = LivePredictor(market_run, ["GOOG"], DAILY, families=["ridge", "nope"])
    as_generator = LivePredictor(market_run, ["GOOG"], DAILY, families=(f for f in ["ridge", "nope"]))
    targets = {m.target for m in as_list.models}
    assert len(targets) > 1 and {m.family.name for m in as_list.models} == {"ridge"}
    assert [(m.target, m.family.name) for m in as_generator.models] == [
        (m.target, m.family.name) for m in as_list.models
    ]
