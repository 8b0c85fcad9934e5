"""fastinfer.kernels.forest against ONNX Runtime on the same graph.

Every family's converted graph is evaluated by ORT (1 thread) and by the forest kernel in each
mode (node layout, generic layout, bitvector) and on the one-row, batch and parallel paths, for
hypothesis-drawn rows whose values are split thresholds, their float32 neighbours, NaN, ±inf,
±0 and arbitrary floats. The bound reached is bit-identity (0 ulp), and that is what is asserted,
for post-transforms, the ``Exp`` link, the binary tail and categorical chains too.
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
from numba import njit
from onnx import TensorProto, helper, numpy_helper

from fastinfer.kernels import forest
from fastinfer.kernels.forest import ForestKernel, find_tree_ensembles
from fastinfer.kernels.forest import kernel as kernel_module
from fastinfer.kernels.forest.codes import EXP_SCALEF, EXP_TWO_SCALE
from fastinfer.kernels.forest.finish import mlas_exp, mlas_logistic
from fastinfer.kernels.forest.pack import EXP_VARIANT
from fastinfer.kernels.forest.read import EnsembleAttributes

from ._hardening import hostile

F = 6
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Kernel variants the parity tests run: the node layout, the generic (reference) layout, QuickScorer,
# and for oblivious ensembles (CatBoost's) the oblivious layout.
VARIANTS = {
    "node": {"mode": "node"},
    "generic": {"layout": "generic"},
    "bitvector": {"mode": "bitvector"},
    "oblivious": {"mode": "oblivious"},
}


def _training_data(seed: int = 0, nan: bool = True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, F)).astype(np.float32)
    y = 2 * X[:, 0] + np.sin(3 * X[:, 1]) + X[:, 2] * X[:, 3] + 0.3 * rng.normal(size=400)
    if nan:
        X[rng.random(X.shape) < 0.08] = np.nan
    return X, y.astype(np.float32)


def _lightgbm(objective: str = "regression", num_leaves: int = 15):
    import lightgbm as lgb
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = _training_data()
    kw = {"alpha": 0.8} if objective == "quantile" else {}
    if objective in ("poisson", "gamma", "tweedie"):
        y = np.exp(y / 3).astype(np.float32)  # positive targets for the log-link objectives
    if num_leaves > 15:
        kw["min_child_samples"] = 2  # 400 rows: small leaves, so trees really grow past 64 leaves
    m = lgb.LGBMRegressor(
        n_estimators=30, num_leaves=num_leaves, objective=objective, verbose=-1, random_state=0, **kw
    ).fit(X, y)
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


# ------------------------------------------------------------ classifier and link graphs
# The converters emit these shapes (TreeEnsembleRegressor + post_transform, then Exp or the
# binary tail); here they are built from real trained models' trees.


def _as_regressor(model: onnx.ModelProto, post_transform: str, aggregate: str = "SUM") -> onnx.ModelProto:
    """A TreeEnsembleClassifier graph's trees as a TreeEnsembleRegressor with K = n class columns."""
    clf = next(n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier")
    a = {x.name: helper.get_attribute_value(x) for x in clf.attribute}
    rename = {"class_ids": "target_ids", "class_nodeids": "target_nodeids", "class_treeids": "target_treeids"}
    rename["class_weights"] = "target_weights"
    keep = {k: v for k, v in a.items() if k.startswith("nodes_") or k == "base_values"}
    keep.update({rename[k]: v for k, v in a.items() if k in rename})
    n_targets = max(a["class_ids"]) + 1
    node = helper.make_node(
        "TreeEnsembleRegressor",
        [clf.input[0]],
        ["scores"],
        domain="ai.onnx.ml",
        n_targets=n_targets,
        post_transform=post_transform,
        aggregate_function=aggregate,
        **keep,
    )
    return _graph(node, n_features=F, n_targets=n_targets, input_name=clf.input[0])


def _binary_tail(model: onnx.ModelProto) -> onnx.ModelProto:
    """trees (K = 1) -> Sub(1, p) -> Concat([1 - p, p], axis=1) -> Identity: output [N, 2]."""
    node = model.graph.node[0]
    one = numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")
    tail = [
        helper.make_node("Sub", ["one", node.output[0]], ["q"]),
        helper.make_node("Concat", ["q", node.output[0]], ["pq"], axis=1),
        helper.make_node("Identity", ["pq"], ["probabilities"]),
    ]
    out = _graph(node, n_features=F, n_targets=2, tail=tail, input_name=node.input[0])
    out.graph.initializer.append(one)
    return out


def _link_tail(model: onnx.ModelProto, op: str = "Exp") -> onnx.ModelProto:
    """trees -> Reshape [-1, 1] -> Exp (log-link objectives: poisson, gamma, tweedie) or Sigmoid
    (one-column logistic: cross_entropy, reg:logistic)."""
    node = next(n for n in model.graph.node if n.op_type == "TreeEnsembleRegressor")
    shape = numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "shape")
    tail = [helper.make_node("Reshape", [node.output[0], "shape"], ["r"]), helper.make_node(op, ["r"], ["mean"])]
    out = _graph(node, n_features=F, n_targets=1, tail=tail, input_name=node.input[0])
    out.graph.initializer.append(shape)
    return out


def _binary_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """A binary classifier as the converters emit it: K = 2, SOFTMAX, every leaf adding to target 1
    only, so softmax([0, s]) = [1 - sigmoid(s), sigmoid(s)] (target 0 is never scored: it reads 0)."""
    regressor = _as_regressor(model, "SOFTMAX")
    node = regressor.graph.node[0]
    for a in node.attribute:
        if a.name == "n_targets":
            a.i = 2
        if a.name == "target_ids":
            a.ints[:] = [1] * len(a.ints)
    return _graph(node, n_features=F, n_targets=2, input_name=node.input[0])


