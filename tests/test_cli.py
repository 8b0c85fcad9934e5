"""The CLI through its real entry point (click's runner): outputs and exit codes."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fastinfer.cli import main
from fastinfer.lock import read_lock

from .conftest import TARGET


@pytest.fixture
def runner():
    return CliRunner()


def test_convert_and_verify(runner, run_copy):
    result = runner.invoke(main, ["convert", str(run_copy), "--families", "lightgbm,ridge,ngboost"])
    assert result.exit_code == 0, result.output
    assert "3/3 models served from ONNX" in result.output
    assert sorted(e.family for e in read_lock(run_copy).entries) == ["lightgbm", "ngboost", "ridge"]
    result = runner.invoke(main, ["verify", str(run_copy)])
    assert result.exit_code == 0 and "0 problem(s)" in result.output
    graph = run_copy / "targets" / TARGET / "models" / "view=CROSS_SECTIONAL" / "family=ridge" / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    result = runner.invoke(main, ["verify", str(run_copy)])
    assert result.exit_code == 1 and f"FAIL {TARGET}/ridge: mismatch: lock graph" in result.output


def test_missing_run_root_is_one_line(runner, tmp_path):
    result = runner.invoke(main, ["convert", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and "does not exist" in result.output
    assert "Traceback" not in result.output


def test_predict_from_csv(runner, market_run, goog, tmp_path):
    csv = tmp_path / "goog.csv"
    goog.iloc[1000:1120].to_csv(csv)
    out = tmp_path / "pred.csv"
    result = runner.invoke(main, ["predict", str(market_run), "--ohlcv", str(csv), "--interval", "1440", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["bars"] == 120 and set(report["predictions"]) == {"1d", "5d", "10d"}
    assert all(v == v for h in report["predictions"].values() for v in h.values())  # warmed up: no NaN
    assert out.read_text().count("\n") == 121


@pytest.mark.parametrize("content,match", [
    ("open,high,low,close\n1,2,0.5,1.5\n", "volume"),
    ('open,high\n"1,2\n', "error:"),
])
def test_predict_bad_csv(runner, market_run, tmp_path, content, match):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    result = runner.invoke(main, ["predict", str(market_run), "--ohlcv", str(csv), "--interval", "1440"])
    assert result.exit_code == 2 and match in result.output and "Traceback" not in result.output


def test_predict_interval_mismatch_exit_code(runner, market_run, goog, tmp_path):
    csv = tmp_path / "goog.csv"
    goog.iloc[:100].to_csv(csv)
    result = runner.invoke(main, ["predict", str(market_run), "--ohlcv", str(csv), "--interval", "60"])
    assert result.exit_code == 2 and "interval mismatch" in result.output
