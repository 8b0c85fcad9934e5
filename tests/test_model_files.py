"""Model files: LightGBM / XGBoost structure checks before a parser sees unverified bytes, the files
LightGBM reads safely accepted (and a stale ``tree_sizes`` repaired), legacy XGBoost binaries named,
and real model files other projects published (``tests/data/models``) converted with parity.

Every crafted file is refused in this process, before the native parser sees it, by the format's
``check`` and by its ``load`` (which reads the bytes through the same check); through the loader
(unverified, ``strict_checksums`` off) it is a ``ModelLoadError`` naming the tree and node, and no
throw-away interpreter is started for it.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from fastinfer import families as fam
from fastinfer import testing
from fastinfer.adapters import LIGHTGBM, XGBOOST
from fastinfer.adapters.lightgbm import TEXT
from fastinfer.adapters.lightgbm_file import read_model_text
from fastinfer.adapters.xgboost import JSON, UBJ
from fastinfer.adapters.xgboost_file import LEGACY_MESSAGE, model_format
from fastinfer.converters.parity import check_parity, probe_rows, tree_thresholds
from fastinfer.errors import ModelLoadError
from fastinfer.kernels.forest import ForestKernel
from fastinfer.loader import ModelLoader

from ._hardening import hostile

DATA = Path(__file__).parent / "data" / "models"
TARGET = "fwd_ret_5m"


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """LightGBM and XGBoost models with a categorical column, written as TRAINING writes them."""
    X, targets = testing.synthetic_features(n_rows=600, n_features=6, seed=3)
    X["feat_a"] = np.random.default_rng(4).integers(0, 7, len(X)).astype(float)
    y = targets[TARGET] + 2.0 * np.isin(X["feat_a"], [1, 4, 5])  # the codes matter
    out = tmp_path_factory.mktemp("files_run")
    size = testing.TrainSize(trees=8, depth=3, leaves=7)
    return testing.write_training_run(out, X, {TARGET: y}, ["lightgbm", "xgboost"], size=size, categorical=["feat_a"])


@pytest.fixture
def run(tmp_path, small_run):
    dest = tmp_path / "run" / small_run.name
    shutil.copytree(small_run, dest)
    return dest


def _path(root: Path, family: str, name: str) -> Path:
    return root / "targets" / TARGET / "models" / "view=CROSS_SECTIONAL" / f"family={family}" / name


# ---------------------------------------------------------------- LightGBM model.txt


def _lgb_text(root: Path) -> str:
    return _path(root, "lightgbm", "model.txt").read_text()


def _blocks(text: str) -> list[tuple[int, int]]:
    """(start, end) of every tree block's key lines."""
    return [(m.start(), m.end()) for m in re.finditer(r"Tree=\d+\n(?:[^\n]+\n)+", text)]


def _edit(text: str, key: str, change, tree: int | None = None) -> str:
    """``text`` with the ``key=...`` line of a tree (the first one having it) rewritten by ``change``."""
    for k, (start, end) in enumerate(_blocks(text)):
        block = text[start:end]
        m = re.search(rf"^{key}=(.*)$", block, re.M)
        if m and m.group(1).split() and (tree is None or tree == k):
            new = block[: m.start(1)] + change(m.group(1).split()) + block[m.end(1) :]
            return text[:start] + new + text[end:]
    raise AssertionError(f"no tree has {key}")


def _set_first_categorical_threshold(text: str, value: str) -> str:
    for start, end in _blocks(text):
        block = text[start:end]
        kinds = re.search(r"^decision_type=(.*)$", block, re.M).group(1).split()
        cat = [i for i, d in enumerate(kinds) if int(d) & 1]
        if cat:
            m = re.search(r"^threshold=(.*)$", block, re.M)
            values = m.group(1).split()
            values[cat[0]] = value
            return text[:start] + block[: m.start(1)] + " ".join(values) + block[m.end(1) :] + text[end:]
    raise AssertionError("no categorical split")


def _set(index: int, value: str):
    def change(values: list[str]) -> str:
        values[index] = value
        return " ".join(values)

    return change