def _lightgbm_classifier(n_classes: int):
    import lightgbm as lgb
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = _training_data()
    labels = (y > np.median(y)).astype(int) if n_classes == 2 else np.digitize(y, np.quantile(y, [1 / 3, 2 / 3]))
    m = lgb.LGBMClassifier(n_estimators=20, num_leaves=15, verbose=-1, random_state=0).fit(X, labels)
    return onnxmltools.convert_lightgbm(
        m, initial_types=[("x", FloatTensorType([None, F]))], target_opset=15, zipmap=False
    )


def _sklearn_classifier():
    import skl2onnx
    from sklearn.ensemble import RandomForestClassifier

    X, y = _training_data(nan=False)
    labels = np.digitize(y, np.quantile(y, [1 / 3, 2 / 3]))
    m = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0, n_jobs=1).fit(X, labels)
    return skl2onnx.to_onnx(m, X[:1], options={"zipmap": False})


FAMILIES = [
    "lightgbm",
    "lightgbm-quantile",
    "lightgbm-100-leaves",  # trees past 64 leaves: multi-word bitvectors
    "xgboost",
    "catboost",
    "random-forest",
    "extra-trees",
    "random-forest-2-targets",
]
CLASSIFIERS_AND_LINKS = [
    "lightgbm-binary",  # K = 1, LOGISTIC (ORT: a no-op on one target), binary tail -> [N, 2]
    "lightgbm-binary-softmax",  # K = 2, SOFTMAX, leaves on target 1 only (the converters' binary form)
    "lightgbm-sigmoid",  # K = 1, then a Sigmoid node (cross_entropy, reg:logistic)
    "lightgbm-multiclass",  # K = 3, SOFTMAX
    "lightgbm-multiclass-logistic",  # multiclassova: K = 3, LOGISTIC
    "lightgbm-multiclass-softmax-zero",
    "random-forest-classifier",  # K = 3 class columns, AVERAGE, NONE (several weights per leaf)
    "lightgbm-poisson",  # Exp link
    "lightgbm-gamma",
    "lightgbm-tweedie",
]
# Several weights per leaf: the node and bitvector layouts refuse these (generic kernel only).
MULTI_WEIGHT = {"random-forest-2-targets", "random-forest-classifier"}
OBLIVIOUS = {"catboost"}  # symmetric trees: the oblivious layout too (tests/test_forest_oblivious.py)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        multiclass = _lightgbm_classifier(3)
        binary = _lightgbm_classifier(2)
        return {
            "lightgbm": _lightgbm(),
            "lightgbm-quantile": _lightgbm("quantile"),
            "lightgbm-100-leaves": _lightgbm(num_leaves=100),
            "xgboost": _xgboost(),
            "catboost": _catboost(tmp_path_factory),
            "random-forest": _sklearn(RandomForestRegressor),
            "extra-trees": _sklearn(ExtraTreesRegressor),
            "random-forest-2-targets": _sklearn(RandomForestRegressor, n_outputs=2),
            "lightgbm-binary": _binary_tail(_as_regressor(binary, "LOGISTIC")),
            "lightgbm-binary-softmax": _binary_softmax(binary),
            "lightgbm-sigmoid": _link_tail(_lightgbm(), "Sigmoid"),
            "lightgbm-multiclass": _as_regressor(multiclass, "SOFTMAX"),
            "lightgbm-multiclass-logistic": _as_regressor(multiclass, "LOGISTIC"),
            "lightgbm-multiclass-softmax-zero": _as_regressor(multiclass, "SOFTMAX_ZERO"),
            "random-forest-classifier": _as_regressor(_sklearn_classifier(), "NONE", "AVERAGE"),
            "lightgbm-poisson": _link_tail(_lightgbm("poisson")),
            "lightgbm-gamma": _link_tail(_lightgbm("gamma")),
            "lightgbm-tweedie": _link_tail(_lightgbm("tweedie")),
        }


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_predict(sess: ort.InferenceSession, X: np.ndarray, n_outputs: int) -> np.ndarray:
    y = sess.run(None, {sess.get_inputs()[0].name: X})[0]
    return np.asarray(y, dtype=np.float32).reshape(len(X), n_outputs)


def _tree_node(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "TreeEnsembleRegressor")


def _row_values(node: onnx.NodeProto, n_features: int) -> list[list[float]]:
    """Per feature: its thresholds, their float32 neighbours, and IEEE specials."""
    raw = EnsembleAttributes(node)
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


def _check_rows(model: onnx.ModelProto, X: np.ndarray, variant: str) -> None:
    """Batch, one row at a time and prange paths of one kernel variant against ORT on rows X."""
    kernel = ForestKernel.from_onnx(model, **VARIANTS[variant])
    ref = _ort_predict(_session_cache(model), X, kernel.n_outputs)
    _assert_bits_equal(kernel.predict(X), ref)  # batch
    ones = np.concatenate([kernel.predict(X[i : i + 1]) for i in range(len(X))])
    _assert_bits_equal(ones, ref)  # one row
    par = ForestKernel.from_onnx(model, n_threads=2, parallel_min_rows=1, **VARIANTS[variant])
    _assert_bits_equal(par.predict(X), ref)  # prange


def _check(model: onnx.ModelProto, data, variant: str) -> None:
    node = _tree_node(model)
    n_features = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value or EnsembleAttributes(node).n_features
    _check_rows(model, data.draw(_rows(node, n_features)), variant)


_SESSIONS: dict[bytes, ort.InferenceSession] = {}


def _session_cache(model: onnx.ModelProto) -> ort.InferenceSession:
    """One ORT session per distinct graph (keyed by its bytes, not its id)."""
    key = model.SerializeToString()
    if key not in _SESSIONS:
        _SESSIONS[key] = _session(model)
    return _SESSIONS[key]


def _modes_for(family: str) -> tuple[str, ...]:
    """The modes `ForestKernel.modes` offers for a family's graph."""
    return ("node",) + ("bitvector",) * (family not in MULTI_WEIGHT) + ("oblivious",) * (family in OBLIVIOUS)


