"""Hostile and broken inputs: each gets a typed error naming the thing, and good state survives.

Cases already covered elsewhere (and not repeated here): corrupt meta basics and path escapes
(test_loader), pickle payloads on mismatch / unsigned (test_loader), ONNX external data and
custom domains, corrupt and escaping locks (test_compile), bad buffer rows and states
(test_buffers), bad feature states and missing OHLCV columns (test_features), bad YAML basics
(test_config). Every rejection here has a control that shows the good input passing.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fastinfer import config
from fastinfer import families as fam
from fastinfer.cli import main
from fastinfer.config import Settings
from fastinfer.errors import (
    ConfigError,
    FeatureBuildError,
    InferenceError,
    IntegrityError,
    ModelLoadError,
    SignatureError,
    StateError,
)
from fastinfer.features import FeatureBuilder, StreamingFeatures, ohlcv_arrays
from fastinfer.integrity import sha256_file
from fastinfer.loader import ModelLoader
from fastinfer.lock import LOCK_FILE, read_lock

from ._hardening import hostile
from .conftest import TARGET


def _dir(root: Path, family: str, view: str = "CROSS_SECTIONAL") -> Path:
    return root / "targets" / TARGET / "models" / f"view={view}" / f"family={family}"


def _set_meta(root: Path, family: str, **changes) -> None:
    path = _dir(root, family) / "model_meta.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


# ---------------------------------------------------------------- model files of every format


def _as_format(root: Path, fmt: str) -> tuple[str, Path]:
    """Give one family of the run its model in ``fmt`` (checksum recorded); (family, file)."""
    if fmt == "model.ubj":
        import xgboost

        m = xgboost.XGBRegressor()
        m.load_model(str(_dir(root, "xgboost") / "model.json"))
        m.save_model(str(_dir(root, "xgboost") / "model.ubj"))
        (_dir(root, "xgboost") / "model.json").unlink()
        family = "xgboost"
    elif fmt == "model.pkl":
        import joblib

        model = joblib.load(_dir(root, "ridge") / "model.joblib")
        (_dir(root, "ridge") / "model.pkl").write_bytes(pickle.dumps(model))
        (_dir(root, "ridge") / "model.joblib").unlink()
        family = "ridge"
    elif fmt == "model.h5":
        import keras

        model = keras.models.load_model(str(_dir(root, "mlp") / "model.keras"), compile=False)
        model.save(str(_dir(root, "mlp") / "model.h5"))
        (_dir(root, "mlp") / "model.keras").unlink()
        family = "mlp"
    else:
        family = {
            "model.txt": "lightgbm",
            "model.json": "xgboost",
            "model.cbm": "catboost",
            "model.joblib": "ridge",
            "model.keras": "mlp",
        }[fmt]
    path = _dir(root, family) / fmt
    _set_meta(root, family, model_checksum=sha256_file(path))
    return family, path


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "bit-flipped":
        for k in range(1, 40):
            data[len(data) * k // 41] ^= 0x5A
    else:
        data = bytearray()
    path.write_bytes(bytes(data))


FORMATS = ["model.txt", "model.json", "model.ubj", "model.cbm", "model.joblib", "model.pkl", "model.keras", "model.h5"]
DAMAGE = ["truncated", "bit-flipped", "empty"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_model_file_of_every_format(run_copy, fmt, how):
    """Strict: refused before it is opened. Checksum re-recorded (a broken file that is trusted):
    a ModelLoadError naming the file, and this process survives (LightGBM's parser used to
    segfault on a truncated model.txt and abort on a damaged one)."""
    hostile("damaged model file", f"{fmt} {how}")
    family, path = _as_format(run_copy, fmt)
    assert ModelLoader(run_copy).load(TARGET, family).integrity == "verified"  # control
    _damage(path, how)
    with pytest.raises(IntegrityError, match="sha256 mismatch") as info:
        ModelLoader(run_copy, strict_checksums=True).load(TARGET, family)
    assert info.value.path == str(path) and info.value.family == family
    _set_meta(run_copy, family, model_checksum=sha256_file(path))
    # A trusted file is parsed in-process; a native parser may corrupt memory without crashing
    # at once, so this part runs in a forked child: the suite's process stays clean.
    kind, error_path, target = _in_child(lambda: _load_error(run_copy, family))
    assert kind == "ModelLoadError" and error_path == str(path) and target == TARGET


def test_cbm_cut_inside_its_core_is_refused_before_catboost_reads_it(run_copy, monkeypatch):
    """A verified .cbm is opened in process: one cut inside its model core made CatBoost read past
    the end (the full suite's forked child died of it once). The header's core size is checked first."""
    import catboost

    hostile("damaged model file", "verified model.cbm cut inside its core")
    family, path = _as_format(run_copy, "model.cbm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _set_meta(run_copy, family, model_checksum=sha256_file(path))

    def never(*args, **kwargs):
        raise AssertionError("CatBoost was handed the truncated bytes")

    monkeypatch.setattr(catboost.CatBoost, "load_model", never)
    with pytest.raises(ModelLoadError, match=r"cannot open: malformed CatBoost model \(truncated: the model core is"):
        ModelLoader(run_copy).load(TARGET, family)


def _load_error(root: Path, family: str) -> tuple[str, str | None, str | None]:
    try:
        ModelLoader(root).load(TARGET, family)
    except ModelLoadError as exc:
        assert "cannot open" in str(exc), exc
        return type(exc).__name__, exc.path, exc.target
    return "loaded", None, None


def _in_child(fn):
    """``fn()`` in a forked child; its result, or a failure naming the signal it died of."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def run():
        try:
            child.send(("ok", fn()))
        except BaseException as exc:
            child.send(("raised", repr(exc)))

    proc = ctx.Process(target=run)
    proc.start()
    got = parent.recv() if parent.poll(120) else ("no answer", None)
    proc.join(30)
    assert proc.exitcode == 0, f"the child died (exit code {proc.exitcode}) while opening a damaged file"
    assert got[0] == "ok", got
    return got[1]


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_unverified_damaged_model_txt_is_refused_in_process(run_copy, how, no_subprocess):
    """Default policy (strict_checksums false) loads a mismatching non-pickle file with a warning.
    A damaged model.txt (whose parser segfaults or aborts on such input) is refused by the
    structure check on the bytes that would be parsed, in this process: no throw-away
    interpreter is started (it used to be, importing everything again, per model)."""
    hostile("damaged model file", f"non-strict mismatch, {how} model.txt")
    path = _dir(run_copy, "lightgbm") / "model.txt"
    assert ModelLoader(run_copy).load(TARGET, "lightgbm").integrity == "verified"  # control, no subprocess
    _damage(path, how)
    with pytest.raises(ModelLoadError, match="malformed LightGBM") as info:
        ModelLoader(run_copy, strict_checksums=False).load(TARGET, "lightgbm")
    assert info.value.path == str(path)


def test_unverified_damaged_cbm_is_opened_only_by_the_probe(run_copy):
    """CatBoost's binary parser is not trusted with unverified bytes: the probe opens them first."""
    hostile("damaged model file", "non-strict mismatch, truncated model.cbm")
    family, path = _as_format(run_copy, "model.cbm")
    assert fam.resolve(family).file_format("model.cbm").crash_probe
    _damage(path, "truncated")
    with pytest.raises(ModelLoadError, match="cannot open|crashed opening it") as info:
        ModelLoader(run_copy, strict_checksums=False).load(TARGET, family)
    assert info.value.path == str(path)


@pytest.mark.parametrize("fmt", ["model.keras", "model.h5"])
def test_unverified_damaged_file_of_an_unprobed_format_is_refused_in_process(run_copy, fmt, no_subprocess):
    """Formats with no known parser crash are opened in-process even when unverified."""
    hostile("damaged model file", f"non-strict mismatch, truncated {fmt}")
    family, path = _as_format(run_copy, fmt)
    ModelLoader(run_copy).load(TARGET, family)  # control
    _damage(path, "truncated")
    with pytest.raises(ModelLoadError, match="cannot open") as info:
        ModelLoader(run_copy, strict_checksums=False).load(TARGET, family)
    assert info.value.path == str(path)


def _truncate_lightgbm_parameters(path: Path) -> None:
    """Cut model.txt inside its ``parameters:`` block: the trees still check out, and LightGBM's
    parser then reads past the text and segfaults (found by fuzzing)."""
    text = path.read_text()
    start = text.index("\nparameters:\n")
    path.write_text(text[: start + (text.index("\nend of parameters") - start) // 2])


def _negative_xgboost_parent(path: Path) -> None:
    """One tree node's parent index set to -1: XGBoost's JSON loader segfaults (found by fuzzing)."""
    model = json.loads(path.read_text())
    tree = model["learner"]["gradient_booster"]["model"]["trees"][0]
    tree["parents"][len(tree["parents"]) // 2] = -1
    path.write_text(json.dumps(model))


def test_lightgbm_parameters_cut_short_is_refused_in_process(run_copy, no_subprocess):
    """LightGBM reads past a parameters block cut short and crashes only sometimes (it depends
    on the memory beyond the text), so the probe cannot be relied on: the structure check
    refuses it in-process."""
    hostile("damaged model file", "model.txt with its parameters block cut short")
    family, path = _as_format(run_copy, "model.txt")
    check = fam.resolve(family).file_format("model.txt").check
    assert check(path.read_bytes()) is None  # control
    _truncate_lightgbm_parameters(path)
    assert "end of parameters" in check(path.read_bytes())
    with pytest.raises(ModelLoadError, match="malformed LightGBM") as info:
        ModelLoader(run_copy, strict_checksums=False).load(TARGET, family)
    assert info.value.path == str(path)


PARSER_CRASHES = {"model.json": _negative_xgboost_parent}


@pytest.mark.parametrize("fmt", list(PARSER_CRASHES))
def test_parser_crash_on_an_unverified_file_is_caught_by_the_probe(run_copy, fmt):
    """A damaged file that crashes its library's parser (found by fuzzing): unverified
    (strict_checksums false, checksum mismatch), it is refused by the in-process structure check
    before the parser sees it, in this process and in the probe alike (which reports crashes the
    checks may miss: test_probe_reports_crashes_and_errors)."""
    from fastinfer import native

    hostile("damaged model file", f"{fmt} that crashes its parser, unverified")
    family, path = _as_format(run_copy, fmt)
    f = fam.resolve(family)
    assert native.probe_in_subprocess(f, fmt, path.read_bytes(), 8) is None  # control: the good file opens
    PARSER_CRASHES[fmt](path)
    assert "malformed" in native.probe_in_subprocess(f, fmt, path.read_bytes(), 8)  # no crash
    with pytest.raises(ModelLoadError, match="malformed") as info:
        ModelLoader(run_copy, strict_checksums=False).load(TARGET, family)
    assert info.value.path == str(path) and info.value.family == family


def test_probe_reports_crashes_and_errors(tmp_path, monkeypatch):
    """The probe reports a crash (here: a process that dies of SIGSEGV) as a reason, not a crash;
    it runs with this process's sys.path, and never opens a pickle."""
    from fastinfer import native

    hostile("damaged model file", "native parser crash in the probe")
    lightgbm = fam.resolve("lightgbm")
    monkeypatch.setattr(native, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert native.probe_in_subprocess(lightgbm, "model.txt", b"tree\n", 3) == (
        "the native library crashed opening it (SIGSEGV)"
    )
    monkeypatch.undo()
    assert native.probe_in_subprocess(lightgbm, "model.txt", b"tree\n", 3).startswith("cannot open")  # malformed
    assert native.probe_in_subprocess(lightgbm, "model.txt", b"tree\n\nTree=0", 3).startswith("cannot open")
    import os
    import subprocess

    real_run, envs = subprocess.run, []
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: envs.append(kw["env"]) or real_run(*a, **kw))
    monkeypatch.syspath_prepend(str(tmp_path / "checkout"))  # e.g. fastinfer run from a source checkout
    assert native.probe_in_subprocess(lightgbm, "model.txt", b"tree\n", 3).startswith("cannot open: malformed LightGBM")
    assert str(tmp_path / "checkout") in envs[0]["PYTHONPATH"].split(os.pathsep)  # the child imports the same code
    with pytest.raises(ValueError, match="never probed"):
        native.probe_in_subprocess(lightgbm, "model.pkl", b"", 3)


class _SwapAfterDigest:
    """``hashlib.sha256`` for ``fastinfer.integrity``: when the first digest is taken, a writer
    replaces ``path`` with ``payload`` (the race between checking a file and opening it)."""

    def __init__(self, path: Path, payload: bytes):
        self.path, self.payload, self.swapped, self.made = path, payload, False, 0

    def sha256(self, *args):
        import hashlib

        outer, inner = self, hashlib.sha256(*args)
        outer.made += 1

        class _H:
            def update(self, data):
                inner.update(data)

            def hexdigest(self):
                digest = inner.hexdigest()
                if not outer.swapped:
                    outer.path.write_bytes(outer.payload)
                    outer.swapped = True
                return digest

        return _H()


@pytest.mark.parametrize("signed", [False, True], ids=["meta-checksum", "signed"])
def test_pickle_swapped_after_its_check_is_never_unpickled(compiled_copy, tmp_path, monkeypatch, signed):
    """The pickle is read once: those bytes are hashed, checked and unpickled. A payload
    swapped in after the check (here: the moment the digest is taken) is never opened."""
    from fastinfer import integrity, signing

    from .test_loader import _Payload

    hostile("pickle payload", f"swapped in between the checksum and the unpickle ({'signed' if signed else 'meta'})")
    marker = tmp_path / "pwned"
    path = _dir(compiled_copy, "ridge") / "model.joblib"
    original = path.read_bytes()
    kw = {}
    if signed:
        private, public = signing.generate_keypair(tmp_path / "k")
        signing.sign_run(compiled_copy, private)
        kw = {"verify_signature": True, "trusted_public_key": public}
    want = ModelLoader(compiled_copy, prefer_onnx=False, **kw).load(TARGET, "ridge").predict(np.ones((2, 8)))
    loader = ModelLoader(compiled_copy, prefer_onnx=False, **kw)
    hook = _SwapAfterDigest(path, pickle.dumps(_Payload(marker)))
    monkeypatch.setattr(integrity, "hashlib", hook)
    model = loader.load(TARGET, "ridge")
    assert hook.swapped and path.read_bytes() != original  # the swap happened, after the digest
    assert not marker.exists()  # the payload never ran
    assert hook.made == 1  # hashed once
    np.testing.assert_array_equal(model.predict(np.ones((2, 8))), want)  # the checked bytes were opened
    monkeypatch.undo()
    with pytest.raises((IntegrityError, SignatureError)):  # afterwards, the payload on disk is refused
        ModelLoader(compiled_copy, prefer_onnx=False, **kw).load(TARGET, "ridge")
    assert not marker.exists()


def test_pickle_swapped_between_open_and_load_is_refused(run_copy, tmp_path):
    from .test_loader import _Payload

    hostile("pickle payload", "swapped in between ModelLoader() and load()")
    marker = tmp_path / "pwned"
    loader = ModelLoader(run_copy)
    assert ModelLoader(run_copy).load(TARGET, "ridge").integrity == "verified"  # control
    (_dir(run_copy, "ridge") / "model.joblib").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(IntegrityError, match="refusing to unpickle"):
        loader.load(TARGET, "ridge")
    assert not marker.exists()


# ---------------------------------------------------------------- meta JSON


META_CASES = {
    "huge": (lambda m: {**m, "pad": "x" * (5 << 20)}, "bytes \\(limit"),
    "sequence_length fractional": (lambda m: {**m, "sequence_length": 2.5}, "must be an integer"),
    "sequence_length enormous": (lambda m: {**m, "sequence_length": 10**12}, "above the limit"),
    "400-digit integer": (lambda m: {**m, "interval_minutes": 10**400}, "above the limit"),
    "interval_minutes boolean": (lambda m: {**m, "interval_minutes": True}, "positive number"),
    "interval_minutes negative": (lambda m: {**m, "interval_minutes": -5}, "positive number"),
    "model_file number": (lambda m: {**m, "model_file": 5}, "model_file must be a string"),
    "model_file NUL byte": (lambda m: {**m, "model_file": "model\u0000.joblib"}, "not a usable path"),
    "model_file other format": (lambda m: {**m, "model_file": "model_meta.json"}, "is not a ridge format"),
    "model_file missing": (lambda m: {**m, "model_file": "model.pkl"}, "does not exist"),
    "metrics list": (lambda m: {**m, "metrics": [1, 2]}, "metrics must be an object"),
    "feature_list of numbers": (lambda m: {**m, "feature_list": [1, 2, 3]}, "non-empty list"),
    "feature_list duplicates": (lambda m: {**m, "feature_list": ["a", "a"]}, "duplicate"),
    "feature_names disagree": (lambda m: {**m, "feature_names": ["zz"] * 1}, "name different features"),
    "checksum wrong type": (lambda m: {**m, "model_checksum": 12}, "64-hex-digit"),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_hostile_meta_json(run_copy, case):
    hostile("meta JSON", case)
    path = _dir(run_copy, "ridge") / "model_meta.json"
    good = json.loads(path.read_text())
    ModelLoader(run_copy).spec(TARGET, "ridge")  # control
    change, match = META_CASES[case]
    path.write_text(json.dumps(change(good)))
    with pytest.raises(ModelLoadError, match=match) as info:
        ModelLoader(run_copy).load(TARGET, "ridge")
    assert (info.value.family, info.value.target) == ("ridge", TARGET)


def test_meta_with_nan_literal_and_deep_nesting(run_copy):
    hostile("meta JSON", "NaN literal")
    hostile("meta JSON", "10^5 nested lists")
    path = _dir(run_copy, "ridge") / "model_meta.json"
    meta = {**json.loads(path.read_text()), "interval_minutes": "NAN"}
    path.write_text(json.dumps(meta).replace('"NAN"', "NaN"))
    with pytest.raises(ModelLoadError, match="positive number"):
        ModelLoader(run_copy).load(TARGET, "ridge")
    path.write_text("[" * 100_000 + "]" * 100_000)  # deeper than the recursion limit
    with pytest.raises(ModelLoadError, match="not valid JSON|nested deeper"):
        ModelLoader(run_copy).load(TARGET, "ridge")


def test_symlinked_meta_outside_the_run_is_refused(run_copy, tmp_path):
    hostile("path escape", "model_meta.json is a symlink out of the run")
    meta = _dir(run_copy, "ridge") / "model_meta.json"
    outside = tmp_path / "meta.json"
    shutil.move(meta, outside)
    meta.symlink_to(outside)
    with pytest.raises(ModelLoadError, match="model_meta.json link .* escapes the run root"):
        ModelLoader(run_copy).load(TARGET, "ridge")


def test_symlinked_target_folder_is_not_followed(run_copy, tmp_path):
    hostile("path escape", "target folder is a symlink out of the run")
    outside = tmp_path / "foreign_target"
    shutil.copytree(run_copy / "targets" / TARGET, outside)
    (run_copy / "targets" / "fwd_ret_1d").symlink_to(outside, target_is_directory=True)
    loader = ModelLoader(run_copy)
    assert loader.list_targets() == [TARGET]  # control: the real target is still found
    assert loader.load("fwd_ret_1d", "ridge") is None


def test_symlinked_onnx_graph_outside_the_run_is_refused(compiled_copy, tmp_path):
    hostile("path escape", "model.onnx is a symlink out of the run")
    graph = _dir(compiled_copy, "ridge") / "model.onnx"
    assert ModelLoader(compiled_copy).load(TARGET, "ridge").backend == "onnx"  # control
    outside = tmp_path / "model.onnx"
    shutil.move(graph, outside)
    graph.symlink_to(outside)  # identical bytes, so the sha256 in the lock still matches
    with pytest.raises(StateError, match=r"onnx_file: .*family=ridge/model.onnx' escapes the run root"):
        ModelLoader(compiled_copy)  # the lock is read (and refused) when the run is opened


def test_graph_with_local_functions_is_refused(compiled_copy):
    import onnx
    from onnx import TensorProto, helper

    hostile("ONNX graph", "local function definitions")
    fn = helper.make_function(
        "com.evil", "Twice", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])], [helper.make_opsetid("", 17)]
    )
    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["prediction"])],
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], functions=[fn])
    path = _dir(compiled_copy, "ridge") / "model.onnx"
    path.write_bytes(model.SerializeToString())
    lock = json.loads((compiled_copy / LOCK_FILE).read_text())
    for e in lock["entries"]:
        if e["family"] == "ridge":
            e["onnx_sha256"] = sha256_file(path)
    (compiled_copy / LOCK_FILE).write_text(json.dumps(lock))
    assert onnx.load(path).functions
    with pytest.raises(ModelLoadError, match="local functions"):
        ModelLoader(compiled_copy).load(TARGET, "ridge")


