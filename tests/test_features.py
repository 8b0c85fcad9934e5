"""FeatureBuilder (pandas) and StreamingFeatures (numba): same values, the spec's API, state."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from fastinfer.atomic import read_json, write_atomic_json
from fastinfer.errors import FeatureBuildError, StateError
from fastinfer.features import DEFAULT_FEATURES, KNOWN_FEATURES, FeatureBuilder, StreamingFeatures, resolve_features

PRICE_VALUED = {
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper",
    "bb_lower",
    "atr_14",
    "bb_upper_ddof1",
    "bb_lower_ddof1",
    "atr_14_sma",
}


def ohlcv_frame(T, seed, scale=100.0, gaps=False, names=("Open", "High", "Low", "Close", "Volume")):
    rng = np.random.default_rng(seed)
    c = scale * np.exp(np.cumsum(rng.normal(0.0, 0.01, T)))
    o = np.concatenate([c[:1], c[:-1]])
    h = np.maximum(o, c) * (1 + rng.uniform(0, 0.01, T))
    lo = np.minimum(o, c) * (1 - rng.uniform(0, 0.01, T))
    v = rng.lognormal(10, 1, T)
    cols = [o, h, lo, c, v]
    if gaps:
        for a in cols:
            a[rng.random(T) < 0.04] = np.nan
        for a in cols[:4]:
            a[T // 2 : T // 2 + 25] = 55.0  # a flat stretch
    return pd.DataFrame(dict(zip(names, cols)), index=pd.date_range("2024-01-01", periods=T, freq="min"))


def stream(df, features=None, dtype=np.float64):
    """Feed one symbol's DataFrame bar by bar; return every step's row (T, F) and stale flags."""
    sf = StreamingFeatures(["X"], features=features, dtype=dtype)
    a = df.to_numpy(dtype=np.float64)
    rows, stale = [], []
    for t in range(len(df)):
        out = sf.update(*(a[t, k : k + 1] for k in range(5)))
        rows.append(out[0].copy())
        stale.append(bool(sf.stale[0]))
    return np.array(rows), np.array(stale), sf


def assert_features_equal(got, want, names, scale):
    """1e-9 relative, with an absolute floor of 1e-12 times each feature's natural scale: the
    price level (``scale``: a number, or one per row for series that jump between levels) for
    price-valued features, 100 for RSI, 1 otherwise."""
    scale = np.broadcast_to(np.asarray(scale, dtype=float), np.shape(got)[:-1])
    for k, name in enumerate(names):
        g, w = got[..., k], want[..., k]
        atol = 1e-12 * (scale if name in PRICE_VALUED else 100.0 if name.startswith("rsi") else 1.0)
        same_nan = np.isnan(g) == np.isnan(w)
        with np.errstate(invalid="ignore"):
            close = np.isnan(w) | (np.abs(g - w) <= 1e-9 * np.abs(w) + atol)
        bad = np.flatnonzero(~(same_nan & close))
        assert not bad.size, (
            f"{name}: {bad.size} bars differ, first at {bad[0]}: {g.flat[bad[0]]!r} vs {w.flat[bad[0]]!r}"
        )


def price_level(close, window=60):
    """Largest |close| over each bar's last ``window`` valid bars: the magnitude that price-valued
    features are sums and differences of."""
    return pd.Series(np.abs(close)).rolling(window, min_periods=1).max().to_numpy()


# ---------------------------------------------------------------- FeatureBuilder == streaming


@pytest.mark.parametrize("gaps", [False, True])
@pytest.mark.parametrize("scale", [1e-6, 100.0, 1e6])
def test_build_equals_streaming_at_every_bar(gaps, scale):
    df = ohlcv_frame(300, seed=1, scale=scale, gaps=gaps)
    rows, stale, _ = stream(df, features=KNOWN_FEATURES)
    frame = FeatureBuilder(KNOWN_FEATURES).frame(df)  # the pandas path over all rows
    valid = df.notna().all(axis=1).to_numpy()
    np.testing.assert_array_equal(stale, ~valid)
    level = price_level(df["Close"].to_numpy()[valid])  # the gappy series jumps to 55 and back
    assert_features_equal(rows[valid], frame.to_numpy(), KNOWN_FEATURES, level)
    last = FeatureBuilder().build(df, lookback=None)
    assert_features_equal(rows[-1][: len(DEFAULT_FEATURES)], last, DEFAULT_FEATURES, level[-1])


def test_build_lookback_window_equals_streaming_fed_that_window():
    df = ohlcv_frame(400, seed=2, gaps=True)
    got = FeatureBuilder().build(df, lookback=60)
    window = df[df.notna().all(axis=1)].iloc[-61:]
    rows, _, _ = stream(window)
    assert_features_equal(rows[-1], got, DEFAULT_FEATURES, 100.0)
    assert not np.isnan(got).any()  # 61 bars is enough for every default feature, ret_60 included


def test_build_feature_order_and_column_case():
    df = ohlcv_frame(120, seed=3, names=("OPEN", "high", "Low", "cLoSe", "Volume"))
    df["extra"] = "ignored"
    names = ["vol_ratio", "rsi_14_sma", "ret_1", "bb_pct_ddof1"]
    got = FeatureBuilder().build(df, features=names)
    full = dict(zip(KNOWN_FEATURES, FeatureBuilder(KNOWN_FEATURES).build(df)))
    np.testing.assert_array_equal(got, [full[n] for n in names])
    assert got.dtype == np.float64 and got.shape == (4,)
    np.testing.assert_array_equal(FeatureBuilder(names).build(df), got)


def test_build_short_and_empty_history_is_nan_not_an_error():
    df = ohlcv_frame(10, seed=4)
    got = dict(zip(DEFAULT_FEATURES, FeatureBuilder().build(df)))
    assert not np.isnan(got["ret_5"]) and np.isnan(got["ret_20"]) and np.isnan(got["rsi_14"])
    assert np.isnan(FeatureBuilder().build(df.iloc[:0])).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda df: df.drop(columns="Volume"), r"missing column\(s\) \['volume'\]"),
        (lambda df: df.assign(close=df["Close"]), "'Close' and 'close' both mean 'close'"),
        (lambda df: df.assign(High="x"), "column 'High' is not numeric"),
        (lambda df: df.to_numpy(), "expected a pandas DataFrame"),
    ],
)
def test_build_rejects_bad_ohlcv(bad, match):
    with pytest.raises(FeatureBuildError, match=match):
        FeatureBuilder().build(bad(ohlcv_frame(30, seed=5)))


def test_unknown_feature_says_what_the_vocabulary_understood_and_how_to_define_it():
    with pytest.raises(FeatureBuildError) as e:
        FeatureBuilder().build(ohlcv_frame(30, seed=6), features=["rsi_14", "rsi_x"])
    text = str(e.value)
    assert "rsi_x" in text and "rsi_{n}" in text and "feature_definitions.yaml" in text and "external" in text
    assert isinstance(e.value, ValueError)
    with pytest.raises(FeatureBuildError, match="twice"):
        resolve_features(["ret_1", "ret_1"])
    with pytest.raises(FeatureBuildError, match="unknown"):
        StreamingFeatures(["A"], features=["nope"])
    with pytest.raises(FeatureBuildError, match="lookback"):
        FeatureBuilder().build(ohlcv_frame(30, seed=6), lookback=-1)


def test_feature_names():
    assert DEFAULT_FEATURES == (
        "ret_1",
        "ret_5",
        "ret_10",
        "ret_20",
        "ret_60",
        "rsi_14",
        "macd",
        "macd_signal",
        "macd_hist",
        "bb_upper",
        "bb_lower",
        "bb_pct",
        "atr_14",
        "vol_ratio",
    )
    assert set(KNOWN_FEATURES) - set(DEFAULT_FEATURES) == {
        "rsi_14_sma",
        "atr_14_sma",
        "bb_upper_ddof1",
        "bb_lower_ddof1",
        "bb_pct_ddof1",
    }


# ---------------------------------------------------------------- StreamingFeatures


def test_streaming_many_symbols_equals_one_at_a_time():
    frames = {f"S{j}": ohlcv_frame(150, seed=10 + j, gaps=j % 2 == 1) for j in range(5)}
    names = ["macd_hist", "atr_14_sma", "ret_60", "bb_pct"]
    sf = StreamingFeatures(list(frames), features=names, dtype=np.float64)
    arrays = np.stack([f.to_numpy() for f in frames.values()], axis=1)  # (T, n, 5)
    out0 = sf.out
    for t in range(150):
        out = sf.update(*(arrays[t, :, k] for k in range(5)))
        assert out is out0 and out.shape == (5, 4)
    for j, df in enumerate(frames.values()):
        rows, stale, _ = stream(df, features=names)
        np.testing.assert_array_equal(out[j], rows[-1])
        assert sf.stale[j] == stale[-1]
        assert sf.n_bars[j] == df.notna().all(axis=1).sum()


def test_float32_output_is_the_float64_value_rounded():
    df = ohlcv_frame(120, seed=20, gaps=True)
    rows64, _, _ = stream(df, features=KNOWN_FEATURES)
    rows32, _, sf = stream(df, features=KNOWN_FEATURES, dtype=np.float32)
    assert sf.out.dtype == np.float32
    np.testing.assert_array_equal(rows32, rows64.astype(np.float32))


def test_update_converts_other_inputs_and_checks_lengths():
    sf = StreamingFeatures(["A", "B"], dtype=np.float64)
    ref = StreamingFeatures(["A", "B"], dtype=np.float64)
    for t in range(40):
        bar = [100.0 + t, 101.0 + t, 99.0 + t, 100.5 + t, 1000.0]
        sf.update(*([x, x] for x in bar))  # lists
        ref.update(*(np.array([x, x]) for x in bar))
    np.testing.assert_array_equal(sf.out, ref.out)
    f32 = np.full(2, 100.0, dtype=np.float32)
    sf.update(f32, f32, f32, f32, f32)
    with pytest.raises(FeatureBuildError, match=r"close: expected shape \(2,\)"):
        sf.update(np.ones(2), np.ones(2), np.ones(2), np.ones(3), np.ones(2))
    with pytest.raises(FeatureBuildError, match="twice"):
        StreamingFeatures(["A", "A"])


def test_warm_start_equals_feeding_bar_by_bar():
    frames = {"A": ohlcv_frame(200, seed=30, gaps=True), "B": ohlcv_frame(90, seed=31)}
    sf = StreamingFeatures(["A", "B", "C"], features=KNOWN_FEATURES, dtype=np.float64)
    sf.update(np.ones(3), np.ones(3), np.ones(3), np.ones(3), np.ones(3))  # replaced by the warm start
    sf.warm_start(frames)
    for j, df in enumerate(frames.values()):
        rows, stale, _ = stream(df, features=KNOWN_FEATURES)
        np.testing.assert_array_equal(sf.out[j], rows[-1])
        assert sf.stale[j] == stale[-1]
    assert sf.n_bars.tolist()[2] == 1  # C untouched
    with pytest.raises(FeatureBuildError, match=r"unknown symbol\(s\) \['Z'\]"):
        sf.warm_start({"Z": frames["B"]})
    with pytest.raises(FeatureBuildError, match="history of 'B'"):
        sf.warm_start({"B": frames["B"].drop(columns="Low")})


def test_state_round_trip_needs_no_replay(tmp_path):
    frames = {s: ohlcv_frame(260, seed=40 + j, gaps=True) for j, s in enumerate("ABC")}
    arrays = np.stack([f.to_numpy() for f in frames.values()], axis=1)
    live = StreamingFeatures(list(frames), features=["rsi_14", "bb_upper_ddof1", "macd"])
    for t in range(200):
        live.update(*(arrays[t, :, k] for k in range(5)))
    path = tmp_path / "features.json"
    write_atomic_json(path, live.state_dict())
    restored = StreamingFeatures.from_state_dict(read_json(path))
    assert restored.symbols == live.symbols and restored.features == live.features
    assert restored.out.dtype == np.float32
    np.testing.assert_array_equal(restored.out, live.out)
    np.testing.assert_array_equal(restored.stale, live.stale)
    for t in range(200, 260):
        a = live.update(*(arrays[t, :, k] for k in range(5)))
        b = restored.update(*(arrays[t, :, k] for k in range(5)))
        np.testing.assert_array_equal(a, b)


def _resealed(env):
    """The envelope with its checksum recomputed: an edit a writer made on purpose."""
    from fastinfer import state as envelope

    return envelope.wrap(env["kind"], env["version"], env["payload"])


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda s: s.update(version=99), "'version': 99"),
        (lambda s: s.update(kind="seqbuffer"), "'kind'"),
        (lambda s: s["payload"].update(stale=[True, True, False]), "'sha256'"),  # a flipped field: checksum
        (lambda s: _resealed(s) | {"payload": {**s["payload"], "program": "0" * 64}}, "'sha256'"),
        (lambda s: s["payload"]["arrays"]["float_state"].update(data="!!!"), "'sha256'"),
    ],
)
def test_corrupt_state_is_a_state_error(corrupt, match):
    sf = StreamingFeatures(["A", "B"])
    sf.update(np.ones(2), np.ones(2), np.ones(2), np.ones(2), np.ones(2))
    state = json.loads(json.dumps(sf.state_dict()))
    state = corrupt(state) or state
    with pytest.raises(StateError, match=match):
        StreamingFeatures.from_state_dict(state)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: p.update(program="0" * 64), "another feature program"),
        (lambda p: p["arrays"]["float_state"].update(data="!!!"), "'arrays.float_state'"),
        (lambda p: p["arrays"]["int_state"].update(shape=[3, 6]), "'arrays.int_state'"),
        (lambda p: p["arrays"]["registers"].update(data=p["arrays"]["registers"]["data"][:-8]), "'arrays.registers'"),
        (lambda p: p["arrays"].pop("bars"), "'arrays.bars'"),
        (lambda p: p.update(stale=[True]), "'stale'"),
        (lambda p: p.update(features=["nope"]), "do not compile"),
        (lambda p: p.pop("symbols"), "malformed"),
        (
            lambda p: p["arrays"].update(bars=__import__("fastinfer.state").state.encode_array(np.array([-1, 1]))),
            "negative",
        ),
    ],
)
def test_edited_state_is_a_state_error_naming_the_field(edit, match):
    """A state whose checksum is right (a writer's edit) is still checked field by field."""
    from fastinfer import state as envelope

    sf = StreamingFeatures(["A", "B"])
    sf.update(np.ones(2), np.ones(2), np.ones(2), np.ones(2), np.ones(2))
    env = json.loads(json.dumps(sf.state_dict()))
    edit(env["payload"])
    with pytest.raises(StateError, match=match):
        StreamingFeatures.from_state_dict(envelope.wrap(env["kind"], env["version"], env["payload"]))


def test_update_allocates_nothing_per_bar():
    n, T = 64, 1000
    rng = np.random.default_rng(50)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (T + 100, n)), axis=0))
    c[rng.random(c.shape) < 0.02] = np.nan
    bars = [
        tuple(np.ascontiguousarray(x) for x in (c[t], c[t] * 1.01, c[t] * 0.99, c[t], c[t] * 10))
        for t in range(T + 100)
    ]
    sf = StreamingFeatures([f"S{j}" for j in range(n)])
    for bar in bars[:100]:
        sf.update(*bar)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for bar in bars[100:]:
            sf.update(*bar)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before == 0