def _variants_for(family: str) -> list[str]:
    return ["generic", *_modes_for(family)]


@pytest.mark.parametrize("family,variant", [(f, v) for f in FAMILIES + CLASSIFIERS_AND_LINKS for v in _variants_for(f)])
@SETTINGS
@given(data=st.data())
def test_matches_onnxruntime_bit_for_bit(graphs, family, variant, data):
    _check(graphs[family], data, variant)


def test_layout_chosen(graphs):
    for family in FAMILIES + CLASSIFIERS_AND_LINKS:
        k = ForestKernel.from_onnx(graphs[family])
        assert k.layout == ("generic" if family in MULTI_WEIGHT else "fast"), family
        assert k.modes == _modes_for(family), family


def test_bitvectors_span_words_past_64_leaves(graphs):
    k = ForestKernel.from_onnx(graphs["lightgbm-100-leaves"], mode="bitvector")
    assert k._bits.n_words == 2 and not k._bits.vectorised  # the one-row-at-a-time scan serves batches


def test_bitvector_refuses_several_weights_per_leaf(graphs):
    for family in sorted(MULTI_WEIGHT):
        with pytest.raises(ValueError, match="no bitvector mode for leaves with several weights"):
            ForestKernel.from_onnx(graphs[family], mode="bitvector")
        hostile("forest graph", f"bitvector mode on {family}")


def test_output_widths(graphs):
    """n_targets is the trees' width; n_outputs what predict writes (2 for the binary tail)."""
    widths = {
        "lightgbm-binary": (1, 2),
        "lightgbm-multiclass": (3, 3),
        "random-forest-classifier": (3, 3),
        "lightgbm-poisson": (1, 1),
        "lightgbm-binary-softmax": (2, 2),
        "lightgbm-sigmoid": (1, 1),
    }
    for family, (n_targets, n_outputs) in widths.items():
        k = ForestKernel.from_onnx(graphs[family])
        assert (k.n_targets, k.n_outputs) == (n_targets, n_outputs), family
    k = ForestKernel.from_onnx(graphs["lightgbm-binary"])
    assert k.binary and k.post_transform == "LOGISTIC"
    assert ForestKernel.from_onnx(graphs["lightgbm-gamma"]).link == "exp"
    assert ForestKernel.from_onnx(graphs["lightgbm-sigmoid"]).link == "sigmoid"


def test_large_batch_blocks_and_tails(graphs):
    """More rows than one block, and a row count that leaves tails of 1..7 rows."""
    rng = np.random.default_rng(1)
    for family in ("lightgbm", "catboost", "lightgbm-multiclass", "lightgbm-binary"):
        X = rng.normal(size=(300, F)).astype(np.float32)
        X[rng.random(X.shape) < 0.1] = np.nan
        for variant in _modes_for(family):
            k = ForestKernel.from_onnx(graphs[family], **VARIANTS[variant])
            ref = _ort_predict(_session_cache(graphs[family]), X, k.n_outputs)
            for n in (2, 7, 9, 129, 300):
                _assert_bits_equal(k.predict(X[:n]), ref[:n])


def test_columns_read_a_wider_matrix_in_place(graphs):
    """``columns`` maps graph features into a wider matrix (the plan's union of features):
    the same bits as gathering those columns first, for every variant."""
    rng = np.random.default_rng(2)
    wide = rng.normal(size=(40, F + 5)).astype(np.float32)
    wide[rng.random(wide.shape) < 0.1] = np.nan
    columns = rng.permutation(F + 5)[:F]
    narrow = np.ascontiguousarray(wide[:, columns])
    for family in ("xgboost", "random-forest-2-targets", "lightgbm-multiclass", "catboost"):
        for variant in _variants_for(family):
            reference = ForestKernel.from_onnx(graphs[family], **VARIANTS[variant])
            mapped = ForestKernel.from_onnx(graphs[family], columns=columns, **VARIANTS[variant])
            for n in (1, 40):
                _assert_bits_equal(mapped.predict(wide[:n]), reference.predict(narrow[:n]))
    with pytest.raises(ValueError, match="columns are mapped"):
        ForestKernel.from_onnx(graphs["xgboost"], columns=columns[:2])
    hostile("forest graph", "columns shorter than the features read")


# ------------------------------------------------------------ synthetic graphs


def _graph(
    node: onnx.NodeProto,
    n_features: int = 3,
    n_targets: int = 1,
    tail: list[onnx.NodeProto] = (),
    out_type=TensorProto.FLOAT,
    ml_opset: int = 3,
    input_name: str = "X",
):
    out = tail[-1].output[0] if tail else node.output[0]
    g = helper.make_graph(
        [node, *tail],
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n_features])],
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
    node = forest.synthetic_node(n_trees=11)
    a = {x.name: x for x in node.attribute}
    modes = list(helper.get_attribute_value(a["nodes_modes"]))
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
    node = forest.synthetic_node(n_trees=10, n_targets=n_targets, mode="BRANCH_LT")
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


def _check_synthetic(model: onnx.ModelProto, X: np.ndarray, n_outputs: int) -> None:
    ref = _ort_predict(_session_cache(model), X, n_outputs)
    for variant, kw in VARIANTS.items():
        try:
            k = ForestKernel.from_onnx(model, **kw)
        except ValueError as e:  # MIN/MAX and several-weight leaves: generic only; symmetric trees only
            assert variant in ("bitvector", "oblivious") and f"no {variant} mode" in str(e)
            continue
        _assert_bits_equal(k.predict(X), ref)
        _assert_bits_equal(np.concatenate([k.predict(X[i : i + 1]) for i in range(len(X))]), ref)


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
        node, T = forest.synthetic_node(**spec), spec.get("n_targets", 1)
    _check_synthetic(_graph(node, n_targets=T), X, T)


