"""ModelLoader + InferenceEngine against each native library's own predictions."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastinfer import artifacts, testing
from fastinfer import families as fam
from fastinfer.engine import InferenceEngine
from fastinfer.errors import InferenceError, IntegrityError, ModelLoadError
from fastinfer.integrity import sha256_file
from fastinfer.loader import ModelLoader

from ._hardening import hostile
from .conftest import ALL_FAMILIES, TARGET

SEQ_LEN = 20


def library_predict(family: fam.Family, path: Path, X: np.ndarray) -> np.ndarray:
    """Each library's own API, used the way the spec's seed code uses it."""
    if path.name == "model.txt":
        import lightgbm

        return lightgbm.Booster(model_file=str(path)).predict(X)
    if path.name == "model.json":
        import xgboost

        m = xgboost.XGBRegressor()
        m.load_model(str(path))
        return m.predict(X)
    if path.name == "model.cbm":
        import catboost

        return catboost.CatBoostRegressor().load_model(str(path)).predict(X)
    if path.name == "model.keras":
        import keras

        return keras.models.load_model(str(path), compile=False).predict(X, verbose=0).flatten()
    import joblib

    model = joblib.load(path)
    if isinstance(model, dict):  # quantile set
        return np.column_stack([m.predict(X) for m in model["models"]])
    if family.category is fam.Category.PROBABILISTIC:
        params = model.pred_dist(X).params
        return np.column_stack([params["loc"], params["scale"]])
    import pandas as pd

    if hasattr(model, "feature_names_in_"):
        X = pd.DataFrame(X, columns=model.feature_names_in_)
    return model.predict(X)


def rows_for(model, X):
    ordered = X[list(model.feature_order)].to_numpy()
    if model.family.sequential:
        return testing.windows(ordered, SEQ_LEN)[:16]
    return ordered[:16]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_predictions_equal_native_library(full_run, synthetic, family):
    X, _ = synthetic
    loader = ModelLoader(full_run)
    model = loader.load(TARGET, family)
    assert model.backend == "native" and model.integrity == "verified"
    rows = rows_for(model, X)
    engine = InferenceEngine()
    if model.family.category is fam.Category.SEQUENTIAL:
        got = engine.predict_sequential(model, rows, family)
    else:
        got = engine.predict(model, rows, family)
    want = library_predict(model.family, model.spec.model_path, rows)
    assert got.dtype == np.float64 and got.shape == np.asarray(want).shape
    if model.family.category in (fam.Category.KERAS, fam.Category.SEQUENTIAL):
        # model(x) vs model.predict(x): same float32 weights, different batching of the same ops.
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)  # the same object runs: bit for bit


def test_raw_native_objects_work_with_the_engine(full_run, synthetic):
    import lightgbm

    X, _ = synthetic
    loader = ModelLoader(full_run)
    handle = loader.load(TARGET, "LightGBM")
    booster = lightgbm.Booster(model_file=str(handle.spec.model_path))
    rows = X[list(handle.feature_order)].to_numpy()[:5]
    np.testing.assert_array_equal(InferenceEngine().predict(booster, rows, "lightgbm"), booster.predict(rows))


def test_engine_dispatch_errors(full_run):
    loader = ModelLoader(full_run)
    engine = InferenceEngine()
    with pytest.raises(ValueError, match="Use predict_sequential for tab_lstm"):
        engine.predict(loader.load(TARGET, "tab_lstm"), np.zeros((1, SEQ_LEN, 8)), "tab_lstm")
    with pytest.raises(ValueError, match="Unknown family"):
        engine.predict(None, np.zeros((1, 8)), "deep_magic")
    with pytest.raises(InferenceError, match="expected \\(N, F\\) with F=8"):
        engine.predict(loader.load(TARGET, "ridge"), np.zeros((1, 7)), "ridge")
    with pytest.raises(InferenceError, match="dtype"):
        engine.predict(loader.load(TARGET, "ridge"), np.array([["a"] * 8]), "ridge")


def test_feature_order_by_name(full_run, synthetic):
    X, _ = synthetic
    loader = ModelLoader(full_run)
    for family in ("lightgbm", "xgboost", "catboost", "ridge", "mlp"):
        model = loader.load(TARGET, family)
        assert list(model.feature_order) == list(X.columns)  # training order, not the sorted feature_list
        assert loader.get_feature_list(TARGET, family) == sorted(X.columns)
        shuffled = X.iloc[:4][sorted(X.columns, reverse=True)]
        np.testing.assert_array_equal(model.predict(shuffled), model.predict(X.iloc[:4].to_numpy()))
        row = dict(X.iloc[0])
        np.testing.assert_array_equal(model.predict(row), model.predict(X.iloc[:1].to_numpy()))
        del row["feat_c"]
        with pytest.raises(InferenceError, match="missing feature\\(s\\) feat_c"):
            model.predict(row)


def test_spec_family_dir_spelling(tmp_path, synthetic):
    X, targets = synthetic
    root = testing.write_training_run(tmp_path, X, {TARGET: targets[TARGET]}, ["lightgbm", "ridge"], dir_style="spec")
    assert (root / "targets" / TARGET / "models" / "view=CROSS_SECTIONAL" / "family=LightGBM").is_dir()
    loader = ModelLoader(root)
    assert loader.list_families(TARGET) == ["lightgbm", "ridge"]
    for spelling in ("lightgbm", "LightGBM", "light_gbm"):
        assert loader.load(TARGET, spelling) is loader.load(TARGET, "lightgbm")


def test_run_id_folder_resolves_to_newest_timestamp(tmp_path, full_run, caplog):
    run_id = tmp_path / "my_run"
    shutil.copytree(full_run, run_id / "20261101T000000")
    shutil.copytree(full_run, run_id / "20261126T093000")
    (run_id / "notes").mkdir()
    with caplog.at_level("INFO"):
        loader = ModelLoader(run_id)
    assert loader.run_root.name == "20261126T093000"
    assert "using newest timestamp 20261126T093000" in caplog.text


def test_not_a_run(tmp_path):
    with pytest.raises(ModelLoadError, match="not a TRAINING run"):
        ModelLoader(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        ModelLoader(tmp_path / "missing")


def _family_dir(root: Path, family: str, view: str = "CROSS_SECTIONAL") -> Path:
    return root / "targets" / TARGET / "models" / f"view={view}" / f"family={family}"


def _edit_meta(root: Path, family: str, **changes) -> dict:
    path = _family_dir(root, family) / "model_meta.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))
    return meta


def test_legacy_meta_keys(run_copy, synthetic):
    X, _ = synthetic
    meta = json.loads((_family_dir(run_copy, "ridge") / "model_meta.json").read_text())
    _edit_meta(run_copy, "ridge", feature_list=None, feature_names=None, features=meta["feature_names"])
    _edit_meta(run_copy, "mlp", feature_list=None, feature_names=meta["feature_names"])
    loader = ModelLoader(run_copy)
    assert loader.get_feature_list(TARGET, "ridge") == list(X.columns)
    assert list(loader.load(TARGET, "mlp").feature_order) == list(X.columns)


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "model_meta.json is missing"),
        ("{not json", "not valid JSON"),
        ('{"family": "ridge", "metrics": {}}', "no feature_list"),
        ("[1, 2, 3]", "must hold a JSON object"),
        ('{"feature_list": "feat_a"}', "non-empty list"),
        ('{"feature_list": ["a"], "interval_minutes": "daily"}', "interval_minutes must be a positive number"),
        ('{"feature_list": ["a"], "model_checksum": "abc"}', "64-hex-digit"),
        ('{"family": "xgboost", "feature_list": ["a"]}', "meta says family 'xgboost'"),
        ("[" * 100 + "]" * 100, "nested deeper"),
    ],
)
def test_missing_or_corrupt_meta(run_copy, content, match):
    hostile("meta JSON", f"corrupt meta {content!r:.40}")
    meta = _family_dir(run_copy, "ridge") / "model_meta.json"
    if content is None:
        meta.unlink()
    else:
        meta.write_text(content)
    with pytest.raises(ModelLoadError, match=match) as info:
        ModelLoader(run_copy).load(TARGET, "ridge")
    assert info.value.family == "ridge" and info.value.target == TARGET
    assert "model_meta.json" in str(info.value)


def test_path_escaping_meta_entry_is_refused(run_copy):
    hostile("path escape", "meta model_file ../../etc/passwd and /etc/passwd")
    _edit_meta(run_copy, "ridge", model_file="../../../../../../../etc/passwd")
    with pytest.raises(ModelLoadError, match="model_file '.*etc/passwd' escapes the run root"):
        ModelLoader(run_copy).load(TARGET, "ridge")
    _edit_meta(run_copy, "ridge", model_file="/etc/passwd")
    with pytest.raises(ModelLoadError, match="escapes the run root"):
        ModelLoader(run_copy).load(TARGET, "ridge")


def test_symlinked_model_file_outside_the_run_is_refused(run_copy, tmp_path):
    hostile("path escape", "model file symlinked outside the run")
    folder = _family_dir(run_copy, "lightgbm")
    outside = tmp_path / "elsewhere.txt"
    shutil.move(folder / "model.txt", outside)
    (folder / "model.txt").symlink_to(outside)
    with pytest.raises(ModelLoadError, match="model file link .* escapes the run root"):
        ModelLoader(run_copy).load(TARGET, "lightgbm")


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_checksum_mismatch_strict_and_non_strict(run_copy, caplog):
    hostile("damaged model file", "bit-flipped model.txt vs its checksum")
    _corrupt(_family_dir(run_copy, "lightgbm") / "model.txt")
    with pytest.raises(IntegrityError, match="sha256 mismatch") as info:
        ModelLoader(run_copy, strict_checksums=True).load(TARGET, "lightgbm")
    assert "model.txt" in str(info.value)
    with caplog.at_level("WARNING"):
        model = ModelLoader(run_copy, strict_checksums=False).load(TARGET, "lightgbm")
    assert model.integrity == "mismatch" and "strict_checksums off" in caplog.text
    assert ModelLoader(run_copy, verify_checksums=False).load(TARGET, "lightgbm").integrity == "unverified"


def _touch_and_hand_over_a_model(marker: Path):
    """What a hostile pickle runs: its side effect, then a plausible model, so nothing looks wrong."""
    from sklearn.linear_model import Ridge

    marker.touch()
    return Ridge()


class _Payload:
    """Unpickling this touches ``marker`` (proof that code ran) and yields a model."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (_touch_and_hand_over_a_model, (self.marker,))