# ---------------------------------------------------------------- a run's features, named vectors


def _model(run, target, family, features, interval=1440.0):
    """A model folder TRAINING would write: meta with the features in training order (the model
    file's content does not matter to feature resolution)."""
    folder = run / "targets" / target / "models" / "view=CROSS_SECTIONAL" / f"family={family}"
    folder.mkdir(parents=True)
    meta = {"family": family, "feature_list": sorted(features), "feature_names": list(features)}
    meta["interval_minutes"] = interval
    (folder / "model_meta.json").write_text(json.dumps(meta))
    (folder / {"lightgbm": "model.txt", "ridge": "model.joblib"}[family]).write_text("")


@pytest.fixture
def run_with_definitions(tmp_path):
    from fastinfer.features import FeatureDefinitions, write_run_definitions

    run = tmp_path / "run"
    _model(run, "fwd_ret_1d", "lightgbm", ["ret_1d", "gap", "rsi_14", "vol_10d"])
    _model(run, "fwd_ret_5d", "ridge", ["vol_10d", "bb_pct", "gap", "ret_5"])
    write_run_definitions(run, FeatureDefinitions.from_dict({"features": {"gap": "open / lag(close, 1) - 1"}}))
    return run


def test_builder_from_a_run_computes_the_union_and_each_model_takes_its_columns_by_name(run_with_definitions):
    from fastinfer.features import FeatureVector, read_run_definitions

    builder = FeatureBuilder(run_root=run_with_definitions)
    assert builder.features == ("ret_1d", "gap", "rsi_14", "vol_10d", "bb_pct", "ret_5")
    assert builder.interval_minutes == 1440.0
    assert read_run_definitions(run_with_definitions).features == {"gap": "open / lag(close, 1) - 1"}
    df = ohlcv_frame(200, seed=60)
    vector = builder.build(df, lookback=None)
    assert isinstance(vector, FeatureVector) and vector.names == builder.features
    for model_features in (["ret_1d", "gap", "rsi_14", "vol_10d"], ["vol_10d", "bb_pct", "gap", "ret_5"]):
        alone = FeatureBuilder(model_features, run_root=run_with_definitions).build(df, lookback=None)
        taken = vector.reshape(1, -1).select(model_features)
        assert taken.shape == (1, 4) and taken.names == tuple(model_features)
        np.testing.assert_array_equal(taken[0], alone)
    with pytest.raises(FeatureBuildError, match=r"feature\(s\) \['atr_14'\] are not in this vector"):
        vector.select(["atr_14", "gap"])


