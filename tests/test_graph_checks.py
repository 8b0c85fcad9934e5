"""check_graph (#16.3, #16.7): external data hidden anywhere is refused, and only the operators
fastinfer's converters emit run, with their size inputs bounded."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastinfer.converters import check_graph, checks, iter_graphs
from fastinfer.errors import ConversionError, ModelLoadError
from fastinfer.integrity import sha256_file
from fastinfer.loader import ModelLoader
from fastinfer.lock import LOCK_FILE

from ._hardening import hostile
from .conftest import TARGET

F = 8


def _model(nodes, initializers=(), opsets=(("", 17),)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", F])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1])],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _weights(name="w") -> TensorProto:
    return numpy_helper.from_array(np.ones((F, 1), dtype=np.float32), name)


def _external(name="hidden", location="weights.bin", dims=(F, 1)) -> TensorProto:
    """A tensor whose bytes ONNX Runtime would read from ``location`` (relative to the process's cwd)."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    return tensor


def _sparse(values: TensorProto) -> onnx.SparseTensorProto:
    indices = numpy_helper.from_array(np.arange(F, dtype=np.int64), values.name + "_idx")
    return helper.make_sparse_tensor(values, indices, [F, 1])


def _matmul() -> onnx.NodeProto:
    return helper.make_node("MatMul", ["features", "w"], ["prediction"], name="mm")


def _subgraph(nodes, initializers=(), sparse=()) -> onnx.GraphProto:
    return helper.make_graph(
        nodes,
        "body",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=list(initializers),
        sparse_initializer=list(sparse),
    )


def _nested(inner: onnx.GraphProto) -> onnx.ModelProto:
    """``inner`` as the then-branch of an If that is itself the body of an If in the graph."""
    cond = numpy_helper.from_array(np.array(True), "cond")
    inner_if = helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner, name="inner_if")
    middle = _subgraph([inner_if])
    outer_if = helper.make_node("If", ["cond"], ["unused"], then_branch=middle, else_branch=middle, name="outer_if")
    return _model([outer_if, _matmul()], [_weights(), cond])


def _int_attribute_hiding(tensor: TensorProto) -> onnx.NodeProto:
    node = helper.make_node("Identity", ["x"], ["y"], name="int_attr")
    attr = node.attribute.add()
    attr.name, attr.type, attr.i = "axis", onnx.AttributeProto.INT, 1
    attr.t.CopyFrom(tensor)  # declared INT, but a tensor rides along
    return node


def _sparse_constant() -> onnx.ModelProto:
    """The weights as a sparse Constant whose values live in ``weights.bin`` (found via the cwd):
    a valid graph that the checker and ONNX Runtime accept when that file exists."""
    values = _external("sparse_values", dims=(F,))
    constant = helper.make_node("Constant", [], ["w"], sparse_value=_sparse(values), name="c")
    return _model([constant, _matmul()])


def _sparse_tensors_attribute() -> onnx.ModelProto:
    node = _matmul()
    node.attribute.append(helper.make_attribute("extra", [_sparse(_external("in_a_list"))]))
    assert node.attribute[-1].type == onnx.AttributeProto.SPARSE_TENSORS
    return _model([node], [_weights()])


def _tensors_attribute() -> onnx.ModelProto:
    node = _matmul()
    node.attribute.append(helper.make_attribute("extra", [_external("in_tensors")]))
    return _model([node], [_weights()])


def _tensor_in_int_attribute() -> onnx.ModelProto:
    return _model([_int_attribute_hiding(_external("under_int")), _matmul()], [_weights()])


def _graph_in_int_attribute() -> onnx.ModelProto:
    node = _matmul()
    attr = node.attribute.add()
    attr.name, attr.type, attr.i = "axis", onnx.AttributeProto.INT, 0
    attr.g.CopyFrom(_subgraph([helper.make_node("Identity", ["e"], ["y"])], [_external("e")]))
    return _model([node], [_weights()])


EXTERNAL_CASES = {
    "sparse Constant (SPARSE_TENSOR attribute)": _sparse_constant,
    "SPARSE_TENSORS attribute": _sparse_tensors_attribute,
    "TENSORS attribute": _tensors_attribute,
    "tensor set on an INT attribute": _tensor_in_int_attribute,
    "subgraph set on an INT attribute": _graph_in_int_attribute,
    "initializer of a nested subgraph": lambda: _nested(
        _subgraph([helper.make_node("Identity", ["e"], ["y"])], [_external("e")])
    ),
    "sparse initializer of a nested subgraph": lambda: _nested(
        _subgraph([helper.make_node("Identity", ["s"], ["y"])], sparse=[_sparse(_external("s"))])
    ),
    "sparse attribute inside a nested subgraph": lambda: _nested(
        _subgraph([helper.make_node("Constant", [], ["y"], sparse_value=_sparse(_external("deep")))])
    ),
}


