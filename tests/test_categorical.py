"""Categorical splits: LightGBM bitsets and XGBoost category lists as exact interval chains, CatBoost's
categorical features served natively.

Categorical columns carry integer codes (the codes the model was trained on). The graphs reproduce
each library's own rule for every float32 input, not only for codes: LightGBM (``tree.h``
``CategoricalDecision``) sends NaN and negative codes right, truncates a float to its code, and sends
codes outside the bitset right; XGBoost (``common/categorical.h`` ``Decision``) sends listed codes
right, negative and non-listed codes left, truncates, and NaN the default way. The gate's probes put
seen, unseen, negative codes and NaN in those columns; a sweep adds non-integers and huge values.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from fastinfer import families as fam
from fastinfer import native as native_probe
from fastinfer import testing
from fastinfer.adapters import CATBOOST, LIGHTGBM, XGBOOST
from fastinfer.adapters.trees import LEFT, LEQ, LIGHTGBM_ZERO, LT, RIGHT, lightgbm_numeric, membership
from fastinfer.converters import convert
from fastinfer.converters.parity import check_parity, probe_rows, tree_thresholds
from fastinfer.errors import ConversionError, InferenceError
from fastinfer.kernels.forest import ForestKernel
from fastinfer.loader import ModelLoader

from ._hardening import hostile

N = 800
N_CODES = 12


@pytest.fixture(scope="session")
def data():
    rng = np.random.default_rng(21)
    X = rng.normal(size=(N, 4))
    X[:, 2] = rng.integers(0, N_CODES, N)  # codes 0..11
    X[:, 3] = rng.integers(0, 40, N)  # many codes: several runs per split
    effect = np.isin(X[:, 2], [0, 3, 4, 5, 9]) * 1.5 - np.isin(X[:, 3] % 7, [1, 2]) * 1.0
    signal = X[:, 0] + effect
    X_nan = X.copy()
    X_nan[rng.random(X.shape) < 0.04] = np.nan  # NaN codes in training too
    return {"X": X_nan, "reg": signal + 0.1 * rng.normal(size=N), "binary": (signal > 0.5).astype(int)}


def sweep(n_features: int, columns: dict[int, int]) -> np.ndarray:
    """Rows putting each categorical column through codes, non-integers, negatives, huge values, NaN."""
    rng = np.random.default_rng(3)
    rows = []
    for c, top in columns.items():
        values = [
            *range(-3, top + 4),
            *(np.arange(-2, top + 2) + 0.5),
            -0.5,
            -0.0,
            1e-36,
            0.999999,
            2**24,
            2**31,
            -(2**31),
            1e9,
            -1e30,
            np.nan,
        ]
        block = rng.normal(size=(len(values), n_features))
        for other, top_other in columns.items():
            block[:, other] = rng.integers(0, top_other, len(values))
        block[:, c] = values
        rows.append(block)
    return np.vstack(rows).astype(np.float32)


def _lgb(params: dict, y: str, pandas: bool = False):
    def make(d):
        import lightgbm

        base = {"num_leaves": 12, "min_data_in_leaf": 5, "min_data_per_group": 5, "cat_smooth": 1, "verbose": -1}
        params_all = {**base, **params, "num_threads": 1, "seed": 0}
        if pandas:  # pandas categories whose codes are the values
            frame = pd.DataFrame(d["X"], columns=list("abcd"))
            for col, top in (("c", N_CODES), ("d", 40)):
                codes = frame[col].to_numpy()
                frame[col] = pd.Categorical(np.where(np.isnan(codes), -1, codes).astype(int), categories=range(top))
            model = lightgbm.LGBMClassifier(
                n_estimators=25, **{k: v for k, v in params_all.items() if k != "objective"}
            )
            return model.fit(frame, d[y])
        dataset = lightgbm.Dataset(d["X"], d[y], categorical_feature=[2, 3])
        trained = lightgbm.train(params_all, dataset, 25)
        return lightgbm.Booster(model_str=trained.model_to_string())  # as from model.txt

    return make


def _xgb(params: dict, y: str):
    def make(d):
        import xgboost

        from fastinfer.adapters.xgboost import JSON

        frame = pd.DataFrame(d["X"], columns=list("abcd"))
        for col, top in (("c", N_CODES), ("d", 40)):
            frame[col] = pd.Categorical(pd.array(frame[col]).astype("Int64"), categories=range(top))
        dm = xgboost.DMatrix(frame, d[y], enable_categorical=True)
        trained = xgboost.train({"max_depth": 4, "nthread": 1, "seed": 0, "tree_method": "hist", **params}, dm, 25)
        return JSON.load(bytes(trained.save_raw("json")))  # as from model.json

    return make


CASES = {
    "lgb_regression": ("lightgbm", _lgb({"objective": "regression"}, "reg")),
    "lgb_binary_pandas": ("lightgbm", _lgb({"objective": "binary"}, "binary", pandas=True)),
    "lgb_many_codes_small_groups": ("lightgbm", _lgb({"objective": "regression", "max_cat_to_onehot": 2}, "reg")),
    "lgb_one_hot": ("lightgbm", _lgb({"objective": "regression", "max_cat_to_onehot": 64}, "reg")),
    "lgb_zero_as_missing": ("lightgbm", _lgb({"objective": "regression", "zero_as_missing": True}, "reg")),
    "xgb_partition": ("xgboost", _xgb({"objective": "reg:squarederror", "max_cat_to_onehot": 1}, "reg")),
    "xgb_one_hot": ("xgboost", _xgb({"objective": "reg:squarederror", "max_cat_to_onehot": 64}, "reg")),
    "xgb_binary": ("xgboost", _xgb({"objective": "binary:logistic", "max_cat_to_onehot": 1}, "binary")),
}


@pytest.fixture(scope="session")
def converted(data):
    cache = {}

    def get(case):
        if case not in cache:
            family, make = CASES[case]
            native = make(data)
            cache[case] = (native, convert(native, family, 4))
        return cache[case]

    return get


def _has_categorical_splits(native, family: str) -> bool:
    if family == "lightgbm":
        booster = native if hasattr(native, "dump_model") else native.booster_
        return "decision_type=" in booster.model_to_string() and any(
            int(d) & 1
            for line in booster.model_to_string().splitlines()
            if line.startswith("decision_type=")
            for d in line.split("=")[1].split()
        )
    import json

    trees = json.loads(native.get_booster().save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    return any(t["categories_nodes"] for t in trees)


@pytest.mark.parametrize("case", list(CASES))
def test_categorical_graph_equals_native_on_codes_and_beyond(case, converted):
    native, graph = converted(case)
    family = CASES[case][0]
    adapter = LIGHTGBM if family == "lightgbm" else XGBOOST
    assert _has_categorical_splits(native, family), "the model must really split on categories"
    codes = adapter.categorical_features(native)
    assert set(codes) == {2, 3} and all(codes.values())
    probes = probe_rows(family, 4, thresholds=tree_thresholds(graph), categorical=codes)
    report = check_parity(native, graph, probes, family)
    assert report.passed, report.reason
    swept = sweep(4, {2: N_CODES, 3: 40})
    beyond = check_parity(native, graph, swept, family)  # non-integers, huge, -0.0: exact too
    assert beyond.passed, beyond.reason
    print(f"\nCATEGORICAL {case}: probes {report.n_rows} max_rel {report.max_rel:.2g}; sweep {beyond.max_rel:.2g}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    rows = np.vstack([probes, swept])
    expected = ort.InferenceSession(graph.model.SerializeToString(), options).run(None, {"features": rows})[0]
    try:
        kernel = ForestKernel.from_onnx(graph.model)
    except ValueError as exc:  # the report lists the kernel's refusals
        print(f"KERNEL REFUSES {case}: {exc}")
        return
    np.testing.assert_array_equal(kernel.predict(rows).reshape(expected.shape), expected)


def test_categorical_split_is_an_interval_chain(converted):
    """No BRANCH_EQ: two comparisons per run of codes (LEQ -1 / LT a, then LT b+1), one false path."""
    for case in ("lgb_regression", "xgb_partition"):
        _, graph = converted(case)
        tree = next(n for n in graph.model.graph.node if n.op_type == "TreeEnsembleRegressor")
        modes = {m.decode() for a in tree.attribute if a.name == "nodes_modes" for m in a.strings}
        assert modes <= {"BRANCH_LEQ", "BRANCH_LT", "LEAF"}, modes


# ---------------------------------------------------------------- the gadgets against the libraries' C++ rules


def _walk(tests, x: float) -> str:
    """Where a gadget sends float32 x (ONNX semantics: NaN compares false unless nan_true)."""
    i: int | str = 0
    while isinstance(i, int):
        t = tests[i]
        if np.isnan(x):
            hit = t.nan_true
        else:
            hit = x <= t.threshold if t.mode == LEQ else x < t.threshold
        i = t.true if hit else t.false
    return i


def _lightgbm_numerical(x: float, threshold: float, missing: str, default_left: bool) -> str:
    """LightGBM's NumericalDecision on a float32 input its row parser read (|x| <= 1e-35 -> 0)."""
    if not np.isnan(x) and abs(x) <= LIGHTGBM_ZERO:
        x = 0.0
    if np.isnan(x) and missing != "NaN":
        x = 0.0
    if (missing == "Zero" and -LIGHTGBM_ZERO <= x <= LIGHTGBM_ZERO) or (missing == "NaN" and np.isnan(x)):
        return LEFT if default_left else RIGHT
    return LEFT if x <= threshold else RIGHT


