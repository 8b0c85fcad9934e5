"""Model files of the formats round 1 (``tests/test_public_models.py``) did not reach, served end to end:
Keras 2 / tf.keras ``.h5`` and Keras 2's ``.keras``, XGBoost UBJ, categorical and multi-output files saved
by XGBoost 1.6 / 2.0 / 2.1, and CatBoost ``.cbm`` (public test fixtures and files saved by CatBoost 1.2.2).

Files and how each was made: ``tests/data/models/README.md`` (section public2/); the scripts that wrote
them sit beside them (``made_by_*.py``). A file ``X.reference.npz`` holds the rows the writing library was
given (NaN, seen, unseen and negative category codes) and its own predictions on them (``want``): the
reference from the library version that saved the model, independent of the one installed here.

Each servable file goes into one run (its own target), ``compile_run`` once, ``ModelLoader.load``,
``predict`` on the reference rows, against that reference and, for trees, the installed library too.
Files no library here can serve are refused with a ``ModelLoadError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastinfer import testing
from fastinfer.compiler import compile_run
from fastinfer.config import load_config
from fastinfer.errors import ModelLoadError
from fastinfer.loader import ModelLoader

from ._hardening import hostile

PUBLIC2 = Path(__file__).parent / "data" / "models" / "public2"
MULTI_OUTPUT = "multi-output"
CATEGORICAL = "categorical features"

# file -> (family, "onnx" | "native", what the lock's reason for a native model says)
SERVED: dict[str, tuple[str, str, str]] = {
    "tfkeras215_mlp_sequential.h5": ("mlp", "onnx", ""),
    "tfkeras215_mlp_functional_softmax3.h5": ("mlp", "onnx", ""),
    "tfkeras215_conv1d_bn.h5": ("cnn1d", "onnx", ""),
    "xgb16_reg.ubj": ("xgboost", "onnx", ""),
    "xgb16_multiclass4.ubj": ("xgboost", "onnx", ""),
    "xgb16_reg_categorical.json": ("xgboost", "onnx", ""),
    "xgb16_reg_categorical_onehot.ubj": ("xgboost", "onnx", ""),
    "xgb16_binary_categorical.ubj": ("xgboost", "onnx", ""),
    "xgb20_reg_categorical.json": ("xgboost", "onnx", ""),
    "xgb20_binary_categorical.ubj": ("xgboost", "onnx", ""),
    "xgb20_one_output_per_tree3.ubj": ("xgboost", "onnx", ""),
    "xgb20_quantile3.ubj": ("xgboost", "onnx", ""),
    "catboost122_rmse.cbm": ("catboost", "onnx", ""),
    "catboost122_poisson.cbm": ("catboost", "onnx", ""),
    "catboost122_logloss_nan_max.cbm": ("catboost", "onnx", ""),
    "catboost122_rmse_categorical.cbm": ("catboost", "native", CATEGORICAL),
    "catboost122_multiclass_categorical.cbm": ("catboost", "native", CATEGORICAL),
    "catboost122_multirmse2.cbm": ("catboost", "native", "MultiRMSE"),
    "catboost_inference_iris_named.cbm": ("catboost", "onnx", ""),
    "catboost_inference_churn_mixed.cbm": ("catboost", "native", CATEGORICAL),
    # Keras 2 layer arguments Keras 3 no longer takes (time_major, a one-axis list), dropped on load
    "tfkeras215_lstm_stacked.h5": ("lstm", "onnx", ""),
    "tfkeras215_lstm_stacked_keras2format.keras": ("lstm", "onnx", ""),
    "tfkeras215_gru_functional.h5": ("lstm", "onnx", ""),
    "tfkeras215_gru_reset_after_false.h5": ("lstm", "onnx", ""),
    "tfkeras215_bidirectional_lstm_gru.h5": ("lstm", "onnx", ""),
    "tfkeras215_mlp_sequential_keras2format.keras": ("mlp", "onnx", ""),
}
# Keras 3 cannot rebuild these from .h5 with or without fastinfer (keras.layers.Attention's score_mode
# comes back as a function; MultiHeadAttention cannot be built from the legacy config): refused.
KERAS3_CANNOT_REBUILD = ("tfkeras215_dot_attention.h5", "tfkeras215_multihead_attention.h5")
# Saved by XGBoost 2.1.4 with multi_strategy="multi_output_tree": XGBoost 3.x dies reading it.
XGB21_VECTOR_LEAF = "xgb21_multi_output_tree3.json"
MADE_BY = ("made_by_keras2.py", "made_by_xgboost.py", "made_by_catboost.py")
# Relative to each output column's scale (max |reference|): the adapters' parity tolerance. Keras: float32
# on both sides, other kernels (observed <= 3e-7); trees: float32 sums in another order (observed <= 1e-6).
TOLERANCE = 1e-4


def _target(name: str) -> str:
    return "t_" + re.sub(r"[^A-Za-z0-9]+", "_", name.rsplit(".", 1)[0])


def _reference(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    path = PUBLIC2 / (name.rsplit(".", 1)[0] + ".reference.npz")
    if not path.exists():
        return None
    with np.load(path) as ref:
        return ref["rows"], ref["want"].astype(np.float64)


def _catboost_rows(name: str) -> np.ndarray:
    """Rows for a public CatBoost fixture: numbers, NaN, and integer codes in its categorical columns."""
    import catboost

    model = catboost.CatBoost()
    model.load_model(str(PUBLIC2 / name))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, len(model.feature_names_))) * 3
    for c in model.get_cat_feature_indices():
        X[:, c] = rng.integers(-1, 6, len(X))
    X[rng.random(X.shape) < 0.05] = np.nan
    return X


def _catboost_now(name: str, X: np.ndarray) -> np.ndarray:
    """The installed CatBoost on the rows as fastinfer's contract reads them: class probabilities for
    classifiers, Exponent for Poisson; categorical codes as the text of the integer ("nan" for NaN)."""
    import catboost
    import pandas as pd

    model = catboost.CatBoost()
    model.load_model(str(PUBLIC2 / name))
    loss = str(model.get_all_params()["loss_function"]).split(":")[0]
    kind = {"Logloss": "Probability", "MultiClass": "Probability", "Poisson": "Exponent"}.get(loss, "RawFormulaVal")
    cats = list(model.get_cat_feature_indices())
    data = X
    if cats:
        frame = pd.DataFrame(X, columns=model.feature_names_).astype(object)
        for c in cats:
            frame.iloc[:, c] = ["nan" if v != v else str(int(v)) for v in X[:, c]]
        data = catboost.Pool(frame, cat_features=cats)
    return np.asarray(model.predict(data, prediction_type=kind), dtype=np.float64)


def _xgboost_booster(name: str):
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(bytearray((PUBLIC2 / name).read_bytes()))
    return booster


def _xgboost_now(name: str, X: np.ndarray) -> np.ndarray:
    """The installed XGBoost's predict, binary as [1 - p, p] (how fastinfer serves classifiers)."""
    import xgboost

    booster = _xgboost_booster(name)
    types = booster.feature_types
    data = xgboost.DMatrix(
        X, feature_names=booster.feature_names, feature_types=types, enable_categorical=bool(types and "c" in types)
    )
    p = np.asarray(booster.predict(data), dtype=np.float64)
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    return np.column_stack([1 - p, p]) if objective == "binary:logistic" else p


