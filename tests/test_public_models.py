"""Model files other projects published (``tests/data/models/public``; sources, commits and licences in
``tests/data/models/README.md``) served through the whole path: each file dropped into a run directory
beside its ``model_meta.json`` (checksum recorded), ``compile_run``, ``ModelLoader.load``, ``predict``,
against the native library's own predict on rows made from the model's own feature ranges (NaN and
unseen, negative and seen category codes included).

``EXPECTED`` says, file by file, what fastinfer must do: serve the converted graph (``onnx``), serve the
native model with a named reason (``native``), or refuse the file with a typed error naming it. Files
the native library cannot open either are refused; nothing here may crash the test process (the one
file that crashes LightGBM itself is opened by LightGBM in a child process only).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fastinfer import testing
from fastinfer.adapters.lightgbm import TEXT
from fastinfer.compiler import compile_run
from fastinfer.config import load_config
from fastinfer.errors import ModelLoadError
from fastinfer.loader import ModelLoader

from ._hardening import hostile

PUBLIC = Path(__file__).parent / "data" / "models" / "public"
LINEAR = "LightGBM linear trees"

# file -> ("onnx" | "native", reason the lock records for a native model)
SERVED: dict[str, tuple[str, str]] = {
    "lightgbm_experiments_binary55.txt": ("onnx", ""),
    "lightgbm_cpp_tests_binary.txt": ("onnx", ""),
    "lightgbm_cpp_tests_if_else_regression.txt": ("onnx", ""),
    "lightgbm_test_string_model_num.txt": ("onnx", ""),
    "lightgbm_ctr_binary_linear_first30.txt": ("native", LINEAR),
    "lleaves_single_tree.txt": ("onnx", ""),
    "lleaves_tiniest_single_tree.txt": ("onnx", ""),
    "lleaves_leaf_scan.txt": ("onnx", ""),
    "lleaves_boston_housing.txt": ("onnx", ""),
    "lleaves_NYC_taxi_first30.txt": ("onnx", ""),
    "lleaves_airline_first30.txt": ("onnx", ""),
    "lleaves_mtpl2_first40_stale_tree_sizes.txt": ("onnx", ""),
    "leaves_lg_breast_cancer.txt": ("onnx", ""),
    "leaves_lgmulticlass.txt": ("onnx", ""),
    **{
        f"xgboost{kind}-1.0.0rc1.{task}.json": ("onnx", "")
        for kind in ("", "_scikit")
        for task in ("cls", "logit", "logitraw", "ltr", "reg")
    },
}
STALE_TREE_SIZES = "lleaves_mtpl2_first40_stale_tree_sizes.txt"
PRE_V2 = "lightgbm_pre_v2_format.txt"
# Relative to each output column's scale (max |native|): LightGBMAdapter / XGBoostAdapter.tolerance, the
# float32 summation of the graph against the libraries' float64 (LightGBM) or float32 in another order.
TOLERANCE = 1e-4


def _family(name: str) -> str:
    return "xgboost" if name.endswith(".json") else "lightgbm"


def _target(name: str) -> str:
    return "t_" + re.sub(r"[^A-Za-z0-9]+", "_", name.rsplit(".", 1)[0])


def _lightgbm_text(name: str) -> str:
    """The file as LightGBM reads it safely: without its ``tree_sizes`` header line (LightGBM then finds
    the trees line by line), which the stale-sizes file needs and every other file reads the same without."""
    text = (PUBLIC / name).read_text()
    return re.sub(r"^tree_sizes=.*\n", "", text, count=1, flags=re.M)


def _rows(name: str, n: int, seed: int = 0) -> np.ndarray:
    """300 rows over the model's own feature ranges (LightGBM's ``feature_infos``: ``[lo:hi]`` numeric,
    ``c1:c2:...`` category codes, which get seen, unseen and negative codes) and NaN cells."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, n)) * 3
    infos = (
        re.search(r"^feature_infos=(.*)$", (PUBLIC / name).read_text(), re.M) if _family(name) == "lightgbm" else None
    )
    for j, info in enumerate(infos.group(1).split() if infos else []):
        if info.startswith("["):
            lo, hi = (float(v) for v in info[1:-1].split(":"))
            X[:, j] = rng.uniform(lo - 0.1 * (hi - lo) - 1, hi + 0.1 * (hi - lo) + 1, len(X))
        elif info != "none":
            codes = [int(c) for c in info.split(":")]
            X[:, j] = rng.choice([*codes, max(codes) + 1, max(codes) + 1000, -1], len(X))
    X[rng.random(X.shape) < 0.05] = np.nan
    return X


