"""Compiled evaluation of ONNX ``TreeEnsembleRegressor`` nodes (ai.onnx.ml), bit-identical to
ONNX Runtime's CPU implementation (``tree_ensemble_common.h``, ``tree_ensemble_aggregator.h``,
``ml_common.h``; the ``Exp`` op's MLAS kernel).

One module per step, as the data flows:

``read``       the graph: the node's attributes validated as ORT validates them, and the ops
               after it (``Exp`` link, the binary classifier tail, reshapes)
``normalise``  trees in ORT's order; splits as ``ext[column] <= threshold``; categorical runs of
               BRANCH_EQ as one membership test each
``pack``       the flat arrays of the node, bitvector (QuickScorer), oblivious and generic layouts
``extend`` · ``finish``   kernel helpers: the extended row; sums to outputs (aggregation,
               post-transform, link, tail)
``node`` · ``bitvector`` · ``generic`` · ``oblivious``   the kernels
``kernel``     `ForestKernel`: builds the layouts, chooses a mode, dispatches ``predict``
``codes``      every split mode, aggregate, post-transform and packed offset, named
``cache``      numba's on-disk cache kept in step with every module the kernels are built from
               (they inline helpers and constants from sibling modules, which numba does not track)

Semantics reproduced bit for bit: a split compares the float32 feature with the float32
threshold; NaN follows IEEE comparison unless ``nodes_missing_value_tracks_true`` sends it to the
true branch; leaf values are summed tree by tree in tree order in float32 (ORT 1.32 refuses
double tensors for a float input), divided by the number of trees for AVERAGE, base values
added last, then the post-transform (several targets only: ORT ignores LOGISTIC/SOFTMAX on one).
"""

from . import bitvector, cache, extend, finish, generic, node, oblivious
from .codes import Aggregate, Link, PostTransform, SplitMode
from .kernel import ForestKernel, ModeChoice, TreeEnsembleInfo, find_tree_ensembles
from .read import OutputTail
from .synthetic import synthetic_node, warmup

cache.refresh(bitvector, extend, finish, generic, node, oblivious)

__all__ = [
    "Aggregate",
    "ForestKernel",
    "Link",
    "ModeChoice",
    "OutputTail",
    "PostTransform",
    "SplitMode",
    "TreeEnsembleInfo",
    "find_tree_ensembles",
    "synthetic_node",
    "warmup",
]
