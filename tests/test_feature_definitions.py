"""Definitions files and compiled expressions: the issue's examples against pandas / TA-Lib,
definitions shadowing the vocabulary, external columns, shared sub-expressions, file
round trips and hashes, and every way a definition can be wrong (typed errors, counted)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import talib

from fastinfer.errors import FeatureBuildError
from fastinfer.features import (
    FeatureBuilder,
    FeatureDefinitionError,
    FeatureDefinitions,
    StreamingFeatures,
    compile_features,
    frame_features,
)
from fastinfer.features import pandas_reference as R
from fastinfer.features.definitions import MAX_BYTES
from fastinfer.kernels import feature_program as K

from ._hardening import hostile
from .test_feature_vocabulary import OHLCV, assert_close, walk

ISSUE_DEFINITIONS = """
# the issue's examples, on 5-minute bars of a 78-bar session
bars_per_day: 78
external: [book_imbalance, sentiment]
features:
  vol_10d: rolling_std(log_return(close, 1), 10d)
  gap: open / lag(close, 1) - 1
  rsi_spread: rsi(close, 7) - rsi(close, 28)
  ret_1d: log_return(close, 1d)          # this run's ret_1d is a log return: it shadows the vocabulary
  imbalance_z: rolling_zscore(book_imbalance, 1h)
  tilt: sentiment * ret_1 + 0.5 * book_imbalance
