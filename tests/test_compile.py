"""Compiling a run: lock file, ONNX serving through ModelLoader, tampering, staleness, fallbacks."""

from __future__ import annotations

import json
import shutil

import joblib
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fastinfer import testing
from fastinfer.compiler import compile_run
from fastinfer.converters import parity
from fastinfer.errors import IntegrityError, ModelLoadError, StateError
from fastinfer.integrity import sha256_file
from fastinfer.loader import ModelLoader
from fastinfer.lock import LOCK_FILE, read_lock

from ._hardening import hostile
from .conftest import ALL_FAMILIES, TARGET

# Families whose converters exist and pass the gate on this run; the rest must say why not.
ONNX_FAMILIES = set(ALL_FAMILIES)


def _dir(root, family, view="CROSS_SECTIONAL"):
    return root / "targets" / TARGET / "models" / f"view={view}" / f"family={family}"


def test_lock_lists_every_model_with_parity(compiled_run):
    lock = read_lock(compiled_run)
    assert sorted(e.family for e in lock.entries) == sorted(ALL_FAMILIES)
    for e in lock.entries:
        assert e.native_sha256 == sha256_file(compiled_run / e.native_file)
        if e.status == "onnx":
            assert e.onnx_sha256 == sha256_file(compiled_run / e.onnx_file)
            assert e.parity["max_rel"] <= e.parity["tolerance"]
            assert e.input["dtype"] == "float32" and e.output["name"] == "prediction"
            assert e.opsets and e.versions and e.converter
        else:
            assert e.reason, f"{e.family} stays native without a reason"
    served = {e.family for e in lock.entries if e.status == "onnx"}
    assert served == ONNX_FAMILIES, {e.family: e.reason for e in lock.entries if e.status != "onnx"}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_onnx_served_within_tolerance_on_fresh_rows(compiled_run, family):
    onnx_loader = ModelLoader(compiled_run)
    native_loader = ModelLoader(compiled_run, prefer_onnx=False)
    served = onnx_loader.load(TARGET, family)
    reference = native_loader.load(TARGET, family)
    assert reference.backend == "native"
    if served.backend != "onnx":
        pytest.fail(f"{family} not served from ONNX: {served.lock_entry}")
    assert served.feature_order == reference.feature_order and served.columns == reference.columns
    rng = np.random.default_rng(12345)  # fresh rows, not the probe seed
    shape = (64, 20, served.n_features) if served.family.sequential else (64, served.n_features)
    rows = rng.normal(size=shape).astype(np.float32)
    got, want = served.predict(rows), reference.predict(rows)
    scale = np.maximum(np.abs(want).max(axis=0), parity.SCALE_FLOOR)
    assert np.max(np.abs(got - want) / scale) <= parity.tolerance_for(family)


def test_tampered_onnx_strict_refuses_non_strict_falls_back(compiled_copy, caplog):
    hostile("ONNX graph", "tampered graph vs the lock sha256")
    path = _dir(compiled_copy, "ridge") / "model.onnx"
    model = onnx.load(path)
    init = model.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, path)
    with pytest.raises(IntegrityError, match="ONNX graph sha256 differs from the lock"):
        ModelLoader(compiled_copy, strict_checksums=True).load(TARGET, "ridge")
    with caplog.at_level("WARNING"):
        model = ModelLoader(compiled_copy, strict_checksums=False).load(TARGET, "ridge")
    assert model.backend == "native" and "differs from the lock" in caplog.text


def test_stale_lock_serves_native(compiled_copy, synthetic, caplog):
    X, targets = synthetic
    # Retrain ridge in place: new file, new checksum in meta, lock still holds the old one.
    fresh = testing.write_training_run(
        compiled_copy.parent.parent / "retrain", X.iloc[:200], {TARGET: targets[TARGET][:200]}, ["ridge"]
    )
    shutil.copy(_dir(fresh, "ridge") / "model.joblib", _dir(compiled_copy, "ridge") / "model.joblib")
    shutil.copy(_dir(fresh, "ridge") / "model_meta.json", _dir(compiled_copy, "ridge") / "model_meta.json")
    with caplog.at_level("WARNING"):
        model = ModelLoader(compiled_copy).load(TARGET, "ridge")
    assert model.backend == "native" and "lock is stale" in caplog.text


