"""Session fixtures: real small models of every family, trained once per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter
# Backend choices calibrated in this session only (fastinfer.runtime): none from earlier runs.
os.environ.setdefault("FASTINFER_CACHE_DIR", _SESSION_CACHE := tempfile.mkdtemp(prefix="fastinfer-test-cache-"))

import pytest

from fastinfer import families, testing


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)  # ours, used or not


ALL_FAMILIES = [f.name for f in families.FAMILIES]
TARGET = "fwd_ret_5m"


@pytest.fixture(scope="session")
def synthetic():
    """(features DataFrame in training order, {target: y}) — deterministic."""
    return testing.synthetic_features(n_rows=400, n_features=8, seed=0)


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, synthetic):
    """A run with every family on one target (both family-dir spellings are tested elsewhere)."""
    X, targets = synthetic
    out = tmp_path_factory.mktemp("full_run")
    return testing.write_training_run(out, X, {TARGET: targets[TARGET]}, ALL_FAMILIES)


@pytest.fixture
def run_copy(tmp_path, full_run):
    """A private copy of ``full_run`` that a test may damage."""
    dest = tmp_path / "run" / full_run.name
    shutil.copytree(full_run, dest)
    return dest


@pytest.fixture(scope="session")
def compiled_run(tmp_path_factory, full_run):
    """A copy of ``full_run`` compiled to ONNX (lock + model.onnx files)."""
    from fastinfer.compiler import compile_run

    dest = tmp_path_factory.mktemp("compiled") / "run" / full_run.name
    shutil.copytree(full_run, dest)
    compile_run(dest)
    return dest


def copy_run(run: Path, into: Path) -> Path:
    """A private copy of ``run`` that a test may damage: ``into/run/<run id>``."""
    dest = into / "run" / run.name
    shutil.copytree(run, dest)
    return dest


@pytest.fixture
def compiled_copy(tmp_path, compiled_run):
    """A private copy of ``compiled_run`` that a test may damage."""
    return copy_run(compiled_run, tmp_path)


MARKET_FAMILIES = ["lightgbm", "xgboost", "ridge", "mlp", "lstm"]
MARKET_TRAIN_BARS = 900


@pytest.fixture(scope="session")
def goog():
    from backtesting.test import GOOG

    return GOOG


@pytest.fixture(scope="session")
def market_run(tmp_path_factory, goog):
    """3 horizons × LightGBM, XGBoost, Ridge, MLP, LSTM trained on real GOOG daily bars, compiled."""
    from fastinfer.compiler import compile_run

    root = testing.write_market_run(
        tmp_path_factory.mktemp("market"), goog.iloc[:MARKET_TRAIN_BARS], MARKET_FAMILIES, sequence_length=10
    )
    compile_run(root)
    return root


# ---------------------------------------------------------------- hardening report (issue #9)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Hostile cases tried per category and hypothesis examples per property, as a table."""
    from ._hardening import report_lines

    lines = report_lines()
    if lines:
        terminalreporter.write_sep("=", "hardening report: hostile inputs and properties")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def no_subprocess(monkeypatch):
    """Fails the test if anything starts a child process (crafted and damaged files are refused in-process)."""
    import subprocess

    def refuse(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
