"""The forest kernel's oblivious mode against ONNX Runtime on the same graphs.

CatBoost exports only oblivious (symmetric) trees to ONNX, and these are what the mode is for:
every node of a level tests one split, so a row's leaf is an integer built from the levels'
tests. Real CatBoost models (regressor, Logloss and MultiClass classifiers, Poisson with its
``Exp`` link), converted by fastinfer's own CatBoost adapter and as CatBoost itself exports them,
and synthetic oblivious forests (every split mode, NaN routing, depths that are not a multiple of
the kernel's level group, nodes listed in shuffled order with children swapped, several targets)
are evaluated by ORT (1 intra-op thread) and by the oblivious kernels on the one-row, batch and
parallel paths. The bound asserted is bit-identity (0 ulp).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from fastinfer.kernels.forest import ForestKernel, SplitMode, find_tree_ensembles
from fastinfer.kernels.forest import codes as C
from fastinfer.kernels.forest.codes import OB_GROUP, OB_ROWS
from fastinfer.kernels.forest.read import EnsembleAttributes

from .test_forest import (
    SETTINGS,
    _assert_bits_equal,
    _check_rows,
    _graph,
    _lightgbm,
    _ort_predict,
    _row_values,
    _rows,
    _session_cache,
    _tree_node,
)

F = 6
DEPTH = 6  # CatBoost's default, as in the benchmarks' model
CATBOOST = ["regressor", "regressor-raw-export", "binary", "multiclass", "poisson"]


def _training_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(500, F)).astype(np.float32)
    y = 2 * X[:, 0] + np.sin(3 * X[:, 1]) + X[:, 2] * X[:, 3] + 0.3 * rng.normal(size=500)
    X[rng.random(X.shape) < 0.08] = np.nan  # CatBoost's default nan_mode Min: NaN below every border
    return X, y.astype(np.float32)


@pytest.fixture(scope="module")
def catboost_graphs(tmp_path_factory):
    """Each CatBoost model through fastinfer's adapter (the served graph); the regressor also as
    CatBoost's own ``save_model(format="onnx")`` writes it."""
    import catboost

    from fastinfer.adapters import CATBOOST as ADAPTER

    X, y = _training_data()
    kw = {"iterations": 40, "depth": DEPTH, "verbose": 0, "random_seed": 0, "thread_count": 1}
    models = {
        "regressor": catboost.CatBoostRegressor(**kw).fit(X, y),
        "binary": catboost.CatBoostClassifier(**kw).fit(X, (y > np.median(y)).astype(int)),
        "multiclass": catboost.CatBoostClassifier(**kw).fit(X, np.digitize(y, np.quantile(y, [1 / 3, 2 / 3]))),
        "poisson": catboost.CatBoostRegressor(loss_function="Poisson", **kw).fit(X, np.exp(y / 3)),
    }
    graphs = {name: ADAPTER.convert(m, None, F, None).model for name, m in models.items()}
    path = tmp_path_factory.mktemp("catboost") / "regressor.onnx"
    models["regressor"].save_model(str(path), format="onnx")
    graphs["regressor-raw-export"] = onnx.load(str(path))
    return graphs


# ------------------------------------------------------------ what CatBoost's ONNX looks like


