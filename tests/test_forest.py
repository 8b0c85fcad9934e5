"""fastinfer.kernels.forest against ONNX Runtime on the same graph.

Every family's converted graph is evaluated by ORT (1 thread) and by the forest
kernel, in both layouts and on the one-row, batch and parallel paths, for
hypothesis-drawn rows whose values are split thresholds, their float32
neighbours, NaN, ±inf, ±0 and arbitrary floats.  The bound reached is
bit-identity (0 ulp), and that is what is asserted.
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from fastinfer.kernels import forest
from fastinfer.kernels.forest import ForestKernel, find_tree_ensembles

F = 6
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _training_data(seed: int = 0, nan: bool = True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, F)).astype(np.float32)
    y = 2 * X[:, 0] + np.sin(3 * X[:, 1]) + X[:, 2] * X[:, 3] + 0.3 * rng.normal(size=400)
    if nan:
        X[rng.random(X.shape) < 0.08] = np.nan
    return X, y.astype(np.float32)


def _lightgbm(objective: str = "regression"):
    import lightgbm as lgb
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = _training_data()
    kw = {"alpha": 0.8} if objective == "quantile" else {}
    m = lgb.LGBMRegressor(n_estimators=30, num_leaves=15, objective=objective, verbose=-1, random_state=0, **kw).fit(
        X, y
    )
    return onnxmltools.convert_lightgbm(m, initial_types=[("x", FloatTensorType([None, F]))], target_opset=15)


def _xgboost():
    import onnxmltools
    import xgboost as xgb
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = _training_data()
    m = xgb.XGBRegressor(n_estimators=30, max_depth=4, random_state=0, n_jobs=1).fit(X, y)
    return onnxmltools.convert_xgboost(m, initial_types=[("x", FloatTensorType([None, F]))], target_opset=15)


def _catboost(tmp_path_factory):
    import catboost

    X, y = _training_data()
    m = catboost.CatBoostRegressor(iterations=30, depth=4, verbose=0, random_seed=0, thread_count=1).fit(X, y)
    path = tmp_path_factory.mktemp("cb") / "m.onnx"
    m.save_model(str(path), format="onnx")
    return onnx.load(str(path))


def _sklearn(cls, n_outputs: int = 1):
    import skl2onnx

    X, y = _training_data(nan=False)
    if n_outputs > 1:
        y = np.stack([y, -0.5 * y + X[:, 4]], axis=1)
    m = cls(n_estimators=12, max_depth=5, random_state=0, n_jobs=1).fit(X, y)
    return skl2onnx.to_onnx(m, X[:1])


FAMILIES = [
    "lightgbm",
    "lightgbm-quantile",
    "xgboost",
    "catboost",
    "random-forest",
    "extra-trees",
    "random-forest-2-targets",
]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "lightgbm": _lightgbm(),
            "lightgbm-quantile": _lightgbm("quantile"),
            "xgboost": _xgboost(),
            "catboost": _catboost(tmp_path_factory),
            "random-forest": _sklearn(RandomForestRegressor),
            "extra-trees": _sklearn(ExtraTreesRegressor),
            "random-forest-2-targets": _sklearn(RandomForestRegressor, n_outputs=2),
        }


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_predict(sess: ort.InferenceSession, X: np.ndarray, n_targets: int) -> np.ndarray:
    y = sess.run(None, {sess.get_inputs()[0].name: X})[0]
    return np.asarray(y, dtype=np.float32).reshape(len(X), n_targets)


def _tree_node(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "TreeEnsembleRegressor")


def _row_values(node: onnx.NodeProto, n_features: int) -> list[list[float]]:
    """Per feature: its thresholds, their float32 neighbours, and IEEE specials."""
    raw = forest._Raw(node)
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    per = []
    for f in range(n_features):
        t = raw.values[raw.featureids == f].astype(np.float32)
        t = t[np.isfinite(t)]
        with np.errstate(over="ignore"):
            near = np.concatenate([t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-np.inf))])
        per.append(sorted(set(near.tolist())) + specials)
    return per


def _rows(node: onnx.NodeProto, n_features: int, max_rows: int = 20):
    values = _row_values(node, n_features)
    element = [st.one_of(st.sampled_from(v), st.sampled_from(v), st.floats(width=32)) for v in values]
    row = st.tuples(*element)
    return st.lists(row, min_size=1, max_size=max_rows).map(
        lambda rs: np.array(rs, dtype=np.float32).reshape(len(rs), n_features)
    )


def _assert_bits_equal(got: np.ndarray, ref: np.ndarray) -> None:
    """0 ulp: the same float32 bits (NaN matched as NaN, +0 and -0 as equal)."""
    assert got.shape == ref.shape and got.dtype == np.float32
    same = (got == ref) | (np.isnan(got) & np.isnan(ref))
    assert same.all(), f"kernel {got[~same]} vs ORT {ref[~same]}"


def _check(model: onnx.ModelProto, data, layout: str) -> None:
    node = _tree_node(model)
    kernel = ForestKernel.from_onnx(model, layout=layout)
    n_features = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value or kernel.n_features
    X = data.draw(_rows(node, n_features))
    ref = _ort_predict(_session_cache(model), X, kernel.n_targets)
    _assert_bits_equal(kernel.predict(X), ref)  # batch
    ones = np.concatenate([kernel.predict(X[i : i + 1]) for i in range(len(X))])
    _assert_bits_equal(ones, ref)  # one row
    par = ForestKernel.from_onnx(model, layout=layout, n_threads=2, parallel_min_rows=1)
    _assert_bits_equal(par.predict(X), ref)  # prange


_SESSIONS: dict[bytes, ort.InferenceSession] = {}


def _session_cache(model: onnx.ModelProto) -> ort.InferenceSession:
    """One ORT session per distinct graph (keyed by its bytes, not its id)."""
    key = model.SerializeToString()
    if key not in _SESSIONS:
        _SESSIONS[key] = _session(model)
    return _SESSIONS[key]


@pytest.mark.parametrize("layout", ["auto", "generic"])
@pytest.mark.parametrize("family", FAMILIES)
@SETTINGS
@given(data=st.data())
def test_matches_onnxruntime_bit_for_bit(graphs, family, layout, data):
    _check(graphs[family], data, layout)


def test_layout_chosen(graphs):
    for family in FAMILIES:
        k = ForestKernel.from_onnx(graphs[family])
        assert k.layout == ("generic" if family.endswith("2-targets") else "fast"), family


def test_large_batch_blocks_and_tails(graphs):
    """More rows than one block, and a row count that leaves tails of 1..7 rows."""
    rng = np.random.default_rng(1)
    for family in ("lightgbm", "catboost"):
        X = rng.normal(size=(300, F)).astype(np.float32)
        X[rng.random(X.shape) < 0.1] = np.nan
        k = ForestKernel.from_onnx(graphs[family])
        ref = _ort_predict(_session_cache(graphs[family]), X, 1)
        for n in (2, 7, 9, 129, 300):
            _assert_bits_equal(k.predict(X[:n]), ref[:n])


def test_columns_read_a_wider_matrix_in_place(graphs):
    """``columns`` maps graph features into a wider matrix (the plan's union of features):
    the same bits as gathering those columns first, for both layouts."""
    rng = np.random.default_rng(2)
    wide = rng.normal(size=(40, F + 5)).astype(np.float32)
    wide[rng.random(wide.shape) < 0.1] = np.nan
    columns = rng.permutation(F + 5)[:F]
    narrow = np.ascontiguousarray(wide[:, columns])
    for family in ("xgboost", "random-forest-2-targets"):
        reference = ForestKernel.from_onnx(graphs[family])
        mapped = ForestKernel.from_onnx(graphs[family], columns=columns)
        for n in (1, 40):
            _assert_bits_equal(mapped.predict(wide[:n]), reference.predict(narrow[:n]))
    with pytest.raises(ValueError, match="columns are mapped"):
        ForestKernel.from_onnx(graphs["xgboost"], columns=columns[:2])


# ------------------------------------------------------------ synthetic graphs


def _graph(
    node: onnx.NodeProto,
    n_features: int = 3,
    n_targets: int = 1,
    tail: list[onnx.NodeProto] = (),
    out_type=TensorProto.FLOAT,
    ml_opset: int = 3,
):
    out = tail[-1].output[0] if tail else node.output[0]
    g = helper.make_graph(
        [node, *tail],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(out, out_type, [None, n_targets])],
    )
    return helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", ml_opset)], ir_version=8
    )


SYNTHETIC = [
    dict(mode="BRANCH_LEQ"),
    dict(mode="BRANCH_LT"),
    dict(mode="BRANCH_GTE"),
    dict(mode="BRANCH_GT"),
    dict(mode="BRANCH_EQ"),
    dict(mode="BRANCH_NEQ"),
    dict(aggregate="AVERAGE"),
    dict(aggregate="MIN"),
    dict(aggregate="MAX"),
    dict(n_targets=3),
    dict(n_targets=3, aggregate="AVERAGE"),
    dict(n_targets=2, aggregate="MIN"),
    dict(n_trees=1),
    dict(n_trees=17, mode="BRANCH_GT"),
]


def _mixed_modes_node() -> onnx.NodeProto:
    """Every mode in one tree set, missing tracks on some, so no 'same mode' path applies."""
    node = forest._synthetic_node(n_trees=11)
    a = {x.name: x for x in node.attribute}
    modes = list(forest.helper.get_attribute_value(a["nodes_modes"]))
    cycle = [b"BRANCH_LEQ", b"BRANCH_LT", b"BRANCH_GTE", b"BRANCH_GT", b"BRANCH_NEQ", b"BRANCH_EQ"]
    k = 0
    for i, m in enumerate(modes):
        if m != b"LEAF":
            modes[i] = cycle[k % len(cycle)]
            k += 1
    a["nodes_modes"].CopyFrom(helper.make_attribute("nodes_modes", modes))
    return node


def _tensor_node(dtype=np.float32, n_targets: int = 1) -> onnx.NodeProto:
    """Thresholds, weights and base values as `_as_tensor` attributes (ai.onnx.ml 3)."""
    node = forest._synthetic_node(n_trees=10, n_targets=n_targets, mode="BRANCH_LT")
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    keep = [x for x in node.attribute if x.name not in ("nodes_values", "target_weights", "base_values")]
    del node.attribute[:]
    node.attribute.extend(keep)
    for name, v in (
        ("nodes_values_as_tensor", a["nodes_values"]),
        ("target_weights_as_tensor", np.asarray(a["target_weights"]) / 3.0),
        ("base_values_as_tensor", np.full(n_targets, 1 / 3)),
    ):
        node.attribute.append(helper.make_attribute(name, numpy_helper.from_array(np.asarray(v, dtype=dtype))))
    return node


def _synthetic_rows(max_rows: int = 12):
    values = [
        -1.0,
        -0.25,
        -0.15,
        0.0,
        0.5,
        0.6,
        1.0,
        1.1,
        1.3,
        1.5,
        float(np.nextafter(np.float32(0.5), np.float32(1))),
        np.nan,
        np.inf,
        -np.inf,
    ]
    values += [float(np.float32(v + 0.1 * t)) for v in (0.5, -0.25, 1.0) for t in range(17)]
    el = st.one_of(st.sampled_from(values), st.floats(width=32))
    return st.lists(st.tuples(el, el, el), min_size=1, max_size=max_rows).map(lambda rs: np.array(rs, dtype=np.float32))


@pytest.mark.parametrize(
    "spec",
    [*SYNTHETIC, "mixed", "tensor", "tensor-2-targets"],
    ids=lambda s: s if isinstance(s, str) else "-".join(map(str, s.values())),
)
@settings(max_examples=30, deadline=None, derandomize=True)
@given(X=_synthetic_rows())
def test_synthetic_modes_and_aggregates(spec, X):
    if spec == "mixed":
        node, T = _mixed_modes_node(), 1
    elif isinstance(spec, str):
        T = 2 if spec.endswith("targets") else 1
        node = _tensor_node(n_targets=T)
    else:
        node, T = forest._synthetic_node(**spec), spec.get("n_targets", 1)
    model = _graph(node, n_targets=T)
    ref = _ort_predict(_session_cache(model), X, T)
    for layout in ("auto", "generic"):
        k = ForestKernel.from_onnx(model, layout=layout)
        _assert_bits_equal(k.predict(X), ref)
        _assert_bits_equal(np.concatenate([k.predict(X[i : i + 1]) for i in range(len(X))]), ref)


def test_double_tensors_refused_like_onnxruntime():
    model = _graph(_tensor_node(np.float64))
    with pytest.raises(Exception, match="could not unpack tensor attribute"):
        _session(model)
    with pytest.raises(ValueError, match="nodes_values_as_tensor has dtype float64"):
        ForestKernel.from_onnx(model)


def test_normalised_thresholds_at_the_edges():
    """LT/GTE at -inf, GT/GTE at NaN and LEQ at +inf, against ORT."""
    for mode in ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT"):
        for t, mt in [(-np.inf, 0), (-np.inf, 1), (np.inf, 0), (np.inf, 1), (np.nan, 0), (np.nan, 1)]:
            node = helper.make_node(
                "TreeEnsembleRegressor",
                ["X"],
                ["Y"],
                domain="ai.onnx.ml",
                n_targets=1,
                nodes_treeids=[0, 0, 0],
                nodes_nodeids=[0, 1, 2],
                nodes_featureids=[0, 0, 0],
                nodes_values=[t, 0, 0],
                nodes_modes=[mode, "LEAF", "LEAF"],
                nodes_truenodeids=[1, 0, 0],
                nodes_falsenodeids=[2, 0, 0],
                nodes_missing_value_tracks_true=[mt, 0, 0],
                target_treeids=[0, 0],
                target_nodeids=[1, 2],
                target_ids=[0, 0],
                target_weights=[1.0, 2.0],
            )
            model = _graph(node, n_features=1)
            X = np.array([[np.nan], [np.inf], [-np.inf], [0.0], [3.0]], dtype=np.float32)
            ref = _ort_predict(_session(model), X, 1)
            k = ForestKernel.from_onnx(model)
            _assert_bits_equal(k.predict(X), ref)
            _assert_bits_equal(np.concatenate([k.predict(X[i : i + 1]) for i in range(5)]), ref)


# ------------------------------------------------------------- graph handling


def test_accepted_tails(graphs):
    node = forest._synthetic_node()
    shape = numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape")
    tail = [
        helper.make_node("Identity", ["Y"], ["Y1"]),
        helper.make_node("Cast", ["Y1"], ["Y2"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["Y2", "shape"], ["Z"]),
    ]
    model = _graph(node, tail=tail)
    model.graph.initializer.append(shape)
    X = np.array([[0.3, 0.1, 2.0], [np.nan, 1.0, -1.0]], dtype=np.float32)
    ref = _ort_predict(_session(model), X, 1)
    _assert_bits_equal(ForestKernel.from_onnx(model).predict(X), ref)
    assert ForestKernel.from_onnx(graphs["catboost"]).n_targets == 1  # declared (N,)


def test_refusals():
    node = forest._synthetic_node()
    cast = helper.make_node("Cast", ["Y"], ["Z"], to=TensorProto.DOUBLE)
    with pytest.raises(ValueError, match="Cast .* to DOUBLE"):
        ForestKernel.from_onnx(_graph(node, tail=[cast], out_type=TensorProto.DOUBLE))
    relu = helper.make_node("Relu", ["Y"], ["Z"])
    with pytest.raises(ValueError, match="unsupported nodes .*Relu"):
        ForestKernel.from_onnx(_graph(node, tail=[relu]))
    logistic = forest._synthetic_node()
    logistic.attribute.append(helper.make_attribute("post_transform", "LOGISTIC"))
    with pytest.raises(ValueError, match="post_transform LOGISTIC"):
        ForestKernel.from_node(logistic)
    two = _graph(forest._synthetic_node())
    two.graph.node.append(forest._synthetic_node())
    with pytest.raises(ValueError, match="2 TreeEnsembleRegressor nodes"):
        ForestKernel.from_onnx(two)
    clf = helper.make_node("TreeEnsembleClassifier", ["X"], ["L", "P"], domain="ai.onnx.ml")
    with pytest.raises(ValueError, match="TreeEnsembleClassifier"):
        ForestKernel.from_node(clf)
    k = ForestKernel.from_node(node)
    with pytest.raises(ValueError, match="float32"):
        k.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="features"):
        k.predict(np.zeros((2, 2), dtype=np.float32))


def test_find_tree_ensembles(graphs):
    info = find_tree_ensembles(graphs["xgboost"])
    assert len(info) == 1 and info[0].supported and info[0].n_trees == 30
    assert info[0].modes == ("BRANCH_LT",) and info[0].has_missing_tracks
    bad = _graph(forest._synthetic_node())
    bad.graph.node[0].attribute.append(helper.make_attribute("post_transform", "SOFTMAX"))
    (i,) = find_tree_ensembles(bad)
    assert not i.supported and "SOFTMAX" in i.reason


def test_predict_into_out_allocates_nothing(graphs):
    k = ForestKernel.from_onnx(graphs["lightgbm"])
    X1 = np.zeros((1, F), dtype=np.float32)
    XB = np.zeros((64, F), dtype=np.float32)
    o1, ob = np.empty((1, 1), np.float32), np.empty((64, 1), np.float32)
    k.predict(X1, o1), k.predict(XB, ob)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(200):
            assert k.predict(X1, o1) is o1
            k.predict(XB, ob)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(
        s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0 and "forest.py" in str(s.traceback)
    )
    assert grown == 0


def test_warmup_runs():
    forest.warmup()
