"""The checks every graph passes before it is served: no external data, standard domains only,
and only the operators fastinfer's converters emit, with bounded work.

A served graph must not open files (external data in any tensor, sparse ones included, in any
subgraph), need code (custom domains, local functions), or do unbounded work: a ``Loop`` of
10**15 iterations hangs ``predict``, a ``ConstantOfShape`` fed a run-time shape can ask for
N * 2**31 floats. Rather than guess which uses of each ONNX operator are safe, ``check_graph``
takes only the operators in ``ALLOWED_OPS``: what the converters produce, plus the few the next
converters need. Control flow (``If``, ``Loop``, ``Scan``) is not in it. Operators whose output
size comes from an input's *values* are allowed only where that input is a constant of bounded
size (``CONSTANT_INPUTS``).

Adding a converter that emits a new operator: add one ``(domain, op_type)`` line to
``ALLOWED_OPS`` (and, if its output size depends on an input's values, one entry to
``CONSTANT_INPUTS``); the converter's tests then show the graph passes.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
from onnx import numpy_helper

from ..errors import ConversionError

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})

# (domain, op_type). "ai.onnx" also covers the empty domain string. Grouped by who emits them.
ALLOWED_OPS: frozenset[tuple[str, str]] = frozenset(
    {
        # Trees (LightGBM, XGBoost, CatBoost, sklearn forests, NGBoost, quantile LightGBM) and linear models.
        ("ai.onnx.ml", "TreeEnsembleRegressor"),
        ("ai.onnx.ml", "TreeEnsembleClassifier"),
        ("ai.onnx.ml", "LinearRegressor"),
        ("ai.onnx.ml", "LinearClassifier"),
        ("ai.onnx.ml", "Normalizer"),
        ("ai.onnx.ml", "Scaler"),
        # Output plumbing: contract shapes, column selection, ensembles, NGBoost's scale = exp(p1).
        ("ai.onnx", "Identity"),
        ("ai.onnx", "Cast"),
        ("ai.onnx", "Reshape"),
        ("ai.onnx", "Flatten"),
        ("ai.onnx", "Squeeze"),
        ("ai.onnx", "Unsqueeze"),
        ("ai.onnx", "Concat"),
        ("ai.onnx", "Slice"),
        ("ai.onnx", "Gather"),
        ("ai.onnx", "Transpose"),
        ("ai.onnx", "Shape"),
        # Arithmetic (ensembles, links, Keras layers).
        ("ai.onnx", "Add"),
        ("ai.onnx", "Sub"),
        ("ai.onnx", "Mul"),
        ("ai.onnx", "Div"),
        ("ai.onnx", "Neg"),
        ("ai.onnx", "Reciprocal"),
        ("ai.onnx", "Sqrt"),
        ("ai.onnx", "Exp"),
        ("ai.onnx", "Abs"),
        ("ai.onnx", "Sign"),
        ("ai.onnx", "Floor"),
        ("ai.onnx", "Max"),
        ("ai.onnx", "Where"),
        ("ai.onnx", "IsNaN"),  # XGBoost gblinear: a missing (NaN) input counts as 0
        ("ai.onnx", "MatMul"),
        ("ai.onnx", "Gemm"),
        # Activations (Keras layers; exact GELU is rewritten to Erf by converters.graph.replace_erfc).
        ("ai.onnx", "Relu"),
        ("ai.onnx", "Sigmoid"),
        ("ai.onnx", "Tanh"),
        ("ai.onnx", "Softmax"),
        ("ai.onnx", "Erf"),
        ("ai.onnx", "LeakyRelu"),  # Keras LeakyReLU layer
        ("ai.onnx", "Elu"),  # Keras activation="elu"
        ("ai.onnx", "Selu"),  # Keras activation="selu"
        ("ai.onnx", "Softplus"),  # Keras activation="softplus" (and mish = x * tanh(softplus(x)))
        ("ai.onnx", "Softsign"),
        ("ai.onnx", "HardSigmoid"),
        ("ai.onnx", "LogSoftmax"),
        ("ai.onnx", "Clip"),  # relu6, hard_sigmoid / hard_silu as tf2onnx writes them
        ("ai.onnx", "Min"),
        ("ai.onnx", "Log"),
        ("ai.onnx", "Pow"),
        # Elementwise comparisons and logic (masks, Keras ops written with keras.ops)
        ("ai.onnx", "Equal"),
        ("ai.onnx", "Less"),
        ("ai.onnx", "Greater"),
        ("ai.onnx", "Not"),
        ("ai.onnx", "And"),
        ("ai.onnx", "Or"),
        # Keras sequence / convolution / attention layers (tf2onnx; converters.graph drops their
        # zero initial states, so no run-time-sized state allocation remains).
        ("ai.onnx", "LSTM"),
        ("ai.onnx", "GRU"),
        ("ai.onnx", "RNN"),
        ("ai.onnx", "Split"),  # GRU / SimpleRNN traced unrolled: time steps and gates (parts sum to the input)
        ("ai.onnx", "Conv"),
        ("ai.onnx", "Pad"),  # Conv1D "same" padding: pads are a constant (CONSTANT_INPUTS)
        ("ai.onnx", "GlobalAveragePool"),
        ("ai.onnx", "MaxPool"),  # Keras MaxPooling1D: window and stride are attributes
        ("ai.onnx", "GlobalMaxPool"),  # Keras GlobalMaxPooling1D
        ("ai.onnx", "AveragePool"),  # Keras AveragePooling1D: window and stride are attributes
        ("ai.onnx", "Tile"),  # Keras UpSampling1D / RepeatVector: repeats are a constant (CONSTANT_INPUTS)
        ("ai.onnx", "ReduceMean"),
        ("ai.onnx", "ReduceProd"),
        ("ai.onnx", "ReduceSum"),  # Keras UnitNormalization, sums over an axis
        ("ai.onnx", "ReduceMax"),
        ("ai.onnx", "ReduceMin"),
    }
)

# Operators whose output size is set by the *values* of some inputs: those inputs (by position)
# must be initializers (``Constant`` is not an allowed op), each value at most MAX_CONSTANT_VALUE and their
# product at most MAX_CONSTANT_ELEMENTS. Only ops in ALLOWED_OPS run at all; the others are
# listed so that allowing one brings its bound with it.
CONSTANT_INPUTS: dict[str, tuple[int, ...]] = {
    "Pad": (1, 3),  # pads, axes
    "ConstantOfShape": (0,),  # shape
    "Expand": (1,),  # shape
    "Tile": (1,),  # repeats
    "Range": (0, 1, 2),  # start, limit, delta
    "Resize": (1, 2, 3),  # roi, scales, sizes
    "Upsample": (1,),  # scales
    "OneHot": (1,),  # depth
}
MAX_CONSTANT_VALUE = 1 << 20
MAX_CONSTANT_ELEMENTS = 1 << 26


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph inside it, at any depth (If / Loop / Scan bodies, and a
    graph set on an attribute of any declared type: ONNX Runtime must never see one we skipped)."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in one graph (not its subgraphs): initializers, sparse initializers,
    and every tensor-valued attribute field of every node, whatever the attribute's declared type."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparse_tensors = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for sparse in [*sparse_tensors, *attr.sparse_tensors]:
                yield sparse.values
                yield sparse.indices


def _domain(node: onnx.NodeProto) -> str:
    return node.domain or "ai.onnx"


def _where(node: onnx.NodeProto) -> str:
    return f"node {node.name!r} (op {node.op_type!r}, domain {_domain(node)!r})"


def _values(constant: onnx.TensorProto) -> list | None:
    """The numbers an initializer holds, or None when it holds anything else (or cannot be read)."""
    try:
        return numpy_helper.to_array(constant).ravel().tolist()
    except Exception:  # a constant that cannot be decoded is simply not a bounded one
        return None


def _check_bounded_inputs(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> None:
    for position in CONSTANT_INPUTS.get(node.op_type, ()):
        if position >= len(node.input) or not node.input[position]:
            continue  # an optional input left out
        name = node.input[position]
        if name not in constants:
            raise ConversionError(
                f"{_where(node)}: input {position} ({name!r}) is computed at run time; its values set the "
                "output size, so it must be a constant in the graph"
            )
        values = _values(constants[name])
        if values is None or any(not isinstance(v, (int, float)) or abs(v) > MAX_CONSTANT_VALUE for v in values):
            raise ConversionError(
                f"{_where(node)}: constant input {position} ({name!r}) is not a tensor of values within "
                f"+/-{MAX_CONSTANT_VALUE}"
            )
        elements = 1
        for v in values:
            elements *= max(1, abs(int(v)))
        if elements > MAX_CONSTANT_ELEMENTS:
            raise ConversionError(
                f"{_where(node)}: constant input {position} ({name!r}) asks for {elements} elements "
                f"(limit {MAX_CONSTANT_ELEMENTS})"
            )


def check_graph(model: onnx.ModelProto) -> None:
    """Refuse a graph that reads external data, uses a non-standard domain, an operator outside
    ``ALLOWED_OPS`` or an unbounded size input, or fails the ONNX checker (``ConversionError``
    naming the tensor, or the node, its op and domain).

    External-data tensors would make a graph open files at load time (relative to the
    process's working directory); custom domains need code (custom-op libraries) that a
    verified graph must not depend on; the operator allow-list bounds the work a graph does.
    """
    if model.functions:
        names = ", ".join(f"{f.domain}.{f.name}" for f in model.functions)
        raise ConversionError(f"graph defines local functions ({names}): only standard operators are allowed")
    if len(model.training_info):
        raise ConversionError("graph carries training_info (initialisation / training graphs): not served")
    for opset in model.opset_import:
        if opset.domain not in ALLOWED_DOMAINS:
            raise ConversionError(
                f"graph imports non-standard operator domain {opset.domain!r} (allowed: {sorted(ALLOWED_DOMAINS)})"
            )
    graphs = list(iter_graphs(model.graph))
    for graph in graphs:
        for node in graph.node:
            if node.domain not in ALLOWED_DOMAINS:
                raise ConversionError(
                    f"node {node.name!r} ({node.op_type}) is in non-standard domain "
                    f"{node.domain!r} (allowed: {sorted(ALLOWED_DOMAINS)})"
                )
        for tensor in _tensors(graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
                raise ConversionError(
                    f"tensor {tensor.name!r} stores its data externally: a graph must carry all its weights"
                )
    for graph in graphs:
        constants = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if (_domain(node), node.op_type) not in ALLOWED_OPS:
                raise ConversionError(
                    f"{_where(node)} is not an operator fastinfer's converters emit "
                    "(fastinfer.converters.checks.ALLOWED_OPS; control flow and run-time-sized allocations "
                    "are refused)"
                )
            _check_bounded_inputs(node, constants)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"graph fails the ONNX checker: {exc}") from exc
