"""Graph helpers shared by the converters: opsets, the I/O contract, merging graphs.

Everything here works on ``onnx.ModelProto`` with ``onnx.helper`` / ``onnx.compose``; no
converter library is imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from ..errors import ConversionError
from . import INPUT_NAME, OUTPUT_NAME, ConvertedGraph, check_graph, iter_graphs

# One opset set for every graph fastinfer writes, so that any two graphs can be merged.
OPSETS: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
ML = "ai.onnx.ml"
_MIN_IR_VERSION = 8  # what opset 17 needs; older IRs also require initializers to be graph inputs

# ai.onnx.ml ops whose later versions only added attributes: a node valid at the older
# version means the same at these versions (TreeEnsembleRegressor v3 added *_as_tensor).
_ML_ATTRIBUTE_ONLY_UPGRADES = {"TreeEnsembleRegressor": 3, "TreeEnsembleClassifier": 3}


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of the libraries that took part in a conversion (for the lock)."""
    out = {"onnx": onnx.__version__}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


# ---------------------------------------------------------------- opsets


def opsets_of(model: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        out[domain] = max(out.get(domain, 0), entry.version)
    return out


def _set_imports(model: onnx.ModelProto, opsets: dict[str, int]) -> None:
    del model.opset_import[:]
    for domain, version in sorted(opsets.items()):
        model.opset_import.append(helper.make_opsetid(domain, version))


def set_opsets(model: onnx.ModelProto, target: dict[str, int] = OPSETS) -> onnx.ModelProto:
    """Raise the model's opsets to ``target`` (never lowers; duplicates removed).

    The default domain is rewritten in place when no op used changed between the two
    versions, else converted with ``onnx.version_converter``; ``ai.onnx.ml`` is raised only
    where its ops are unchanged or only gained attributes.
    """
    have = opsets_of(model)
    nodes = [n for g in iter_graphs(model.graph) for n in g.node]
    default_now = have.get("", 0)
    if "" in target and default_now and default_now < target[""]:
        ops = {n.op_type for n in nodes if n.domain in ("", "ai.onnx")}
        changed = [op for op in ops if onnx.defs.get_schema(op, target[""], "").since_version > default_now]
        if changed:
            from onnx import version_converter

            model = version_converter.convert_version(model, target[""])
            have = opsets_of(model)
    if ML in target and ML in have and have[ML] < target[ML]:
        for op in {n.op_type for n in nodes if n.domain == ML}:
            since = onnx.defs.get_schema(op, target[ML], ML).since_version
            if since > have[ML] and target[ML] > _ML_ATTRIBUTE_ONLY_UPGRADES.get(op, 0):
                raise ConversionError(f"cannot raise {ML} opset {have[ML]} -> {target[ML]}: {op} changed")
    for domain, version in target.items():
        have[domain] = max(have.get(domain, 0), version)
    _set_imports(model, have)
    return model


# ---------------------------------------------------------------- the I/O contract


def rename_value(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a tensor everywhere (graph I/O, nodes, initializers, value_info, subgraphs)."""
    if old == new:
        return
    for graph in iter_graphs(model.graph):
        for seq in (graph.input, graph.output, graph.value_info, graph.initializer):
            for item in seq:
                if item.name == old:
                    item.name = new
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new


def _set_shape(value_info: onnx.ValueInfoProto, dims: Sequence[int | str]) -> None:
    tensor_type = value_info.type.tensor_type
    tensor_type.elem_type = TensorProto.FLOAT
    tensor_type.ClearField("shape")
    for dim in dims:
        d = tensor_type.shape.dim.add()
        if isinstance(dim, str):
            d.dim_param = dim
        else:
            d.dim_value = dim


def input_dims(n_features: int, seq_len: int | None) -> list[int | str]:
    return ["N", n_features] if seq_len is None else ["N", seq_len, n_features]


def conform(
    model: onnx.ModelProto, n_features: int, n_outputs: int, seq_len: int | None = None, output: str | None = None
) -> onnx.ModelProto:
    """Bring a one-input graph to the contract: input ``features`` float32 [N, F] (or
    [N, T, F]), output ``prediction`` float32 [N, K] (cast and reshaped as needed).

    ``output`` picks one of several graph outputs (default: the only one); the others are
    dropped. The graph is first raised to ``OPSETS``, so that nodes added here and later
    are read at the versions they are written for.
    """
    model = set_opsets(onnx.ModelProto.FromString(model.SerializeToString()), OPSETS)
    graph = model.graph
    initializer_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializer_names]
    if len(inputs) != 1:
        raise ConversionError(f"expected a graph with one input, got {[i.name for i in inputs]}")
    if inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ConversionError(f"graph input {inputs[0].name!r} is not float32")
    if output is None:
        if len(graph.output) != 1:
            raise ConversionError(f"expected a graph with one output, got {[o.name for o in graph.output]}")
        output = graph.output[0].name
    source = next((o for o in graph.output if o.name == output), None)
    if source is None:
        raise ConversionError(f"graph has no output {output!r} (outputs: {[o.name for o in graph.output]})")
    if inputs[0].name != INPUT_NAME and any(INPUT_NAME in (*n.input, *n.output) for n in graph.node):
        rename_value(model, INPUT_NAME, f"{INPUT_NAME}__orig")
    rename_value(model, inputs[0].name, INPUT_NAME)
    _set_shape(graph.input[[i.name for i in graph.input].index(INPUT_NAME)], input_dims(n_features, seq_len))
    if OUTPUT_NAME in {n for node in graph.node for n in node.output}:
        rename_value(model, OUTPUT_NAME, f"{OUTPUT_NAME}__orig")
        output = f"{OUTPUT_NAME}__orig" if output == OUTPUT_NAME else output
    value = output
    if source.type.tensor_type.elem_type != TensorProto.FLOAT:
        graph.node.append(
            helper.make_node("Cast", [value], [f"{value}__f32"], to=TensorProto.FLOAT, name="contract_cast")
        )
        value = f"{value}__f32"
    shape_name = "contract_shape"
    graph.initializer.append(numpy_helper.from_array(np.array([-1, n_outputs], dtype=np.int64), shape_name))
    graph.node.append(helper.make_node("Reshape", [value, shape_name], [OUTPUT_NAME], name="contract_reshape"))
    del graph.output[:]
    out = graph.output.add()
    out.name = OUTPUT_NAME
    _set_shape(out, ["N", n_outputs])
    return model


def finish(
    model: onnx.ModelProto,
    columns: Iterable[str],
    converter: str,
    libraries: Iterable[str],
    opsets: dict[str, int] = OPSETS,
) -> ConvertedGraph:
    """Align opsets, name the graph, run ``check_graph`` and wrap it: every converter ends here."""
    model = set_opsets(model, opsets)
    model.ir_version = max(model.ir_version, _MIN_IR_VERSION)
    model.graph.name = f"fastinfer_{converter}"
    model.producer_name = "fastinfer"
    check_graph(model)
    return ConvertedGraph(model, tuple(columns), converter, opsets_of(model), versions(*libraries))


# ---------------------------------------------------------------- merging contract graphs


def _absorb(model: onnx.ModelProto, prefix: str, feed: str) -> tuple[onnx.GraphProto, str]:
    """Prefix every name of a contract graph, feed its input from ``feed``; returns the
    prefixed graph and the name of its output."""
    prefixed = compose.add_prefix(model, prefix)
    rename_value(prefixed, prefix + INPUT_NAME, feed)
    return prefixed.graph, prefix + OUTPUT_NAME


def _output(name: str, width: int) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.name = name
    _set_shape(out, ["N", width])
    return out


def _build(
    parts: list[onnx.ModelProto],
    graphs: list[onnx.GraphProto],
    tail: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    input_vi: onnx.ValueInfoProto,
    outputs: list[onnx.ValueInfoProto],
    name: str,
    head: Sequence[onnx.NodeProto] = (),
) -> onnx.ModelProto:
    """One model: ``head`` nodes, then every graph's nodes, then ``tail``; one input, ``outputs``."""
    nodes, inits, infos = list(head), list(initializers), []
    for g in graphs:
        nodes.extend(g.node)
        inits.extend(g.initializer)
        infos.extend(g.value_info)
    graph = helper.make_graph(nodes + tail, name, [input_vi], outputs, inits, value_info=infos)
    opsets: dict[str, int] = {}
    for part in parts:
        for domain, version in opsets_of(part).items():
            opsets[domain] = max(opsets.get(domain, 0), version)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())], producer_name="fastinfer"
    )
    model.ir_version = max(_MIN_IR_VERSION, *(p.ir_version for p in parts))
    return model


