"""Incremental features per bar: the compiled feature program against its peers, same run.

P4 (the spec's 14 default features, 500 symbols): ``StreamingFeatures.update`` (one jitted call
for every symbol) against recomputing each symbol's window with pandas (``pandas_reference``)
and with TA-Lib. Also: the compiled program against the hand-written kernel these 14 names
came from (``fastinfer.kernels.indicators``; target ≤ 1.1x its time, i.e. ratio ≥ 0.91).

P4b (200 vocabulary features × 500 symbols): against
- talipp: one talipp indicator object per feature and symbol, ``add`` per bar;
- NautilusTrader's Rust indicators (``nautilus_pyo3``): one object per feature and symbol,
  ``update_raw`` per bar;
- TA-Lib: each feature recomputed over each symbol's window (the features TA-Lib lacks with
  numpy one-liners on the same window);
- pandas: ``pandas_reference.evaluate`` over each symbol's window.
Where a library has no such indicator, the closest one of similar work stands in (see
``_talipp_objects`` / ``_nautilus_objects``). The slow baselines are timed on a subset of the symbols and
scaled to 500 (each symbol's objects are independent: the cost is linear in symbols); the
test names say so. The subject's ns per feature per symbol is printed.

    .venv/bin/python -m pytest benchmarks/bench_features.py --benchmark-only
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest
import talib

from fastinfer.features import DEFAULT_FEATURES, StreamingFeatures, compile_features, default_feature_set
from fastinfer.features import pandas_reference as R
from fastinfer.features import vocabulary as V
from fastinfer.features import warmup as features_warmup
from fastinfer.kernels import indicators as handwritten

N_SYMBOLS = 500
LOOKBACK = 60
HISTORY = 200
OHLCV = ("open", "high", "low", "close", "volume")
P4B_NAMES = default_feature_set(large=True)  # daily bars: the spec's ret_1d, vol_10d, ... included
P4B_INTERVAL = 1440.0


def _bars(n, T, seed=0):
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (T, n)), axis=0))
    o = np.vstack([c[:1], c[:-1]])
    h = np.maximum(o, c) * (1 + rng.uniform(0, 0.01, (T, n)))
    lo = np.minimum(o, c) * (1 - rng.uniform(0, 0.01, (T, n)))
    v = rng.lognormal(10, 1, (T, n))
    return [np.ascontiguousarray(a) for a in (o, h, lo, c, v)]


def _windows(bars, n, length):
    """Each symbol's last ``length`` bars as a DataFrame, as a recomputing loop would hold them."""
    return [pd.DataFrame({k: a[-length:, j] for k, a in zip(OHLCV, bars)}) for j in range(n)]


def _streaming(n, bars, names=None, interval=None):
    sf = StreamingFeatures([f"S{j}" for j in range(n)], names, interval_minutes=interval)
    for t in range(HISTORY):
        sf.update(*(a[t] for a in bars))
    cycle = itertools.cycle([tuple(a[t] for a in bars) for t in range(HISTORY, len(bars[0]))])
    return lambda: sf.update(*next(cycle))


def _handwritten(n, bars):
    state = handwritten.new_state(n)
    cols = handwritten.all_columns()
    cols[len(DEFAULT_FEATURES) :] = -1  # the 14 defaults, as StreamingFeatures served them
    out = np.empty((n, len(DEFAULT_FEATURES)), dtype=np.float32)
    stale = np.zeros(n, dtype=np.bool_)
    for t in range(HISTORY):
        handwritten.update_bar(*(a[t] for a in bars), *state, cols, out, stale)
    cycle = itertools.cycle([tuple(a[t] for a in bars) for t in range(HISTORY, len(bars[0]))])
    return lambda: handwritten.update_bar(*next(cycle), *state, cols, out, stale)


@pytest.fixture(scope="module")
def data():
    features_warmup()
    handwritten.warmup()
    bars = _bars(N_SYMBOLS, HISTORY + 1000)
    return bars, _windows([a[:HISTORY] for a in bars], N_SYMBOLS, LOOKBACK + 1)


# ---------------------------------------------------------------- P4: the 14 defaults


def _talib_features(df):
    _o, h, lo, c, v = (df[k].to_numpy() for k in OHLCV)
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


def _pandas_defaults(df):
    return R.evaluate(df, DEFAULT_FEATURES).to_numpy()[-1]


@pytest.mark.parametrize("impl", ["fastinfer", "pandas", "talib"])
def test_features_500_symbols(benchmark, record_ratio, data, impl):
    bars, windows = data
    group = f"P4 features, {N_SYMBOLS} symbols per bar"
    if impl == "fastinfer":
        benchmark(_streaming(N_SYMBOLS, bars))
    elif impl == "pandas":
        benchmark.pedantic(lambda: [_pandas_defaults(w) for w in windows], rounds=3, iterations=1)
    else:
        benchmark.pedantic(lambda: [_talib_features(w) for w in windows], rounds=10, iterations=1)
    record_ratio(group, subject=impl == "fastinfer")