def test_missing_lock_serves_native(compiled_copy):
    (compiled_copy / LOCK_FILE).unlink()
    assert ModelLoader(compiled_copy).load(TARGET, "lightgbm").backend == "native"


@pytest.mark.parametrize(
    "content,match",
    [
        ("{", "not valid JSON"),
        ('{"version": 99, "entries": []}', "not a version-1 fastinfer lock"),
        ('{"version": 1, "entries": [{"target": 1}]}', "entries\\[0\\]"),
    ],
)
def test_corrupt_lock_is_a_state_error(compiled_copy, content, match):
    hostile("lock JSON", f"corrupt lock {content!r:.40}")
    (compiled_copy / LOCK_FILE).write_text(content)
    with pytest.raises(StateError, match=match):
        ModelLoader(compiled_copy)


def test_lock_path_escaping_the_run_is_refused(compiled_copy):
    hostile("path escape", "lock onnx_file ../../etc/passwd")
    data = json.loads((compiled_copy / LOCK_FILE).read_text())
    data["entries"][0]["onnx_file"] = "../../../../etc/passwd"
    (compiled_copy / LOCK_FILE).write_text(json.dumps(data))
    with pytest.raises(StateError, match="escapes the run root"):
        ModelLoader(compiled_copy)


def _relock(root, family, model: onnx.ModelProto):
    """Write ``model`` as the family's graph and record its sha256 in the lock (a hostile but consistent lock)."""
    path = _dir(root, family) / "model.onnx"
    path.write_bytes(model.SerializeToString())
    data = json.loads((root / LOCK_FILE).read_text())
    for e in data["entries"]:
        if e["family"] == family:
            e["onnx_sha256"] = sha256_file(path)
    (root / LOCK_FILE).write_text(json.dumps(data))


def test_external_data_graph_is_refused(compiled_copy):
    hostile("ONNX graph", "external data ../../etc/passwd")
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[8, 1])
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../../../etc/passwd")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["prediction"])],
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1])],
        initializer=[tensor],
    )
    _relock(compiled_copy, "ridge", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(ModelLoadError, match="graph refused.*external"):
        ModelLoader(compiled_copy).load(TARGET, "ridge")


def test_custom_domain_graph_is_refused(compiled_copy):
    hostile("ONNX graph", "custom operator domain com.evil")
    graph = helper.make_graph(
        [helper.make_node("Evil", ["features"], ["prediction"], domain="com.evil")],
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)])
    _relock(compiled_copy, "ridge", model)
    with pytest.raises(ModelLoadError, match="graph refused.*com.evil"):
        ModelLoader(compiled_copy).load(TARGET, "ridge")


class MeanModel:
    """A custom estimator no converter knows: predicts a weighted mean of the row."""

    def __init__(self, n: int):
        self.w = np.linspace(-1, 1, n)

    def predict(self, X):
        return np.asarray(X, dtype=np.float64) @ self.w


def test_unconvertible_model_recorded_native_and_still_predicts(run_copy):
    folder = _dir(run_copy, "ridge")
    joblib.dump(MeanModel(8), folder / "model.joblib")
    meta = json.loads((folder / "model_meta.json").read_text())
    meta["model_checksum"] = sha256_file(folder / "model.joblib")
    (folder / "model_meta.json").write_text(json.dumps(meta))
    lock = compile_run(run_copy, families=["ridge", "lasso"])
    entry = next(e for e in lock.entries if e.family == "ridge")
    assert entry.status == "native" and "MeanModel" in entry.reason and "supported" in entry.reason
    assert next(e for e in lock.entries if e.family == "lasso").status == "onnx"
    model = ModelLoader(run_copy).load(TARGET, "ridge")
    rows = np.arange(16, dtype=np.float64).reshape(2, 8)
    assert model.backend == "native"
    np.testing.assert_array_equal(model.predict(rows), rows @ np.linspace(-1, 1, 8))