# ---------------------------------------------------------------- lock fields


LOCK_CASES = {
    "output not an object": ({"output": []}, "output: expected dict"),
    "columns not strings": ({"output": {"name": "prediction", "columns": [1]}}, "output: name must be a string"),
    "feature_order numbers": ({"feature_order": [1, 2]}, "feature_order: expected a list of feature names"),
    "sha256 not hex": ({"native_sha256": "x" * 64}, "native_sha256: not a 64-hex-digit"),
    "convert_seconds text": ({"convert_seconds": "slow"}, "convert_seconds: expected"),
    "universe number": ({"universe": 5}, "universe: expected"),
    "opsets boolean": ({"opsets": True}, "opsets: expected dict"),
}


@pytest.mark.parametrize("case", list(LOCK_CASES))
def test_wrong_typed_lock_field_is_a_state_error(compiled_copy, case):
    hostile("lock JSON", case)
    assert read_lock(compiled_copy).entries  # control
    data = json.loads((compiled_copy / LOCK_FILE).read_text())
    change, match = LOCK_CASES[case]
    data["entries"][0].update(change)
    (compiled_copy / LOCK_FILE).write_text(json.dumps(data))
    with pytest.raises(StateError, match=rf"entries\[0\]\.{match}"):
        ModelLoader(compiled_copy)


