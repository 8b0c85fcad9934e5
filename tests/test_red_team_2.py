"""Red team round 2 (brief HX2): hostile feature definitions, bar streams, research files, live
predictor states and timestamps, signature files and CLI environments fastinfer already handles right.

Each refusal is checked for its typed error naming what and where, and (where state exists) that
the good state is left as it was; each family of cases has a control showing the good input passing.
Defects the same attack found (recursion and overflow in the compiler, a memory bomb of long
windows, a partial ``convert`` dropping lock entries, a header-only CSV) are with their repro,
patch and tests in the integrator's queue (/work/briefs/out/HX2/), not here.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fastinfer import testing
from fastinfer.cli import main
from fastinfer.errors import FeatureBuildError, InferenceError, ModelLoadError, SignatureError, StateError
from fastinfer.features import (
    FeatureDefinitionError,
    FeatureDefinitions,
    StreamingFeatures,
    check_parity,
    compile_features,
    default_feature_set,
)
from fastinfer.loader import ModelLoader
from fastinfer.lock import read_lock
from fastinfer.predictor import LivePredictor
from fastinfer.signing import SIG_FILE, generate_keypair, load_private_key, pae, sign_run, verify_run

from ._hardening import hostile
from .conftest import copy_run

DAILY = 1440.0
SYMBOLS = ["A", "B"]
DEFINITIONS = {"features": {"gap": "open / lag(close, 1) - 1"}}
FEATURES = ("ret_1", "vol_10", "rsi_14", "gap")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, goog):
    """Ridge and LightGBM on two horizons of real GOOG bars, one defined feature, converted."""
    from fastinfer.compiler import compile_run

    root = testing.write_market_run(
        tmp_path_factory.mktemp("red2"),
        goog.iloc[:600],
        ["ridge", "lightgbm"],
        horizons=(1, 5),
        feature_names=FEATURES,
        definitions=DEFINITIONS,
    )
    compile_run(root)
    return root


@pytest.fixture
def run(tmp_path, small_run):
    return copy_run(small_run, tmp_path)


def _compile(features: dict, names=None, **kwargs):
    defs = FeatureDefinitions.from_dict({"features": features})
    return compile_features(list(names or features), defs, **kwargs)


# ---------------------------------------------------------------- feature definitions

# name -> (definitions, feature the error must name, what the message must say)
DEFINITION_BOMBS = {
    "nesting 70 brackets deep": ({"a": "(" * 70 + "close" + ")" * 70}, "a", "nests deeper than 64"),
    "nesting 70 calls deep": ({"a": "abs(" * 70 + "close" + ")" * 70}, "a", "nests deeper than 64"),
    "70 unary minus": ({"a": "-" * 70 + "close"}, "a", "nests deeper than 64"),
    "4,000 tokens": ({"a": "+".join(["1"] * 2000)}, "a", "more than 2000 tokens"),
    "12,000 characters": ({"a": "+".join(["close"] * 2000)}, "a", "at most 4000"),
    "window 0": ({"a": "rolling_mean(close, 0)"}, "a", "between 1 and 20000"),
    "window negative": ({"a": "rolling_mean(close, -3)"}, "a", "between 1 and 20000"),
    "window NaN (a name)": ({"a": "rolling_mean(close, nan)"}, "a", "must be a constant"),
    "window 0/0": ({"a": "rolling_mean(close, 0/0)"}, "a", "must be a constant"),
    "window 1e400": ({"a": "rolling_mean(close, 1e400)"}, "a", "too large"),
    "window inf by arithmetic": ({"a": "rolling_mean(close, 1e308 * 10)"}, "a", "must be finite"),
    "window 2.5 bars": ({"a": "rolling_mean(close, 2.5)"}, "a", "whole number"),
    "lag of 20,001 bars": ({"a": "lag(close, 20001)"}, "a", "between 1 and 20000"),
    "1.5 minutes on 1-minute bars": ({"a": "lag(close, 1.5m)"}, "a", "not a whole number"),
    "self reference": ({"a": "a + 1"}, "a", "cycle: a -> a"),
    "two-step cycle": ({"a": "b + 1", "b": "lag(a, 1)"}, "a", "cycle: a -> b -> a"),
    "unknown function": ({"a": "frobnicate(close)"}, "a", "unknown function 'frobnicate'"),
    "misspelled function": ({"a": "rolling_maen(close, 5)"}, "a", "did you mean rolling_mean"),
    "a function used as a name": ({"a": "rolling_mean"}, "a", "'rolling_mean' \\(read via a\\): unknown feature"),
    "a name called as a function": ({"a": "close(1)"}, "a", "unknown function 'close'"),
    "unicode letter in an expression": ({"a": "clöse"}, "a", "unexpected character 'ö'"),
    "NUL in an expression": ({"a": "close\x00"}, "a", "unexpected character"),
    "too many arguments": ({"a": "lag(close, 1, 2, 3)"}, "a", "takes 2 argument"),
    "no arguments": ({"a": "lag()"}, "a", "takes 2 argument"),
    "series as a window": ({"a": "lag(close, close)"}, "a", "must be a constant"),
    "clip low above high": ({"a": "clip(close, 5, 1)"}, "a", "above hi"),
    "macd fast = slow": ({"a": "macd(close, 5, 5)"}, "a", "must be shorter"),
    "empty expression": ({"a": "   "}, "a", "empty expression"),
    "dangling operator": ({"a": "close +"}, "a", "at the end"),
    "bad definition read through a good one": ({"a": "b * 2", "b": "lag(close, 0)"}, "a", "'b' \\(read via a\\)"),
    "inf as a name": ({"b": "inf"}, "b", "'inf' \\(read via b\\): unknown feature"),
}


@pytest.mark.parametrize("case", list(DEFINITION_BOMBS))
def test_hostile_definition_names_the_feature_and_definition(case):
    hostile("red team 2: feature definitions", case)
    features, feature, match = DEFINITION_BOMBS[case]
    assert _compile({"ok": "rolling_mean(close, 5)"}).features == ("ok",)  # control
    with pytest.raises(FeatureDefinitionError, match=match) as info:
        _compile(features, [feature], interval_minutes=1.0)
    assert info.value.feature == feature
    assert len(str(info.value)) < 1500


FILE_BOMBS = {
    "unicode definition name": ("features:\n  ünï: close\n", "must be an identifier"),
    "name of 129 characters": ("features:\n  " + "a" * 129 + ": close\n", "at most 128"),
    "integer name": ("features:\n  5: close\n", "must be an identifier"),
    "null name": ("features:\n  ~: close\n", "must be an identifier"),
    "unhashable name": ("features:\n  ? [a, b]\n  : close\n", "not valid YAML"),
    "name collides with an external": ("external: [x]\nfeatures:\n  x: close\n", "cannot redefine it"),
    "name collides with OHLCV": ("features:\n  close: open\n", "cannot redefine it"),
    "external named like OHLCV": ("external: [close]\n", "OHLCV input already"),
    "external listed twice": ("external: [x, x]\n", "listed twice"),
    "257 externals": ("external: [" + ",".join(f"e{i}" for i in range(257)) + "]\n", "at most 256"),
    "features as a list": ("features: [a, b]\n", "must be a mapping"),
    "a date as the expression": ("features:\n  a: 2020-01-01\n", "must be an expression"),
    "1e400 as the expression": ("features:\n  a: 1e400\n", "too large"),
    "a 5,000-digit integer": ("features:\n  a: " + "9" * 5000 + "\n", "not valid YAML"),
    "5,000 nested lists": ("features: " + "[" * 5000 + "]" * 5000, "nested too deeply"),
    "python tag": ("features: !!python/object/apply:os.system [echo]\n", "not valid YAML"),
    "anchor and alias": ("features:\n  a: &x close\n  b: *x\n", "anchors and aliases"),
    "duplicate key": ("features:\n  a: close\n  a: open\n", "a"),
    "version true": ("version: true\n", "version True"),
    "interval NaN": ("interval_minutes: .nan\n", "interval_minutes must be"),
    "interval of 400 digits": ("interval_minutes: " + "9" * 400 + "\n", "interval_minutes must be"),
    "bars_per_day 1e400": ("bars_per_day: 1e400\n", "bars_per_day must be"),
    "lone surrogate": ("features:\n  a: close\ud800\n", "not valid YAML"),
    "top-level list": ("- a\n", "expected a mapping"),
}


@pytest.mark.parametrize("case", list(FILE_BOMBS))
def test_hostile_definitions_file_is_refused(case):
    hostile("red team 2: feature definitions file", case)
    text, match = FILE_BOMBS[case]
    with pytest.raises(FeatureDefinitionError, match=match):
        FeatureDefinitions.loads(text)


def test_definitions_files_of_other_spellings_mean_the_same():
    hostile("red team 2: feature definitions file", "byte-order mark")
    hostile("red team 2: feature definitions file", "CRLF line ends")
    plain = FeatureDefinitions.loads("features:\n  a: lag(close, 3) / close\n")
    assert FeatureDefinitions.loads("\ufefffeatures:\n  a: lag(close, 3) / close\n") == plain
    assert FeatureDefinitions.loads("features:\r\n  a: lag(close,3)/close\r\n").hash == plain.hash


def test_hostile_requests_of_names():
    for case, names, match in (
        ("a feature requested twice", ["close", "close"], "requested twice"),
        ("10,001 features", [f"ret_{i}" for i in range(1, 10_002)], "at most 10000"),
        ("a name that is not text", [1], "non-empty text"),
        ("None", None, "list of names"),
        ("one string", "close", "not the string"),
        ("a vocabulary window of 100,000 bars", ["rsi_100000"], "between 1 and 20000"),
        ("a vocabulary window of 0", ["ret_0"], "at least 1 bar"),
    ):
        hostile("red team 2: feature definitions", case)
        with pytest.raises(FeatureDefinitionError, match=match):
            compile_features(names, interval_minutes=DAILY)


# ---------------------------------------------------------------- batch = incremental on hostile streams


def _stream(kind: str, T: int = 300) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, T)))
    volume = rng.integers(0, 1000, T).astype(float)
    if kind == "constant prices":
        close = np.full(T, 100.0)
    elif kind == "prices near 1e10":
        close = close * 1e8
    elif kind == "prices near 1e-8":
        close = close * 1e-10
    elif kind == "prices on a coarse tick":
        close = np.round(close)
    elif kind == "zero volume":
        volume[:] = 0.0
    high, low, open_ = close * 1.001, close * 0.999, close.copy()
    if kind == "constant prices":
        high, low = close.copy(), close.copy()
    if kind == "NaN bars":
        close = close.copy()
        close[rng.choice(T, 40, replace=False)] = np.nan
    if kind == "a gap, then a flat market":
        close, high, low, open_ = close.copy(), high.copy(), low.copy(), open_.copy()
        for a in (close, high, low, open_):
            a[150:] = close[149]
        close[60:100] = np.nan
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


STREAMS = [
    "random walk",
    "constant prices",
    "prices near 1e10",
    "prices near 1e-8",
    "prices on a coarse tick",
    "zero volume",
    "NaN bars",
    "a gap, then a flat market",
]


@pytest.mark.parametrize("kind", STREAMS)
def test_batch_equals_incremental_on_hostile_but_valid_bars(kind):
    """Every feature of the default set, both executions, bar by bar, within check_parity's
    tolerances (rtol 1e-9, atol 1e-12: the design's promise for well-conditioned windows)."""
    hostile("red team 2: batch vs incremental", kind)
    report = check_parity(default_feature_set(DAILY), _stream(kind), interval_minutes=DAILY)
    assert report.bars == 300 and report.symbols == 1


def test_refused_bar_input_leaves_streaming_state_as_it_was():
    live = StreamingFeatures(SYMBOLS, ["ret_1", "rsi_14"])
    bar = [np.array([100.0, 50.0])] * 4 + [np.array([10.0, 10.0])]
    for _ in range(20):
        live.update(*bar)
    before = json.dumps(live.state_dict())
    for case, change in {
        "close as text": (3, np.array(["1", "2"])),
        "close as booleans": (3, np.array([True, False])),
        "close of three symbols": (3, np.ones(3)),
        "close as a complex array": (3, np.ones(2, dtype=complex)),
        "close as datetimes": (3, np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[ns]")),
        "close as a ragged list": (3, [[1.0], 2.0]),
    }.items():
        hostile("red team 2: streaming bars", case)
        k, value = change
        args = list(bar)
        args[k] = value
        with pytest.raises(FeatureBuildError, match="close"):
            live.update(*args)
        assert json.dumps(live.state_dict()) == before


# ---------------------------------------------------------------- live predictor


def _bars(n: int, seed: int = 0, width: int = len(SYMBOLS)):
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 1, (n, width)), axis=0)
    return close


