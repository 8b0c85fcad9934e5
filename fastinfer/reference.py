"""The seed path: the spec's per-bar loop, the baseline fastinfer's live path is measured against.

Per bar, as ``spec/MODEL_INFERENCE.md`` describes it: pandas ``FeatureBuilder.build`` over the
window of the last ``lookback + 1`` bars; for each sequence model the row goes into its
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
from .feature_builder import FeatureBuilder
from .features import KNOWN_FEATURES
from .loader import LoadedModel, ModelLoader
from .predictor import point_column


class SeedPath:
    """``SeedPath(run_root)``; ``on_bar(window)`` → ``{(target, family): value}`` for the window's last bar."""

    def __init__(
        self,
        run_root: str | Path,
        *,
        targets: Iterable[str] | None = None,
        families: Iterable[str] | None = None,
        lookback: int = 60,
        loader: ModelLoader | None = None,
    ):
        self.loader = loader or ModelLoader(run_root, prefer_onnx=False)
        self.models: list[LoadedModel] = list(self.loader.load_all(targets, families).values())
        if not self.models:
            raise ModelLoadError(None, None, "no model in the run for these targets/families", self.loader.run_root)
        used = {name for m in self.models for name in m.feature_order}
        self.builder = FeatureBuilder([f for f in KNOWN_FEATURES if f in used])
        self.lookback = lookback
        # One spec-style buffer per sequence model, holding that model's feature order.
        self.buffers = {
            id(m): SeqBufferManager(m.spec.sequence_length, m.n_features, settings=self.loader.settings.models)
            for m in self.models
            if m.family.sequential
        }
        self._columns = {m: [self.builder.features.index(f) for f in m.feature_order] for m in self.models}
        # The column a {horizon: {family: value}} view shows, as LivePredictor picks it.
        self._point = {m: point_column(m.columns) for m in self.models}

    def on_bar(self, window: pd.DataFrame) -> dict[tuple[str, str], float]:
        """Predictions of every model for the last bar of ``window`` (OHLCV, oldest first).

        NaN where a model's features are still warming up; such a row is not pushed into a
        sequence buffer (the spec's buffer refuses non-finite rows).
        """
        features = self.builder.build(window, lookback=self.lookback)
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