def _n_features(name: str, family: str) -> int:
    ref = _reference(name)
    if ref is not None:
        return ref[0].shape[-1]
    return _catboost_rows(name).shape[1]


def _write(root: Path, name: str, family: str) -> None:
    ref = _reference(name)
    seq_len = ref[0].shape[1] if ref is not None and ref[0].ndim == 3 else None
    order = [f"x{j:02d}" for j in range(_n_features(name, family))]
    if name.startswith("catboost_inference_churn"):  # the fixture names its columns; the run keeps them
        order = ["tenure_months", "monthly_spend", "tier", "region"]
    file_name = "model." + name.rsplit(".", 1)[1]
    testing.write_model(
        root,
        _target(name),
        family,
        file_name,
        lambda p: shutil.copy(PUBLIC2 / name, p),
        order,
        0,
        sequence_length=seq_len,
    )


def _scaled_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """max |got - want| per output column, relative to the column's scale."""
    got, want = np.atleast_2d(got.T).T, np.atleast_2d(want.T).T
    return np.abs(got - want).max(axis=0) / np.maximum(np.abs(want).max(axis=0), 1e-12)


@pytest.fixture(scope="session")
def public2_run(tmp_path_factory):
    """One run holding every servable file (one target each), compiled once; Keras files load once."""
    root = tmp_path_factory.mktemp("public2") / "run" / "20260101T000000"
    for name, (family, _, _) in SERVED.items():
        _write(root, name, family)
    lock = compile_run(root)
    settings = load_config(None)
    settings = dataclasses.replace(settings, predictor=dataclasses.replace(settings.predictor, nan_policy="pass"))
    return ModelLoader(root, settings=settings), {e.target: e for e in lock.entries}