def _native(name: str):
    """(number of features, predict) by the library alone, as fastinfer serves it: class probabilities
    for classifiers ([1 - p, p] for binary; XGBoost's margin through its link for ``logitraw`` / ``softmax``)."""
    if _family(name) == "lightgbm":
        import lightgbm

        booster = lightgbm.Booster(model_str=_lightgbm_text(name))
        binary = booster.dump_model(num_iteration=1)["objective"].startswith("binary")

        def predict(X):
            p = booster.predict(X)
            return np.column_stack([1 - p, p]) if binary else p

        return booster.num_feature(), predict
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(bytearray((PUBLIC / name).read_bytes()))
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]

    def predict(X):
        margin = booster.predict(xgboost.DMatrix(X), output_margin=True)
        if objective.startswith("binary:"):
            p = 1 / (1 + np.exp(-margin.astype(np.float64)))
            return np.column_stack([1 - p, p])
        if objective.startswith("multi:"):
            e = np.exp(margin - margin.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return booster.predict(xgboost.DMatrix(X))

    return booster.num_features(), predict


def _write(root: Path, name: str, n: int) -> None:
    text = (PUBLIC / name).read_text() if _family(name) == "lightgbm" else ""
    names = re.search(r"^feature_names=(.*)$", text, re.M)
    order = names.group(1).split() if names else [f"x{j:03d}" for j in range(n)]
    testing.write_model(
        root,
        _target(name),
        _family(name),
        "model.txt" if text else "model.json",
        lambda p: shutil.copy(PUBLIC / name, p),
        order,
        0,
    )


@pytest.fixture(scope="session")
def public_run(tmp_path_factory):
    """One run holding every servable public file (one target each), compiled once."""
    root = tmp_path_factory.mktemp("public") / "run" / "20260101T000000"
    natives = {}
    for name in SERVED:
        natives[name] = _native(name)
        _write(root, name, natives[name][0])
    lock = compile_run(root)
    settings = load_config(None)
    settings = dataclasses.replace(settings, predictor=dataclasses.replace(settings.predictor, nan_policy="pass"))
    return ModelLoader(root, settings=settings), {e.target: e for e in lock.entries}, natives


def test_every_public_file_is_listed():
    """Each file in the folder has an expectation here and a row in README.md (source, commit, licence)."""
    readme = (PUBLIC.parent / "README.md").read_text()
    files = sorted(p.name for p in PUBLIC.iterdir())
    assert sorted([*SERVED, PRE_V2, "lightgbm_windows_path_parameters.txt"]) == files
    assert [f for f in files if f"| public/{f} |" not in readme] == []


@pytest.mark.parametrize("name", list(SERVED))
def test_public_file_is_served_as_its_library_predicts(name, public_run):
    """compile_run converts it (or records why not), the loader serves it, and the served prediction is
    the library's own on rows with NaN and category codes the model has and has not seen."""
    loader, entries, natives = public_run
    backend, reason = SERVED[name]
    entry = entries[_target(name)]
    assert entry.status == backend, entry.reason
    assert reason in (entry.reason or "")
    served = loader.load(_target(name), _family(name))
    assert served.backend.value == backend
    n, native = natives[name]
    X = _rows(name, n)
    got, want = served.predict(X), np.asarray(native(X), dtype=np.float64)
    assert got.shape == want.shape and np.isfinite(got).all()
    scale = np.maximum(np.abs(want).max(axis=0), 1e-12)
    assert (np.abs(got - want).max(axis=0) / scale <= TOLERANCE).all()
    # classifiers: one probability column per class; regressions and rankers one prediction
    assert served.columns == (tuple(f"p_{k}" for k in range(want.shape[1])) if want.ndim == 2 else ("prediction",))


def test_pre_v2_lightgbm_file_is_refused_naming_it(tmp_path):
    """A 2016 model.txt (first line ``gbdt``, no ``feature_names``): LightGBM 4 cannot read it either, so
    the loader's refusal, a ModelLoadError naming the file, is the right answer."""
    import lightgbm

    hostile("public model file", PRE_V2)
    with pytest.raises(lightgbm.basic.LightGBMError, match="feature_names"):
        lightgbm.Booster(model_str=(PUBLIC / PRE_V2).read_text())
    root = tmp_path / "run" / "20260101T000000"
    _write(root, PRE_V2, 28)
    with pytest.raises(ModelLoadError, match="malformed LightGBM model") as info:
        ModelLoader(root).load(_target(PRE_V2), "lightgbm")
    assert info.value.path.endswith("model.txt")
    lock = compile_run(root)  # the run still compiles: the model is recorded as failed with the reason
    assert [e.status for e in lock.entries] == ["failed"] and "malformed LightGBM" in lock.entries[0].reason


CHILD = """
import json, sys
from pathlib import Path
import numpy as np
from fastinfer.loader import ModelLoader
root, target, rows = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
served = ModelLoader(root, allow_unsigned=True).load(target, "lightgbm")
print(json.dumps(served.predict(np.load(rows)).tolist()))
"""


def test_file_that_crashes_lightgbm_is_served_in_a_child_process_without_crashing(tmp_path):
    """lleaves cut this model to fewer trees and kept the header: its ``tree_sizes`` line lists 1000 trees.
    LightGBM opening the file as it is dies or fails (it jumps to those offsets); fastinfer drops the
    stale line and serves the trees, unverified (no checksum: the structure check and crash probe) too."""
    hostile("public model file", STALE_TREE_SIZES)
    text = (PUBLIC / STALE_TREE_SIZES).read_text()
    assert len(re.search(r"^tree_sizes=(.*)$", text, re.M).group(1).split()) == 1000 and text.count("\nTree=") == 40
    raw = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, lightgbm; lightgbm.Booster(model_str=open(sys.argv[1]).read())",
            str(PUBLIC / STALE_TREE_SIZES),
        ],
        capture_output=True,
        timeout=120,
    )
    assert raw.returncode != 0  # a signal (negative) or LightGBM's error: either way it cannot be opened as is
    n, native = _native(STALE_TREE_SIZES)
    X = _rows(STALE_TREE_SIZES, n, seed=1)
    X = X[~np.isnan(X).any(axis=1)]  # the loader's default nan_policy rejects NaN rows
    np.save(tmp_path / "rows.npy", X)
    root = tmp_path / "run" / "20260101T000000"
    _write(root, STALE_TREE_SIZES, n)
    meta = next(root.rglob("model_meta.json"))
    unverified = {k: v for k, v in json.loads(meta.read_text()).items() if k != "model_checksum"}
    meta.write_text(json.dumps(unverified))
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), _target(STALE_TREE_SIZES), str(tmp_path / "rows.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    # Served natively (no lock): LightGBM on the repaired text, the very same trees as the reference.
    np.testing.assert_allclose(json.loads(child.stdout), native(X), rtol=1e-12, atol=0)


WINDOWS = "lightgbm_windows_path_parameters.txt"


def test_model_trained_on_windows_with_a_path_in_its_parameters_is_served(tmp_path):
    """LightGBM's CLI on Windows writes ``[data: ..\\tests\\data\\train.csv]`` into the parameters block;
    LightGBM's Python package cannot read such a file back (lightgbm-org/LightGBM#6349). The trees are
    fine: the file converts and serves. Its one tree is a single leaf, so every row is sigmoid(leaf)."""
    text = (PUBLIC / WINDOWS).read_text()
    leaf = float(next(line for line in text.splitlines() if line.startswith("leaf_value=")).split("=")[1])
    root = tmp_path / "run" / "20260101T000000"
    _write(root, WINDOWS, 4)
    entry = compile_run(root).entries[0]
    assert entry.status == "onnx", entry.reason
    served = ModelLoader(root).load(_target(WINDOWS), "lightgbm")
    p = 1 / (1 + math.exp(-leaf))
    # float32 graph against the float64 formula: 1e-6 relative
    np.testing.assert_allclose(served.predict(np.zeros((3, 4))), [[1 - p, p]] * 3, rtol=1e-6)


def test_pre_v2_lightgbm_file_is_named_as_such(tmp_path):
    """The refusal says what the file is (LightGBM's format before v2), not 'no LightGBM header or no trees'."""
    root = tmp_path / "run" / "20260101T000000"
    _write(root, PRE_V2, 28)
    with pytest.raises(ModelLoadError, match="format before v2") as info:
        ModelLoader(root).load(_target(PRE_V2), "lightgbm")
    assert info.value.path.endswith("model.txt")


CUT = {
    "CRLF, cut inside a parameter line": lambda t: t[: t.index("parameters:\n") + 17].replace("\n", "\r\n"),
    "CRLF, cut inside 'end of parameters'": lambda t: t[: t.index("end of parameters") + 5].replace("\n", "\r\n"),
    "CR line ends, cut inside a parameter line": lambda t: t[: t.index("parameters:\n") + 17].replace("\n", "\r"),
    "'end of parameters' with a suffix": lambda t: t[: t.index("end of parameters")] + "end of parametersX\n",
}


@pytest.mark.parametrize("case", list(CUT))
def test_parameters_block_without_its_end_line_is_refused_in_process(case, tmp_path):
    """LightGBM reads past the text (SIGSEGV) when the parameters block has no line that is exactly
    'end of parameters', whatever the line ends: the check refuses every such file, and a verified one
    (opened in process) gives a ModelLoadError instead of killing the process (run in a child here)."""
    hostile("LightGBM model file", f"public file, {case}")
    text = (PUBLIC / "lightgbm_cpp_tests_if_else_regression.txt").read_text()
    data = CUT[case](text).encode()
    assert "without an 'end of parameters' line" in (TEXT.check(data) or "")
    path = tmp_path / "cut.txt"
    path.write_bytes(data)
    child = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from fastinfer import testing
        from fastinfer.errors import ModelLoadError
        from fastinfer.loader import ModelLoader
        root = Path(sys.argv[2]) / "run" / "20260101T000000"
        names = ["feature%d" % i for i in range(1, 11)]
        save = lambda p: p.write_bytes(Path(sys.argv[1]).read_bytes())
        testing.write_model(root, "fwd_ret_5m", "lightgbm", "model.txt", save, names, 0)
        try:
            ModelLoader(root).load("fwd_ret_5m", "lightgbm")
        except ModelLoadError as exc:
            print("refused:", exc.reason)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", child, str(path), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, (run.returncode, run.stderr[-1000:])
    assert "refused:" in run.stdout and "end of parameters" in run.stdout
