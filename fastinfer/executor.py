"""ONNX Runtime sessions, providers, fused graphs and pre-allocated I/O.

Sessions are built from ``ExecutorSettings``: providers in the configured order filtered by
what the installed onnxruntime offers (CPU last, always), one intra-op thread and no
spinning by default (latency first; spinning steals the trading loop's core).

A fused graph merges every graph that reads the same input into one: one input
``features`` holding the union of their columns, a Gather per member where its columns
differ, and one named output per member, so one ``run`` per bar serves all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .config import ExecutorSettings
from .converters import INPUT_NAME  # the graph contract every converter keeps
from .converters.graph import FuseMember, fuse
from .errors import ConfigError, InferenceError
from .latency import median_us
from .layout import OutputLayout
from .runtime import PARALLEL_BATCH, batch_threads, forest_agrees, forest_modes

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def select_providers(wanted: Sequence[str], available: Sequence[str] | None = None) -> list[str]:
    """``wanted`` in order, keeping those onnxruntime offers; CPU is always the last resort.

    A name onnxruntime does not know at all (a typo such as ``CUDAExecutionProvidr``) is a
    ``ConfigError``: silently dropped, it would leave a GPU deployment on the CPU.
    """
    import onnxruntime

    unknown = [p for p in wanted if p not in onnxruntime.get_all_providers()]
    if unknown:
        raise ConfigError(
            f"executor.providers: {', '.join(map(repr, unknown[:5]))} is not an ONNX Runtime execution provider "
            f"(known: {', '.join(onnxruntime.get_all_providers())})"
        )
    if available is None:
        available = onnxruntime.get_available_providers()
    chosen = [p for p in wanted if p in available and p != CPU]
    return [*chosen, CPU]


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
        folder = Path(settings.optimized_model_dir).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"executor.optimized_model_dir: cannot create {folder} ({exc.strerror})") from None
        # One flat file per session: a name like "fwd_ret_5m/lightgbm" must not become a subfolder.
        opts.optimized_model_filepath = str(folder / f"{_SAFE_NAME.sub('_', name)}.optimized.onnx")
    return opts


def open_session(
    model_bytes: bytes, settings: ExecutorSettings, name: str = "graph", available: Sequence[str] | None = None
):
    """An InferenceSession over verified graph bytes, on the first configured provider that works."""
    import onnxruntime as ort

    providers = select_providers(settings.providers, available)
    digest = hashlib.sha256(model_bytes).hexdigest()[:12]
    session = ort.InferenceSession(
        model_bytes, sess_options=session_options(settings, f"{name}-{digest}"), providers=providers
    )
    log.info("%s served by %s", name, session.get_providers()[0])
    return session


# ---------------------------------------------------------------- pre-allocated I/O


class BoundGraph:
    """A session whose input and outputs are bound once (IOBinding) to pre-allocated arrays.

    The caller writes into ``input`` (bound in place, no copy); ``run()`` writes ``outputs``
    in place: nothing is allocated in Python per call.
    """

    def __init__(self, session, input_array: np.ndarray, output_widths: dict[str, int]):
        if input_array.dtype != np.float32 or not input_array.flags.c_contiguous:
            raise ValueError("bound input must be a C-contiguous float32 array")
        self.session = session
        self.input = input_array
        n = input_array.shape[0]
        self.outputs = {name: np.zeros((n, k), dtype=np.float32) for name, k in output_widths.items()}
        self._binding = session.io_binding()
        self._binding.bind_input(INPUT_NAME, "cpu", 0, np.float32, list(input_array.shape), input_array.ctypes.data)
        for name, arr in self.outputs.items():
            self._binding.bind_output(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)

    def run(self) -> dict[str, np.ndarray]:
        self.session.run_with_iobinding(self._binding)
        return self.outputs


# ---------------------------------------------------------------- plan: every model of a predictor


@dataclass(frozen=True)
class PlanChoice:
    """How one model is served by a plan, and why: ``engine`` is ``forest:<mode>`` (a
    ``ForestKernel`` mode), ``onnxruntime`` (the plan's fused graph) or ``native``; ``threads`` the
    forest kernel's; ``timings_us`` the medians measured at the plan's batch size (empty when the
    choice was forced or there was nothing to compare)."""

    engine: str
    reason: str = ""
    threads: int = 1
    timings_us: dict[str, float] = field(default_factory=dict)


class Plan:
    """Runs a set of loaded models over one batch of symbols, writing one output matrix.

    Pure tree-ensemble graphs run on the forest kernel where it is faster (or forced); the other
    ONNX-served models are fused per input kind: all tabular graphs into one, sequence graphs per
    sequence length. Native-fallback models run beside them through the same interface. ``out``
    is (batch, n_columns) float32; ``columns[j]`` is (target, family, column name). Inputs are
    filled by the caller into ``tabular_input`` and ``sequence_inputs[T]``. ``choices`` records
    how each model is served and why. A batch of ``PARALLEL_BATCH`` symbols or more runs on
    ``executor.batch_threads`` threads (tree kernels, and the fused graphs' ONNX Runtime
    sessions); one symbol stays on one thread and never spins.
    """

    def __init__(
        self,
        models: Sequence,
        union: Sequence[str],
        batch: int,
        settings: ExecutorSettings,
        *,
        layout: OutputLayout | None = None,
    ):
        self.models = list(models)
        self.union = list(union)
        self.batch = batch
        width = len(self.union)
        self.layout = layout if layout is not None else OutputLayout.from_models(self.models, self.union)
        self.columns = self.layout.columns
        self.model_slices = [slice(s.start, s.stop) for s in self.layout.slots]
        self.out = np.full((batch, len(self.columns)), np.nan, dtype=np.float32)
        self.tabular_input = np.zeros((batch, width), dtype=np.float32)
        self.sequence_inputs = {t: np.zeros((batch, t, width), dtype=np.float32) for t in self.layout.sequence_lengths}
        self.threads = batch_threads(settings.batch_threads) if batch >= PARALLEL_BATCH else 1

        self._groups: list[tuple[str, BoundGraph, list[tuple[np.ndarray, np.ndarray]]]] = []
        self._native: list[tuple[object, np.ndarray, np.ndarray, np.ndarray]] = []
        self.fused_graphs: dict[str, onnx.ModelProto] = {}
        kinds: dict[int, list[int]] = {}  # 0 = tabular, T = sequence length
        self._forests: list[tuple[object, np.ndarray, np.ndarray]] = []  # (kernel, its out, dst in out)
        self.forest_kernels: dict[tuple[str, str], object] = {}  # (target, family) -> the kernel serving it
        self.choices: dict[tuple[str, str], PlanChoice] = {}
        for i, (m, slot) in enumerate(zip(self.models, self.layout.slots)):
            kind = slot.sequence_length
            cols = np.asarray(slot.needs, dtype=np.int64)
            source = self.sequence_inputs[kind] if kind else self.tabular_input
            dst = self.out[:, self.model_slices[i]]
            if m.backend != "onnx":
                self.choices[slot.key] = PlanChoice("native", "no verified graph")
                self._native.append((m, cols, source, dst))
            elif not kind and self._forest_member(m, cols, dst, settings):
                continue
            else:  # keep the forest kernel's reason or calibration when it declined
                self.choices.setdefault(slot.key, PlanChoice("onnxruntime", "not a tree ensemble"))
                kinds.setdefault(kind, []).append(i)
        session_settings = (
            dataclasses.replace(settings, intra_op_threads=self.threads) if self.threads > 1 else settings
        )
        for kind, members in kinds.items():
            source = self.sequence_inputs[kind] if kind else self.tabular_input
            fuse_members = [
                FuseMember(
                    f"{self.models[i].target}/{self.models[i].family.name}",
                    self.models[i].graph,
                    self.layout.slots[i].needs,
                    len(self.models[i].columns),
                )
                for i in members
            ]
            shape = ["N", kind, width] if kind else ["N", width]
            fused = fuse(fuse_members, width, shape)
            name = f"fused-seq{kind}" if kind else "fused-tabular"
            self.fused_graphs[name] = fused
            session = open_session(fused.SerializeToString(), session_settings, name)
            bound = BoundGraph(session, source, {fm.name: fm.n_outputs for fm in fuse_members})
            copies = [
                (bound.outputs[fm.name], self.out[:, self.model_slices[i]]) for fm, i in zip(fuse_members, members)
            ]
            self._groups.append((name, bound, copies))

    def _forest_member(self, m, cols: np.ndarray, dst: np.ndarray, settings: ExecutorSettings) -> bool:
        """Serve a pure tree-ensemble graph with the forest kernel when configured or faster.

        ``forest_kernel: auto`` calibrates at plan time on this plan's batch size: the kernel's
        modes (node, bitvector) and, for a big batch, one thread against ``threads``; the best of
        them against the graph's own ONNX Runtime session, medians of a short run each.
        """
        key = (m.target, m.family.name)
        has_trees = any(n.op_type == "TreeEnsembleRegressor" for n in m.graph.graph.node)
        if settings.forest_kernel == "off" or not has_trees:
            if has_trees:
                self.choices[key] = PlanChoice("onnxruntime", "executor.forest_kernel is off")
            return False
        from .kernels.forest import ForestKernel

        try:  # the kernel reads the model's columns straight from the plan's tabular input
            kernel = ForestKernel.from_onnx(m.graph, columns=cols, parallel_min_rows=PARALLEL_BATCH)
        except ValueError as exc:
            self.choices[key] = PlanChoice("onnxruntime", f"forest kernel not eligible: {exc}")
            return False
        out = np.zeros((self.batch, kernel.n_outputs), dtype=np.float32)
        rows = np.ascontiguousarray(kernel.calibration_rows(self.batch), dtype=np.float32)
        wide = np.zeros((self.batch, self.tabular_input.shape[1]), dtype=np.float32)
        wide[:, : rows.shape[1]] = rows
        x = np.ascontiguousarray(wide[:, cols])
        reference = m.runtime.run_latency(x)
        timings: dict[str, float] = {}
        for mode in forest_modes(kernel, self.batch):
            kernel.mode = mode
            if not forest_agrees(kernel.predict(wide, out), reference):  # never serve a kernel bug
                log.warning("%s/%s: forest kernel mode %s disagrees with ONNX Runtime", *key, mode)
                continue
            for threads in sorted({1, self.threads}):
                kernel.n_threads = threads
                timings[f"forest:{mode}" + (f"x{threads}" if threads > 1 else "")] = median_us(
                    lambda: kernel.predict(wide, out)
                )
        if not timings:
            self.choices[key] = PlanChoice("onnxruntime", "the forest kernel disagreed with ONNX Runtime")
            return False
        best = min(timings, key=timings.get)
        mode, _, threads = best.partition("x")
        kernel.mode, kernel.n_threads = mode.split(":", 1)[1], int(threads or 1)
        if settings.forest_kernel == "auto":
            timings["onnxruntime"] = median_us(lambda: m.runtime.run_latency(x))
            if timings["onnxruntime"] <= timings[best]:
                self.choices[key] = PlanChoice("onnxruntime", "faster than the forest kernel here", 1, timings)
                return False
        reason = "forced by executor.forest_kernel: on" if settings.forest_kernel == "on" else "fastest here"
        self.choices[key] = PlanChoice(mode, reason, kernel.n_threads, timings)
        self._forests.append((kernel, out, dst))
        self.forest_kernels[key] = kernel
        return True

    def run(self) -> np.ndarray:
        """Run every model on the current inputs; returns ``out`` (written in place)."""
        for kernel, out, dst in self._forests:
            kernel.predict(self.tabular_input, out)
            np.copyto(dst, out)
        for name, bound, copies in self._groups:
            try:
                bound.run()
            except Exception as exc:  # ONNX Runtime's own error types: a typed error naming the graph
                raise InferenceError(f"{name} ({len(copies)} models): ONNX Runtime failed: {str(exc)[:300]}") from exc
            for src, dst in copies:
                np.copyto(dst, src)
        for model, cols, source, dst in self._native:
            run_native(model, source[..., cols], dst)
        return self.out


def run_native(model, X: np.ndarray, dst: np.ndarray) -> None:
    """A native model on the plan's rows into ``dst``: every row when its library routes NaN,
    else only the rows without NaN (the others stay NaN)."""
    rows = slice(None) if model.family.handles_nan else np.isfinite(X).reshape(len(X), -1).all(axis=1)
    dst[...] = np.nan
    if np.any(rows):
        pred = np.asarray(model.run(X[rows]), dtype=np.float32)
        dst[rows] = pred.reshape(-1, dst.shape[1])
