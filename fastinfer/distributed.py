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

``ray`` is the ``[distributed]`` extra, imported only here. Start the cluster first
(``ray.init(...)``); Ray otherwise starts a local one on the first actor.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .atomic import read_json, write_atomic_json
from .config import Settings
from .errors import InferenceError

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


class _Shard:
    """The actor: one LivePredictor over a slice of the symbols."""

    def __init__(self, run_root: str, symbols: list[str], interval_minutes: float, targets, families,
                 settings: Settings | None):
        from .predictor import LivePredictor

        self.predictor = LivePredictor(run_root, symbols, interval_minutes, targets=targets, families=families,
                                       settings=settings)

    def columns(self) -> list[tuple[str, str, str]]:
        return list(self.predictor.columns)

    def restore(self, state: dict[str, Any]) -> int:
        self.predictor.load_state_dict(state)
        return self.predictor.bars

    def on_bar(self, block: np.ndarray, timestamp, snapshot: bool):
        """``block``: this shard's (5, n) open, high, low, close, volume (one argument: one transfer)."""
        out = self.predictor.on_bar(*block, timestamp=timestamp)
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
    """

    def __init__(self, run_root: str | Path, symbols: Sequence[str], interval_minutes: float, *,
                 shards: int = 2, checkpoint_every: int = 100, checkpoint_dir: str | Path | None = None,
                 targets: Iterable[str] | None = None, families: Iterable[str] | None = None,
                 settings: Settings | None = None, actor_options: dict[str, Any] | None = None,
                 max_restarts: int = 3):
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
        self.run_root = str(run_root)
        self.interval_minutes = float(interval_minutes)
        self.checkpoint_every = checkpoint_every
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.max_restarts = max_restarts
        self._args = (list(targets) if targets is not None else None,
                      list(families) if families is not None else None, settings)
        bounds = np.linspace(0, len(self.symbols), shards + 1).round().astype(int)
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self._remote = ray.remote(_Shard).options(**(actor_options or {}))
        self.actors = [self._start(i) for i in range(shards)]
        columns = ray.get([a.columns.remote() for a in self.actors])
        if any(c != columns[0] for c in columns):
            raise ShardFailedError("shards built different models (a run changed while they started?)")
        self.columns = [tuple(c) for c in columns[0]]
        self.column_index = {col: j for j, col in enumerate(self.columns)}
        self.out = np.full((len(self.symbols), len(self.columns)), np.nan, dtype=np.float32)
        self.bars = 0
        self.restarts = [0] * shards  # actors started again, per shard
        self._checkpoints: list[dict[str, Any] | Path | None] = [None] * shards  # each shard's last state (or its file)
        self._since: list[tuple] = []  # full bars since the last checkpoint, for replay

    # ------------------------------------------------------------ actors

    def _start(self, i: int):
        targets, families, settings = self._args
        return self._remote.remote(self.run_root, list(self.symbols[self.slices[i]]), self.interval_minutes,
                                   targets, families, settings)

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

    def _slice(self, bar: tuple[np.ndarray, Any], i: int) -> tuple[np.ndarray, Any]:
        block, timestamp = bar
        return np.ascontiguousarray(block[:, self.slices[i]]), timestamp

    def _recover(self, i: int, snapshot: bool):
        """A new actor for shard ``i``: last checkpoint restored, kept bars replayed (the current one last)."""
        ray = self._ray
        sl = self.slices[i]
        who = f"shard {i} (symbols {self.symbols[sl.start]}..{self.symbols[sl.stop - 1]})"
        error: Exception | None = None
        for _ in range(self.max_restarts):
            self.restarts[i] += 1
            log.warning("%s: actor died; restarting from its checkpoint and replaying %d bar(s)", who, len(self._since))
            try:
                ray.kill(self.actors[i], no_restart=True)
            except Exception:  # already gone
                pass
            actor = self.actors[i] = self._start(i)
            try:
                state = self._load_checkpoint(i)
                if state is not None:
                    ray.get(actor.restore.remote(state))
                return ray.get(actor.replay.remote([self._slice(b, i) for b in self._since], snapshot))
            except ray.exceptions.RayActorError as exc:
                error = exc
        raise ShardFailedError(f"{who}: actor died again on each of {self.max_restarts} restart(s): {error}")

    # ------------------------------------------------------------ the bar

    def on_bar(self, open: Any, high: Any, low: Any, close: Any, volume: Any, timestamp: Any = None) -> np.ndarray:
        """One bar for every symbol (arrays in ``symbols`` order); returns (n_symbols, n_columns) float32."""
        ray = self._ray
        n = len(self.symbols)
        block = np.empty((5, n), dtype=np.float64)  # a copy: the caller may reuse its arrays, the replay must not
        for row, name, a in zip(block, ("open", "high", "low", "close", "volume"), (open, high, low, close, volume)):
            a = np.asarray(a, dtype=np.float64)
            if a.shape != (n,):
                raise InferenceError(f"{name}: expected shape ({n},) (one value per symbol), got {a.shape}")
            row[:] = a
        bar = (block, timestamp)
        self._since.append(bar)
        snapshot = (self.bars + 1) % self.checkpoint_every == 0
        refs = [actor.on_bar.remote(*self._slice(bar, i), snapshot) for i, actor in enumerate(self.actors)]
        results = []
        for i, ref in enumerate(refs):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                results.append(self._recover(i, snapshot))
        for (out, state), sl in zip(results, self.slices):
            self.out[sl] = out
        if snapshot:
            for i, (_, state) in enumerate(results):
                self._save_checkpoint(i, state)
            self._since.clear()
        self.bars += 1
        return self.out

    @property
    def predictions(self) -> np.ndarray:
        return self.out

    def as_dict(self, symbol: str) -> dict[str, dict[str, float]]:
        """The spec's ``{horizon: {family: value}}`` for one symbol, as ``LivePredictor.as_dict``."""
        from .predictor import POINT_COLUMNS, horizon_of

        try:
            i = self.symbols.index(symbol)
        except ValueError:
            raise InferenceError(f"unknown symbol {symbol!r}") from None
        result: dict[str, dict[str, float]] = {}
        seen: set[tuple[str, str]] = set()
        for j, (target, family, _) in enumerate(self.columns):
            if (target, family) in seen:
                continue
            seen.add((target, family))
            names = [c for t, f, c in self.columns if (t, f) == (target, family)]
            pick = next((names.index(c) for c in POINT_COLUMNS if c in names), 0)
            result.setdefault(horizon_of(target), {})[family] = float(self.out[i, j + pick])
        return result

    def latency(self) -> list[dict[str, float]]:
        """Each shard's own on_bar latency summary (inside the actor, without Ray's round trip)."""
        return self._ray.get([a.latency.remote() for a in self.actors])

    def shutdown(self) -> None:
        """Stop every shard's actor."""
        for actor in self.actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []

    def __enter__(self) -> "ShardedPredictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