# ---------------------------------------------------------------- feature vectors to a model


@pytest.fixture(scope="module")
def models(full_run):
    return {f: ModelLoader(full_run).load(TARGET, f) for f in ("lightgbm", "ridge")}


BAD_DTYPES = {
    "bool": np.ones((1, 8), dtype=bool),
    "complex": np.ones((1, 8), dtype=complex),
    "object": np.array([[object()] * 8]),
    "datetime": np.array([["2024-01-01"] * 8], dtype="datetime64[D]"),
    "ragged": [[1.0] * 8, [1.0] * 7],
    "wide": np.ones((1, 9)),
    "3-D to a tabular model": np.ones((1, 2, 8)),
}


@pytest.mark.parametrize("case", list(BAD_DTYPES))
def test_wrong_dtype_or_width_names_the_model(models, case):
    hostile("feature vector", case)
    model = models["ridge"]
    assert model.predict(np.ones((1, 8))).shape == (1,)  # control
    with pytest.raises(InferenceError, match="target='fwd_ret_5m' family='ridge'"):
        model.predict(BAD_DTYPES[case])


def test_named_features_with_bad_values(models):
    hostile("feature vector", "dict with a non-numeric value")
    hostile("feature vector", "DataFrame with a text column")
    model = models["ridge"]
    row = {name: 1.0 for name in model.feature_order}
    assert model.predict(row).shape == (1,)  # control
    with pytest.raises(InferenceError, match=f"feature '{model.feature_order[2]}' is not a real number"):
        model.predict({**row, model.feature_order[2]: "high"})
    frame = pd.DataFrame({name: [1.0, 2.0] for name in model.feature_order}).assign(
        **{model.feature_order[0]: ["a", "b"]}
    )
    with pytest.raises(InferenceError, match=f"feature '{model.feature_order[0]}'"):
        model.predict(frame)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e39])
