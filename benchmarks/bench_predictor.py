"""Issue 6 / TARGETS P1a, P1b, P3: the live predictor against what a user would run instead.

Models: 3 horizons × LightGBM, XGBoost, Ridge, MLP (12, the set TARGETS P1 names), trained on
GOOG daily bars and converted; the whole module runs again with one LSTM per horizon added
(groups suffixed ", +3 LSTM": reported, no target). Every group prints baseline median /
fastinfer median.

- seed-path: the spec's path per bar (``fastinfer.reference.SeedPath``, also what ``fastinfer demo``
  measures) — pandas ``FeatureBuilder.build`` over a 60-bar window, the rows of sequence models
  through a ``SeqBufferManager``, then each model's native predict (Keras ``model.predict``).
- talib-ort: TA-Lib features on the window + one ONNX Runtime session per model.
- per-symbol loop (500 symbols): a one-symbol fastinfer predictor called once per symbol.
- fused vs per-model sessions: the plan's one fused run vs each model's own session.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastinfer import testing
from fastinfer.compiler import compile_run
from fastinfer.features import ohlcv_arrays
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


@pytest.fixture(scope="module", params=list(MODEL_SETS), ids=["12-models", "15-models-with-lstm"])
def setup(request, tmp_path_factory):
    """(run root, GOOG bars, their arrays, the group-name suffix of this model set)."""
    from backtesting.test import GOOG

    root = testing.write_market_run(
        tmp_path_factory.mktemp("bench_pred"),
        GOOG.iloc[:1500],
        MODEL_SETS[request.param],
        sequence_length=SEQUENCE_LENGTH,
        size=SIZE,
    )
    compile_run(root)
    bars = ohlcv_arrays(GOOG)
    return root, GOOG, bars, request.param


def _warm(predictor, bars, n_symbols, upto=200):
    for t in range(upto):
        predictor.on_bar(*(np.full(n_symbols, bars[k][t]) for k in ("open", "high", "low", "close", "volume")))


def test_one_symbol_fastinfer(benchmark, record_ratio, results, setup):
    root, _, bars, suffix = setup
    predictor = LivePredictor(root, ["GOOG"], 1440.0)
    _warm(predictor, bars, 1)
    bar = [np.array([bars[k][200]]) for k in ("open", "high", "low", "close", "volume")]
    benchmark(predictor.on_bar, *bar)
    assert not np.isnan(predictor.predictions).any()
    record_ratio(f"one-symbol-bar{suffix}", subject=True, name="fastinfer on_bar")
    record_ratio(f"one-symbol-bar-vs-peer{suffix}", subject=True, name="fastinfer on_bar")
    if getattr(benchmark, "stats", None) is not None:  # P1b's tail: p99 within 3× p50, every round kept
        rounds = np.asarray(benchmark.stats.stats.data)
        group = f"P1b tail{suffix}: on_bar p99 against 3 × p50"
        results.record(group, "on_bar p99", float(np.percentile(rounds, 99)), subject=True)
        results.record(group, "3 × on_bar p50", 3 * float(np.median(rounds)))


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
    import talib

    root, _, bars, suffix = setup
    loader = ModelLoader(root)
    models = list(loader.load_all().values())
    w = {k: np.ascontiguousarray(bars[k][140:201]) for k in bars}

    def peer():
        c, h, lo, v = w["close"], w["high"], w["low"], w["volume"]
        macd, signal, hist = talib.MACD(c)
        upper, _middle, lower = talib.BBANDS(c, 20, 2, 2)
        f = {
            "rsi_14": talib.RSI(c, 14)[-1],
            "macd": macd[-1],
            "macd_signal": signal[-1],
            "macd_hist": hist[-1],
            "bb_upper": upper[-1],
            "bb_lower": lower[-1],
            "bb_pct": (c[-1] - lower[-1]) / (upper[-1] - lower[-1]),
            "atr_14": talib.ATR(h, lo, c, 14)[-1],
            "vol_ratio": v[-1] / talib.SMA(v, 20)[-1],
        }
        for n in (1, 5, 10, 20, 60):
            f[f"ret_{n}"] = c[-1] / c[-1 - n] - 1.0
        out = []
        for m in models:
            x = np.array([[f[name] for name in m.feature_order]], dtype=np.float32)
            if m.family.sequential:
                x = np.repeat(x[:, None, :], m.spec.sequence_length, axis=1)
            out.append(m.run(x))
        return out

    benchmark(peer)
    record_ratio(f"one-symbol-bar-vs-peer{suffix}", name="TA-Lib + one ORT session per model")


def test_500_symbols_batched(benchmark, record_ratio, setup):
    root, _, bars, suffix = setup
    symbols = [f"S{i}" for i in range(N_SYMBOLS)]
    predictor = LivePredictor(root, symbols, 1440.0)
    _warm(predictor, bars, N_SYMBOLS)
    bar = [np.full(N_SYMBOLS, bars[k][200]) for k in ("open", "high", "low", "close", "volume")]
    benchmark(predictor.on_bar, *bar)
    record_ratio(f"500-symbols-bar{suffix}", subject=True, name="fastinfer batched")


def test_500_symbols_per_symbol_loop(benchmark, record_ratio, setup):
    root, _, bars, suffix = setup
    predictor = LivePredictor(root, ["S"], 1440.0)  # same work per call as one of 500 one-symbol predictors
    _warm(predictor, bars, 1)
    bar = [np.array([bars[k][200]]) for k in ("open", "high", "low", "close", "volume")]

    def loop():
        for _ in range(N_SYMBOLS):
            predictor.on_bar(*bar)

    benchmark.pedantic(loop, rounds=5, iterations=1, warmup_rounds=1)
    record_ratio(f"500-symbols-bar{suffix}", name="per-symbol loop of fastinfer")


@pytest.mark.parametrize("mode", ["fused", "per-model"])
def test_fused_vs_per_model_sessions(benchmark, record_ratio, setup, mode):
    root, _, bars, suffix = setup
    predictor = LivePredictor(root, ["GOOG"], 1440.0)
    _warm(predictor, bars, 1)
    plan = predictor.plan
    if mode == "fused":
        benchmark(plan.run)
    else:
        inputs = []
        for m in plan.models:
            cols = [plan.union.index(f) for f in m.feature_order]
            src = plan.sequence_inputs[m.spec.sequence_length] if m.family.sequential else plan.tabular_input
            inputs.append((m.run, np.ascontiguousarray(src[..., cols])))
        benchmark(lambda: [run(x) for run, x in inputs])
    record_ratio(f"fused-vs-sessions{suffix}", subject=mode == "fused", name=mode)