@pytest.mark.parametrize("impl", ["compiled program", "hand-written kernel"])
def test_defaults_compiled_vs_handwritten(benchmark, record_ratio, data, impl):
    """P4b: the 14 defaults compiled must take ≤ 1.1x the hand-written kernel (ratio ≥ 0.91)."""
    bars, _ = data
    group = f"P4b 14 default features compiled vs hand-written, {N_SYMBOLS} symbols per bar"
    benchmark(_streaming(N_SYMBOLS, bars) if impl == "compiled program" else _handwritten(N_SYMBOLS, bars))
    record_ratio(group, subject=impl == "compiled program")


@pytest.mark.parametrize("impl", ["fastinfer", "pandas", "talib"])
def test_features_one_symbol(benchmark, record_ratio, data, impl):
    bars, windows = data
    group = "features, one symbol per bar (latency)"
    if impl == "fastinfer":
        benchmark(_streaming(1, [np.ascontiguousarray(a[:, :1]) for a in bars]))
    elif impl == "pandas":
        benchmark(_pandas_defaults, windows[0])
    else:
        benchmark(_talib_features, windows[0])
    record_ratio(group, subject=impl == "fastinfer")


def test_baselines_compute_the_same_features(data):
    """The TA-Lib and pandas baselines do the same work: equal to the program on the same window."""
    _, windows = data
    sf = StreamingFeatures(["X"], dtype=np.float64)
    got = sf.replay("X", {k: windows[0][k].to_numpy() for k in OHLCV})[-1]
    np.testing.assert_allclose(_talib_features(windows[0]), got, rtol=1e-9)
    np.testing.assert_allclose(_pandas_defaults(windows[0]), got, rtol=1e-9)


# ---------------------------------------------------------------- P4b: 200 features


def _pattern(name):
    found = V.match(name, interval_minutes=P4B_INTERVAL)
    args = [int(found.values[k]) if k in V.BAR_PARAMS else float(found.values[k]) for k in found.pattern.placeholders]
    return found.pattern.name, args


def _talipp_objects(names):
    """One talipp indicator per feature: (the object, which inputs it takes: "c", "v" or "bar")."""
    from talipp import indicators as T

    def make(pattern, a):
        n = a[0] if a else 14
        family = re.sub(r"_\{.*", "", pattern)
        table = {
            "ret": (T.ROC, "c"), "logret": (T.ROC, "c"), "mom": (T.ROC, "c"), "roc": (T.ROC, "c"),
            "sma": (T.SMA, "c"), "ma_ratio": (T.SMA, "c"), "ema": (T.EMA, "c"), "wma": (T.WMA, "c"),
            "std": (T.StdDev, "c"), "vol": (T.StdDev, "c"), "zscore": (T.StdDev, "c"), "volume_z": (T.StdDev, "v"),
            "min": (T.DonchianChannels, "bar"), "max": (T.DonchianChannels, "bar"), "rsi": (T.RSI, "c"),
            "atr": (T.ATR, "bar"), "natr": (T.NATR, "bar"), "cci": (T.CCI, "bar"), "willr": (T.Williams, "bar"),
            "vol_ratio": (T.SMA, "v"), "vwap": (T.VWMA, "bar"), "mfi": (T.VWMA, "bar"),
        }  # fmt: skip
        if pattern.startswith("macd"):
            return T.MACD(*(a or [12, 26, 9])), "c"
        if pattern.startswith("bb_"):
            return T.BB(a[0] if a else 20, a[1] if len(a) > 1 else 2.0), "c"
        if pattern.startswith("stoch"):
            return T.Stoch(n, a[1] if len(a) > 1 else 3), "bar"
        if pattern.startswith(("adx", "plus_di", "minus_di")):
            return T.ADX(n, n), "bar"
        if pattern == "obv":
            return T.OBV(), "bar"
        if family in table:
            cls, kind = table[family]
            return cls(n), kind
        return T.IBS(), "bar"  # bar shape (hl_range, wicks): an elementwise indicator

    return [make(*_pattern(name)) for name in names]