def _post_node(n_targets: int, aggregate: str, post: str, n_base: int, partial: bool) -> onnx.NodeProto:
    """Synthetic trees with a post_transform; ``partial``: target 1 is scored by some leaves only,
    so rows that miss them read 0 for it (ORT's has_score) whatever the base value."""
    node = forest.synthetic_node(n_trees=5, n_targets=n_targets, aggregate=aggregate)
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    if partial:
        ids, leaves = a["target_ids"], a["target_nodeids"]
        keep = [k for k in range(len(ids)) if not (ids[k] == 1 and leaves[k] != 3)]
        for name in ("target_treeids", "target_nodeids", "target_ids", "target_weights"):
            a[name] = [a[name][k] for k in keep]
    a["target_weights"] = [w * 3.7 - 1.0 for w in a["target_weights"]]
    a["base_values"] = [0.25 * (j + 1) for j in range(n_base)]
    a["post_transform"] = post
    if not n_base:
        del a["base_values"]
    return helper.make_node("TreeEnsembleRegressor", ["X"], ["Y"], domain="ai.onnx.ml", **a)


POST_SPECS = [
    (K, agg, post, n_base, partial)
    for K in (1, 3)
    for agg in ("SUM", "AVERAGE", "MIN", "MAX")
    for post in ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO")
    for n_base in sorted({0, K})
    for partial in ((False, True) if K > 1 else (False,))
]


@pytest.mark.parametrize("spec", POST_SPECS, ids=lambda s: "-".join(map(str, s)))
@settings(max_examples=12, deadline=None, derandomize=True)
@given(X=_synthetic_rows())
def test_post_transforms_and_aggregates(spec, X):
    """Every aggregate × post_transform × base_values size, K = 1 (ORT ignores the transform) and K = 3."""
    K = spec[0]
    _check_synthetic(_graph(_post_node(*spec), n_targets=K), X, K)


def test_double_tensors_refused_like_onnxruntime():
    model = _graph(_tensor_node(np.float64))
    with pytest.raises(Exception, match="could not unpack tensor attribute"):
        _session(model)
    with pytest.raises(ValueError, match="nodes_values_as_tensor has dtype float64"):
        ForestKernel.from_onnx(model)
    hostile("forest graph", "double tensor thresholds")


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
            _check_synthetic(model, X, 1)


# ------------------------------------------------------------ Exp: ORT's MLAS kernel


@njit(cache=True)
def _exp_all(x, out, variant):
    for i in range(x.shape[0]):
        out[i] = mlas_exp(x[i], variant)


def _ort_unary(op: str, x: np.ndarray) -> np.ndarray:
    g = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])],
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    return _session_cache(model).run(None, {"x": x})[0]


def _float32_sweep(stride: int) -> np.ndarray:
    """Every ``stride``-th float32 bit pattern, plus every pattern within 4096 of the edges of exp's
    range (under/overflow, subnormal outputs) and the specials."""
    bits = np.arange(0, 1 << 32, stride, dtype=np.uint64)
    edges = [np.float32(v) for v in (-103.972084, -87.33654, -88.7228, 88.72284, 88.77626, 0.0)]
    near = [np.arange(-4096, 4097, dtype=np.int64) + np.int64(np.array(e).view(np.int32)) for e in edges]
    near = [n[(n >= -(1 << 31)) & (n < (1 << 31))].astype(np.int32).view(np.uint32) for n in near]
    x = np.concatenate([bits.astype(np.uint32), *near]).view(np.float32)
    return np.concatenate([x, np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)])


def test_exp_matches_onnxruntime_exp_kernel():
    """The ``Exp`` link against ORT's own Exp op: 0 differing bits on ~16.7M float32 values
    (every 257th bit pattern, the range edges, specials), on the MLAS variant this CPU runs.
    An exhaustive run over all 2^32 patterns found 0 differences on this project's machines."""
    x = _float32_sweep(257)
    got = np.empty_like(x)
    _exp_all(x, got, EXP_VARIANT)
    _assert_bits_equal(got, _ort_unary("Exp", x))


@njit(cache=True)
def _logistic_all(x, out):
    for i in range(x.shape[0]):
        out[i] = mlas_logistic(x[i])


def test_sigmoid_matches_onnxruntime_sigmoid_kernel():
    """The ``Sigmoid`` link against ORT's own Sigmoid op: 0 differing bits on the same sweep (an
    exhaustive run over all 2^32 patterns found 0 differences on this project's machines)."""
    x = _float32_sweep(257)
    got = np.empty_like(x)
    _logistic_all(x, got)
    _assert_bits_equal(got, _ort_unary("Sigmoid", x))


def test_exp_variants_agree_on_normal_results():
    """MLAS's two x86 kernels differ only where 2^m is rebuilt: subnormal results. Normal results
    must agree bit for bit (the variant this CPU does not run is checked this way)."""
    x = _float32_sweep(1031)
    a, b = np.empty_like(x), np.empty_like(x)
    _exp_all(x, a, EXP_SCALEF)
    _exp_all(x, b, EXP_TWO_SCALE)
    normal = np.abs(a) >= np.finfo(np.float32).tiny
    _assert_bits_equal(a[normal], b[normal])
    assert ((a == b) | np.isnan(a)).mean() > 0.99


# ------------------------------------------------------------ categorical chains


N_CATEGORIES = 40


@pytest.fixture(scope="module")
def categorical():
    """A LightGBM model with a categorical feature 0 (40 codes), converted by onnxmltools: its
    categorical splits reach ONNX as runs of BRANCH_EQ whose true branches share one subtree."""
    import lightgbm as lgb
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    rng = np.random.default_rng(7)
    n = 4000
    X = np.column_stack([rng.integers(0, N_CATEGORIES, n), rng.normal(size=(n, F - 1))]).astype(np.float32)
    X[rng.random(n) < 0.05, 1] = np.nan
    effect = rng.normal(size=N_CATEGORIES)
    y = effect[X[:, 0].astype(int)] + 0.5 * np.nan_to_num(X[:, 1]) + 0.1 * rng.normal(size=n)
    params = {"objective": "regression", "num_leaves": 15, "verbose": -1, "min_data_per_group": 5, "cat_smooth": 1}
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[0]), num_boost_round=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = onnxmltools.convert_lightgbm(
            booster, initial_types=[("x", FloatTensorType([None, F]))], target_opset=15, zipmap=False
        )
    return model


