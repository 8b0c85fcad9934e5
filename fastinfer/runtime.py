"""One runtime behind every entry point: each verified graph served by its fastest backend, per
batch size.

A model served from its verified ONNX graph has up to four backends, all computing the same
graph: ONNX Runtime with one thread (latency first), ONNX Runtime with the batch thread count
(``executor.batch_threads``), for a pure tree ensemble the forest kernel
(``fastinfer.kernels.forest``: node, bitvector or oblivious traversal, bit-identical to ONNX Runtime, its
row blocks on every core for big batches), and for a plain linear model (one
``LinearRegressor``) its float32 product through numpy's BLAS, which ONNX Runtime runs as a
slow GEMV on big batches (equal to it to float32 rounding). A candidate must agree with the
1-thread session on the calibration rows to be chosen. Which one serves a batch is decided per size class
(1, 64, 512, 4,096, 65,536 rows and up) by timing the candidates once on the caller's own rows
(the first batch of that class, capped at ``CALIBRATION_ROWS``), and the choice is kept in a
small on-disk cache keyed by the graph's sha256 and the machine (``FASTINFER_CACHE_DIR``, else
``~/.cache/fastinfer``), so a later process reuses it without timing anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .latency import median_us

log = logging.getLogger(__name__)

SIZE_CLASSES = (1, 64, 512, 4096, 65536)
CALIBRATION_ROWS = 4096  # rows timed per candidate (a bigger batch is timed on its first rows)
CACHE_FILE = "runtime-choices.json"
MAX_CACHE_ENTRIES = 10_000
ORT_LATENCY, ORT_BATCH = "onnxruntime", "onnxruntime-threads"
LINEAR = "linear"
FOREST_MODES = ("node", "bitvector", "oblivious")  # the forest kernel's modes, as backends "forest:<mode>"
BACKENDS = (ORT_LATENCY, ORT_BATCH, LINEAR, *(f"forest:{m}" for m in FOREST_MODES))
# ONNX Runtime on the batch thread count and the linear backend round differently from the
# 1-thread session (GEMM blocking, summation order): 1e-5 of the output's scale is 100 float32 ulps.
AGREEMENT_RTOL = 1e-5
RESHAPES = {"Identity", "Reshape", "Flatten"}  # ops that leave (N, K) values as they are


def size_class(n_rows: int) -> int:
    """The smallest class at least ``n_rows`` (the largest for bigger batches)."""
    return next((c for c in SIZE_CLASSES if n_rows <= c), SIZE_CLASSES[-1])


def batch_threads(configured: int) -> int:
    """``executor.batch_threads``: 0 means every core this process may use."""
    if configured:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def machine_key() -> str:
    """What makes timings comparable: the CPU, the cores, and the versions of what runs."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    parts = [cpu, str(os.cpu_count())]
    for package in ("fastinfer", "onnxruntime", "numba"):
        try:
            parts.append(f"{package}={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package}=?")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass
class Choice:
    """Which backend serves one size class, the median µs per call each candidate took, and the
    candidates refused because they disagreed with ONNX Runtime on the calibration rows."""

    backend: str
    rows: int
    timings_us: dict[str, float] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)

    @property
    def considered(self) -> set[str]:
        return {self.backend, *self.timings_us, *self.refused}

    @classmethod
    def from_json(cls, entry: Any) -> Choice | None:
        """A cached entry, or None for anything that is not one (a damaged or foreign file)."""
        try:
            timings = {str(k): float(v) for k, v in dict(entry.get("timings_us") or {}).items()}
            choice = cls(str(entry["backend"]), int(entry.get("rows", 0)), timings, list(entry.get("refused") or []))
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
            return None
        known = choice.considered <= set(BACKENDS)
        return choice if known and all(np.isfinite(t) for t in timings.values()) else None