def test_non_finite_features_follow_the_nan_policy(models, value):
    hostile("feature vector", f"value {value!r}")
    X = np.ones((3, 8))
    clean = {f: m.predict(X) for f, m in models.items()}  # control
    X[1, 4] = value
    before = X.copy()
    for model in models.values():
        model.nan_policy = "reject"
        with pytest.raises(InferenceError, match=rf"row 1 feature '{model.feature_order[4]}'.*'reject'"):
            model.predict(X)
    models["lightgbm"].nan_policy = models["ridge"].nan_policy = "pass"
    try:
        got = models["lightgbm"].predict(X)  # trees route NaN: inf arrives as NaN
        assert np.isfinite(got).all() and got[0] == clean["lightgbm"][0]
        nan_row = X.copy()
        nan_row[1, 4] = np.nan
        assert got[1] == models["lightgbm"].predict(nan_row)[1]
        with pytest.raises(InferenceError, match="ridge does not handle NaN"):
            models["ridge"].predict(X)
    finally:
        models["lightgbm"].nan_policy = models["ridge"].nan_policy = "reject"
    np.testing.assert_array_equal(X, before)  # the caller's array is never rewritten


# ---------------------------------------------------------------- the live path


DAILY = 1440.0


def _bars(goog, start, n):
    a = ohlcv_arrays(goog.iloc[start : start + n])
    return [a[k] for k in ("open", "high", "low", "close", "volume")]


