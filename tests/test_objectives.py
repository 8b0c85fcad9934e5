"""Classifiers and every link / objective of the four tree libraries (and sklearn's classifiers):
the native model through its adapter vs its ONNX graph vs the forest kernel.

Each case trains a small real model once per session. For every case: the graph keeps the contract
and its columns are the adapter's (``p_<label>`` per class, else ``prediction``) and predict's width;
native == ONNX within the adapter's tolerance (1e-4 of each column's scale) on the gate's probes
(every split threshold and both float32 neighbours, NaN rows where the family routes NaN) and on
fresh rows; ONNX == forest kernel bit for bit where the kernel takes the graph (graphs outside the
tree contract, such as the one-column Sigmoid tail or linear graphs, may be refused: printed).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fastinfer import families as fam
from fastinfer import testing
from fastinfer.adapters import adapter_of
from fastinfer.converters import check_graph, convert
from fastinfer.converters.parity import check_parity, probe_rows, tree_thresholds
from fastinfer.errors import ConversionError
from fastinfer.kernels.forest import ForestKernel

F = 5
N = 600


@pytest.fixture(scope="session")
def data():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(N, F))
    signal = X[:, 0] + 0.5 * np.tanh(X[:, 1]) - 0.3 * X[:, 2] ** 2
    X_nan = X.copy()
    X_nan[rng.random(X.shape) < 0.05] = np.nan
    fresh = rng.normal(size=(300, F)).astype(np.float32)
    fresh[rng.random(fresh.shape) < 0.05] = np.nan
    return {
        "X": X_nan,
        "X_clean": X,
        "reg": signal + 0.1 * rng.normal(size=N),
        "binary": (signal > 0.2).astype(int),
        "three": np.digitize(signal, [-0.5, 0.5]),
        "labels": np.array(["down", "flat", "up"])[np.digitize(signal, [-0.5, 0.5])],
        "count": rng.poisson(np.exp(0.5 * np.clip(signal, -3, 3))),
        "positive": np.exp(0.3 * signal) * rng.gamma(4.0, 0.25, size=N),
        "probability": 1 / (1 + np.exp(-signal)),
        "relevance": np.clip(np.digitize(signal, [-0.5, 0.5]), 0, 2),
        "groups": [50] * (N // 50),
        "fresh": fresh,
        "fresh_clean": np.nan_to_num(fresh),
    }


def _lgb(params: dict, y: str, rounds: int = 20, booster: bool = True):
    def make(d):
        import lightgbm

        dataset = lightgbm.Dataset(d["X"], d[y], group=d["groups"] if "rank" in str(params) else None)
        base = {"num_leaves": 8, "min_data_in_leaf": 5, "verbose": -1, "num_threads": 1, "seed": 0}
        trained = lightgbm.train({**base, **params}, dataset, rounds)
        return lightgbm.Booster(model_str=trained.model_to_string()) if booster else trained  # as from model.txt

    return make


def _lgb_sklearn(cls: str, y: str, **params):
    def make(d):
        import lightgbm

        kwargs = dict(n_estimators=20, num_leaves=8, min_child_samples=5, verbose=-1, n_jobs=1, random_state=0)
        model = getattr(lightgbm, cls)(**{**kwargs, **params})
        return model.fit(d["X"], d[y], **({"group": d["groups"]} if cls == "LGBMRanker" else {}))

    return make


def _xgb(params: dict, y: str, rounds: int = 20, X: str = "X"):
    """A Booster as from model.json (saved and opened by the adapter's file format)."""

    def make(d):
        import xgboost

        from fastinfer.adapters.xgboost import JSON

        dm = xgboost.DMatrix(d[X], d[y])
        if str(params.get("objective", "")).startswith("rank:"):
            dm.set_group(d["groups"])
        trained = xgboost.train({"max_depth": 3, "nthread": 1, "seed": 0, **params}, dm, rounds)
        return JSON.load(bytes(trained.save_raw("json")))

    return make


def _xgb_sklearn(cls: str, y: str, **params):
    def make(d):
        import xgboost

        model = getattr(xgboost, cls)(**{"n_estimators": 20, "max_depth": 3, "n_jobs": 1, "random_state": 0, **params})
        if "early_stopping_rounds" in params:
            return model.fit(d["X"][:400], d[y][:400], eval_set=[(d["X"][400:], d[y][400:])], verbose=False)
        return model.fit(d["X"], d[y], **({"qid": np.repeat(np.arange(N // 50), 50)} if cls == "XGBRanker" else {}))

    return make


def _cb(cls: str, y: str, **params):
    def make(d):
        import catboost

        from fastinfer.adapters.catboost import CBM

        model = getattr(catboost, cls)(iterations=20, depth=3, verbose=0, thread_count=1, random_seed=0, **params)
        model.fit(d["X"], d[y])
        return CBM.load(_cbm_bytes(model))  # as the loader opens model.cbm

    return make


def _cbm_bytes(model) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.cbm"
        model.save_model(str(path))
        return path.read_bytes()


def _sk(estimator: str, y: str, X: str = "X_clean", **params):
    def make(d):
        import sklearn.ensemble
        import sklearn.linear_model
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if estimator == "pipeline":
            model = make_pipeline(StandardScaler(), sklearn.linear_model.LogisticRegression(max_iter=500))
        elif hasattr(sklearn.ensemble, estimator):
            model = getattr(sklearn.ensemble, estimator)(n_estimators=10, max_depth=6, random_state=0, **params)
        else:
            model = getattr(sklearn.linear_model, estimator)(max_iter=500, **params)
        return model.fit(d[X].astype(np.float32), d[y])

    return make


def _est(estimator: str, y: str, X: str = "X_clean", **params):
    """Any scikit-learn estimator by module-qualified name, e.g. ``linear_model.HuberRegressor``."""

    def make(d):
        import importlib

        module, name = estimator.rsplit(".", 1)
        model = getattr(importlib.import_module(f"sklearn.{module}"), name)(**params)
        return model.fit(d[X].astype(np.float32), d[y])

    return make


_BOOST = {"random_state": 0}
_HGB = {"max_iter": 15, "random_state": 0}

# case -> (family, builder, expected columns)
P2, P3 = ("p_0", "p_1"), ("p_0", "p_1", "p_2")
PRED = ("prediction",)
CASES = {
    # LightGBM
    "lgb_binary": ("lightgbm", _lgb({"objective": "binary"}, "binary"), P2),
    "lgb_binary_sigmoid_2": ("lightgbm", _lgb({"objective": "binary", "sigmoid": 2.0}, "binary"), P2),
    "lgb_binary_sklearn": ("lightgbm", _lgb_sklearn("LGBMClassifier", "binary"), P2),
    "lgb_multiclass": ("lightgbm", _lgb({"objective": "multiclass", "num_class": 3}, "three"), P3),
    "lgb_multiclass_labels": ("lightgbm", _lgb_sklearn("LGBMClassifier", "labels"), ("p_down", "p_flat", "p_up")),
    "lgb_multiclassova": ("lightgbm", _lgb({"objective": "multiclassova", "num_class": 3}, "three"), P3),
    "lgb_poisson": ("lightgbm", _lgb({"objective": "poisson"}, "count"), PRED),
    "lgb_gamma": ("lightgbm", _lgb({"objective": "gamma"}, "positive"), PRED),
    "lgb_tweedie": ("lightgbm", _lgb({"objective": "tweedie"}, "count"), PRED),
    "lgb_cross_entropy": ("lightgbm", _lgb({"objective": "cross_entropy"}, "probability"), PRED),
    "lgb_lambdarank": ("lightgbm", _lgb_sklearn("LGBMRanker", "relevance"), PRED),
    "lgb_rank_xendcg": ("lightgbm", _lgb({"objective": "rank_xendcg"}, "relevance"), PRED),
    "lgb_rf_binary": (
        "lightgbm",
        _lgb({"objective": "binary", "boosting": "rf", "bagging_fraction": 0.6, "bagging_freq": 1}, "binary"),
        P2,
    ),
    "lgb_rf_multiclass": (
        "lightgbm",
        _lgb(
            {"objective": "multiclass", "num_class": 3, "boosting": "rf", "bagging_fraction": 0.6, "bagging_freq": 1},
            "three",
        ),
        P3,
    ),
    "lgb_dart": ("lightgbm", _lgb({"objective": "regression", "boosting": "dart"}, "reg"), PRED),
    "lgb_huber": ("lightgbm", _lgb({"objective": "huber"}, "reg"), PRED),
    "lgb_quantile": ("lightgbm", _lgb({"objective": "quantile", "alpha": 0.8}, "reg"), PRED),
    "lgb_zero_as_missing": ("lightgbm", _lgb({"objective": "regression", "zero_as_missing": True}, "reg"), PRED),
    # XGBoost
    "xgb_binary": ("xgboost", _xgb({"objective": "binary:logistic"}, "binary"), P2),
    "xgb_binary_base_score": ("xgboost", _xgb({"objective": "binary:logistic", "base_score": 0.3}, "binary"), P2),
    "xgb_binary_sklearn": ("xgboost", _xgb_sklearn("XGBClassifier", "binary"), P2),
    "xgb_logitraw": ("xgboost", _xgb({"objective": "binary:logitraw"}, "binary"), P2),
    "xgb_softprob": ("xgboost", _xgb({"objective": "multi:softprob", "num_class": 3}, "three"), P3),
    "xgb_softmax": ("xgboost", _xgb({"objective": "multi:softmax", "num_class": 3}, "three"), P3),
    "xgb_poisson": ("xgboost", _xgb({"objective": "count:poisson"}, "count"), PRED),
    "xgb_poisson_base_score": ("xgboost", _xgb({"objective": "count:poisson", "base_score": 2.5}, "count"), PRED),
    "xgb_gamma": ("xgboost", _xgb({"objective": "reg:gamma"}, "positive"), PRED),
    "xgb_tweedie": ("xgboost", _xgb({"objective": "reg:tweedie"}, "count"), PRED),
    "xgb_reg_logistic": ("xgboost", _xgb({"objective": "reg:logistic"}, "probability"), PRED),
    "xgb_rank_ndcg": ("xgboost", _xgb({"objective": "rank:ndcg"}, "relevance"), PRED),
    "xgb_rank_pairwise_sklearn": ("xgboost", _xgb_sklearn("XGBRanker", "relevance", objective="rank:pairwise"), PRED),
    "xgb_dart": ("xgboost", _xgb({"objective": "reg:squarederror", "booster": "dart", "rate_drop": 0.2}, "reg"), PRED),
    "xgb_forest": (
        "xgboost",
        _xgb(
            {"objective": "binary:logistic", "num_parallel_tree": 3, "subsample": 0.7, "colsample_bynode": 0.7},
            "binary",
        ),
        P2,
    ),
    "xgb_early_stopped": (
        "xgboost",
        _xgb_sklearn("XGBRegressor", "reg", early_stopping_rounds=3, n_estimators=200),
        PRED,
    ),
    "xgb_two_quantiles": (
        "xgboost",
        _xgb({"objective": "reg:quantileerror", "quantile_alpha": [0.1, 0.9]}, "reg"),
        ("prediction_0", "prediction_1"),
    ),
    "xgb_gblinear": ("xgboost", _xgb({"objective": "reg:squarederror", "booster": "gblinear"}, "reg"), PRED),
    "xgb_gblinear_binary": ("xgboost", _xgb({"objective": "binary:logistic", "booster": "gblinear"}, "binary"), P2),
    "xgb_gblinear_multi": (
        "xgboost",
        _xgb({"objective": "multi:softprob", "booster": "gblinear", "num_class": 3}, "three"),
        P3,
    ),
    # CatBoost
    "cb_logloss": ("catboost", _cb("CatBoostClassifier", "binary"), P2),
    "cb_multiclass": (
        "catboost",
        _cb("CatBoostClassifier", "labels", loss_function="MultiClass"),
        ("p_down", "p_flat", "p_up"),
    ),
    "cb_poisson": ("catboost", _cb("CatBoostRegressor", "count", loss_function="Poisson"), PRED),
    "cb_rmse": ("catboost", _cb("CatBoostRegressor", "reg"), PRED),
    # scikit-learn
    "rf_classifier_binary": ("random_forest", _sk("RandomForestClassifier", "binary"), P2),
    "rf_classifier_multiclass": ("random_forest", _sk("RandomForestClassifier", "three"), P3),
    "et_classifier_binary": ("extra_trees", _sk("ExtraTreesClassifier", "binary"), P2),
    "et_classifier_labels": ("extra_trees", _sk("ExtraTreesClassifier", "labels"), ("p_down", "p_flat", "p_up")),
    "logistic_binary": ("linear_regression", _sk("LogisticRegression", "binary"), P2),
    "logistic_multiclass": ("linear_regression", _sk("LogisticRegression", "three"), P3),
    "logistic_pipeline_labels": ("ridge", _sk("pipeline", "labels"), ("p_down", "p_flat", "p_up")),
    # scikit-learn gradient boosting (a baseline in base_values; HistGradientBoosting learns NaN routes)
    "gb_regressor": (
        "random_forest",
        _est("ensemble.GradientBoostingRegressor", "reg", n_estimators=15, **_BOOST),
        PRED,
    ),
    "gb_classifier_binary": (
        "random_forest",
        _est("ensemble.GradientBoostingClassifier", "binary", n_estimators=15, **_BOOST),
        P2,
    ),
    "gb_classifier_multiclass": (
        "random_forest",
        _est("ensemble.GradientBoostingClassifier", "three", n_estimators=10, **_BOOST),
        P3,
    ),
    "hgb_regressor_nan": ("random_forest", _est("ensemble.HistGradientBoostingRegressor", "reg", "X", **_HGB), PRED),
    "hgb_classifier_binary_nan": (
        "random_forest",
        _est("ensemble.HistGradientBoostingClassifier", "binary", "X", **_HGB),
        P2,
    ),
    "hgb_classifier_labels": (
        "extra_trees",
        _est("ensemble.HistGradientBoostingClassifier", "labels", **_HGB),
        ("p_down", "p_flat", "p_up"),
    ),
    # scikit-learn linear models beyond Ridge / Lasso / ElasticNet / OLS, and generalised ones (exp link)
    "sgd_regressor": ("linear_regression", _est("linear_model.SGDRegressor", "reg", random_state=0), PRED),
    "huber": ("linear_regression", _est("linear_model.HuberRegressor", "reg"), PRED),
    "bayesian_ridge": ("ridge", _est("linear_model.BayesianRidge", "reg"), PRED),
    "lasso_lars": ("lasso", _est("linear_model.LassoLars", "reg", alpha=0.01), PRED),
    "linear_svr": ("linear_regression", _est("svm.LinearSVR", "reg", random_state=0), PRED),
    "quantile_linear": ("linear_regression", _est("linear_model.QuantileRegressor", "reg", alpha=0.0), PRED),
    "poisson_glm": ("linear_regression", _est("linear_model.PoissonRegressor", "count"), PRED),
    "gamma_glm": ("linear_regression", _est("linear_model.GammaRegressor", "positive"), PRED),
    "tweedie_glm": ("linear_regression", _est("linear_model.TweedieRegressor", "positive", power=1.5), PRED),
}
LINEAR_CASES = {
    "sgd_regressor",
    "huber",
    "bayesian_ridge",
    "lasso_lars",
    "linear_svr",
    "quantile_linear",
    "poisson_glm",
    "gamma_glm",
    "tweedie_glm",
}
# Graphs outside the tree contract (a Sigmoid tail, linear graphs): the kernel may refuse them.
OUTSIDE_TREE_CONTRACT = {
    "lgb_cross_entropy",
    "xgb_reg_logistic",
    "xgb_gblinear",
    "xgb_gblinear_binary",
    "xgb_gblinear_multi",
    "logistic_binary",
    "logistic_multiclass",
    "logistic_pipeline_labels",
    *LINEAR_CASES,
}


@pytest.fixture(scope="session")
def converted(data):
    cache: dict[str, tuple] = {}

    def get(case: str):
        if case not in cache:
            family, make, _ = CASES[case]
            native = make(data)
            cache[case] = (native, convert(native, family, F))
        return cache[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_contract_and_columns(case, converted, data):
    native, graph = converted(case)
    family, _, columns = CASES[case]
    g = graph.model.graph
    assert [i.name for i in g.input] == ["features"] and [o.name for o in g.output] == ["prediction"]
    width = [d.dim_value for d in g.output[0].type.tensor_type.shape.dim][1]
    adapter = adapter_of(native, fam.resolve(family))
    assert graph.columns == columns == adapter.output_columns(native) and width == len(columns)
    X = data["fresh_clean"].astype(np.float64)
    out = adapter.predict(native, X)
    assert out.shape == ((len(X),) if len(columns) == 1 else (len(X), len(columns)))
    check_graph(graph.model)
    if columns[0].startswith("p_") and not case.endswith("ova"):  # class probabilities (ova: K sigmoids)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
        assert (out >= 0).all()


@pytest.mark.parametrize("case", list(CASES))
def test_native_equals_onnx_equals_kernel(case, converted, data):
    native, graph = converted(case)
    family = fam.resolve(CASES[case][0])
    thresholds = tree_thresholds(graph)
    probes = probe_rows(family, F, rng_seed=1, thresholds=thresholds, feature_scale=2.0)
    report = check_parity(native, graph, probes, family)
    assert report.passed, report.reason
    fresh = data["fresh"] if family.handles_nan else data["fresh_clean"]
    fresh_report = check_parity(native, graph, fresh, family)
    assert fresh_report.passed, fresh_report.reason
    print(
        f"\nPARITY {case}: tol {report.tolerance:g}, probes {report.n_rows} max_rel {report.max_rel:.2g} "
        f"(max_abs {report.max_abs:.2g}), fresh max_rel {fresh_report.max_rel:.2g}"
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # ORT sums trees in another order on several threads
    expected = ort.InferenceSession(graph.model.SerializeToString(), options).run(None, {"features": probes})[0]
    try:
        kernel = ForestKernel.from_onnx(graph.model)
    except ValueError as exc:
        assert case in OUTSIDE_TREE_CONTRACT, f"the forest kernel refuses a contract graph: {exc}"
        print(f"KERNEL REFUSES {case}: {exc}")
        return
    np.testing.assert_array_equal(kernel.predict(probes).reshape(expected.shape), expected)


@pytest.mark.parametrize("case", ["hgb_regressor_nan", "hgb_classifier_binary_nan"])
def test_hist_gradient_boosting_routes_nan_as_trained(case, converted, data):
    """HistGradientBoosting learns where NaN goes at each split: rows with NaN (5% of values) give
    the native predictions through the graph (float32 leaves summed: 1e-5 of the scale) and the
    forest kernel gives ONNX Runtime's bits."""
    native, graph = converted(case)
    rows = data["fresh"]
    assert np.isnan(rows).any(axis=1).mean() > 0.1
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    got = ort.InferenceSession(graph.model.SerializeToString(), options).run(None, {"features": rows})[0]
    want = adapter_of(native, fam.resolve(CASES[case][0])).predict(native, rows.astype(np.float64))
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=1e-5 * np.abs(want).max())
    np.testing.assert_array_equal(ForestKernel.from_onnx(graph.model).predict(rows).reshape(got.shape), got)


def test_tree_graph_patterns(converted):
    """The node patterns per objective (what the forest kernel and the executor see)."""

    def shape(case):
        model = converted(case)[1].model
        tree = next(n for n in model.graph.node if n.op_type == "TreeEnsembleRegressor")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in tree.attribute}
        tail = [n.op_type for n in model.graph.node if n is not tree]
        aggregate, post = attrs.get("aggregate_function", b"SUM"), attrs.get("post_transform", b"NONE")
        return attrs["n_targets"], aggregate.decode(), post.decode(), tail

    assert shape("lgb_binary") == (2, "SUM", "SOFTMAX", [])  # softmax([0, s]) = [1 - p, p]
    assert shape("xgb_binary") == (2, "SUM", "SOFTMAX", [])
    assert shape("lgb_multiclass") == (3, "SUM", "SOFTMAX", [])
    assert shape("lgb_multiclassova") == (3, "SUM", "LOGISTIC", [])  # K independent sigmoids
    assert shape("lgb_poisson") == (1, "SUM", "NONE", ["Exp"])
    assert shape("xgb_gamma") == (1, "SUM", "NONE", ["Exp"])
    assert shape("lgb_cross_entropy") == (1, "SUM", "NONE", ["Sigmoid"])
    assert shape("lgb_rf_binary") == (2, "AVERAGE", "SOFTMAX", [])
    assert shape("lgb_rf_multiclass") == (3, "SUM", "SOFTMAX", [])
    assert shape("cb_logloss") == (2, "SUM", "LOGISTIC", [])  # [sigmoid(-s), sigmoid(s)]
    assert shape("gb_classifier_binary") == (2, "SUM", "SOFTMAX", [])  # softmax([0, s + baseline])
    assert shape("hgb_classifier_labels") == (3, "SUM", "SOFTMAX", [])
    assert shape("hgb_regressor_nan") == (1, "SUM", "NONE", ["Reshape"])  # skl2onnx's own graph, reshaped
    assert shape("cb_poisson")[3] == ["Exp"]
    assert shape("rf_classifier_binary") == (1, "SUM", "NONE", ["Sub", "Concat"])  # P(1) -> [1 - p, p]
    assert shape("rf_classifier_multiclass") == (3, "SUM", "NONE", [])


def test_xgboost_intercepts_are_margins_as_xgboost_adds_them(converted, data):
    """base_score is stored in output space; the graph adds XGBoost's own margin: logit for logistic,
    log for the log links, the stored value for logitraw and softmax (XGBoost 3.x ProbToMargin)."""
    import xgboost

    for case, expected in [("xgb_binary_base_score", np.log(0.3 / 0.7)), ("xgb_poisson_base_score", np.log(2.5))]:
        native, graph = converted(case)
        tree = next(n for n in graph.model.graph.node if n.op_type == "TreeEnsembleRegressor")
        base = next(a for a in tree.attribute if a.name == "base_values").floats
        assert base[-1] == pytest.approx(expected, rel=1e-6)
        margin = native.get_booster().predict(xgboost.DMatrix(data["X_clean"][:5]), output_margin=True)
        session = ort.InferenceSession(graph.model.SerializeToString())
        got = session.run(None, {"features": data["X_clean"][:5].astype(np.float32)})[0]
        link = 1 / (1 + np.exp(-margin)) if case.startswith("xgb_binary") else np.exp(margin)
        np.testing.assert_allclose(got[:, -1], link, rtol=1e-5)


def test_early_stopped_xgboost_is_served_to_its_best_iteration(converted, data):
    native, graph = converted("xgb_early_stopped")
    assert native.best_iteration < 199
    tree = next(n for n in graph.model.graph.node if n.op_type == "TreeEnsembleRegressor")
    trees = set(next(a for a in tree.attribute if a.name == "nodes_treeids").ints)
    assert len(trees) == native.best_iteration + 1
    np.testing.assert_allclose(
        adapter_of(native, fam.resolve("xgboost")).predict(native, data["X"]), native.predict(data["X"])
    )


UNSUPPORTED = {
    "LightGBM regression with a sqrt target": (
        "lightgbm",
        _lgb({"objective": "regression", "reg_sqrt": True}, "count"),
        "'regression sqrt'",
    ),
    "LightGBM cross_entropy_lambda": (
        "lightgbm",
        _lgb({"objective": "cross_entropy_lambda"}, "probability"),
        "cross_entropy_lambda",
    ),
    "LightGBM linear trees": (
        "lightgbm",
        _lgb({"objective": "regression", "linear_tree": True}, "reg"),
        "linear trees",
    ),
    "XGBoost binary:hinge": ("xgboost", _xgb({"objective": "binary:hinge"}, "binary"), "binary:hinge"),
    "XGBoost survival:cox": ("xgboost", _xgb({"objective": "survival:cox"}, "positive"), "survival:cox"),
    "CatBoost MultiRMSE": ("catboost", None, "MultiRMSE"),
    "HistGradientBoosting poisson (skl2onnx drops the log link)": (
        "random_forest",
        _est("ensemble.HistGradientBoostingRegressor", "count", loss="poisson", **_HGB),
        "predicts through a LogLink",
    ),
    "HistGradientBoosting gamma": (
        "random_forest",
        _est("ensemble.HistGradientBoostingRegressor", "positive", loss="gamma", **_HGB),
        "predicts through a LogLink",
    ),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unsupported_objective_is_refused_naming_it_and_stays_native(case, data):
    family, make, named = UNSUPPORTED[case]
    if make is None:  # MultiRMSE needs two targets
        import catboost

        model = catboost.CatBoostRegressor(iterations=5, depth=2, verbose=0, loss_function="MultiRMSE", thread_count=1)
        native = model.fit(data["X"], np.column_stack([data["reg"], data["count"]]))
    else:
        native = make(data)
    with pytest.raises(ConversionError, match=named.replace("(", r"\(")):
        convert(native, family, F)
    adapter = adapter_of(native, fam.resolve(family))
    out = adapter.predict(native, data["X"][:7])
    columns = adapter.output_columns(native)
    assert out.shape == ((7,) if len(columns) == 1 else (7, len(columns)))  # native serving still works


def test_hist_gradient_boosting_categorical_splits_are_refused_and_stay_native(data):
    """skl2onnx writes HistGradientBoosting's categorical splits as numeric ones (a graph that
    predicts wrongly): the adapter refuses the model by name, and the native model serves."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    X = data["X_clean"].astype(np.float32)
    X[:, 0] = np.digitize(X[:, 0], [-1, 0, 1])  # four categories
    native = HistGradientBoostingRegressor(max_iter=10, categorical_features=[0], random_state=0).fit(X, data["reg"])
    with pytest.raises(ConversionError, match="categorical splits"):
        convert(native, "random_forest", F)
    adapter = adapter_of(native, fam.resolve("random_forest"))
    np.testing.assert_array_equal(adapter.predict(native, X[:7]), native.predict(X[:7]))


def test_gate_names_the_feature_and_threshold_it_blames(converted):
    """A graph whose one threshold is off by one float32 step: the refusal names the feature (by the
    name the caller passes) and the split threshold where graph and native disagree."""
    native, graph = converted("lgb_binary")
    model = onnx.ModelProto.FromString(graph.model.SerializeToString())
    tree = next(n for n in model.graph.node if n.op_type == "TreeEnsembleRegressor")
    attrs = {a.name: a for a in tree.attribute}
    modes = [m.decode() for m in attrs["nodes_modes"].strings]
    features = list(attrs["nodes_featureids"].ints)
    values = np.asarray(attrs["nodes_values"].floats, dtype=np.float32)
    split = next(i for i, m in enumerate(modes) if m == "BRANCH_LEQ" and abs(values[i]) > 1e-3)
    values[split] = np.nextafter(values[split], np.float32(-np.inf))
    del attrs["nodes_values"].floats[:]
    attrs["nodes_values"].floats.extend(values.tolist())
    names = [f"feat_{c}" for c in "vwxyz"]
    probes = probe_rows("lightgbm", F, thresholds=tree_thresholds(graph))
    report = check_parity(native, model, probes, "lightgbm", feature_names=names)
    assert not report.passed
    f = features[split]
    assert f"feature {names[f]!r} (column {f})" in report.reason and "split threshold" in report.reason, report.reason


def test_probes_cover_every_threshold_and_both_neighbours(converted):
    _, graph = converted("lgb_multiclass")
    thresholds = tree_thresholds(graph)
    probes = probe_rows("lightgbm", F, thresholds=thresholds)
    for f, values in thresholds.items():
        for v in values[np.isfinite(values)]:
            for x in (v, np.nextafter(v, np.float32(-np.inf)), np.nextafter(v, np.float32(np.inf))):
                if np.isfinite(x):
                    assert (probes[:, f] == x).any(), (f, x)
    codes = probe_rows("lightgbm", F, categorical={3: [0, 1, 2, 5]})
    assert set(np.unique(codes[:, 3][np.isfinite(codes[:, 3])])) == {0, 1, 2, 5, 6, 7, 3, 4, 1 << 20, -1, -2}
    assert np.isnan(codes[:, 3]).any() and (codes[:, 3] == np.round(codes[:, 3]))[np.isfinite(codes[:, 3])].all()


# ---------------------------------------------------------------- a run mixing them


@pytest.fixture(scope="session")
def mixed_run(tmp_path_factory):
    """A TRAINING run (fastinfer.testing) with regression, binary and multiclass targets over a
    categorical column, every tree family, plus models of the other objectives added to it."""
    X, targets = testing.synthetic_features(n_rows=500, n_features=6, seed=5)
    rng = np.random.default_rng(6)
    X["feat_x0"] = rng.integers(0, 6, len(X)).astype(float)
    y = targets["fwd_ret_5m"] + 0.8 * np.isin(X["feat_x0"], [1, 4])
    families = ["lightgbm", "xgboost", "catboost", "random_forest", "extra_trees", "ridge", "lasso"]
    root = testing.write_training_run(
        tmp_path_factory.mktemp("mixed"),
        X,
        {"ret_5m": y, "dir_5m": y, "regime_5m": y},
        families,
        task={"dir_5m": "binary", "regime_5m": "multiclass"},
        categorical=["feat_x0"],
        size=testing.TrainSize(trees=15, depth=3, leaves=8),
    )
    order = list(X.columns)
    values = X.to_numpy()
    count = rng.poisson(np.exp(0.3 * np.clip(y, -3, 3)))
    binary, three = (y > 0).astype(int), np.digitize(y, np.quantile(y, [1 / 3, 2 / 3]))
    extra = {
        "lgb_poisson": ("lightgbm", _lgb({"objective": "poisson"}, "count")),
        "lgb_ova": ("lightgbm", _lgb({"objective": "multiclassova", "num_class": 3}, "three")),
        "lgb_rf": (
            "lightgbm",
            _lgb({"objective": "binary", "boosting": "rf", "bagging_fraction": 0.6, "bagging_freq": 1}, "binary"),
        ),
        "lgb_rank": ("lightgbm", _lgb({"objective": "lambdarank"}, "relevance")),
        "xgb_logitraw": ("xgboost", _xgb({"objective": "binary:logitraw"}, "binary")),
        "xgb_softmax": ("xgboost", _xgb({"objective": "multi:softmax", "num_class": 3}, "three")),
        "xgb_gblinear": ("xgboost", _xgb({"objective": "reg:squarederror", "booster": "gblinear"}, "reg")),
        "xgb_tweedie": ("xgboost", _xgb({"objective": "reg:tweedie"}, "count")),
        "cb_poisson": ("catboost", _cb("CatBoostRegressor", "count", loss_function="Poisson")),
    }
    d = {
        "X": values,
        "reg": y,
        "count": count,
        "binary": binary,
        "three": three,
        "relevance": np.clip(three, 0, 2),
        "groups": [50] * (len(X) // 50),
    }
    for target, (family, make) in extra.items():
        native = make(d)
        writer = _writer(family, native)
        testing.write_model(root, target, family, writer[0], writer[1], order, len(X))
    return root


def _writer(family: str, native) -> tuple[str, object]:
    if family == "lightgbm":
        return "model.txt", lambda p: native.save_model(str(p))
    if family == "xgboost":
        return "model.json", lambda p: native.save_model(str(p))
    return "model.cbm", lambda p: native.save_model(str(p), format="cbm")


def test_mixed_run_compiles_to_onnx_except_what_a_library_cannot_export(mixed_run):
    from fastinfer.compiler import compile_run
    from fastinfer.loader import ModelLoader

    lock = compile_run(mixed_run)
    native_left = {(e.target, e.family): e.reason for e in lock.entries if e.status != "onnx"}
    assert len(lock.entries) == 3 * 7 + 9
    assert set(native_left) == {("ret_5m", "catboost"), ("dir_5m", "catboost"), ("regime_5m", "catboost")}
    assert all("CatBoost cannot export models with categorical features" in r for r in native_left.values())
    onnx_loader, native_loader = ModelLoader(mixed_run), ModelLoader(mixed_run, prefer_onnx=False)
    X, _ = testing.synthetic_features(n_rows=40, n_features=6, seed=9)
    X["feat_x0"] = np.random.default_rng(10).integers(-1, 8, len(X)).astype(float)  # seen, unseen, negative
    for entry in lock.entries:
        served = onnx_loader.load(entry.target, entry.family)
        reference = native_loader.load(entry.target, entry.family)
        assert served.columns == reference.columns
        got, want = served.predict(X), reference.predict(X)
        assert got.shape == want.shape
        scale = np.abs(want).max(axis=0)
        assert (np.abs(got - want) <= 1e-4 * scale + 1e-7).all(), (entry.target, entry.family)
    assert onnx_loader.load("dir_5m", "lightgbm").columns == ("p_0", "p_1")
    assert onnx_loader.load("regime_5m", "xgboost").columns == ("p_0", "p_1", "p_2")
    assert onnx_loader.load("dir_5m", "catboost").backend == "native"


def test_writer_default_output_is_unchanged(tmp_path):
    """``task`` and ``categorical`` left out: the same files and meta as before they existed."""
    X, targets = testing.synthetic_features(n_rows=120, n_features=4, seed=1)
    root = testing.write_training_run(tmp_path, X, {"t": targets["fwd_ret_5m"]}, ["ridge"])
    folder = root / "targets" / "t" / "models" / "view=CROSS_SECTIONAL" / "family=ridge"
    meta = json.loads((folder / "model_meta.json").read_text())
    assert set(meta) == {"family", "feature_list", "feature_names", "metrics", "model_checksum", "interval_minutes"}
    assert meta["metrics"] == {"n_train": 120} and meta["feature_names"] == list(X.columns)
    with pytest.raises(ValueError, match="does not train binary"):
        testing.write_training_run(tmp_path / "x", X, {"t": targets["fwd_ret_5m"]}, ["mlp"], task="binary")