class ChoiceCache:
    """The on-disk cache of choices: ``{"<graph sha256>:<machine>": {"<size class>": Choice}}``.

    Read once, written atomically after each new calibration; a damaged or foreign file is
    ignored (it only costs a new calibration), never trusted blindly: only entries that are
    choices among known backends are kept. Two processes calibrating at once may drop each
    other's newest entry (last writer wins): that too only costs a calibration.
    """

    def __init__(self, folder: str | Path | None = None):
        folder = folder or os.environ.get("FASTINFER_CACHE_DIR") or Path.home() / ".cache" / "fastinfer"
        self.path = Path(folder) / CACHE_FILE
        self.machine = machine_key()
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, dict[str, Any]]] | None = None

    def _load(self) -> dict[str, dict[str, dict[str, Any]]]:
        if self._data is None:
            self._data = {}
            try:
                if self.path.is_file() and self.path.stat().st_size < 16 << 20:
                    data = json.loads(self.path.read_bytes())
                    for key, sizes in data.items() if isinstance(data, dict) else ():
                        valid = {
                            str(size): asdict(choice)
                            for size, entry in (sizes.items() if isinstance(sizes, dict) else ())
                            if (choice := Choice.from_json(entry)) is not None
                        }
                        if valid:
                            self._data[str(key)] = valid
            except (OSError, ValueError, RecursionError):
                log.warning("%s is unreadable: calibrating again", self.path)
        return self._data

    def get(self, graph_sha256: str, size: int) -> Choice | None:
        return Choice.from_json(self._load().get(f"{graph_sha256}:{self.machine}", {}).get(str(size)))

    def put(self, graph_sha256: str, size: int, choice: Choice) -> None:
        from .atomic import write_atomic_json

        with self._lock:
            data = self._load()
            data.setdefault(f"{graph_sha256}:{self.machine}", {})[str(size)] = asdict(choice)
            while len(data) > MAX_CACHE_ENTRIES:  # oldest first (insertion order)
                data.pop(next(iter(data)))
            try:
                write_atomic_json(self.path, data)
            except OSError as exc:  # a read-only home: the choice still holds for this process
                log.warning("cannot write %s (%s): choices are kept in memory only", self.path, exc.strerror)


_DEFAULT_CACHE: ChoiceCache | None = None


def default_cache() -> ChoiceCache:
    global _DEFAULT_CACHE
    if _DEFAULT_CACHE is None:
        _DEFAULT_CACHE = ChoiceCache()
    return _DEFAULT_CACHE


