"""Converters: every family's (native, ONNX) pair under the contract and the parity gate.

Models are small, seeded and trained here (session-scoped); TensorFlow and tf2onnx are
imported once, by the ``keras_models`` fixture.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastinfer import families as fam
from fastinfer.adapters import SKLEARN, register, registered
from fastinfer.converters import ConvertedGraph, check_graph, convert
from fastinfer.converters.parity import ParityReport, check_parity, probe_rows, tree_thresholds
from fastinfer.errors import ConversionError

N_FEATURES = 6
SEQ_LEN = 8
SCALES = np.array([0.01, 1.0, 50.0, 1e3, 0.5, 5.0])  # returns, z-scores, RSI, volume, ...


def _make_xy(seed: int, n: int, nan_frac: float = 0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)) * SCALES
    y = 2 * X[:, 0] / SCALES[0] + np.sin(X[:, 1]) - 0.5 * (X[:, 2] / SCALES[2]) ** 2 + 0.1 * rng.normal(size=n)
    X = X.astype(np.float32)
    if nan_frac:
        X[rng.random(size=X.shape) < nan_frac] = np.nan
    return X, y


@pytest.fixture(scope="session")
def data():
    X, y = _make_xy(0, 400)
    Xn, yn = _make_xy(1, 400, nan_frac=0.05)
    fresh, _ = _make_xy(2, 300)
    return {"X": X, "y": y, "X_nan": Xn, "y_nan": yn, "fresh": fresh}


@pytest.fixture(scope="session")
def tabular_models(data):
    import lightgbm
    import pandas as pd
    import xgboost
    from catboost import CatBoostRegressor
    from ngboost import NGBRegressor
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor, StackingRegressor, VotingRegressor
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, Xn, yn = data["X"], data["y"], data["X_nan"], data["y_nan"]
    lgb = dict(n_estimators=40, num_leaves=15, min_child_samples=5, verbose=-1, random_state=0)
    lgbm = lightgbm.LGBMRegressor(**lgb).fit(Xn, yn)
    booster = lightgbm.Booster(model_str=lgbm.booster_.model_to_string())  # as loaded from model.txt
    names = [f"feat_{c}" for c in "abcdef"]
    xgb_named = xgboost.XGBRegressor(n_estimators=40, max_depth=4, random_state=0)
    xgb_named.fit(pd.DataFrame(Xn, columns=names), yn)
    xgb = xgboost.XGBRegressor()  # as the loader opens model.json
    xgb.load_model(bytearray(xgb_named.get_booster().save_raw("json")))
    assert xgb.get_booster().feature_names == names  # the NOTES.md pitfall is exercised
    models = {
        "lightgbm": booster,
        "lightgbm_sklearn": lgbm,
        "xgboost": xgb,
        "catboost": CatBoostRegressor(iterations=40, depth=4, verbose=0, random_seed=0, thread_count=1).fit(Xn, yn),
        "random_forest": RandomForestRegressor(20, max_depth=6, random_state=0, n_jobs=1).fit(X, y),
        "extra_trees": ExtraTreesRegressor(20, max_depth=6, random_state=0, n_jobs=1).fit(X, y),
        "ridge": Ridge(alpha=1.0).fit(X, y),
        "lasso": Lasso(alpha=0.01).fit(X, y),
        "elastic_net": ElasticNet(alpha=0.01, l1_ratio=0.5).fit(X, y),
        "linear_regression": LinearRegression().fit(X, y),
        "ridge_pipeline": make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(X, y),
        "ngboost": NGBRegressor(n_estimators=40, col_sample=0.7, minibatch_frac=0.8, verbose=False, random_state=0).fit(
            X, y
        ),
        "quantile_lightgbm": {
            "quantiles": [0.1, 0.5, 0.9],
            "models": [
                lightgbm.LGBMRegressor(objective="quantile", alpha=q, **{**lgb, "n_estimators": 25}).fit(Xn, yn)
                for q in (0.1, 0.5, 0.9)
            ],
        },
        "ensemble": VotingRegressor(
            [
                ("lgb", lightgbm.LGBMRegressor(**{**lgb, "n_estimators": 20})),
                ("xgb", xgboost.XGBRegressor(n_estimators=20, max_depth=3, random_state=0)),
                ("ridge", Ridge()),
                ("rf", RandomForestRegressor(10, max_depth=5, random_state=0, n_jobs=1)),
            ],
            weights=[0.4, 0.3, 0.2, 0.1],
        ).fit(X, y),
        "meta_learning": StackingRegressor(
            [
                ("lgb", lightgbm.LGBMRegressor(**{**lgb, "n_estimators": 20})),
                ("ridge", Ridge()),
                ("et", ExtraTreesRegressor(10, max_depth=5, random_state=0, n_jobs=1)),
            ],
            final_estimator=Ridge(alpha=0.5),
            cv=3,
        ).fit(X, y),
        "meta_learning_passthrough": StackingRegressor(
            [("xgb", xgboost.XGBRegressor(n_estimators=15, max_depth=3, random_state=0)), ("lasso", Lasso(alpha=0.01))],
            final_estimator=LinearRegression(),
            passthrough=True,
            cv=3,
        ).fit(X, y),
    }
    return models


@pytest.fixture(scope="session")
def keras_models(data):
    import keras

    keras.utils.set_random_seed(0)
    X, y = data["X"] / SCALES.astype(np.float32), data["y"]
    rng = np.random.default_rng(3)
    Xs = rng.normal(size=(256, SEQ_LEN, N_FEATURES)).astype(np.float32)
    ys = Xs[:, -1, 0] + 0.5 * Xs[:, :, 1].mean(axis=1)

    def seq_input():
        return keras.Input((SEQ_LEN, N_FEATURES))

    inp = keras.Input((N_FEATURES,))
    h = keras.layers.Dense(16, activation="gelu")(inp)  # exact GELU: tf2onnx emits Erfc
    mlp = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Dense(8, activation="relu")(h)))

    inp = seq_input()
    h = keras.layers.Conv1D(8, 3, padding="causal", activation="relu")(inp)
    cnn = keras.Model(inp, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h)))

    inp = seq_input()
    lstm = keras.Model(inp, keras.layers.Dense(1)(keras.layers.LSTM(8)(inp)))

    inp = seq_input()
    h = keras.layers.Dense(8)(inp)
    a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(h, h)
    h = keras.layers.LayerNormalization()(h + a)
    h = keras.layers.LayerNormalization()(h + keras.layers.Dense(8, activation="relu")(h))
    transformer = keras.Model(inp, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h)))

    out = {}
    for name, model, (xs, ys_) in [
        ("mlp", mlp, (X, y)),
        ("cnn1d", cnn, (Xs, ys)),
        ("lstm", lstm, (Xs, ys)),
        ("transformer", transformer, (Xs, ys)),
    ]:
        model.compile(optimizer="adam", loss="mse")
        model.fit(xs, ys_, epochs=1, batch_size=64, verbose=0)
        out[name] = model
    return out


# case id -> (family name, fixture group)
TABULAR = [
    "lightgbm",
    "lightgbm_sklearn",
    "xgboost",
    "catboost",
    "random_forest",
    "extra_trees",
    "ridge",
    "lasso",
    "elastic_net",
    "linear_regression",
    "ridge_pipeline",
    "ngboost",
    "quantile_lightgbm",
    "ensemble",
    "meta_learning",
    "meta_learning_passthrough",
]
KERAS = ["mlp", "cnn1d", "lstm", "transformer"]
FAMILY_OF = {"lightgbm_sklearn": "lightgbm", "ridge_pipeline": "ridge", "meta_learning_passthrough": "meta_learning"}
K_OF = {"ngboost": 2, "quantile_lightgbm": 3}


@pytest.fixture(scope="session")
def converted(tabular_models, request):
    cache: dict[str, tuple[object, ConvertedGraph]] = {}

    def get(case: str):
        if case not in cache:
            group = tabular_models if case in tabular_models else request.getfixturevalue("keras_models")
            native = group[case]
            family = fam.resolve(FAMILY_OF.get(case, case))
            cache[case] = (native, convert(native, family, N_FEATURES, SEQ_LEN if family.sequential else None))
        return cache[case]

    return get


def _family(case: str) -> fam.Family:
    return fam.resolve(FAMILY_OF.get(case, case))


def _dims(vi):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize("case", TABULAR + KERAS)
def test_contract(case, converted):
    _native, graph = converted(case)
    family = _family(case)
    g = graph.model.graph
    assert [i.name for i in g.input] == ["features"] and [o.name for o in g.output] == ["prediction"]
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert g.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    expected_in = ["N", N_FEATURES] if family.input_rank == 2 else ["N", SEQ_LEN, N_FEATURES]
    assert _dims(g.input[0]) == expected_in
    k = K_OF.get(case, 1)
    assert _dims(g.output[0]) == ["N", k] and len(graph.columns) == k
    assert graph.converter == family.adapter.converter
    assert graph.opsets[""] == 17 and graph.versions["onnx"] == onnx.__version__
    check_graph(graph.model)


@pytest.mark.parametrize("case", TABULAR + KERAS)
def test_parity_on_probes_and_fresh_rows(case, converted, data):
    native, graph = converted(case)
    family = _family(case)
    thresholds = tree_thresholds(graph)
    if family.category in (fam.Category.TREE, fam.Category.PROBABILISTIC, fam.Category.META):
        assert thresholds, "tree families must give threshold probes"
    seq = SEQ_LEN if family.sequential else None
    scale = 1.0 if family.category in (fam.Category.KERAS, fam.Category.SEQUENTIAL) else SCALES
    probes = probe_rows(family, N_FEATURES, rng_seed=0, seq_len=seq, thresholds=thresholds, feature_scale=scale)
    assert probes.dtype == np.float32 and np.isnan(probes).any() == family.handles_nan
    on_probes = check_parity(native, graph, probes, family)
    assert on_probes.passed, on_probes.reason
    fresh = data["fresh"]
    if family.sequential:
        fresh = np.random.default_rng(9).normal(size=(64, SEQ_LEN, N_FEATURES)).astype(np.float32)
    elif family.category is fam.Category.KERAS:
        fresh = fresh / SCALES.astype(np.float32)
    report = check_parity(native, graph, fresh, family)
    assert report.passed, report.reason
    print(
        f"\nPARITY {case}: tol={report.tolerance:g} probes(n={on_probes.n_rows}) max_abs={on_probes.max_abs:.3g} "
        f"max_rel={on_probes.max_rel:.3g}; fresh(n={report.n_rows}) max_abs={report.max_abs:.3g} "
        f"max_rel={report.max_rel:.3g}"
    )


def test_probes_are_deterministic_and_hit_thresholds(converted):
    _, graph = converted("lightgbm")
    thresholds = tree_thresholds(graph)
    a = probe_rows("lightgbm", N_FEATURES, rng_seed=0, thresholds=thresholds, feature_scale=SCALES)
    b = probe_rows("lightgbm", N_FEATURES, rng_seed=0, thresholds=thresholds, feature_scale=SCALES)
    np.testing.assert_array_equal(a, b)
    f, values = next(iter(thresholds.items()))
    assert np.isin(values, a[:, f]).any()
    assert not np.isnan(probe_rows("ridge", N_FEATURES)).any()
    assert probe_rows("lstm", N_FEATURES, seq_len=SEQ_LEN).shape[1:] == (SEQ_LEN, N_FEATURES)


def test_ngboost_loc_and_scale(converted, data):
    import onnxruntime as ort

    native, graph = converted("ngboost")
    assert graph.columns == ("loc", "scale")
    X = data["fresh"]
    out = ort.InferenceSession(graph.model.SerializeToString()).run(["prediction"], {"features": X})[0]
    params = native.pred_dist(X.astype(np.float64)).params
    np.testing.assert_allclose(out[:, 0], params["loc"], rtol=1e-4, atol=1e-4 * np.abs(params["loc"]).max())
    np.testing.assert_allclose(out[:, 1], params["scale"], rtol=1e-4)
    assert (out[:, 1] > 0).all()


def test_quantile_columns_follow_artifact_order(converted, data):
    native, graph = converted("quantile_lightgbm")
    assert graph.columns == ("q0.1", "q0.5", "q0.9")
    import onnxruntime as ort

    out = ort.InferenceSession(graph.model.SerializeToString()).run(["prediction"], {"features": data["fresh"]})[0]
    for k, model in enumerate(native["models"]):
        np.testing.assert_allclose(out[:, k], model.predict(data["fresh"]), atol=1e-4 * np.abs(out[:, k]).max())


def test_custom_estimator_is_refused_with_the_supported_list():
    from sklearn.base import BaseEstimator, RegressorMixin

    class Custom(RegressorMixin, BaseEstimator):
        def predict(self, X):
            return np.zeros(len(X))

    with pytest.raises(ConversionError) as err:
        convert(Custom(), "ridge", N_FEATURES)
    text = str(err.value)
    assert "'ridge'" in text and "sklearn.Ridge" in text and "lightgbm.Booster" in text and "Custom" in text


def test_unconvertible_member_and_tree_pipeline_are_refused(data):
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.ensemble import RandomForestRegressor, VotingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    class Mean(RegressorMixin, BaseEstimator):
        def fit(self, X, y):
            self.mean_ = float(np.mean(y))
            return self

        def predict(self, X):
            return np.full(len(X), self.mean_)

    X, y = data["X"][:100], data["y"][:100]
    vote = VotingRegressor([("ridge", Ridge()), ("mean", Mean())]).fit(X, y)
    with pytest.raises(ConversionError, match="family 'ensemble'.*member 1 .*Mean has no converter"):
        convert(vote, "ensemble", N_FEATURES)
    scaled_trees = make_pipeline(StandardScaler(), RandomForestRegressor(3, random_state=0)).fit(X, y)
    with pytest.raises(ConversionError, match="in front of trees"):
        convert(scaled_trees, "random_forest", N_FEATURES)
    with pytest.raises(ConversionError, match="n_features must be a positive int"):
        convert(Ridge().fit(X, y), "ridge", 0)


def test_registering_an_adapter_name_twice_is_refused():
    from fastinfer.adapters.sklearn import SklearnAdapter

    assert "sklearn" in registered()
    register(SKLEARN)  # the same adapter again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register(SklearnAdapter())


def _tiny_graph(**node_kwargs) -> onnx.ModelProto:
    node = helper.make_node("Identity", ["features"], ["prediction"], **node_kwargs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_check_graph_refuses_external_data_and_custom_domains():
    check_graph(_tiny_graph())
    model = _tiny_graph()
    weight = numpy_helper.from_array(np.ones(1, dtype=np.float32), "w")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="weights.bin")
    model.graph.initializer.append(weight)
    with pytest.raises(ConversionError, match="externally"):
        check_graph(model)
    custom = _tiny_graph(domain="com.example")
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ConversionError, match="non-standard operator domain 'com.example'"):
        check_graph(custom)
    microsoft = _tiny_graph(domain="com.microsoft")
    with pytest.raises(ConversionError, match="com.microsoft"):
        check_graph(microsoft)


def test_failed_gate_is_a_report_not_an_exception(converted, tabular_models, data):
    _, ridge_graph = converted("ridge")
    report = check_parity(tabular_models["lasso"], ridge_graph, data["fresh"], fam.resolve("lasso"))
    assert isinstance(report, ParityReport) and not report.passed and "probe row" in report.reason
    broken = _tiny_graph()
    broken.graph.node[0].op_type = "Erfc"
    report = check_parity(tabular_models["ridge"], broken, data["fresh"][:, :1], fam.resolve("ridge"))
    assert not report.passed and "ONNX Runtime" in report.reason


def test_importing_converters_stays_lean():
    code = (
        "import sys, fastinfer.converters as c, fastinfer.converters.parity; "
        "heavy = [m for m in ('tensorflow', 'tf2onnx', 'skl2onnx', 'onnxmltools', 'lightgbm', 'sklearn') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_lightgbm_thresholds_are_made_exact(tabular_models):
    """onnxmltools rounds LightGBM's double thresholds to the nearest float32; rows sitting on
    a threshold that was rounded up then take the other branch. fastinfer's converter builds the
    graph itself with each threshold the largest float32 not above LightGBM's double."""
    import warnings

    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    from fastinfer.adapters.lightgbm import lightgbm_graph
    from fastinfer.converters.graph import conform

    booster = tabular_models["lightgbm"]
    family = fam.resolve("lightgbm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = convert_lightgbm(
            booster, initial_types=[("features", FloatTensorType([None, N_FEATURES]))], target_opset=15, zipmap=False
        )
    unfixed = conform(raw, N_FEATURES, 1)
    probes = probe_rows(family, N_FEATURES, thresholds=tree_thresholds(unfixed), feature_scale=SCALES)
    finite = probes[np.isfinite(probes).all(axis=1)]
    assert not check_parity(booster, unfixed, finite, family).passed
    # the converter: fixed splits, plus LightGBM's reading of |x| <= 1e-35 as 0
    assert check_parity(booster, lightgbm_graph(booster, N_FEATURES), finite, family).passed