def _plant_pickle(root: Path, marker: Path, name: str = "model.joblib") -> Path:
    folder = _family_dir(root, "ridge")
    (folder / "model.joblib").unlink()
    path = folder / name
    path.write_bytes(pickle.dumps(_Payload(marker)))
    return path


@pytest.mark.parametrize("name", ["model.joblib", "model.pkl"])
@pytest.mark.parametrize("strict", [True, False])
def test_pickle_payload_never_runs_on_mismatch(run_copy, tmp_path, name, strict):
    hostile("pickle payload", f"{name} payload, checksum mismatch, strict={strict}")
    marker = tmp_path / "pwned"
    _plant_pickle(run_copy, marker, name)  # meta still holds the original model's checksum
    with pytest.raises(IntegrityError, match="refusing to unpickle"):
        ModelLoader(run_copy, strict_checksums=strict, verify_checksums=False).load(TARGET, "ridge")
    assert not marker.exists()


def test_pickle_payload_never_runs_unsigned(run_copy, tmp_path):
    hostile("pickle payload", "payload with no checksum, allow_unsigned false")
    marker = tmp_path / "pwned"
    _plant_pickle(run_copy, marker)
    _edit_meta(run_copy, "ridge", model_checksum=None)
    with pytest.raises(IntegrityError, match="no model_checksum recorded and allow_unsigned is false"):
        ModelLoader(run_copy, allow_unsigned=False).load(TARGET, "ridge")
    assert not marker.exists()