@pytest.mark.parametrize("case", list(EXTERNAL_CASES))
def test_external_data_anywhere_is_refused(case):
    hostile("ONNX graph", f"external data: {case}")
    check_graph(_model([_matmul()], [_weights()]))  # control
    with pytest.raises(ConversionError, match="stores its data externally"):
        check_graph(EXTERNAL_CASES[case]())


def test_iter_graphs_reaches_every_depth():
    inner = _subgraph([helper.make_node("Identity", ["x"], ["y"])])
    found = list(iter_graphs(_nested(inner).graph))
    assert len(found) == 1 + 2 + 4  # main, the middle pair, the inner pairs


# ---------------------------------------------------------------- the operator allow-list (#16.7)


def _loop_bomb() -> onnx.ModelProto:
    """A valid graph whose prediction waits on a Loop of 10**15 iterations: ONNX Runtime loads
    it, and predict would spin for days."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "loop_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
    )
    trips = numpy_helper.from_array(np.array(10**15, dtype=np.int64), "trips")
    cond = numpy_helper.from_array(np.array(True), "cond")
    v0 = numpy_helper.from_array(np.zeros(1, dtype=np.float32), "v0")
    loop = helper.make_node("Loop", ["trips", "cond", "v0"], ["v"], body=body, name="bomb")
    product = helper.make_node("MatMul", ["features", "w"], ["product"], name="mm")
    add = helper.make_node("Add", ["product", "v"], ["prediction"], name="add")
    return _model([loop, product, add], [_weights(), trips, cond, v0])


def _runtime_constant_of_shape() -> onnx.ModelProto:
    """ConstantOfShape of [N, 2**31]: N * 8 GiB of float32, sized by the batch at run time."""
    big = numpy_helper.from_array(np.array([2**31], dtype=np.int64), "big")
    zero = numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")
    one = numpy_helper.from_array(np.array([1], dtype=np.int64), "one")
    nodes = [
        helper.make_node("Shape", ["features"], ["shape"], name="shape"),
        helper.make_node("Slice", ["shape", "zero", "one"], ["n"], name="n"),
        helper.make_node("Concat", ["n", "big"], ["huge"], axis=0, name="huge"),
        helper.make_node("ConstantOfShape", ["huge"], ["zeros"], name="alloc"),
        _matmul(),
    ]
    return _model(nodes, [_weights(), big, zero, one])


def _single(op: str, inputs: list[str], initializers=(), domain: str = "", **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, inputs, ["side"], name=op.lower(), domain=domain, **attrs)
    opsets = (("", 17), ("ai.onnx.ml", 3)) if domain else (("", 17),)
    return _model([node, _matmul()], [_weights(), *initializers], opsets)


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


ALLOW_LIST_CASES = {
    "Loop of 10**15 iterations": (_loop_bomb, "bomb", "Loop", "ai.onnx"),
    "If": (lambda: _nested(_subgraph([helper.make_node("Identity", ["cond"], ["y"])])), "outer_if", "If", "ai.onnx"),
    "Scan": (
        lambda: _single("Scan", ["features"], body=_subgraph([]), num_scan_inputs=1),
        "scan",
        "Scan",
        "ai.onnx",
    ),
    "ConstantOfShape of a run-time shape": (_runtime_constant_of_shape, "alloc", "ConstantOfShape", "ai.onnx"),
    "Expand": (lambda: _single("Expand", ["features", "s"], [_i64("s", [4, F])]), "expand", "Expand", "ai.onnx"),
    "Range": (
        lambda: _single("Range", ["a", "b", "c"], [_i64("a", 0), _i64("b", 10), _i64("c", 1)]),
        "range",
        "Range",
        "ai.onnx",
    ),
    "Resize": (lambda: _single("Resize", ["features"]), "resize", "Resize", "ai.onnx"),
    "an ai.onnx.ml op no converter emits": (
        lambda: _single("ArrayFeatureExtractor", ["features", "r"], [_i64("r", [0])], domain="ai.onnx.ml"),
        "arrayfeatureextractor",
        "ArrayFeatureExtractor",
        "ai.onnx.ml",
    ),
}


@pytest.mark.parametrize("case", list(ALLOW_LIST_CASES))
def test_ops_no_converter_emits_are_refused_naming_node_op_and_domain(case):
    hostile("ONNX graph", f"unbounded work: {case}")
    build, node, op, domain = ALLOW_LIST_CASES[case]
    with pytest.raises(ConversionError, match=rf"node '{node}' \(op '{op}', domain '{domain}'\).*ALLOWED_OPS"):
        check_graph(build())


def _pad(pads: TensorProto | None, computed: bool = False) -> onnx.ModelProto:
    nodes = [helper.make_node("Pad", ["features", "pads"], ["padded"], name="pad")]
    initializers = [_weights()]
    if computed:  # pads derived from the input's shape at run time
        nodes.insert(0, helper.make_node("Shape", ["features"], ["pads"], name="shape"))
    else:
        initializers.append(pads)
    return _model([*nodes, _matmul()], initializers)


def test_pad_is_allowed_only_with_small_constant_pads():
    check_graph(_pad(_i64("pads", [0, 1, 0, 1])))  # Conv1D "same" padding, as tf2onnx emits it
    hostile("ONNX graph", "Pad with run-time pads")
    with pytest.raises(ConversionError, match=r"node 'pad' \(op 'Pad'.*input 1 \('pads'\) is computed at run time"):
        check_graph(_pad(None, computed=True))
    hostile("ONNX graph", "Pad with 2**30 constant pads")
    with pytest.raises(ConversionError, match=r"constant input 1 \('pads'\) is not a tensor of values within"):
        check_graph(_pad(_i64("pads", [0, 2**30, 0, 0])))


def test_extending_the_allow_list_is_one_entry(monkeypatch):
    """What a new converter's author does: one (domain, op) pair, and its size bound comes along."""
    expanded = _single("Expand", ["features", "s"], [_i64("s", [4, F])])
    with pytest.raises(ConversionError, match="'Expand'"):
        check_graph(expanded)
    monkeypatch.setattr(checks, "ALLOWED_OPS", checks.ALLOWED_OPS | {("ai.onnx", "Expand")})
    check_graph(expanded)
    with pytest.raises(ConversionError, match=f"asks for {2**40} elements"):  # a 2**20 x 2**20 shape
        check_graph(_single("Expand", ["features", "s"], [_i64("s", [2**20, 2**20])]))