LGB_CRAFTED = {
    "categorical split pointing at category set 10^9": (
        lambda t: _set_first_categorical_threshold(t, "1000000000"),
        "category set 1e\\+09",
    ),
    "split on feature 5*10^7": (lambda t: _edit(t, "split_feature", _set(0, "50000000")), "split_feature 50000000"),
    "left child out of range": (lambda t: _edit(t, "left_child", _set(0, "999")), "left_child 999 out of range"),
    "cycle back to the root": (lambda t: _edit(t, "right_child", _set(1, "0")), "reached twice"),
    "unknown decision_type": (lambda t: _edit(t, "decision_type", _set(0, "13")), "decision_type 13"),
    "cat_boundaries past cat_threshold": (
        lambda t: _edit(t, "cat_boundaries", lambda v: " ".join([*v[:-1], str(int(v[-1]) + 5)])),
        "cat_threshold has",
    ),
    "leaf_value shorter than num_leaves": (lambda t: _edit(t, "leaf_value", lambda v: " ".join(v[:-1])), "leaf_value"),
    "num_tree_per_iteration above num_class": (
        lambda t: t.replace("num_tree_per_iteration=1", "num_tree_per_iteration=3"),
        "num_tree_per_iteration=3",
    ),
    "last tree cut before its blank line": (
        lambda t: t[: t.index("\nend of trees")].rstrip("\n") + "\n",
        "not followed by a blank line",
    ),
    "tree line without '='": (lambda t: _edit(t, "shrinkage", lambda v: "1\ngarbage"), "not key=value"),
    "NUL byte": (lambda t: t.replace("shrinkage=", "shrinkage\x00=", 1), "NUL"),
    "feature_names shorter than max_feature_idx": (
        lambda t: re.sub(r"^feature_names=(\S+) ", "feature_names=", t, count=1, flags=re.M),
        "feature_names",
    ),
    "tree of more than 22 lines": (
        lambda t: _edit(t, "shrinkage", lambda v: "1\n" + "\n".join(f"pad{i}=0" for i in range(8))),
        "more than 22 lines",
    ),
}


@pytest.mark.parametrize("case", list(LGB_CRAFTED))
def test_crafted_lightgbm_file_is_refused_in_process(run, case, no_subprocess):
    hostile("LightGBM model file", case)
    path = _path(run, "lightgbm", "model.txt")
    good = path.read_bytes()
    assert TEXT.check(good) is None  # control
    craft, reason = LGB_CRAFTED[case]
    bad = craft(good.decode()).encode()
    problem = TEXT.check(bad)
    assert problem is not None and re.search(reason, problem), problem
    with pytest.raises(ValueError, match="malformed LightGBM"):
        TEXT.load(bad)  # even bytes that verified are read through the check
    path.write_bytes(bad)
    with pytest.raises(ModelLoadError, match="malformed LightGBM") as info:
        ModelLoader(run, strict_checksums=False).load(TARGET, "lightgbm")
    assert info.value.path == str(path) and re.search(reason, info.value.reason)


def test_linear_tree_leaf_features_out_of_range_are_refused():
    import lightgbm

    hostile("LightGBM model file", "linear tree reading feature 10^6")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    booster = lightgbm.train(
        {"objective": "regression", "linear_tree": True, "verbose": -1, "num_leaves": 4},
        lightgbm.Dataset(X, X[:, 0] * 2 + X[:, 1]),
        3,
    )
    text = booster.model_to_string()
    assert TEXT.check(text.encode()) is None  # control: a linear-tree model is read safely
    bad = _edit(text, "leaf_features", _set(0, "1000000"))
    assert "leaf_features out of range" in TEXT.check(bad.encode())