def _categorical_rows(n_rows: int) -> st.SearchStrategy:
    codes = [float(c) for c in range(-3, N_CATEGORIES + 5)]  # seen, unseen, negative
    odd = [np.nan, -0.0, 0.5, 2.5, 3.0000002, 1e9, -1e9, np.inf, -np.inf, 65536.0, 70000.0]
    cat = st.one_of(st.sampled_from(codes), st.sampled_from(odd), st.floats(width=32))
    num = st.one_of(st.floats(-3, 3, width=32), st.just(np.nan))
    row = st.tuples(cat, *([num] * (F - 1)))
    return st.lists(row, min_size=1, max_size=n_rows).map(lambda rs: np.array(rs, dtype=np.float32))


def test_categorical_runs_become_chains(categorical):
    k = ForestKernel.from_onnx(categorical)
    modes = find_tree_ensembles(categorical)[0].modes
    assert "BRANCH_EQ" in modes and k.n_chains > 0 and k.layout == "fast"
    eq = int((EnsembleAttributes(_tree_node(categorical)).modes == forest.SplitMode.BRANCH_EQ).sum())
    assert k.n_chains < eq / 2, (k.n_chains, eq)  # runs of several EQ nodes, one test each


@pytest.mark.parametrize("variant", _variants_for("lightgbm"))
@settings(max_examples=40, deadline=None, derandomize=True)
@given(X=_categorical_rows(24))
def test_categorical_matches_onnxruntime(categorical, variant, X):
    """Integer codes seen and unseen, negative codes, non-integers, huge values, ±0, ±inf, NaN."""
    _check_rows(categorical, X, variant)


def _chain_node(values, tracks, neq: bool = False) -> onnx.NodeProto:
    """One tree: a run of BRANCH_EQ on feature 0 (``values``, ``tracks``) whose true branches all
    lead to node 1 (a split on feature 1 between leaves 1.0 and 2.0) and whose last false branch
    is a leaf 4.0; or a lone NEQ. Node ids: 0 the head, 1 the shared split, 2.. the rest of the
    run, then the three leaves."""
    n = len(values)
    rest = list(range(2, n + 1))  # ids of the run after its head
    le, gt, end = n + 1, n + 2, n + 3  # leaf ids
    modes = ["BRANCH_NEQ" if neq else "BRANCH_EQ", "BRANCH_LEQ", *["BRANCH_EQ"] * len(rest), "LEAF", "LEAF", "LEAF"]
    run = [0, *rest]
    false_of = {i: (run[k + 1] if k + 1 < len(run) else end) for k, i in enumerate(run)}
    true_of = {i: 1 for i in run}
    true_of[1], false_of[1] = le, gt
    ids = list(range(len(modes)))
    return helper.make_node(
        "TreeEnsembleRegressor",
        ["X"],
        ["Y"],
        domain="ai.onnx.ml",
        n_targets=1,
        nodes_treeids=[0] * len(modes),
        nodes_nodeids=ids,
        nodes_featureids=[0, 1, *[0] * len(rest), 0, 0, 0],
        nodes_values=[values[0], 0.25, *values[1:], 0, 0, 0],
        nodes_modes=modes,
        nodes_truenodeids=[true_of.get(i, 0) for i in ids],
        nodes_falsenodeids=[false_of.get(i, 0) for i in ids],
        nodes_missing_value_tracks_true=[tracks[0], 0, *tracks[1:], 0, 0, 0],
        target_treeids=[0, 0, 0],
        target_nodeids=[le, gt, end],
        target_ids=[0, 0, 0],
        target_weights=[1.0, 2.0, 4.0],
    )


@pytest.mark.parametrize(
    "values,tracks,neq",
    [
        ((3.0, 7.0, 0.0, 40.0), (0, 0, 0, 0), False),  # bitset
        ((3.0, 7.0, 0.0), (0, 1, 0), False),  # NaN to the member side (a tracking node)
        ((2.5, -1.0, 7.0, 1e9), (0, 0, 0, 0), False),  # list: non-integers, negatives, huge
        ((np.nan, 1.0), (0, 0), False),  # a NaN category never matches
        ((5.0,), (0,), True),  # NEQ
        ((5.0,), (1,), True),  # NEQ tracking NaN
    ],
)
def test_synthetic_chains(values, tracks, neq):
    model = _graph(_chain_node(values, tracks, neq), n_features=2)
    k = ForestKernel.from_onnx(model)
    assert k.n_chains == 1
    col0 = [-1.0, -0.0, 0.0, 0.5, 1.0, 2.5, 3.0, 5.0, 7.0, 7.5, 40.0, 41.0, 1e9, np.nan, np.inf, -np.inf]
    X = np.array([[v, w] for v in col0 for w in (-1.0, 1.0, np.nan)], dtype=np.float32)
    _check_synthetic(model, X, 1)


# Values ORT folds into set nodes (integers 1..32) and values it does not, to draw runs from.
_RUN_VALUES = [1.0, 2.0, 3.0, 7.0, 31.0, 32.0, 0.0, -0.0, 33.0, 2.5, -1.0, 1e9]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(run=st.lists(st.tuples(st.sampled_from(_RUN_VALUES), st.integers(0, 1)), min_size=1, max_size=7))
def test_equal_runs_route_nan_as_onnxruntime(run):
    """Runs of BRANCH_EQ with any mix of values and missing-value flags: members, non-members
    and NaN go where ORT 1.32 sends them (it folds values 1..32 into set nodes that keep only
    their first node's NaN flag)."""
    values, tracks = zip(*run)
    model = _graph(_chain_node(values, tracks), n_features=2)
    col0 = [*sorted(set(values)), np.nan, 4.0, 0.5, 1e9 + 64]
    X = np.array([[v, w] for v in col0 for w in (-1.0, 1.0, np.nan)], dtype=np.float32)
    _check_synthetic(model, X, 1)


