"""Red team (brief HX): hostile runs, configs and inputs fastinfer already handles right.

Each case has a control that shows the good input passing, and checks the refusal is the typed
error naming what and where, and that good state (other models, buffer rows) is left as it was.
Defects found by the same attack are in the integrator's queue with their fixes, not here.
Cases that could hang (FIFOs in a run) run in a child process with a time limit.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastinfer import InferenceEngine, SeqBufferManager, config, testing
from fastinfer.cli import main
from fastinfer.errors import ConfigError, InferenceError, ModelLoadError, StateError
from fastinfer.kernels.spsc import HEAD, MAGIC, TAIL, SPSCRing
from fastinfer.loader import ModelLoader
from fastinfer.lock import LOCK_FILE
from fastinfer.state import wrap

from ._hardening import hostile
from .conftest import copy_run

TARGET = "fwd_ret_5m"
FAMILIES = ("ridge", "lightgbm", "xgboost")  # a linear model and two tree libraries: seconds to train


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Ridge, LightGBM and XGBoost on one target, converted (lock + graphs)."""
    from fastinfer.compiler import compile_run

    X, targets = testing.synthetic_features(n_rows=300, n_features=8, seed=3)
    root = testing.write_training_run(tmp_path_factory.mktemp("red"), X, {TARGET: targets[TARGET]}, list(FAMILIES))
    compile_run(root)
    return root


@pytest.fixture
def run(tmp_path, small_run):
    return copy_run(small_run, tmp_path)


def _dir(root: Path, family: str) -> Path:
    return root / "targets" / TARGET / "models" / "view=CROSS_SECTIONAL" / f"family={family}"


def _meta(root: Path, family: str = "ridge") -> Path:
    return _dir(root, family) / "model_meta.json"


# ---------------------------------------------------------------- one bad model, the rest serve


def _as_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


META_TEXT = {
    "empty file": ("", "not valid JSON"),
    "truncated object": ('{"family": "ridge", "feature_list": ["a"', "not valid JSON"),
    "top-level list": ("[]", "must hold a JSON object"),
    "null": ("null", "must hold a JSON object"),
    "bare string": ('"ridge"', "must hold a JSON object"),
    "byte-order mark, no keys": ("\ufeff{}", "has no feature_list"),
}

META_CHANGES = {
    "family is an object": (lambda m: {**m, "family": {"a": 1}}, "meta says family"),
    "family is a list": (lambda m: {**m, "family": ["ridge"]}, "meta says family"),
    "family is null": (lambda m: {**m, "family": None}, "meta says family"),
    "family of another folder": (lambda m: {**m, "family": "LightGBM"}, "meta says family"),
    "feature_names null": (lambda m: {**m, "feature_names": None}, "feature_names must be a non-empty list"),
    "feature name with a NUL byte": (
        lambda m: {**m, "feature_list": ["a\x00", *m["feature_list"][1:]]},
        "name different features",
    ),
    "feature_list renamed": (
        lambda m: {**m, "feature_list": [f"x{n}" for n in m["feature_list"]], "feature_names": None},
        "feature_names must be",
    ),
    "interval_minutes text": (lambda m: {**m, "interval_minutes": "1440"}, "positive number"),
    "interval_minutes 1e308": (lambda m: {**m, "interval_minutes": 1e308}, "above the limit"),
    "sequence_length 0": (lambda m: {**m, "sequence_length": 0}, "positive number"),
    "sequence_length 1e20": (lambda m: {**m, "sequence_length": 1e20}, "above the limit"),
    "model_checksum empty": (lambda m: {**m, "model_checksum": ""}, "64-hex-digit"),
    "model_file absolute": (lambda m: {**m, "model_file": "/etc/passwd"}, "escapes the run root"),
    "model_file into another family": (lambda m: {**m, "model_file": "../family=lightgbm/model.txt"}, "not a ridge"),
    "model_file Windows separators": (lambda m: {**m, "model_file": "..\\..\\model.joblib"}, "not a ridge format"),
    "model_file lone surrogate": (lambda m: {**m, "model_file": "\ud800.joblib"}, "not a usable path"),
    "model_file a folder": (lambda m: {**m, "model_file": "."}, "not a ridge format"),
    "model_file under ~": (lambda m: {**m, "model_file": "~/model.joblib"}, "does not exist"),
}


def _others_still_serve(root: Path, bad: str = "ridge") -> None:
    loader = ModelLoader(root)
    models = loader.load_all()
    assert sorted(models) == sorted((TARGET, f) for f in FAMILIES if f != bad)
    error = loader.errors[(TARGET, bad)]
    assert (error.family, error.target) == (bad, TARGET)
    X = np.ones((2, 8))
    for model in models.values():
        assert np.isfinite(model.predict(X)).all()


@pytest.mark.parametrize("case", list(META_TEXT))
def test_unparseable_meta_costs_only_its_model(run, case):
    hostile("red team: run directory", f"model_meta.json {case}")
    assert ModelLoader(run).load(TARGET, "ridge") is not None  # control
    text, match = META_TEXT[case]
    _meta(run).write_text(text)
    with pytest.raises(ModelLoadError, match=match) as info:
        ModelLoader(run).load(TARGET, "ridge")
    assert info.value.path == str(_meta(run))
    _others_still_serve(run)