def _feed(predictor: LivePredictor, closes: np.ndarray, start: int = 0) -> None:
    day = np.datetime64("2020-01-01", "ns")
    for i, c in enumerate(closes):
        ts = day + np.timedelta64(start + i, "D")
        predictor.on_bar(c, c + 1, c - 1, c, np.full(len(c), 1e6), timestamp=ts)


@pytest.fixture(scope="module")
def warm_predictor(small_run):
    predictor = LivePredictor(small_run, SYMBOLS, DAILY)
    _feed(predictor, _bars(40))
    return predictor


BAD_TIMES = {
    "a bar older than the last": (np.datetime64("2020-01-05"), "older than the previous bar"),
    "a negative int": (-1, "older than the previous bar"),
    "year 9999": (np.datetime64("9999-01-01"), "outside the int64 nanosecond range"),
    "2**63 ns": (2**63, "outside the int64 nanosecond range"),
    "NaT": (np.datetime64("NaT"), "NaT"),
    "a float of ns": (1.5e18, "expected a datetime"),
    "NaN": (float("nan"), "expected a datetime"),
    "a date as text": ("2020-03-01", "expected a datetime"),
    "a bool": (True, "expected a datetime"),
    "a list": ([1], "expected a datetime"),
}


@pytest.mark.parametrize("case", list(BAD_TIMES))
def test_bad_bar_time_changes_nothing(warm_predictor, case):
    hostile("red team 2: live predictor", f"timestamp {case}")
    before = json.dumps(warm_predictor.state_dict())
    value, match = BAD_TIMES[case]
    c = np.array([100.0, 100.0])
    with pytest.raises(InferenceError, match=match):
        warm_predictor.on_bar(c, c + 1, c - 1, c, np.full(2, 1e6), timestamp=value)
    assert json.dumps(warm_predictor.state_dict()) == before