@pytest.mark.parametrize("policy", ["reject", "pass"])
def test_inf_features_never_reach_a_model(market_run, goog, policy):
    """Symbol B trades at 0 for one bar, so its returns are +inf for the bars after: its outputs
    follow the policy, symbol A's equal a predictor that never saw B."""
    from fastinfer.predictor import LivePredictor

    hostile("live bar", f"inf features, nan_policy {policy}")
    settings = Settings()
    # bar_check "pass": the zero close must reach the features (bar_check "reject" would refuse the bar).
    settings = replace(settings, predictor=replace(settings.predictor, nan_policy=policy, bar_check="pass"))
    both = LivePredictor(market_run, ["A", "B"], DAILY, settings=settings, families=["lightgbm", "ridge"])
    alone = LivePredictor(market_run, ["A"], DAILY, settings=settings, families=["lightgbm", "ridge"])
    bars = _bars(goog, 1000, 90)
    lgbm = [j for j, (_, f, _) in enumerate(both.columns) if f == "lightgbm"]
    ridge = [j for j, (_, f, _) in enumerate(both.columns) if f == "ridge"]
    inf_bars = 0
    for t in range(90):
        a = [x[t] for x in bars]
        b = list(a)
        if t == 70:
            b = [1.0, 1.0, 0.0, 0.0, 100.0]  # close 0: ret_n = (c - 0) / 0 = inf afterwards
        out = both.on_bar(*(np.array([x, y]) for x, y in zip(a, b)))
        ref = alone.on_bar(*(np.array([x]) for x in a))
        # A batch of two vs one rounds differently in ORT's MatMul (~1e-7): close, not bit-equal.
        np.testing.assert_allclose(out[0], ref[0], rtol=1e-5, atol=1e-7)
        assert not np.isinf(both.plan.tabular_input).any()
        assert not np.isinf(out).any()
        if np.isinf(both.features.out[1]).any():  # ret_n for n in the models' features, at t = 70 + n
            inf_bars += 1
            assert np.isnan(out[1, ridge]).all()
            if policy == "reject":
                assert np.isnan(out[1, lgbm]).all()
            else:
                assert np.isfinite(out[1, lgbm]).all()  # trees got NaN and routed it
        elif 61 <= t < 70:
            assert np.isfinite(out[1]).all()  # control: B's good bars predict
    assert inf_bars >= 1


