"""The incremental execution: bar input checks, no allocation per bar, state round trips and
refusals, missing bars, user primitives, 10^6-bar drift of every rolling primitive."""

from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from numba import njit

from fastinfer import state as envelope
from fastinfer.errors import FeatureBuildError, StateError
from fastinfer.features import (
    FeatureDefinitionError,
    StreamingFeatures,
    check_parity,
    compile_features,
    default_feature_set,
    register_primitive,
    run_batch,
    unregister_primitive,
)

from ._hardening import hostile
from .test_feature_vocabulary import OHLCV, assert_close, walk


def random_bars(T: int, n: int, seed: int, gaps: float = 0.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (T, n)), axis=0))
    o = np.vstack([c[:1], c[:-1]])
    bars = [o, np.maximum(o, c) * 1.004, np.minimum(o, c) * 0.996, c, rng.lognormal(10, 1, (T, n))]
    for a in bars:
        a[rng.random((T, n)) < gaps] = np.nan
    return [np.ascontiguousarray(a) for a in bars]


# ---------------------------------------------------------------- bar inputs (issue #16 item 11)

BAD_INPUTS = {
    "object": lambda n: np.array([object()] * n),
    "str": lambda n: np.array(["1.0"] * n),
    "bytes": lambda n: np.array([b"1"] * n),
    "complex": lambda n: np.ones(n, dtype=complex),
    "bool": lambda n: np.ones(n, dtype=bool),
    "datetime64": lambda n: np.array(["2024-01-01"] * n, dtype="datetime64[ns]"),
    "timedelta64": lambda n: np.ones(n, dtype="timedelta64[s]"),
    "2-D": lambda n: np.ones((n, 1)),
    "too short": lambda n: np.ones(n - 1),
    "scalar": lambda n: np.float64(1.0),
    "ragged list": lambda n: [1.0, [2.0, 3.0]],
}


@pytest.mark.parametrize("field", OHLCV)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_bar_inputs_name_the_field_and_change_nothing(field, case):
    hostile("live bar", f"{field}: {case}")
    sf = StreamingFeatures(["A", "B", "C"], dtype=np.float64)
    for t in range(30):
        sf.update(*(np.full(3, 100.0 + t) for _ in OHLCV))
    before, out = sf.state_dict(), sf.out.copy()
    row = {k: np.full(3, 101.0) for k in OHLCV}
    row[field] = BAD_INPUTS[case](3)
    with pytest.raises(FeatureBuildError, match=f"^{field}: "):
        sf.update(*row.values())
    assert sf.state_dict() == before
    np.testing.assert_array_equal(sf.out, out)


def test_int_float32_and_list_inputs_are_accepted_as_their_float64_values():
    a = StreamingFeatures(["A", "B"], dtype=np.float64)
    b = StreamingFeatures(["A", "B"], dtype=np.float64)
    for t in range(40):
        a.update(*(np.array([100 + t, 200 + t], dtype=np.int64) for _ in OHLCV))
        b.update(*([100.0 + t, 200.0 + t] for _ in OHLCV))
    np.testing.assert_array_equal(a.out, b.out)
    a.update(*(np.full(2, 100.5, dtype=np.float32) for _ in OHLCV))
    b.update(*(np.full(2, 100.5) for _ in OHLCV))
    np.testing.assert_array_equal(a.out, b.out)


# ---------------------------------------------------------------- missing bars


def test_missing_bars_repeat_the_last_row_and_touch_no_state():
    bars = random_bars(120, 3, seed=1)
    sf = StreamingFeatures(["A", "B", "C"], default_feature_set()[:60], dtype=np.float64, interval_minutes=1440)
    for t in range(100):
        sf.update(*(a[t] for a in bars))
    state = [a.copy() for a in sf._state]
    out = sf.out.copy()
    nan = np.full(3, np.nan)
    sf.update(nan, nan, nan, nan, nan)  # nobody has a bar
    assert sf.stale.all() and sf.n_bars.tolist() == [100] * 3
    np.testing.assert_array_equal(sf.out, out)
    for old, new in zip(state, sf._state):
        np.testing.assert_array_equal(old, new)
    row = [a[100].copy() for a in bars]
    row[2][1] = np.inf  # B's low
    sf.update(*row)
    assert sf.stale.tolist() == [False, True, False]
    np.testing.assert_array_equal(sf.out[1], out[1])
    for old, new in zip(state, sf._state):
        np.testing.assert_array_equal(old[1], new[1])
    never = StreamingFeatures(["Z"], ["ret_1", "obv"])
    never.update(*(np.full(1, np.nan) for _ in OHLCV))
    assert np.isnan(never.out).all() and never.n_bars[0] == 0