def test_equal_timestamp_is_accepted_and_state_round_trips(small_run):
    hostile("red team 2: live predictor", "a bar at the same time as the last")
    predictor = LivePredictor(small_run, SYMBOLS, DAILY)
    _feed(predictor, _bars(30))
    c = np.array([100.0, 100.0])
    last = predictor.last_timestamp
    predictor.on_bar(c, c + 1, c - 1, c, np.full(2, 1e6), timestamp=last)
    assert predictor.last_timestamp == last and predictor.bars == 31
    again = LivePredictor(small_run, SYMBOLS, DAILY)
    again.load_state_dict(json.loads(json.dumps(predictor.state_dict())))  # through JSON text
    _feed(predictor, _bars(5, seed=1), start=31)
    _feed(again, _bars(5, seed=1), start=31)
    np.testing.assert_array_equal(predictor.predictions, again.predictions)


def _other_definitions(run: Path) -> Path:
    (run / "feature_definitions.yaml").write_text("features:\n  gap: open / lag(close, 2) - 1\n")
    return run


MISMATCHED = {
    "symbols in another order": (lambda root: LivePredictor(root, SYMBOLS[::-1], DAILY), "'symbols'"),
    "another universe": (lambda root: LivePredictor(root, ["A", "C"], DAILY), "'symbols'"),
    "fewer symbols": (lambda root: LivePredictor(root, ["A"], DAILY), "'symbols'"),
    "a subset of the targets": (
        lambda root: LivePredictor(root, SYMBOLS, DAILY, targets=["fwd_ret_1d"]),
        "'columns'",
    ),
    "a subset of the families": (
        lambda root: LivePredictor(root, SYMBOLS, DAILY, families=["ridge"]),
        "'columns'",
    ),
}


