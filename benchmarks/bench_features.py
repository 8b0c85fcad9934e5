"""P4: incremental features for 500 symbols per bar, against recomputing each symbol's window.

Subject: ``StreamingFeatures.update`` (one jitted call for all symbols). Baselines, same run:
``pandas`` is the spec's path, ``FeatureBuilder.build`` over the lookback window per symbol;
``talib`` computes the same indicators with TA-Lib over the window per symbol. The single-symbol
group measures one ``update`` of one symbol (latency) against the same two baselines.

    .venv/bin/python -m pytest benchmarks/bench_features.py --benchmark-only
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import talib

from fastinfer.features import FeatureBuilder, StreamingFeatures
from fastinfer.kernels.indicators import warmup

N_SYMBOLS = 500
LOOKBACK = 60
HISTORY = 200


def _bars(n, T, seed=0):
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (T, n)), axis=0))
    o = np.vstack([c[:1], c[:-1]])
    h = np.maximum(o, c) * (1 + rng.uniform(0, 0.01, (T, n)))
    lo = np.minimum(o, c) * (1 - rng.uniform(0, 0.01, (T, n)))
    v = rng.lognormal(10, 1, (T, n))
    return [np.ascontiguousarray(a) for a in (o, h, lo, c, v)]


def _windows(bars, n):
    """Each symbol's last LOOKBACK + 1 bars as a DataFrame, as a recomputing loop would hold them."""
    return [
        pd.DataFrame({k: a[-(LOOKBACK + 1) :, j] for k, a in zip(("open", "high", "low", "close", "volume"), bars)})
        for j in range(n)
    ]


def _talib_features(df):
    _o, h, lo, c, v = (df[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    rets = [(c[-1] - c[-1 - n]) / c[-1 - n] for n in (1, 5, 10, 20, 60)]
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    upper, _mid, lower = talib.BBANDS(c, 20, 2, 2, 0)
    pct = (c[-1] - lower[-1]) / (upper[-1] - lower[-1])
    return np.array(
        [
            *rets,
            talib.RSI(c, 14)[-1],
            macd[-1],
            signal[-1],
            hist[-1],
            upper[-1],
            lower[-1],
            pct,
            talib.ATR(h, lo, c, 14)[-1],
            v[-1] / talib.SMA(v, 20)[-1],
        ]
    )


def _streaming(n, bars):
    sf = StreamingFeatures([f"S{j}" for j in range(n)])
    for t in range(HISTORY):
        sf.update(*(a[t] for a in bars))
    rows = [tuple(a[t] for a in bars) for t in range(HISTORY, len(bars[0]))]
    cycle = itertools.cycle(rows)
    return lambda: sf.update(*next(cycle))


@pytest.fixture(scope="module")
def data():
    warmup()
    bars = _bars(N_SYMBOLS, HISTORY + 1000)
    return bars, _windows([a[:HISTORY] for a in bars], N_SYMBOLS)


@pytest.mark.parametrize("impl", ["fastinfer", "pandas", "talib"])
def test_features_500_symbols(benchmark, record_ratio, data, impl):
    bars, windows = data
    group = f"P4 features, {N_SYMBOLS} symbols per bar"
    if impl == "fastinfer":
        benchmark(_streaming(N_SYMBOLS, bars))
    elif impl == "pandas":
        builder = FeatureBuilder()
        benchmark.pedantic(lambda: [builder.build(w, lookback=LOOKBACK) for w in windows], rounds=3, iterations=1)
    else:
        benchmark.pedantic(lambda: [_talib_features(w) for w in windows], rounds=10, iterations=1)
    record_ratio(group, subject=impl == "fastinfer")


@pytest.mark.parametrize("impl", ["fastinfer", "pandas", "talib"])
def test_features_one_symbol(benchmark, record_ratio, data, impl):
    bars, windows = data
    group = "features, one symbol per bar (latency)"
    if impl == "fastinfer":
        benchmark(_streaming(1, [np.ascontiguousarray(a[:, :1]) for a in bars]))
    elif impl == "pandas":
        builder = FeatureBuilder()
        benchmark(builder.build, windows[0], lookback=LOOKBACK)
    else:
        benchmark(_talib_features, windows[0])
    record_ratio(group, subject=impl == "fastinfer")


def test_baselines_compute_the_same_features(data):
    """The TA-Lib baseline does the same work: equal to FeatureBuilder on the same window."""
    _, windows = data
    np.testing.assert_allclose(_talib_features(windows[0]), FeatureBuilder().build(windows[0]), rtol=1e-9)