def test_pickle_with_matching_checksum_is_trusted(run_copy, tmp_path):
    """The control: the same payload with its checksum recorded is opened (so the tests above can fail)."""
    marker = tmp_path / "pwned"
    path = _plant_pickle(run_copy, marker)
    _edit_meta(run_copy, "ridge", model_checksum=sha256_file(path))
    ModelLoader(run_copy).load(TARGET, "ridge")
    assert marker.exists()


def test_unsigned_models_follow_allow_unsigned(run_copy, caplog):
    _edit_meta(run_copy, "lightgbm", model_checksum=None)
    with pytest.raises(IntegrityError, match="allow_unsigned is false"):
        ModelLoader(run_copy, allow_unsigned=False).load(TARGET, "lightgbm")
    with caplog.at_level("WARNING"):
        model = ModelLoader(run_copy, allow_unsigned=True).load(TARGET, "lightgbm")
    assert model.integrity == "unsigned" and "without a checksum" in caplog.text


def test_lazy_loading_and_caching(full_run):
    loader = ModelLoader(full_run)
    assert not loader.is_loaded(TARGET, "lightgbm")
    first = loader.load(TARGET, "lightgbm")
    assert loader.is_loaded(TARGET, "lightgbm")
    assert loader.load(TARGET, "LightGBM") is first
    assert loader.load(TARGET, "ridge", view="CROSS_SECTIONAL") is not first
    assert loader.load("fwd_ret_1d", "lightgbm") is None  # no such target: None, as the spec's examples expect
    assert loader.load(TARGET, "lstm").spec.location.view == artifacts.SEQUENTIAL


