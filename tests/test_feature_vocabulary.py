"""Every vocabulary name, generated from the table (``vocabulary.PATTERNS``): adding a pattern adds its tests.

For each pattern, two parameter sets (short and usual windows) give example names. All of
them are compiled into one program and run three ways over three symbols with missing bars,
a 40-bar outage, a flat zero-volume stretch and a high price level:

- incremental: ``StreamingFeatures.update`` bar by bar (float64);
- batch: ``frame_features`` over one long DataFrame with a symbol column;
- reference: ``pandas_reference.evaluate``, an independent pandas/numpy implementation of
  every function, per symbol over its valid bars (a missing bar repeats the last row).

They must agree at every bar to 1e-9 relative, with an absolute floor of 1e-12 times the
feature's own magnitude over the series (the values are sums and differences of numbers of
that size, so rounding is relative to it; the floor only matters where a feature crosses
zero). Names TA-Lib has are also checked against TA-Lib on a random walk, and every name's
first valid bar against the warm-up column of the table.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from fastinfer.features import (
    PATTERNS,
    FeatureDefinitionError,
    StreamingFeatures,
    compile_features,
    frame_features,
    vocabulary,
)
from fastinfer.features import pandas_reference as R
from fastinfer.features.grammar import parse
from fastinfer.features.primitives import functions

# Two parameter sets per placeholder: short windows (every resum / re-anchor path runs often)
# and the usual ones.
PARAMS = (
    {"n": "3", "m": "2", "fast": "3", "slow": "7", "signal": "3", "k": "1.5"},
    {"n": "14", "m": "3", "fast": "12", "slow": "26", "signal": "9", "k": "2"},
)
OHLCV = ("open", "high", "low", "close", "volume")


def example_names(pattern: vocabulary.Pattern) -> list[str]:
    if not pattern.placeholders:
        return [pattern.name]
    return list(dict.fromkeys(re.sub(r"\{(\w+)\}", lambda m, p=p: p[m.group(1)], pattern.name) for p in PARAMS))


CASES = [(p.name, name) for p in PATTERNS for name in example_names(p)]
NAMES = [name for _, name in CASES]


def walk(T: int, seed: int, scale: float = 100.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    c = scale * np.exp(np.cumsum(rng.normal(0.0, 0.01, T)))
    o = np.concatenate([c[:1], c[:-1]]) * np.exp(rng.normal(0.0, 0.002, T))
    h = np.maximum(o, c) * (1 + rng.uniform(0, 0.01, T))
    lo = np.minimum(o, c) * (1 - rng.uniform(0, 0.01, T))
    v = rng.lognormal(10, 1, T)
    return pd.DataFrame({"open": o, "high": h, "low": lo, "close": c, "volume": v})


def hostile_symbols(T: int = 700) -> dict[str, pd.DataFrame]:
    """Three symbols: gaps in any field, an outage, a flat zero-volume stretch, a high price."""
    rng = np.random.default_rng(42)
    frames = {"A": walk(T, 1), "B": walk(T, 2), "C": walk(T, 3, scale=1e4)}
    for df in frames.values():
        for col in OHLCV:
            df.loc[rng.random(T) < 0.03, col] = np.nan
    frames["A"].loc[200:239, "close"] = np.nan
    flat = slice(350, 399)
    for col in ("open", "high", "low", "close"):
        frames["B"].loc[flat, col] = 42.0
    frames["B"].loc[flat, "volume"] = 0.0
    return frames


def assert_close(got: np.ndarray, want: np.ndarray, name: str, what: str, scale: float | None = None) -> None:
    """1e-9 relative, absolute floor 1e-12 x ``scale`` (default: the feature's largest magnitude)."""
    if scale is None:
        scale = np.nanmax(np.abs(np.where(np.isinf(want), np.nan, want)), initial=0.0)
    atol = 1e-12 * max(scale, 1e-300)
    same_nan = np.isnan(got) == np.isnan(want)
    with np.errstate(invalid="ignore"):
        close = np.isnan(want) | (got == want) | (np.abs(got - want) <= 1e-9 * np.abs(want) + atol)
    bad = np.flatnonzero(~(same_nan & close))
    assert not bad.size, (
        f"{name} ({what}): {bad.size} bars differ, first at bar {bad[0]}: {got[bad[0]]!r} vs {want[bad[0]]!r}"
    )


@pytest.fixture(scope="module")
def three_ways():
    """(incremental, batch, reference): each {symbol: (T, n_names)}, for every example name."""
    frames = hostile_symbols()
    program = compile_features(NAMES)
    symbols = list(frames)
    live = StreamingFeatures(symbols, program=program, dtype=np.float64)
    T = len(frames["A"])
    stream = np.empty((T, len(symbols), len(NAMES)))
    for t in range(T):
        stream[t] = live.update(*(np.array([frames[s][k].iloc[t] for s in symbols]) for k in OHLCV))
    long = pd.concat([df.assign(symbol=s) for s, df in frames.items()], ignore_index=True)
    batch = frame_features(program, long, symbol_column="symbol").to_numpy()
    incremental, batched, reference = {}, {}, {}
    for j, s in enumerate(symbols):
        df = frames[s]
        valid = df.notna().all(axis=1).to_numpy()
        ref = R.evaluate(df[valid].reset_index(drop=True), NAMES).to_numpy()
        last = np.cumsum(valid) - 1
        full = np.full((T, len(NAMES)), np.nan)
        full[last >= 0] = ref[last[last >= 0]]
        incremental[s] = stream[:, j]
        batched[s] = batch[j * T : (j + 1) * T]
        reference[s] = full
    return incremental, batched, reference


@pytest.mark.parametrize("pattern, name", CASES, ids=NAMES)
def test_incremental_equals_batch_equals_pandas_reference(three_ways, pattern, name):
    incremental, batched, reference = three_ways
    k = NAMES.index(name)
    for s in incremental:
        assert_close(incremental[s][:, k], batched[s][:, k], name, f"incremental vs batch, symbol {s}")
        assert_close(incremental[s][:, k], reference[s][:, k], name, f"incremental vs pandas, symbol {s}")
        assert np.isfinite(incremental[s][-1, k]), f"{name}: never warmed up on symbol {s}"


TALIB_CASES = [(p, n) for p, n in CASES if R.talib_value(walk(40, 0), n) is not None]


@pytest.mark.parametrize("pattern, name", TALIB_CASES, ids=[n for _, n in TALIB_CASES])
def test_equals_talib(pattern, name):
    """Same parameters, a random walk with no gaps: equal to TA-Lib wherever TA-Lib has a value.
    (TA-Lib's MACD line starts with its signal; ours at its own warm-up, as documented.)"""
    df = walk(1500, 7)
    want = R.talib_value(df, name)
    live = StreamingFeatures(["X"], [name], dtype=np.float64)
    got = live.replay("X", {k: df[k].to_numpy() for k in OHLCV})[:, 0]
    defined = ~np.isnan(want)
    assert defined.sum() > 1400
    assert np.isfinite(got[defined]).all()
    if not (pattern.startswith("macd") and not pattern.endswith(("_signal", "_hist")) and pattern != "macd_signal"):
        np.testing.assert_array_equal(np.isnan(got), ~defined, err_msg=f"{name}: warm-up differs from TA-Lib's")
    assert_close(got[defined], want[defined], name, "vs TA-Lib")


def _warmup_of(pattern: vocabulary.Pattern, name: str) -> int:
    """The table's warm-up formula, evaluated with the name's parameters (our own grammar)."""
    found = vocabulary.match(name)
    tree = parse(pattern.warmup)

    def value(node):
        kind = type(node).__name__
        if kind == "Num":
            return node.value
        if kind == "Name":
            return found.values[node.id]
        a, b = value(node.left), value(node.right)
        return {"+": a + b, "-": a - b, "*": a * b}[node.op]

    return int(value(tree))


@pytest.mark.parametrize("pattern, name", CASES, ids=NAMES)
def test_warm_up_is_the_documented_one(pattern, name):
    df = walk(300, 8)
    program = compile_features([name])
    got = StreamingFeatures(["X"], program=program, dtype=np.float64).replay("X", {k: df[k].to_numpy() for k in OHLCV})
    first = int(np.argmax(np.isfinite(got[:, 0])))
    documented = _warmup_of(next(p for p in PATTERNS if p.name == pattern), name)
    assert first == documented == program.warmups[0], (first, documented, program.warmups[0])
    assert np.isfinite(got[first:, 0]).all()


def test_the_docstring_table_is_generated_from_the_patterns():
    assert vocabulary.vocabulary_table() in vocabulary.__doc__
    assert len({p.name for p in PATTERNS}) == len(PATTERNS)


def test_every_function_has_an_independent_pandas_implementation():
    assert set(R.FUNCTIONS) == set(functions())


def test_flat_series_have_the_documented_values():
    """80 bars of one price and no volume: the neutral values, exactly."""
    T = 80
    df = pd.DataFrame({k: np.full(T, 7.5) for k in ("open", "high", "low", "close")} | {"volume": np.zeros(T)})
    names = [
        "rsi_14", "rsi_14_sma", "mfi_14", "stoch_k_14", "stoch_d_14_3", "willr_14", "cci_14", "plus_di_14",
        "minus_di_14", "adx_14", "bb_pct_20_2", "bb_width_20_2", "bb_upper_20_2", "zscore_20", "vol_ratio_20",
        "volume_z_20", "vwap_20", "atr_14", "natr_14", "obv", "ret_5", "vol_20", "ma_ratio_20", "min_20", "max_20",
        "mom_5", "roc_5", "macd_hist", "hl_range", "upper_wick",
    ]  # fmt: skip
    got = StreamingFeatures(["X"], names, dtype=np.float64).replay("X", {k: df[k].to_numpy() for k in OHLCV})[-1]
    assert dict(zip(names, got.tolist())) == {
        "rsi_14": 50.0, "rsi_14_sma": 50.0, "mfi_14": 50.0, "stoch_k_14": 50.0, "stoch_d_14_3": 50.0,
        "willr_14": -50.0, "cci_14": 0.0, "plus_di_14": 0.0, "minus_di_14": 0.0, "adx_14": 0.0,
        "bb_pct_20_2": 0.5, "bb_width_20_2": 0.0, "bb_upper_20_2": 7.5, "zscore_20": 0.0, "vol_ratio_20": 1.0,
        "volume_z_20": 0.0, "vwap_20": 7.5, "atr_14": 0.0, "natr_14": 0.0, "obv": 0.0, "ret_5": 0.0, "vol_20": 0.0,
        "ma_ratio_20": 1.0, "min_20": 7.5, "max_20": 7.5, "mom_5": 0.0, "roc_5": 0.0, "macd_hist": 0.0,
        "hl_range": 0.0, "upper_wick": 0.0,
    }  # fmt: skip


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    "name, interval, per_day, same_as",
    [
        ("ret_1d", 1440, None, "ret_1"),
        ("vol_10d", 1440, None, "vol_10"),
        ("ret_1d", 5, 78, "ret_78"),
        ("ret_30m", 5, None, "ret_6"),
        ("ret_4h", 60, None, "ret_4"),
        ("rsi_2h", 30, None, "rsi_4"),
        ("ret_1.5h", 30, None, "ret_3"),
        ("macd_1h_2h_30m", 10, None, "macd_6_12_3"),
        ("ret_2d", 720, 2, "ret_4"),
    ],
)
def test_durations_resolve_to_bars(name, interval, per_day, same_as):
    a = compile_features([name], interval_minutes=interval, bars_per_day=per_day)
    b = compile_features([same_as])
    assert [n.describe() for n in a.nodes] == [n.describe() for n in b.nodes]
    assert a.warmups == b.warmups