def _nautilus_objects(names):
    """One Rust indicator per feature, grouped by the arguments ``update_raw`` takes."""
    from nautilus_trader.core import nautilus_pyo3 as N

    def make(pattern, a):
        n = a[0] if a else 14
        family = re.sub(r"_\{.*", "", pattern)
        if pattern.startswith("macd"):
            return N.MovingAverageConvergenceDivergence(*(a[:2] or [12, 26])), "c"
        if pattern.startswith(("bb_", "std", "vol_{", "zscore", "volume_z")):
            return N.BollingerBands(n if pattern.startswith(("std", "vol_", "zscore", "volume")) else 20, 2.0), "hlc"
        if pattern.startswith("stoch") or family == "willr":
            return N.Stochastics(n, a[1] if len(a) > 1 else 3), "hlc"
        if pattern.startswith(("adx", "plus_di", "minus_di")):
            return N.DirectionalMovement(n), "hl"
        if family in ("min", "max"):
            return N.DonchianChannel(n), "hl"
        if family in ("atr", "natr"):
            return N.AverageTrueRange(n), "hlc"
        if family == "cci":
            return N.CommodityChannelIndex(n, 0.015), "hlc"
        if pattern == "obv":
            return N.OnBalanceVolume(0), "ocv"
        if family == "wma":
            return N.WeightedMovingAverage(n, [float(w) for w in range(1, n + 1)]), "c"
        if family == "ema":
            return N.ExponentialMovingAverage(n), "c"
        if family in ("rsi", "mfi"):
            return N.RelativeStrengthIndex(n), "c"
        if family in ("sma", "ma_ratio", "vol_ratio", "vwap"):
            return N.SimpleMovingAverage(n), "c"
        return N.RateOfChange(n if family in ("ret", "logret", "mom", "roc") else 1), "c"  # returns, bar shape

    return [make(*_pattern(name)) for name in names]


def _per_object_loop(objects_per_symbol, bars, call):
    """A bar loop over every symbol's objects (the peers' natural use); returns one-bar work."""
    rows = itertools.cycle(
        [
            [tuple(float(a[t, j]) for a in bars) for j in range(len(objects_per_symbol))]
            for t in range(HISTORY, HISTORY + 50)
        ]
    )
    return lambda: call(objects_per_symbol, next(rows))


def _talipp_bar(objects_per_symbol, row):
    from talipp.ohlcv import OHLCV as Bar

    for objects, (o, h, lo, c, v) in zip(objects_per_symbol, row):
        bar = Bar(o, h, lo, c, v)
        for obj, kind in objects:
            obj.add(c if kind == "c" else v if kind == "v" else bar)


def _nautilus_bar(objects_per_symbol, row):
    for groups, (o, h, lo, c, v) in zip(objects_per_symbol, row):
        for update in groups["c"]:
            update(c)
        for update in groups["hlc"]:
            update(h, lo, c)
        for update in groups["hl"]:
            update(h, lo)
        for update in groups["ocv"]:
            update(o, c, v)


def _talib_plan(names):
    """One function per feature, resolved once: arrays of a symbol's window → the last bar's value,
    with TA-Lib (numpy where TA-Lib has no such function). Only the calls are timed."""
    return [_talib_one(name) for name in names]


def _talib_one(name):
    fn = R.talib_function(name, interval_minutes=P4B_INTERVAL)
    if fn is not None:
        return lambda w: fn(w)[-1]
    pattern, a = _pattern(name)
    n = a[0] if a else 20
    family = re.sub(r"_\{.*", "", pattern)
    if family == "ret":
        return lambda w: w["close"][-1] / w["close"][-1 - n] - 1.0
    if family == "logret":
        return lambda w: np.log(w["close"][-1] / w["close"][-1 - n])
    if family in ("std", "vol"):
        return lambda w: talib.STDDEV(w["close"][1:] / w["close"][:-1] - 1.0, n)[-1] * np.sqrt(n / (n - 1))
    if family in ("zscore", "volume_z"):
        key = "close" if family == "zscore" else "volume"
        return lambda w: (w[key][-1] - talib.SMA(w[key], n)[-1]) / (talib.STDDEV(w[key], n)[-1] * np.sqrt(n / (n - 1)))
    if family == "ma_ratio":
        return lambda w: w["close"][-1] / talib.SMA(w["close"], n)[-1]
    if family == "vol_ratio":
        return lambda w: w["volume"][-1] / talib.SMA(w["volume"], n)[-1]
    if pattern == "rsi_{n}_sma":

        def rsi_sma(w):
            d = np.diff(w["close"][-n - 1 :])
            gains, losses = d[d > 0].sum(), -d[d < 0].sum()
            return 100.0 * gains / (gains + losses)

        return rsi_sma
    if pattern == "atr_{n}_sma":
        return lambda w: talib.SMA(talib.TRANGE(w["high"], w["low"], w["close"]), n)[-1]
    if family == "vwap":
        return lambda w: (
            ((w["high"] + w["low"] + w["close"])[-n:] / 3.0 * w["volume"][-n:]).sum() / w["volume"][-n:].sum()
        )
    if pattern.startswith("bb_"):  # the _ddof1 bands and the fixed names: TA-Lib's bands rescaled
        n, k = [*a, 20, 2.0][:2]
        scale = np.sqrt(n / (n - 1)) if pattern.endswith("ddof1") else 1.0
        part = pattern.split("_")[1]

        def band(w):
            upper, mid, lower = talib.BBANDS(w["close"], n, k, k, 0)
            up, low = mid[-1] + (upper[-1] - mid[-1]) * scale, mid[-1] - (mid[-1] - lower[-1]) * scale
            if part == "pct":
                return (w["close"][-1] - low) / (up - low)
            return {"upper": up, "lower": low, "mid": mid[-1], "width": (up - low) / mid[-1]}[part]

        return band
    shapes = {
        "hl_range": lambda w: (w["high"][-1] - w["low"][-1]) / w["close"][-1],
        "oc_range": lambda w: (w["close"][-1] - w["open"][-1]) / w["open"][-1],
        "upper_wick": lambda w: (w["high"][-1] - max(w["open"][-1], w["close"][-1])) / w["close"][-1],
        "lower_wick": lambda w: (min(w["open"][-1], w["close"][-1]) - w["low"][-1]) / w["close"][-1],
    }
    return shapes[pattern]