@pytest.mark.parametrize("case", list(META_CHANGES))
def test_hostile_meta_field_costs_only_its_model(run, case):
    hostile("red team: run directory", f"model_meta.json {case}")
    meta = json.loads(_meta(run).read_text())
    change, match = META_CHANGES[case]
    _meta(run).write_text(json.dumps(change(meta)))
    with pytest.raises(ModelLoadError, match=match) as info:
        ModelLoader(run).load(TARGET, "ridge")
    assert (info.value.family, info.value.target) == ("ridge", TARGET)
    assert len(str(info.value)) < 1000  # a long path or value is cut, not echoed whole
    _others_still_serve(run)


def test_meta_in_other_encodings(run):
    hostile("red team: run directory", "model_meta.json not UTF-8")
    hostile("red team: run directory", "model_meta.json UTF-16 (JSON allows it)")
    text = _meta(run).read_text()
    _meta(run).write_bytes(text.encode("utf-16"))
    assert ModelLoader(run).load(TARGET, "ridge").feature_order  # json.loads detects UTF-16
    _meta(run).write_bytes(text[:-1].encode() + b', "note": "\xff"}')
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        ModelLoader(run).load(TARGET, "ridge")


def test_folders_where_files_belong(run):
    hostile("red team: run directory", "model_meta.json is a folder")
    hostile("red team: run directory", "model.onnx is a folder")
    _as_dir(_meta(run, "ridge"))
    _as_dir(_dir(run, "lightgbm") / "model.onnx")
    loader = ModelLoader(run)
    models = loader.load_all()
    assert sorted(models) == [(TARGET, "xgboost")]
    assert "cannot be read" in loader.errors[(TARGET, "ridge")].reason
    assert "cannot read graph" in loader.errors[(TARGET, "lightgbm")].reason


def test_lock_that_is_not_a_lock(run):
    for case, change in {
        "a folder": _as_dir,
        "empty": lambda p: p.write_text(""),
        "a list": lambda p: p.write_text("[]"),
        "no entries": lambda p: p.write_text("{}"),
    }.items():
        hostile("red team: lock", f"fastinfer.lock.json {case}")
        path = run / LOCK_FILE
        backup = path.read_bytes()
        change(path)
        with pytest.raises(StateError, match=LOCK_FILE):
            ModelLoader(run)
        if path.is_dir():
            path.rmdir()
        path.write_bytes(backup)
        assert ModelLoader(run).lock is not None  # control, restored


@pytest.mark.parametrize("text", ["[]", "null", "1", '"x"', "{}"])
def test_manifest_and_routing_of_other_shapes_are_ignored(run, text):
    hostile("red team: run directory", f"manifest.json and routing_decision.json = {text}")
    (run / "manifest.json").write_text(text)
    (run / "targets" / TARGET / "models" / "view=CROSS_SECTIONAL" / "routing_decision.json").write_text(text)
    loader = ModelLoader(run)
    assert loader.list_targets() == [TARGET]
    assert loader.get_routing_decision(TARGET) in (None, {})
    assert sorted(loader.load_all()) == sorted((TARGET, f) for f in FAMILIES)


def test_targets_or_models_that_are_files(run):
    hostile("red team: run directory", "targets/<t>/models is a file")
    shutil.rmtree(run / "targets" / TARGET / "models")
    (run / "targets" / TARGET / "models").write_text("x")
    assert ModelLoader(run).list_targets() == []
    hostile("red team: run directory", "targets is a file")
    shutil.rmtree(run / "targets")
    (run / "targets").write_text("x")
    assert ModelLoader(run).list_targets() == []


FIFO_CHILD = textwrap.dedent(
    """
    import logging, os, sys
    from pathlib import Path
    logging.disable(logging.CRITICAL)
    from fastinfer import signing
    from fastinfer.errors import ModelLoadError, SignatureError
    from fastinfer.loader import ModelLoader

    root, target = Path(sys.argv[1]), sys.argv[2]
    folder = root / "targets" / target / "models" / "view=CROSS_SECTIONAL"

    def fifo(path):
        if path.exists():
            path.unlink()
        os.mkfifo(path)

    fifo(root / "manifest.json")
    fifo(folder / "routing_decision.json")
    fifo(root / "feature_definitions.yaml")
    loader = ModelLoader(root)
    assert loader.list_targets() == [target]
    assert loader.get_routing_decision(target) is None
    assert loader.definitions() is None
    fifo(folder / "family=lightgbm" / "model.txt")
    (folder / "family=lightgbm" / "model.onnx").unlink()  # served natively: the FIFO is its only model file
    try:
        ModelLoader(root, prefer_onnx=False).load(target, "lightgbm")
        raise SystemExit("a FIFO model.txt loaded")
    except ModelLoadError as exc:
        assert "no model file" in exc.reason, exc
    fifo(root / "fastinfer.lock.sig")
    private, public = signing.generate_keypair(root.parent / "key")
    try:
        ModelLoader(root, verify_signature=True, trusted_public_key=public)
        raise SystemExit("a FIFO signature verified")
    except SignatureError as exc:
        assert "not signed" in exc.reason, exc
    print("ok")
    """
)


