"""A symbol universe sharded over Ray actors, each holding its own live predictor.

``ShardedPredictor`` splits the symbols into contiguous shards and starts one Ray actor per
shard; each actor holds a ``LivePredictor`` for its slice (features, sequence buffers, fused
graph). ``on_bar`` sends every shard its slice of the bar and gathers the predictions in
symbol order, in the same (n_symbols, n_columns) layout as ``LivePredictor.on_bar``.

Recovery: every ``checkpoint_every`` bars each shard returns its predictor's
``state_dict()`` with that bar's predictions (kept in memory, and written atomically to
``checkpoint_dir`` when one is given), and the runner keeps every bar since. When a shard's
actor dies (``RayActorError``) a new actor is started, the last checkpoint is restored and
the kept bars are replayed before the current bar is served: no bar is lost, and the
outputs are those the dead actor would have given.

A refused bar changes nothing: the runner checks its shape and bar time before sending it
(``InferenceError``); if a shard still raises (its own typed error, unwrapped from Ray's
``RayTaskError``) or does not answer within ``timeout_s`` (``ShardFailedError``), the shards
that took the bar are rewound (last checkpoint restored, kept bars replayed) before the error
reaches the caller, and the bar is not kept for replay.

``ray`` is the ``[distributed]`` extra, imported only here. Start the cluster first
(``ray.init(...)``); Ray otherwise starts a local one on the first actor.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import read_json, write_atomic_json
from .bartime import BarClock
from .config import Settings
from .errors import FeatureBuildError, InferenceError
from .features import FeatureDefinitions
from .features.streaming import check_bar_input
from .layout import OutputLayout

if TYPE_CHECKING:
    from .predictor import RunFailures

log = logging.getLogger(__name__)

EXTRA = "pip install fastinfer[distributed]"


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"ray is needed for fastinfer.distributed ({exc}); install it with `{EXTRA}`") from exc
    return ray


class ShardFailedError(InferenceError):
    """A shard's actor could not be brought back (it kept dying, or its predictor would not build)."""


