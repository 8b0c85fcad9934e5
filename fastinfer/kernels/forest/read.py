"""Step 1: read the ONNX graph — the TreeEnsembleRegressor node's attributes, validated as ONNX
Runtime validates them, and the ops after it (a link, the binary classifier tail, reshapes).

Accepted graphs::

    input ─► ai.onnx.ml.TreeEnsembleRegressor ─► [Exp | Sigmoid] ─► [Sub(1, p), Concat([1 - p, p], axis=1)] ─► output

with Identity, Cast(to=FLOAT), Reshape, Flatten, Squeeze and Unsqueeze anywhere after the trees
(they only reshape). Anything else is refused with the op named.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .codes import Aggregate, Link, PostTransform, SplitMode

ML_DOMAIN = "ai.onnx.ml"
TREE_OP = "TreeEnsembleRegressor"
RESHAPE_OPS = ("Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
LINK_OPS = {"Exp": Link.EXP, "Sigmoid": Link.SIGMOID}
TAIL_OPS = (*RESHAPE_OPS, *LINK_OPS, "Sub", "Concat", "Constant")


def _attributes(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


def _floats(attrs: dict, name: str) -> np.ndarray | None:
    """`name` or `name_as_tensor` as float32.

    Double tensors are refused: ONNX Runtime 1.32 refuses them too when the input is float
    ("could not unpack tensor attribute"), so there is no reference to match.
    """
    if name + "_as_tensor" in attrs:
        arr = np.asarray(attrs[name + "_as_tensor"]).ravel()
        if arr.dtype != np.float32:
            raise ValueError(
                f"{name}_as_tensor has dtype {arr.dtype}; only float32 is supported "
                "(ONNX Runtime refuses other types for a float input)"
            )
        return arr
    if name in attrs:
        return np.asarray(attrs[name], dtype=np.float32)
    return None


class EnsembleAttributes:
    """The node's attributes as numpy arrays, checked the way ORT checks them.

    ``modes`` holds `SplitMode` codes; thresholds, weights and base values are float32 (ORT sums
    in the threshold type, and 1.32 refuses double tensors for a float input).
    """

    def __init__(self, node: onnx.NodeProto):
        if node.op_type != TREE_OP or node.domain != ML_DOMAIN:
            raise ValueError(
                f"node {node.name!r} is {node.domain or 'ai.onnx'}.{node.op_type}; "
                f"only {ML_DOMAIN}.{TREE_OP} is supported"
            )
        a = _attributes(node)
        self.name = node.name
        self.post_transform = a.get("post_transform", "NONE")
        self.aggregate = a.get("aggregate_function", "SUM")
        self.n_targets = int(a.get("n_targets", 0))

        def ints(key: str) -> np.ndarray:
            return np.asarray(a.get(key, []), dtype=np.int64)

        self.treeids, self.nodeids = ints("nodes_treeids"), ints("nodes_nodeids")
        self.featureids = ints("nodes_featureids")
        self.trueids, self.falseids = ints("nodes_truenodeids"), ints("nodes_falsenodeids")
        self.missing = ints("nodes_missing_value_tracks_true")
        modes = a.get("nodes_modes", [])
        bad = sorted(set(modes) - set(SplitMode.__members__))
        if bad:
            raise ValueError(f"node {node.name!r}: unsupported nodes_modes {bad}")
        self.modes = np.array([SplitMode[m] for m in modes], dtype=np.int64)
        self.values = _floats(a, "nodes_values")
        self.t_ids, self.t_nodeids = ints("target_ids"), ints("target_nodeids")
        self.t_treeids = ints("target_treeids")
        weights = _floats(a, "target_weights")
        base = _floats(a, "base_values")
        n = len(self.treeids)
        if n == 0 or self.values is None:
            raise ValueError(f"node {node.name!r} has no nodes")
        for k in ("nodeids", "featureids", "trueids", "falseids", "modes", "values"):
            if len(getattr(self, k)) != n:
                raise ValueError(
                    f"node {node.name!r}: nodes_{k} has {len(getattr(self, k))} entries, nodes_treeids has {n}"
                )
        if weights is None or not (len(self.t_ids) == len(self.t_nodeids) == len(self.t_treeids) == len(weights)):
            raise ValueError(f"node {node.name!r}: target_* attributes are missing or of unequal length")
        if self.n_targets <= 0:
            raise ValueError(f"node {node.name!r}: n_targets must be positive")
        if self.aggregate not in Aggregate.__members__:
            raise ValueError(f"node {node.name!r}: aggregate_function {self.aggregate!r} unknown")
        if np.any(self.featureids < 0):
            raise ValueError(f"node {node.name!r}: negative feature id")
        if base is not None and len(base) not in (0, self.n_targets):
            raise ValueError(
                f"node {node.name!r}: base_values has {len(base)} values; ONNX Runtime requires 0 or "
                f"n_targets ({self.n_targets})"
            )
        self.weights = weights.astype(np.float32)
        self.base = np.zeros(0, np.float32) if base is None else base.astype(np.float32)

    @property
    def n_features(self) -> int:
        """Max feature id + 1: the columns a row must have."""
        return int(self.featureids.max()) + 1

    def is_tracking(self, i: int) -> bool:
        """``missing_value_tracks_true`` of node i (absent entries are 0, as in ORT)."""
        return i < len(self.missing) and self.missing[i] == 1

    def why_unsupported(self) -> str:
        if self.post_transform not in PostTransform.__members__:
            return f"post_transform {self.post_transform} (supported: {', '.join(PostTransform.__members__)})"
        return ""


@dataclass(frozen=True)
class OutputTail:
    """What the graph does to the trees' output: a link, then maybe the binary classifier tail."""

    link: Link = Link.IDENTITY
    binary: bool = False  # [1 - p, p] from one column: Sub(1, p) and Concat([1 - p, p], axis=1)