def test_catboost_exports_what_the_mode_reads(catboost_graphs):
    """CatBoost writes complete trees of one depth, nodes heap-ordered (node i's false child
    2i + 1, true child 2i + 2), every split ``x > border`` (BRANCH_GT) with NaN on the false side
    (tracking off: NaN is below every border, CatBoost's nan_mode Min); one leaf weight per class
    (Logloss: [-s, s] under LOGISTIC, MultiClass: K under SOFTMAX); the regressor's bias as
    one base value. Every such graph offers the oblivious mode."""
    expected = {
        "regressor": (1, "NONE", "identity"),
        "regressor-raw-export": (1, "NONE", "identity"),
        "binary": (2, "LOGISTIC", "identity"),
        "multiclass": (3, "SOFTMAX", "identity"),
        "poisson": (1, "NONE", "exp"),
    }
    for name, model in catboost_graphs.items():
        (info,) = find_tree_ensembles(model)
        a = EnsembleAttributes(_tree_node(model))
        assert info.modes == ("BRANCH_GT",) and not info.has_missing_tracks, name
        n_nodes = 2 ** (DEPTH + 1) - 1
        assert info.n_nodes == info.n_trees * n_nodes, name
        heap = np.tile(np.arange(n_nodes), info.n_trees)
        split = a.modes != SplitMode.LEAF
        assert (a.nodeids == heap).all(), name
        assert (a.falseids[split] == 2 * a.nodeids[split] + 1).all() and (
            a.trueids[split] == 2 * a.nodeids[split] + 2
        ).all()
        kernel = ForestKernel.from_onnx(model)
        assert (kernel.n_targets, kernel.post_transform, kernel.link) == expected[name], name
        assert kernel.modes[-1] == "oblivious", (name, kernel.mode_choice.reason)
        leaves_per_tree = len(a.t_ids) / info.n_trees
        assert leaves_per_tree == 2**DEPTH * kernel.n_targets, name
    assert len(EnsembleAttributes(_tree_node(catboost_graphs["regressor"])).base) == 1


@pytest.mark.parametrize("name", CATBOOST)
@SETTINGS
@given(data=st.data())
def test_catboost_matches_onnxruntime_bit_for_bit(catboost_graphs, name, data):
    """Rows whose values are the borders themselves, their float32 neighbours, NaN, ±inf, ±0 and
    arbitrary floats: batch, one-row and parallel paths."""
    model = catboost_graphs[name]
    _check_rows(model, data.draw(_rows(_tree_node(model), F)), "oblivious")


def _threshold_rows(model: onnx.ModelProto, n_rows: int, seed: int = 0) -> np.ndarray:
    """Rows drawn from each feature's borders exactly, their neighbours and IEEE specials."""
    rng = np.random.default_rng(seed)
    values = _row_values(_tree_node(model), F)
    return np.array([[rng.choice(v) for v in values] for _ in range(n_rows)], dtype=np.float32)


@pytest.mark.parametrize("name", CATBOOST)
def test_catboost_blocks_tails_and_threads(catboost_graphs, name):
    """Batches of one block, of several blocks with a tail, on one and two threads, and rows
    whose every value equals a border."""
    model = catboost_graphs[name]
    a = EnsembleAttributes(_tree_node(model))
    borders = [np.unique(a.values[(a.featureids == f) & (a.modes != SplitMode.LEAF)]) for f in range(F)]
    exact = np.array([[b[k % len(b)] for b in borders] for k in range(max(map(len, borders)))], dtype=np.float32)
    X = np.concatenate([_threshold_rows(model, 3 * OB_ROWS + 7), exact])  # exact: every value a border
    sequential = ForestKernel.from_onnx(model, mode="oblivious")
    parallel = ForestKernel.from_onnx(model, mode="oblivious", n_threads=2, parallel_min_rows=2)
    ref = _ort_predict(_session_cache(model), X, sequential.n_outputs)
    for n in (1, 2, OB_ROWS - 1, OB_ROWS, OB_ROWS + 1, len(X)):
        _assert_bits_equal(sequential.predict(X[:n]), ref[:n])
        _assert_bits_equal(parallel.predict(X[:n]), ref[:n])


def test_calibrate_times_the_oblivious_mode(catboost_graphs):
    k = ForestKernel.from_onnx(catboost_graphs["multiclass"])
    assert k.mode == "oblivious" and k.modes == ("node", "oblivious")  # oblivious until calibrated
    assert "no bitvector mode" in k.mode_choice.reason and "no oblivious mode" not in k.mode_choice.reason
    choice = k.calibrate(64, repeat=5)
    assert set(choice.timings_us) == {"node", "oblivious"} and choice.mode == k.mode
    X = k.calibration_rows(64)
    ref = _ort_predict(_session_cache(catboost_graphs["multiclass"]), X, 3)
    for mode in k.modes:
        k.mode = mode
        _assert_bits_equal(k.predict(X), ref)


