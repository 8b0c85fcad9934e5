"""The research path: every model of a run over a whole history in one call, equal to the live path.

``RunPredictor(run_root)`` serves a run's models over a feature matrix (research, backtests,
monitoring live against history); ``RunPredictor.from_bars(...)`` / ``backtest(...)`` start from
OHLCV bars: the run's features are computed by the same compiled program the live predictor runs
(replayed over each symbol's whole history in one jitted call), then every model predicts in
big batches through its runtime (forest kernel on every core, ONNX Runtime, native), with the
live path's rules for readiness, NaN, missing bars and sequence windows. Output rows equal the
bar-by-bar ``LivePredictor.on_bar`` replay of the same bars: bit for bit where both run the same
kernel (the forest kernel), to the last float32 bit of a GEMM otherwise (ONNX Runtime's blocking
differs with the batch size).

Memory stays bounded: rows go through the models in chunks (``chunk_rows``), sequence windows in
chunks sized to ``window_bytes``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import Settings, load_config
from .errors import FeatureBuildError, InferenceError
from .kernels.windows import windows as _windows
from .layout import OutputLayout, feature_union
from .loader import ModelLoader
from .predictor import MAX_PRICE, MAX_VOLUME, _check_bars, compile_run_features, usable_models

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

CHUNK_ROWS = 65_536
WINDOW_BYTES = 64 << 20  # sequence windows materialised at once (rows × T × F × 4 bytes)
PROGRESS_ROWS = 200_000


@dataclass
class _SymbolRows:
    """One symbol's rows of the input, in time order: their positions, and which bars are present."""

    positions: np.ndarray  # int64 indices into the input's rows
    present: np.ndarray  # bool: the bar exists (a missing bar predicts NaN and adds no window row)


