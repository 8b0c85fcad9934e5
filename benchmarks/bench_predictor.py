"""TARGETS P1a, P1b, P1c, P3, P6, T1: the live predictor against what a user would run instead,
and against the sum of its own parts.

Models: 3 horizons × LightGBM, XGBoost, Ridge, MLP (12, the set TARGETS P1 names), trained on
GOOG daily bars and converted; the P1/P3 groups run again with one LSTM per horizon added
(groups suffixed ", +3 LSTM": reported, no target). Every group prints baseline median /
fastinfer median.

- seed path (P1a): the spec's path per bar (``fastinfer.reference.SeedPath``, also what
  ``fastinfer demo`` measures) — pandas over a 60-bar window, sequence rows through a
  ``SeqBufferManager``, then each model's native predict (Keras ``model.predict``).
- assembled peer (P1b, P3, P6): TA-Lib (pandas where TA-Lib has no such indicator) over the
  window + one ONNX Runtime session per model; for P3 looped over the 500 symbols.
- sum of the parts (P1c, P3): the features alone for the same symbols + each model alone in the
  backend the plan chose (its forest kernel, or its own ONNX Runtime session for members of the
  fused graph, or its native library), same rows. on_bar ≤ 1.25 × that sum (ratio ≥ 0.8).
- T1: 100,000 one-symbol bars, every on_bar timed, the garbage collector on as users run it,
  and again after ``gc.freeze()`` (the documented setting for the tightest tail).
- P6: a 200-feature run (the vocabulary's large set), one symbol.
"""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

from fastinfer import testing
from fastinfer.compiler import compile_run
from fastinfer.features import default_feature_set, ohlcv_arrays
from fastinfer.features.pandas_reference import peer_features
from fastinfer.latency import median_us
from fastinfer.loader import ModelLoader
from fastinfer.predictor import LivePredictor
from fastinfer.reference import SeedPath

MODEL_SETS = {
    "": ["lightgbm", "xgboost", "ridge", "mlp"],  # TARGETS P1's models
    ", +3 LSTM": ["lightgbm", "xgboost", "ridge", "mlp", "lstm"],
}
SIZE = testing.TrainSize(trees=200, depth=6, leaves=31, epochs=1, hidden=32)
N_SYMBOLS = 500
SEQUENCE_LENGTH = 10
LOOKBACK = 60
OHLCV = ("open", "high", "low", "close", "volume")


_RUNS: dict[str, tuple] = {}


def _run(suffix: str, tmp_path_factory) -> tuple:
    """(run root, GOOG bars, their arrays, the group-name suffix) of a model set, trained once."""
    if suffix not in _RUNS:
        from backtesting.test import GOOG

        root = testing.write_market_run(
            tmp_path_factory.mktemp("bench_pred"),
            GOOG.iloc[:1500],
            MODEL_SETS[suffix],
            sequence_length=SEQUENCE_LENGTH,
            size=SIZE,
        )
        compile_run(root)
        _RUNS[suffix] = (root, GOOG, ohlcv_arrays(GOOG), suffix)
    return _RUNS[suffix]


@pytest.fixture(scope="module", params=list(MODEL_SETS), ids=["12-models", "15-models-with-lstm"])
def setup(request, tmp_path_factory):
    return _run(request.param, tmp_path_factory)


def _warm(predictor, bars, n_symbols, upto=200):
    for t in range(upto):
        predictor.on_bar(*(np.full(n_symbols, bars[k][t]) for k in OHLCV))


def _median_s(fn, repeat: int = 201) -> float:
    return median_us(fn, repeat) / 1e6


def _peer(models, goog, t: int):
    """The assembled peer for one symbol at bar ``t``: TA-Lib/pandas features over the window,
    then one plain ONNX Runtime session per model (sequence models get the row repeated)."""
    names = list(dict.fromkeys(f for m in models for f in m.feature_order))
    window = goog.iloc[t - LOOKBACK : t + 1].rename(columns=str.lower).reset_index(drop=True)

    def run():
        f = dict(zip(names, peer_features(window, names, interval_minutes=1440.0)))
        out = []
        for m in models:
            x = np.array([[f[n] for n in m.feature_order]], dtype=np.float32)
            if m.family.sequential:
                x = np.repeat(x[:, None, :], m.spec.sequence_length, axis=1)
            out.append(m.runtime.run_latency(x))
        return out

    return run


