"""``check_parity``: assert that a feature program's two executions agree, bar by bar.

For users' own tests of their definitions or registered primitives::

    from fastinfer.features import check_parity
    report = check_parity(["my_feature", "rsi_14"], bars, definitions)   # raises AssertionError

``bars`` is a DataFrame (one symbol; OHLCV and external columns) or a dict of arrays, each
(T,) for one symbol or (T, n_symbols). The incremental path (``StreamingFeatures``) is fed bar
by bar in float64; the batch path (``run_batch``) runs on each symbol's valid bars, a missing
bar repeating the last features. Every output at every bar must agree to ``rtol`` relative
plus ``atol`` absolute, NaN where the other is NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FeatureBuildError
from .compiler import compile_features
from .graph import OHLCV
from .streaming import StreamingFeatures


@dataclass(frozen=True)
class ParityReport:
    """Largest absolute and relative differences per feature, over ``bars`` × ``symbols``."""

    features: tuple[str, ...]
    max_abs: dict[str, float]
    max_rel: dict[str, float]
    bars: int
    symbols: int


def _as_columns(bars: Any, externals: Sequence[str]) -> dict[str, np.ndarray]:
    """Every input as a (T, n) float64 array."""
    if hasattr(bars, "columns"):  # a DataFrame: one symbol
        from .frames import external_arrays, ohlcv_arrays

        arrays = ohlcv_arrays(bars, "check_parity bars")
        ext = external_arrays(bars, externals, "check_parity bars")
        out = {k: arrays[k][:, None] for k in OHLCV}
        out.update({name: ext[:, j : j + 1] for j, name in enumerate(externals)})
        return out
    if not isinstance(bars, Mapping):
        raise FeatureBuildError(f"bars must be a DataFrame or a dict of arrays, got {type(bars).__name__}")
    missing = [k for k in (*OHLCV, *externals) if k not in bars]
    if missing:
        raise FeatureBuildError(f"bars: missing {missing}")
    out = {}
    for k in (*OHLCV, *externals):
        a = np.asarray(bars[k], dtype=np.float64)
        out[k] = a[:, None] if a.ndim == 1 else a
    shapes = {a.shape for a in out.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise FeatureBuildError(f"bars: every array must have the same shape (T,) or (T, n), got {sorted(shapes)}")
    return out


def check_parity(
    features: Sequence[str],
    bars: Any,
    definitions: Any = None,
    *,
    interval_minutes: float | None = None,
    bars_per_day: int | None = None,
    rtol: float = 1e-9,
    atol: float = 1e-12,
) -> ParityReport:
    """Run both executions of the program for ``features`` over ``bars``; raise ``AssertionError``
    naming the first feature, symbol and bar where they differ; return the differences."""
    from .frames import series_features

    program = compile_features(features, definitions, interval_minutes=interval_minutes, bars_per_day=bars_per_day)
    cols = _as_columns(bars, program.externals)
    T, n = cols["close"].shape
    live = StreamingFeatures([f"s{j}" for j in range(n)], program=program, dtype=np.float64)
    stream = np.empty((T, n, len(program.features)))
    for t in range(T):
        ext = (
            np.ascontiguousarray(np.stack([cols[k][t] for k in program.externals], axis=1))
            if program.externals
            else None
        )
        stream[t] = live.update(*(np.ascontiguousarray(cols[k][t]) for k in OHLCV), ext)
    valid = np.logical_and.reduce([np.isfinite(cols[k]) for k in OHLCV])
    series = [{k: cols[k][valid[:, j], j] for k in (*OHLCV, *program.externals)} for j in range(n)]
    batch = np.full_like(stream, np.nan)
    for j, values in enumerate(series_features(program, series)):
        last = np.cumsum(valid[:, j]) - 1
        have = last >= 0
        batch[have, j] = values[last[have]]
    max_abs: dict[str, float] = {}
    max_rel: dict[str, float] = {}
    for k, name in enumerate(program.features):
        a, b = stream[..., k], batch[..., k]
        same_nan = np.isnan(a) == np.isnan(b)
        with np.errstate(invalid="ignore"):
            diff = np.where(np.isnan(a) | np.isnan(b), 0.0, np.abs(a - b))
            both_inf = np.isinf(a) & np.isinf(b) & (a == b)
            diff[both_inf] = 0.0
            ok = same_nan & (np.isnan(b) | (diff <= rtol * np.abs(b) + atol))
            rel = np.where(np.abs(b) > 0, diff / np.abs(b), diff)
        if not ok.all():
            t, j = np.argwhere(~ok)[0]
            raise AssertionError(
                f"{name}: incremental {a[t, j]!r} != batch {b[t, j]!r} at bar {t} of symbol {j} "
                f"({int((~ok).sum())} bars differ; rtol={rtol}, atol={atol})"
            )
        max_abs[name] = float(diff.max(initial=0.0))
        max_rel[name] = float(np.nan_to_num(rel).max(initial=0.0))
    return ParityReport(program.features, max_abs, max_rel, T, n)