# ------------------------------------------------------------ synthetic oblivious forests

COMPARISONS = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT"]
GRID = [-1.5, -0.5, 0.0, 0.25, 1.0, 2.0]  # thresholds: rows drawn from them hit them exactly


def _oblivious_node(
    depths: list[int],
    seed: int,
    n_targets: int = 1,
    aggregate: str = "SUM",
    base: bool = True,
    categorical: bool = False,
) -> onnx.NodeProto:
    """Complete trees of the given depths, each level one (feature, threshold, mode, NaN side).

    Nodes get shuffled ids and are listed in shuffled order (the root first: ORT takes the first
    node listed for a tree as its root), and each node's true and false children are swapped at
    random: the kernel must derive each leaf's index from the tree, not from a numbering.
    ``categorical``: some levels are BRANCH_EQ / BRANCH_NEQ on a value of the grid (a chain).
    """
    rng = np.random.default_rng(seed)
    a = {k: [] for k in ("tree", "node", "feature", "value", "mode", "true", "false", "missing")}
    targets = {k: [] for k in ("tree", "node", "id", "weight")}
    for t, depth in enumerate(depths):
        levels = []
        for _ in range(depth):
            modes = COMPARISONS + (["BRANCH_EQ", "BRANCH_NEQ"] if categorical else [])
            previous = levels[-1][0] if levels else -1
            feature = int(rng.choice([f for f in range(F) if f != previous]))  # no run of EQ on one feature
            levels.append((feature, float(rng.choice(GRID)), str(rng.choice(modes)), int(rng.integers(2))))
        n_nodes = 2 ** (depth + 1) - 1
        ids = rng.permutation(n_nodes)  # heap position -> node id (ORT wants ids below the node count)
        order = np.concatenate([[0], 1 + rng.permutation(n_nodes - 1)])  # listing order, root first
        for h in order.tolist():
            level = int(np.log2(h + 1))
            a["tree"].append(t)
            a["node"].append(int(ids[h]))
            if level == depth:
                a["feature"].append(0), a["value"].append(0.0), a["mode"].append("LEAF")
                a["missing"].append(0), a["true"].append(0), a["false"].append(0)
                for k in range(n_targets):
                    targets["tree"].append(t), targets["node"].append(int(ids[h])), targets["id"].append(k)
                    targets["weight"].append(float(np.float32(rng.normal())))
                continue
            feature, value, mode, missing = levels[level]
            left, right = int(ids[2 * h + 1]), int(ids[2 * h + 2])
            if rng.random() < 0.5:
                left, right = right, left
            a["feature"].append(feature), a["value"].append(value), a["mode"].append(mode)
            a["missing"].append(missing), a["false"].append(left), a["true"].append(right)
    return helper.make_node(
        "TreeEnsembleRegressor",
        ["X"],
        ["Y"],
        domain="ai.onnx.ml",
        n_targets=n_targets,
        aggregate_function=aggregate,
        nodes_treeids=a["tree"],
        nodes_nodeids=a["node"],
        nodes_featureids=a["feature"],
        nodes_values=a["value"],
        nodes_modes=a["mode"],
        nodes_truenodeids=a["true"],
        nodes_falsenodeids=a["false"],
        nodes_missing_value_tracks_true=a["missing"],
        target_treeids=targets["tree"],
        target_nodeids=targets["node"],
        target_ids=targets["id"],
        target_weights=targets["weight"],
        **({"base_values": [0.5 - k for k in range(n_targets)]} if base else {}),
    )