def _parts_s(predictor, bars, t: int) -> dict[str, float]:
    """Each part of one bar alone, same rows as on_bar: the feature update, then every model in the
    backend the plan chose (its forest kernel; its own ORT session for a fused-graph member)."""
    n = len(predictor.symbols)
    bar = [np.full(n, bars[k][t]) for k in OHLCV]
    parts = {"features": _median_s(lambda: predictor.features.update(*bar))}
    plan = predictor.plan
    for m, slot in zip(plan.models, plan.layout.slots):
        src = plan.sequence_inputs[slot.sequence_length] if slot.sequence_length else plan.tabular_input
        x = np.ascontiguousarray(src[..., list(slot.needs)])
        kernel = plan.forest_kernels.get(slot.key)
        if kernel is not None:  # reads the plan's union rows in place, as on_bar does
            out = np.empty((n, kernel.n_outputs), dtype=np.float32)
            run = lambda k=kernel, o=out: k.predict(plan.tabular_input, o)  # noqa: E731
        elif plan.choices[slot.key].engine == "onnxruntime":
            run = lambda r=m.runtime.run_latency, x=x: r(x)  # noqa: E731
        else:
            run = lambda r=m.run, x=x: r(x)  # noqa: E731
        parts[f"{slot.target}/{slot.family}"] = _median_s(run)
    return parts


# ---------------------------------------------------------------- one symbol: P1a, P1b, P1c


def test_one_symbol_fastinfer(benchmark, record_ratio, results, setup):
    root, _, bars, suffix = setup
    predictor = LivePredictor(root, ["GOOG"], 1440.0)
    _warm(predictor, bars, 1)
    bar = [np.array([bars[k][200]]) for k in OHLCV]
    benchmark(predictor.on_bar, *bar)
    assert not np.isnan(predictor.predictions).any()
    for group in ("one-symbol-bar", "one-symbol-bar-vs-peer", "P1c one-symbol bar vs the sum of its parts"):
        record_ratio(f"{group}{suffix}", subject=True, name="fastinfer on_bar")
    if getattr(benchmark, "stats", None) is not None:
        parts = _parts_s(predictor, bars, 200)
        results.record(f"P1c one-symbol bar vs the sum of its parts{suffix}", "sum of the parts", sum(parts.values()))
        print("\nP1c parts (µs):", {k: round(v * 1e6, 1) for k, v in parts.items()})


def test_one_symbol_seed_path(benchmark, record_ratio, setup):
    root, goog, _, suffix = setup
    seed = SeedPath(root)
    window = goog.iloc[140:201]
    for _ in range(SEQUENCE_LENGTH):  # fill the LSTMs' buffers, so every model predicts in the timed calls
        seed.on_bar(window)
    benchmark.pedantic(seed.on_bar, args=(window,), rounds=5, iterations=1, warmup_rounds=1)
    assert len(seed.models) == 3 * len(MODEL_SETS[suffix]) and np.isfinite(list(seed.on_bar(window).values())).all()
    record_ratio(f"one-symbol-bar{suffix}", name="seed path (pandas + native predict)")


def test_one_symbol_talib_plus_ort_sessions(benchmark, record_ratio, setup):
    root, goog, _, suffix = setup
    models = list(ModelLoader(root).load_all().values())
    benchmark(_peer(models, goog, 200))
    record_ratio(f"one-symbol-bar-vs-peer{suffix}", name="TA-Lib + one ORT session per model")


# ---------------------------------------------------------------- 500 symbols: P3


def test_500_symbols_batched(benchmark, record_ratio, results, setup):
    root, _, bars, suffix = setup
    symbols = [f"S{i}" for i in range(N_SYMBOLS)]
    predictor = LivePredictor(root, symbols, 1440.0)
    _warm(predictor, bars, N_SYMBOLS)
    bar = [np.full(N_SYMBOLS, bars[k][200]) for k in OHLCV]
    benchmark(predictor.on_bar, *bar)
    record_ratio(f"P3 500 symbols per bar{suffix}", subject=True, name="fastinfer batched on_bar")
    record_ratio(f"P3 500-symbol bar vs the sum of its parts{suffix}", subject=True, name="fastinfer batched on_bar")
    if getattr(benchmark, "stats", None) is not None:
        parts = _parts_s(predictor, bars, 200)
        results.record(f"P3 500-symbol bar vs the sum of its parts{suffix}", "sum of the parts", sum(parts.values()))
        print("\nP3 parts (µs):", {k: round(v * 1e6, 1) for k, v in parts.items()})
        print("P3 plan:", {f"{k[0]}/{k[1]}": (c.engine, c.threads) for k, c in predictor.plan.choices.items()})