# ---------------------------------------------------------------- allocation


@njit
def _ewmax(state, inputs, params):
    """A user primitive for the tests: a decaying running maximum."""
    x = inputs[0]
    if state[1] == 0.0:
        state[0] = x
        state[1] = 1.0
    else:
        state[0] = max(x, state[0] * params[0] + x * (1.0 - params[0]))
    return state[0]


def _ewmax_batch(x, alpha):
    out = np.empty_like(x)
    y = x[0]
    for t in range(len(x)):
        y = x[t] if t == 0 else max(x[t], y * alpha + x[t] * (1.0 - alpha))
        out[t] = y
    return out


@pytest.fixture(scope="module")
def ewmax():
    prim = register_primitive(
        "ewmax", _ewmax, inputs=("x",), params=("alpha",), state_width=2, warmup=1, batch=_ewmax_batch, replace=True
    )
    yield prim
    unregister_primitive("ewmax")


def test_update_allocates_nothing_per_bar(ewmax):
    """200 features, external columns (by dict) and a user primitive, 64 symbols with gaps."""
    n, T = 64, 1000
    bars = random_bars(T + 200, n, seed=50, gaps=0.02)
    definitions = {
        "external": ["book"],
        "features": {"book_z": "rolling_zscore(book, 20)", "peak": "ewmax(log_return(close, 1), 0.9)"},
    }
    names = [*default_feature_set(large=True), "book_z", "peak", "book"]
    sf = StreamingFeatures([f"S{j}" for j in range(n)], names, definitions=definitions, interval_minutes=1440)
    book = np.random.default_rng(51).normal(0, 1, (T + 200, n))
    rows = [(tuple(a[t] for a in bars), {"book": book[t]}) for t in range(T + 200)]
    tracemalloc.start()
    try:
        growth = []
        for part in (rows[:200], rows[200:]):  # warm-up (CPython's own free lists fill), then measured
            before = tracemalloc.get_traced_memory()[0]
            for bar, ext in part:
                sf.update(*bar, external=ext)
            growth.append(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()
    assert growth[1] == 0, growth
    assert np.isfinite(sf.out[~sf.stale]).mean() > 0.95


# ---------------------------------------------------------------- state


def test_state_round_trip_with_definitions_externals_and_a_user_primitive(ewmax):
    definitions = {"external": ["book"], "features": {"peak": "ewmax(close, 0.5) / close", "b": "lag(book, 2)"}}
    names = ["peak", "b", "rsi_14", "min_20", "adx_7"]
    bars = random_bars(300, 3, seed=2, gaps=0.05)
    book = np.random.default_rng(3).normal(0, 1, (300, 3))
    live = StreamingFeatures(["A", "B", "C"], names, definitions=definitions, dtype=np.float64)
    for t in range(200):
        live.update(*(a[t] for a in bars), external=book[t][:, None])
    restored = StreamingFeatures.from_state_dict(json.loads(json.dumps(live.state_dict())))
    assert restored.program.hash == live.program.hash
    np.testing.assert_array_equal(restored.out, live.out)
    np.testing.assert_array_equal(restored.stale, live.stale)
    for t in range(200, 300):
        a = live.update(*(x[t] for x in bars), external={"book": book[t]})
        b = restored.update(*(x[t] for x in bars), external={"book": book[t]})
        np.testing.assert_array_equal(a, b)


def test_a_state_of_a_program_compiled_elsewhere_carries_what_it_was_compiled_from():
    """As LivePredictor does: compile (definitions, interval, session length), then serve it."""
    defs = {"bars_per_day": 78, "features": {"gap": "open / lag(close, 1) - 1"}}
    program = compile_features(["gap", "ret_1d", "vol_30m"], defs, interval_minutes=5)
    live = StreamingFeatures(["A", "B"], program=program, dtype=np.float64)
    bars = random_bars(200, 2, seed=5)
    for t in range(150):
        live.update(*(a[t] for a in bars))
    restored = StreamingFeatures.from_state_dict(json.loads(json.dumps(live.state_dict())))
    assert restored.program.hash == program.hash
    assert (restored.interval_minutes, restored.bars_per_day) == (5, 78)
    for t in range(150, 200):
        np.testing.assert_array_equal(live.update(*(a[t] for a in bars)), restored.update(*(a[t] for a in bars)))


def test_a_state_of_another_program_is_refused_and_changes_nothing(monkeypatch):
    a = StreamingFeatures(["A"], ["x"], definitions={"features": {"x": "rsi(close, 7)"}})
    b = StreamingFeatures(["A"], ["x"], definitions={"features": {"x": "rsi(close, 8)"}})
    for t in range(20):
        a.update(*(np.full(1, 100.0 + t) for _ in OHLCV))
    hostile("feature state", "state of other definitions")
    before = b.state_dict()
    with pytest.raises(StateError, match="another feature program"):
        b.load_state_dict(a.state_dict())
    assert b.state_dict() == before
    hostile("feature state", "definitions edited inside the state")
    env = a.state_dict()
    env["payload"]["definitions"]["features"]["x"] = "rsi(close, 9)"
    with pytest.raises(StateError, match="another feature program"):
        StreamingFeatures.from_state_dict(envelope.wrap(env["kind"], env["version"], env["payload"]))
    hostile("feature state", "state of an older kernel")
    saved = a.state_dict()
    monkeypatch.setattr("fastinfer.features.program.KERNEL_VERSION", 999)
    with pytest.raises(StateError, match="another feature program"):
        StreamingFeatures.from_state_dict(saved)


@pytest.mark.parametrize(
    "field, value",
    [
        ("interval_minutes", 10**400),
        ("bars_per_day", 10**400),
        ("definitions", {"interval_minutes": 10**400, "features": {}}),
        ("definitions", {"bars_per_day": 10**400, "features": {}}),
    ],
    ids=["interval", "bars_per_day", "definitions interval", "definitions bars_per_day"],
)
def test_a_state_with_a_huge_number_is_a_state_error(field, value):
    """A 400-digit integer (valid JSON, checksum recomputed) is a StateError naming the key,
    never an OverflowError from float()."""
    hostile("feature state", f"400-digit {field} ({'inside definitions' if isinstance(value, dict) else 'top level'})")
    env = StreamingFeatures(["A"], ["ret_1"], interval_minutes=5, bars_per_day=78).state_dict()
    payload = {**env["payload"], field: value}
    key = field if field != "definitions" else next(k for k in value if k != "features")
    with pytest.raises(StateError, match=rf"do not compile here .*{key} must be"):
        StreamingFeatures.from_state_dict(envelope.wrap(env["kind"], env["version"], payload))


def test_a_corrupt_deque_in_the_state_is_refused():
    sf = StreamingFeatures(["A", "B"], ["min_5", "max_3"])
    for t in range(10):
        sf.update(*(np.full(2, 100.0 + t) for _ in OHLCV))
    env = sf.state_dict()
    ints = envelope.decode_array(env["payload"]["arrays"]["int_state"], "x", dtype="<i8")
    ints[:, 1] = 99  # deque heads far outside their windows
    env["payload"]["arrays"]["int_state"] = envelope.encode_array(ints)
    hostile("feature state", "deque head out of range")
    with pytest.raises(StateError, match="rolling min/max window is out of range"):
        StreamingFeatures.from_state_dict(envelope.wrap(env["kind"], env["version"], env["payload"]))


def test_program_hash_is_deterministic_and_names_the_program():
    """Equal across processes whatever Python's hash seed (a saved state is restored in another
    process), different for any other program."""
    import subprocess
    import sys

    code = "from fastinfer.features import compile_features; print(compile_features(['rsi_14', 'vol_20']).hash)"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert seen == {compile_features(["rsi_14", "vol_20"]).hash}
    assert compile_features(["rsi_14", "vol_20"]).hash != compile_features(["vol_20", "rsi_14"]).hash
    assert compile_features(["rsi_14"]).hash != compile_features(["rsi_15"]).hash


# ---------------------------------------------------------------- user primitives


def test_user_primitive_is_usable_like_a_builtin_and_both_executions_agree(ewmax):
    bars = random_bars(500, 3, seed=4, gaps=0.03)
    definitions = {"features": {"peak": "ewmax(log_return(close, 1), 0.9)", "peak2": "ewmax(close, 0.5) - close"}}
    report = check_parity(["peak", "peak2", "rsi_14"], dict(zip(OHLCV, bars)), definitions)
    assert report.bars == 500 and report.symbols == 3 and report.max_rel["peak2"] < 1e-12
    # Against the registered batch reference by hand: symbol 0's valid bars; the log return's
    # first value is a hole, and the primitive's warm-up (1) hides its first output.
    valid = np.logical_and.reduce([np.isfinite(a[:, 0]) for a in bars])
    got = StreamingFeatures(["X"], ["peak"], definitions=definitions, dtype=np.float64).replay(
        "X", {k: a[:, 0] for k, a in zip(OHLCV, bars)}
    )[valid, 0]
    returns = np.diff(np.log(bars[3][valid, 0]))
    want = np.concatenate([[np.nan, np.nan], _ewmax_batch(returns, 0.9)[1:]])
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_check_parity_catches_a_batch_reference_that_disagrees(ewmax):
    register_primitive(
        "ewmax_wrong",
        _ewmax,
        params=("alpha",),
        state_width=2,
        warmup=0,
        batch=lambda x, alpha: _ewmax_batch(x, alpha) * (1 + 1e-6),
        replace=True,
    )
    try:
        with pytest.raises(AssertionError, match=r"^w: incremental .* != batch .* at bar \d+ of symbol 0"):
            check_parity(["w"], walk(100, 5), {"features": {"w": "ewmax_wrong(close, 0.5)"}})
    finally:
        unregister_primitive("ewmax_wrong")


def test_registration_errors(ewmax):
    for case, kwargs, match in [
        ("built-in name", {"name": "rsi"}, "is a built-in function"),
        ("registered twice", {"name": "ewmax"}, "already registered"),
        ("not an identifier", {"name": "Bad-Name"}, "lowercase identifier"),
        ("not jitted", {"update": lambda s, i, p: 0.0}, "numba.njit function"),
        ("no inputs", {"inputs": ()}, "1 to 3 series inputs"),
        ("negative state", {"state_width": -1}, "must be an int >= 0"),
        ("fractional warmup", {"warmup": 1.5}, "must be an int >= 0"),
    ]:
        hostile("user primitives", case)
        args = {
            "name": "p_new",
            "update": _ewmax,
            "params": ("alpha",),
            "state_width": 2,
            "warmup": 0,
            "batch": _ewmax_batch,
        } | kwargs
        name, update = args.pop("name"), args.pop("update")
        with pytest.raises(FeatureDefinitionError, match=match):
            register_primitive(name, update, **args)
    with pytest.raises(FeatureDefinitionError, match=r"ewmax\(x, alpha\) takes 2 argument"):
        compile_features(["p"], {"features": {"p": "ewmax(close)"}})


# ---------------------------------------------------------------- drift over 10^6 bars

ROLLING = {
    "sum_close": "rolling_sum(close, 50)",
    "mean_volume": "rolling_mean(volume, 20)",
    "var_ret": "rolling_var(log_return(close, 1), 30)",
    "std_close": "rolling_std(close, 20, 0)",
    "zscore_close": "rolling_zscore(close, 40)",
    "min_low": "rolling_min(low, 25)",
    "max_high": "rolling_max(high, 25)",
    "wma_close": "wma(close, 30)",
    "ema_close": "ema(close, 30)",
    "wilder_tr": "wilder(true_range(), 14)",
    "rsi_sma": "rsi_sma(close, 14)",
    "cci": "cci(20)",
}


@pytest.mark.slow
def test_every_rolling_primitive_stays_on_the_whole_window_formula_for_a_million_bars():
    """Incremental (compensated running sums, re-anchored moments, deques) vs batch (each
    window summed on its own) at every one of 10^6 bars, through 1000x spikes, a level shift to
    1e6 with small moves, and flat stretches."""
    T = 1_000_000
    rng = np.random.default_rng(13)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.003, T)))
    # a high level with small moves (1e-5 relative, where E[x²] - E[x]² would keep ~6 digits)
    c[400_000:600_000] = 1e6 + np.cumsum(rng.normal(0, 10.0, 200_000))
    c[700_000:700_300] = c[699_999]  # flat
    for start in (100_013, 250_000, 800_021):
        c[start : start + 7] *= 1000.0  # spikes that leave the windows
    o = np.concatenate([c[:1], c[:-1]])
    h, lo = np.maximum(o, c) * 1.001, np.minimum(o, c) * 0.999
    v = rng.lognormal(10, 1, T)
    bars = {"open": o, "high": h, "low": lo, "close": c, "volume": v}
    program = compile_features(list(ROLLING), {"features": ROLLING})
    incremental = StreamingFeatures(["X"], program=program, dtype=np.float64).replay("X", bars)
    batch = run_batch(program, {k: a[None, :] for k, a in bars.items()})[0]
    std = pd.Series(c).rolling(40).std().to_numpy()
    for k, name in enumerate(ROLLING):
        for part in (slice(0, 400_000), slice(400_000, 600_000), slice(600_000, T)):  # scales differ by 1e4
            # a z-score's rounding is that of x - mean: relative to |x| / std, not to z itself
            moving = std[part] > 0  # flat windows have z exactly 0 on both sides
            scale = np.nanmax(np.abs(c[part])[moving] / std[part][moving]) if name == "zscore_close" else None
            assert_close(incremental[part, k], batch[part, k], name, f"bars {part.start}..{part.stop}", scale)