def _aligned(models: Sequence[onnx.ModelProto]) -> list[onnx.ModelProto]:
    target = dict(OPSETS)
    for m in models:
        for domain, version in opsets_of(m).items():
            target[domain] = max(target.get(domain, 0), version)
    return [set_opsets(onnx.ModelProto.FromString(m.SerializeToString()), target) for m in models]


def concat_columns(
    models: Sequence[onnx.ModelProto], widths: Sequence[int], prefixes: Sequence[str], name: str = "concat"
) -> onnx.ModelProto:
    """One graph running contract graphs side by side on the one input ``features``; the
    output is their outputs concatenated along columns, [N, sum(widths)]."""
    if len(models) != len(widths) or len(models) != len(prefixes) or len(set(prefixes)) != len(prefixes):
        raise ValueError("concat_columns needs one width and one distinct prefix per model")
    parts = _aligned(models)
    graphs, outputs = [], []
    for part, prefix in zip(parts, prefixes):
        g, out = _absorb(part, prefix, INPUT_NAME)
        graphs.append(g)
        outputs.append(out)
    tail = [helper.make_node("Concat", outputs, [OUTPUT_NAME], axis=1, name=f"{name}_concat")]
    return _build(parts, graphs, tail, [], parts[0].graph.input[0], [_output(OUTPUT_NAME, int(sum(widths)))], name)