"""


def with_externals(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    book = rng.normal(0, 1, len(df))
    book[rng.random(len(df)) < 0.02] = np.nan  # a missing value is a hole in that series, not a missing bar
    return df.assign(book_imbalance=book, sentiment=rng.uniform(-1, 1, len(df)))


@pytest.fixture(scope="module")
def defs():
    return FeatureDefinitions.loads(ISSUE_DEFINITIONS)


@pytest.fixture(scope="module")
def bars():
    return with_externals(walk(2500, 11), 12)


NAMES = ["vol_10d", "gap", "rsi_spread", "ret_1d", "imbalance_z", "tilt", "sentiment", "rsi_14"]


def replay(names, defs, df, **kw):
    live = StreamingFeatures(["X"], names, dtype=np.float64, definitions=defs, interval_minutes=5, **kw)
    return live.replay("X", {k: df[k].to_numpy() for k in (*OHLCV, *live.externals)})


def test_issue_examples_equal_their_pandas_and_talib_formulas(defs, bars):
    got = dict(zip(NAMES, replay(NAMES, defs, bars).T))
    c, o = bars["close"], bars["open"]
    want = {
        "vol_10d": np.log(c).diff().rolling(780).std().to_numpy(),  # pandas, ddof 1
        "gap": (o / c.shift(1) - 1).to_numpy(),
        "rsi_spread": talib.RSI(c.to_numpy(), 7) - talib.RSI(c.to_numpy(), 28),
        "ret_1d": np.log(c / c.shift(78)).to_numpy(),
        "tilt": (bars["sentiment"] * c.pct_change(fill_method=None) + 0.5 * bars["book_imbalance"]).to_numpy(),
        "sentiment": bars["sentiment"].to_numpy(),
        "rsi_14": talib.RSI(c.to_numpy(), 14),
    }
    book = bars["book_imbalance"]
    # pandas' rolling with min_periods = window: NaN while a missing value is in the window
    want["imbalance_z"] = ((book - book.rolling(12).mean()) / book.rolling(12).std()).to_numpy()
    for name, w in want.items():
        assert_close(got[name], w, name, "vs pandas / TA-Lib")
    assert np.isnan(got["imbalance_z"]).sum() > np.isnan(book).sum()  # holes widen to windows


def test_definitions_run_the_same_in_batch_streaming_and_pandas(defs, bars):
    incremental = replay(NAMES, defs, bars)
    program = compile_features(NAMES, defs, interval_minutes=5)
    batch = frame_features(program, bars).to_numpy()
    reference = R.evaluate(bars, NAMES, defs, interval_minutes=5).to_numpy()
    built = FeatureBuilder(NAMES, definitions=defs, interval_minutes=5).frame(bars).to_numpy()
    for k, name in enumerate(NAMES):
        assert_close(incremental[:, k], batch[:, k], name, "incremental vs batch")
        assert_close(incremental[:, k], reference[:, k], name, "incremental vs pandas")
        assert_close(built[:, k], batch[:, k], name, "FeatureBuilder vs batch")


def test_a_definition_shadows_the_vocabulary_name(defs):
    shadowed = compile_features(["ret_1d"], defs, interval_minutes=5)
    vocab = compile_features(["ret_1d"], interval_minutes=5, bars_per_day=78)
    assert K.OP_LOGRET in shadowed.code[:, K.C_OP] and K.OP_PCT not in shadowed.code[:, K.C_OP]
    assert K.OP_PCT in vocab.code[:, K.C_OP]


def test_shared_sub_expressions_are_computed_once():
    features = {f"f{k}": f"rolling_mean(log_return(close, 1), {k + 2})" for k in range(10)}
    program = compile_features(list(features), {"features": features})
    ops = program.code[:, K.C_OP].tolist()
    assert ops.count(K.OP_LOGRET) == 1 and ops.count(K.OP_SUM) == 10
    both = compile_features(["rsi_14", "rsi_14_sma", "atr_14", "natr_14", "bb_upper", "bb_lower", "bb_pct"])
    ops = both.code[:, K.C_OP].tolist()
    assert ops.count(K.OP_DIFF) == 1 and ops.count(K.OP_GAIN) == 1  # the gains of both RSIs
    assert ops.count(K.OP_TRUE_RANGE) == 1 and ops.count(K.OP_WILDER) == 3  # one ATR for atr and natr
    assert ops.count(K.OP_MOMENTS) == 1  # one set of window sums for the three bands


def test_constant_sub_expressions_are_folded():
    program = compile_features(["x"], {"features": {"x": "close * (2 * 3 - -1) / 7"}})
    consts = [n.value for n in program.nodes if n.kind == "const"]
    assert consts == [7.0]  # (2 * 3 - -1) became 7, the same constant as the divisor
    assert program.n_ops == 2


# ---------------------------------------------------------------- externals


def test_externals_by_dict_or_matrix_and_errors_before_any_change(defs, bars):
    names = ["imbalance_z", "tilt"]
    a = StreamingFeatures(["S", "T"], names, definitions=defs, interval_minutes=5, dtype=np.float64)
    b = StreamingFeatures(["S", "T"], names, definitions=defs, interval_minutes=5, dtype=np.float64)
    assert a.externals == ("book_imbalance", "sentiment")
    for t in range(60):
        row = [np.full(2, bars[k].iloc[t]) for k in OHLCV]
        ext = {k: np.full(2, bars[k].iloc[t]) for k in a.externals}
        a.update(*row, external=ext)
        b.update(*row, external=np.column_stack([ext["book_imbalance"], ext["sentiment"]]))
    np.testing.assert_array_equal(a.out, b.out)
    before = a.state_dict()
    good = {k: np.ones(2) for k in a.externals}
    for case, external, match in [
        ("no externals", None, "reads external column"),
        ("one missing", {"book_imbalance": np.ones(2)}, r"missing \['sentiment'\]"),
        ("one unknown", {**good, "news": np.ones(2)}, r"unknown \['news'\]"),
        ("wrong length", {**good, "sentiment": np.ones(3)}, r"external 'sentiment': expected shape \(2,\)"),
        ("text", {**good, "sentiment": np.array(["a", "b"])}, "external 'sentiment': expected float or int"),
        ("matrix shape", np.ones((2, 3)), r"external: expected shape \(2, 2\)"),
        ("matrix of bools", np.ones((2, 2), dtype=bool), "external: expected float or int values, got bool"),
    ]:
        hostile("live bar", f"external columns: {case}")
        with pytest.raises(FeatureBuildError, match=match):
            a.update(*(np.ones(2) for _ in OHLCV), external=external)
        assert a.state_dict() == before
    plain = StreamingFeatures(["S"], ["rsi_14"])
    with pytest.raises(FeatureBuildError, match="reads no external columns"):
        plain.update(*(np.ones(1) for _ in OHLCV), external={"x": np.ones(1)})


def test_warm_start_reads_external_columns(defs, bars):
    names = ["imbalance_z", "tilt"]
    live = StreamingFeatures(["S"], names, definitions=defs, interval_minutes=5, dtype=np.float64)
    live.warm_start({"S": bars.iloc[:300]})
    np.testing.assert_array_equal(live.out[0], replay(names, defs, bars.iloc[:300])[-1])
    with pytest.raises(FeatureBuildError, match="missing external column 'sentiment'"):
        live.warm_start({"S": bars.iloc[:300].drop(columns="sentiment")})


# ---------------------------------------------------------------- files


def test_yaml_and_json_round_trip_and_a_stable_hash(tmp_path, defs):
    for name in ("defs.yaml", "defs.json"):
        path = defs.write(tmp_path / name)
        again = FeatureDefinitions.read(path)
        assert again == defs and again.hash == defs.hash
    reformatted = FeatureDefinitions.loads(
        json.dumps(
            {
                "features": dict(reversed(list(defs.to_dict()["features"].items()))) | {"gap": "open/lag(close,1)-1"},
                "external": list(defs.external),
                "bars_per_day": 78,
            }
        ),
        fmt="json",
    )
    assert reformatted.hash == defs.hash  # order, spacing and comments do not change it
    changed = FeatureDefinitions.from_dict({**defs.to_dict(), "features": {**defs.features, "gap": "open / close"}})
    assert changed.hash != defs.hash
    assert len(defs.hash) == 64


def test_merging_definitions():
    a = FeatureDefinitions.from_dict({"features": {"x": "close"}, "bars_per_day": 78})
    b = FeatureDefinitions.from_dict({"features": {"y": "open"}, "external": ["e"]})
    merged = a.merged(b)
    assert merged.features == {"x": "close", "y": "open"} and merged.external == ("e",) and merged.bars_per_day == 78
    with pytest.raises(FeatureDefinitionError, match="defined twice differently"):
        a.merged(FeatureDefinitions.from_dict({"features": {"x": "open"}}))
    with pytest.raises(FeatureDefinitionError, match="bars_per_day differs"):
        a.merged(FeatureDefinitions.from_dict({"bars_per_day": 288}))


HOSTILE_FILES = {
    # duplicate keys: the config's loader (fastinfer.config) says where
    "duplicate definition": ("features:\n  a: close\n  a: open\n", "line 3: key 'a' given twice \\(first at line 2\\)"),
    "duplicate top key": ("features: {}\nfeatures: {}\n", "key 'features' given twice"),
    "merge key": ("features: {<<: {a: close}, a: open}\n", r"merge keys \(<<\) are not allowed"),
    "alias bomb": (
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b]\n",
        "anchors and aliases are not allowed",
    ),
    "python object tag": ("features: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
    "binary value": ("features: {a: !!binary aGVsbG8=}\n", "must be an expression"),
    "not a mapping": ("- a\n- b\n", "expected a mapping"),
    "unknown key": ("feature:\n  a: close\n", r"unknown key\(s\) \['feature'\]"),
    "features as a list": ("features: [close]\n", "features must be a mapping"),
    "expression as a list": ("features: {a: [close]}\n", "must be an expression"),
    "null expression": ("features: {a: null}\n", "must be an expression"),
    "bool expression": ("features: {a: true}\n", "must be an expression"),
    "bad name": ("features: {'a b': close}\n", "must be an identifier"),
    "long name": ("features: {" + "a" * 200 + ": close}\n", "must be an identifier"),
    "redefines an input": ("features: {close: open}\n", "'close' is an OHLCV input"),
    "redefines an external": ("external: [e]\nfeatures: {e: open}\n", "'e' is an external column"),
    "external is an input": ("external: [volume]\n", "'volume' is an OHLCV input"),
    "external twice": ("external: [e, e]\n", "listed twice"),
    "external as text": ("external: e\n", "external must be a list"),
    "bars_per_day zero": ("bars_per_day: 0\n", "bars_per_day must be a whole number"),
    "bars_per_day fraction": ("bars_per_day: 6.5\n", "bars_per_day must be a whole number"),
    "bars_per_day bool": ("bars_per_day: true\n", "bars_per_day must be a whole number"),
    "interval negative": ("interval_minutes: -5\n", "interval_minutes must be a positive number"),
    "interval infinite": ("interval_minutes: .inf\n", "interval_minutes must be a positive number"),
    "interval of 400 digits": ("interval_minutes: " + "9" * 400 + "\n", "interval_minutes must be a positive number"),
    "interval over 100 years": ("interval_minutes: 52560001\n", r"at most 5.256e\+07, 100 years"),
    "bars_per_day of 400 digits": ("bars_per_day: " + "9" * 400 + "\n", r"bars_per_day must be a whole number"),
    "bars_per_day over the limit": (
        "bars_per_day: 100001\n",
        r"bars_per_day must be a whole number of bars \(1..100000\)",
    ),
    "other version": ("version: 2\n", "version 2; this fastinfer reads 1"),
    "syntax error inside": ("features: {a: 'rsi(close'}\n", "feature 'a': expected"),
    "deep nesting": ("[" * 10_000 + "]" * 10_000, "nested too deeply|not valid YAML"),
    "not yaml": ("features: {a: [\n", "not valid YAML"),
    "too many definitions": ("features:\n" + "".join(f"  f{k}: close\n" for k in range(5001)), "5001 definitions"),
    "too big": ("# " + "x" * MAX_BYTES + "\n", "a definitions file is"),
    "not utf-8": (b"features: {a: \xff}\n", "not UTF-8"),
}


@pytest.mark.parametrize("case", list(HOSTILE_FILES))
def test_hostile_definitions_files_are_typed_errors(case):
    hostile("feature definitions", case)
    text, match = HOSTILE_FILES[case]
    with pytest.raises(FeatureDefinitionError, match=match) as info:
        FeatureDefinitions.loads(text)
    assert len(str(info.value)) < 600  # a 400-digit number is shown cut short


def test_interval_and_session_bounds_are_artifacts_limits():
    """Files, the compiler and explain share one check; the interval's bound is the one
    model_meta.json intervals have (fastinfer.artifacts), not a copy."""
    from fastinfer import artifacts
    from fastinfer.features import definitions as D
    from fastinfer.features import explain

    assert D.MAX_INTERVAL_MINUTES is artifacts._LIMITS["interval_minutes"] == 100 * 365 * 24 * 60
    edge = FeatureDefinitions.loads(
        f"interval_minutes: {D.MAX_INTERVAL_MINUTES:.0f}\nbars_per_day: {D.MAX_BARS_PER_DAY}\n"
    )
    assert edge.interval_minutes == D.MAX_INTERVAL_MINUTES and edge.bars_per_day == D.MAX_BARS_PER_DAY
    for kwargs, key in (
        ({"interval_minutes": 10**400}, "interval_minutes"),
        ({"interval_minutes": D.MAX_INTERVAL_MINUTES * 2}, "interval_minutes"),
        ({"bars_per_day": 10**400}, "bars_per_day"),
        ({"bars_per_day": 7.5}, "bars_per_day"),
    ):
        hostile("feature definitions", f"caller's {key}: {str(kwargs[key])[:12]}")
        with pytest.raises(FeatureDefinitionError, match=key):  # was OverflowError from float()
            compile_features(["ret_1"], **kwargs)
        with pytest.raises(FeatureDefinitionError, match=key):
            explain("ret_1d", **kwargs)
    hostile("feature definitions", "definitions dict with a 400-digit interval")
    with pytest.raises(FeatureDefinitionError, match="interval_minutes"):
        compile_features(["ret_1"], {"interval_minutes": 10**400})


def test_definitions_read_yaml_through_the_config_loader():
    """One strict YAML loader: the config's (duplicate keys), refusing aliases on top."""
    from fastinfer import config
    from fastinfer.features import definitions as D

    assert issubclass(D._StrictLoader, config._Loader)
    assert FeatureDefinitions.loads("features: {a: close}\nbars_per_day: 78.0\n").bars_per_day == 78


