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
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from .config import ExecutorSettings
from .converters import INPUT_NAME  # the graph contract every converter keeps
from .converters.graph import FuseMember, fuse
from .errors import ConfigError
from .layout import OutputLayout

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
    """``wanted`` in order, keeping those onnxruntime offers; CPU is always the last resort."""
    if available is None:
        import onnxruntime

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


class Plan:
    """Runs a set of loaded models over one batch of symbols, writing one output matrix.

    ONNX-served models are fused per input kind: all tabular graphs into one, sequence graphs
    per sequence length. Native-fallback models run beside them through the same interface.
    ``out`` is (batch, n_columns) float32; ``columns[j]`` is (target, family, column name).
    Inputs are filled by the caller into ``tabular_input`` and ``sequence_inputs[T]``.
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
        seq_lens = sorted({m.spec.sequence_length for m in self.models if m.family.sequential})
        self.sequence_inputs = {t: np.zeros((batch, t, width), dtype=np.float32) for t in seq_lens}

        self._groups: list[tuple[BoundGraph, list[tuple[np.ndarray, np.ndarray]]]] = []
        self._native: list[tuple[object, np.ndarray, np.ndarray, np.ndarray]] = []
        self.fused_graphs: dict[str, onnx.ModelProto] = {}
        kinds: dict[int, list[int]] = {}  # 0 = tabular, T = sequence length
        self._forests: list[tuple[object, np.ndarray, np.ndarray]] = []  # (kernel, its out, dst in out)
        self.choices: dict[tuple[str, str], dict] = {}  # (target, family) -> how it is served, and why
        member_cols = [np.array([self.union.index(f) for f in m.feature_order], dtype=np.int64) for m in self.models]
        for i, (m, cols) in enumerate(zip(self.models, member_cols)):
            kind = m.spec.sequence_length if m.family.sequential else 0
            source = self.sequence_inputs[kind] if kind else self.tabular_input
            dst = self.out[:, self.model_slices[i]]
            if m.backend != "onnx":
                self.choices[(m.target, m.family.name)] = {"engine": "native"}
                self._native.append((m, cols, source, dst))
            elif not kind and self._forest_member(m, cols, dst, settings):
                continue
            else:  # keep the forest kernel's reason or calibration when it declined
                self.choices.setdefault((m.target, m.family.name), {"engine": "onnxruntime"})
                kinds.setdefault(kind, []).append(i)
        for kind, members in kinds.items():
            source = self.sequence_inputs[kind] if kind else self.tabular_input
            fuse_members = [
                FuseMember(
                    f"{self.models[i].target}/{self.models[i].family.name}",
                    self.models[i].graph,
                    tuple(member_cols[i].tolist()),
                    len(self.models[i].columns),
                )
                for i in members
            ]
            shape = ["N", kind, width] if kind else ["N", width]
            fused = fuse(fuse_members, width, shape)
            name = f"fused-seq{kind}" if kind else "fused-tabular"
            self.fused_graphs[name] = fused
            session = open_session(fused.SerializeToString(), settings, name)
            bound = BoundGraph(session, source, {fm.name: fm.n_outputs for fm in fuse_members})
            copies = [
                (bound.outputs[fm.name], self.out[:, self.model_slices[i]]) for fm, i in zip(fuse_members, members)
            ]
            self._groups.append((bound, copies))

    def _forest_member(self, m, cols: np.ndarray, dst: np.ndarray, settings: ExecutorSettings) -> bool:
        """Serve a pure tree-ensemble graph with the forest kernel when configured or faster.

        ``forest_kernel: auto`` calibrates at plan time: the graph's own ORT session against
        the kernel on this plan's batch size, median of a short run each; the faster serves.
        """
        has_trees = any(n.op_type == "TreeEnsembleRegressor" for n in m.graph.graph.node)
        if settings.forest_kernel == "off" or not has_trees:
            return False
        from .kernels.forest import ForestKernel

        key = (m.target, m.family.name)
        try:  # the kernel reads the model's columns straight from the plan's tabular input
            kernel = ForestKernel.from_onnx(m.graph, columns=cols)
        except ValueError as exc:
            self.choices[key] = {"engine": "onnxruntime", "forest_kernel": f"not eligible: {exc}"}
            return False
        out = np.zeros((self.batch, kernel.n_targets), dtype=np.float32)
        choice = {"engine": "forest", "calibration": "forced by config"}
        if settings.forest_kernel == "auto":
            x = np.zeros((self.batch, len(cols)), dtype=np.float32)
            ort_us = _median_us(lambda: m.run(x))
            forest_us = _median_us(lambda: kernel.predict(self.tabular_input, out))
            choice["calibration"] = {"onnxruntime_us": ort_us, "forest_us": forest_us}
            if forest_us >= ort_us:
                self.choices[key] = {**choice, "engine": "onnxruntime"}
                return False
        self.choices[key] = choice
        self._forests.append((kernel, out, dst))
        return True

    def run(self) -> np.ndarray:
        """Run every model on the current inputs; returns ``out`` (written in place)."""
        for kernel, out, dst in self._forests:
            kernel.predict(self.tabular_input, out)
            np.copyto(dst, out)
        for bound, copies in self._groups:
            bound.run()
            for src, dst in copies:
                np.copyto(dst, src)
        for model, cols, source, dst in self._native:
            X = source[..., cols]
            rows = np.isfinite(X).reshape(len(X), -1).all(axis=1) if not model.family.handles_nan else slice(None)
            dst[...] = np.nan  # rows a native model cannot take (NaN inputs) stay NaN
            if np.any(rows):
                pred = np.asarray(model.run(X[rows]), dtype=np.float32)
                dst[rows] = pred.reshape(-1, dst.shape[1])
        return self.out


def _median_us(fn, repeat: int = 31) -> float:
    """Median wall time of ``fn`` in microseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return float(np.median(times)) / 1e3
