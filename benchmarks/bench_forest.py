"""TARGETS P2: 500-tree LightGBM and XGBoost, 1 row and 512 rows.

Run: ``.venv/bin/python -m pytest benchmarks/bench_forest.py --benchmark-only``

Per (model, rows) group, adjacent in time: the forest kernel (subject), ONNX Runtime
on the same graph (1 intra-op thread, sequential execution, spinning off), the
native booster (1 thread) and, when installed, tl2cgen-compiled treelite
(1 thread; not a project dependency, skipped with a reason otherwise).
Target: forest >= 3x faster than ORT on 1 row and >= 2x on 512 rows.
Ratios are printed at the end of the run.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fastinfer.kernels.forest import ForestKernel

F = 30
N_TREES = 500
ROWS = (1, 512)


def _data(n: int = 20_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F)).astype(np.float32)
    y = 2 * X[:, 0] + np.sin(3 * X[:, 1]) + X[:, 2] * X[:, 3] + 0.5 * rng.normal(size=n)
    X[rng.random(X.shape) < 0.02] = np.nan
    return X, y.astype(np.float32)


def _build(family: str):
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = _data()
    types = [("x", FloatTensorType([None, F]))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if family == "lightgbm":
            import lightgbm as lgb

            m = lgb.LGBMRegressor(n_estimators=N_TREES, num_leaves=31, verbose=-1, n_jobs=1, random_state=0).fit(X, y)
            booster = m.booster_
            native = lambda x: booster.predict(x, num_threads=1)  # noqa: E731
            onx = onnxmltools.convert_lightgbm(m, initial_types=types, target_opset=15)
        else:
            import xgboost as xgb

            m = xgb.XGBRegressor(n_estimators=N_TREES, max_depth=6, n_jobs=1, random_state=0).fit(X, y)
            booster = m.get_booster()
            booster.set_param({"nthread": 1})
            native = lambda x: booster.inplace_predict(x)  # noqa: E731
            onx = onnxmltools.convert_xgboost(m, initial_types=types, target_opset=15)
    return X, booster, native, onx


def _treelite(family: str, booster, tmp_dir):
    tl2cgen = pytest.importorskip("tl2cgen", reason="tl2cgen (with treelite) is not installed")
    treelite = pytest.importorskip("treelite", reason="treelite is not installed")
    if family == "lightgbm":
        model = treelite.frontend.from_lightgbm(booster)
    else:
        model = treelite.frontend.from_xgboost(booster)
    lib = str(tmp_dir / f"{family}.so")
    tl2cgen.export_lib(model, toolchain="gcc", libpath=lib, params={"parallel_comp": 8})
    predictor = tl2cgen.Predictor(lib, nthread=1)
    return lambda x: predictor.predict(tl2cgen.DMatrix(x))


@pytest.fixture(scope="module", params=["lightgbm", "xgboost"])
def model(request, tmp_path_factory):
    import onnxruntime as ort

    family = request.param
    X, booster, native, onx = _build(family)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(onx.SerializeToString(), so, providers=["CPUExecutionProvider"])
    kernel = ForestKernel.from_onnx(onx)
    X_eval = np.ascontiguousarray(X[-512:])
    ref = sess.run(None, {"x": X_eval})[0].reshape(-1, 1)
    got = kernel.predict(X_eval)
    assert np.array_equal(got, ref), "forest kernel and ORT disagree"
    return {
        "family": family,
        "X": X_eval,
        "native": native,
        "sess": sess,
        "kernel": kernel,
        "booster": booster,
        "tmp": tmp_path_factory.mktemp(f"tl-{family}"),
    }


@pytest.mark.parametrize("impl", ["forest", "onnxruntime", "native", "treelite"])
@pytest.mark.parametrize("rows", ROWS)
def test_forest(benchmark, record_ratio, model, rows, impl):
    X = np.ascontiguousarray(model["X"][:rows])
    group = f"P2 {model['family']} {N_TREES} trees, {rows} row{'s' if rows > 1 else ''}"
    benchmark.group = group
    if impl == "forest":
        out = np.empty((rows, 1), dtype=np.float32)
        k = model["kernel"]
        benchmark(k.predict, X, out)
    elif impl == "onnxruntime":
        sess, feed = model["sess"], {"x": X}
        benchmark(sess.run, None, feed)
    elif impl == "native":
        benchmark(model["native"], X)
    else:
        if "treelite_fn" not in model:
            model["treelite_fn"] = _treelite(model["family"], model["booster"], model["tmp"])
        benchmark(model["treelite_fn"], X)
    record_ratio(group, subject=impl == "forest", name=impl)
