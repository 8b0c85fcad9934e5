"""The spec's ``FeatureBuilder``: a window of OHLCV bars → the named feature vector of its last bar.

It runs the batch execution of the same compiled program the live path runs incrementally,
so ``FeatureBuilder(...).build(df)`` equals ``StreamingFeatures`` fed the same bars. Built from
a run (``run_root``), it computes the union of every model's features with the run's
definitions and returns a ``FeatureVector`` each model can take its own columns from by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import FeatureBuildError
from .compiler import check_names, compile_features
from .definitions import FeatureDefinitions
from .frames import external_arrays, ohlcv_arrays, series_features
from .graph import OHLCV
from .named import FeatureVector
from .program import FeatureProgram
from .runs import run_features
from .vocabulary import DEFAULT_FEATURES

if TYPE_CHECKING:
    from ..loader import ModelLoader

WARMUP = "warmup"  # build()'s default lookback: the program's longest warm-up


class FeatureBuilder:
    """``FeatureBuilder(features=None, *, definitions=None, run_root=None, loader=None,
    interval_minutes=None, bars_per_day=None)``.

    ``features``: the names to compute (vocabulary names, definitions, external columns), in
    output order. Default: the union of a run's model features (``run_root`` or ``loader``),
    else every name in ``definitions``, else ``DEFAULT_FEATURES``. ``definitions``: a
    ``FeatureDefinitions``, its dict, or a path to a definitions file; with a run, the run's own
    ``feature_definitions.yaml`` is merged in. A run is read by ``loader`` (default
    ``ModelLoader(run_root)``), so its definitions and every ``model_meta.json`` are checked
    under the run's trust policy (signature, lock) as the live path checks them.
    ``interval_minutes`` / ``bars_per_day`` turn durations (``ret_1d``) into bars; a run's
    models give its interval.
    """

    def __init__(
        self,
        features: Sequence[str] | None = None,
        *,
        definitions: FeatureDefinitions | Mapping | str | Path | None = None,
        run_root: str | Path | None = None,
        loader: ModelLoader | None = None,
        interval_minutes: float | None = None,
        bars_per_day: int | None = None,
    ):
        if isinstance(definitions, (str, Path)):
            definitions = FeatureDefinitions.read(definitions)
        elif definitions is not None and not isinstance(definitions, FeatureDefinitions):
            definitions = FeatureDefinitions.from_dict(definitions)
        names = None if features is None else check_names(features)
        if run_root is not None or loader is not None:
            run = run_features(run_root, loader=loader)
            if run.definitions is not None:
                definitions = run.definitions if definitions is None else run.definitions.merged(definitions)
            if interval_minutes is None:
                interval_minutes = run.interval_minutes
            elif run.interval_minutes is not None and float(interval_minutes) != run.interval_minutes:
                raise FeatureBuildError(
                    f"interval_minutes={interval_minutes} but the run's models say {run.interval_minutes:g}"
                )
            names = names or run.names
        if names is None:
            names = (
                tuple(definitions.features) if definitions is not None and definitions.features else DEFAULT_FEATURES
            )
        self.definitions = definitions
        self.interval_minutes = interval_minutes
        self.bars_per_day = bars_per_day
        self.program = self._compile(names)
        self.features = self.program.features
        self._programs: dict[tuple[str, ...], FeatureProgram] = {self.features: self.program}

    def _compile(self, names: Sequence[str]) -> FeatureProgram:
        return compile_features(
            names, self.definitions, interval_minutes=self.interval_minutes, bars_per_day=self.bars_per_day
        )

    def _program(self, features: Sequence[str] | None) -> FeatureProgram:
        if features is None:
            return self.program
        names = check_names(features)
        if names not in self._programs:
            if len(self._programs) > 64:
                self._programs.clear()
            self._programs[names] = self._compile(names)
        return self._programs[names]

    def build(
        self, df: pd.DataFrame, lookback: int | str | None = WARMUP, features: Sequence[str] | None = None
    ) -> FeatureVector:
        """Features of the last bar of ``df`` (columns open, high, low, close, volume in any
        case, plus any external columns the features read), as a ``FeatureVector`` named by
        feature (float64, shape (n_features,), NaN for a feature still warming up).

        Bars with a missing OHLCV value are dropped first; the features are then computed over
        the last bar and the ``lookback`` bars before it: the program's longest warm-up by
        default (60 for the default features, what ``ret_60`` needs); None: all rows.
        Recursive features (EMA, RSI, ...) depend on the whole history, so a longer lookback
        moves them towards the live values. Equal to ``StreamingFeatures`` fed the same bars.
        """
        program = self._program(features)
        rows, _ = self._rows(df, lookback, program)
        if not rows.shape[0]:
            return FeatureVector(np.full(len(program.features), np.nan), program.features)
        return FeatureVector(rows[-1].copy(), program.features)

    def frame(
        self, df: pd.DataFrame, lookback: int | str | None = None, features: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Every kept bar's features as a DataFrame (rows: the bars with no missing OHLCV value,
        with ``df``'s index; columns: the features)."""
        program = self._program(features)
        rows, kept = self._rows(df, lookback, program)
        return pd.DataFrame(rows, index=df.index[kept], columns=list(program.features))

    def _rows(self, df: pd.DataFrame, lookback: int | str | None, program: FeatureProgram):
        """(features of the kept bars, their row positions in ``df``)."""
        if lookback == WARMUP:
            lookback = program.warmup
        if lookback is not None and (
            isinstance(lookback, bool) or not isinstance(lookback, (int, np.integer)) or lookback < 0
        ):
            raise FeatureBuildError(f"lookback must be a non-negative int or None, got {lookback!r}")
        arrays = ohlcv_arrays(df)
        ext = external_arrays(df, program.externals)
        valid = np.flatnonzero(np.logical_and.reduce([np.isfinite(arrays[k]) for k in OHLCV]))
        if lookback is not None:
            valid = valid[-(lookback + 1) :]
        series = {k: arrays[k][valid] for k in OHLCV}
        series.update({name: ext[valid, j] for j, name in enumerate(program.externals)})
        return series_features(program, [series])[0], valid

    def __repr__(self) -> str:
        return f"FeatureBuilder({len(self.features)} features, externals={list(self.program.externals)})"