def _grid_rows(max_rows: int = 24) -> st.SearchStrategy:
    near = [float(np.nextafter(np.float32(g), np.float32(d))) for g in GRID for d in (-np.inf, np.inf)]
    value = st.one_of(
        st.sampled_from(GRID), st.sampled_from([*near, np.nan, np.inf, -np.inf, -0.0]), st.floats(width=32)
    )
    return st.lists(st.tuples(*[value] * F), min_size=1, max_size=max_rows).map(
        lambda rs: np.array(rs, dtype=np.float32).reshape(len(rs), F)
    )


SYNTHETIC = [
    dict(depths=[1, 2, 3, 4, 5, 6, 7, 8]),  # levels padded to a multiple of OB_GROUP but 3 and 6
    dict(depths=[6] * 12, n_targets=3),
    dict(depths=[2, 4, 3], n_targets=2, aggregate="AVERAGE", base=False),
    dict(depths=[3, 5, 6, 1], aggregate="AVERAGE"),
    dict(depths=[4, 6, 2, 3], categorical=True),
    dict(depths=[0, 3, 0, 2]),  # a tree that is one leaf
    dict(depths=[9, 10]),
]


@pytest.mark.parametrize("spec", SYNTHETIC, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), data=st.data())
def test_synthetic_oblivious_forests(spec, seed, data):
    K = spec.get("n_targets", 1)
    model = _graph(_oblivious_node(seed=seed, **spec), n_features=F, n_targets=K)
    assert "oblivious" in ForestKernel.from_onnx(model).modes
    _check_rows(model, data.draw(_grid_rows()), "oblivious")


def test_levels_are_padded_to_whole_groups():
    """Depths 4, 6 and 7 take 6, 6 and 9 levels: the added ones test ``<= NaN``, which never holds."""
    model = _graph(_oblivious_node([4, 6, 7], seed=1), n_features=F)
    k = ForestKernel.from_onnx(model, mode="oblivious")
    prog, consts = k._oblivious.prog, k._oblivious.consts
    trees = prog[prog[C.OB_TREES_AT] :][: 3 * C.OB_TREE_FIELDS].reshape(3, C.OB_TREE_FIELDS)
    assert trees[:, C.OB_TREE_LEVELS].tolist() == [6, 6, 9] and OB_GROUP == 3
    thresholds = consts[prog[C.OB_THRESHOLDS_AT] :][:21]
    padded = [4, 5, 19, 20]  # after tree 0's four levels and tree 2's seven
    assert np.isnan(thresholds[padded]).all() and not np.isnan(np.delete(thresholds, padded)).any()
    X = _threshold_rows(model, 300, seed=2)
    _assert_bits_equal(k.predict(X), _ort_predict(_session_cache(model), X, 1))


# ------------------------------------------------------------ ensembles the mode does not take


def _with(node: onnx.NodeProto, **changes) -> onnx.NodeProto:
    """A copy of node with some attributes replaced (lists indexed by position: {i: value})."""
    out = onnx.NodeProto()
    out.CopyFrom(node)
    for name, change in changes.items():
        attr = next((a for a in out.attribute if a.name == name), None)
        if attr is None:
            attr = out.attribute.add()
        if isinstance(change, dict):
            value = list(helper.get_attribute_value(attr))
            for i, v in change.items():
                value[i] = v
        else:
            value = change
        attr.CopyFrom(helper.make_attribute(name, value))
    return out


def _reason(node: onnx.NodeProto, n_targets: int = 1) -> str:
    model = _graph(node, n_features=F, n_targets=n_targets)
    k = ForestKernel.from_onnx(model)
    assert k.modes[-1] != "oblivious"
    with pytest.raises(ValueError, match="no oblivious mode for"):
        ForestKernel.from_onnx(model, mode="oblivious")
    return k.mode_choice.reason