def test_load_all_collects_failures(run_copy):
    (_family_dir(run_copy, "ridge") / "model_meta.json").write_text("{}")
    loader = ModelLoader(run_copy)
    models = loader.load_all([TARGET], ["lightgbm", "xgboost", "ridge", "catboost"])
    assert sorted(f for _, f in models) == ["catboost", "lightgbm", "xgboost"]
    assert list(loader.errors) == [(TARGET, "ridge")]


def test_eager_loading_from_config(full_run):
    from dataclasses import replace

    from fastinfer.config import Settings

    settings = Settings()
    settings = replace(settings, models=replace(settings.models, lazy_load=False))
    loader = ModelLoader(full_run, settings=settings)
    assert loader.is_loaded(TARGET, "ridge") and loader.is_loaded(TARGET, "catboost")


def test_routing_decision_and_targets(full_run):
    loader = ModelLoader(full_run)
    assert loader.list_targets() == [TARGET]
    assert loader.get_routing_decision(TARGET)["selected_family"] == ALL_FAMILIES[0]
    assert loader.get_routing_decision("nope") is None


def test_model_features_disagreeing_with_meta(run_copy):
    _edit_meta(run_copy, "lightgbm", feature_list=[f"other_{i}" for i in range(8)], feature_names=None)
    with pytest.raises(ModelLoadError, match="disagree with feature_list"):
        ModelLoader(run_copy).load(TARGET, "lightgbm")


def test_tree_only_run_does_not_import_tensorflow(full_run):
    code = (
        "import sys\n"
        "from fastinfer.loader import ModelLoader\n"
        f"loader = ModelLoader({str(full_run)!r})\n"
        f"models = loader.load_all([{TARGET!r}], ['lightgbm', 'xgboost', 'catboost', 'ridge', 'random_forest'])\n"
        "assert len(models) == 5, models\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_errors_are_hashable_and_picklable():
    err = ModelLoadError("lightgbm", "fwd_ret_5m", "broken", "/x/model.txt")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == "target='fwd_ret_5m' family='lightgbm' file=/x/model.txt: broken"
    assert isinstance(IntegrityError("a", "b", "c"), ModelLoadError)
    assert len({err, again}) == 2