def test_every_file_is_listed():
    """Each model file has an expectation here and a row in README.md; each reference belongs to a model."""
    readme = (PUBLIC2.parent / "README.md").read_text()
    files = sorted(p.name for p in PUBLIC2.iterdir())
    models = [f for f in files if not f.endswith(".reference.npz") and f not in MADE_BY]
    assert sorted(models) == sorted([*SERVED, *KERAS3_CANNOT_REBUILD, XGB21_VECTOR_LEAF, *MULTI_LABEL])
    assert [f for f in models if f"| public2/{f} |" not in readme] == []
    stems = {m.rsplit(".", 1)[0] for m in models}
    assert {f.removesuffix(".reference.npz") for f in files if f.endswith(".reference.npz")} <= stems
    assert set(MADE_BY) <= set(files)


@pytest.mark.parametrize("name", list(SERVED))
def test_file_is_served_as_the_library_that_wrote_it_predicts(name, public2_run):
    """The lock records the expected backend; the served prediction is the writing library's own on its
    reference rows and, for tree files, the installed library's on the same rows."""
    loader, entries = public2_run
    family, backend, reason = SERVED[name]
    entry = entries[_target(name)]
    assert entry.status == backend, entry.reason
    assert reason in (entry.reason or "")
    served = loader.load(_target(name), family)
    assert served.backend.value == backend
    ref = _reference(name)
    X = ref[0] if ref is not None else _catboost_rows(name)
    got = served.predict(X)
    assert np.isfinite(got).all()
    if ref is not None:
        want = ref[1]
        if family == "xgboost" and want.ndim == 1 and got.ndim == 2:  # binary: the file's p as [1 - p, p]
            want = np.column_stack([1 - want, want])
        keep = np.ones(len(X), dtype=bool)
        if name.startswith("xgb16_") and "categorical" in name:
            # XGBoost 1.6 routed negative category codes differently from XGBoost >= 2 (which fastinfer
            # follows); every other row, NaN and unseen codes included, must agree with 1.6.
            keep = ~(X[:, [1, 3]] < 0).any(axis=1)
            assert keep.sum() >= 55
        want = want[:, 0] if want.ndim == 2 and want.shape[1] == 1 and got.ndim == 1 else want
        assert got.shape == want.shape
        assert (_scaled_error(got[keep], want[keep]) <= TOLERANCE).all()
    if family == "xgboost":
        assert (_scaled_error(got, _xgboost_now(name, X)) <= TOLERANCE).all()
    if family == "catboost":
        assert (_scaled_error(got, _catboost_now(name, X)) <= TOLERANCE).all()


