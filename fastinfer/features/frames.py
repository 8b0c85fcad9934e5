"""DataFrames in and out of the batch execution: OHLCV and external columns checked, bars in
time order, several symbols by a symbol column, missing bars as the live path treats them.

Kept apart from the streaming path so that the live loop does not import pandas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import FeatureBuildError
from .batch import run_batch
from .graph import OHLCV
from .program import FeatureProgram

TIME_COLUMNS = ("timestamp", "datetime", "date", "time")
CHUNK_CELLS = 2_000_000  # symbols × bars per batch run: bounds the memory of intermediate arrays


def _columns_by_lower(df: pd.DataFrame, names: Sequence[str], where: str) -> dict[str, Any]:
    by_lower: dict[str, Any] = {}
    for col in df.columns:
        key = str(col).lower()
        if key in names and key in by_lower:
            raise FeatureBuildError(f"{where}: columns {by_lower[key]!r} and {col!r} both mean {key!r}")
        by_lower[key] = col
    return by_lower


def _numeric(col: pd.Series, label: Any, where: str) -> np.ndarray:
    if col.dtype == bool or col.dtype.kind in "cmM":
        raise FeatureBuildError(f"{where}: column {label!r} is not numeric ({col.dtype})")
    try:
        return np.ascontiguousarray(col.to_numpy(dtype=np.float64, na_value=np.nan))
    except (TypeError, ValueError) as e:
        raise FeatureBuildError(f"{where}: column {label!r} is not numeric ({e})") from None


def ohlcv_arrays(df: pd.DataFrame, where: str = "OHLCV data", *, check_order: bool = True) -> dict[str, np.ndarray]:
    """The five OHLCV columns of ``df`` (names in any case) as float64 arrays, checked."""
    if not isinstance(df, pd.DataFrame):
        raise FeatureBuildError(f"{where}: expected a pandas DataFrame, got {type(df).__name__}")
    by_lower = _columns_by_lower(df, OHLCV, where)
    missing = [c for c in OHLCV if c not in by_lower]
    if missing:
        raise FeatureBuildError(f"{where}: missing column(s) {missing}; columns present: {list(df.columns)[:20]}")
    if check_order:
        check_time_order(df, where)
    return {name: _numeric(df[by_lower[name]], by_lower[name], where) for name in OHLCV}


def external_arrays(df: pd.DataFrame, externals: Sequence[str], where: str = "OHLCV data") -> np.ndarray:
    """The external columns of ``df`` as a (len(df), len(externals)) float64 matrix (exact names
    first, then any case); a missing or non-numeric one is a ``FeatureBuildError``."""
    out = np.empty((len(df), len(externals)))
    if not externals:
        return out
    lower = {str(c).lower(): c for c in df.columns}
    for j, name in enumerate(externals):
        label = name if name in df.columns else lower.get(name.lower())
        if label is None:
            raise FeatureBuildError(
                f"{where}: missing external column {name!r}; columns present: {list(df.columns)[:20]}"
            )
        out[:, j] = _numeric(df[label], label, where)
    return out


def check_time_order(df: pd.DataFrame, where: str = "OHLCV data") -> None:
    """Bars must be oldest first, each once: the time index (a DatetimeIndex) and a time column
    (``timestamp``, ``datetime``, ``date`` or ``time``, any case) must strictly increase.

    A duplicated or earlier bar would silently feed one bar twice or in the wrong order into
    every indicator, so it is a ``FeatureBuildError`` naming the row.
    """
    candidates: list[tuple[str, Any]] = []
    if isinstance(df.index, pd.DatetimeIndex):
        candidates.append(("index", df.index))
    column = time_column(df)
    if column is not None:
        candidates.append((f"column {column!r}", df[column]))
    for what, values in candidates:
        stamps = values if isinstance(values, pd.DatetimeIndex) else _as_time(values, what, where)
        if stamps is None:
            continue
        ns = np.asarray(stamps.asi8 if hasattr(stamps, "asi8") else stamps)
        if stamps.isna().any():
            row = int(np.flatnonzero(np.asarray(stamps.isna()))[0])
            raise FeatureBuildError(f"{where}: {what} has a missing timestamp at row {row}")
        step = np.diff(ns)
        if (step <= 0).any():
            row = int(np.flatnonzero(step <= 0)[0]) + 1
            kind = "duplicated" if step[row - 1] == 0 else "earlier than the bar before it"
            raise FeatureBuildError(
                f"{where}: {what} at row {row} ({stamps[row]}) is {kind} "
                f"(row {row - 1}: {stamps[row - 1]}); bars must be oldest first, each once"
            )


def time_column(df: pd.DataFrame) -> Any:
    """The first column named ``timestamp``, ``datetime``, ``date`` or ``time`` (any case), or None."""
    return next((col for col in df.columns if str(col).lower() in TIME_COLUMNS), None)


def _as_time(values: pd.Series, what: str, where: str) -> pd.DatetimeIndex | None:
    """A time column as a DatetimeIndex; numbers are taken as they are (epoch units)."""
    try:
        if values.dtype.kind in "iuf":
            return pd.DatetimeIndex(pd.to_datetime(values.to_numpy(dtype=np.float64), unit="ns", errors="coerce"))
        return pd.DatetimeIndex(pd.to_datetime(values, errors="raise", utc=True, format="mixed"))
    except (ValueError, TypeError, OverflowError) as exc:  # pandas raises OverflowError past 2262
        raise FeatureBuildError(f"{where}: {what} is not a time ({str(exc)[:100]})") from None


# ---------------------------------------------------------------- whole frames


def series_features(program: FeatureProgram, series: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Features of several symbols' valid-bar series (dicts of equal-length 1-D arrays: OHLCV and
    the externals): one (T_s, n_features) array each. Runs in chunks of symbols."""
    names = (*OHLCV, *program.externals)
    results: list[np.ndarray] = []
    start = 0
    while start < len(series):
        stop = start + 1
        longest = len(series[start]["close"])
        while stop < len(series):
            longest_next = max(longest, len(series[stop]["close"]))
            if (stop - start + 1) * max(longest_next, 1) > CHUNK_CELLS:
                break
            longest = longest_next
            stop += 1
        chunk = series[start:stop]
        inputs = {k: np.full((len(chunk), longest), np.nan) for k in names}
        for s, arrays in enumerate(chunk):
            length = len(arrays["close"])
            for k in names:
                inputs[k][s, :length] = arrays[k]
        values = run_batch(program, inputs)
        results.extend(values[s, : len(arrays["close"])] for s, arrays in enumerate(chunk))
        start = stop
    return results


