"""LivePredictor: OHLCV bars in, predictions for every horizon × family out.

Per bar: the bar is checked (``predictor.bar_check``); ``StreamingFeatures`` updates every
symbol's features — the run's own, compiled from its ``feature_definitions.yaml`` and the
vocabulary — in one jitted call; the feature rows go into the sequence buffers; the executor's
plan runs one fused ONNX graph per input kind (plus forest kernels and native fallbacks) over
all symbols at once; a jitted pass marks outputs NaN where a model's inputs were not ready.
Nothing is allocated per bar on the ONNX path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from . import executor
from . import families as fam
from . import state as _state
from .bartime import BarClock, interval_problem
from .buffers import SeqBufferManager
from .config import Settings, load_config
from .errors import FeatureBuildError, InferenceError, ModelLoadError, StateError
from .features import FeatureDefinitionError, FeatureDefinitions, StreamingFeatures, compile_features
from .features.streaming import check_bar_input
from .latency import LatencyHistogram
from .layout import OutputLayout, feature_union, horizon_of, point_column
from .loader import LoadedModel, ModelLoader

log = logging.getLogger(__name__)

__all__ = ["MAX_PRICE", "LivePredictor", "RunFailures", "horizon_of", "point_column", "usable_models"]

# state_dict / load_state_dict: a fastinfer.state envelope. Version 3: features and buffers in
# their own envelopes, rejected-bar counters; older versions (no checksum) are refused.
_STATE_KIND, _STATE_VERSION = "predictor", 3
# predictor.bar_check "reject": prices must lie in (0, MAX_PRICE] (no instrument trades above
# 1e12 in any currency unit; 1e300 would overflow every sum of squares downstream).
MAX_PRICE = 1e12
MAX_VOLUME = 1e18


@njit(cache=True)
def _check_bars(o, h, l, c, v, max_price, max_volume, bars, rejected):
    """bars[k] = the bar, or NaN for a symbol whose finite bar is nonsense: a price <= 0 or above
    max_price, negative or huge volume, high < low, open or close outside [low, high].
    rejected[i] tells which symbols' bars were refused (a missing bar is not a refused one)."""
    for i in range(c.shape[0]):
        oi, hi, li, ci, vi = o[i], h[i], l[i], c[i], v[i]
        finite = np.isfinite(oi) and np.isfinite(hi) and np.isfinite(li) and np.isfinite(ci) and np.isfinite(vi)
        bad = finite and not (0.0 < li <= oi <= hi <= max_price and li <= ci <= hi and 0.0 <= vi <= max_volume)
        rejected[i] = bad
        if bad:
            for k in range(5):
                bars[k, i] = np.nan
        else:
            bars[0, i], bars[1, i], bars[2, i], bars[3, i], bars[4, i] = oi, hi, li, ci, vi


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


def usable_models(
    loader: ModelLoader,
    settings: Settings,
    interval_minutes: float | None,
    *,
    targets: Iterable[str] | None = None,
    families: Iterable[str] | None = None,
) -> tuple[list[LoadedModel], dict[tuple[str, str], str]]:
    """The run's models that may serve ``interval_minutes``-minute bars (None: any), and those left
    out, (target, family) → reason. The one rule of the live and the research paths.

    A model that failed to load is left out (``predictor.on_model_error: skip``) or its
    ``ModelLoadError`` raised (``error``); one trained on another interval is left out with a
    warning (``predictor.on_interval_mismatch: skip``) or a ``ModelLoadError``; no model left is a
    ``ModelLoadError``.
    """
    pred = settings.predictor
    targets = None if targets is None else list(targets)  # read twice below: a generator must not run dry
    families = None if families is None else list(families)
    unavailable: dict[tuple[str, str], str] = {}
    loaded = loader.load_all(targets, families)
    for key, err in loader.errors.items():
        if pred.on_model_error == "error":
            raise err
        unavailable[key] = f"failed to load: {err.reason}"
    models: list[LoadedModel] = []
    for m in loaded.values():
        problem = interval_problem(m.spec.interval_minutes, interval_minutes, pred.interval_rel_tol)
        if problem is None:
            models.append(m)
        elif pred.on_interval_mismatch == "error":
            raise ModelLoadError(m.family.name, m.target, f"interval mismatch: {problem}", m.spec.meta_path)
        else:
            log.warning("%s/%s left out: %s", m.target, m.family.name, problem)
            unavailable[(m.target, m.family.name)] = f"interval mismatch: {problem}"
    wanted_families = None if families is None else {f.name for f in map(fam.find, families) if f is not None}
    scoped: dict[tuple[str, str], list[str]] = {}
    for loc in loader.locations():  # symbol/universe-scoped models: not served here, and said so
        if (loc.symbol is None and loc.universe is None) or (targets is not None and loc.target not in targets):
            continue
        if wanted_families is None or loc.family.name in wanted_families:
            scope = f"symbol={loc.symbol}" if loc.symbol is not None else f"universe={loc.universe}"
            scoped.setdefault((loc.target, loc.family.name), []).append(scope)
    served = {(m.target, m.family.name) for m in models}
    for key, scopes in scoped.items():
        why = f"{', '.join(scopes)}: symbol/universe-scoped models are not served by the live and research predictors"
        log.warning("%s/%s left out (%s)", *key, why)
        if key not in served and key not in unavailable:
            unavailable[key] = why
    if not models:
        raise ModelLoadError(None, None, "no usable model in the run for these targets/families", loader.run_root)
    return models, unavailable