def test_file_without_end_of_trees_marker_is_read_as_lightgbm_reads_it(run):
    """LightGBM reads trees up to the first line that is not ``Tree=``: the marker is not needed."""
    import lightgbm

    text = _lgb_text(run)
    original = lightgbm.Booster(model_str=text)
    cut = text.replace("end of trees\n", "", 1)
    assert "end of trees" not in cut and TEXT.check(cut.encode()) is None
    X = np.random.default_rng(1).normal(size=(50, 6))
    np.testing.assert_array_equal(TEXT.load(cut.encode()).predict(X), original.predict(X))
    only_trees = text[: text.index("end of trees")]  # nothing after the trees at all
    assert TEXT.check(only_trees.encode()) is None
    np.testing.assert_array_equal(TEXT.load(only_trees.encode()).predict(X), original.predict(X))


def test_stale_tree_sizes_line_is_dropped_before_lightgbm_reads_the_text(run):
    """LightGBM 4.7 crashes on a ``tree_sizes`` line that disagrees with its trees (it jumps to
    those offsets): the line is dropped and the repaired text, read tree by tree, is what it gets."""
    import lightgbm

    hostile("LightGBM model file", "tree_sizes disagree with its trees")
    text = _lgb_text(run)
    sizes = re.search(r"^tree_sizes=(.*)$", text, re.M)
    stale = text[: sizes.start(1)] + " ".join(str(int(s) + 7) for s in sizes.group(1).split()) + text[sizes.end(1) :]
    read = read_model_text(stale)
    assert "tree_sizes=" not in read.text and "stale tree_sizes" in read.repaired
    assert read.text == text.replace(sizes.group(0) + "\n", "", 1)
    assert TEXT.check(stale.encode()) is None
    X = np.random.default_rng(2).normal(size=(50, 6))
    np.testing.assert_array_equal(TEXT.load(stale.encode()).predict(X), lightgbm.Booster(model_str=text).predict(X))
    fewer = text[: sizes.start(1)] + " ".join(sizes.group(1).split()[:-1]) + text[sizes.end(1) :]
    assert "tree_sizes=" not in read_model_text(fewer).text  # one size missing: stale too
    assert read_model_text(text).text == text and not read_model_text(text).repaired  # a right one is kept


# ---------------------------------------------------------------- XGBoost model.json / model.ubj


