"""A small synthetic forest (warm-up and tests) and `warmup`, which compiles every kernel."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .read import ML_DOMAIN, TREE_OP


def synthetic_node(
    n_trees: int = 9, aggregate: str = "SUM", n_targets: int = 1, mode: str = "BRANCH_LEQ", oblivious: bool = False
) -> onnx.NodeProto:
    """A small forest of depth-2 trees over 3 features; ``oblivious``: both nodes of level 1 test
    one split (feature 1), as in CatBoost's symmetric trees."""
    level_1 = [(1, -0.25, mode, 3, 4), (1, -0.25, mode, 5, 6) if oblivious else (2, 1.0, mode, 5, 6)]
    tree, node, feat, val, mode_, true, false, miss = [], [], [], [], [], [], [], []
    t_tree, t_node, t_id, t_w = [], [], [], []
    for t in range(n_trees):
        for nid, (f, v, m, tt, ff) in enumerate([(t % 3, 0.5, mode, 1, 2), *level_1] + [(0, 0.0, "LEAF", 0, 0)] * 4):
            tree.append(t)
            node.append(nid)
            feat.append(f)
            val.append(v + 0.1 * t)
            mode_.append(m)
            true.append(tt)
            false.append(ff)
            miss.append(int(nid == 0))
            if m == "LEAF":
                for j in range(n_targets):
                    t_tree.append(t)
                    t_node.append(nid)
                    t_id.append(j)
                    t_w.append(0.1 * nid - 0.05 * t + j)
    return helper.make_node(
        TREE_OP,
        ["X"],
        ["Y"],
        domain=ML_DOMAIN,
        n_targets=n_targets,
        aggregate_function=aggregate,
        nodes_treeids=tree,
        nodes_nodeids=node,
        nodes_featureids=feat,
        nodes_values=val,
        nodes_modes=mode_,
        nodes_truenodeids=true,
        nodes_falsenodeids=false,
        nodes_missing_value_tracks_true=miss,
        target_treeids=t_tree,
        target_nodeids=t_node,
        target_ids=t_id,
        target_weights=t_w,
        base_values=[0.5] * n_targets,
    )


def warmup(modes: tuple[str, ...] = ("node", "oblivious")) -> None:
    """Compile (or load from numba's cache) the kernels ``modes`` run, on a tiny forest.

    By default the node and generic kernels, what a plan runs until `ForestKernel.calibrate`
    picks a mode, and the oblivious kernels, which a plan times for every CatBoost model; the
    bitvector kernels load when calibration first packs that layout (pass
    ``("node", "bitvector")`` to load them now).
    """
    from .kernel import ForestKernel

    X = np.array([[0.1, np.nan, 2.0]] * 3, dtype=np.float32)
    for node, kw in (
        (synthetic_node(), {}),
        (synthetic_node(mode="BRANCH_EQ"), {}),
        (synthetic_node(mode="BRANCH_GT", oblivious=True), {}),
        (synthetic_node(n_targets=2), {"layout": "generic"}),
    ):
        k = ForestKernel.from_node(node, n_threads=2, parallel_min_rows=2, **kw)
        for mode in (m for m in k.modes if m in modes):
            k.mode = mode
            k.predict(X[:1])
            k.predict(X)  # parallel path
            k.n_threads = 1
            k.predict(X)  # sequential batch path
            k.n_threads = 2