@dataclass(frozen=True)
class ForestGraph:
    node: onnx.NodeProto
    tail: OutputTail


def _constants(g: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            value = next((a for a in n.attribute if a.name == "value"), None)
            if value is not None:
                out[n.output[0]] = numpy_helper.to_array(value.t)
    return out


def _is_one(constants: dict[str, np.ndarray], name: str) -> bool:
    v = constants.get(name)
    return v is not None and v.size == 1 and float(v.ravel()[0]) == 1.0


def read_forest_graph(model: onnx.ModelProto) -> ForestGraph:
    """The TreeEnsembleRegressor of an accepted graph (module docstring) and its output tail."""
    g = model.graph
    constants = _constants(g)
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise ValueError(f"graph has {len(inputs)} inputs and {len(g.output)} outputs; one of each is supported")
    elem = inputs[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise ValueError(
            f"graph input {inputs[0].name!r} is {onnx.TensorProto.DataType.Name(elem)}; only FLOAT is supported"
        )
    trees = [n for n in g.node if n.op_type == TREE_OP and n.domain == ML_DOMAIN]
    if len(trees) != 1:
        raise ValueError(
            f"graph has {len(trees)} {TREE_OP} nodes; exactly one is supported (use ForestKernel.from_node for each)"
        )
    tree = trees[0]
    if list(tree.input) != [inputs[0].name]:
        raise ValueError(f"{TREE_OP} {tree.name!r} does not read the graph input directly")
    others = [n for n in g.node if n is not tree]
    bad = sorted(
        {
            f"{n.domain + '.' if n.domain else ''}{n.op_type}"
            for n in others
            if n.op_type not in TAIL_OPS or n.domain not in ("", "ai.onnx")
        }
    )
    if bad:
        raise ValueError(f"unsupported nodes around {TREE_OP}: {', '.join(bad)}")
    for n in others:
        if n.op_type == "Cast":
            to = next((a.i for a in n.attribute if a.name == "to"), None)
            if to != onnx.TensorProto.FLOAT:
                name = onnx.TensorProto.DataType.Name(to) if to is not None else "?"
                raise ValueError(f"Cast {n.name!r} to {name} after the trees is not supported (only a Cast to FLOAT)")
    tail = _follow_tail(tree, [n for n in others if n.op_type != "Constant"], constants, g.output[0].name)
    return ForestGraph(tree, tail)


def _follow_tail(tree: onnx.NodeProto, rest: list, constants: dict, output: str) -> OutputTail:
    """Walk from the trees' output to the graph output through the accepted ops, in order."""
    cur, link, binary = tree.output[0], Link.IDENTITY, False
    not_chain = f"nodes after {TREE_OP} {tree.name!r} are not a single chain of accepted ops"
    while rest:
        readers = [n for n in rest if cur in n.input]
        if len(readers) == 2 and {n.op_type for n in readers} == {"Sub", "Concat"}:
            sub = next(n for n in readers if n.op_type == "Sub")
            cat = next(n for n in readers if n.op_type == "Concat")
            axis = next((a.i for a in cat.attribute if a.name == "axis"), None)
            if binary or len(sub.input) != 2 or sub.input[1] != cur or not _is_one(constants, sub.input[0]):
                raise ValueError(f"{not_chain}: Sub {sub.name!r} is not 1 - (the trees' output)")
            if list(cat.input) != [sub.output[0], cur] or axis not in (1, -1):
                raise ValueError(f"{not_chain}: Concat {cat.name!r} is not [1 - p, p] along axis 1")
            binary, cur = True, cat.output[0]
            rest = [n for n in rest if n is not sub and n is not cat]
            continue
        if len(readers) != 1:
            raise ValueError(not_chain)
        n = readers[0]
        if n.op_type in ("Sub", "Concat"):
            raise ValueError(f"{not_chain}: {n.op_type} {n.name!r} is only accepted in the binary tail")
        if n.input[0] != cur or any(i != cur and i not in constants for i in n.input):
            raise ValueError(not_chain)
        if n.op_type in LINK_OPS:
            if link != Link.IDENTITY or binary:
                raise ValueError(f"{not_chain}: {n.op_type} {n.name!r} after another link or after the binary tail")
            link = LINK_OPS[n.op_type]
        cur = n.output[0]
        rest.remove(n)
    if cur != output:
        raise ValueError(f"graph output {output!r} is not the trees' output")
    return OutputTail(link, binary)


def remap_features(node: onnx.NodeProto, columns: np.ndarray) -> onnx.NodeProto:
    """A copy of ``node`` whose splits read feature ``columns[f]`` where they read ``f``."""
    remapped = onnx.NodeProto()
    remapped.CopyFrom(node)
    attr = next(a for a in remapped.attribute if a.name == "nodes_featureids")
    ids = np.asarray(attr.ints, dtype=np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= len(columns)):
        raise ValueError(f"node {node.name!r} reads feature {ids.max()}; only {len(columns)} columns are mapped")
    del attr.ints[:]
    attr.ints.extend(columns[ids].tolist())
    return remapped