def compile_run_features(
    models: Sequence[LoadedModel],
    loader: ModelLoader,
    *,
    definitions: FeatureDefinitions | Mapping | None = None,
    interval_minutes: float | None = None,
    bars_per_day: int | None = None,
):
    """The feature program serving ``models``: the union of their features, compiled from the
    run's ``feature_definitions.yaml`` (or ``definitions``) and the vocabulary. A feature neither
    knows is a ``ModelLoadError`` naming the model, the feature, what the vocabulary understood
    of it and how to define it or pass it in as an external column; a problem of no one feature
    (the definitions fix another interval or session length than given) is a ``ModelLoadError``
    naming the run and saying what the definitions error says."""
    defs = definitions if definitions is not None else loader.definitions()
    union = feature_union(models)
    try:
        return compile_features(union, defs, interval_minutes=interval_minutes, bars_per_day=bars_per_day)
    except FeatureDefinitionError as exc:
        if exc.feature is None:  # not one feature's fault (e.g. the definitions fix another interval)
            raise ModelLoadError(None, None, f"the run's features cannot be compiled: {exc}", loader.run_root) from None
        who = next((m for m in models if exc.feature in m.feature_order), models[0])
        raise ModelLoadError(
            who.family.name,
            who.target,
            f"feature {exc.feature!r} cannot be computed: {exc}. Define it in the run's "
            "feature_definitions.yaml (or pass definitions=...), or declare it `external` and pass "
            "it per bar (on_bar(..., external={name: values}))",
            who.spec.meta_path,
        ) from None


@dataclass
class RunFailures:
    """One model's failures at run time in a live predictor: on how many bars, the last error,
    and the number of the last bar it failed on (``bars`` before that bar)."""

    count: int = 0
    last_error: str = ""
    last_bar: int = -1