# ------------------------------------------------------------- shared nodes (DAG trees)


def _gadget_tree(draw_bool, draw_value, depth: int = 0, nodes: list | None = None) -> int:
    """A subtree in the converters' categorical-gadget shape: a run of LT/LEQ tests on one feature,
    each false exit the next test, every true exit (and the last false exit) one of two shared
    subtrees; nested once. Appends nodes [mode, feature, value, true, false, tracks, weight] and
    returns the subtree's id (children get larger ids than every parent that points to them)."""
    me = len(nodes)
    if depth >= 2 or (depth > 0 and draw_bool()):
        nodes.append(["LEAF", 0, 0.0, 0, 0, 0, draw_value()])
        return me
    n_tests = 2 + int(abs(draw_value()) * 3) % 3  # 3+ exits onto 2 subtrees: some are shared
    run = [len(nodes) + k for k in range(n_tests)]
    for k in range(n_tests):
        nodes.append(["BRANCH_LT" if draw_bool() else "BRANCH_LEQ", depth, float(k) + 0.5, -1, -1, int(draw_bool()), 0])
    a = _gadget_tree(draw_bool, draw_value, depth + 1, nodes)
    b = _gadget_tree(draw_bool, draw_value, depth + 1, nodes)
    for k, i in enumerate(run):
        nodes[i][3] = a if draw_bool() else b
        nodes[i][4] = run[k + 1] if k + 1 < n_tests else (b if nodes[i][3] == a else a)
    return me


def _dag_node(seed: int) -> onnx.NodeProto:
    rng = np.random.default_rng(seed)
    attrs = {k: [] for k in ("tree", "id", "mode", "feat", "val", "true", "false", "miss")}
    targets = {k: [] for k in ("tree", "id", "w")}
    for t in range(4):
        nodes = []
        _gadget_tree(lambda: bool(rng.random() < 0.4), lambda: float(rng.normal()), 0, nodes)
        for i, (mode, feat, val, true, false, miss, w) in enumerate(nodes):
            for k, v in zip(attrs, (t, i, mode, feat, val, true, false, miss)):
                attrs[k].append(v)
            if mode == "LEAF":
                targets["tree"].append(t)
                targets["id"].append(i)
                targets["w"].append(w)
    return helper.make_node(
        "TreeEnsembleRegressor",
        ["X"],
        ["Y"],
        domain="ai.onnx.ml",
        n_targets=1,
        nodes_treeids=attrs["tree"],
        nodes_nodeids=attrs["id"],
        nodes_modes=attrs["mode"],
        nodes_featureids=attrs["feat"],
        nodes_values=attrs["val"],
        nodes_truenodeids=attrs["true"],
        nodes_falsenodeids=attrs["false"],
        nodes_missing_value_tracks_true=attrs["miss"],
        target_treeids=targets["tree"],
        target_nodeids=targets["id"],
        target_ids=[0] * len(targets["id"]),
        target_weights=targets["w"],
    )


@pytest.mark.parametrize("seed", range(12))
def test_shared_nodes_match_onnxruntime(seed):
    """Trees whose nodes have several parents (the converters' categorical gadgets): the node
    layout places each shared node once (jump slots) and matches ORT; QuickScorer declines."""
    node = _dag_node(seed)
    model = _graph(node, n_features=3)
    k = ForestKernel.from_onnx(model)
    assert k.modes == ("node",) and "shared" in k.mode_choice.reason
    grid = [-1.0, 0.0, 0.5, 0.7, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, np.nan]
    X = np.array(np.meshgrid(grid, grid, grid)).reshape(3, -1).T.astype(np.float32)
    _check_synthetic(model, np.ascontiguousarray(X), 1)


def test_converter_categorical_graph_is_not_copied():
    """A LightGBM categorical model through ``fastinfer.adapters.lightgbm.lightgbm_graph`` (interval
    gadgets sharing their exits): exact against ORT, and laid out in about as many slots as the
    graph has nodes (copying every shared subtree per path took 20-40x)."""
    import lightgbm as lgb

    from fastinfer.adapters.lightgbm import lightgbm_graph

    rng = np.random.default_rng(7)
    n = 3000
    X = np.column_stack([rng.integers(0, N_CATEGORIES, n), rng.normal(size=(n, F - 1))]).astype(np.float32)
    y = rng.normal(size=N_CATEGORIES)[X[:, 0].astype(int)] + 0.5 * X[:, 1] + 0.1 * rng.normal(size=n)
    params = {"objective": "regression", "num_leaves": 15, "verbose": -1, "min_data_per_group": 5, "cat_smooth": 1}
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[0]), num_boost_round=30)
    model = lightgbm_graph(booster, F)
    k = ForestKernel.from_onnx(model)
    assert k.layout == "fast" and len(k._nodes.nodes) // 2 < 2 * len(EnsembleAttributes(_tree_node(model)).treeids)
    rows = np.array(
        [[c, *rng.normal(size=F - 1)] for c in [*range(-3, N_CATEGORIES + 3), 0.5, 2.5, -0.0, np.nan, 1e9]],
        dtype=np.float32,
    )
    for variant in ("node", "generic"):
        _check_rows(model, rows, variant)


# ------------------------------------------------------------- every family in a compiled run