def test_500_symbols_peer_loop(benchmark, record_ratio, setup):
    root, goog, _, suffix = setup
    peer = _peer(list(ModelLoader(root).load_all().values()), goog, 200)

    def loop():
        for _ in range(N_SYMBOLS):
            peer()

    benchmark.pedantic(loop, rounds=3, iterations=1, warmup_rounds=1)
    record_ratio(f"P3 500 symbols per bar{suffix}", name="TA-Lib + ORT sessions looped over the symbols")


# ---------------------------------------------------------------- T1: the tail over 100,000 bars


def _random_walk(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    o = np.concatenate([[100.0], c[:-1]])
    h = np.maximum(o, c) * (1 + rng.uniform(0, 0.005, n))
    lo = np.minimum(o, c) * (1 - rng.uniform(0, 0.005, n))
    v = rng.lognormal(12, 0.5, n)
    return [a.reshape(-1, 1) for a in (o, h, lo, c, v)]


@pytest.mark.parametrize("gc_mode", ["gc on", "gc.freeze() after warm-up"])
def test_tail_latency_over_100k_bars(benchmark, results, tmp_path_factory, gc_mode):
    """T1: p99 ≤ 3× p50 and p99.9 ≤ 5× p50, every one of 100,000 on_bar calls timed (the 12 P1 models)."""
    root = _run("", tmp_path_factory)[0]
    n = 100_000
    o, h, lo, c, v = _random_walk(n + 500)
    predictor = LivePredictor(root, ["S"], 1440.0)
    for t in range(500):
        predictor.on_bar(o[t], h[t], lo[t], c[t], v[t])
    ns = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns

    def replay() -> None:
        if gc_mode != "gc on":
            gc.collect()
            gc.freeze()
        try:
            for i in range(n):
                t = 500 + i
                start = clock()
                predictor.on_bar(o[t], h[t], lo[t], c[t], v[t])
                ns[i] = clock() - start
        finally:
            gc.unfreeze()

    benchmark.pedantic(replay, rounds=1, iterations=1)  # one pass of 100,000 bars; every bar timed inside
    p50, p99, p999 = (float(np.percentile(ns, q)) / 1e9 for q in (50, 99, 99.9))
    for quantile, value, bound in (("p99", p99, 3), ("p99.9", p999, 5)):
        group = f"T1 tail, {gc_mode}: on_bar {quantile} against {bound} × p50"
        results.record(group, f"on_bar {quantile}", value, subject=True)
        results.record(group, f"{bound} × on_bar p50", bound * p50)
    print(
        f"\nT1 ({gc_mode}): p50 {p50 * 1e6:.1f} µs, p99 {p99 * 1e6:.1f} µs, p99.9 {p999 * 1e6:.1f} µs, "
        f"max {ns.max() / 1e3:.1f} µs over {n:,} bars"
    )


# ---------------------------------------------------------------- P6: a 200-feature run


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    from backtesting.test import GOOG

    names = default_feature_set(1440.0, large=True)
    root = testing.write_market_run(
        tmp_path_factory.mktemp("bench_wide"), GOOG.iloc[:1500], MODEL_SETS[""], size=SIZE, feature_names=names
    )
    compile_run(root)
    return root, GOOG, ohlcv_arrays(GOOG)


def test_200_features_fastinfer(benchmark, record_ratio, wide_run):
    root, _, bars = wide_run
    predictor = LivePredictor(root, ["GOOG"], 1440.0)
    assert len(predictor.union) >= 200
    _warm(predictor, bars, 1, upto=300)
    benchmark(predictor.on_bar, *(np.array([bars[k][300]]) for k in OHLCV))
    record_ratio("P6 200-feature run, one symbol", subject=True, name="fastinfer on_bar")


def test_200_features_peer(benchmark, record_ratio, wide_run):
    root, goog, _ = wide_run
    benchmark.pedantic(_peer(list(ModelLoader(root).load_all().values()), goog, 300), rounds=5, warmup_rounds=1)
    record_ratio("P6 200-feature run, one symbol", name="TA-Lib + pandas features + one ORT session per model")
