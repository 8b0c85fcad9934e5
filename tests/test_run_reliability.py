"""One bad model never takes down a run; run-time settings and inputs fail typed (issue #16)."""

from __future__ import annotations

from dataclasses import replace

from fastinfer.config import ExecutorSettings, Settings
from fastinfer.loader import ModelLoader

from ._hardening import hostile
from .conftest import TARGET


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