def _single_tree_graphs(model: onnx.ModelProto) -> list[onnx.ModelProto]:
    """The graph itself when the kernel takes it whole, else each TreeEnsembleRegressor node alone
    (ensembles, quantile sets and NGBoost carry several), reading its own input."""
    try:
        ForestKernel.from_onnx(model)
        return [model]
    except ValueError:
        pass
    out = []
    for node in model.graph.node:
        if node.op_type == "TreeEnsembleRegressor":
            alone = onnx.NodeProto()
            alone.CopyFrom(node)
            del alone.input[:]
            alone.input.append("X")
            attrs = EnsembleAttributes(alone)
            out.append(_graph(alone, n_features=attrs.n_features, n_targets=attrs.n_targets))
    return out


def test_every_compiled_family_graph(compiled_run):
    """The tree graphs ``compile_run`` wrote for every family, in every mode they allow."""
    rng = np.random.default_rng(3)
    checked = []
    for path in sorted(compiled_run.rglob("*.onnx")):
        for model in _single_tree_graphs(onnx.load(str(path))):
            kernel = ForestKernel.from_onnx(model)
            values = _row_values(_tree_node(model), kernel.n_features)
            rows = [[rng.choice(v) for v in values] for _ in range(64)] + [[np.nan] * kernel.n_features]
            for variant in ("generic", *kernel.modes):
                _check_rows(model, np.array(rows, dtype=np.float32), variant)
            checked.append(path.parent.name)
    assert {"family=lightgbm", "family=xgboost", "family=catboost", "family=random_forest"} <= set(checked), checked


# ------------------------------------------------------------- graph handling


def test_accepted_tails(graphs):
    node = forest.synthetic_node()
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


def test_binary_tail_with_a_constant_node():
    """Sub's 1 may come from a Constant node instead of an initializer."""
    node = forest.synthetic_node()
    tail = [
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1.0, np.float32))),
        helper.make_node("Sub", ["one", "Y"], ["Q"]),
        helper.make_node("Concat", ["Q", "Y"], ["P"], axis=-1),
    ]
    model = _graph(node, n_targets=2, tail=tail)
    X = np.array([[0.3, 0.1, 2.0], [np.nan, 1.0, -1.0], [3, 3, 3]], dtype=np.float32)
    _check_synthetic(model, X, 2)


