"""One bad model never takes down a run; run-time settings and inputs fail typed (issue #16)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fastinfer.config import ExecutorSettings, Settings
from fastinfer.integrity import sha256_file
from fastinfer.loader import ModelLoader

from ._hardening import hostile
from .conftest import TARGET, copy_run


def test_optimized_model_dir_is_usable(compiled_copy, tmp_path):
    """Every session writes its optimised graph as one flat file (a target/family session name
    used to make ORT write into a subfolder that did not exist: every ONNX model failed)."""
    hostile("config", "executor.optimized_model_dir set")
    folder = tmp_path / "optimized"
    settings = replace(Settings(), executor=replace(ExecutorSettings(), optimized_model_dir=str(folder)))
    loader = ModelLoader(compiled_copy, settings=settings)
    models = loader.load_all()
    onnx_models = [m for m in models.values() if m.backend == "onnx"]
    assert onnx_models and not loader.errors
    written = sorted(p.name for p in folder.iterdir())
    assert all(p.is_file() for p in folder.iterdir()) and len(written) == len(onnx_models)
    assert any(name.startswith(f"{TARGET}_lightgbm-") for name in written)


# ---------------------------------------------------------------- nonsense bars (#16.14)

DAILY = 1440.0
NONSENSE = {  # B's bar at t = 75, as (open, high, low, close, volume) multipliers / values
    "negative close": lambda o, h, l, c, v: (o, h, l, -c, v),
    "zero prices": lambda o, h, l, c, v: (0.0, 0.0, 0.0, 0.0, v),
    "negative volume": lambda o, h, l, c, v: (o, h, l, c, -v),
    "high below low": lambda o, h, l, c, v: (o, l, h, c, v),
    "close above high": lambda o, h, l, c, v: (o, h, l, h * 1.5, v),
    "close 1e300": lambda o, h, l, c, v: (o, 1e300, l, 1e300, v),
}


def _ohlcv(goog, start: int, n: int) -> list[np.ndarray]:
    from fastinfer.features import ohlcv_arrays

    a = ohlcv_arrays(goog.iloc[start : start + n])
    return [a[k] for k in ("open", "high", "low", "close", "volume")]


@pytest.mark.parametrize("case", list(NONSENSE))
def test_nonsense_bar_is_a_missing_bar_and_counted(market_run, goog, case):
    """bar_check reject (the default): symbol B's impossible bar changes nothing of B's state, as a
    missing bar would, is counted in rejected_bars, and A is served as if nothing happened."""
    from fastinfer.predictor import LivePredictor

    hostile("live bar", f"finite nonsense bar: {case}")
    bars = _ohlcv(goog, 1000, 90)
    checked = LivePredictor(market_run, ["A", "B"], DAILY, families=["lightgbm", "ridge", "lstm"])
    missing = LivePredictor(market_run, ["A", "B"], DAILY, families=["lightgbm", "ridge", "lstm"])
    for t in range(90):
        a = [x[t] for x in bars]
        bad = NONSENSE[case](*a) if t == 75 else a
        nan = [np.nan] * 5 if t == 75 else a
        out = checked.on_bar(*(np.array([x, y]) for x, y in zip(a, bad)))
        ref = missing.on_bar(*(np.array([x, y]) for x, y in zip(a, nan)))
        assert np.array_equal(out, ref, equal_nan=True), t
    assert checked.rejected_bars.tolist() == [0, 1] and missing.rejected_bars.tolist() == [0, 0]
    assert checked.state_dict()["payload"]["rejected_bars"] == [0, 1]


def test_bar_check_pass_feeds_the_bar_as_it_is(market_run, goog):
    from fastinfer.predictor import LivePredictor

    settings = replace(Settings(), predictor=replace(Settings().predictor, bar_check="pass"))
    bars = _ohlcv(goog, 1000, 80)
    fed = LivePredictor(market_run, ["B"], DAILY, families=["ridge"], settings=settings)
    refused = LivePredictor(market_run, ["B"], DAILY, families=["ridge"])
    for t in range(80):
        bar = NONSENSE["close above high"](*(x[t] for x in bars)) if t == 70 else [x[t] for x in bars]
        a, b = fed.on_bar(*(np.array([x]) for x in bar)), refused.on_bar(*(np.array([x]) for x in bar))
    assert not np.array_equal(a, b, equal_nan=True)  # the fed bar moved B's features
    assert fed.rejected_bars.tolist() == [0] and refused.rejected_bars.tolist() == [1]


# ---------------------------------------------------------------- one bad model (#16.1)


def _truncate_model(run: Path, family: str, name: str) -> Path:
    folder = next(run.glob(f"targets/*/models/view=*/family={family}"))
    path = folder / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    meta = json.loads((folder / "model_meta.json").read_text())
    meta["model_checksum"] = sha256_file(path)  # a consistent writer's mistake: checksum of the bad file
    (folder / "model_meta.json").write_text(json.dumps(meta))
    return path


@pytest.fixture
def market_copy(tmp_path, market_run):
    return copy_run(market_run, tmp_path)


def test_a_model_that_fails_to_load_is_recorded_and_the_rest_of_the_run_stays_servable(market_copy, goog):
    """A truncated model.txt in one family folder: convert records it as failed with its reason, the
    lock still reads, every other model loads, verify names it, the live predictor leaves it out
    (its reason in ``unavailable``) or, with on_model_error: error, refuses."""
    from click.testing import CliRunner

    from fastinfer.cli import main
    from fastinfer.compiler import compile_run
    from fastinfer.errors import ModelLoadError
    from fastinfer.lock import read_lock
    from fastinfer.predictor import LivePredictor
    from fastinfer.research import RunPredictor

    hostile("damaged model file", "truncated model.txt in one folder of a run, then convert")
    path = _truncate_model(market_copy, "lightgbm", "model.txt")
    (path.parent / "model.onnx").unlink()
    lock = compile_run(market_copy)
    failed = [e for e in lock.entries if e.status == "failed"]
    assert [(e.family, e.native_file) for e in failed] == [("lightgbm", str(path.relative_to(market_copy)))]
    # verified (its checksum is the bad file's), so opened in process: the format check's reason, no type name
    assert "cannot open: malformed LightGBM model (" in failed[0].reason and "Error" not in failed[0].reason
    assert read_lock(market_copy).entries == lock.entries  # the lock reads back
    target = failed[0].target
    loader = ModelLoader(market_copy)
    loaded = loader.load_all()
    assert (target, "lightgbm") not in loaded and len(loaded) == len(lock.entries) - 1
    assert set(loader.errors) == {(target, "lightgbm")}
    result = CliRunner().invoke(main, ["verify", str(market_copy)])
    assert result.exit_code == 1 and f"FAIL {target}/lightgbm: failed to load" in result.output
    predictor = LivePredictor(market_copy, ["GOOG"], DAILY)
    assert (target, "lightgbm") not in {(t, f) for t, f, _ in predictor.columns} and len(predictor.models) == 14
    assert "malformed LightGBM" in predictor.unavailable[(target, "lightgbm")]
    predictor.predict_with_fallback(target, ["lightgbm", "ridge"])
    family, why = predictor.fallback_log[target][0]
    assert family == "lightgbm" and why.startswith("failed to load")
    assert RunPredictor(market_copy, interval_minutes=DAILY).unavailable == predictor.unavailable  # one rule
    strict = replace(Settings(), predictor=replace(Settings().predictor, on_model_error="error"))
    with pytest.raises(ModelLoadError, match="malformed LightGBM"):
        LivePredictor(market_copy, ["GOOG"], DAILY, settings=strict)
    with pytest.raises(ModelLoadError, match="malformed LightGBM"):
        RunPredictor(market_copy, interval_minutes=DAILY, settings=strict)


def test_stale_temp_files_of_a_killed_convert_are_removed(run_copy):
    from fastinfer.compiler import compile_run

    hostile("crash mid-write (SIGKILL)", "temp files left by a killed convert")
    folder = next(run_copy.glob("targets/*/models/view=*/family=ridge"))
    left = [folder / ".model.onnx.k3j2.tmp", run_copy / ".fastinfer.lock.json.x9.tmp"]
    kept = folder / ".notes.tmp"  # not a file fastinfer writes: left alone
    for p in (*left, kept):
        p.write_bytes(b"partial")
    compile_run(run_copy, families=["ridge"])
    assert not any(p.exists() for p in left) and kept.exists()


def test_onnx_runtime_failures_at_run_time_are_typed_errors(compiled_copy, synthetic, monkeypatch):
    """A failure inside ONNX Runtime (here: made to raise its own RuntimeError) reaches the caller
    as an InferenceError naming the model (engine path) or the fused graph (live path)."""
    from fastinfer import executor
    from fastinfer.errors import InferenceError

    hostile("ONNX graph", "ONNX Runtime failing at run time")
    X, _ = synthetic
    model = ModelLoader(compiled_copy).load(TARGET, "ridge")
    rows = X[list(model.feature_order)].to_numpy()[:4]

    def explode(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad allocation")

    monkeypatch.setattr(model.runtime, "run", explode)
    monkeypatch.setattr(model, "_run", explode)
    with pytest.raises(InferenceError, match=f"target='{TARGET}' family='ridge'.*bad allocation"):
        model.predict(rows)
    monkeypatch.undo()
    monkeypatch.setattr(executor.BoundGraph, "run", explode)
    plan = executor.Plan([model], list(model.feature_order), 1, replace(ExecutorSettings(), forest_kernel="off"))
    with pytest.raises(InferenceError, match="fused-tabular.*bad allocation"):
        plan.run()
