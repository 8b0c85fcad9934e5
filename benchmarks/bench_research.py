"""TARGETS P7: batch predictions (research, backtests) against each library's own batch predict and
against one ONNX Runtime session per model, same run.

- ``engine.predict`` at 1, 64, 512 and 65,536 rows for each family: fastinfer (the runtime's
  choice of backend for that batch size) against the native library's own predict (all its
  threads), and for tree families against one ONNX Runtime session on every core. Target: ≥ 1×
  native at every size; ≥ 2× ORT for trees from 512 rows.
- ``RunPredictor.predict`` on 10^6 rows × the 12 models TARGETS P1 names: against the sum of
  each library's own batch predict (all threads) and of one ORT session per model (all threads).
  Targets: ≥ 3× and ≥ 2×.
- ``fastinfer predict --ohlcv`` (``RunPredictor.from_bars``): one symbol × 100,000 bars and 500
  symbols × 2,000 bars, against replaying the same bars through ``LivePredictor.on_bar``.
  Targets: ≥ 20× and ≥ 2×.

    .venv/bin/python -m pytest benchmarks/bench_research.py --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fastinfer import testing
from fastinfer.compiler import compile_run
from fastinfer.engine import InferenceEngine
from fastinfer.loader import ModelLoader
from fastinfer.predictor import LivePredictor
from fastinfer.research import RunPredictor
from fastinfer.runtime import batch_threads

FAMILIES = ["lightgbm", "xgboost", "catboost", "random_forest", "ridge", "mlp", "lstm", "ngboost", "ensemble"]
TREES = {"lightgbm", "xgboost", "catboost", "random_forest"}
SIZES = [1, 64, 512, 65_536]
SIZE = testing.TrainSize(trees=200, depth=6, leaves=31, epochs=1, hidden=32)
TARGET = "fwd_ret_5m"
SEQ_LEN = 20
CORES = batch_threads(0)  # every core this process may use
OHLCV = ("open", "high", "low", "close", "volume")


def _ort_session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda X: session.run(None, {"features": np.ascontiguousarray(X, dtype=np.float32)})[0]


# ---------------------------------------------------------------- engine.predict per family and batch size


@pytest.fixture(scope="module")
def family_run(tmp_path_factory):
    X, targets = testing.synthetic_features(n_rows=2000, n_features=16, seed=1)
    root = testing.write_training_run(
        tmp_path_factory.mktemp("bench_research"),
        X,
        {TARGET: targets[TARGET]},
        FAMILIES,
        size=SIZE,
        sequence_length=SEQ_LEN,
    )
    compile_run(root)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((max(SIZES) + SEQ_LEN, 16))
    return ModelLoader(root), ModelLoader(root, prefer_onnx=False), rows


def _batch(model, rows: np.ndarray, n: int) -> np.ndarray:
    if model.family.sequential:
        return testing.windows(rows[: n + SEQ_LEN - 1], SEQ_LEN)[:n]
    return np.ascontiguousarray(rows[:n])


def _timed(benchmark, fn, n: int):
    if n >= 65_536:
        benchmark.pedantic(fn, rounds=7, iterations=1, warmup_rounds=1)  # 3 rounds were too few to trust a median
    else:
        benchmark(fn)


# The ORT baseline is TARGETS' only for tree families from 512 rows.
CASES = [
    (family, backend, n)
    for family in FAMILIES
    for n in SIZES
    for backend in ("fastinfer", "native", "onnxruntime")
    if backend != "onnxruntime" or (family in TREES and n >= 512)
]


@pytest.mark.parametrize("family,backend,n", CASES)
def test_engine_predict(benchmark, record_ratio, family_run, family, backend, n):
    served, native, rows = family_run
    model = served.load(TARGET, family)
    X = _batch(model, rows, n)
    group = f"P7 engine.predict {family}, {n} rows"
    if backend == "fastinfer":
        engine = InferenceEngine()
        call = engine.predict_sequential if model.family.category.value == "sequential" else engine.predict
        _timed(benchmark, lambda: call(model, X, family), n)
        record_ratio(group, subject=True, name="fastinfer engine.predict")
    elif backend == "native":
        raw = native.load(TARGET, family)
        _timed(benchmark, lambda: raw.adapter.library_predict(raw.native, X), n)
        record_ratio(group, name="the library's own predict")
    else:
        run = _ort_session(model, CORES)
        _timed(benchmark, lambda: run(X.astype(np.float32)), n)
        record_ratio(group, name=f"one ONNX Runtime session, {CORES} threads")


# ---------------------------------------------------------------- RunPredictor on 10^6 rows × 12 models


@pytest.fixture(scope="module")
def p1_run(tmp_path_factory):
    from backtesting.test import GOOG

    root = testing.write_market_run(
        tmp_path_factory.mktemp("bench_research_p1"),
        GOOG.iloc[:1500],
        ["lightgbm", "xgboost", "ridge", "mlp"],
        size=SIZE,
    )
    compile_run(root)
    return root, GOOG


@pytest.fixture(scope="module")
def million_rows(p1_run):
    root, goog = p1_run
    runner = RunPredictor(root, interval_minutes=1440.0)
    features, present = runner.bar_features(goog)
    real = features[present & np.isfinite(features).all(axis=1)]
    frame = pd.DataFrame(np.resize(real, (1_000_000, real.shape[1])), columns=runner.feature_order)
    return runner, frame


def test_run_predictor_million_rows(benchmark, record_ratio, million_rows):
    runner, frame = million_rows
    benchmark.pedantic(runner.predict, args=(frame,), rounds=2, iterations=1, warmup_rounds=1)
    for group in (
        "P7 RunPredictor, 10^6 rows × 12 models, vs native",
        "P7 RunPredictor, 10^6 rows × 12 models, vs ORT",
    ):
        record_ratio(group, subject=True, name="fastinfer RunPredictor.predict")


def test_native_batch_predicts_million_rows(benchmark, record_ratio, million_rows, p1_run):
    runner, frame = million_rows
    native = ModelLoader(p1_run[0], prefer_onnx=False)
    jobs = []
    for m in runner.models:
        raw = native.load(m.target, m.family.name)
        X = np.ascontiguousarray(frame[list(raw.feature_order)].to_numpy())
        jobs.append((raw, X))

    def all_models():
        for raw, X in jobs:
            if raw.family.name == "mlp":  # Keras in big batches: its own predict at its best
                raw.native.predict(X, batch_size=65_536, verbose=0)
            else:
                raw.adapter.library_predict(raw.native, X)

    benchmark.pedantic(all_models, rounds=2, iterations=1, warmup_rounds=1)
    record_ratio("P7 RunPredictor, 10^6 rows × 12 models, vs native", name="each library's batch predict, all threads")


def test_ort_sessions_million_rows(benchmark, record_ratio, million_rows):
    runner, frame = million_rows
    jobs = [(_ort_session(m, CORES), frame[list(m.feature_order)].to_numpy(dtype=np.float32)) for m in runner.models]
    benchmark.pedantic(lambda: [run(X) for run, X in jobs], rounds=2, iterations=1, warmup_rounds=1)
    record_ratio("P7 RunPredictor, 10^6 rows × 12 models, vs ORT", name=f"one ORT session per model, {CORES} threads")


# ---------------------------------------------------------------- predict --ohlcv against the on_bar replay


def _walk(n_bars: int, n_symbols: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_bars, n_symbols)), axis=0))
    o = np.vstack([np.full((1, n_symbols), 100.0), c[:-1]])
    h = np.maximum(o, c) * (1 + rng.uniform(0, 0.005, c.shape))
    lo = np.minimum(o, c) * (1 - rng.uniform(0, 0.005, c.shape))
    v = rng.lognormal(12, 0.5, c.shape)
    return [np.ascontiguousarray(a) for a in (o, h, lo, c, v)]


def _long(bars: list[np.ndarray]) -> pd.DataFrame:
    n_bars, n_symbols = bars[0].shape
    frame = pd.DataFrame({k: a.ravel() for k, a in zip(OHLCV, bars)})  # bar-major: every symbol's bar t, then t+1
    frame["symbol"] = np.tile([f"S{i}" for i in range(n_symbols)], n_bars)
    return frame


@pytest.mark.parametrize("shape", [(100_000, 1), (2_000, 500)], ids=["1x100000", "500x2000"])
@pytest.mark.parametrize("path", ["backtest", "on_bar replay"])
def test_backtest_against_the_replay(benchmark, record_ratio, p1_run, shape, path):
    root, _ = p1_run
    n_bars, n_symbols = shape
    bars = _walk(n_bars, n_symbols)
    group = f"P7 predict --ohlcv, {n_symbols} symbol{'s' * (n_symbols > 1)} × {n_bars:,} bars"
    if path == "backtest":
        frame = _long(bars)
        runner = RunPredictor(root, interval_minutes=1440.0)
        symbol_column = "symbol" if n_symbols > 1 else None
        benchmark.pedantic(
            lambda: runner.predict_bars(frame, symbol_column=symbol_column), rounds=2, iterations=1, warmup_rounds=1
        )
        record_ratio(group, subject=True, name="RunPredictor.from_bars (fastinfer predict --ohlcv)")
    else:
        symbols = [f"S{i}" for i in range(n_symbols)]

        def replay():
            live = LivePredictor(root, symbols, 1440.0)
            for t in range(n_bars):
                live.on_bar(bars[0][t], bars[1][t], bars[2][t], bars[3][t], bars[4][t])

        benchmark.pedantic(replay, rounds=1, iterations=1, warmup_rounds=0)
        record_ratio(group, name="LivePredictor.on_bar replay")