def test_the_bar_interval_comes_from_the_run_and_must_agree(run_with_definitions):
    with pytest.raises(FeatureBuildError, match="interval_minutes=5 but the run's models say 1440"):
        FeatureBuilder(run_root=run_with_definitions, interval_minutes=5)
    _model(run_with_definitions, "fwd_ret_1h", "lightgbm", ["ret_1"], interval=60.0)
    with pytest.raises(FeatureBuildError, match="models disagree on the bar interval"):
        FeatureBuilder(run_root=run_with_definitions)


def test_feature_vector_keeps_its_names():
    import pickle

    from fastinfer.features import FeatureVector

    v = FeatureVector(np.arange(6.0), ["a", "b", "c", "d", "e", "f"])
    assert v.reshape(1, -1).names == v.names and v.reshape(1, -1)[0].names == v.names
    assert v[2:5].names == ("c", "d", "e") and v[::-1].names == tuple("fedcba") and v[[3, 1]].names == ("d", "b")
    assert v.astype(np.float32).names == v.names and (v * 2).names == v.names and v.copy().names == v.names
    assert v.reshape(1, -1)[:, 1:3].names == ("b", "c") and v.reshape(1, -1).ravel().names == v.names
    assert v.reshape(2, 3).names is None and v.reshape(3, 2).names is None
    assert float(v[1]) == 1.0 and not isinstance(v[1], FeatureVector)
    assert pickle.loads(pickle.dumps(v)).names == v.names
    assert type(np.asarray(v)) is np.ndarray
    assert v.to_dict()["c"] == 2.0 and v.index("e") == 4
    with pytest.raises(FeatureBuildError, match="6 names for an array of shape"):
        FeatureVector(np.zeros(5), list("abcdef"))
    with pytest.raises(FeatureBuildError, match="given twice"):
        FeatureVector(np.zeros(2), ["a", "a"])