def test_xgboost_categorical_files_split_on_the_codes_the_trees_name(public2_run):
    """The categorical columns the loaded model reports are the ones the 1.6 / 2.0 files mark ``c``."""
    loader, _ = public2_run
    for name in ("xgb16_reg_categorical.json", "xgb20_binary_categorical.ubj"):
        served = loader.load(_target(name), "xgboost")
        assert _xgboost_booster(name).feature_types == ["float", "c", "float", "c", "float"]
        assert served.backend.value == "onnx"


@pytest.mark.parametrize("name", KERAS3_CANNOT_REBUILD)
def test_keras2_attention_h5_that_keras3_cannot_rebuild_is_refused_naming_the_file(name, tmp_path):
    """Keras 3 itself fails to rebuild these .h5 files: the loader refuses them with a ModelLoadError
    naming the file, and the run still compiles with the model recorded as failed."""
    import keras

    hostile("public model file", name)
    with pytest.raises((TypeError, ValueError)):
        keras.models.load_model(str(PUBLIC2 / name), compile=False, safe_mode=True)
    root = tmp_path / "run" / "20260101T000000"
    _write(root, name, "lstm")
    with pytest.raises(ModelLoadError) as info:
        ModelLoader(root).load(_target(name), "lstm")
    assert info.value.path.endswith("model.h5")
    assert [e.status for e in compile_run(root).entries] == ["failed"]


CRASH = "import sys, xgboost; b = xgboost.Booster(); b.load_model(sys.argv[1]); print('loaded')"


def test_xgboost_2_vector_leaf_file_that_kills_xgboost_3_is_refused_in_process(tmp_path):
    """XGBoost 2.1.4 wrote this multi_output_tree model without the per-node statistics XGBoost 3 reads:
    XGBoost 3 opening it dies (a signal, in a child here). fastinfer refuses it before XGBoost sees it,
    verified or not, with a ModelLoadError naming the file."""
    hostile("public model file", XGB21_VECTOR_LEAF)
    raw = subprocess.run(
        [sys.executable, "-c", CRASH, str(PUBLIC2 / XGB21_VECTOR_LEAF)], capture_output=True, timeout=120
    )
    assert raw.returncode != 0 and b"loaded" not in raw.stdout
    root = tmp_path / "run" / "20260101T000000"
    _write(root, XGB21_VECTOR_LEAF, "xgboost")
    with pytest.raises(ModelLoadError) as info:
        ModelLoader(root).load(_target(XGB21_VECTOR_LEAF), "xgboost")
    assert info.value.path.endswith("model.json")


# ---------------------------------------------------------------- what the sweep found, fixed


# D1: Keras 2 / tf.keras 2.15 files Keras 3 refuses for arguments it no longer takes.
KERAS2 = {
    "tfkeras215_lstm_stacked.h5": "lstm",
    "tfkeras215_lstm_stacked_keras2format.keras": "lstm",
    "tfkeras215_gru_functional.h5": "lstm",
    "tfkeras215_gru_reset_after_false.h5": "lstm",
    "tfkeras215_bidirectional_lstm_gru.h5": "lstm",
    "tfkeras215_mlp_sequential_keras2format.keras": "mlp",
}


@pytest.fixture(scope="module")
def keras2_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("keras2") / "run" / "20260101T000000"
    for name, family in KERAS2.items():
        _write(root, name, family)
    lock = compile_run(root)
    return ModelLoader(root), {e.target: e for e in lock.entries}


@pytest.mark.parametrize("name", list(KERAS2))
def test_d1_keras2_file_converts_and_predicts_as_tf_keras_215(name, keras2_run):
    """Recurrent layers of tf.keras 2.x carry ``time_major`` (and Keras 2's .keras a BatchNormalization axis
    list), which Keras 3 refuses: the config is rewritten, weights untouched, and the graph is tf.keras's."""
    loader, entries = keras2_run
    entry = entries[_target(name)]
    assert entry.status == "onnx", entry.reason
    served = loader.load(_target(name), KERAS2[name])
    X, want = _reference(name)
    got = served.predict(X)
    want = want[:, 0] if want.shape[1] == 1 else want
    assert got.shape == want.shape
    assert (_scaled_error(got, want) <= TOLERANCE).all()