def test_non_finite_bar_leaves_the_symbols_state_unchanged(market_run, goog):
    from fastinfer.predictor import LivePredictor

    predictor = LivePredictor(market_run, ["A", "B"], DAILY, families=["lightgbm", "lstm"])
    bars = _bars(goog, 1000, 80)
    for t in range(79):
        predictor.on_bar(*(np.array([x[t], x[t]]) for x in bars))
    for k, bad in enumerate([np.nan, np.inf, -np.inf]):
        hostile("live bar", f"OHLCV value {bad!r}")
        feats = predictor.features.state_dict()["payload"]
        seq = next(iter(predictor.buffers.values())).to_dict()["payload"]
        row = [np.array([x[79], x[79]]) for x in bars]
        row[1 + k][1] = bad  # B's high, low or close
        out = predictor.on_bar(*row)
        assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()
        after = predictor.features.state_dict()["payload"]
        for name, arr in after["arrays"].items():  # A advanced, B is bit-identical
            old = np.frombuffer(
                __import__("base64").b64decode(feats["arrays"][name]["data"]), dtype=arr["dtype"]
            ).reshape(arr["shape"])
            new = np.frombuffer(__import__("base64").b64decode(arr["data"]), dtype=arr["dtype"]).reshape(arr["shape"])
            np.testing.assert_array_equal(new[1], old[1], err_msg=name)
        seq_after = next(iter(predictor.buffers.values())).to_dict()["payload"]
        assert seq_after["counts"][1] == seq["counts"][1]


