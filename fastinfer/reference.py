"""The seed path: the spec's per-bar loop, the baseline fastinfer's live path is measured against.

Per bar, as ``spec/MODEL_INFERENCE.md`` describes it: pandas over the window of the last
``lookback + 1`` bars (``fastinfer.features.pandas_reference``: the run's features, by whole-series
pandas formulas, as the spec's ``FeatureBuilder`` computed them); for each sequence model the row goes into its
``SeqBufferManager`` and ``get_sequence()`` feeds the model; every model runs on its native
file (no ONNX) through its own ``predict`` — Keras through ``model.predict(x, verbose=0)``,
the spec's ``_predict_keras``. Used by ``fastinfer demo`` and ``benchmarks/bench_predictor.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .buffers import SeqBufferManager
from .errors import ModelLoadError
from .features import ohlcv_arrays
from .features.pandas_reference import evaluate
from .layout import feature_union, point_column
from .loader import LoadedModel, ModelLoader


class SeedPath:
    """``SeedPath(run_root)``; ``on_bar(window)`` → ``{(target, family): value}`` for the window's last bar."""

    def __init__(
        self,
        run_root: str | Path,
        *,
        targets: Iterable[str] | None = None,
        families: Iterable[str] | None = None,
        lookback: int | None = 60,
        loader: ModelLoader | None = None,
    ):
        self.loader = loader or ModelLoader(run_root, prefer_onnx=False)
        self.models: list[LoadedModel] = list(self.loader.load_all(targets, families).values())
        if not self.models:
            raise ModelLoadError(None, None, "no model in the run for these targets/families", self.loader.run_root)
        self.features = feature_union(self.models)
        self.definitions = self.loader.definitions()  # checked as the loader checks every file
        intervals = {m.spec.interval_minutes for m in self.models} - {None}
        self.interval_minutes = intervals.pop() if len(intervals) == 1 else None
        self.lookback = lookback
        # One spec-style buffer per sequence model, holding that model's feature order.
        self.buffers = {
            id(m): SeqBufferManager(m.spec.sequence_length, m.n_features, settings=self.loader.settings.models)
            for m in self.models
            if m.family.sequential
        }
        self._columns = {m: [self.features.index(f) for f in m.feature_order] for m in self.models}
        # The column a {horizon: {family: value}} view shows, as LivePredictor picks it.
        self._point = {m: point_column(m.columns) for m in self.models}

    def on_bar(self, window: pd.DataFrame) -> dict[tuple[str, str], float]:
        """Predictions of every model for the last bar of ``window`` (OHLCV, oldest first).

        NaN where a model's features are still warming up; such a row is not pushed into a
        sequence buffer (the spec's buffer refuses non-finite rows).
        """
        bars = pd.DataFrame(ohlcv_arrays(window))
        bars = bars[np.isfinite(bars.to_numpy()).all(axis=1)]  # a missing bar is no bar (as the live path)
        if self.lookback is not None:
            bars = bars.iloc[-(self.lookback + 1) :]
        bars = bars.reset_index(drop=True)
        table = evaluate(bars, self.features, self.definitions, interval_minutes=self.interval_minutes)
        features = table.iloc[-1].to_numpy(dtype=np.float64) if len(table) else np.full(len(self.features), np.nan)
        out: dict[tuple[str, str], float] = {}
        for m in self.models:
            row = features[self._columns[m]]
            if m.family.sequential:
                buffer = self.buffers[id(m)]
                if np.isfinite(row).all():
                    buffer.push(row)
                ready = buffer.ready()
                x = buffer.get_sequence()
            else:
                ready = bool(np.isfinite(row).all())
                x = row[None, :]
            if not ready:
                out[(m.target, m.family.name)] = float("nan")
                continue
            y = m.adapter.library_predict(m.native, x)
            y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
            out[(m.target, m.family.name)] = float(y[0, self._point[m]])
        return out