def test_d3_keras_h5_refusal_quotes_keras_and_names_the_saving_version(tmp_path):
    """The refusal does not guess a cause the file does not have (it named Attention and ``x + y`` for a
    MultiHeadAttention model): it names the Keras that saved the file and quotes Keras's reason."""
    name = "tfkeras215_multihead_attention.h5"
    hostile("public model file", f"{name}: refusal names its cause")
    root = tmp_path / "run" / "20260101T000000"
    _write(root, name, "lstm")
    with pytest.raises(ModelLoadError) as info:
        ModelLoader(root).load(_target(name), "lstm")
    assert "saved by Keras 2.15.0" in info.value.reason
    assert "MultiHeadAttention" in info.value.reason
    assert "x + y" not in info.value.reason


# D2: CatBoost losses with one independent probability per label / class.
MULTI_LABEL = (
    "catboost_inference_multilabel.cbm",
    "catboost122_multiclass_one_vs_all.cbm",
)


@pytest.mark.parametrize("name", MULTI_LABEL)
def test_d2_catboost_multi_label_losses_serve_probabilities(name, tmp_path):
    """MultiLogloss / MultiClassOneVsAll serve CatBoost's predict_proba (sigmoid per label), as Logloss and
    MultiClass serve probabilities, not the raw margins, under ``p_<label>`` columns."""
    import catboost

    model = catboost.CatBoostClassifier()
    model.load_model(str(PUBLIC2 / name))
    X = np.random.default_rng(0).normal(size=(80, len(model.feature_names_))) * 2
    X[::7, 1] = np.nan
    root = tmp_path / "run" / "20260101T000000"
    _write(root, name, "catboost")
    served = ModelLoader(root).load(_target(name), "catboost")
    assert served.columns == tuple(f"p_{c}" for c in model.classes_)
    X = X[~np.isnan(X).any(axis=1)]  # the loader's default nan_policy refuses NaN rows
    # served natively: CatBoost's own numbers, exactly
    np.testing.assert_allclose(served.predict(X), model.predict_proba(X), rtol=1e-12, atol=0)


# D5: XGBoost multi-target models with one scalar-leaf tree per target.
@pytest.mark.parametrize("name", ["xgb20_one_output_per_tree3.ubj", "xgb20_quantile3.ubj"])
def test_d5_xgboost_multi_target_scalar_leaf_models_convert(name, tmp_path):
    """Like multiclass without the softmax: K scores, one intercept each; the graph is XGBoost 2.0.3's."""
    root = tmp_path / "run" / "20260101T000000"
    _write(root, name, "xgboost")
    entry = compile_run(root).entries[0]
    assert entry.status == "onnx", entry.reason
    X, want = _reference(name)
    complete = ~np.isnan(X).any(axis=1)  # the loader's default nan_policy refuses NaN rows
    got = ModelLoader(root).load(_target(name), "xgboost").predict(X[complete])
    assert got.shape == (complete.sum(), 3)
    assert (_scaled_error(got, want[complete]) <= TOLERANCE).all()


def test_d4_xgboost_2_vector_leaf_refusal_says_what_the_file_is(tmp_path):
    """Not 'malformed XGBoost model (no loss_changes)': a multi_output_tree file XGBoost 2.1.4 saved, which
    XGBoost 3 cannot open, and what to do."""
    root = tmp_path / "run" / "20260101T000000"
    _write(root, XGB21_VECTOR_LEAF, "xgboost")
    with pytest.raises(ModelLoadError) as info:
        ModelLoader(root).load(_target(XGB21_VECTOR_LEAF), "xgboost")
    assert "multi_output_tree" in info.value.reason and "2.1.4" in info.value.reason
    assert "XGBoost 3 cannot open" in info.value.reason