def _lightgbm_categorical(x: float, codes: set[int]) -> str:
    if np.isnan(x):
        return RIGHT
    code = int(x) if abs(x) < 2**31 else -(2**31)  # C++ truncation; out of range gives INT_MIN on x86
    return LEFT if code >= 0 and code in codes else RIGHT


def _xgboost_categorical(x: float, codes: set[int], default_left: bool) -> str:
    if np.isnan(x):
        return LEFT if default_left else RIGHT
    if x < 0 or x >= 2**24:
        return LEFT
    return RIGHT if int(x) in codes else LEFT


EDGES = np.array(
    [
        0.0,
        -0.0,
        1e-36,
        -1e-36,
        LIGHTGBM_ZERO,
        -LIGHTGBM_ZERO,
        1e-30,
        -1e-30,
        0.5,
        -0.5,
        1.0,
        -1.0,
        3.0,
        -7.0,
        1e30,
        -1e30,
        np.nan,
    ],
    dtype=np.float32,
)


@pytest.mark.parametrize("missing", ["None", "Zero", "NaN"])
@pytest.mark.parametrize("default_left", [True, False])
def test_lightgbm_numeric_gadget_is_lightgbms_rule(missing, default_left):
    e = LIGHTGBM_ZERO
    thresholds = [
        0.0,
        -0.0,
        1e-36,
        -1e-36,
        e,
        -e,
        2e-35,
        -2e-35,
        1e-30,
        -1e-30,
        0.25,
        -0.25,
        1e300,
        -1e300,
        1.0000000001,
    ]
    for t in thresholds:
        gadget = lightgbm_numeric(0, t, missing, default_left)
        xs = np.concatenate([EDGES, np.nextafter(np.float32(t), EDGES[:4]), [np.float32(t)]]).astype(np.float32)
        for x in xs:
            assert _walk(gadget, float(x)) == _lightgbm_numerical(float(x), t, missing, default_left), (t, x)