def test_tile_is_allowed_only_with_small_constant_repeats():
    """Keras UpSampling1D / RepeatVector: Tile with constant repeats; run-time or huge repeats are refused."""
    check_graph(_single("Tile", ["features", "r"], [_i64("r", [2, 1])]))
    hostile("ONNX graph", "Tile with 2**20 x 2**20 constant repeats")
    with pytest.raises(ConversionError, match=f"asks for {2**40} elements"):
        check_graph(_single("Tile", ["features", "r"], [_i64("r", [2**20, 2**20])]))
    hostile("ONNX graph", "Tile with run-time repeats")
    shape = helper.make_node("Shape", ["features"], ["r"], name="shape")
    tile = helper.make_node("Tile", ["features", "r"], ["side"], name="tile")
    with pytest.raises(ConversionError, match=r"node 'tile' \(op 'Tile'.*input 1 \('r'\) is computed at run time"):
        check_graph(_model([shape, tile, _matmul()], [_weights()]))


def test_every_graph_the_converters_emit_passes(compiled_run):
    """The allow-list is wide enough: no family's graph is refused by it, and the ops every served
    graph uses are all listed (this is where a new converter learns what to add)."""
    lock = json.loads((compiled_run / LOCK_FILE).read_text())
    used = set()
    for entry in lock["entries"]:
        assert "ALLOWED_OPS" not in entry["reason"], (entry["family"], entry["reason"])
        if entry["status"] != "onnx":  # left native for a reason of its own (parity, a converter bug)
            continue
        model = onnx.load(compiled_run / entry["onnx_file"])
        check_graph(model)
        used |= {(n.domain or "ai.onnx", n.op_type) for g in iter_graphs(model.graph) for n in g.node}
    assert used <= checks.ALLOWED_OPS
    assert not {op for _, op in used} & {"Loop", "Scan", "If", "ConstantOfShape", "Expand", "Range"}


def _relock(root, family: str, model: onnx.ModelProto) -> None:
    """Replace the family's graph and record its sha256 in the lock (hostile but consistent)."""
    lock = json.loads((root / LOCK_FILE).read_text())
    entry = next(e for e in lock["entries"] if e["family"] == family)
    path = root / entry["onnx_file"]
    path.write_bytes(model.SerializeToString())
    entry["onnx_sha256"] = sha256_file(path)
    (root / LOCK_FILE).write_text(json.dumps(lock))


@pytest.mark.parametrize(
    "case,build", [("Loop bomb", _loop_bomb), ("sparse external Constant", _sparse_constant)], ids=["loop", "sparse"]
)
def test_loader_refuses_the_graph_before_onnx_runtime_sees_it(compiled_copy, tmp_path, monkeypatch, case, build):
    """Both graphs are valid: the ONNX checker and ONNX Runtime accept them (the sparse one reads
    ``weights.bin`` from the working directory, outside the run). check_graph must refuse them."""
    hostile("ONNX graph", f"served graph: {case}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.bin").write_bytes(np.ones(F, dtype="<f4").tobytes())
    model = build()
    onnx.checker.check_model(model)  # valid: only the allow-list / external-data rule stands in the way
    ModelLoader(compiled_copy).load(TARGET, "ridge")  # control
    _relock(compiled_copy, "ridge", model)
    with pytest.raises(ModelLoadError, match="graph refused"):
        ModelLoader(compiled_copy).load(TARGET, "ridge")