def test_rolling_primitives_equal_pandas_rolling():
    """pandas' own rolling (min_periods = window: NaN while a missing value is in the window)."""
    rng = np.random.default_rng(6)
    x = pd.Series(100 + np.cumsum(rng.normal(0, 1, 3000)))
    x[rng.random(3000) < 0.01] = np.nan
    df = pd.DataFrame({"open": x, "high": x, "low": x, "close": x, "volume": np.ones(3000)})
    defs = {
        "features": {
            "s": "rolling_sum(ext, 20)",
            "m": "rolling_mean(ext, 20)",
            "v1": "rolling_var(ext, 20)",
            "v0": "rolling_var(ext, 20, 0)",
            "sd": "rolling_std(ext, 20)",
            "lo": "rolling_min(ext, 20)",
            "hi": "rolling_max(ext, 20)",
            "z": "rolling_zscore(ext, 20)",
        },
        "external": ["ext"],
    }
    names = list(defs["features"])
    df = df.fillna(1.0).assign(ext=x)  # bars always valid; the holes are in the external series
    got = StreamingFeatures(["X"], names, definitions=defs, dtype=np.float64).replay(
        "X", {k: df[k].to_numpy() for k in (*OHLCV, "ext")}
    )
    r = x.rolling(20)
    want = {
        "s": r.sum(),
        "m": r.mean(),
        "v1": r.var(),
        "v0": r.var(ddof=0),
        "sd": r.std(),
        "lo": r.min(),
        "hi": r.max(),
        "z": (x - r.mean()) / r.std(),
    }
    for k, name in enumerate(names):
        assert_close(got[:, k], want[name].to_numpy(), name, "vs pandas rolling")