def _cause(exc: BaseException) -> BaseException:
    """The exception raised inside an actor (fastinfer's own typed error), from Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class _Shard:
    """The actor: one LivePredictor over a slice of the symbols.

    A predictor that fails to build does not kill the actor: the error is kept and raised
    by every call, so the runner gets fastinfer's typed error rather than Ray's "actor died".
    """

    def __init__(self, run_root: str, symbols: list[str], interval_minutes: float, options: dict[str, Any]):
        from .predictor import LivePredictor

        self.error: Exception | None = None
        try:
            self.predictor = LivePredictor(run_root, symbols, interval_minutes, **options)
        except Exception as exc:
            self.error = exc
            return
        self.initial = self.predictor.state_dict()  # what rewind restores before the first checkpoint

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def describe(self) -> dict[str, Any]:
        """The predictor's output layout, declared external columns and the models it left out with
        why (the same on every shard)."""
        self._check()
        return {
            "layout": self.predictor.layout.to_dict(),
            "externals": list(self.predictor.externals),
            "unavailable": sorted((*key, why) for key, why in self.predictor.unavailable.items()),
        }

    def health(self) -> dict[str, Any]:
        """Bars refused per symbol, and the models that failed at run time (``LivePredictor``'s)."""
        self._check()
        return {"rejected_bars": self.predictor.rejected_bars.copy(), "run_failures": dict(self.predictor.run_failures)}

    def restore(self, state: dict[str, Any]) -> int:
        self._check()
        self.predictor.load_state_dict(state)
        return self.predictor.bars

    def rewind(self, state: dict[str, Any] | None, bars: list[tuple]) -> int:
        """Back to ``state`` (None: as built), then ``bars`` replayed: undoes a bar other shards refused."""
        self._check()
        self.predictor.load_state_dict(self.initial if state is None else state)
        self.replay(bars, False)
        return self.predictor.bars

    def on_bar(self, block: np.ndarray, timestamp, external, snapshot: bool):
        """``block``: this shard's (5, n) open, high, low, close, volume (one argument: one transfer);
        ``external``: its (n, n_external) external columns, or None."""
        out = self.predictor.on_bar(*block, timestamp=timestamp, external=external)
        return out, (self.predictor.state_dict() if snapshot else None)

    def replay(self, bars: list[tuple], snapshot_last: bool):
        """Every kept bar in order; the last bar's output (and state when asked)."""
        out, state = None, None
        for i, bar in enumerate(bars):
            out, state = self.on_bar(*bar, snapshot=snapshot_last and i == len(bars) - 1)
        return out, state

    def latency(self) -> dict[str, float]:
        return self.predictor.latency.summary()


class ShardedPredictor:
    """``LivePredictor``'s ``on_bar`` over ``shards`` Ray actors.

    ``symbols``: the universe in the order of ``on_bar``'s arrays; shard ``i`` serves the
    ``i``-th contiguous slice. ``checkpoint_every``: bars between state snapshots (the bars
    since the last one are kept for replay). ``checkpoint_dir``: also write each shard's
    snapshot there atomically (``shard-{i}.json``) and restore from that file.
    ``actor_options``: passed to Ray's ``.options`` (e.g. ``{"num_cpus": 1}``).
    ``max_restarts``: attempts to bring one shard back before ``ShardFailedError``.
    ``timeout_s``: how long to wait for a shard's answer (None: for ever); a shard that does
    not answer in time is stopped, the bar is undone on every shard and ``ShardFailedError``
    raised (the next bar starts a new actor for it from its checkpoint). ``targets``,
    ``families``, ``settings``, ``definitions`` and ``bars_per_day`` go to each shard's
    ``LivePredictor`` as they are. ``unavailable``, ``rejected_bars`` and ``run_failures`` report
    what ``LivePredictor``'s do, gathered from the shards.
    """

    def __init__(
        self,
        run_root: str | Path,
        symbols: Sequence[str],
        interval_minutes: float,
        *,
        shards: int = 2,
        checkpoint_every: int = 100,
        checkpoint_dir: str | Path | None = None,
        targets: Iterable[str] | None = None,
        families: Iterable[str] | None = None,
        settings: Settings | None = None,
        definitions: FeatureDefinitions | Mapping | None = None,
        bars_per_day: int | None = None,
        actor_options: dict[str, Any] | None = None,
        max_restarts: int = 3,
        timeout_s: float | None = None,
    ):
        ray = _ray()
        self._ray = ray
        self.symbols = tuple(str(s) for s in symbols)
        if isinstance(symbols, str) or not self.symbols:
            raise InferenceError("symbols must be a non-empty list of names")
        if len(set(self.symbols)) != len(self.symbols):
            twice = sorted({s for s in self.symbols if self.symbols.count(s) > 1})
            raise InferenceError(f"symbol(s) listed twice: {twice}")
        for name, value in (("shards", shards), ("checkpoint_every", checkpoint_every), ("max_restarts", max_restarts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InferenceError(f"{name} must be a positive integer, got {value!r}")
        if shards > len(self.symbols):
            raise InferenceError(f"shards={shards} is more than the {len(self.symbols)} symbols")
        if timeout_s is not None and (
            isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0
        ):
            raise InferenceError(f"timeout_s must be a positive number of seconds or None, got {timeout_s!r}")
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self.run_root = str(run_root)
        self.interval_minutes = float(interval_minutes)
        self.checkpoint_every = checkpoint_every
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.max_restarts = max_restarts
        self._options = {  # each shard's LivePredictor keywords
            "targets": list(targets) if targets is not None else None,
            "families": list(families) if families is not None else None,
            "settings": settings,
            "definitions": definitions,
            "bars_per_day": bars_per_day,
        }
        bounds = np.linspace(0, len(self.symbols), shards + 1).round().astype(int)
        self.slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        self.bars = 0
        self.restarts = [0] * shards  # actors started again, per shard
        self._checkpoints: list[dict[str, Any] | Path | None] = [None] * shards  # each shard's last state (or its file)
        self._since: list[tuple] = []  # full bars since the last checkpoint, for replay
        self._clock = BarClock()  # the newest bar time sent
        self.actors: list[Any] = []
        try:  # a failure here stops the actors already started
            self._remote = ray.remote(_Shard).options(**(actor_options or {}))
            for i in range(shards):
                self.actors.append(self._start(i))
            described = self._get([a.describe.remote() for a in self.actors], "starting the shards")
            if any(d != described[0] for d in described):
                raise ShardFailedError("shards built different models (a run changed while they started?)")
        except BaseException:
            self.shutdown()
            raise
        self.layout = OutputLayout.from_dict(described[0]["layout"])  # every shard's: same models and columns
        self.externals = tuple(described[0]["externals"])
        # Models left out (failed to load, interval mismatch): (target, family) -> why, as LivePredictor's.
        self.unavailable = {(target, family): why for target, family, why in described[0]["unavailable"]}
        self.columns = self.layout.columns
        self.column_index = {col: j for j, col in enumerate(self.columns)}
        self.out = np.full((len(self.symbols), len(self.columns)), np.nan, dtype=np.float32)

    # ------------------------------------------------------------ actors

    def _start(self, i: int):
        return self._remote.remote(
            self.run_root, list(self.symbols[self.slices[i]]), self.interval_minutes, self._options
        )

    def _who(self, i: int) -> str:
        sl = self.slices[i]
        return f"shard {i} (symbols {self.symbols[sl.start]}..{self.symbols[sl.stop - 1]})"

    def _get(self, refs: Any, what: str) -> Any:
        """``ray.get`` within ``timeout_s``; an error raised in an actor comes out as itself."""
        ray = self._ray
        try:
            return ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ShardFailedError(f"{what}: no answer within timeout_s={self.timeout_s:g}") from None
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from exc

    def _checkpoint_path(self, i: int) -> Path | None:
        return self.checkpoint_dir / f"shard-{i}.json" if self.checkpoint_dir is not None else None

    def _save_checkpoint(self, i: int, state: dict[str, Any]) -> None:
        path = self._checkpoint_path(i)
        if path is None:
            self._checkpoints[i] = state
        else:  # on disk only: a restart reads what a crash of the runner would leave
            write_atomic_json(path, state)
            self._checkpoints[i] = path

    def _load_checkpoint(self, i: int) -> dict[str, Any] | None:
        held = self._checkpoints[i]
        return read_json(held) if isinstance(held, Path) else held

    def _slice(self, bar: tuple, i: int) -> tuple:
        block, timestamp, external = bar
        sl = self.slices[i]
        return np.ascontiguousarray(block[:, sl]), timestamp, None if external is None else external[sl].copy()

    def _external(self, external: Any) -> np.ndarray | None:
        """The external columns as an (n_symbols, n_external) float64 copy, or None; checked here
        as ``LivePredictor.on_bar`` checks them, before any shard sees the bar."""
        n, names = len(self.symbols), self.externals
        if external is None:
            if names:
                raise InferenceError(f"external: the run reads external column(s) {list(names)}; pass them")
            return None
        if not names:
            raise InferenceError("external: the run reads no external columns")
        try:
            if isinstance(external, Mapping):
                if set(external) != set(names):
                    raise InferenceError(f"external: expected exactly {list(names)}, got {sorted(map(str, external))}")
                return np.column_stack([check_bar_input(external[k], f"external {k!r}", (n,)) for k in names])
            return np.array(check_bar_input(external, "external", (n, len(names))))  # a copy: kept for replay
        except FeatureBuildError as exc:  # the runner's refusals are InferenceErrors, as the bar's
            raise InferenceError(f"{exc}; declared: {list(names)}") from None

    def _recover(self, i: int, snapshot: bool, current: tuple | None = None):
        """A new actor for shard ``i``: last checkpoint restored, kept bars replayed (then ``current``)."""
        ray = self._ray
        who = self._who(i)
        bars = self._since + ([current] if current is not None else [])
        error: Exception | None = None
        for _ in range(self.max_restarts):
            self.restarts[i] += 1
            log.warning(
                "%s: actor died or hung; restarting from its checkpoint and replaying %d bar(s)", who, len(bars)
            )
            try:
                ray.kill(self.actors[i], no_restart=True)
            except Exception:  # already gone
                pass
            actor = self.actors[i] = self._start(i)
            try:
                state = self._load_checkpoint(i)
                if state is not None:
                    ray.get(actor.restore.remote(state), timeout=self.timeout_s)
                return ray.get(actor.replay.remote([self._slice(b, i) for b in bars], snapshot), timeout=self.timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                error = exc
            except ray.exceptions.RayTaskError as exc:  # deterministic: another try would fail the same way
                raise ShardFailedError(f"{who}: could not be restored: {_cause(exc)!r}") from _cause(exc)
        raise ShardFailedError(f"{who}: actor died again on each of {self.max_restarts} restart(s): {error}")

    def _rewind(self) -> None:
        """Every shard back to its last checkpoint plus the kept bars: the state before a refused bar."""
        ray = self._ray
        refs = [
            actor.rewind.remote(self._load_checkpoint(i), [self._slice(b, i) for b in self._since])
            for i, actor in enumerate(self.actors)
        ]
        for i, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=self.timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                self._recover(i, snapshot=False)  # dead or stuck: a new actor, restored and replayed
            except ray.exceptions.RayTaskError as exc:
                raise ShardFailedError(f"{self._who(i)}: could not be rewound: {_cause(exc)!r}") from _cause(exc)

    # ------------------------------------------------------------ the bar

    def on_bar(
        self, open: Any, high: Any, low: Any, close: Any, volume: Any, timestamp: Any = None, external: Any = None
    ) -> np.ndarray:
        """One bar for every symbol (arrays in ``symbols`` order); returns (n_symbols, n_columns) float32.
        ``external``: the run's declared external columns (``externals``), as ``LivePredictor.on_bar``.

        A bar of the wrong shape, with a timestamp that is not a time or is older than the
        previous bar's, is an ``InferenceError`` raised before any shard sees it. An error a
        shard raises anyway is raised as itself (not Ray's wrapper) once every shard has been
        rewound to the state before this bar; ``ShardFailedError`` when a shard cannot be
        brought back or does not answer within ``timeout_s``. A refused bar changes nothing.
        """
        ray = self._ray
        n = len(self.symbols)
        block = np.empty((5, n), dtype=np.float64)  # a copy: the caller may reuse its arrays, the replay must not
        for row, name, a in zip(block, ("open", "high", "low", "close", "volume"), (open, high, low, close, volume)):
            try:
                a = np.asarray(a, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise InferenceError(f"{name}: not numbers ({exc})") from None
            if a.shape != (n,):
                raise InferenceError(f"{name}: expected shape ({n},) (one value per symbol), got {a.shape}")
            row[:] = a
        stamp = self._clock.check(timestamp)
        bar = (block, stamp, self._external(external))
        snapshot = (self.bars + 1) % self.checkpoint_every == 0
        refs = [actor.on_bar.remote(*self._slice(bar, i), snapshot) for i, actor in enumerate(self.actors)]
        results: list[Any] = [None] * len(refs)
        failure: BaseException | None = None
        for i, ref in enumerate(refs):
            try:
                results[i] = ray.get(ref, timeout=self.timeout_s)
            except ray.exceptions.RayActorError:
                try:
                    results[i] = self._recover(i, snapshot, bar)
                except ShardFailedError as exc:
                    failure = failure or exc
            except ray.exceptions.GetTimeoutError:
                try:  # stuck: stopped now, replaced (restored, replayed) by the rewind below
                    ray.kill(self.actors[i], no_restart=True)
                except Exception:
                    pass
                failure = failure or ShardFailedError(
                    f"{self._who(i)}: no answer to bar {self.bars} within timeout_s={self.timeout_s:g}; bar undone"
                )
            except ray.exceptions.RayTaskError as exc:
                if failure is None:
                    failure = _cause(exc)
                    if failure is not exc:
                        failure.__cause__ = exc  # Ray's wrapper carries the actor's traceback
        if failure is not None:
            self._rewind()  # the shards that took the bar give it back
            raise failure
        for (out, _), sl in zip(results, self.slices):
            self.out[sl] = out
        if snapshot:
            for i, (_, state) in enumerate(results):
                self._save_checkpoint(i, state)
            self._since.clear()
        else:
            self._since.append(bar)
        self._clock.accept(stamp)
        self.bars += 1
        return self.out

    @property
    def predictions(self) -> np.ndarray:
        return self.out

    def as_dict(self, symbol: str) -> dict[str, dict[str, float]]:
        """The spec's ``{horizon: {family: value}}`` for one symbol, as ``LivePredictor.as_dict``."""
        try:
            i = self.symbols.index(symbol)
        except ValueError:
            raise InferenceError(f"unknown symbol {symbol!r}") from None
        return self.layout.view(self.out[i])

    @property
    def rejected_bars(self) -> np.ndarray:
        """Per symbol (in ``symbols`` order): bars refused by ``bar_check``, as ``LivePredictor``'s."""
        health = self._get([a.health.remote() for a in self.actors], "health")
        return np.concatenate([h["rejected_bars"] for h in health])

    @property
    def run_failures(self) -> dict[tuple[str, str], RunFailures]:
        """Models that failed at run time on some bar (their columns NaN for the symbols of the shard
        where it failed, for that bar), as ``LivePredictor.run_failures``. Merged over the shards: a
        model's count is the most bars it failed on in one shard (a broken model fails in every
        shard on the same bars), its last error the latest bar's. A shard restarted from its
        checkpoint starts counting again."""
        merged: dict[tuple[str, str], RunFailures] = {}
        for health in self._get([a.health.remote() for a in self.actors], "health"):
            for key, record in health["run_failures"].items():
                best = merged.get(key)
                if best is None:
                    merged[key] = dataclasses.replace(record)
                    continue
                if record.last_bar > best.last_bar:
                    best.last_bar, best.last_error = record.last_bar, record.last_error
                best.count = max(best.count, record.count)
        return merged

    def latency(self) -> list[dict[str, float]]:
        """Each shard's own on_bar latency summary (inside the actor, without Ray's round trip)."""
        return self._get([a.latency.remote() for a in self.actors], "latency")

    def shutdown(self) -> None:
        """Stop every shard's actor."""
        for actor in self.actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []

    def __enter__(self) -> ShardedPredictor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