def test_membership_gadgets_are_the_libraries_rules():
    rng = np.random.default_rng(4)
    xs = np.concatenate(
        [np.arange(-3, 45, 0.25), [-0.0, 1e-36, 2**24, 2**24 + 2, 2**31, -(2**31), 1e30, -1e30, np.nan]]
    )
    for _ in range(200):
        codes = set(rng.choice(40, size=rng.integers(0, 12), replace=False).tolist())
        lgb = membership(0, sorted(codes), inside=LEFT, zero_floor=(LEQ, -1.0), nan_inside=False)
        for default_left in (True, False):
            xgb = membership(0, sorted(codes), inside=RIGHT, zero_floor=(LT, 0.0), nan_inside=not default_left)
            for x in xs.astype(np.float32):
                assert _walk(xgb, float(x)) == _xgboost_categorical(float(x), codes, default_left), (codes, x)
        for x in xs.astype(np.float32):
            assert _walk(lgb, float(x)) == _lightgbm_categorical(float(x), codes), (codes, x)


# ---------------------------------------------------------------- CatBoost: native, with integer codes


@pytest.fixture(scope="session")
def catboost_run(tmp_path_factory):
    X, targets = testing.synthetic_features(n_rows=300, n_features=5, seed=2)
    X["feat_x0"] = np.random.default_rng(3).integers(0, 5, len(X)).astype(float)
    y = targets["fwd_ret_5m"] + np.isin(X["feat_x0"], [1, 3])
    return testing.write_training_run(
        tmp_path_factory.mktemp("cb_cat"),
        X,
        {"ret": y, "dir": y},
        ["catboost"],
        task={"dir": "binary"},
        categorical=["feat_x0"],
        size=testing.TrainSize(trees=20, depth=3),
    ), X