def chain(
    first: onnx.ModelProto, second: onnx.ModelProto, n_outputs: int, prefixes: tuple[str, str], name: str = "chain"
) -> onnx.ModelProto:
    """``second(first(features))``: the second contract graph reads the first's output as its input."""
    parts = _aligned([first, second])
    g1, out1 = _absorb(parts[0], prefixes[0], INPUT_NAME)
    g2, out2 = _absorb(parts[1], prefixes[1], out1)
    tail = [helper.make_node("Identity", [out2], [OUTPUT_NAME], name=f"{name}_out")]
    return _build(parts, [g1, g2], tail, [], parts[0].graph.input[0], [_output(OUTPUT_NAME, n_outputs)], name)


@dataclass(frozen=True)
class FuseMember:
    """One graph to fuse: its output name in the fused graph, and the input columns it reads."""

    name: str
    model: onnx.ModelProto
    columns: tuple[int, ...]
    n_outputs: int


def fuse(members: Sequence[FuseMember], union_width: int, input_shape: Sequence[int | str]) -> onnx.ModelProto:
    """One graph: input ``features`` (``input_shape``, last dim = union width) → one output per member.

    Every member keeps its own nodes (prefixed), so each output is computed by exactly the
    kernels its own graph would use; a member that reads a subset or another order of the
    columns gets a Gather in front.
    """
    if not members:
        raise ValueError("nothing to fuse")
    parts = _aligned([m.model for m in members])
    head, inits, graphs, tail, outputs = [], [], [], [], []
    axis = len(input_shape) - 1
    for i, (member, part) in enumerate(zip(members, parts)):
        prefix = f"m{i}_"
        feed = INPUT_NAME
        if list(member.columns) != list(range(union_width)):
            feed, idx = prefix + "columns_in", prefix + "columns"
            inits.append(numpy_helper.from_array(np.asarray(member.columns, dtype=np.int64), idx))
            head.append(helper.make_node("Gather", [INPUT_NAME, idx], [feed], axis=axis, name=f"{prefix}select"))
        g, out = _absorb(part, prefix, feed)
        graphs.append(g)
        tail.append(helper.make_node("Identity", [out], [member.name], name=f"{prefix}out"))
        outputs.append(_output(member.name, member.n_outputs))
    input_vi = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(input_shape))
    fused = _build(parts, graphs, tail, inits, input_vi, outputs, "fastinfer_fused", head=head)
    onnx.checker.check_model(fused)
    return fused


def weighted_sum(
    model: onnx.ModelProto, weights: np.ndarray, bias: float | np.ndarray = 0.0, name: str = "combine"
) -> onnx.ModelProto:
    """Append ``prediction @ weights + bias`` to a contract graph ([N, M] -> [N, K])."""
    weights = np.asarray(weights, dtype=np.float32)
    weights = weights.reshape(-1, 1) if weights.ndim == 1 else weights
    bias = np.asarray(bias, dtype=np.float32).reshape(1, -1)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    rename_value(model, OUTPUT_NAME, f"{name}_in")
    g.initializer.extend([numpy_helper.from_array(weights, f"{name}_w"), numpy_helper.from_array(bias, f"{name}_b")])
    g.node.extend(
        [
            helper.make_node("MatMul", [f"{name}_in", f"{name}_w"], [f"{name}_mm"], name=f"{name}_matmul"),
            helper.make_node("Add", [f"{name}_mm", f"{name}_b"], [OUTPUT_NAME], name=f"{name}_add"),
        ]
    )
    del g.output[:]
    out = g.output.add()
    out.name = OUTPUT_NAME
    _set_shape(out, ["N", weights.shape[1]])
    return model