def test_fifos_where_the_loader_checks_for_a_file_are_not_waited_on(run):
    """A FIFO never opened by its writer blocks any read of it: these places check for a regular
    file first (a child with a time limit, so a regression fails instead of hanging the suite)."""
    for case in ("manifest.json", "routing_decision.json", "feature_definitions.yaml", "model.txt", "lock.sig"):
        hostile("red team: run directory", f"{case} is a FIFO")
    done = subprocess.run(
        [sys.executable, "-c", FIFO_CHILD, str(run), TARGET], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# ---------------------------------------------------------------- feature arrays to a model


@pytest.fixture(scope="module")
def served(small_run):
    onnx = {f: ModelLoader(small_run).load(TARGET, f) for f in FAMILIES}
    native = ModelLoader(small_run, prefer_onnx=False).load(TARGET, "lightgbm")
    return {**{(f, "onnx"): m for f, m in onnx.items()}, ("lightgbm", "native"): native}


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


LAYOUTS = {
    "Fortran order": np.asfortranarray,
    "every other row": lambda X: np.repeat(X, 2, axis=0)[::2],
    "every other column": lambda X: np.repeat(X, 2, axis=1)[:, ::2],
    "reversed twice": lambda X: X[::-1][::-1],
    "read-only": _readonly,
    "big-endian float64": lambda X: X.astype(">f8"),
    "list of lists": lambda X: X.tolist(),
    "masked array": lambda X: np.ma.masked_array(X, mask=np.zeros(X.shape, bool)),
    "long double": lambda X: X.astype(np.longdouble),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_array_layouts_give_the_same_predictions(served, layout):
    """Same values, another memory layout: bit-identical predictions (every backend here copies to
    the dtype it reads, so nothing may differ)."""
    hostile("red team: feature array", layout)
    X = np.random.default_rng(5).standard_normal((32, 8))
    for key, model in served.items():
        np.testing.assert_array_equal(model.predict(LAYOUTS[layout](X)), model.predict(X), err_msg=str(key))


@pytest.mark.parametrize("case", ["0-d scalar", "zero features", "8 features as a column"])
def test_shapes_without_rows_of_f_features_are_refused(served, case):
    hostile("red team: feature array", case)
    X = {"0-d scalar": np.float64(1.0), "zero features": np.empty((3, 0)), "8 features as a column": np.ones((8, 1))}
    for (family, _), model in served.items():
        with pytest.raises(InferenceError, match=f"family='{family}'.*expected \\(N, F\\) with F=8"):
            model.predict(X[case])


def test_empty_batch_to_a_graph_is_empty(served):
    hostile("red team: feature array", "0 rows to an ONNX graph")
    for family in FAMILIES:
        assert served[(family, "onnx")].predict(np.empty((0, 8))).shape == (0,)


def test_engine_refuses_a_model_of_another_family_or_none(served):
    hostile("red team: engine", "model of another family")
    hostile("red team: engine", "no model")
    engine = InferenceEngine()
    X = np.ones((1, 8))
    assert engine.predict(served[("ridge", "onnx")], X, "ridge").shape == (1,)  # control
    with pytest.raises(InferenceError, match="model is ridge, asked to run it as lightgbm"):
        engine.predict(served[("ridge", "onnx")], X, "lightgbm")
    with pytest.raises(InferenceError, match="no model"):
        engine.predict(None, X, "ridge")


# ---------------------------------------------------------------- SeqBufferManager


def _buffer() -> SeqBufferManager:
    return SeqBufferManager(4, 3, symbols=["A", "B"], ttl=dt.timedelta(days=1))


BAD_CONSTRUCTION = {
    "seq_len 0": (lambda: SeqBufferManager(0, 3), ConfigError, "seq_len"),
    "seq_len -1": (lambda: SeqBufferManager(-1, 3), ConfigError, "seq_len"),
    "seq_len 2.0": (lambda: SeqBufferManager(2.0, 3), ConfigError, "seq_len"),
    "seq_len 10**30": (lambda: SeqBufferManager(10**30, 3), ConfigError, "seq_len"),
    "n_features '3'": (lambda: SeqBufferManager(2, "3"), ConfigError, "n_features"),
    "symbols a string": (lambda: SeqBufferManager(2, 3, symbols="AB"), InferenceError, "symbols"),
    "symbols numbers": (lambda: SeqBufferManager(2, 3, symbols=[1, 2]), InferenceError, "names must be strings"),
    "ttl -1": (lambda: SeqBufferManager(2, 3, ttl=-1), ConfigError, "ttl"),
    "ttl NaN": (lambda: SeqBufferManager(2, 3, ttl=float("nan")), ConfigError, "ttl"),
    "ttl inf": (lambda: SeqBufferManager(2, 3, ttl=float("inf")), ConfigError, "ttl"),
    "ttl 10^8 days": (lambda: SeqBufferManager(2, 3, ttl=dt.timedelta(days=10**8)), ConfigError, "ttl"),
    "padding 'edge'": (lambda: SeqBufferManager(2, 3, padding="edge"), ConfigError, "padding"),
    "warmup_bars above seq_len": (lambda: SeqBufferManager(2, 3, warmup_bars=5), ConfigError, "warmup_bars"),
}


@pytest.mark.parametrize("case", list(BAD_CONSTRUCTION))
def test_bad_buffer_construction(case):
    hostile("red team: SeqBufferManager", case)
    assert SeqBufferManager(2, 3).seq_len == 2  # control
    build, error, match = BAD_CONSTRUCTION[case]
    with pytest.raises(error, match=match):
        build()


NOW = dt.datetime(2024, 1, 2)
BAD_CALLS = {
    "row too wide": lambda b: b.push("A", np.ones(4), timestamp=NOW),
    "two rows": lambda b: b.push("A", np.ones((2, 3)), timestamp=NOW),
    "NaN": lambda b: b.push("A", [1, np.nan, 2], timestamp=NOW),
    "beyond float32": lambda b: b.push("A", [1, 1e39, 2], timestamp=NOW),
    "text": lambda b: b.push("A", ["a", "b", "c"], timestamp=NOW),
    "booleans": lambda b: b.push("A", np.ones(3, bool), timestamp=NOW),
    "complex": lambda b: b.push("A", np.ones(3, complex), timestamp=NOW),
    "symbol index 7": lambda b: b.push(7, np.ones(3), timestamp=NOW),
    "symbol index -1": lambda b: b.push(-1, np.ones(3), timestamp=NOW),
    "symbol True": lambda b: b.push(True, np.ones(3), timestamp=NOW),
    "symbol 1.0": lambda b: b.push(1.0, np.ones(3), timestamp=NOW),
    "no timestamp with a ttl": lambda b: b.push("A", np.ones(3)),
    "timestamp text": lambda b: b.push("A", np.ones(3), timestamp="2024-01-01"),
    "timestamp float": lambda b: b.push("A", np.ones(3), timestamp=1.5),
    "timestamp 2**70": lambda b: b.push("A", np.ones(3), timestamp=2**70),
    "timestamp NaT": lambda b: b.push("A", np.ones(3), timestamp=np.datetime64("NaT")),
    "timestamp year 9999 aware": lambda b: b.push("A", np.ones(3), timestamp=dt.datetime(9999, 12, 31, tzinfo=dt.UTC)),
    "timestamp datetime64 year 101970": lambda b: b.push("A", np.ones(3), timestamp=np.datetime64(100000, "Y")),
    "timestamp older than the last": lambda b: b.push("A", np.ones(3), timestamp=NOW - dt.timedelta(days=1)),
    "block of 3 rows for 2 symbols": lambda b: b.push_all(np.ones((3, 3)), timestamp=NOW),
    "1-D block": lambda b: b.push_all(np.ones(3), timestamp=NOW),
    "push_many unknown symbol": lambda b: b.push_many(["A", "Z"], np.ones((2, 3)), timestamp=NOW),
    "push_many one name, two rows": lambda b: b.push_many(["A"], np.ones((2, 3)), timestamp=NOW),
    "get_sequence unknown": lambda b: b.get_sequence("Z"),
    "out float64": lambda b: b.get_sequence("A", out=np.empty((1, 4, 3))),
    "out of another shape": lambda b: b.get_sequence("A", out=np.empty((1, 4, 2), np.float32)),
    "index array out of range": lambda b: b.get_batch(np.array([5], dtype=np.int64)),
    "negative index array": lambda b: b.get_batch(np.array([-1], dtype=np.int64)),
    "float index array": lambda b: b.get_batch(np.array([0.0])),
    "reset unknown": lambda b: b.reset("Z"),
    "index of an unhashable": lambda b: b.index({}),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_buffer_calls_are_refused_and_change_nothing(case):
    hostile("red team: SeqBufferManager", case)
    buf = _buffer()
    buf.push("A", [1.0, 2.0, 3.0], timestamp=NOW)  # control
    before = buf.to_dict()
    with pytest.raises(InferenceError):
        BAD_CALLS[case](buf)
    assert buf.to_dict() == before


def test_buffer_reads_into_unusual_but_valid_arrays():
    hostile("red team: SeqBufferManager", "non-contiguous out")
    hostile("red team: SeqBufferManager", "big-endian row")
    buf = SeqBufferManager(4, 3, symbols=["A", "B"])
    buf.push("A", np.array([1.0, 2.0, 3.0], dtype=">f8"))
    out = np.zeros((1, 4, 6), np.float32)[:, :, ::2]
    assert buf.get_sequence("A", out=out)[0, -1].tolist() == [1.0, 2.0, 3.0]
    assert buf.get_batch([]).shape == (0, 4, 3)
    assert buf.get_batch(["A", "A"]).shape == (2, 4, 3)


def _state_with(change) -> dict:
    buf = SeqBufferManager(4, 3, symbols=["A", "B"])
    buf.push("A", [1.0, 2.0, 3.0])
    payload = copy.deepcopy(buf.to_dict()["payload"])
    change(payload)
    return wrap("seqbuffer", 2, payload)  # a valid checksum: the fields themselves are checked


def _set(key, value):
    return lambda p: p.__setitem__(key, value)


def _set_rows(key, value):
    return lambda p: p["rows"].__setitem__(key, value)


BAD_STATES = {
    "symbols with a list": (_set("symbols", [["A"], "B"]), "symbols"),
    "two anonymous symbols": (_set("symbols", [None, None]), "duplicate"),
    "default_index true": (_set("default_index", True), "default_index"),
    "ttl_ns 0": (_set("ttl_ns", 0), "ttl_ns"),
    "rows of another shape": (_set_rows("shape", [2, 4, 4]), "rows"),
    "negative shape": (_set_rows("shape", [-2, 4, 3]), "rows"),
    "float64 rows": (_set_rows("dtype", "<f8"), "rows"),
    "padding 1": (_set("padding", 1), "padding"),
    "100,000 symbols, no data": (
        lambda p: p.update(
            symbols=[f"s{i}" for i in range(100_000)],
            counts=[0] * 100_000,
            stamps=[None] * 100_000,
            rows={"dtype": "<f4", "shape": [100_000, 4, 3], "data": ""},
        ),
        "rows",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STATES))
def test_hostile_buffer_states(case):
    hostile("red team: state file", f"seqbuffer {case}")
    assert SeqBufferManager.from_dict(_state_with(lambda p: None)).count("A") == 1  # control
    change, field = BAD_STATES[case]
    with pytest.raises(StateError, match=f"field '{field}'|{field}"):
        SeqBufferManager.from_dict(_state_with(change))


def test_state_file_that_is_a_folder(tmp_path):
    hostile("red team: state file", "state path is a folder")
    with pytest.raises(StateError, match="cannot read state"):
        SeqBufferManager.load(tmp_path)


# ---------------------------------------------------------------- YAML config


CONFIGS = {
    "family_priority a string": ("models:\n  family_priority: lightgbm\n", "expected a list"),
    "family_priority nested": ("models:\n  family_priority: [[a]]\n", "non-empty string"),
    "lazy_load 'yes'": ("models:\n  lazy_load: 'yes'\n", "true/false"),
    "lazy_load 1": ("models:\n  lazy_load: 1\n", "true/false"),
    "seq_buffer_size 60.0": ("models:\n  seq_buffer_size: 60.0\n", "integer"),
    "seq_buffer_size 1e400": ("models:\n  seq_buffer_size: 1e400\n", "integer"),
    "threads a 29-digit integer": ("executor:\n  intra_op_threads: 99999999999999999999999999999\n", "outside"),
    "providers a string": ("executor:\n  providers: CPUExecutionProvider\n", "expected a list"),
    "trusted_public_key a list": ("models:\n  trusted_public_key: [a]\n", "non-empty string"),
    "trusted_public_key empty": ("models:\n  trusted_public_key: ''\n", "non-empty string"),
    "trusted_public_key NUL": ('models:\n  trusted_public_key: "a\\0b"\n', "non-empty string"),
    "optimized_model_dir NUL": ('executor:\n  optimized_model_dir: "a\\0b"\n', "non-empty string"),
    "integer key": ("models:\n  1: true\n", "unknown key"),
    "two documents": ("models: {}\n---\nmodels: {}\n", "not valid YAML"),
    "date value": ("predictor:\n  interval_rel_tol: 2001-12-14\n", "expected a number"),
    "binary tag": ("models:\n  trusted_public_key: !!binary aGVsbG8=\n", "non-empty string"),
    "set tag": ("models:\n  family_priority: !!set {lightgbm: null}\n", "expected a list"),
    "merge key from an unknown section": ("base: &b {lazy_load: false}\nmodels:\n  <<: *b\n", "unknown key"),
    "5,000 nested lists": ("a: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML"),
    "3,000 nested maps": ("models: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "not valid YAML"),
    "tab indentation": ("models:\n\tlazy_load: false\n", "not valid YAML"),
    "interval_rel_tol .inf": ("predictor:\n  interval_rel_tol: .inf\n", "finite number"),
    "nan_policy no": ("predictor:\n  nan_policy: no\n", "not one of"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_hostile_config_keys(tmp_path, case):
    hostile("red team: YAML config", case)
    good = tmp_path / "good.yaml"
    good.write_text("live_trading:\n  models:\n    lazy_load: false\n")  # the spec's wrapper
    assert config.load_config(good).models.lazy_load is False  # control
    text, match = CONFIGS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        config.load_config(path)


def test_config_paths_that_are_not_files(tmp_path):
    hostile("red team: YAML config", "config path is a folder")
    hostile("red team: YAML config", "config path missing")
    with pytest.raises(ConfigError, match="cannot read config"):
        config.load_config(tmp_path)
    with pytest.raises(ConfigError, match="cannot read config"):
        config.load_config(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- shared-memory ring


def _segment(name: str, words: dict[int, int], nbytes: int = 4096) -> str:
    data = bytearray(nbytes)
    view = np.frombuffer(data, dtype=np.int64, count=48)
    for i, v in words.items():
        view[i] = v
    path = Path("/dev/shm") / name
    path.write_bytes(bytes(data))
    os.chmod(path, 0o600)
    return name


SEGMENTS = {
    "zeros": ({}, "not an SPSC ring"),
    "another version": ({0: MAGIC, 1: 2, 2: 2, 3: 1, 4: 1}, "not an SPSC ring"),
    "capacity 3 (not a power of two)": ({0: MAGIC, 1: 1, 2: 3, 3: 1, 4: 1}, "corrupt SPSC header"),
    "capacity -2**63": ({0: MAGIC, 1: 1, 2: -(1 << 63), 3: 1, 4: 1}, "corrupt SPSC header"),
    "dtype code 7": ({0: MAGIC, 1: 1, 2: 2, 3: 1, 4: 7}, "corrupt SPSC header"),
    "capacity 2**62": ({0: MAGIC, 1: 1, 2: 1 << 62, 3: 1, 4: 1}, "header needs"),
    "width 2**62": ({0: MAGIC, 1: 1, 2: 2, 3: 1 << 62, 4: 1}, "header needs"),
}


@pytest.mark.parametrize("case", list(SEGMENTS))
def test_attach_refuses_a_segment_that_is_not_a_ring(case):
    hostile("red team: SPSC ring", f"segment {case}")
    name = f"fi_red_{os.getpid()}_{abs(hash(case)) % 10**8}"
    words, match = SEGMENTS[case]
    try:
        with pytest.raises(ValueError, match=match):
            SPSCRing.attach(_segment(name, words))
    finally:
        (Path("/dev/shm") / name).unlink(missing_ok=True)


def test_consumer_of_a_ring_whose_tail_passed_its_head_reads_nothing():
    hostile("red team: SPSC ring", "tail past head: get_many")
    ring = SPSCRing.create(4, 2, name=f"fi_red_tail_{os.getpid()}", timeout=0.05)
    try:
        ring.put([1.0, 2.0])  # control: one record waits
        out, seqs = np.empty((4, 2)), np.empty(4, np.int64)
        ring._ctrl[TAIL] = ring._ctrl[HEAD] + 5  # what a hostile process of the same user can write
        assert ring.get_many(out, seqs) == 0
    finally:
        ring.close()
        ring.unlink()


# ---------------------------------------------------------------- command line


def test_cli_bad_arguments_exit_2_naming_the_problem(small_run, tmp_path):
    runner = CliRunner()
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    cases = {
        "verify a missing run": (["verify", str(tmp_path / "missing")], "run root does not exist"),
        "predict on /etc/passwd as bars": (
            ["predict", str(small_run), "--ohlcv", "/etc/passwd", "--interval", "1440"],
            "cannot read bars",
        ),
        "sign with a file that is not a key": (["sign", str(small_run), "--key", str(garbage)], "PEM private key"),
        "predict without --interval": (["predict", str(small_run), "--ohlcv", "/etc/passwd"], "--interval"),
        "unknown command": (["explode"], "No such command"),
    }
    for case, (args, match) in cases.items():
        hostile("red team: CLI", case)
        result = runner.invoke(main, args)
        assert result.exit_code == 2 and match in result.output, (case, result.output)


# ---------------------------------------------------------------- defects found by the red team, fixed


FIFO_LOAD_CHILD = textwrap.dedent(
    """
    import logging, os, sys
    from pathlib import Path
    logging.disable(logging.CRITICAL)
    from fastinfer.errors import StateError
    from fastinfer.loader import ModelLoader

    root, target, case = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    folder = root / "targets" / target / "models" / "view=CROSS_SECTIONAL"
    path = {"meta": folder / "family=ridge" / "model_meta.json", "graph": folder / "family=ridge" / "model.onnx",
            "lock": root / "fastinfer.lock.json"}[case]
    path.unlink()
    os.mkfifo(path)
    try:
        loader = ModelLoader(root)
    except StateError as exc:
        print("StateError", "not a regular file" in str(exc))
        raise SystemExit(0)
    models = loader.load_all()
    print(sorted(f for _, f in models), "not a regular file" in loader.errors[(target, "ridge")].reason)
    """
)


@pytest.mark.parametrize("case", ["meta", "graph", "lock"])
def test_fifo_in_the_run_is_refused_not_waited_on(run, case):
    """D1: a FIFO where model_meta.json, model.onnx or the lock belongs used to block forever."""
    hostile("red team: run directory", f"{case} is a FIFO")
    try:
        done = subprocess.run(
            [sys.executable, "-c", FIFO_LOAD_CHILD, str(run), TARGET, case], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"ModelLoader waited on a FIFO {case}")
    assert done.returncode == 0, done.stderr[-2000:]
    want = "StateError True" if case == "lock" else "['lightgbm', 'xgboost'] True"
    assert done.stdout.strip() == want


SIGNED_FIFO_CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from fastinfer.errors import SignatureError
    from fastinfer.loader import ModelLoader

    root, public = Path(sys.argv[1]), sys.argv[2]
    (root / "fastinfer.lock.json").unlink()
    os.mkfifo(root / "fastinfer.lock.json")
    try:
        ModelLoader(root, verify_signature=True, trusted_public_key=public)
    except SignatureError as exc:
        print("SignatureError", "cannot read signed file" in str(exc))
    """
)


def test_fifo_lock_in_a_signed_run_is_refused_not_waited_on(run, tmp_path):
    """A signed run reads its lock after checking the signature: a FIFO swapped in there (the
    signature covers the statement, not the file type) is refused, never waited on."""
    from fastinfer.signing import generate_keypair, sign_run

    hostile("red team: run directory", "signed run, lock is a FIFO")
    private, public = generate_keypair(tmp_path / "keys")
    sign_run(run, private)
    try:
        done = subprocess.run(
            [sys.executable, "-c", SIGNED_FIFO_CHILD, str(run), str(public)], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the signed loader waited on a FIFO lock")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "SignatureError True"


def test_big_endian_rows_to_native_xgboost(small_run):
    """D2: XGBoost's DMatrix read non-native byte order as native: wrong numbers, no error."""
    hostile("red team: feature array", "big-endian rows to native XGBoost")
    model = ModelLoader(small_run, prefer_onnx=False).load(TARGET, "xgboost")
    X = np.random.default_rng(5).standard_normal((32, 8))
    want = model.predict(X.astype(np.float32))
    np.testing.assert_array_equal(model.predict(X.astype(">f4")), want)
    np.testing.assert_array_equal(model.predict(X.astype(">f8")), model.predict(X))


@pytest.mark.parametrize("index", [5, [[1]], 2.5, True], ids=["int", "nested list", "float", "bool"])
def test_manifest_target_index_of_another_type(run, index):
    """D3: list_targets took set(target_index): a TypeError that stopped load_all (every model)."""
    hostile("red team: run directory", f"manifest.json target_index {index!r}")
    (run / "manifest.json").write_text(json.dumps({"target_index": index}))
    loader = ModelLoader(run)
    assert loader.list_targets() == [TARGET]
    assert sorted(loader.load_all()) == sorted((TARGET, f) for f in FAMILIES)


def test_read_only_out_is_an_inference_error():
    """D4: a read-only out reached numba, which raised its TypingError (a page of compiler text)."""
    buf = SeqBufferManager(4, 3, symbols=["A", "B"])
    for call, shape, args in [
        ("get_sequence", (1, 4, 3), ("A",)),
        ("get_batch", (2, 4, 3), (None,)),
        ("push_and_get_sequence", (1, 4, 3), ("A", np.ones(3))),
        ("push_all_and_get_batch", (2, 4, 3), (np.ones((2, 3)),)),
    ]:
        hostile("red team: SeqBufferManager", f"read-only out to {call}")
        out = np.zeros(shape, np.float32)
        out.setflags(write=False)
        with pytest.raises(InferenceError, match="read-only"):
            getattr(buf, call)(*args, out=out)
    assert buf.count("A") == buf.count("B") == 0  # nothing was pushed


def test_attach_to_a_hostile_segment_is_a_state_error():
    """D5: untyped ValueError / TypeError / OSError, and counters no ring can have were served."""
    names = []
    try:
        for case, words, nbytes in [
            ("16 bytes", {0: MAGIC, 1: 1}, 16),
            ("tail past head", {0: MAGIC, 1: 1, 2: 4, 3: 2, 4: 1, HEAD: 0, TAIL: 10}, 4096),
            ("head 2**40 ahead of a 4-slot ring", {0: MAGIC, 1: 1, 2: 4, 3: 2, 4: 1, HEAD: 1 << 40}, 4096),
        ]:
            hostile("red team: SPSC ring", f"segment {case}")
            names.append(f"fi_red_pending_{os.getpid()}_{len(names)}")
            data = bytearray(nbytes)
            view = np.frombuffer(data, dtype=np.int64, count=nbytes // 8)
            for i, v in words.items():
                if i < len(view):
                    view[i] = v
            (Path("/dev/shm") / names[-1]).write_bytes(bytes(data))
            with pytest.raises(StateError, match=names[-1]):
                SPSCRing.attach(names[-1])
        hostile("red team: SPSC ring", "invalid name")
        with pytest.raises(StateError, match="cannot attach"):
            SPSCRing.attach("a/b")
    finally:
        for name in names:
            (Path("/dev/shm") / name).unlink(missing_ok=True)


def test_len_of_a_ring_corrupted_after_attach():
    hostile("red team: SPSC ring", "tail past head after attach: len()")
    ring = SPSCRing.create(4, 2, name=f"fi_red_len_{os.getpid()}")
    try:
        ring._ctrl[TAIL] = ring._ctrl[HEAD] + 5
        assert len(ring) == 0
    finally:
        ring.close()
        ring.unlink()


def test_unhashable_symbol():
    """D6: push(['A'], row) and ['A'] in buffer were TypeErrors."""
    hostile("red team: SeqBufferManager", "unhashable symbol")
    buf = SeqBufferManager(4, 3, symbols=["A"])
    with pytest.raises(InferenceError, match="names must be strings"):
        buf.push(["A"], np.ones(3))
    with pytest.raises(InferenceError, match="names must be strings"):
        buf.push_and_get_sequence({"A": 1}, np.ones(3))
    assert ["A"] not in buf and buf.count("A") == 0


def test_config_string_with_a_lone_surrogate(tmp_path):
    """D7: "\\ud800" passed the config check and failed later as a UnicodeEncodeError."""
    hostile("red team: YAML config", "lone surrogate in a path")
    path = tmp_path / "bad.yaml"
    path.write_text('models:\n  trusted_public_key: "\\ud800.pub"\n')
    with pytest.raises(ConfigError, match=r"trusted_public_key.*lone surrogate"):
        config.load_config(path)


def test_meta_family_and_model_file_are_not_echoed_whole(run):
    """D8 and D10: a 3 MiB family was echoed whole; a 300,000-component model_file took seconds in
    Path.resolve (quadratic) and was echoed whole."""
    hostile("red team: run directory", "model_meta.json family of 3 MiB")
    hostile("red team: run directory", "model_file of 300,000 components")
    meta = json.loads(_meta(run).read_text())
    _meta(run).write_text(json.dumps({**meta, "family": "x" * (3 << 20)}))
    with pytest.raises(ModelLoadError, match="meta says family") as info:
        ModelLoader(run).load(TARGET, "ridge")
    assert len(str(info.value)) < 1000
    _meta(run).write_text(json.dumps({**meta, "model_file": "a/" * 300_000 + "model.joblib"}))
    with pytest.raises(ModelLoadError, match=r"model_file .* is over 4096 characters") as info:
        ModelLoader(run).load(TARGET, "ridge")
    assert len(str(info.value)) < 1000
    assert _dir(run, "ridge").is_dir()


def test_duplicate_keys_in_meta(run):
    """D9: a key given twice was taken silently (the last one)."""
    hostile("red team: run directory", "model_meta.json with a key given twice")
    text = _meta(run).read_text().rstrip()
    _meta(run).write_text(text[:-1] + ', "interval_minutes": 60}')
    with pytest.raises(ModelLoadError, match="key 'interval_minutes' is given twice"):
        ModelLoader(run).load(TARGET, "ridge")


# ---------------------------------------------------------------- lower-priority findings, fixed


def test_an_empty_batch_gives_no_rows_from_every_backend(small_run):
    """scikit-learn refuses an empty batch where ONNX Runtime returns one: both give (0,) now."""
    hostile("red team: feature array", "no rows")
    for prefer_onnx in (True, False):
        for family in FAMILIES:
            model = ModelLoader(small_run, prefer_onnx=prefer_onnx).load(TARGET, family)
            out = model.predict(np.empty((0, 8)))
            assert out.shape == (0,) and out.dtype == np.float64, (family, model.backend)


def test_inference_engine_names_an_unknown_family_with_a_typed_value_error(served):
    """The spec's dispatch raises ValueError; fastinfer's InferenceError is one, and names the family."""
    hostile("red team: InferenceEngine", "unknown family")
    engine = InferenceEngine()
    X = np.zeros((2, 8))
    with pytest.raises(InferenceError, match="Unknown family: 'gbdt'"):
        engine.predict(served["ridge", "onnx"], X, "gbdt")
    with pytest.raises(InferenceError, match="Use predict_sequential for tab_lstm"):
        engine.predict(served["ridge", "onnx"], X, "tab_lstm")
    with pytest.raises(InferenceError, match="ridge is not a sequence model"):
        engine.predict_sequential(served["ridge", "onnx"], X, "ridge")


def test_a_misspelt_execution_provider_is_a_config_error():
    """Silently dropped, a typo in executor.providers would leave a GPU deployment on the CPU."""
    from fastinfer import executor

    hostile("red team: config", "misspelt execution provider")
    with pytest.raises(ConfigError, match=r"executor.providers: 'CUDAExecutionProvidr' is not an ONNX Runtime"):
        executor.select_providers(("CUDAExecutionProvidr", "CPUExecutionProvider"))
    assert executor.select_providers(("CUDAExecutionProvider",), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_buffer_state_saved_onto_a_folder_is_a_state_error(tmp_path):
    hostile("red team: state file", "save onto a folder")
    buffer = SeqBufferManager(4, 2, symbols=["A"])
    (tmp_path / "state.json").mkdir()
    with pytest.raises(StateError, match=r"state.json: cannot write state"):
        buffer.save(tmp_path / "state.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp file left behind


@pytest.mark.parametrize("kind", ["folder", "fifo", "missing"])
def test_bars_file_that_is_not_a_regular_file_is_named(tmp_path, kind):
    """`predict --ohlcv` and `features build` read bars through one function: a FIFO is refused at
    once (pandas would wait for a writer), a folder or a missing file named as such."""
    from fastinfer.errors import FeatureBuildError
    from fastinfer.tables import read_table

    hostile("red team: bars file", kind)
    path = tmp_path / "bars.csv"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    expected = "no such file" if kind == "missing" else "not a regular file"
    with pytest.raises(FeatureBuildError, match=rf"bars.csv: {expected}"):
        read_table(path, "bars")