@pytest.mark.parametrize("case", list(MISMATCHED))
def test_state_of_another_predictor_is_refused(small_run, warm_predictor, case):
    hostile("red team 2: predictor state", case)
    make, match = MISMATCHED[case]
    other = make(small_run)
    _feed(other, _bars(3, seed=2, width=len(other.symbols)))
    before = json.dumps(other.state_dict())
    with pytest.raises(StateError, match=match):
        other.load_state_dict(warm_predictor.state_dict())
    assert json.dumps(other.state_dict()) == before


def test_state_of_other_feature_definitions_is_refused(run, warm_predictor):
    hostile("red team 2: predictor state", "a run whose definitions differ")
    other = LivePredictor(_other_definitions(run), SYMBOLS, DAILY)
    before = json.dumps(other.state_dict())
    with pytest.raises(StateError, match="another feature program"):
        other.load_state_dict(warm_predictor.state_dict())
    assert json.dumps(other.state_dict()) == before


def test_hostile_bars_at_scale_are_contained(small_run):
    """2,000 symbols, every kind of nonsense bar at once: each refused one is counted and leaves
    its symbol stale, the good symbols predict."""
    hostile("red team 2: live predictor", "2,000 symbols of hostile bars")
    n = 2000
    symbols = [f"S{i}" for i in range(n)]
    predictor = LivePredictor(small_run, symbols, DAILY)
    rng = np.random.default_rng(3)
    day = np.datetime64("2020-01-01", "ns")
    for t in range(25):
        c = 100 + rng.normal(0, 1, n)
        o, h, low, v = c.copy(), c + 1, c - 1, np.full(n, 1e6)
        c[0::7] = np.nan
        c[1::7] = -5.0
        h[2::7] = c[2::7] - 3  # high below low
        v[3::7] = -1.0
        c[4::7] = 1e300
        o[5::7] = np.inf
        predictor.on_bar(o, h, low, c, v, timestamp=day + np.timedelta64(t, "D"))
    good = np.arange(n) % 7 == 6
    out = predictor.predictions
    assert np.isfinite(out[good]).all()
    assert np.isnan(out[~good]).all()
    assert (predictor.rejected_bars[1::7] == 25).all() and (predictor.rejected_bars[good] == 0).all()


# ---------------------------------------------------------------- research files (fastinfer predict --ohlcv)


def _invoke(args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)


@pytest.fixture(scope="module")
def bars_frame(goog):
    frame = goog.iloc[600:660].copy()
    frame.index.name = "Date"
    return frame.reset_index()


def _two_symbols(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame.assign(sym="A"), frame.assign(sym="B")], ignore_index=True)


CSV_FILES = {
    "empty file": (lambda f: "", False, "cannot read bars"),
    "a missing column": (
        lambda f: f.drop(columns=["Close"]).to_csv(index=False),
        False,
        r"missing column\(s\) \['close'\]",
    ),
    "text in close": (lambda f: f.assign(Close="x").to_csv(index=False), False, "column 'Close' is not numeric"),
    "booleans as volume": (lambda f: f.assign(Volume=True).to_csv(index=False), False, "'Volume' is not numeric"),
    "a duplicated timestamp": (
        lambda f: pd.concat([f.iloc[:5], f.iloc[4:]]).to_csv(index=False),
        False,
        "row 5 .* is duplicated",
    ),
    "newest first": (lambda f: f.iloc[::-1].to_csv(index=False), False, "earlier than the bar before it"),
    "semicolons": (lambda f: f.to_csv(index=False, sep=";"), False, "missing column"),
    "tabs": (lambda f: f.to_csv(index=False, sep="\t"), False, "missing column"),
    "Latin-1 bytes": (lambda f: f.to_csv(index=False).replace("Date", "Dät").encode("latin-1"), False, "cannot read"),
    "binary noise": (lambda f: b"\x00\x01\x02\xff\xfe", False, "not UTF-8|cannot read bars"),
    "close and CLOSE": (lambda f: f.assign(CLOSE=f.Close).to_csv(index=False), False, "both mean 'close'"),
    "time zones out of order in UTC": (
        lambda f: f.assign(
            Date=[f"2020-01-{1 + i // 2:02d}T00:00:00{'+02:00' if i % 2 else ''}" for i in range(len(f))]
        ).to_csv(index=False),
        False,
        "row 1 .* earlier than the bar before it",
    ),
    "a symbol missing (NaN)": (
        lambda f: _two_symbols(f).assign(sym=lambda d: d.sym.where(d.index != 7)).to_csv(index=False),
        True,
        "'sym' is missing at row 7",
    ),
    "a timestamp twice for one symbol": (
        lambda f: (
            pd.concat([_two_symbols(f), _two_symbols(f).iloc[[3]]])
            .sort_values(["sym", "Date"], kind="stable")
            .to_csv(index=False)
        ),
        True,
        "symbol 'A'.* is duplicated",
    ),
    "no such symbol column": (lambda f: f.to_csv(index=False), True, "no symbol column 'sym'"),
}


@pytest.mark.parametrize("case", list(CSV_FILES))
def test_hostile_ohlcv_file_is_one_clear_line(small_run, bars_frame, tmp_path, case):
    hostile("red team 2: research files", case)
    make, per_symbol, match = CSV_FILES[case]
    content = make(bars_frame)
    path = tmp_path / "bars.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = ["predict", small_run, "--ohlcv", path, "--interval", DAILY]
    result = _invoke([*args, *(["--symbol-column", "sym"] if per_symbol else [])])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and str(path) in result.output
    assert re.search(match, result.output), result.output