class LivePredictor:
    """Built from a run root and the data's bar interval; ``on_bar`` once per bar for all symbols.

    ``symbols``: the universe, in the order of the arrays given to ``on_bar``.
    ``interval_minutes``: the bar interval of the data; models trained on another interval
    are an error at construction (or, with ``predictor.on_interval_mismatch: skip``, left out
    with a warning). ``definitions`` / ``bars_per_day``: feature definitions beyond the run's
    own ``feature_definitions.yaml`` and the vocabulary, and the session length for ``d``
    durations on intraday bars. Models that failed to load (or were left out) are listed with
    their reason in ``unavailable`` (``predictor.on_model_error: error`` refuses instead); models
    that failed at run time on some bar are in ``run_failures`` (see ``on_bar``).
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
        definitions: FeatureDefinitions | Mapping | None = None,
        bars_per_day: int | None = None,
    ):
        self.settings = settings if settings is not None else load_config(config_path)
        self.loader = loader or ModelLoader(run_root, settings=self.settings)
        self.symbols = _symbols(symbols)
        self.interval_minutes = _interval(interval_minutes)
        self.fallback_log: dict[str, list[tuple[str, str]]] = {}
        self.models, self.unavailable = usable_models(
            self.loader, self.settings, self.interval_minutes, targets=targets, families=families
        )
        program = compile_run_features(
            self.models,
            self.loader,
            definitions=definitions,
            interval_minutes=self.interval_minutes,
            bars_per_day=bars_per_day,
        )
        self.features = StreamingFeatures(self.symbols, program=program)
        self.union = list(program.features)
        self.externals = program.externals
        self.layout = OutputLayout.from_models(self.models, self.union, self.settings.predictor.nan_policy)
        n = len(self.symbols)
        self.buffers = {
            t: SeqBufferManager(t, len(self.union), symbols=self.symbols, settings=self.settings.models)
            for t in self.layout.sequence_lengths
        }
        self.plan = executor.Plan(self.models, self.union, n, self.settings.executor, layout=self.layout)
        self.columns = self.layout.columns
        self.column_index = {col: j for j, col in enumerate(self.columns)}
        # Row 0: always ready (tabular models); row 1 + k: whether buffer k (one per sequence
        # length, shared by its models) is full, computed once per bar.
        self._ready = np.ones((1 + len(self.layout.sequence_lengths), n), dtype=np.bool_)
        self._bind_buffers()
        self._seq_rows = np.empty_like(self.features.out)  # this bar's rows for the sequence buffers
        self._bars = np.empty((5, n))  # the bar as the features see it (refused bars as NaN)
        self._refused = np.zeros(n, dtype=np.bool_)
        self.rejected_bars = np.zeros(n, dtype=np.int64)  # per symbol: bars refused by bar_check
        self._check_bars = self.settings.predictor.bar_check == "reject"
        self.latency = LatencyHistogram()
        self.bars = 0
        self.run_failures: dict[tuple[str, str], RunFailures] = {}
        self._clock = BarClock()
        # Compile (or load from numba's cache) now, not on the first bar; out is all NaN here.
        nan = np.full(n, np.nan)
        _check_bars(nan, nan, nan, nan, nan, MAX_PRICE, MAX_VOLUME, self._bars, self._refused)
        _copy_finite(self.features.out, self.plan.tabular_input)
        self._mask(self.features.out)
        _rows_for_sequences(self.features.out, self.features.stale, self._seq_rows)

    # ------------------------------------------------------------ the hot path

    def on_bar(
        self, open: Any, high: Any, low: Any, close: Any, volume: Any, timestamp: Any = None, external: Any = None
    ) -> np.ndarray:
        """One bar for every symbol (arrays in ``symbols`` order; NaN = no bar for that symbol).

        Returns the (n_symbols, n_columns) float32 prediction matrix (the same array every
        bar; ``columns`` names its columns, NaN where a model's inputs were not ready).

        ``timestamp``: the bar time (see ``fastinfer.bartime.timestamp_ns``), or None. A bar
        older than the newest one accepted (an equal one is accepted), or one whose timestamp
        is not a time, is an ``InferenceError`` raised before anything changes (with or without
        sequence models); so is an array of the wrong shape or dtype, or a missing/misshapen
        ``external`` column (``FeatureBuildError``). ``external``: the run's declared external
        columns (``externals``), a dict name → (n_symbols,) array or one (n_symbols, n_external)
        matrix in declared order. With ``predictor.bar_check: reject`` (the default) a symbol's
        nonsense bar (a price <= 0 or above ``MAX_PRICE``, negative volume, high < low, open or
        close outside [low, high]) is treated as missing and counted in ``rejected_bars``.

        A model that fails at run time (ONNX Runtime or its native library raising) gives NaN in
        its columns for this bar and is recorded in ``run_failures`` (and logged); every other
        model's output is delivered and the bar completes (counted in ``bars``, timed). With
        ``predictor.on_model_error: error`` the bar is still consumed in full (features, sequence
        buffers, bar clock and ``bars`` advanced, the others' outputs in ``predictions``) before an
        ``InferenceError`` naming the failed models is raised: do not send that bar again.
        """
        start = time.perf_counter_ns()
        stamp = self.check_timestamp(timestamp)  # refuse a bad bar time before any state moves
        shape = self._refused.shape
        o, h, l, c, v = (
            check_bar_input(a, name, shape)
            for a, name in zip((open, high, low, close, volume), ("open", "high", "low", "close", "volume"))
        )
        if self._check_bars:
            _check_bars(o, h, l, c, v, MAX_PRICE, MAX_VOLUME, self._bars, self._refused)
            o, h, l, c, v = self._bars
        feats = self.features.update(o, h, l, c, v, external=external)  # checks externals before any change
        if self._check_bars:
            self.rejected_bars += self._refused
        _copy_finite(feats, self.plan.tabular_input)  # +/-inf reaches no model: NaN, then the nan_policy
        if self._seq_inputs:
            _rows_for_sequences(feats, self.features.stale, self._seq_rows)
        for buf, seq_input in self._seq_inputs:  # warming-up (NaN) and missing rows stay out
            buf.push_all_and_get_batch(self._seq_rows, seq_input, timestamp=stamp, strict=False)
        self._clock.accept(stamp)
        for buf, row in self._ready_rows:
            buf.ready_mask(stamp, out=row)
        try:
            self.plan.run()
            failed = None
        except InferenceError as exc:  # from here on the bar is consumed: complete it, whatever fails
            failed = self._run_models_alone(exc)
        out = self._mask(feats)
        self.bars += 1
        self.latency.record(time.perf_counter_ns() - start)
        if failed and self.settings.predictor.on_model_error == "error":
            raise InferenceError(
                f"bar {self.bars - 1}: {len(failed)} model(s) failed at run time (the bar was consumed: "
                "features, sequence buffers, bar clock and bar count advanced, the other models' outputs are "
                "in predictions; do not send it again): "
                + "; ".join(f"{t}/{f}: {err}" for (t, f), err in failed.items())
            ) from next(iter(failed.values()))
        return out

    def _run_models_alone(self, plan_error: InferenceError) -> dict[tuple[str, str], InferenceError]:
        """After the plan failed on this bar: every model alone, by its own runtime, on the inputs
        the plan had (a fused graph's failure need not be every member's); a model that fails
        again gets NaN columns and is recorded in ``run_failures``. Returns those failures."""
        plan = self.plan
        failed: dict[tuple[str, str], InferenceError] = {}
        for m, slot in zip(self.models, self.layout.slots):
            dst = plan.out[:, slot.start : slot.stop]
            source = plan.sequence_inputs[slot.sequence_length] if slot.sequence_length else plan.tabular_input
            X = np.ascontiguousarray(source[..., list(slot.needs)])
            dst[...] = np.nan  # a model that fails again leaves NaN, not the last bar's outputs
            try:  # as the plan feeds it: a graph takes every row (NaN routes or gives NaN)
                if m.backend == "onnx":
                    dst[...] = np.asarray(m.run(X), dtype=np.float32).reshape(-1, dst.shape[1])
                else:
                    executor.run_native(m, X, dst)
            except InferenceError as exc:
                failed[slot.key] = exc
                record = self.run_failures.setdefault(slot.key, RunFailures())
                record.count += 1
                record.last_error = str(exc)
                record.last_bar = self.bars
                log.warning("bar %d: %s/%s failed at run time, NaN for this bar: %s", self.bars, *slot.key, exc)
        if not failed:
            log.warning("bar %d: the plan failed (%s); every model ran alone and delivered", self.bars, plan_error)
        return failed

    def _mask(self, feats: np.ndarray) -> np.ndarray:
        lay = self.layout
        out = self.plan.out
        _mask_not_ready(
            feats,
            lay.needs,
            lay.pass_nan,
            self.features.stale,
            self._ready,
            lay.ready_of_model,
            lay.model_of_column,
            out,
        )
        return out

    def check_timestamp(self, timestamp: Any = None) -> int | None:
        """The bar time ``on_bar`` would use (int ns, or None), or the ``InferenceError`` it would
        raise for it: not a time, older than the newest bar accepted, older than a sequence
        buffer's newest row, or missing where a buffer has a time-to-live. Changes nothing."""
        stamp = self._clock.check(timestamp)
        for buf, _ in self._seq_inputs:
            buf.check_timestamp(stamp)
        return stamp

    @property
    def last_timestamp(self) -> int | None:
        """The newest bar time accepted by ``on_bar`` (ns since the epoch), None before any."""
        return self._clock.last

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything the next ``on_bar`` output depends on, JSON-safe, in a checksummed
        ``fastinfer.state`` envelope: the feature state (stale flags included), every sequence
        buffer (rows, counts, last timestamps), the bar count, the newest bar time accepted
        (``last_timestamp``: which bars are refused next) and the rejected-bar counters.

        Restoring it into a predictor of the same run and symbols and replaying the same bars
        gives bit-identical outputs to never having stopped (the plan's buffers are rewritten
        in full on every bar, so they carry no state).
        """
        payload = {
            "symbols": list(self.symbols),
            "union": list(self.union),
            "columns": [list(c) for c in self.columns],
            "bars": self.bars,
            "last_timestamp": self._clock.last,
            "rejected_bars": [int(x) for x in self.rejected_bars],
            "features": self.features.state_dict(),
            "buffers": {str(t): buf.to_dict() for t, buf in self.buffers.items()},
        }
        return _state.wrap(_STATE_KIND, _STATE_VERSION, payload)

    def load_state_dict(self, state: Any, *, source: str = "predictor state") -> None:
        """Restore a ``state_dict()``. A state of other symbols, features or models, an edited or
        corrupt one (checksum), or one of an older version, is a ``StateError`` naming the field,
        and leaves this predictor as it was."""
        _, payload = _state.unwrap(state, _STATE_KIND, {_STATE_VERSION}, source=source)
        for key, mine in (
            ("symbols", list(self.symbols)),
            ("union", list(self.union)),
            ("columns", [list(c) for c in self.columns]),
        ):
            if payload.get(key) != mine:
                raise StateError(f"{source}: field {key!r} differs from this predictor's")
        bars = payload.get("bars")
        if isinstance(bars, bool) or not isinstance(bars, int) or not 0 <= bars < 2**62:
            raise StateError(f"{source}: field 'bars': {_state.short_repr(bars)} is not a count")
        rejected = payload.get("rejected_bars")
        if (
            not isinstance(rejected, list)
            or len(rejected) != len(self.symbols)
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= bars for x in rejected)
        ):
            raise StateError(f"{source}: field 'rejected_bars': expected one count <= bars per symbol")
        features = StreamingFeatures.from_state_dict(payload.get("features"), source=f"{source} features")
        if features.symbols != self.symbols or features.program.hash != self.features.program.hash:
            raise StateError(f"{source}: field 'features' is for other symbols or another feature program")
        raw = payload.get("buffers")
        if not isinstance(raw, Mapping) or set(raw) != {str(t) for t in self.buffers}:
            raise StateError(f"{source}: field 'buffers' must hold sequence lengths {sorted(self.buffers)}")
        buffers = {
            t: SeqBufferManager.from_dict(
                raw[str(t)], seq_len=t, n_features=len(self.union), source=f"{source} buffers[{t}]"
            )
            for t in self.buffers
        }
        if any(buf.symbols != list(self.symbols) for buf in buffers.values()):
            raise StateError(f"{source}: field 'buffers' is for other symbols")
        last = payload.get("last_timestamp")
        if last is not None:
            try:
                last = BarClock().check(last) if isinstance(last, int) and not isinstance(last, bool) else None
            except InferenceError as exc:
                raise StateError(f"{source}: field 'last_timestamp': {exc}") from None
            if last is None:
                raise StateError(f"{source}: field 'last_timestamp': not an int of ns or null")
        newest = max(
            (s for buf in buffers.values() for s in map(buf.last_timestamp, range(len(buf))) if s is not None),
            default=None,
        )
        if newest is not None and (last is None or last < newest):
            raise StateError(
                f"{source}: field 'last_timestamp' ({last!r}) is older than a buffer's newest row ({newest} ns)"
            )
        # Everything checked: swap in, and re-point the per-bar references at the new objects.
        self.features, self.buffers, self.bars = features, buffers, bars
        self.rejected_bars[:] = rejected
        self._clock = BarClock(last)
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
        return self.layout.view(self.plan.out[self._symbol_index(symbol)])

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
            j = self.layout.points.get((target, family))
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


def _symbols(symbols: Any) -> tuple[str, ...]:
    """The universe as a tuple of distinct names; one string is an error (not its letters)."""
    if isinstance(symbols, (str, bytes)):
        raise FeatureBuildError(f"symbols must be a list of names, not the string {symbols!r}")
    try:
        names = tuple(symbols)
    except TypeError:
        raise FeatureBuildError(f"symbols must be a list of names, got {type(symbols).__name__}") from None
    bad = [s for s in names if not isinstance(s, str) or not s]
    if not names or bad:
        raise FeatureBuildError(
            f"symbols must be a non-empty list of non-empty strings, got {_state.short_repr(names)}"
        )
    if len(set(names)) != len(names):
        raise FeatureBuildError(f"symbol(s) listed twice: {sorted({s for s in names if names.count(s) > 1})}")
    return names


def _interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise FeatureBuildError(f"interval_minutes must be a number of minutes, got {_state.short_repr(value)}")
    minutes = float(value)
    if not 0 < minutes <= 525_600.0 * 100:
        raise FeatureBuildError(f"interval_minutes must be in (0, 52,560,000] minutes, got {minutes:g}")
    return minutes