@pytest.mark.parametrize(
    "name, interval, per_day, match",
    [
        ("ret_7m", 5, None, r"7m is 1.4 bars of 5-minute bars, not a whole number"),
        ("ret_30m", 60, None, r"30m is 0.5 bars"),
        ("ret_30m", 1440, None, r"not a whole number"),
        ("ret_1d", 5, None, r"needs bars_per_day .* 78 for US equities"),
        ("ret_1d", None, None, r"needs the bar interval \(interval_minutes\)"),
        ("ret_1d", 10080, None, r"1d is 0.142857 bars"),
        ("rsi_x", 1440, None, r"n='x' is not a number of bars or a duration"),
        ("bb_pct_20_x", 1440, None, r"k='x' is not a number"),
        ("macd_26_12_9", None, None, r"fast \(26\) must be shorter than slow \(12\)"),
        ("adx_1", None, None, r"at least 2 bars"),
        ("sma_0", None, None, r"at least 1 bar"),
        ("sma_99999", None, None, r"between 1 and 20000"),
    ],
)
def test_bad_parameters_name_the_feature_and_what_was_understood(name, interval, per_day, match):
    from tests._hardening import hostile

    hostile("feature names", name)
    with pytest.raises(FeatureDefinitionError, match=match) as e:
        compile_features([name], interval_minutes=interval, bars_per_day=per_day)
    assert e.value.feature == name and name in str(e.value)
    assert e.value.understood.startswith(name.split("_")[0])  # what the vocabulary read


def test_unknown_name_suggests_close_patterns_and_how_to_define_it():
    with pytest.raises(FeatureDefinitionError) as e:
        compile_features(["rsx_14"])
    assert "no vocabulary pattern matches it" in e.value.understood
    assert "rsi_{n}" in e.value.understood  # the closest pattern
    assert "feature_definitions.yaml" in e.value.hint and "external" in e.value.hint