def linear_weights(graph: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(W (F, K), b (K,))`` in float32 when the graph is one ``LinearRegressor`` without a
    post-transform on the graph's input, then only reshapes; else None."""
    from onnx import helper

    nodes = list(graph.graph.node)
    if not nodes or nodes[0].op_type != "LinearRegressor" or any(n.op_type not in RESHAPES for n in nodes[1:]):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    if attrs.get("post_transform", b"NONE") not in (b"NONE", "NONE") or len(graph.graph.input) != 1:
        return None
    targets = int(attrs.get("targets", 1))
    coefficients = np.asarray(attrs.get("coefficients", []), dtype=np.float32)
    if targets < 1 or coefficients.size == 0 or coefficients.size % targets:
        return None
    intercepts = np.asarray(attrs.get("intercepts", np.zeros(targets)), dtype=np.float32)
    if intercepts.size != targets:
        return None
    return np.ascontiguousarray(coefficients.reshape(targets, -1).T), intercepts


BITVECTOR_MIN_ROWS = 64
# A batch from this size runs its tree kernels on the batch threads (the plan's symbols per bar,
# engine.predict's rows): at 128 rows × 500 trees that is ~0.3 ms of tree work, far above a
# thread hand-off (the forest kernel's own default, 1,024 rows, left XGBoost's threaded predict
# ahead at 512 rows).
PARALLEL_BATCH = 128


def forest_modes(kernel: Any, n_rows: int) -> list[str]:
    """The forest kernel's modes worth timing on ``n_rows`` rows: bitvector only for batches of
    ``BITVECTOR_MIN_ROWS`` or more (on a few rows node always wins, and packing it costs ~0.3 s)."""
    return [m for m in kernel.modes if m != "bitvector" or n_rows >= BITVECTOR_MIN_ROWS]


def forest_agrees(forest_out: np.ndarray, ort_out: np.ndarray) -> bool:
    """The forest kernel is bit-identical to ONNX Runtime by construction: anything else is a bug
    to refuse, never to serve."""
    return forest_out.size == ort_out.size and np.array_equal(
        forest_out.reshape(-1), ort_out.reshape(-1), equal_nan=True
    )


class single_thread_blas:
    """numpy's BLAS on one thread for the ``with`` block, then as it was: its threaded GEMV
    stalls whenever another thread holds a core (65,536 × 16 rows with one core busy: 1.5 ms
    on two threads, 0.23 ms on one), and a product this small gains nothing from threads.
    The thread count is process-wide: one block at a time (a lock), so two callers cannot
    leave BLAS on one thread by saving each other's setting."""

    _lock = threading.Lock()

    def __init__(self):
        from threadpoolctl import ThreadpoolController

        self.libraries = ThreadpoolController().select(user_api="blas").lib_controllers
        self.before: list[int] = []

    def __enter__(self) -> None:
        self._lock.acquire()
        self.before = [lib.num_threads for lib in self.libraries]
        for lib in self.libraries:
            lib.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        try:
            for lib, n in zip(self.libraries, self.before, strict=True):
                lib.set_num_threads(n)
        finally:
            self._lock.release()


class GraphRuntime:
    """The backends of one verified graph and the choice among them per size class.

    ``sessions``: ``(latency_session, batch_session_factory)``: the 1-thread ONNX Runtime session
    and a function opening one with the batch thread count (opened on first need). The forest
    kernel is built on first need too, for graphs that are a tree ensemble.
    """

    def __init__(
        self,
        graph: Any,
        graph_sha256: str,
        run_latency: Callable[[np.ndarray], np.ndarray],
        open_batch_session: Callable[[], Callable[[np.ndarray], np.ndarray]],
        *,
        forest_kernel: str = "auto",
        threads: int = 1,
        cache: ChoiceCache | None = None,
    ):
        self.graph = graph
        self.sha256 = graph_sha256
        self.threads = threads
        self.forest_mode = forest_kernel  # auto: a candidate; on: always; off: never
        self.cache = cache
        self.choices: dict[int, Choice] = {}
        self.run_latency = run_latency  # the 1-thread ONNX Runtime session: the live path's reference
        self._run = {ORT_LATENCY: run_latency}
        self._open_batch_session = open_batch_session
        self._forest = None
        self._linear = linear_weights(graph)
        self.forest_reason = ""  # why the forest kernel does not serve this graph, when it does not
        self._lock = threading.Lock()
        self._forest_lock = threading.Lock()

    # -- candidates

    def _forest_kernel(self):
        if self._forest is None and not self.forest_reason:
            if self.forest_mode == "off":
                self.forest_reason = "executor.forest_kernel is off"
            elif not any(n.op_type == "TreeEnsembleRegressor" for n in self.graph.graph.node):
                self.forest_reason = "not a tree ensemble"
            else:
                from .kernels.forest import ForestKernel

                try:
                    self._forest = ForestKernel.from_onnx(
                        self.graph, n_threads=self.threads, parallel_min_rows=PARALLEL_BATCH
                    )
                except ValueError as exc:
                    self.forest_reason = f"not eligible: {exc}"
        return self._forest

    def _candidates(self, n_rows: int) -> list[str]:
        kernel = self._forest_kernel()
        forest = [] if kernel is None else [f"forest:{m}" for m in forest_modes(kernel, n_rows)]
        if forest and self.forest_mode == "on":
            return forest
        names = [ORT_LATENCY]
        if self.threads > 1 and n_rows >= SIZE_CLASSES[2]:
            names.append(ORT_BATCH)
        if self._linear is not None:
            names.append(LINEAR)
        return names + forest

    def _runner(self, name: str) -> Callable[[np.ndarray], np.ndarray]:
        if name not in self._run:
            if name == ORT_BATCH:
                self._run[name] = self._open_batch_session()
            elif name == LINEAR:
                W, b = self._linear
                shape = self.run_latency(np.zeros((2, W.shape[0]), np.float32)).shape[1:]  # the graph's own
                blas = single_thread_blas()

                def run(X: np.ndarray) -> np.ndarray:
                    with blas:
                        Y = np.ascontiguousarray(X, dtype=np.float32) @ W
                    Y += b
                    return Y.reshape(len(Y), *shape)

                self._run[name] = run
            else:
                kernel, mode, lock = self._forest_kernel(), name.split(":", 1)[1], self._forest_lock

                def run(X: np.ndarray) -> np.ndarray:
                    with lock:  # one kernel instance keeps scratch buffers: one caller at a time
                        kernel.mode = mode
                        return kernel.predict(np.ascontiguousarray(X, dtype=np.float32))

                self._run[name] = run
        return self._run[name]

    # -- serving

    def choice(self, X: np.ndarray) -> Choice:
        """The backend for a batch like ``X`` (calibrated on ``X`` the first time its class is seen)."""
        size = size_class(len(X))
        found = self.choices.get(size)
        if found is not None:
            return found
        with self._lock:
            found = self.choices.get(size) or (self.cache.get(self.sha256, size) if self.cache else None)
            candidates = self._candidates(len(X))
            # a cached choice made without one of today's candidates is made again
            if found is None or found.backend not in candidates or not set(candidates) <= found.considered:
                found = self._calibrate(X, candidates)
                if self.cache is not None and len(candidates) > 1:
                    self.cache.put(self.sha256, size, found)
            self.choices[size] = found
        return found

    def _calibrate(self, X: np.ndarray, candidates: list[str]) -> Choice:
        """Time each candidate on the caller's rows; one whose output there is not ONNX Runtime's
        (bit for bit for the forest kernel, to ``AGREEMENT_RTOL`` of the output's scale for the
        others) is logged and refused, and the 1-thread session serves if none is left."""
        rows = np.ascontiguousarray(X[:CALIBRATION_ROWS], dtype=np.float32)
        others = [name for name in candidates if name != ORT_LATENCY]
        reference = np.asarray(self.run_latency(rows)) if others else None
        refused = [name for name in others if not self._agrees(name, np.asarray(self._runner(name)(rows)), reference)]
        agreeing = [name for name in candidates if name not in refused]
        if len(agreeing) <= 1:
            return Choice(agreeing[0] if agreeing else ORT_LATENCY, len(rows), {}, refused)
        repeat = 5 if len(rows) >= 512 else 21
        runners = {name: self._runner(name) for name in agreeing}
        timings = {name: median_us(lambda run=run: run(rows), repeat) for name, run in runners.items()}
        return Choice(min(timings, key=timings.get), len(rows), timings, refused)

    def _agrees(self, name: str, got: np.ndarray, reference: np.ndarray) -> bool:
        if name.startswith("forest:"):
            agrees = forest_agrees(got, reference)
        else:
            agrees = got.size == reference.size
            if agrees:
                with np.errstate(invalid="ignore"):
                    scale = max(float(np.nanmax(np.abs(reference), initial=0.0)), 1e-30)
                atol = AGREEMENT_RTOL * scale
                agrees = np.allclose(got.reshape(-1), reference.reshape(-1), rtol=0.0, atol=atol, equal_nan=True)
        if not agrees:
            log.warning("graph %s: backend %s disagrees with ONNX Runtime here; not used", self.sha256[:12], name)
        return bool(agrees)

    def run(self, X: np.ndarray) -> np.ndarray:
        return self._runner(self.choice(X).backend)(X)