@pytest.fixture(scope="module")
def p4b(data):
    bars, _ = data
    program = compile_features(P4B_NAMES, interval_minutes=P4B_INTERVAL)
    windows = _windows([a[:HISTORY] for a in bars], N_SYMBOLS, program.warmup + 1)
    return bars, windows


# Slow baselines are timed on this many symbols and scaled to N_SYMBOLS.
SUBSET = {"talipp": 10, "nautilus": 100, "talib": 50, "pandas": 5}


@pytest.mark.parametrize("impl", ["fastinfer", "talipp", "nautilus", "talib", "pandas"])
def test_p4b_200_features_500_symbols(benchmark, record_ratio, results, capsys, p4b, impl):
    bars, windows = p4b
    group = f"P4b {len(P4B_NAMES)} features, {N_SYMBOLS} symbols per bar"
    if impl == "fastinfer":
        benchmark(_streaming(N_SYMBOLS, bars, P4B_NAMES, P4B_INTERVAL))
        record_ratio(group, subject=True)
        if benchmark.stats is not None:
            ns = benchmark.stats.stats.median * 1e9 / (N_SYMBOLS * len(P4B_NAMES))
            with capsys.disabled():
                print(f"\n{group}: fastinfer {ns:.1f} ns per feature per symbol")
        return
    k = SUBSET[impl]
    if impl == "talipp":
        objects = [_talipp_objects(P4B_NAMES) for _ in range(k)]
        work = _per_object_loop(objects, [a[:, :k] for a in bars], _talipp_bar)
        for _ in range(HISTORY):  # past the warm-up
            work()
        benchmark.pedantic(work, rounds=5, iterations=1)
    elif impl == "nautilus":
        groups = []
        for _ in range(k):
            by_kind = {"c": [], "hlc": [], "hl": [], "ocv": []}
            for obj, kind in _nautilus_objects(P4B_NAMES):
                by_kind[kind].append(obj.update_raw)
            groups.append(by_kind)
        work = _per_object_loop(groups, [a[:, :k] for a in bars], _nautilus_bar)
        for _ in range(HISTORY):
            work()
        benchmark.pedantic(work, rounds=20, iterations=1)
    elif impl == "talib":
        plan = _talib_plan(P4B_NAMES)
        arrays = [{c: w[c].to_numpy() for c in OHLCV} for w in windows[:k]]
        benchmark.pedantic(lambda: [[fn(a) for fn in plan] for a in arrays], rounds=5)
    else:
        benchmark.pedantic(
            lambda: [R.evaluate(w, P4B_NAMES, interval_minutes=P4B_INTERVAL) for w in windows[:k]], rounds=1
        )
    if benchmark.stats is not None:
        name = f"{impl} (timed on {k} symbols, x{N_SYMBOLS // k})"
        results.record(group, name, benchmark.stats.stats.median * N_SYMBOLS / k)


def test_p4b_talib_baseline_computes_the_same_features(p4b):
    """The TA-Lib baseline's values equal the program's on the same window (TA-Lib's one-pass
    variance keeps ~1e-7 relative; the rest is 1e-9)."""
    _, windows = p4b
    w = windows[0]
    got = StreamingFeatures(["X"], P4B_NAMES, dtype=np.float64, interval_minutes=P4B_INTERVAL).replay(
        "X", {k: w[k].to_numpy() for k in OHLCV}
    )[-1]
    arrays = {c: w[c].to_numpy() for c in OHLCV}
    want = np.array([fn(arrays) for fn in _talib_plan(P4B_NAMES)])
    # TA-Lib's MACD line starts with its signal and its recursions from the window's start, like ours
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