# ---------------------------------------------------------------- OHLCV frames


def _frame(n=40, index=True):
    rng = np.random.default_rng(0)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    df = pd.DataFrame({"Open": c, "High": c * 1.01, "Low": c * 0.99, "Close": c, "Volume": 1e6 + c})
    if index:
        df.index = pd.date_range("2024-01-01", periods=n, freq="D")
    return df


def _dup(df):
    return df.set_axis(df.index[[*range(10), 9, *range(11, len(df))]])


def _back(df):
    idx = list(df.index)
    idx[20], idx[21] = idx[21], idx[20]
    return df.set_axis(pd.DatetimeIndex(idx))


def _col(df, values):
    return df.reset_index(drop=True).assign(Date=values)


FRAME_CASES = {
    "duplicated index": (_dup, r"index at row 10 .* is duplicated"),
    "decreasing index": (_back, r"index at row 21 .* is earlier than the bar before it"),
    "NaT in index": (lambda df: df.set_axis(df.index.where(np.arange(len(df)) != 5)), "missing timestamp at row 5"),
    "duplicated Date column": (
        lambda df: _col(df, list(df.index[:30]) + list(df.index[29:39])),
        r"column 'Date' at row 30",
    ),
    "decreasing epoch column": (lambda df: _col(df, np.arange(len(df))[::-1]), r"column 'Date' at row 1 .* earlier"),
    "unparseable Date column": (lambda df: _col(df, ["soon"] * len(df)), "column 'Date' is not a time"),
    "missing close": (lambda df: df.drop(columns="Close"), r"missing column\(s\) \['close'\]"),
    "all columns missing": (lambda df: df[[]], "missing column"),
}


