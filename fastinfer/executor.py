"""ONNX Runtime sessions, providers, fused graphs and pre-allocated I/O.

Sessions are built from ``ExecutorSettings``: providers in the configured order filtered by
what the installed onnxruntime offers (CPU last, always), one intra-op thread and no
spinning by default (latency first; spinning steals the trading loop's core).

A fused graph merges every graph that reads the same input into one: one input
``features`` holding the union of their columns, a Gather per member where its columns
differ, and one named output per member, so one ``run`` per bar serves all of them.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .config import ExecutorSettings

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
INPUT_NAME = "features"
OUTPUT_NAME = "prediction"

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def select_providers(wanted: Sequence[str], available: Sequence[str] | None = None) -> list[str]:
    """``wanted`` in order, keeping those onnxruntime offers; CPU is always the last resort."""
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    chosen = [p for p in wanted if p in available and p != CPU]
    return chosen + [CPU]


def session_options(settings: ExecutorSettings, name: str = "graph"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = settings.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[settings.graph_optimization_level])
    spin = "1" if settings.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if settings.optimized_model_dir:
        folder = Path(settings.optimized_model_dir)
        folder.mkdir(parents=True, exist_ok=True)
        opts.optimized_model_filepath = str(folder / f"{name}.optimized.onnx")
    return opts


def open_session(model_bytes: bytes, settings: ExecutorSettings, name: str = "graph",
                 available: Sequence[str] | None = None):
    """An InferenceSession over verified graph bytes, on the first configured provider that works."""
    import onnxruntime as ort

    providers = select_providers(settings.providers, available)
    digest = hashlib.sha256(model_bytes).hexdigest()[:12]
    session = ort.InferenceSession(model_bytes, sess_options=session_options(settings, f"{name}-{digest}"),
                                   providers=providers)
    log.info("%s served by %s", name, session.get_providers()[0])
    return session


# ---------------------------------------------------------------- fusion


@dataclass(frozen=True)
class FuseMember:
    """One graph to fuse: its output name in the fused graph, and the union columns it reads."""

    name: str
    model: onnx.ModelProto
    columns: tuple[int, ...]
    n_outputs: int


def fuse(members: Sequence[FuseMember], union_width: int, input_shape: Sequence[int | str]) -> onnx.ModelProto:
    """One graph: input ``features`` (``input_shape``, last dim = union width) → one output per member.

    Every member keeps its own nodes (prefixed), so each output is computed by exactly the
    kernels its own graph would use.
    """
    if not members:
        raise ValueError("nothing to fuse")
    nodes, inits, outputs, opsets = [], [], [], {}
    ir_version = 0
    for i, member in enumerate(members):
        prefix = f"m{i}_"
        m = onnx.compose.add_prefix(member.model, prefix)
        graph = m.graph
        ir_version = max(ir_version, m.ir_version)
        for op in m.opset_import:
            domain = "" if op.domain == "ai.onnx" else op.domain
            opsets[domain] = max(opsets.get(domain, 0), op.version)
        member_in, member_out = prefix + INPUT_NAME, prefix + OUTPUT_NAME
        if list(member.columns) == list(range(union_width)):
            nodes.append(helper.make_node("Identity", [INPUT_NAME], [member_in], name=f"{prefix}select"))
        else:
            idx = prefix + "columns"
            inits.append(numpy_helper.from_array(np.asarray(member.columns, dtype=np.int64), idx))
            nodes.append(helper.make_node("Gather", [INPUT_NAME, idx], [member_in], axis=len(input_shape) - 1,
                                          name=f"{prefix}select"))
        nodes.extend(graph.node)
        inits.extend(graph.initializer)
        nodes.append(helper.make_node("Identity", [member_out], [member.name], name=f"{prefix}out"))
        outputs.append(helper.make_tensor_value_info(member.name, TensorProto.FLOAT, ["N", member.n_outputs]))
    graph = helper.make_graph(nodes, "fastinfer_fused",
                              [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(input_shape))],
                              outputs, initializer=inits)
    fused = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              producer_name="fastinfer")
    fused.ir_version = ir_version
    onnx.checker.check_model(fused)
    return fused


class BoundGraph:
    """A session with pre-allocated input and output arrays bound once (IOBinding) per batch size.

    ``input(n)`` is the array to fill; ``run(n)`` runs the graph and returns the bound output
    arrays, written in place: no allocation in Python per call.
    """

    def __init__(self, session, output_widths: dict[str, int], input_tail: Sequence[int], batch_sizes: Sequence[int]):
        self.session = session
        self.output_names = list(output_widths)
        self._inputs: dict[int, np.ndarray] = {}
        self._outputs: dict[int, dict[str, np.ndarray]] = {}
        self._bindings = {}
        for n in sorted(set(batch_sizes)):
            x = np.zeros((n, *input_tail), dtype=np.float32)
            outs = {name: np.zeros((n, k), dtype=np.float32) for name, k in output_widths.items()}
            binding = session.io_binding()
            binding.bind_input(INPUT_NAME, "cpu", 0, np.float32, list(x.shape), x.ctypes.data)
            for name, arr in outs.items():
                binding.bind_output(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)
            self._inputs[n], self._outputs[n], self._bindings[n] = x, outs, binding

    def input(self, n: int) -> np.ndarray:
        return self._inputs[n]

    def outputs(self, n: int) -> dict[str, np.ndarray]:
        return self._outputs[n]

    def run(self, n: int) -> dict[str, np.ndarray]:
        self.session.run_with_iobinding(self._bindings[n])
        return self._outputs[n]
