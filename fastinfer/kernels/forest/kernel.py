"""Step 5: the public class — `ForestKernel` builds the layouts once and dispatches `predict`.

Modes (``mode=``):

``"node"``       the node kernels (``node.py``) on the node layout, or the generic kernel where
                 the node layout cannot take the ensemble (MIN/MAX, several weights per leaf).
``"bitvector"``  QuickScorer (``bitvector.py``): one row at a time, or its vectorised variant
                 for batches; ensembles the node layout takes, made of plain trees.
``"oblivious"``  one leaf lookup per tree (``oblivious.py``), levels tested across a block of rows
                 in SIMD; ensembles of oblivious trees (CatBoost's), any targets, SUM or AVERAGE.
``"auto"``       ``oblivious`` where available, else ``node``, serves until `calibrate` has timed
                 every available mode on a batch size and kept the faster (it records why in
                 ``mode_choice``); the bitvector layout is packed then, on first use.

Every mode's output is bit-identical to ONNX Runtime 1.32 CPU (1 intra-op thread) on the
same graph, including post-transforms, the ``Exp``/``Sigmoid`` links and the binary tail
(``finish.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numba
import numpy as np
import onnx

from . import codes as C
from .bitvector import bitvector_blocks, bitvector_blocks_parallel, bitvector_rows, bitvector_rows_parallel
from .generic import generic_rows, generic_rows_parallel
from .node import node_one_row, node_rows, node_rows_parallel
from .normalise import TreeStructure, normalise
from .oblivious import oblivious_one_row, oblivious_rows, oblivious_rows_parallel
from .pack import (
    Finish,
    bitvector_reason,
    oblivious_trees,
    pack_bitvectors,
    pack_generic,
    pack_nodes,
    pack_oblivious,
    single_target_trees_reason,
)
from .read import EnsembleAttributes, OutputTail, read_forest_graph, remap_features

MODES = ("auto", "node", "bitvector", "oblivious")
LAYOUTS = ("auto", "generic")
_F32 = np.dtype(np.float32)


@dataclass(frozen=True)
class ModeChoice:
    """Which kernel serves, and why: timings (median µs per call) on ``rows`` rows when calibrated."""

    mode: str
    rows: int = 0
    timings_us: dict[str, float] = field(default_factory=dict)
    reason: str = ""


class ForestKernel:
    """A TreeEnsembleRegressor (and its output tail) compiled to flat arrays; `predict` matches ORT.

    Build with `from_onnx` (a whole graph) or `from_node` (one node). ``layout="generic"`` forces
    the generic kernel (the reference path). ``n_threads`` > 1 lets batches of at least
    ``parallel_min_rows`` rows run on that many numba threads (prange over blocks of rows); one
    row never starts a thread.

    ``n_targets`` is the trees' width K; ``n_outputs`` the width `predict` writes (K, or 2 for the
    binary tail [1 - p, p]).

    One instance keeps scratch buffers for its sequential paths, so it must not be called from
    two threads at once (the kernels release the GIL).
    """

    def __init__(
        self,
        node: onnx.NodeProto,
        *,
        tail: OutputTail | None = None,
        mode: str = "auto",
        layout: str = "auto",
        n_threads: int = 1,
        parallel_min_rows: int = C.PARALLEL_MIN_ROWS,
    ):
        attrs = EnsembleAttributes(node)
        reason = attrs.why_unsupported()
        if reason:
            raise ValueError(f"{node.op_type} {attrs.name!r}: {reason}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        structure = TreeStructure(attrs)
        forest = normalise(structure)
        tail = tail or OutputTail()
        finish = Finish.build(attrs, len(structure.roots), tail)
        self.name = attrs.name
        self.n_targets = attrs.n_targets
        self.n_outputs = 2 if tail.binary else attrs.n_targets
        self.n_trees = len(structure.roots)
        self.n_features = attrs.n_features
        self.n_chains = len(forest.chains)
        self.aggregate_function = attrs.aggregate
        self.post_transform = attrs.post_transform
        self.link = tail.link.name.lower()
        self.binary = tail.binary
        self.accumulate_dtype = np.dtype(np.float32)
        self._categories: dict[int, list[float]] = {}
        for chain in forest.chains:
            self._categories.setdefault(chain.feature, []).extend(chain.values)
        self.n_threads = int(n_threads)
        self.parallel_min_rows = int(parallel_min_rows)
        why_not = single_target_trees_reason(attrs, structure, forest) if layout == "auto" else "layout='generic'"
        self._nodes = pack_nodes(structure, forest, finish) if not why_not else None
        if self._nodes is None and not why_not:
            why_not = "a tree too wide for 16-bit child offsets"
        self.layout = "fast" if self._nodes is not None else "generic"
        if self._nodes is not None:
            self._one_scratch = self._nodes.one_row_scratch()
            self._block_scratch = self._nodes.block_scratch()
        else:
            self._generic = pack_generic(structure, finish)
            self._sums = np.zeros(self.n_targets, dtype=np.float32)
            self._has = np.zeros(self.n_targets, dtype=np.bool_)
        # The bitvector layout is packed when first needed (calibrate, or mode="bitvector").
        self._bits = None
        self._source = (node, tail)
        self._bitvector_reason = why_not or bitvector_reason(forest)
        if mode == "bitvector" and self._bitvector_reason:
            raise ValueError(f"{node.op_type} {attrs.name!r}: no bitvector mode for {self._bitvector_reason}")
        # The oblivious layout is packed now: finding the levels is the same walk as packing them.
        trees, self._oblivious_reason = oblivious_trees(structure, forest) if layout == "auto" else ([], why_not)
        self._oblivious = pack_oblivious(trees, structure, forest, finish) if not self._oblivious_reason else None
        if self._oblivious is not None:
            self._ob_one_scratch = self._oblivious.one_row_scratch()
            self._ob_scratch, self._ob_index = self._oblivious.block_scratch()
        if mode == "oblivious" and self._oblivious_reason:
            raise ValueError(f"{node.op_type} {attrs.name!r}: no oblivious mode for {self._oblivious_reason}")
        self._checked: tuple = (None, None)  # the last (X, out) that passed the checks
        # Uncalibrated, oblivious trees take the oblivious mode: it tests a level of a block's rows
        # per SIMD instruction where node walks each row; else node, which never loses on few rows.
        self.mode = mode if mode != "auto" else "oblivious" if self._oblivious is not None else "node"
        reasons = (("bitvector", self._bitvector_reason), ("oblivious", self._oblivious_reason))
        no_modes = "".join(f" (no {m} mode: {r})" for m, r in reasons if r)
        self.mode_choice = ModeChoice(
            self.mode, reason="asked for" if mode != "auto" else f"{self.mode} until calibrated" + no_modes
        )

    @property
    def mode(self) -> str:
        """The kernel `predict` runs: "node", "bitvector" or "oblivious" (see the module docstring)."""
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise ValueError(f"mode {mode!r} is not available here; modes: {self.modes}")
        if mode == "bitvector" and self._bits is None:
            node, tail = self._source
            structure = TreeStructure(EnsembleAttributes(node))
            finish = Finish.build(structure.attrs, len(structure.roots), tail)
            self._bits = pack_bitvectors(structure, normalise(structure), finish)
            self._bv_scratch, self._bv = self._bits.scratch()
            self._vq_scratch, self._vq_bv = self._bits.block_scratch()
        self._mode = mode

    # -- construction --------------------------------------------------------

    @classmethod
    def from_node(cls, node: onnx.NodeProto, **kw) -> ForestKernel:
        """Kernel for one TreeEnsembleRegressor node (input: float32 (N, F)), no output tail."""
        return cls(node, **kw)

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto, *, columns=None, **kw) -> ForestKernel:
        """Kernel for a graph "input -> TreeEnsembleRegressor -> [Exp | Sigmoid] -> [binary tail] -> output".

        Reshape-only ops (Identity, Cast to FLOAT, Reshape, Flatten, Squeeze, Unsqueeze) may sit
        anywhere after the trees: `predict` returns (N, n_outputs) whatever shape the graph
        declares (CatBoost's graph declares (N,)). Anything else raises ValueError naming it.

        ``columns``: graph feature j is column ``columns[j]`` of the rows given to `predict`, so a
        wider matrix (a union of several models' features) is read in place, with no gather.
        """
        graph = read_forest_graph(model)
        node = graph.node
        if columns is not None:
            node = remap_features(node, np.asarray(columns, dtype=np.int64))
        return cls(node, tail=graph.tail, **kw)

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this ensemble can run in."""
        return (
            "node",
            *(("bitvector",) if not self._bitvector_reason else ()),
            *(("oblivious",) if not self._oblivious_reason else ()),
        )

    # -- choosing a mode -----------------------------------------------------

    def calibration_rows(self, n_rows: int, seed: int = 0) -> np.ndarray:
        """Rows that take realistic paths: each feature drawn from the thresholds split on it
        (±1 ulp), 2% NaN; features never split on are 0."""
        rng = np.random.default_rng(seed)
        X = np.zeros((n_rows, self.n_features), dtype=np.float32)
        for f, values in enumerate(self._split_values()):
            if len(values):
                pick = rng.choice(values, size=n_rows)
                with np.errstate(over="ignore"):  # past the largest float32 is inf, a value rows may take
                    X[:, f] = np.nextafter(pick, rng.choice([-np.inf, np.inf], size=n_rows).astype(np.float32))
        X[rng.random(X.shape) < 0.02] = np.nan
        return X

    def _split_values(self) -> list[np.ndarray]:
        if self._nodes is not None:
            prog, nodes = self._nodes.prog, self._nodes.nodes.reshape(-1, C.NODE_WORDS)
            columns = nodes[:, C.NODE_WORD] & C.NODE_COLUMN_MASK
            values = nodes.view(np.float32)[:, C.NODE_THRESHOLD]
            F = int(prog[C.NODE_N_FEATURES])
            split = (nodes[:, C.NODE_WORD] >> C.NODE_OFFSET_SHIFT) > 0
            per = [values[split & ((columns == f) | (columns == F + f))] for f in range(F)]
        else:
            gi, thr = self._generic.gi, self._generic.thr
            split = gi[:, C.GEN_MODE] != C.LEAF
            per = [thr[split & (gi[:, C.GEN_FEATURE] == f)] for f in range(self.n_features)]
        per = [np.concatenate([v, np.asarray(self._categories.get(f, []), np.float32)]) for f, v in enumerate(per)]
        return [v[np.isfinite(v)] for v in per]

    def calibrate(self, n_rows: int, X: np.ndarray | None = None, repeat: int = 31) -> ModeChoice:
        """Time every available mode on ``n_rows`` rows (``X`` or `calibration_rows`), keep the
        faster, and return (and keep in ``mode_choice``) what was measured and why."""
        if X is None:
            X = self.calibration_rows(n_rows)
        X = np.ascontiguousarray(X[:n_rows], dtype=np.float32)
        out = np.empty((len(X), self.n_outputs), dtype=np.float32)
        timings = {}
        for mode in self.modes:
            self.mode = mode
            timings[mode] = _median_us(lambda: self.predict(X, out), repeat)
        best = min(timings, key=timings.get)
        self.mode = best
        others = ", ".join(f"{m} {t:.1f} µs" for m, t in timings.items() if m != best)
        reason = f"fastest on {len(X)} rows: {best} {timings[best]:.1f} µs" + (f" vs {others}" if others else "")
        if len(self.modes) == 1:
            reason += " (the only mode for this ensemble)"
        self.mode_choice = ModeChoice(best, len(X), timings, reason)
        return self.mode_choice

    # -- evaluation ----------------------------------------------------------

    def predict(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Predictions for float32 rows X (N, F), C-contiguous, into out (N, n_outputs).

        No allocation when `out` is given (and the batch runs on one thread). The last (X, out)
        pair that passed the checks is remembered, so a caller reusing its buffers (the plan,
        every bar) pays the checks once.
        """
        if out is None or X is not self._checked[0] or out is not self._checked[1]:
            out = self._check(X, out)
        N = X.shape[0]
        parallel = self.n_threads > 1 and self.parallel_min_rows <= N and N > 1
        if self._mode == "oblivious":
            o = self._oblivious
            if N == 1:
                oblivious_one_row(X, out, o.prog, o.consts, self._ob_one_scratch)
            elif parallel:
                with _threads(self.n_threads):
                    oblivious_rows_parallel(X, out, o.prog, o.consts, o.block_scratch_size())
            else:
                oblivious_rows(X, out, o.prog, o.consts, self._ob_scratch, self._ob_index)
        elif self._mode == "bitvector":
            b = self._bits
            if N == 1 or not b.vectorised:
                if parallel:
                    with _threads(self.n_threads):
                        bitvector_rows_parallel(X, out, b.prog, b.words, b.consts, len(self._bv_scratch), len(self._bv))
                else:
                    bitvector_rows(X, out, b.prog, b.words, b.consts, self._bv_scratch, self._bv)
            elif parallel:
                with _threads(self.n_threads):
                    bitvector_blocks_parallel(
                        X, out, b.prog, b.words, b.consts, len(self._vq_scratch), len(self._vq_bv)
                    )
            else:
                bitvector_blocks(X, out, b.prog, b.words, b.consts, self._vq_scratch, self._vq_bv)
        elif self._nodes is not None:
            n = self._nodes
            if N == 1:
                node_one_row(X, out, n.prog, n.nodes, n.consts, self._one_scratch)
            elif parallel:
                with _threads(self.n_threads):
                    node_rows_parallel(X, out, n.prog, n.nodes, n.consts, len(self._block_scratch))
            else:
                node_rows(X, out, n.prog, n.nodes, n.consts, self._block_scratch)
        else:
            g = self._generic
            agg = np.int64(g.fin[C.FIN_AGGREGATE])
            if parallel:
                with _threads(self.n_threads):
                    generic_rows_parallel(
                        X, out, g.gi, g.thr, g.wt, g.wv, g.roots, g.fin, g.fconst, agg, self.n_targets
                    )
            else:
                generic_rows(X, out, self._sums, self._has, g.gi, g.thr, g.wt, g.wv, g.roots, g.fin, g.fconst, agg)
        return out

    def _check(self, X: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """``out`` (allocated when None) once X and out are what the kernels read and write."""
        if not isinstance(X, np.ndarray) or X.dtype != _F32 or X.ndim != 2 or not X.flags.c_contiguous:
            raise ValueError(
                f"X must be a C-contiguous float32 (N, F) array, got {getattr(X, 'dtype', type(X).__name__)} "
                f"{getattr(X, 'shape', '')}"
            )
        N, F = X.shape
        if self.n_features > F:
            raise ValueError(f"X has {F} features; the trees read feature {self.n_features - 1}")
        if out is None:
            return np.empty((N, self.n_outputs), dtype=np.float32)
        if (
            not isinstance(out, np.ndarray)
            or out.shape != (N, self.n_outputs)
            or out.dtype != _F32
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            raise ValueError(f"out must be a writeable C-contiguous float32 {(N, self.n_outputs)} array")
        self._checked = (X, out)
        return out

    def __repr__(self) -> str:
        tail = f", link={self.link}" + (", binary" if self.binary else "")
        return (
            f"ForestKernel({self.name!r}, trees={self.n_trees}, features={self.n_features}, "
            f"targets={self.n_targets}, outputs={self.n_outputs}, {self.aggregate_function}, "
            f"post_transform={self.post_transform}{tail}, layout={self.layout}, mode={self.mode})"
        )


def _median_us(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


class _threads:
    """Run numba's parallel kernels on n threads, then restore the caller's count."""

    def __init__(self, n: int):
        self.n = min(n, numba.config.NUMBA_NUM_THREADS)

    def __enter__(self):
        self.prev = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        numba.set_num_threads(self.prev)


# ------------------------------------------------------------------ inspection


@dataclass(frozen=True)
class TreeEnsembleInfo:
    """What `find_tree_ensembles` reports about one TreeEnsembleRegressor node."""

    index: int  # position in graph.node
    name: str
    input: str
    output: str
    n_targets: int
    n_trees: int
    n_nodes: int
    n_features: int  # max feature id + 1
    modes: tuple[str, ...]  # distinct split modes
    aggregate_function: str
    post_transform: str
    threshold_dtype: str  # "float32" (double tensors are refused)
    has_missing_tracks: bool
    supported: bool
    reason: str  # why not supported, "" when supported


def find_tree_ensembles(model: onnx.ModelProto) -> list[TreeEnsembleInfo]:
    """Every TreeEnsembleRegressor node of the graph, with whether ForestKernel can serve it."""
    found = []
    for k, node in enumerate(model.graph.node):
        if node.op_type != "TreeEnsembleRegressor" or node.domain != "ai.onnx.ml":
            continue
        try:
            attrs = EnsembleAttributes(node)
            reason = attrs.why_unsupported()
            if not reason:
                TreeStructure(attrs)
        except ValueError as e:
            found.append(
                TreeEnsembleInfo(
                    k, node.name, node.input[0], node.output[0], 0, 0, 0, 0, (), "", "", "", False, False, str(e)
                )
            )
            continue
        modes = {m.name for m in C.SplitMode if m != C.SplitMode.LEAF and np.any(attrs.modes == m)}
        found.append(
            TreeEnsembleInfo(
                index=k,
                name=node.name,
                input=node.input[0],
                output=node.output[0],
                n_targets=attrs.n_targets,
                n_trees=len(np.unique(attrs.treeids)),
                n_nodes=len(attrs.treeids),
                n_features=attrs.n_features,
                modes=tuple(sorted(modes)),
                aggregate_function=attrs.aggregate,
                post_transform=attrs.post_transform,
                threshold_dtype="float32",
                has_missing_tracks=bool(np.any(attrs.missing == 1)),
                supported=not reason,
                reason=reason,
            )
        )
    return found