@pytest.mark.parametrize("case", list(FRAME_CASES))
def test_bad_ohlcv_frames_name_the_column_or_row(case):
    hostile("OHLCV frame", case)
    df = _frame()
    assert np.isfinite(FeatureBuilder().build(df, lookback=None)[:2]).all()  # control
    assert np.isfinite(FeatureBuilder().build(_col(df, df.index), lookback=None)[:2]).all()  # a good Date column
    change, match = FRAME_CASES[case]
    with pytest.raises(FeatureBuildError, match=match):
        FeatureBuilder().build(change(df))
    sf = StreamingFeatures(["X"])
    before = sf.state_dict()
    with pytest.raises(FeatureBuildError, match=match):
        sf.warm_start({"X": change(df)})
    assert sf.state_dict() == before


def test_cli_predict_refuses_out_of_order_csv(market_run, goog, tmp_path):
    hostile("OHLCV frame", "CSV with a bar out of order")
    rows = goog.iloc[1000:1040].rename_axis("Date").reset_index()
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    rows.to_csv(good, index=False)
    rows.iloc[[*range(20), 21, 20, *range(22, 40)]].to_csv(bad, index=False)
    runner = CliRunner()
    ok = runner.invoke(main, ["predict", str(market_run), "--ohlcv", str(good), "--interval", "1440"])
    assert ok.exit_code == 0, ok.output  # control
    result = runner.invoke(main, ["predict", str(market_run), "--ohlcv", str(bad), "--interval", "1440"])
    assert result.exit_code == 2 and "bad.csv: column 'Date' at row 21" in result.output, result.output


# ---------------------------------------------------------------- YAML config


CONFIG_CASES = {
    "python object tag": ("models: !!python/object/apply:os.system ['touch {marker}']\n", "not valid YAML"),
    "python name tag": ("models:\n  lazy_load: !!python/name:os.system\n", "not valid YAML"),
    "NaN tolerance": ("predictor:\n  interval_rel_tol: .nan\n", "finite number"),
    "negative tolerance": ("predictor:\n  interval_rel_tol: -1.0\n", "finite number"),
    "top-level list": ("- models\n", "expected a mapping"),
    "alias bomb": (
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nmodels:\n  family_priority: [*c, *c, *c]\n",
        "a: unknown key",
    ),
    "empty provider name": ("executor:\n  providers: ['']\n", "non-empty string"),
    "not UTF-8": (b"models:\n  lazy_load: \xff\xfe\n", "not UTF-8"),
    "huge": ("# " + "x" * (1 << 20) + "\n", "bytes"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_hostile_yaml_config(tmp_path, case):
    hostile("YAML config", case)
    marker = tmp_path / "pwned"
    text, match = CONFIG_CASES[case]
    path = tmp_path / "bad.yaml"
    good = tmp_path / "good.yaml"
    good.write_text("models:\n  lazy_load: false\npredictor:\n  interval_rel_tol: 0.001\n")
    assert config.load_config(good).predictor.interval_rel_tol == 0.001  # control
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text.replace("{marker}", str(marker)))
    with pytest.raises(ConfigError, match=match):
        config.load_config(path)
    assert not marker.exists()