def test_lightgbm_zero_snap_is_folded_into_thresholds():
    """LightGBM reads |x| <= 1e-35 as 0. The converter folds that into the few thresholds it
    can change, so the graph stays a bare tree ensemble; values around ±1e-35 route as native."""
    import lightgbm as lgb

    from fastinfer.adapters.lightgbm import lightgbm_graph
    from fastinfer.kernels.forest import ForestKernel

    rng = np.random.default_rng(3)
    X = rng.choice([-1.0, 0.0, 1.0], size=(600, 3)) * rng.uniform(0.5, 2.0, size=(600, 3))
    y = (X[:, 0] > 0) * 1.0 - (X[:, 1] < 0) * 0.5 + 0.1 * rng.standard_normal(600)
    booster = lgb.train(
        {"objective": "regression", "num_leaves": 7, "verbose": -1, "min_data_in_leaf": 5},
        lgb.Dataset(X, y),
        num_boost_round=20,
    )
    raw_thresholds = [
        n["threshold"] for t in booster.dump_model()["tree_info"] for n in _split_nodes(t["tree_structure"])
    ]
    assert any(abs(t) <= 1e-34 for t in raw_thresholds)  # the case under test really occurs

    graph = lightgbm_graph(booster, 3)
    assert [n.op_type for n in graph.graph.node if n.op_type not in ("Identity", "Reshape")] == [
        "TreeEnsembleRegressor"
    ]
    tiny = np.float32(1e-35)
    edge = [
        0.0,
        -0.0,
        tiny,
        -tiny,
        np.nextafter(tiny, np.float32(1)),
        -np.nextafter(tiny, np.float32(1)),
        tiny / 10,
        -tiny / 10,
        1e-30,
        -1e-30,
        1.0,
        -1.0,
        np.nan,
    ]
    probes = np.ascontiguousarray(np.array(np.meshgrid(edge, edge, edge)).reshape(3, -1).T, dtype=np.float32)
    family = fam.resolve("lightgbm")
    report = check_parity(booster, graph, probes, family)
    assert report.passed, report
    import onnxruntime as ort

    kernel = ForestKernel.from_onnx(graph)  # eligible for the forest kernel now, and exact to ORT
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # ORT sums trees in another order on several threads
    session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(kernel.predict(probes), session.run(None, {"features": probes})[0])


def _split_nodes(node):
    if "split_index" in node:
        yield node
        yield from _split_nodes(node["left_child"])
        yield from _split_nodes(node["right_child"])


def test_lstm_graph_leaves_out_zero_initial_states(converted):
    """tf2onnx builds the LSTM's zero initial state from the batch size on every call; the
    converter leaves it out (zeros are ONNX's default) and prunes the nodes that built it."""
    _, graph = converted("lstm")
    nodes = graph.model.graph.node
    lstm = next(n for n in nodes if n.op_type == "LSTM")
    assert all(not name for name in list(lstm.input)[5:7])
    assert not {"Shape", "Expand", "ConstantOfShape"} & {n.op_type for n in nodes}