def test_json_duplicates_and_unreadable_files(tmp_path):
    hostile("feature definitions", "JSON duplicate key")
    with pytest.raises(FeatureDefinitionError, match="duplicate key 'a'"):
        FeatureDefinitions.loads('{"features": {"a": "close", "a": "open"}}', fmt="json")
    hostile("feature definitions", "missing file")
    with pytest.raises(FeatureDefinitionError, match="cannot be read"):
        FeatureDefinitions.read(tmp_path / "nope.yaml")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_BYTES + 1))
    hostile("feature definitions", "file over the size limit")
    with pytest.raises(FeatureDefinitionError, match="at most"):
        FeatureDefinitions.read(big)


COMPILE_ERRORS = {
    "cycle": ({"a": "b + 1", "b": "rolling_mean(a, 3)"}, "a", "cycle: a -> b -> a"),
    "self reference": ({"a": "lag(a, 1)"}, "a", "cycle: a -> a"),
    "unknown function": ({"a": "rolling_avg(close, 3)"}, "a", "unknown function 'rolling_avg'.*rolling_mean"),
    "unknown name": ({"a": "close / vwap"}, "a", r"feature 'a': 'vwap' \(read via a\): unknown feature"),
    "unknown name, deeper": ({"a": "b * 2", "b": "zz_9"}, "a", r"feature 'a': 'zz_9' \(read via a -> b\)"),
    "too few arguments": ({"a": "rsi(close)"}, "a", r"rsi\(x, n\) takes 2 argument\(s\), got 1"),
    "too many arguments": ({"a": "lag(close, 1, 2)"}, "a", "takes 2 argument"),
    "series as a parameter": ({"a": "rsi(close, volume)"}, "a", "n of rsi must be a constant"),
    "fractional window": ({"a": "rolling_sum(close, 2.5)"}, "a", "must be a whole number of bars, got 2.5"),
    "negative window": ({"a": "lag(close, -1)"}, "a", "between 1 and"),
    "duration as a value": ({"a": "close + 10d"}, "a", "10d at column 9 is a duration"),
    "duration for a number": ({"a": "clip(close, 1d, 2)"}, "a", "lo of clip is a number, not a duration"),
    "duration without interval": ({"a": "lag(close, 1h)"}, "a", "needs the bar interval"),
    "ddof 2": ({"a": "rolling_std(close, 10, 2)"}, "a", "ddof of rolling_std must be 0 or 1"),
    "ddof eats the window": ({"a": "rolling_var(close, 1)"}, "a", "needs a window of more than 1"),
    "clip bounds crossed": ({"a": "clip(close, 2, 1)"}, "a", r"lo \(2\) is above hi \(1\)"),
    "macd backwards": ({"a": "macd(close, 26, 12)"}, "a", r"fast \(26\) must be shorter"),
}


@pytest.mark.parametrize("case", list(COMPILE_ERRORS))
def test_bad_definitions_name_the_definition_and_what_is_wrong(case):
    hostile("feature definitions", f"compile: {case}")
    features, name, match = COMPILE_ERRORS[case]
    with pytest.raises(FeatureDefinitionError, match=match) as e:
        compile_features([name], {"features": features})
    assert isinstance(e.value, FeatureBuildError) and isinstance(e.value, ValueError)
    assert e.value.feature == name  # the requested feature (the name a model lists), however deep the error
    again = pickle.loads(pickle.dumps(e.value))
    assert str(again) == str(e.value) and again.feature == e.value.feature


def test_settings_must_agree():
    hostile("feature definitions", "interval disagreement")
    with pytest.raises(FeatureDefinitionError, match="interval_minutes is 5 here but the definitions fix it at 1"):
        compile_features(["ret_1"], {"interval_minutes": 1}, interval_minutes=5)
    for bad in ([], "ret_1", ["ret_1", "ret_1"], [""], [3]):
        hostile("feature names", f"request {bad!r}")
        with pytest.raises(FeatureDefinitionError):
            compile_features(bad)
