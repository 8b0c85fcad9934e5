"""The demo job end to end through the CLI, its option parsing, and the seed path it measures against."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fastinfer import demo, testing
from fastinfer.cli import main
from fastinfer.errors import ConfigError
from fastinfer.features import ohlcv_arrays
from fastinfer.predictor import LivePredictor, horizon_of
from fastinfer.reference import SeedPath

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    args = [
        "demo",
        "--families",
        "ridge,LightGBM",
        "--horizons",
        "1d",
        "--bars",
        "40",
        "--seed-bars",
        "5",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    return result, out


def test_demo_prints_both_paths_side_by_side(small_demo):
    result, out = small_demo
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("latency per bar") :]
    assert "fastinfer on_bar" in table and "seed path" in table
    for column in ("p50", "p99", "p99.9", "max"):
        assert column in table
    words = " ".join(result.output.split())  # rich wraps at the runner's 80 columns
    assert "seed path measured over 5 bars" in words
    assert "2/2 models served from ONNX" in result.output  # the convert step's parity table ran
    assert f"wrote {out / 'latency.png'}" in words


def test_demo_writes_a_real_histogram_png(small_demo):
    import matplotlib.image

    _, out = small_demo
    png = out / "latency.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 500
    colours = np.unique(pixels[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 20, "image is blank or nearly so"
    # Both paths' bars are drawn in their colours (blended with white by alpha).
    rgb = pixels[..., :3]
    blue = (rgb[..., 2] > rgb[..., 0] + 0.2).sum()
    red = (rgb[..., 0] > rgb[..., 2] + 0.2).sum()
    assert blue > 100 and red > 100


def test_demo_report_has_every_key(small_demo):
    _, out = small_demo
    report = json.loads((out / "report.json").read_text())
    for key in (
        "dataset",
        "bars",
        "seed_bars",
        "horizons",
        "families",
        "parity",
        "latency_us",
        "p50_ratio",
        "final_predictions",
        "versions",
        "machine",
        "run_root",
    ):
        assert key in report, key
    assert report["dataset"] == "goog" and report["bars"] == 40 and report["horizons"] == {"1d": 1}
    assert report["families"] == ["ridge", "lightgbm"]
    assert {(p["family"], p["status"]) for p in report["parity"]} == {("ridge", "onnx"), ("lightgbm", "onnx")}
    assert all(p["max_rel"] <= p["tolerance"] for p in report["parity"])
    fast, seed = report["latency_us"]["fastinfer"], report["latency_us"]["seed_path"]
    assert fast["count"] == 40 and seed["count"] == 5
    assert report["p50_ratio"] == pytest.approx(seed["p50_us"] / fast["p50_us"])
    assert len(report["final_predictions"]) == demo.FINAL_BARS_SHOWN * 2
    assert report["machine"]["cpu_count"] >= 1 and "numpy" in report["versions"]


def test_demo_predictions_are_the_live_predictors(small_demo, goog):
    """The printed/recorded predictions are what a fresh LivePredictor gives on the same bars."""
    _, out = small_demo
    report = json.loads((out / "report.json").read_text())
    predictor = LivePredictor(report["run_root"], ["GOOG"], 1440.0)
    bars = ohlcv_arrays(goog)
    for t in range(len(goog) - 40 - demo.WARMUP_BARS, len(goog)):
        predictor.on_bar(*(bars[k][t : t + 1] for k in ("open", "high", "low", "close", "volume")))
    last_bar = f"{goog.index[-1]:%Y-%m-%d}"
    recorded = {(p["horizon"], p["family"]): p["value"] for p in report["final_predictions"] if p["bar"] == last_bar}
    expected = {(h, f): v for h, by_family in predictor.as_dict("GOOG").items() for f, v in by_family.items()}
    assert recorded.keys() == expected.keys()
    for key, value in expected.items():
        assert recorded[key] == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize(
    "text,interval,bars",
    [
        ("1d,5d,10d", 1440.0, (1, 5, 10)),
        ("1h,4h,24h", 60.0, (1, 4, 24)),
        ("1d", 60.0, (24,)),
        ("3, 7", 1440.0, (3, 7)),
        ("15m,60M", 15.0, (1, 4)),
    ],
)
def test_parse_horizons(text, interval, bars):
    assert demo.parse_horizons(text, interval) == bars


@pytest.mark.parametrize(
    "text,match",
    [("30m", "whole number"), ("1x", "expected"), ("1d,1d", "twice"), ("0", "whole number"), ("", "expected")],
)
def test_parse_horizons_rejects(text, match):
    with pytest.raises(ConfigError, match=match):
        demo.parse_horizons(text, 1440.0)


def test_horizon_labels_follow_the_spec():
    assert testing.horizon_label(5, 1440.0) == "5d"
    assert testing.horizon_label(4, 60.0) == "240m"
    assert horizon_of(f"fwd_ret_{testing.horizon_label(1, 15.0)}") == "15m"


@pytest.mark.parametrize(
    "args,match",
    [
        (["--horizons", "30m"], "'--horizons'"),
        (["--families", "ridge,nope"], "unknown family 'nope'"),
        (["--bars", "5000"], "leaves too few GOOG bars"),
        (["--bars", "10", "--seed-bars", "20"], "exceeds --bars"),
    ],
)
def test_demo_bad_options_are_one_clear_error(args, match, tmp_path):
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and match in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists(), "nothing is trained or written on a bad option"


def test_seed_path_agrees_with_the_live_predictor(market_run, goog):
    """Given the whole history (no window), the spec's path computes what fastinfer computes."""
    target = "fwd_ret_5d"  # every family once: Keras model.predict and the LSTM's buffer included
    predictor = LivePredictor(market_run, ["GOOG"], 1440.0, targets=[target])
    seed = SeedPath(market_run, targets=[target], lookback=None)
    bars = ohlcv_arrays(goog)
    end = 1100
    for t in range(end):
        predictor.on_bar(*(bars[k][t : t + 1] for k in ("open", "high", "low", "close", "volume")))
    for t in range(end - demo.SEQUENCE_LENGTH, end):  # fills the LSTMs' buffers with the same rows
        reference = seed.on_bar(goog.iloc[: t + 1])
    live = predictor.as_dict("GOOG")
    assert len(reference) == 5
    for (target, family), value in reference.items():
        assert np.isfinite(value)
        assert live[horizon_of(target)][family] == pytest.approx(value, rel=1e-4, abs=1e-6), (target, family)
