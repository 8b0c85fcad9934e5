"""Issue 3: per family, the native model vs its ONNX graph, 1 row and 512 rows, in one run.

Both go through the same ``LoadedModel.predict`` (so input handling is equal); ratios are
printed at the end (native median / ONNX median).
"""

from __future__ import annotations

import numpy as np
import pytest

from fastinfer import testing
from fastinfer.compiler import compile_run
from fastinfer.loader import ModelLoader

FAMILIES = [
    "lightgbm",
    "xgboost",
    "catboost",
    "random_forest",
    "extra_trees",
    "ridge",
    "mlp",
    "lstm",
    "ngboost",
    "quantile_lightgbm",
    "ensemble",
]
SIZE = testing.TrainSize(trees=200, depth=6, leaves=31, epochs=1, hidden=32)
TARGET = "fwd_ret_5m"


@pytest.fixture(scope="module")
def loaders(tmp_path_factory):
    X, targets = testing.synthetic_features(n_rows=2000, n_features=16, seed=1)
    root = testing.write_training_run(
        tmp_path_factory.mktemp("bench_conv"), X, {TARGET: targets[TARGET]}, FAMILIES, size=SIZE
    )
    compile_run(root)
    return {"native": ModelLoader(root, prefer_onnx=False), "onnx": ModelLoader(root)}


@pytest.mark.parametrize("rows", [1, 512])
@pytest.mark.parametrize("backend", ["native", "onnx"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_latency(benchmark, record_ratio, loaders, family, backend, rows):
    model = loaders[backend].load(TARGET, family)
    assert model.backend == backend
    shape = (
        (rows, model.spec.sequence_length, model.n_features) if model.family.sequential else (rows, model.n_features)
    )
    X = np.random.default_rng(0).normal(size=shape)
    benchmark(model.predict, X)
    record_ratio(f"{family}-{rows}row", subject=backend == "onnx", name=backend)
