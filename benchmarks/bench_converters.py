"""Issue 3 / #15.9: per family, the native model vs its ONNX graph, 1 row and 512 rows, in one run;
and the same for classifiers and categorical models (#15: converted by the tree adapters).

Both go through the same ``LoadedModel.predict`` (so input handling is equal); ratios are
printed at the end (native median / ONNX median). The classifier and categorical groups are
``<family>-<kind>-<rows>row``: a LightGBM binary and an XGBoost 3-class classifier (the served
columns are ``p_<label>``), and LightGBM / XGBoost regressors splitting on a 40-code categorical
column (the ONNX graph is the exact interval chain, ``fastinfer.adapters.trees``).
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
# (family, target of the second run) for the classifier and categorical groups.
KINDS = {
    "lightgbm-binary": ("lightgbm", "dir_5m"),
    "xgboost-multiclass": ("xgboost", "regime_5m"),
    "lightgbm-categorical": ("lightgbm", "ret_5m"),
    "xgboost-categorical": ("xgboost", "ret_5m"),
}
N_CODES = 40


@pytest.fixture(scope="module")
def loaders(tmp_path_factory):
    X, targets = testing.synthetic_features(n_rows=2000, n_features=16, seed=1)
    root = testing.write_training_run(
        tmp_path_factory.mktemp("bench_conv"), X, {TARGET: targets[TARGET]}, FAMILIES, size=SIZE
    )
    compile_run(root)
    return {"native": ModelLoader(root, prefer_onnx=False), "onnx": ModelLoader(root)}


@pytest.fixture(scope="module")
def kind_loaders(tmp_path_factory):
    """Classifiers (binary: the sign of the return; multiclass: its terciles) and regressors over a
    categorical column of 40 codes whose effect the trees must learn."""
    X, targets = testing.synthetic_features(n_rows=4000, n_features=16, seed=2)
    rng = np.random.default_rng(3)
    X["feat_x0"] = rng.integers(0, N_CODES, len(X)).astype(float)
    y = targets[TARGET] + rng.normal(size=N_CODES)[X["feat_x0"].astype(int)]
    root = testing.write_training_run(
        tmp_path_factory.mktemp("bench_kinds"),
        X,
        {"dir_5m": y, "regime_5m": y, "ret_5m": y},
        ["lightgbm", "xgboost"],
        size=SIZE,
        task={"dir_5m": "binary", "regime_5m": "multiclass"},
        categorical=["feat_x0"],
    )
    lock = compile_run(root)
    assert all(e.status == "onnx" for e in lock.entries), [e.reason for e in lock.entries if e.status != "onnx"]
    return {"native": ModelLoader(root, prefer_onnx=False), "onnx": ModelLoader(root)}, X


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


@pytest.mark.parametrize("rows", [1, 512])
@pytest.mark.parametrize("backend", ["native", "onnx"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_classifier_and_categorical_latency(benchmark, record_ratio, kind_loaders, kind, backend, rows):
    loaders, X = kind_loaders
    family, target = KINDS[kind]
    model = loaders[backend].load(target, family)
    assert model.backend == backend
    rows_ = X.sample(rows, random_state=0, replace=rows > len(X))[list(model.feature_order)].to_numpy()
    if backend == "onnx":  # the same answer as native, within the gate's tolerance
        reference = loaders["native"].load(target, family).predict(rows_)
        np.testing.assert_allclose(model.predict(rows_), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    benchmark(model.predict, rows_)
    record_ratio(f"{kind}-{rows}row", subject=backend == "onnx", name=backend)