def ubj(value) -> bytes:
    """A UBJSON encoding as XGBoost writes it (big-endian; ``L`` lengths), for crafted UBJ files."""
    if isinstance(value, dict):
        return b"{" + b"".join(_ubj_str(k) + ubj(v) for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[#L" + struct.pack(">q", len(value)) + b"".join(ubj(v) for v in value)
    if isinstance(value, bool):
        return b"T" if value else b"F"
    if isinstance(value, int):
        return b"L" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"d" + struct.pack(">f", value)
    if isinstance(value, str):
        return b"S" + _ubj_str(value)
    if value is None:
        return b"Z"
    raise TypeError(type(value))


def _ubj_str(text: str) -> bytes:
    raw = text.encode()
    return b"L" + struct.pack(">q", len(raw)) + raw


def _tree0(doc: dict) -> dict:
    return doc["learner"]["gradient_booster"]["model"]["trees"][0]


def _first_split(tree: dict) -> int:
    return next(i for i, c in enumerate(tree["left_children"]) if c != -1 and i > 0)


def _categorical_tree(doc: dict) -> dict:
    trees = doc["learner"]["gradient_booster"]["model"]["trees"]
    return next(t for t in trees if t["categories_nodes"])  # the fixture's trees split on feat_a


def _mutate(key: str):
    def edit(doc: dict) -> None:
        tree = _tree0(doc)
        node = _first_split(tree)
        _categorical_node = lambda _: _categorical_tree(doc)  # noqa: E731
        {
            "feature": lambda: tree["split_indices"].__setitem__(node, 50_000_000),
            "negative child": lambda: tree["left_children"].__setitem__(node, -5),
            "child out of range": lambda: tree["right_children"].__setitem__(node, len(tree["left_children"]) + 3),
            "cycle": lambda: tree["left_children"].__setitem__(node, 0),
            "shared node": lambda: tree["right_children"].__setitem__(node, tree["left_children"][node]),
            "parent": lambda: tree["parents"].__setitem__(tree["left_children"][node], -1),
            "short array": lambda: tree["split_conditions"].pop(),
            "segment": lambda: _categorical_node(tree)["categories_sizes"].__setitem__(0, 10**6),
            "code": lambda: _categorical_node(tree)["categories"].__setitem__(0, 1 << 30),
            "tree_info": lambda: doc["learner"]["gradient_booster"]["model"]["tree_info"].__setitem__(0, 7),
            "num_trees": lambda: doc["learner"]["gradient_booster"]["model"]["gbtree_model_param"].__setitem__(
                "num_trees", "99"
            ),
            "num_feature": lambda: doc["learner"]["learner_model_param"].__setitem__("num_feature", "1000000000"),
        }[key]()

    return edit


XGB_CRAFTED = {
    "split on feature 5*10^7": ("feature", "split feature 50000000 >= num_feature 6"),
    "negative child index": ("negative child", "child -5 out of range"),
    "child index past the nodes": ("child out of range", "out of range"),
    "cycle back to the root": ("cycle", "out of range|reached twice"),
    "two parents share a node": ("shared node", "reached twice"),
    "negative parent index": ("parent", "parent -1"),
    "split_conditions shorter than num_nodes": ("short array", "split_conditions has"),
    "categorical segment past the categories": ("segment", "segment lies outside"),
    "category code 2^30": ("code", "category code outside"),
    "tree_info names class 7 of 1": ("tree_info", "tree_info names an output"),
    "num_trees disagrees with the trees": ("num_trees", "num_trees = 99"),
    "num_feature 10^9": ("num_feature", "num_feature"),
}


@pytest.mark.parametrize("fmt", ["model.json", "model.ubj"])
@pytest.mark.parametrize("case", list(XGB_CRAFTED))
def test_crafted_xgboost_file_is_refused_in_process(run, case, fmt, no_subprocess):
    hostile("XGBoost model file", f"{fmt}: {case}")
    path = _path(run, "xgboost", "model.json")
    doc = json.loads(path.read_text())
    encode = (lambda d: json.dumps(d).encode()) if fmt == "model.json" else ubj
    check = (JSON if fmt == "model.json" else UBJ).check
    assert check(encode(doc)) is None  # control: the same encoding of the good model passes
    key, reason = XGB_CRAFTED[case]
    _mutate(key)(doc)
    problem = check(encode(doc))
    assert problem is not None and problem.startswith("malformed XGBoost model") and re.search(reason, problem), problem
    path.unlink()
    target = path.with_name(fmt)
    target.write_bytes(encode(doc))
    meta = json.loads(path.with_name("model_meta.json").read_text())
    with pytest.raises(ModelLoadError, match="malformed XGBoost model") as info:
        ModelLoader(run, strict_checksums=False).load(TARGET, "xgboost")
    assert info.value.path == str(target) and meta["model_checksum"]


def test_ubj_encoding_used_for_crafted_files_is_what_xgboost_reads(run):
    """The test's UBJ encoder is XGBoost's layout: XGBoost loads its output and predicts the same."""
    import xgboost

    doc = json.loads(_path(run, "xgboost", "model.json").read_text())
    a, b = xgboost.Booster(), xgboost.Booster()
    a.load_model(bytearray(json.dumps(doc).encode()))
    b.load_model(bytearray(ubj(doc)))
    X = xgboost.DMatrix(np.random.default_rng(5).normal(size=(20, 6)), feature_names=a.feature_names)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert model_format(ubj(doc)) == "ubj" and model_format(json.dumps(doc).encode()) == "json"


UBJ_BROKEN = {
    "string length 2^40": b"{L" + struct.pack(">q", 1 << 40) + b"x}",
    "typed array of 2^40 floats": b"{L" + struct.pack(">q", 1) + b"a[$d#L" + struct.pack(">q", 1 << 40) + b"}",
    "nested 10^5 deep": b"{L" + struct.pack(">q", 1) + b"a" + b"[" * 100_000,
    "unknown marker": b"{L" + struct.pack(">q", 1) + b"aQ}",
    "cut inside a key": b"{L" + struct.pack(">q", 9) + b"lear",
}


@pytest.mark.parametrize("case", list(UBJ_BROKEN))
def test_broken_ubj_is_refused_by_the_bounded_reader(case):
    hostile("XGBoost model file", f"UBJ {case}")
    problem = UBJ.check(UBJ_BROKEN[case])
    assert problem is not None and "malformed XGBoost model" in problem


@pytest.mark.parametrize(
    "case, data",
    [
        ("JSON nested 10^5 deep", b'{"learner": ' + b"[" * 100_000),
        ("not JSON, UBJ nor legacy", b"\x13\x37" * 100),
        ("empty", b""),
        ("an empty object", b"{}"),
    ],
)
def test_other_bytes_are_refused_as_not_an_xgboost_model(case, data):
    hostile("XGBoost model file", case)
    problem = JSON.check(data)
    assert problem is not None and "malformed XGBoost model" in problem
    with pytest.raises(ValueError):
        JSON.load(data)


# ---------------------------------------------------------------- legacy XGBoost binary

LEGACY = sorted(p.name for p in DATA.glob("*.model"))


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_xgboost_binary_is_named_with_how_to_resave_it(name):
    """Real XGBoost <= 1.x binary models (public test suites): detected by their header, refused with
    the re-save recipe by the check and by ``load`` (XGBoost 3 would say ``str[0] == '{'``)."""
    hostile("legacy model file", name)
    data = (DATA / name).read_bytes()
    assert model_format(data) == "legacy"
    assert JSON.check(data) == LEGACY_MESSAGE and UBJ.check(data) == LEGACY_MESSAGE
    with pytest.raises(ValueError, match=re.escape(LEGACY_MESSAGE)):
        JSON.load(data)


@pytest.mark.parametrize("verified", [True, False])
def test_legacy_file_saved_as_model_json_fails_that_model_only(run, verified):
    """A legacy binary misnamed ``model.json``: that model fails with the message, verified or not
    (never a crash); the run's other models load."""
    hostile("legacy model file", f"legacy binary as model.json, {'verified' if verified else 'unverified'}")
    path = _path(run, "xgboost", "model.json")
    path.write_bytes((DATA / "leaves_xgagaricus.model").read_bytes())
    if verified:
        meta_path = path.with_name("model_meta.json")
        meta = json.loads(meta_path.read_text())
        meta["model_checksum"] = __import__("hashlib").sha256(path.read_bytes()).hexdigest()
        meta_path.write_text(json.dumps(meta))
    loader = ModelLoader(run, strict_checksums=False)
    with pytest.raises(ModelLoadError) as info:
        loader.load(TARGET, "xgboost")
    assert LEGACY_MESSAGE in info.value.reason and info.value.path == str(path)
    assert loader.load(TARGET, "lightgbm").predict(np.zeros((1, 6))).shape == (1,)


# ---------------------------------------------------------------- real files other projects published

REAL_LIGHTGBM = sorted(p.name for p in DATA.glob("*.txt"))


@pytest.fixture(scope="session")
def real_models():
    cache = {}

    def get(name: str):
        if name not in cache:
            data = (DATA / name).read_bytes()
            assert TEXT.check(data) is None, TEXT.check(data)
            model = TEXT.load(data)
            graph = LIGHTGBM.convert(model, fam.resolve("lightgbm"), model.num_feature(), None)
            cache[name] = (model, graph)
        return cache[name]

    return get


@pytest.mark.parametrize("name", REAL_LIGHTGBM)
def test_real_lightgbm_file_converts_with_parity(name, real_models):
    """Categorical, multiclass, rf, DART and log-link LightGBM models trained by other projects:
    native == ONNX (tolerance 1e-4 of each column's scale, LightGBMAdapter.tolerance) on the gate's
    probes (every threshold and its float32 neighbours; categorical columns get seen, unseen and
    negative codes and NaN) and on fresh rows; ONNX == forest kernel bit for bit where it takes the graph."""
    model, graph = real_models(name)
    n = model.num_feature()
    codes = LIGHTGBM.categorical_features(model)
    probes = probe_rows("lightgbm", n, thresholds=tree_thresholds(graph), categorical=codes)
    report = check_parity(model, graph, probes, "lightgbm")
    assert report.passed, report.reason
    rng = np.random.default_rng(6)
    fresh = rng.normal(size=(200, n)).astype(np.float32) * 3
    for c, seen in codes.items():
        fresh[:, c] = rng.choice([*seen, -1, max(seen, default=0) + 1], size=200)
    fresh_report = check_parity(model, graph, fresh, "lightgbm")
    assert fresh_report.passed, fresh_report.reason
    width = len(graph.columns)
    assert LIGHTGBM.predict(model, fresh.astype(np.float64)).reshape(200, -1).shape == (200, width)
    print(f"\nREAL {name}: columns {graph.columns[:3]}... probes {report.n_rows} max_rel {report.max_rel:.2g}")
    _kernel_matches_ort(graph.model, probes)


def _kernel_matches_ort(model, rows: np.ndarray) -> None:
    """ONNX Runtime (one thread: it sums trees in another order on several) == the forest kernel,
    bit for bit, where the kernel takes the graph; its refusal is printed (the report lists them)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    expected = ort.InferenceSession(model.SerializeToString(), options).run(None, {"features": rows})[0]
    try:
        kernel = ForestKernel.from_onnx(model)
    except ValueError as exc:
        print(f"KERNEL REFUSES: {exc}")
        return
    np.testing.assert_array_equal(kernel.predict(rows).reshape(expected.shape), expected)


def test_real_log_link_models_carry_categorical_columns(real_models):
    """The published claim models are what they say: log links over categorical features."""
    for objective in ("poisson", "gamma", "tweedie"):
        file = next(n for n in REAL_LIGHTGBM if objective in n)
        model, graph = real_models(file)
        assert model.dump_model()["objective"].startswith(objective)
        assert LIGHTGBM.categorical_features(model) and [n.op_type for n in graph.model.graph.node][-1] == "Exp"


def test_real_files_load_through_the_loader(tmp_path):
    """A published file dropped into a run as model.txt (checksum recorded) loads, converts, serves."""
    from fastinfer.compiler import compile_run

    name = "lleaves_mixed_categorical.txt"
    model = TEXT.load((DATA / name).read_bytes())
    names = model.feature_name()
    root = tmp_path / "run" / "20260101T000000"
    testing.write_model(root, TARGET, "lightgbm", "model.txt", lambda p: shutil.copy(DATA / name, p), names, 0)
    lock = compile_run(root)
    entry = lock.entries[0]
    assert entry.status == "onnx", entry.reason
    served = ModelLoader(root).load(TARGET, "lightgbm")
    X = pd.DataFrame(np.random.default_rng(8).integers(-1, 12, size=(30, len(names))).astype(float), columns=names)
    np.testing.assert_allclose(served.predict(X), model.predict(X[list(names)].to_numpy()), rtol=1e-5, atol=1e-6)


REAL_XGBOOST = sorted(p.name for p in DATA.glob("*.json"))


@pytest.mark.parametrize("name", REAL_XGBOOST)
def test_real_xgboost_json_file_converts_with_parity(name):
    """XGBoost 1.4 JSON models (gbtree and gblinear) pass the structure check, load in XGBoost 3,
    and convert: native == ONNX on the gate's probes and fresh 0/1 rows (agaricus is one-hot)."""
    data = (DATA / name).read_bytes()
    assert JSON.check(data) is None and UBJ.check(data) is None
    model = JSON.load(data)
    n = model.get_booster().num_features()
    graph = XGBOOST.convert(model, fam.resolve("xgboost"), n, None)
    assert graph.columns == ("p_0", "p_1")
    probes = probe_rows("xgboost", n, thresholds=tree_thresholds(graph))
    report = check_parity(model, graph, probes, "xgboost")
    assert report.passed, report.reason
    one_hot = (np.random.default_rng(9).random(size=(300, n)) < 0.1).astype(np.float32)
    assert check_parity(model, graph, one_hot, "xgboost").passed
    if "xgblin" not in name:
        _kernel_matches_ort(graph.model, probes)