# ---------------------------------------------------------------- op rewrites


def replace_erfc(model: onnx.ModelProto) -> int:
    """Rewrite ``Erfc(x)`` (which tf2onnx emits for exact GELU and ONNX lacks) as ``1 - Erf(x)``.

    Returns the number of nodes rewritten."""
    count = 0
    for graph in iter_graphs(model.graph):
        rebuilt = []
        for node in graph.node:
            if node.op_type == "Erfc" and node.domain in ("", "ai.onnx"):
                count += 1
                one, erf = f"{node.name}__one", f"{node.name}__erf"
                graph.initializer.append(numpy_helper.from_array(np.array(1.0, dtype=np.float32), one))
                rebuilt.append(helper.make_node("Erf", [node.input[0]], [erf], name=f"{node.name}__erf_op"))
                rebuilt.append(helper.make_node("Sub", [one, erf], [node.output[0]], name=f"{node.name}__sub"))
            else:
                rebuilt.append(node)
        del graph.node[:]
        graph.node.extend(rebuilt)
    return count


_RECURRENT_STATE_INPUTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}  # initial_h (, initial_c)
_PASS_THROUGH = ("Unsqueeze", "Squeeze", "Reshape", "Cast", "Identity", "Expand")


def _is_zeros(graph: onnx.GraphProto, name: str) -> bool:
    """Whether ``name`` is all zeros whatever the input: a zero constant, possibly expanded,
    reshaped or concatenated with other zeros (a bidirectional layer's two states), or
    ConstantOfShape with a zero (default) value."""
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}

    def zeros(name: str, depth: int) -> bool:
        if name in inits:
            return not numpy_helper.to_array(inits[name]).any()
        node = producers.get(name)
        if node is None or node.domain not in ("", "ai.onnx") or depth > 64:
            return False
        if node.op_type == "ConstantOfShape":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return value is None or not numpy_helper.to_array(value).any()
        if node.op_type == "Concat":
            return all(zeros(i, depth + 1) for i in node.input)
        return node.op_type in _PASS_THROUGH and zeros(node.input[0], depth + 1)

    return zeros(name, 0)


def drop_zero_initial_states(model: onnx.ModelProto) -> int:
    """Leave out recurrent nodes' initial states that are zeros (ONNX's default for an
    absent input): tf2onnx builds them from the batch size with Shape/Slice/Concat/Expand,
    nodes that cost time on every call. Returns the inputs dropped; dead nodes are pruned."""
    dropped = 0
    g = model.graph
    for node in g.node:
        for index in _RECURRENT_STATE_INPUTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            if index < len(node.input) and node.input[index] and _is_zeros(g, node.input[index]):
                node.input[index] = ""
                dropped += 1
    if dropped:
        prune_dead_nodes(model)
    return dropped


def prune_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes and initializers nothing reaches the graph outputs through."""
    g = model.graph
    live = {o.name for o in g.output}
    kept = []
    for node in reversed(list(g.node)):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(i for i in node.input if i)
            bodies = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
            bodies += [b for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for b in a.graphs]
            for body in bodies:  # a body may read names of the outer scope
                live.update(i for sub in iter_graphs(body) for n in sub.node for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(kept))
    inits = [t for t in g.initializer if t.name in live]
    del g.initializer[:]
    g.initializer.extend(inits)


# ---------------------------------------------------------------- tree ensembles


def tree_node(model: onnx.ModelProto) -> onnx.NodeProto:
    """The graph's one ``TreeEnsembleRegressor`` node (``ConversionError`` unless exactly one)."""
    nodes = [n for g in iter_graphs(model.graph) for n in g.node if n.op_type == "TreeEnsembleRegressor"]
    if len(nodes) != 1:
        raise ConversionError(f"expected one TreeEnsembleRegressor node, found {len(nodes)}")
    return nodes[0]


def node_attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto:
    return next(a for a in node.attribute if a.name == name)