def test_catboost_categorical_model_is_served_natively_with_integer_codes(catboost_run):
    """The issue's failure: the first predict raised an unwrapped CatBoostError (cat features given as
    floats). The adapter passes the float column of codes as ints, as CatBoost was trained."""
    import catboost

    root, X = catboost_run
    for target in ("ret", "dir"):
        model = ModelLoader(root).load(target, "catboost")
        assert model.backend == "native" and CATBOOST.categorical_features(model.native) == {5: ()}
        rows = X.iloc[:20].copy()
        rows.loc[rows.index[:4], "feat_x0"] = [7.0, -1.0, 0.0, 4.0]  # unseen, negative, seen
        got = model.predict(rows)
        frame = rows.copy()
        frame["feat_x0"] = frame["feat_x0"].astype(int)
        kind = "Probability" if target == "dir" else "RawFormulaVal"
        want = model.native.predict(catboost.Pool(frame, cat_features=[5]), prediction_type=kind)
        np.testing.assert_array_equal(got, want)
        assert model.columns == (("p_0", "p_1") if target == "dir" else ("prediction",))


def test_catboost_categorical_nan_is_an_unseen_category_and_fractions_are_refused(catboost_run):
    root, X = catboost_run
    model = ModelLoader(root).load("ret", "catboost")
    model.nan_policy = "pass"  # CatBoost routes NaN: the loader hands it over
    rows = X.iloc[:3].to_numpy().copy()
    rows[0, 5] = np.nan
    unseen = rows.copy()
    unseen[0, 5] = 99.0
    np.testing.assert_array_equal(model.predict(rows)[0], model.predict(unseen)[0])  # both unseen categories
    hostile("feature vector", "categorical column holding a fraction (CatBoost)")
    rows[1, 5] = 2.5
    with pytest.raises(InferenceError, match="categorical column 5 holds 2.5"):
        model.predict(rows)


def test_catboost_categorical_cannot_be_converted_and_says_why(catboost_run):
    root, _ = catboost_run
    model = ModelLoader(root).load("ret", "catboost")
    with pytest.raises(ConversionError, match="CatBoost cannot export models with categorical features"):
        convert(model.native, "catboost", 6)


def test_catboost_categorical_file_passes_the_crash_probe(catboost_run):
    """Unverified .cbm files are opened and predicted on in a throw-away interpreter: rows of 0, 1,
    ±1e30 and NaN in the categorical column must be served, not crash or raise."""
    root, _ = catboost_run
    path = root / "targets" / "ret" / "models" / "view=CROSS_SECTIONAL" / "family=catboost" / "model.cbm"
    assert native_probe.probe_in_subprocess(fam.resolve("catboost"), "model.cbm", path.read_bytes(), 6) is None