def _heap_node(depth: int = 2, n_targets: int = 1) -> onnx.NodeProto:
    """One complete tree, heap-ordered and unshuffled: node i's children are 2i + 1 and 2i + 2."""
    n = 2 ** (depth + 1) - 1
    internal = 2**depth - 1
    leaves = list(range(internal, n))
    return helper.make_node(
        "TreeEnsembleRegressor",
        ["X"],
        ["Y"],
        domain="ai.onnx.ml",
        n_targets=n_targets,
        nodes_treeids=[0] * n,
        nodes_nodeids=list(range(n)),
        nodes_featureids=[int(np.log2(i + 1)) if i < internal else 0 for i in range(n)],
        nodes_values=[0.5] * n,
        nodes_modes=["BRANCH_LEQ"] * internal + ["LEAF"] * len(leaves),
        nodes_truenodeids=[2 * i + 1 if i < internal else 0 for i in range(n)],
        nodes_falsenodeids=[2 * i + 2 if i < internal else 0 for i in range(n)],
        nodes_missing_value_tracks_true=[0] * n,
        target_treeids=[0] * len(leaves) * n_targets,
        target_nodeids=[i for i in leaves for _ in range(n_targets)],
        target_ids=[k for _ in leaves for k in range(n_targets)],
        target_weights=[float(i + k) for i in leaves for k in range(n_targets)],
    )


def test_ensembles_that_are_not_oblivious_do_not_offer_the_mode(monkeypatch):
    """A real LightGBM model (leaf-wise trees), a level testing two splits (another threshold,
    another feature, another NaN side), a tree not complete to its depth, MIN, shared nodes, a
    leaf adding to one target twice, leaves of one tree adding to different targets, a tree past
    the depth limit: no oblivious mode, and why."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lightgbm = ForestKernel.from_onnx(_lightgbm())
    assert "oblivious" not in lightgbm.modes and "no oblivious mode: trees that are not oblivious" in (
        lightgbm.mode_choice.reason
    )
    node = _heap_node()
    assert ForestKernel.from_node(node).modes[-1] == "oblivious"  # the unchanged tree is oblivious
    assert "level 1 tests more than one split" in _reason(_with(node, nodes_values={2: 0.75}))
    assert "level 1 tests more than one split" in _reason(_with(node, nodes_featureids={2: 3}))
    assert "level 1 tests more than one split" in _reason(
        _with(node, nodes_missing_value_tracks_true=[0, 1, 0] + [0] * 4)
    )
    # node 2 becomes a leaf: leaves at depth 1 beside the splits of node 1
    shallow = _with(node, nodes_modes={2: "LEAF"}, target_treeids=[0] * 5, target_nodeids=[2, 3, 4, 5, 6])
    shallow = _with(shallow, target_ids=[0] * 5, target_weights=[1.0, 2.0, 3.0, 4.0, 5.0])
    assert "leaves at depth 1 beside splits" in _reason(shallow)
    assert "aggregate_function MIN" in _reason(_with(node, aggregate_function="MIN"))
    assert "tree 0 has shared nodes" in _reason(_with(node, nodes_truenodeids={2: 3}))  # leaf 3 under both
    two = _heap_node(n_targets=2)
    assert ForestKernel.from_node(two).modes[-1] == "oblivious"
    assert "to one target twice" in _reason(_with(two, target_ids={1: 0}), n_targets=2)
    missing_one = _with(two, target_ids=[0, 1] * 3 + [0], target_nodeids=[3, 3, 4, 4, 5, 5, 6])
    missing_one = _with(missing_one, target_treeids=[0] * 7, target_weights=[1.0] * 7)
    assert "adding to different targets" in _reason(missing_one, n_targets=2)
    monkeypatch.setattr(C, "OB_MAX_DEPTH", 3)  # 16 in earnest: a tree of 2^17 leaves is slow to build
    assert "deeper than 3 levels" in _reason(_graph(_oblivious_node([4], seed=0), n_features=F).graph.node[0])
