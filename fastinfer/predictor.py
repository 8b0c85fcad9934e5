"""LivePredictor: OHLCV bars in, predictions for every horizon × family out.

Per bar: ``StreamingFeatures`` updates every symbol's indicators in one jitted call; the
feature rows go into the sequence buffers; the executor's plan runs one fused ONNX graph
per input kind (plus any native fallbacks) over all symbols at once; a jitted pass marks
outputs NaN where a model's inputs were not ready. Nothing is allocated per bar on the
ONNX path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from . import executor
from .buffers import SeqBufferManager, timestamp_ns
from .config import Settings, load_config
from .errors import InferenceError, ModelLoadError
from .features import KNOWN_FEATURES, StreamingFeatures
from .latency import LatencyHistogram
from .loader import LoadedModel, ModelLoader

log = logging.getLogger(__name__)

POINT_COLUMNS = ("prediction", "loc", "q0.5")  # the column a {horizon: {family: value}} view shows
# state_dict / load_state_dict. Version 2 added "last_timestamp"; version 1 states are still read.
_STATE_KIND, _STATE_VERSION, _STATE_READS = "fastinfer.LivePredictor", 2, (1, 2)


def point_column(columns: Sequence[str]) -> int:
    """Which of a model's output ``columns`` a ``{horizon: {family: value}}`` view shows: the
    first of ``POINT_COLUMNS`` it has (``prediction``, else a distribution's ``loc``, else the
    median quantile ``q0.5``), else its first column. The one rule for every such view
    (``LivePredictor``, ``ShardedPredictor``, ``TritonPredictor``, the seed path)."""
    names = list(columns)
    return next((names.index(c) for c in POINT_COLUMNS if c in names), 0)


def horizon_of(target: str) -> str:
    """``fwd_ret_15m`` → ``15m``: the spec keys predictions by horizon."""
    return target[len("fwd_ret_") :] if target.startswith("fwd_ret_") else target


@njit(cache=True)
def _copy_finite(src, dst):
    """dst[:] = src with every +/-inf replaced by NaN (a missing value, never an extreme one)."""
    n, width = src.shape
    for i in range(n):
        for u in range(width):
            x = src[i, u]
            dst[i, u] = x if np.isfinite(x) else np.nan


@njit(cache=True)
def _rows_for_sequences(features, stale, dst):
    """dst[:] = features, with a NaN row for every stale symbol (no bar this time): a missing bar
    adds no row to a sequence (the buffers skip non-finite rows), it does not repeat the last one."""
    n, width = features.shape
    for i in range(n):
        for u in range(width):
            dst[i, u] = np.nan if stale[i] else features[i, u]


@njit(cache=True)
def _mask_not_ready(features, needs, pass_nan, stale, ready, ready_of_model, model_of_column, out):
    """out[i, c] = NaN where model_of_column[c] could not see valid inputs for symbol i
    (``ready[ready_of_model[m], i]``: whether the sequence buffer model m reads is full)."""
    n, width = features.shape
    for i in range(n):
        for c in range(out.shape[1]):
            m = model_of_column[c]
            ok = ready[ready_of_model[m], i] and not stale[i]
            if ok and not pass_nan[m]:
                for u in range(width):
                    if needs[m, u] and not np.isfinite(features[i, u]):  # inf counts as missing
                        ok = False
                        break
            if not ok:
                out[i, c] = np.nan


class LivePredictor:
    """Built from a run root and the data's bar interval; ``on_bar`` once per bar for all symbols.

    ``symbols``: the universe, in the order of the arrays given to ``on_bar``.
    ``interval_minutes``: the bar interval of the data; models trained on another interval
    are an error at construction (or, with ``predictor.on_interval_mismatch: skip``, left out
    with a warning).
    """

    def __init__(
        self,
        run_root: str | Path,
        symbols: Sequence[str],
        interval_minutes: float,
        *,
        targets: Iterable[str] | None = None,
        families: Iterable[str] | None = None,
        settings: Settings | None = None,
        config_path: str | Path | None = None,
        loader: ModelLoader | None = None,
    ):
        self.settings = settings if settings is not None else load_config(config_path)
        self.loader = loader or ModelLoader(run_root, settings=self.settings)
        self.symbols = tuple(symbols)
        self.interval_minutes = float(interval_minutes)
        self.unavailable: dict[tuple[str, str], str] = {}
        self.fallback_log: dict[str, list[tuple[str, str]]] = {}
        models = self.loader.load_all(targets, families)
        for key, err in self.loader.errors.items():
            self.unavailable[key] = f"failed to load: {err.reason}"
        self.models: list[LoadedModel] = [m for m in models.values() if self._interval_ok(m)]
        if not self.models:
            raise ModelLoadError(
                None, None, "no usable model in the run for these targets/families", self.loader.run_root
            )
        self.union = self._union_features()
        self.features = StreamingFeatures(self.symbols, self.union)
        n = len(self.symbols)
        seq_lens = sorted({m.spec.sequence_length for m in self.models if m.family.sequential})
        self.buffers = {
            t: SeqBufferManager(t, len(self.union), symbols=self.symbols, settings=self.settings.models)
            for t in seq_lens
        }
        self.plan = executor.Plan(self.models, self.union, n, self.settings.executor)
        self.columns = self.plan.columns
        self.column_index = {col: j for j, col in enumerate(self.columns)}
        self._point_column = {}
        for m, sl in zip(self.models, self.plan.model_slices):
            self._point_column[(m.target, m.family.name)] = sl.start + point_column(m.columns)

        # Readiness inputs of the masking kernel, allocated once.
        n_models = len(self.models)
        self._needs = np.zeros((n_models, len(self.union)), dtype=np.bool_)
        self._pass_nan = np.zeros(n_models, dtype=np.bool_)
        # Row 0: always ready (tabular models); row 1 + k: whether buffer k (one per sequence
        # length, shared by its models) is full, computed once per bar.
        self._ready = np.ones((1 + len(seq_lens), n), dtype=np.bool_)
        self._ready_of_model = np.zeros(n_models, dtype=np.int64)
        nan_pass = self.settings.predictor.nan_policy == "pass"
        for i, m in enumerate(self.models):
            if m.family.sequential:
                self._ready_of_model[i] = 1 + seq_lens.index(m.spec.sequence_length)
            else:
                self._needs[i, [self.union.index(f) for f in m.feature_order]] = True
                self._pass_nan[i] = nan_pass and m.family.handles_nan
        self._model_of_column = np.repeat(np.arange(n_models), [sl.stop - sl.start for sl in self.plan.model_slices])
        self._bind_buffers()
        self._seq_rows = np.empty_like(self.features.out)  # this bar's rows for the sequence buffers
        self.latency = LatencyHistogram()
        self.bars = 0
        self._last_stamp: int | None = None  # newest bar time accepted (ns), None before the first stamped bar
        # Compile (or load from numba's cache) now, not on the first bar; out is all NaN here.
        _copy_finite(self.features.out, self.plan.tabular_input)
        _mask_not_ready(
            self.features.out,
            self._needs,
            self._pass_nan,
            self.features.stale,
            self._ready,
            self._ready_of_model,
            self._model_of_column,
            self.plan.out,
        )
        _rows_for_sequences(self.features.out, self.features.stale, self._seq_rows)

    # ------------------------------------------------------------ construction checks

    def _interval_ok(self, m: LoadedModel) -> bool:
        trained = m.spec.interval_minutes
        if trained is None:
            return True
        tol = self.settings.predictor.interval_rel_tol
        if abs(trained - self.interval_minutes) <= tol * max(abs(trained), abs(self.interval_minutes)):
            return True
        reason = f"trained on {trained:g}-minute bars, data is {self.interval_minutes:g}-minute bars"
        if self.settings.predictor.on_interval_mismatch == "error":
            raise ModelLoadError(m.family.name, m.target, f"interval mismatch: {reason}", m.spec.meta_path)
        log.warning("%s/%s left out: %s", m.target, m.family.name, reason)
        self.unavailable[(m.target, m.family.name)] = f"interval mismatch: {reason}"
        return False

    def _union_features(self) -> list[str]:
        used = {f for m in self.models for f in m.feature_order}
        unknown = sorted(used - set(KNOWN_FEATURES))
        if unknown:
            who = next(m for m in self.models if set(m.feature_order) & set(unknown))
            raise ModelLoadError(
                who.family.name,
                who.target,
                f"features {unknown[:5]} cannot be computed from OHLCV bars (known: {', '.join(KNOWN_FEATURES)})",
                who.spec.meta_path,
            )
        return [f for f in KNOWN_FEATURES if f in used]

    # ------------------------------------------------------------ the hot path

    def on_bar(self, open: Any, high: Any, low: Any, close: Any, volume: Any, timestamp: Any = None) -> np.ndarray:
        """One bar for every symbol (arrays in ``symbols`` order; NaN = no bar for that symbol).

        Returns the (n_symbols, n_columns) float32 prediction matrix (the same array every
        bar; ``columns`` names its columns, NaN where a model's inputs were not ready).

        ``timestamp``: the bar time (see ``fastinfer.buffers.timestamp_ns``), or None. A bar
        older than the newest one accepted (an equal one is accepted), or one whose
        timestamp is not a time, is an ``InferenceError`` raised before anything changes
        (with or without sequence models); so is an array of the wrong shape
        (``FeatureBuildError``).
        """
        start = time.perf_counter_ns()
        stamp = self.check_timestamp(timestamp)  # refuse a bad bar time before any state moves
        feats = self.features.update(open, high, low, close, volume)
        _copy_finite(feats, self.plan.tabular_input)  # +/-inf reaches no model: NaN, then the nan_policy
        if self._seq_inputs:
            _rows_for_sequences(feats, self.features.stale, self._seq_rows)
        for buf, seq_input in self._seq_inputs:
            buf.push_all(self._seq_rows, timestamp=stamp, strict=False)  # warming-up (NaN) and missing rows stay out
            buf.get_batch(None, out=seq_input)
        if stamp is not None:
            self._last_stamp = stamp
        for buf, row in self._ready_rows:
            buf.ready_mask(stamp, out=row)
        out = self.plan.run()
        _mask_not_ready(
            feats,
            self._needs,
            self._pass_nan,
            self.features.stale,
            self._ready,
            self._ready_of_model,
            self._model_of_column,
            out,
        )
        self.bars += 1
        self.latency.record(time.perf_counter_ns() - start)
        return out

    def check_timestamp(self, timestamp: Any = None) -> int | None:
        """The bar time ``on_bar`` would use (int ns, or None), or the ``InferenceError`` it would
        raise for it: not a time, older than the newest bar accepted, older than a sequence
        buffer's newest row, or missing where a buffer has a time-to-live. Changes nothing."""
        if timestamp is None:
            for buf, _ in self._seq_inputs:
                buf.check_timestamp(None)  # raises only when a buffer has a ttl
            return None
        stamp = timestamp_ns(timestamp)
        if self._last_stamp is not None and stamp < self._last_stamp:
            raise InferenceError(
                f"bar timestamp {stamp} ns is older than the previous bar's "
                f"({self._last_stamp} ns); bar refused, nothing changed"
            )
        for buf, _ in self._seq_inputs:
            buf.check_timestamp(stamp)
        return stamp

    @property
    def last_timestamp(self) -> int | None:
        """The newest bar time accepted by ``on_bar`` (ns since the epoch), None before any."""
        return self._last_stamp

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything the next ``on_bar`` output depends on, JSON-safe: the feature state (stale
        flags included), every sequence buffer (rows, counts, last timestamps), the bar count
        and the newest bar time accepted (``last_timestamp``: which bars are refused next).

        Restoring it into a predictor of the same run and symbols and replaying the same bars
        gives bit-identical outputs to never having stopped (the plan's buffers are rewritten
        in full on every bar, so they carry no state).
        """
        return {
            "kind": _STATE_KIND,
            "version": _STATE_VERSION,
            "symbols": list(self.symbols),
            "union": list(self.union),
            "columns": [list(c) for c in self.columns],
            "bars": self.bars,
            "last_timestamp": self._last_stamp,
            "features": self.features.state_dict(),
            "buffers": {str(t): buf.to_dict() for t, buf in self.buffers.items()},
        }

    def load_state_dict(self, state: Any) -> None:
        """Restore a ``state_dict()``. A state of other symbols, features or models, or a corrupt
        one, is a ``StateError`` naming the field, and leaves this predictor as it was."""
        from collections.abc import Mapping

        from .errors import StateError

        if not isinstance(state, Mapping) or state.get("kind") != _STATE_KIND:
            raise StateError("predictor state: not a LivePredictor state")
        version = state.get("version")
        if isinstance(version, bool) or version not in _STATE_READS:
            raise StateError(
                f"predictor state: version {version!r}, this fastinfer reads {', '.join(map(str, _STATE_READS))}"
            )
        for key, mine in (
            ("symbols", list(self.symbols)),
            ("union", list(self.union)),
            ("columns", [list(c) for c in self.columns]),
        ):
            if state.get(key) != mine:
                raise StateError(f"predictor state: field {key!r} differs from this predictor's")
        bars = state.get("bars")
        if isinstance(bars, bool) or not isinstance(bars, int) or bars < 0:
            raise StateError(f"predictor state: field 'bars': {bars!r} is not a count")
        features = StreamingFeatures.from_state_dict(state.get("features"))
        if (
            features.symbols != self.symbols
            or list(features.features) != self.union
            or features.dtype != self.features.dtype
        ):
            raise StateError("predictor state: field 'features' is for other symbols, features or dtype")
        raw = state.get("buffers")
        if not isinstance(raw, Mapping) or set(raw) != {str(t) for t in self.buffers}:
            raise StateError(f"predictor state: field 'buffers' must hold sequence lengths {sorted(self.buffers)}")
        buffers = {
            t: SeqBufferManager.from_dict(
                raw[str(t)], seq_len=t, n_features=len(self.union), source=f"predictor state buffers[{t}]"
            )
            for t in self.buffers
        }
        if any(buf.symbols != list(self.symbols) for buf in buffers.values()):
            raise StateError("predictor state: field 'buffers' is for other symbols")
        newest = max(
            (s for buf in buffers.values() for s in map(buf.last_timestamp, range(len(buf))) if s is not None),
            default=None,
        )
        if version == 1:  # before "last_timestamp": the buffers' newest row is the best known
            last = newest
        else:
            if "last_timestamp" not in state:
                raise StateError("predictor state: field 'last_timestamp' missing")
            last = state["last_timestamp"]
            if last is not None:
                if isinstance(last, bool) or not isinstance(last, int):
                    raise StateError(f"predictor state: field 'last_timestamp': {last!r} is not an int of ns or null")
                try:
                    timestamp_ns(last)
                except InferenceError as exc:
                    raise StateError(f"predictor state: field 'last_timestamp': {exc}") from None
            if newest is not None and (last is None or last < newest):
                raise StateError(
                    f"predictor state: field 'last_timestamp' ({last!r}) is older than a buffer's "
                    f"newest row ({newest} ns)"
                )
        # Everything checked: swap in, and re-point the per-bar references at the new objects.
        self.features, self.buffers, self.bars, self._last_stamp = features, buffers, bars, last
        self._bind_buffers()

    def _bind_buffers(self) -> None:
        """The per-bar references to ``self.buffers``: each buffer's model input and readiness row."""
        self._seq_inputs = [(buf, self.plan.sequence_inputs[t]) for t, buf in self.buffers.items()]
        self._ready_rows = [(buf, self._ready[1 + k]) for k, buf in enumerate(self.buffers.values())]

    # ------------------------------------------------------------ views

    @property
    def predictions(self) -> np.ndarray:
        return self.plan.out

    def as_dict(self, symbol: str | None = None) -> dict[str, dict[str, float]]:
        """The spec's ``{horizon: {family: value}}`` for one symbol (the only one if None)."""
        i = self._symbol_index(symbol)
        result: dict[str, dict[str, float]] = {}
        for (target, family), j in self._point_column.items():
            result.setdefault(horizon_of(target), {})[family] = float(self.plan.out[i, j])
        return result

    def predict_with_fallback(
        self, target: str, families: Iterable[str] | None = None, symbol: str | None = None
    ) -> float | None:
        """The first family in ``family_priority`` order with a usable prediction for ``target``.

        Skips families that failed to load, were left out, are absent or not ready (NaN),
        recording why in ``fallback_log[target]``; None when all failed.
        """
        from .families import resolve

        i = self._symbol_index(symbol)
        order = list(families) if families is not None else list(self.settings.models.family_priority)
        skipped: list[tuple[str, str]] = []
        self.fallback_log[target] = skipped
        for name in order:
            family = resolve(name).name
            j = self._point_column.get((target, family))
            if j is None:
                skipped.append((family, self.unavailable.get((target, family), "not in the run")))
                continue
            value = float(self.plan.out[i, j])
            if value != value:
                skipped.append((family, "inputs not ready (warm-up or missing bar)"))
                continue
            return value
        log.debug("no prediction for %s: %s", target, skipped)
        return None

    def _symbol_index(self, symbol: str | None) -> int:
        if symbol is None:
            if len(self.symbols) != 1:
                raise InferenceError(f"name a symbol: this predictor serves {len(self.symbols)}")
            return 0
        try:
            return self.symbols.index(symbol)
        except ValueError:
            raise InferenceError(f"unknown symbol {symbol!r}") from None