class RunPredictor:
    """Every model of a run over a feature matrix: ``predict(frame)`` → a DataFrame with a
    (target, family, column) column index, rows as given.

    ``columns``, ``feature_order`` (the union of the models' features) and ``unavailable``
    (models left out, with the reason) are as on ``LivePredictor``. ``interval_minutes``: the
    data's bar interval; models trained on another are an error (or left out with
    ``predictor.on_interval_mismatch: skip``).
    """

    def __init__(
        self,
        run_root: str | Path,
        *,
        interval_minutes: float | None = None,
        targets: Iterable[str] | None = None,
        families: Iterable[str] | None = None,
        settings: Settings | None = None,
        config_path: str | Path | None = None,
        loader: ModelLoader | None = None,
        chunk_rows: int = CHUNK_ROWS,
    ):
        self.settings = settings if settings is not None else load_config(config_path)
        self.loader = loader or ModelLoader(run_root, settings=self.settings)
        self.interval_minutes = interval_minutes
        self.chunk_rows = int(chunk_rows)
        if self.chunk_rows < 1:
            raise InferenceError(f"chunk_rows must be positive, got {chunk_rows!r}")
        self.models, self.unavailable = usable_models(
            self.loader, self.settings, interval_minutes, targets=targets, families=families
        )
        pred = self.settings.predictor
        self.feature_order = feature_union(self.models)
        self.layout = OutputLayout.from_models(self.models, self.feature_order, pred.nan_policy)
        self.columns = self.layout.columns
        ms = self.settings.models
        self._padding_repeat = ms.seq_padding == "repeat_first"
        self._warmup = {t: min(ms.seq_warmup_bars, t) for t in self.layout.sequence_lengths}

    # ------------------------------------------------------------ from bars

    @classmethod
    def from_bars(
        cls,
        run_root: str | Path,
        bars: pd.DataFrame,
        *,
        interval_minutes: float,
        symbol_column: Any = None,
        definitions: Any = None,
        bars_per_day: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """Predictions for every bar of ``bars`` (OHLCV, oldest first per symbol; ``symbol_column``
        names each row's symbol): features by the run's compiled program, then ``predict``. Equal to
        replaying the bars through ``LivePredictor.on_bar`` (``predictor.bar_check`` included)."""
        predictor = cls(run_root, interval_minutes=interval_minutes, **kwargs)
        return predictor.predict_bars(
            bars, symbol_column=symbol_column, definitions=definitions, bars_per_day=bars_per_day, progress=progress
        )

    def predict_bars(
        self,
        bars: pd.DataFrame,
        *,
        symbol_column: Any = None,
        definitions: Any = None,
        bars_per_day: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        where: str = "bars",
    ) -> pd.DataFrame:
        """``from_bars`` with this predictor (``interval_minutes`` as it was built with)."""
        features, present = self.bar_features(
            bars, symbol_column=symbol_column, definitions=definitions, bars_per_day=bars_per_day, where=where
        )
        groups = symbol_groups(bars, symbol_column, where)
        return self._predict_arrays(
            features, [_SymbolRows(rows, present[rows]) for rows in groups.values()], bars.index, progress
        )

    def bar_features(
        self,
        bars: pd.DataFrame,
        *,
        symbol_column: Any = None,
        definitions: Any = None,
        bars_per_day: int | None = None,
        where: str = "bars",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every row's features as the live path sees them — (n, union) float32, inf as NaN — and
        which bars are present (finite OHLCV that passes ``predictor.bar_check``)."""
        from .features import StreamingFeatures
        from .features.frames import check_time_order, external_arrays, ohlcv_arrays

        program = compile_run_features(
            self.models,
            self.loader,
            definitions=definitions,
            interval_minutes=self.interval_minutes,
            bars_per_day=bars_per_day,
        )
        if list(program.features) != self.feature_order:  # a bug, not an input problem
            raise AssertionError("the compiled program's feature order is not the models' union")
        arrays = ohlcv_arrays(bars, where, check_order=symbol_column is None)
        ext = external_arrays(bars, program.externals, where)
        groups = symbol_groups(bars, symbol_column, where)
        if symbol_column is not None:  # each symbol's bars oldest first, each once (as features build)
            for symbol, rows in groups.items():
                check_time_order(bars.iloc[rows], f"{where}, symbol {symbol!r}")
        n = len(bars)
        checked = np.empty((5, n))
        refused = np.zeros(n, dtype=np.bool_)
        o, h, l, c, v = (arrays[k] for k in ("open", "high", "low", "close", "volume"))
        if self.settings.predictor.bar_check == "reject":
            _check_bars(o, h, l, c, v, MAX_PRICE, MAX_VOLUME, checked, refused)
        else:
            checked[:] = (o, h, l, c, v)
        present = np.isfinite(checked).all(axis=0)
        features = np.empty((n, len(self.feature_order)), dtype=np.float32)
        live = StreamingFeatures(["_"], program=program)
        for rows in groups.values():
            record = live.replay(
                "_",
                {
                    **dict(zip(("open", "high", "low", "close", "volume"), checked[:, rows])),
                    **{k: ext[rows, j] for j, k in enumerate(program.externals)},
                },
            )
            with np.errstate(over="ignore"):
                block = record.astype(np.float32)  # the live path's float32 feature rows
            block[~np.isfinite(block)] = np.nan  # +/-inf reaches no model (the live path's _copy_finite)
            features[rows] = block
        return features, present

    # ------------------------------------------------------------ from features

    def predict(
        self,
        frame: pd.DataFrame,
        *,
        symbol_column: Any = None,
        present: np.ndarray | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> pd.DataFrame:
        """Every model over ``frame``'s rows (one row per bar, oldest first per symbol).

        ``frame`` holds ``feature_order`` by name (other columns are ignored); ``symbol_column``
        (or a MultiIndex whose first level is the symbol) groups rows per symbol for sequence
        models' windows. ``present``: which rows are bars (default: all); a missing bar predicts
        NaN. A missing column or one that is not numbers is an ``InferenceError`` naming it;
        NaN/inf features give NaN outputs for the models that read them, as live (``nan_policy``
        pass hands NaN to models that route it)."""
        missing = [f for f in self.feature_order if f not in frame.columns]
        if missing:
            raise InferenceError(f"frame: missing feature column(s) {missing[:10]} (of {len(self.feature_order)})")
        twice = [f for f in self.feature_order if np.count_nonzero(frame.columns == f) > 1]
        if twice:  # frame[name] would be a DataFrame: which column is the feature?
            raise InferenceError(f"frame: feature column(s) {twice[:10]} given more than once")
        for name in self.feature_order:
            if frame[name].dtype.kind not in "fiu":
                raise InferenceError(f"frame: column {name!r} is {frame[name].dtype}, not numbers")
        n = len(frame)
        present = np.ones(n, dtype=np.bool_) if present is None else np.asarray(present, dtype=np.bool_)
        if present.shape != (n,):
            raise InferenceError(f"present: expected {n} booleans, one per row, got shape {present.shape}")
        if symbol_column is None and getattr(frame.index, "nlevels", 1) > 1:
            groups = symbol_groups(frame.reset_index(level=0), frame.index.names[0] or "level_0", "frame")
        else:
            groups = symbol_groups(frame, symbol_column, "frame")
        with np.errstate(over="ignore", invalid="ignore"):
            features = frame[self.feature_order].to_numpy(dtype=np.float32)
        features[~np.isfinite(features)] = np.nan
        return self._predict_arrays(
            features, [_SymbolRows(rows, present[rows]) for rows in groups.values()], frame.index, progress
        )

    def _predict_arrays(
        self, features: np.ndarray, symbols: list[_SymbolRows], index: Any, progress: Callable[[int, int], None] | None
    ) -> pd.DataFrame:
        import pandas as pd

        n = len(features)
        out = np.full((n, len(self.columns)), np.nan, dtype=np.float32)
        done = 0
        tabular = [(m, s) for m, s in zip(self.models, self.layout.slots) if not s.sequence_length]
        sequential = [(m, s) for m, s in zip(self.models, self.layout.slots) if s.sequence_length]
        present_all = np.zeros(n, dtype=np.bool_)
        for group in symbols:
            present_all[group.positions] = group.present
        with _reporting(progress, n) as report:
            for lo in range(0, n, self.chunk_rows):  # tabular models: rows in any order, big batches
                hi = min(n, lo + self.chunk_rows)
                self._run_tabular(tabular, features[lo:hi], out[lo:hi])
                done += (hi - lo) * len(tabular)
                if report:
                    report(done, n * len(self.models))
            for length in self.layout.sequence_lengths:  # sequence models: each symbol's history in order
                members = [(m, s) for m, s in sequential if s.sequence_length == length]
                for group in symbols:
                    self._run_sequences(members, length, features, group, out)
                done += n * len(members)
                if report:
                    report(done, n * len(self.models))
        out[~present_all] = np.nan  # a missing bar predicts nothing, as live
        columns = pd.MultiIndex.from_tuples(self.columns, names=["target", "family", "column"])
        return pd.DataFrame(out, index=index, columns=columns)

    def _run_tabular(self, members, X: np.ndarray, out: np.ndarray) -> None:
        inputs: dict[tuple, tuple[np.ndarray, Any]] = {}  # models of a run mostly share one feature list
        for m, slot in members:
            key = (slot.needs, slot.pass_nan)
            if key not in inputs:
                rows = X[:, list(slot.needs)]
                ok = None if slot.pass_nan else np.isfinite(rows).all(axis=1)
                idx = slice(None) if ok is None or ok.all() else ok
                inputs[key] = (np.ascontiguousarray(rows[idx]), idx)
            rows, idx = inputs[key]
            if len(rows):
                pred = np.asarray(m.run(rows), dtype=np.float32)
                out[idx, slot.start : slot.stop] = pred.reshape(-1, slot.stop - slot.start)

    def _run_sequences(self, members, length: int, features: np.ndarray, group: _SymbolRows, out: np.ndarray) -> None:
        width = features.shape[1]
        ring = np.zeros((1, length, width), dtype=np.float32)
        counts = np.zeros(1, dtype=np.int64)
        step = max(1, WINDOW_BYTES // max(1, length * width * 4))
        positions = group.positions
        for lo in range(0, len(positions), step):
            rows = positions[lo : lo + step]
            block = np.ascontiguousarray(features[rows])
            windows = np.empty((len(rows), length, width), dtype=np.float32)
            ready = np.empty(len(rows), dtype=np.bool_)
            _windows(
                block,
                np.zeros(len(rows), dtype=np.int64),
                group.present[lo : lo + step],
                ring,
                counts,
                self._padding_repeat,
                self._warmup[length],
                windows,
                ready,
            )
            if not ready.any():
                continue
            take = rows[ready]
            for m, slot in members:
                x = np.ascontiguousarray(windows[ready][..., list(slot.needs)])
                pred = np.asarray(m.run(x), dtype=np.float32)
                out[take, slot.start : slot.stop] = pred.reshape(len(take), -1)


def symbol_groups(frame: Any, symbol_column: Any, where: str = "bars") -> dict[Any, np.ndarray]:
    """Row positions per symbol (symbols in order of first appearance, each one's rows in the
    frame's order); one group keyed None when there is no symbol column. A row whose symbol is
    missing belongs to no symbol: a ``FeatureBuildError`` naming the row, as ``features build``."""
    import pandas as pd

    if symbol_column is None:
        return {None: np.arange(len(frame))}
    try:
        known = symbol_column in frame.columns
    except TypeError:  # a list or another unhashable name
        known = False
    if not known:
        raise FeatureBuildError(f"{where}: no symbol column {symbol_column!r}; columns: {list(frame.columns)[:20]}")
    try:
        groups = {k: np.asarray(v) for k, v in frame.groupby(symbol_column, sort=False, dropna=False).indices.items()}
    except TypeError as exc:  # lists or other unhashable values as symbols
        raise FeatureBuildError(f"{where}: {symbol_column!r} holds values that are not symbol names ({exc})") from None
    for symbol, rows in groups.items():
        if pd.isna(symbol):
            raise FeatureBuildError(f"{where}: {symbol_column!r} is missing at row {int(rows[0])}")
    return groups


@contextmanager
def _reporting(progress: Callable[[int, int], None] | None, total_rows: int):
    """The caller's ``progress``, or a Rich progress bar for a long run (None for a short one),
    stopped however the run ends (its refresh thread and hidden cursor must not outlive an error)."""
    if progress is not None or total_rows < PROGRESS_ROWS:
        yield progress
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("predicting", total=1)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def backtest(
    run_root: str | Path,
    bars: pd.DataFrame,
    *,
    interval_minutes: float,
    symbol_column: Any = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Every model's prediction for every bar of ``bars``: ``RunPredictor.from_bars`` in one call.

    ``bars``: OHLCV (any case) oldest first per symbol, ``symbol_column`` naming each row's symbol
    (None: one symbol), plus the run's declared external columns. Returns a DataFrame with
    ``bars``' index and a (target, family, column) column index.
    """
    return RunPredictor.from_bars(
        run_root, bars, interval_minutes=interval_minutes, symbol_column=symbol_column, **kwargs
    )


__all__ = ["RunPredictor", "backtest", "symbol_groups"]