def test_feature_vector_keeps_names_only_where_values_keep_their_columns():
    """Names survive only paths that keep every value in its column; np.sort, np.roll and .T of
    a square matrix used to keep names that no longer matched the values (placed wrong by name)."""
    import copy

    from fastinfer.features import FeatureVector

    v = FeatureVector(np.array([3.0, 1.0, 2.0]), ["a", "b", "c"])
    m = FeatureVector(np.arange(9.0).reshape(3, 3), ["a", "b", "c"])
    moved = {
        "np.sort": np.sort(v),
        "ndarray.sort": (lambda w: (w.sort(), w)[1])(v.copy()),
        "np.partition": np.partition(v, 1),
        "np.roll": np.roll(v, 1),
        "np.roll of rows": np.roll(m, 1, axis=1),
        ".T of a square matrix": m.T,
        "np.transpose": np.transpose(m),
        "swapaxes": m.swapaxes(0, 1),
        "reshape in F order": m.reshape(3, 3, order="F"),
        "ravel in F order": m.reshape(1, 9).ravel(order="F")[None, :3],
        "reduction": np.add.reduce(m, axis=0),
        "cumulative sum": np.cumsum(m, axis=1),
        "sum of differently named": v + FeatureVector(np.ones(3), ["c", "b", "a"]),
        "stacked": np.stack([v, v]),
    }
    for case, got in moved.items():
        assert getattr(got, "names", None) is None, case
        if isinstance(got, FeatureVector):
            with pytest.raises(FeatureBuildError, match="lost its feature names"):
                got.select(["a"])
    kept = {
        "rows by slice": (m[1:], ("a", "b", "c")),
        "rows by list": (m[[2, 0]], ("a", "b", "c")),
        "one row": (m[1], ("a", "b", "c")),
        "columns by slice": (m[:, 1:], ("b", "c")),
        "np.flip (indexing: names follow)": (np.flip(m), ("c", "b", "a")),
        "reshape keeping the last axis": (m.reshape(1, 3, 3), ("a", "b", "c")),
        "np.reshape": (np.reshape(v, (1, 3)), ("a", "b", "c")),
        "astype": (m.astype(np.float32), ("a", "b", "c")),
        "copy": (m.copy(), ("a", "b", "c")),
        "copy.deepcopy": (copy.deepcopy(v), ("a", "b", "c")),
        "np.sort of rows": (np.sort(m, axis=0), ("a", "b", "c")),
        "arithmetic": (2 * m - 1, ("a", "b", "c")),
        "per-row broadcast": (m / np.array([[1.0], [2.0], [3.0]]), ("a", "b", "c")),
        "same names": (np.maximum(m, m[::-1]), ("a", "b", "c")),
    }
    for case, (got, names) in kept.items():
        assert got.names == names, case
    w = v.copy()
    w *= 2  # in place: each value stays in its column
    assert w.names == v.names and w.to_dict() == {"a": 6.0, "b": 2.0, "c": 4.0}
    assert np.sort(v).tolist() == [1.0, 2.0, 3.0] and v.names == ("a", "b", "c")  # the original is untouched


def test_builder_reads_a_definitions_file(tmp_path):
    path = tmp_path / "features.yaml"
    path.write_text("features:\n  gap: open / lag(close, 1) - 1\n  spread: high - low\n")
    builder = FeatureBuilder(definitions=path)
    assert builder.features == ("gap", "spread")
    df = ohlcv_frame(30, seed=61, names=("open", "high", "low", "close", "volume"))
    got = builder.build(df)
    want = {"gap": df["open"].iloc[-1] / df["close"].iloc[-2] - 1, "spread": df["high"].iloc[-1] - df["low"].iloc[-1]}
    assert got.to_dict() == pytest.approx(want, rel=1e-15)