def test_odd_but_valid_ohlcv_files_predict(small_run, bars_frame, tmp_path):
    """Controls: a byte-order mark, interleaved symbols, numeric symbols, epoch-second times and
    Parquet give the same last predictions as the plain CSV."""
    plain = tmp_path / "plain.csv"
    bars_frame.to_csv(plain, index=False)
    reference = json.loads(_invoke(["predict", small_run, "--ohlcv", plain, "--interval", DAILY]).output)["predictions"]
    two = _two_symbols(bars_frame)
    variants = {
        "byte-order mark": ("bom.csv", ("\ufeff" + bars_frame.to_csv(index=False)).encode(), None),
        "epoch seconds as the time": (
            "epoch.csv",
            bars_frame.assign(Date=bars_frame.Date.astype("int64") // 10**9).to_csv(index=False).encode(),
            None,
        ),
        "interleaved symbols": (
            "inter.csv",
            two.sort_values("Date", kind="stable").to_csv(index=False).encode(),
            "sym",
        ),
        "numeric symbols": (
            "num.csv",
            two.assign(sym=np.where(two.sym == "A", 1, 2)).to_csv(index=False).encode(),
            "sym",
        ),
    }
    for case, (name, content, symbol_column) in variants.items():
        hostile("red team 2: research files", f"control: {case}")
        path = tmp_path / name
        path.write_bytes(content)
        args = ["predict", small_run, "--ohlcv", path, "--interval", DAILY]
        result = _invoke([*args, *(["--symbol-column", symbol_column] if symbol_column else [])])
        assert result.exit_code == 0, (case, result.output)
        report = json.loads(result.output)
        for predictions in report["symbols"].values() if symbol_column else [report["predictions"]]:
            assert predictions == reference, case


def test_ohlcv_paths_that_are_not_files(small_run, tmp_path):
    for case, path, match in (
        ("a folder", tmp_path, "not a regular file"),  # 'no such file' before 0d37a44
        ("a character device", Path("/dev/zero"), "not a regular file"),
        ("no such file", tmp_path / "missing.csv", "no such file"),
        ("a Parquet name over CSV bytes", tmp_path / "fake.parquet", "cannot read bars"),
    ):
        hostile("red team 2: research files", case)
        if path.suffix == ".parquet":
            path.write_bytes(b"PAR1 not really")
        result = _invoke(["predict", small_run, "--ohlcv", path, "--interval", DAILY])
        assert result.exit_code == 2 and match in result.output, (case, result.output)


@pytest.mark.parametrize("interval", ["nan", "inf", "-1440", "0", "1e400"])
def test_predict_hostile_interval(small_run, bars_frame, tmp_path, interval):
    hostile("red team 2: CLI", f"predict --interval {interval}")
    path = tmp_path / "bars.csv"
    bars_frame.to_csv(path, index=False)
    result = _invoke(["predict", small_run, "--ohlcv", path, "--interval", interval])
    assert result.exit_code == 2 and result.output.startswith("error: "), result.output
    assert "interval" in result.output


def test_research_frame_of_other_types_is_refused(small_run):
    from fastinfer.research import RunPredictor

    runner = RunPredictor(small_run, interval_minutes=DAILY)
    X = pd.DataFrame(np.zeros((5, len(runner.feature_order))), columns=runner.feature_order)
    for case, frame, match in (
        ("object columns", X.astype(object), "is object, not numbers"),
        ("a feature column missing", X.drop(columns=[runner.feature_order[0]]), "missing feature column"),
    ):
        hostile("red team 2: research files", f"feature frame with {case}")
        with pytest.raises(InferenceError, match=match):
            runner.predict(frame)
    hostile("red team 2: research files", "present flags of another length")
    with pytest.raises(InferenceError, match="one per row"):
        runner.predict(X, present=np.ones(4, dtype=bool))


# ---------------------------------------------------------------- signing


@pytest.fixture(scope="module")
def signed(small_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("signed")
    private, public = generate_keypair(folder / "release")
    root = folder / "run" / small_run.name
    shutil.copytree(small_run, root)
    sign_run(root, private)
    return root, private, public


def _envelope_case(bundle: dict, change) -> dict:
    bundle = json.loads(json.dumps(bundle))
    change(bundle)
    return bundle


SIGNATURE_FILES = {
    "truncated": lambda raw, b: raw[: len(raw) // 2],
    "empty": lambda raw, b: b"",
    "a JSON list": lambda raw, b: b"[]",
    "key hint a number": lambda raw, b: _envelope_case(
        b, lambda x: x["verificationMaterial"]["publicKey"].update(hint=5)
    ),
    "envelope a list": lambda raw, b: {**b, "dsseEnvelope": []},
    "payload not base64": lambda raw, b: _envelope_case(b, lambda x: x["dsseEnvelope"].update(payload="%%%")),
    "payload not ASCII": lambda raw, b: _envelope_case(b, lambda x: x["dsseEnvelope"].update(payload="é")),
    "two signatures": lambda raw, b: _envelope_case(
        b, lambda x: x["dsseEnvelope"].update(signatures=x["dsseEnvelope"]["signatures"] * 2)
    ),
    "signature a list": lambda raw, b: _envelope_case(b, lambda x: x["dsseEnvelope"].update(signatures=[["x"]])),
    "signature cut short": lambda raw, b: _envelope_case(
        b, lambda x: x["dsseEnvelope"]["signatures"][0].update(sig=x["dsseEnvelope"]["signatures"][0]["sig"][:20])
    ),
    "payload of another statement": lambda raw, b: _envelope_case(
        b, lambda x: x["dsseEnvelope"].update(payload=base64.b64encode(b'{"_type": "x"}').decode())
    ),
    "nested 100 levels": lambda raw, b: ("[" * 100 + "]" * 100).encode(),
}


@pytest.mark.parametrize("case", list(SIGNATURE_FILES))
def test_tampered_signature_file_is_refused(signed, case):
    hostile("red team 2: signing", case)
    root, _, public = signed
    path = root / SIG_FILE
    raw = path.read_bytes()
    assert len(verify_run(root, public).files) > 5  # control
    bad = SIGNATURE_FILES[case](raw, json.loads(raw))
    path.write_bytes(bad if isinstance(bad, bytes) else json.dumps(bad).encode())
    try:
        with pytest.raises(SignatureError) as info:
            verify_run(root, public)
        assert info.value.path == str(path)
    finally:
        path.write_bytes(raw)


def test_signed_statement_with_a_path_out_of_the_run_is_refused(signed):
    """Even a statement the trusted key signed cannot make verify read outside the run."""
    hostile("red team 2: signing", "signed statement naming ../../etc/passwd")
    root, private, public = signed
    path = root / SIG_FILE
    raw = path.read_bytes()
    bundle = json.loads(raw)
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"].append({"name": "../../etc/passwd", "algorithm": "sha256", "digest": "0" * 64})
    resources = sorted(statement["predicate"]["resources"], key=lambda r: r["name"])
    import hashlib

    statement["subject"][0]["digest"]["sha256"] = hashlib.sha256(
        b"".join(bytes.fromhex(r["digest"]) for r in resources)
    ).hexdigest()
    payload = json.dumps(statement).encode()
    key = load_private_key(private)
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    bundle["dsseEnvelope"]["signatures"] = [
        {"sig": base64.b64encode(key.sign(pae(bundle["dsseEnvelope"]["payloadType"], payload))).decode(), "keyid": ""}
    ]
    path.write_text(json.dumps(bundle))
    try:
        with pytest.raises(Exception, match="escapes the run root") as info:
            verify_run(root, public)
        assert isinstance(info.value, __import__("fastinfer").errors.ModelLoadError)
    finally:
        path.write_bytes(raw)


def test_file_swapped_after_the_run_was_opened_is_refused(signed, tmp_path):
    root, _, public = signed
    copy = tmp_path / root.name
    shutil.copytree(root, copy)
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  verify_signature: true\n  trusted_public_key: {public}\n")
    loader = ModelLoader(copy, config_path=config)
    graph = next(copy.rglob("family=ridge/model.onnx"))
    target = graph.relative_to(copy / "targets").parts[0]
    for case, path, change, call in (
        ("graph swapped after opening", graph, lambda b: b + b"\0", lambda: loader.load(target, "ridge")),
        (
            "definitions swapped after opening",
            copy / "feature_definitions.yaml",
            lambda b: b"features:\n  gap: open / lag(close, 2) - 1\n",
            loader.definitions,
        ),
    ):
        hostile("red team 2: signing", case)
        original = path.read_bytes()
        path.write_bytes(change(original))
        with pytest.raises(SignatureError, match="changed since the run was opened") as info:
            call()
        assert info.value.path == str(path)
        path.write_bytes(original)
    assert loader.load(target, "lightgbm") is not None  # the rest still serves


# ---------------------------------------------------------------- CLI arguments and environment


def test_cli_key_and_signature_arguments(signed, tmp_path, monkeypatch):
    root, private, public = signed
    monkeypatch.delenv("FASTINFER_TEST_NO_SUCH_VAR", raising=False)
    cases = (
        ("keygen over an existing key", ["keygen", private.with_suffix("")], 2, "refusing to overwrite"),
        ("keygen into a missing folder of /proc", ["keygen", "/proc/no/key"], 2, "error: "),
        (
            "keygen password variable unset",
            ["keygen", tmp_path / "k", "--password-env", "FASTINFER_TEST_NO_SUCH_VAR"],
            2,
            "is not set",
        ),
        ("sign with the public key", ["sign", root, "--key", public], 2, "not a usable PEM private key"),
        ("sign with a missing key", ["sign", root, "--key", tmp_path / "none.key"], 2, "cannot read private key"),
        ("sign a run that does not exist", ["sign", tmp_path / "none", "--key", private], 2, "does not exist"),
        (
            "verify with a missing public key",
            ["verify", root, "--public-key", tmp_path / "none.pub"],
            1,
            "FAIL signature",
        ),
        ("verify with a CSV as the key", ["verify", root, "--public-key", private], 1, "FAIL signature"),
        ("verify without a run", ["verify"], 2, "Missing argument"),
    )
    for case, args, code, match in cases:
        hostile("red team 2: CLI", case)
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == code and match in result.output, (case, result.output)
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), case


def test_cli_config_and_feature_arguments(small_run, tmp_path):
    csv = tmp_path / "bars.csv"
    csv.write_text("a,b\n1,2\n")
    cases = (
        (
            "predict --config missing",
            ["predict", small_run, "--ohlcv", csv, "--interval", 1440, "--config", tmp_path / "x.yaml"],
            "cannot read config",
        ),
        (
            "predict --config a CSV",
            ["predict", small_run, "--ohlcv", csv, "--interval", 1440, "--config", csv],
            "expected a mapping",
        ),
        (
            "predict a run that does not exist",
            ["predict", tmp_path / "none", "--ohlcv", csv, "--interval", 1440],
            "does not exist",
        ),
        ("convert a run that does not exist", ["convert", tmp_path / "none"], "does not exist"),
        ("convert an unknown family", ["convert", small_run, "--families", "nope"], "Unknown family"),
        ("features explain an unknown name", ["features", "explain", "nope_x"], "unknown feature"),
        (
            "features explain with missing definitions",
            ["features", "explain", "gap", "--definitions", tmp_path / "none.yaml"],
            "cannot be read",
        ),
    )
    for case, args, match in cases:
        hostile("red team 2: CLI", case)
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2 and match in result.output, (case, result.output)


def test_predict_without_home_and_with_an_unusable_cache_dir(small_run, bars_frame, tmp_path):
    """A fresh process with HOME unset and FASTINFER_CACHE_DIR pointing at a file: the runtime's
    choice cache cannot be written, the prediction still comes out (a warning says why)."""
    hostile("red team 2: CLI", "HOME unset")
    hostile("red team 2: CLI", "FASTINFER_CACHE_DIR is a file")
    path = tmp_path / "bars.csv"
    bars_frame.to_csv(path, index=False)
    env = {k: v for k, v in os.environ.items() if k != "HOME"}
    env["FASTINFER_CACHE_DIR"] = str(path)  # a file where a folder belongs
    args = [sys.executable, "-m", "fastinfer", "predict", str(small_run), "--ohlcv", str(path), "--interval", "1440"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = json.loads(_invoke(["predict", small_run, "--ohlcv", path, "--interval", DAILY]).output)
    assert json.loads(done.stdout) == expected
    assert path.read_text() == bars_frame.to_csv(index=False)  # the file in the cache's place is untouched


# ================================================================ defects found by the red team, fixed


# ---------------------------------------------------------------- 01: state memory bomb


def test_long_windows_beyond_the_state_bound_are_refused_before_allocating():
    """5,000 definitions of rolling_max(close * k, 20000) (200 KB of YAML) asked for 2.1 GB of
    state per symbol (2.7 GB to compile); now a FeatureDefinitionError naming the feature that
    crossed the 32 MiB-per-symbol bound, raised while the program is still small."""
    hostile("red team 2: feature definitions", "5,000 distinct 20,000-bar windows")
    import tracemalloc

    features = {f"f{k}": f"rolling_max(close * {k + 2}, 20000)" for k in range(5000)}
    defs = FeatureDefinitions.from_dict({"features": features})
    tracemalloc.start()
    try:
        with pytest.raises(FeatureDefinitionError, match="state values per symbol") as info:
            compile_features(list(features), defs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.feature is not None and info.value.feature.startswith("f")
    assert peak < 256 << 20
    sixty = {f"f{k}": f"rolling_max(close * {k + 2}, 20000)" for k in range(60)}
    program = compile_features(list(sixty), FeatureDefinitions.from_dict({"features": sixty}))  # control
    assert (program.fstate_init.size + program.n_int) * 8 < 32 << 20


def test_run_with_a_state_bomb_is_a_model_load_error(run):
    hostile("red team 2: feature definitions", "state bomb in a run's feature_definitions.yaml")
    # 100 windows of 20,000 bars on distinct series: 5.3 M state values per symbol, 42 MB
    lines = "".join(f"  g{k}: rolling_max(close * {k + 2}, 20000)\n" for k in range(100))
    (run / "feature_definitions.yaml").write_text(
        "features:\n  gap: open / lag(close, 1) - 1 + " + " + ".join(f"g{k} * 0" for k in range(100)) + "\n" + lines
    )
    with pytest.raises(ModelLoadError, match="state values per symbol"):
        LivePredictor(run, ["A", "B"], DAILY)


# ---------------------------------------------------------------- 02: OverflowError from durations


@pytest.mark.parametrize(
    "case, call",
    [
        (
            "lag(close, 1e308d) daily",
            lambda: compile_features(
                ["a"], FeatureDefinitions.from_dict({"features": {"a": "lag(close, 1e308d)"}}), interval_minutes=DAILY
            ),
        ),
        (
            "lag(close, 1e305m) on 0.0001-minute bars",
            lambda: compile_features(
                ["a"], FeatureDefinitions.from_dict({"features": {"a": "lag(close, 1e305m)"}}), interval_minutes=1e-4
            ),
        ),
        ("vocabulary ret_<400 digits>", lambda: compile_features(["ret_" + "9" * 400], interval_minutes=DAILY)),
        ("vocabulary vol_<400 digits>d", lambda: compile_features(["vol_" + "9" * 400 + "d"], interval_minutes=DAILY)),
    ],
)
def test_a_window_of_infinitely_many_bars_is_a_typed_error(case, call):
    hostile("red team 2: feature definitions", case)
    with pytest.raises(FeatureDefinitionError, match="not a finite number of bars") as info:
        call()
    assert len(str(info.value)) < 2000


def test_run_with_an_infinite_duration_is_a_model_load_error(run):
    hostile("red team 2: feature definitions", "lag(close, 1e308d) in a run")
    (run / "feature_definitions.yaml").write_text("features:\n  gap: open / lag(close, 1e308d) - 1\n")
    with pytest.raises(ModelLoadError, match="not a finite number of bars"):
        LivePredictor(run, ["A"], DAILY)


def test_features_explain_of_an_infinite_window_is_one_line():
    hostile("red team 2: CLI", "features explain ret_<400 digits>")
    result = CliRunner().invoke(main, ["features", "explain", "ret_" + "9" * 400, "--interval", "1440"])
    assert result.exit_code == 2 and result.output.startswith("error: "), result.output


# ---------------------------------------------------------------- 03: RecursionError


def test_long_chain_in_one_expression_is_a_typed_error():
    """A sum of 999 terms (2 KB, within every length and token limit) recursed past Python's
    limit in ``unparse``; now refused by the grammar's tree-depth bound, naming the feature."""
    hostile("red team 2: feature definitions", "a + a + ... (999 terms)")
    text = "external: [c]\nfeatures:\n  a: " + " + ".join(["c"] * 999) + "\n"
    with pytest.raises(FeatureDefinitionError, match="levels deep") as info:
        FeatureDefinitions.loads(text)
    assert info.value.feature == "a"
    ok = FeatureDefinitions.loads("external: [c]\nfeatures:\n  a: " + " + ".join(["c"] * 100) + "\n")  # control
    assert compile_features(["a"], ok).features == ("a",)


@pytest.mark.parametrize("length", [400, 3000])
def test_long_chain_of_definitions_is_a_typed_error(length):
    hostile("red team 2: feature definitions", f"a chain of {length} definitions")
    features = {f"f{i}": f"f{i + 1} + 1" for i in range(length)} | {f"f{length}": "close"}
    with pytest.raises(FeatureDefinitionError, match="nest more than") as info:
        compile_features(["f0"], FeatureDefinitions.from_dict({"features": features}))
    assert info.value.feature == "f0" and len(str(info.value)) < 1000
    short = {f"f{i}": f"f{i + 1} + 1" for i in range(40)} | {"f40": "close"}  # control
    assert compile_features(["f0"], FeatureDefinitions.from_dict({"features": short})).features == ("f0",)


def test_run_with_a_deep_chain_is_a_model_load_error(run):
    hostile("red team 2: feature definitions", "a chain of 400 definitions in a run")
    text = "features:\n  gap: g0\n" + "".join(f"  g{i}: g{i + 1} + 0\n" for i in range(400))
    (run / "feature_definitions.yaml").write_text(text + "  g400: open / lag(close, 1) - 1\n")
    with pytest.raises(ModelLoadError, match="nest more than"):
        LivePredictor(run, ["A"], DAILY)


def test_feature_state_whose_definitions_nest_too_deeply_is_a_state_error():
    from fastinfer import state as _state
    from fastinfer.errors import StateError
    from fastinfer.features import StreamingFeatures

    hostile("red team 2: predictor state", "feature state carrying a 999-term definition")
    live = StreamingFeatures(["A"], ["close"])
    _, payload = _state.unwrap(live.state_dict(), "features", {2})
    payload["definitions"] = {"features": {"a": " + ".join(["1"] * 999)}}  # 3,993 characters, 1,997 tokens
    forged = _state.wrap("features", 2, payload)  # the checksum is recomputed: accidents only
    with pytest.raises(StateError):
        StreamingFeatures.from_state_dict(forged)


# ---------------------------------------------------------------- 04: header-only CSV


def test_predict_on_a_header_only_csv_is_one_clear_line(small_run, tmp_path):
    hostile("red team 2: research files", "a header and no rows")
    path = tmp_path / "bars.csv"
    path.write_text("Date,Open,High,Low,Close,Volume\n")
    result = CliRunner().invoke(main, ["predict", str(small_run), "--ohlcv", str(path), "--interval", "1440"])
    assert result.exit_code == 2 and "no bars" in result.output, (result.output, result.exception)


# ---------------------------------------------------------------- 05: partial convert


def _lock_keys(root):
    return sorted((e.target, e.family, e.status) for e in read_lock(root).entries)


def test_convert_of_an_unknown_target_leaves_the_lock_as_it_was(run):
    hostile("red team 2: CLI", "convert --targets <typo>")
    before = (run / "fastinfer.lock.json").read_bytes()
    result = CliRunner().invoke(main, ["convert", str(run), "--targets", "fwd_ret_1day"])
    assert result.exit_code == 2 and "no target 'fwd_ret_1day'" in result.output, result.output
    assert (run / "fastinfer.lock.json").read_bytes() == before


def test_partial_convert_keeps_the_other_models_entries(run):
    hostile("red team 2: CLI", "convert --targets one of two")
    hostile("red team 2: CLI", "convert --families one of two")
    before = _lock_keys(run)
    assert len(before) == 4
    for args in (["--targets", "fwd_ret_1d"], ["--families", "ridge"]):
        result = CliRunner().invoke(main, ["convert", str(run), *args])
        assert result.exit_code == 0, result.output
        assert _lock_keys(run) == before, args


# ---------------------------------------------------------------- 06: research frames


def test_feature_frame_with_a_column_twice_is_an_inference_error(small_run):
    from fastinfer.research import RunPredictor

    hostile("red team 2: research files", "a feature column given twice")
    runner = RunPredictor(small_run, interval_minutes=DAILY)
    X = pd.DataFrame(np.zeros((5, len(runner.feature_order))), columns=runner.feature_order)
    twice = pd.concat([X, X[[runner.feature_order[0]]]], axis=1)
    with pytest.raises(InferenceError, match="more than once"):
        runner.predict(twice)


def test_symbols_that_are_not_names_are_a_feature_build_error(small_run, goog):
    from fastinfer.research import RunPredictor

    runner = RunPredictor(small_run, interval_minutes=DAILY)
    bars = goog.iloc[600:630]
    for case, frame, column in (
        ("symbols that are lists", bars.assign(s=[[1]] * len(bars)), "s"),
        ("a list as the symbol column", bars.assign(s="A"), ["s"]),
    ):
        hostile("red team 2: research files", case)
        with pytest.raises(FeatureBuildError):
            runner.predict_bars(frame, symbol_column=column)