def test_refusals():
    node = forest.synthetic_node()
    cases = []
    cast = helper.make_node("Cast", ["Y"], ["Z"], to=TensorProto.DOUBLE)
    cases.append(("Cast .* to DOUBLE", _graph(node, tail=[cast], out_type=TensorProto.DOUBLE)))
    cases.append(("unsupported nodes .*Relu", _graph(node, tail=[helper.make_node("Relu", ["Y"], ["Z"])])))
    two = _graph(forest.synthetic_node())
    two.graph.node.append(forest.synthetic_node())
    cases.append(("2 TreeEnsembleRegressor nodes", two))
    two_exp = _graph(node, tail=[helper.make_node("Exp", ["Y"], ["E"]), helper.make_node("Exp", ["E"], ["Z"])])
    cases.append(("Exp .* after another link", two_exp))
    sub_two = _graph(
        node,
        n_targets=2,
        tail=[helper.make_node("Sub", ["two", "Y"], ["Q"]), helper.make_node("Concat", ["Q", "Y"], ["Z"], axis=1)],
    )
    sub_two.graph.initializer.append(numpy_helper.from_array(np.array([2.0], np.float32), "two"))
    cases.append(("is not 1 - ", sub_two))
    wrong_axis = _graph(
        node,
        n_targets=2,
        tail=[helper.make_node("Sub", ["one", "Y"], ["Q"]), helper.make_node("Concat", ["Q", "Y"], ["Z"], axis=0)],
    )
    wrong_axis.graph.initializer.append(numpy_helper.from_array(np.array([1.0], np.float32), "one"))
    cases.append(("along axis 1", wrong_axis))
    lone_sub = _graph(node, tail=[helper.make_node("Sub", ["one", "Y"], ["Z"])])
    lone_sub.graph.initializer.append(numpy_helper.from_array(np.array([1.0], np.float32), "one"))
    cases.append(("only accepted in the binary tail", lone_sub))
    three = forest.synthetic_node(n_targets=3)
    wide = _graph(
        three,
        n_targets=2,
        tail=[helper.make_node("Sub", ["one", "Y"], ["Q"]), helper.make_node("Concat", ["Q", "Y"], ["Z"], axis=1)],
    )
    wide.graph.initializer.append(numpy_helper.from_array(np.array([1.0], np.float32), "one"))
    cases.append(("binary tail .* needs one target, not 3", wide))
    for pattern, model in cases:
        with pytest.raises(ValueError, match=pattern):
            ForestKernel.from_onnx(model)
        hostile("forest graph", pattern)
    probit = forest.synthetic_node()
    probit.attribute.append(helper.make_attribute("post_transform", "PROBIT"))
    with pytest.raises(ValueError, match="post_transform PROBIT"):
        ForestKernel.from_node(probit)
    clf = helper.make_node("TreeEnsembleClassifier", ["X"], ["L", "P"], domain="ai.onnx.ml")
    with pytest.raises(ValueError, match="TreeEnsembleClassifier"):
        ForestKernel.from_node(clf)
    with pytest.raises(ValueError, match="mode must be one of"):
        ForestKernel.from_node(node, mode="fastest")
    k = ForestKernel.from_node(node)
    with pytest.raises(ValueError, match="float32"):
        k.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="features"):
        k.predict(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="out must be"):
        k.predict(np.zeros((2, 3), dtype=np.float32), np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        k.predict(np.zeros((3, 6), dtype=np.float32)[:, ::2])
    for case in (
        "PROBIT",
        "classifier node",
        "unknown mode",
        "float64 rows",
        "too few features",
        "wrong out",
        "strided rows",
    ):
        hostile("forest graph" if case in ("PROBIT", "classifier node", "unknown mode") else "forest input", case)


def test_base_values_of_another_width_refused_like_onnxruntime():
    node = _post_node(3, "SUM", "NONE", 3, False)
    a = next(x for x in node.attribute if x.name == "base_values")
    a.CopyFrom(helper.make_attribute("base_values", [0.5]))
    model = _graph(node, n_targets=3)
    with pytest.raises(Exception, match="base_values should have 0 or 3 values"):
        _session(model)
    with pytest.raises(ValueError, match="base_values has 1 values"):
        ForestKernel.from_onnx(model)
    hostile("forest graph", "base_values of another width than n_targets")


def test_a_cycle_is_refused():
    node = helper.make_node(
        "TreeEnsembleRegressor",
        ["X"],
        ["Y"],
        domain="ai.onnx.ml",
        n_targets=1,
        nodes_treeids=[0, 0, 0],
        nodes_nodeids=[0, 1, 2],
        nodes_featureids=[0, 0, 0],
        nodes_values=[0.0, 1.0, 0.0],
        nodes_modes=["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"],
        nodes_truenodeids=[1, 0, 0],
        nodes_falsenodeids=[2, 2, 0],
        target_treeids=[0],
        target_nodeids=[2],
        target_ids=[0],
        target_weights=[1.0],
    )
    with pytest.raises(ValueError, match="cycle"):
        ForestKernel.from_node(node)
    hostile("forest graph", "a tree with a cycle")


def test_find_tree_ensembles(graphs):
    info = find_tree_ensembles(graphs["xgboost"])
    assert len(info) == 1 and info[0].supported and info[0].n_trees == 30
    assert info[0].modes == ("BRANCH_LT",) and info[0].has_missing_tracks
    (softmax,) = find_tree_ensembles(graphs["lightgbm-multiclass"])
    assert softmax.supported and softmax.post_transform == "SOFTMAX" and softmax.n_targets == 3
    bad = _graph(forest.synthetic_node())
    bad.graph.node[0].attribute.append(helper.make_attribute("post_transform", "PROBIT"))
    (i,) = find_tree_ensembles(bad)
    assert not i.supported and "PROBIT" in i.reason


# ------------------------------------------------------------- modes, threads, allocation


def test_calibrate_picks_a_mode_and_says_why(graphs):
    k = ForestKernel.from_onnx(graphs["lightgbm"])
    assert k.mode == "node" and "until calibrated" in k.mode_choice.reason
    choice = k.calibrate(64, repeat=5)
    assert choice.mode == k.mode and set(choice.timings_us) == {"node", "bitvector"} and choice.rows == 64
    assert choice.mode in choice.reason and "µs" in choice.reason
    X = k.calibration_rows(64)
    ref = _ort_predict(_session_cache(graphs["lightgbm"]), X, 1)
    for mode in k.modes:  # whichever is kept, the bits are ORT's
        k.mode = mode
        _assert_bits_equal(k.predict(X), ref)
    only = ForestKernel.from_onnx(graphs["random-forest-2-targets"])
    assert only.calibrate(8, repeat=3).mode == "node"
    assert (
        "only mode" in only.mode_choice.reason
        and "several weights" in ForestKernel.from_onnx(graphs["random-forest-2-targets"]).mode_choice.reason
    )


def test_one_row_never_starts_a_thread(graphs, monkeypatch):
    """With threads allowed from 1 row, a single row still runs the sequential one-row kernel."""

    def refuse(*args):
        raise AssertionError("a parallel kernel ran for one row")

    for name in (
        "node_rows_parallel",
        "bitvector_rows_parallel",
        "bitvector_blocks_parallel",
        "generic_rows_parallel",
        "oblivious_rows_parallel",
    ):
        monkeypatch.setattr(kernel_module, name, refuse)
    X = np.zeros((1, F), dtype=np.float32)
    for family in ("lightgbm", "random-forest-2-targets", "catboost"):
        for variant in _variants_for(family):
            k = ForestKernel.from_onnx(graphs[family], n_threads=2, parallel_min_rows=1, **VARIANTS[variant])
            k.predict(X)
            with pytest.raises(AssertionError, match="parallel kernel ran"):
                k.predict(np.zeros((2, F), dtype=np.float32))


def test_predict_into_out_allocates_nothing(graphs):
    kernels = [
        ForestKernel.from_onnx(graphs[f], **VARIANTS[v])
        for f in ("lightgbm", "lightgbm-binary", "catboost")
        for v in _variants_for(f)
    ]
    X1 = np.zeros((1, F), dtype=np.float32)
    XB = np.zeros((64, F), dtype=np.float32)
    outs = [(np.empty((1, k.n_outputs), np.float32), np.empty((64, k.n_outputs), np.float32)) for k in kernels]
    for k, (o1, ob) in zip(kernels, outs):
        k.predict(X1, o1), k.predict(XB, ob)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(100):
            for k, (o1, ob) in zip(kernels, outs):
                assert k.predict(X1, o1) is o1
                k.predict(XB, ob)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(
        s.size_diff
        for s in after.compare_to(before, "filename")
        if s.size_diff > 0 and "kernels/forest" in str(s.traceback)
    )
    assert grown == 0


def test_numba_cache_follows_the_package_source():
    """A stale stamp (a sibling module changed since the kernels were cached) empties the cache
    index, so kernels compile again from the current source; the stamp is then current."""
    from pathlib import Path

    from fastinfer.kernels.forest import cache, node

    stamp = Path(node.node_one_row._cache.cache_path) / cache._STAMP
    stamp.write_text("stale")
    cache.refresh(node)
    assert stamp.read_text() == cache._source_digest()
    k = ForestKernel.from_node(forest.synthetic_node())
    X = np.array([[0.1, np.nan, 2.0]], dtype=np.float32)
    _check_synthetic(_graph(forest.synthetic_node()), X, 1)
    assert k.predict(X).shape == (1, 1)


def test_warmup_runs():
    forest.warmup()
    forest.warmup(("node", "bitvector"))