def frame_features(
    program: FeatureProgram,
    df: pd.DataFrame,
    *,
    symbol_column: Any = None,
    progress: Callable[[int, int], None] | None = None,
    where: str = "bars",
) -> pd.DataFrame:
    """Every feature at every row of ``df``: a DataFrame with ``df``'s index and one float64
    column per feature, equal to the incremental path replayed bar by bar.

    Rows are bars, oldest first per symbol (``symbol_column`` names the symbol of each row;
    None: one symbol). A row whose open, high, low, close or volume is missing is no bar for its
    symbol: it repeats the symbol's last features (NaN before its first bar). External columns
    are read by name. ``progress(done, total)`` is called after each chunk of symbols."""
    arrays = ohlcv_arrays(df, where, check_order=False)
    ext = external_arrays(df, program.externals, where)
    valid = np.logical_and.reduce([np.isfinite(arrays[k]) for k in OHLCV])
    if symbol_column is None:
        groups = {None: np.arange(len(df))}
    else:
        if symbol_column not in df.columns:
            raise FeatureBuildError(f"{where}: no symbol column {symbol_column!r}; columns: {list(df.columns)[:20]}")
        groups = {k: np.asarray(v) for k, v in df.groupby(symbol_column, sort=False, dropna=False).indices.items()}
    series = []
    for sym, rows in groups.items():
        label = where if sym is None else f"{where}, symbol {sym!r}"
        if sym is not None and pd.isna(sym):
            raise FeatureBuildError(f"{where}: {symbol_column!r} is missing at row {int(rows[0])}")
        check_time_order(df.iloc[rows], label)
        keep = rows[valid[rows]]
        entry = {k: arrays[k][keep] for k in OHLCV}
        entry.update({name: ext[keep, j] for j, name in enumerate(program.externals)})
        series.append(entry)
    out = np.full((len(df), len(program.features)), np.nan)
    done = 0
    step = max(1, len(series) // 20)
    for lo in range(0, len(series), step):
        part = series_features(program, series[lo : lo + step])
        for rows, values in zip(list(groups.values())[lo : lo + step], part):
            # each row takes the features of the last valid bar at or before it
            last = np.cumsum(valid[rows]) - 1
            have = last >= 0
            out[rows[have]] = values[last[have]]
        done += len(part)
        if progress is not None:
            progress(done, len(series))
    return pd.DataFrame(out, index=df.index, columns=list(program.features))
