"""The spec's ``FeatureBuilder``: pandas over a window of OHLCV bars, and the frame checks.

Kept apart from ``fastinfer.features`` so that the live path (``StreamingFeatures``) does not
import pandas (~0.4 s of start-up). The definitions are those of
``fastinfer.kernels.indicators``; ``fastinfer.features`` describes the names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from .errors import FeatureBuildError
from .features import OHLCV, resolve_features
from .kernels import indicators as _k


def ohlcv_arrays(df: pd.DataFrame, where: str = "OHLCV data") -> dict[str, np.ndarray]:
    """The five OHLCV columns of ``df`` (names in any case) as float64 arrays, checked."""
    if not isinstance(df, pd.DataFrame):
        raise FeatureBuildError(f"{where}: expected a pandas DataFrame, got {type(df).__name__}")
    by_lower: dict[str, Any] = {}
    for col in df.columns:
        key = str(col).lower()
        if key in OHLCV and key in by_lower:
            raise FeatureBuildError(f"{where}: columns {by_lower[key]!r} and {col!r} both mean {key!r}")
        by_lower[key] = col
    missing = [c for c in OHLCV if c not in by_lower]
    if missing:
        raise FeatureBuildError(f"{where}: missing column(s) {missing}; columns present: {list(df.columns)[:20]}")
    check_time_order(df, where)
    arrays = {}
    for name in OHLCV:
        col = df[by_lower[name]]
        try:
            arrays[name] = np.ascontiguousarray(col.to_numpy(dtype=np.float64, na_value=np.nan))
        except (TypeError, ValueError) as e:
            raise FeatureBuildError(f"{where}: column {by_lower[name]!r} is not numeric ({e})") from None
    return arrays


TIME_COLUMNS = ("timestamp", "datetime", "date", "time")


def check_time_order(df: pd.DataFrame, where: str = "OHLCV data") -> None:
    """Bars must be oldest first, each once: the time index (a DatetimeIndex) and a time column
    (``timestamp``, ``datetime``, ``date`` or ``time``, any case) must strictly increase.

    A duplicated or earlier bar would silently feed one bar twice or in the wrong order into
    every indicator, so it is a ``FeatureBuildError`` naming the row.
    """
    candidates: list[tuple[str, Any]] = []
    if isinstance(df.index, pd.DatetimeIndex):
        candidates.append(("index", df.index))
    for col in df.columns:
        if str(col).lower() in TIME_COLUMNS:
            candidates.append((f"column {col!r}", df[col]))
            break
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


def _as_time(values: pd.Series, what: str, where: str) -> pd.DatetimeIndex | None:
    """A time column as a DatetimeIndex; numbers are taken as they are (epoch units)."""
    try:
        if values.dtype.kind in "iuf":
            return pd.DatetimeIndex(pd.to_datetime(values.to_numpy(dtype=np.float64), unit="ns", errors="coerce"))
        return pd.DatetimeIndex(pd.to_datetime(values, errors="raise", utc=True, format="mixed"))
    except (ValueError, TypeError, OverflowError) as exc:  # pandas raises OverflowError past 2262
        raise FeatureBuildError(f"{where}: {what} is not a time ({str(exc)[:100]})") from None


# ---------------------------------------------------------------- FeatureBuilder (pandas)


def _seeded_ewm(x: pd.Series, alpha: float, first: int, seed: float) -> pd.Series:
    """y[first] = seed, then y[t] = (1 - alpha) y[t-1] + alpha x[t]; NaN before ``first``."""
    if len(x) <= first:
        return pd.Series(np.nan, index=x.index)
    s = x.copy()
    s.iloc[:first] = np.nan
    s.iloc[first] = seed
    return s.ewm(alpha=alpha, adjust=False).mean()


def _windows(x: pd.Series, p: int) -> np.ndarray:
    """Every full window of p values, oldest first: (len(x) - p + 1, p) view."""
    return sliding_window_view(x.to_numpy(), p) if len(x) >= p else np.empty((0, p))


def _per_window(x: pd.Series, p: int, values: np.ndarray) -> pd.Series:
    """One value per full window, aligned on the window's last row (NaN before)."""
    out = np.full(len(x), np.nan)
    out[p - 1 :] = values
    return pd.Series(out, index=x.index)


def _rolling_mean(x: pd.Series, p: int) -> pd.Series:
    """Each window's mean recomputed from the window (exact 0 for zeros; pandas' running
    add/remove keeps the rounding of a large value after it left the window)."""
    return _per_window(x, p, _windows(x, p).mean(axis=1))


def _mean_around_last(w: np.ndarray) -> np.ndarray:
    """Mean of each row summed around its last value (a flat row gives that value exactly)."""
    ref = w[:, -1]
    return ref + (w - ref[:, None]).mean(axis=1)


def _rsi(g: pd.Series, lo: pd.Series) -> pd.Series:
    s = g + lo
    return (100.0 * (g / s)).mask(s == 0, 50.0)


def _returns(f: pd.DataFrame) -> dict[str, pd.Series]:
    c = f["close"]
    return {f"ret_{n}": (c - c.shift(n)) / c.shift(n) for n in _k.RETURN_HORIZONS}


def _gains_losses(f: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    d = f["close"].diff()
    return d.clip(lower=0.0), (-d).clip(lower=0.0)


def _rsi_wilder(f: pd.DataFrame) -> dict[str, pd.Series]:
    p = _k.RSI_PERIOD
    g, lo = _gains_losses(f)
    avg = [_seeded_ewm(x, 1.0 / p, p, x.iloc[1 : p + 1].mean() if len(x) > p else np.nan) for x in (g, lo)]
    return {"rsi_14": _rsi(*avg)}


def _rsi_sma(f: pd.DataFrame) -> dict[str, pd.Series]:
    p = _k.RSI_PERIOD
    g, lo = _gains_losses(f)
    return {"rsi_14_sma": _rsi(_rolling_mean(g, p), _rolling_mean(lo, p))}


def _true_range(f: pd.DataFrame) -> pd.Series:
    h, lo, pc = f["high"], f["low"], f["close"].shift(1)
    return pd.concat([h - lo, (h - pc).abs(), (lo - pc).abs()], axis=1).max(axis=1, skipna=False)


def _atr_wilder(f: pd.DataFrame) -> dict[str, pd.Series]:
    p = _k.ATR_PERIOD
    tr = _true_range(f)
    seed = tr.iloc[1 : p + 1].mean() if len(tr) > p else np.nan
    return {"atr_14": _seeded_ewm(tr, 1.0 / p, p, seed)}


def _atr_sma(f: pd.DataFrame) -> dict[str, pd.Series]:
    return {"atr_14_sma": _rolling_mean(_true_range(f), _k.ATR_PERIOD)}


def _macd(f: pd.DataFrame) -> dict[str, pd.Series]:
    c = f["close"]
    fast, slow, sig = _k.MACD_FAST, _k.MACD_SLOW, _k.MACD_SIGNAL
    first = slow - 1
    if len(c) <= first:
        nan = pd.Series(np.nan, index=c.index)
        return {"macd": nan, "macd_signal": nan, "macd_hist": nan}
    seeds = [_mean_around_last(c.to_numpy()[None, first - k + 1 : first + 1])[0] for k in (fast, slow)]
    ema_fast = _seeded_ewm(c, 2.0 / (fast + 1), first, seeds[0])
    ema_slow = _seeded_ewm(c, 2.0 / (slow + 1), first, seeds[1])
    macd = ema_fast - ema_slow
    first_sig = first + sig - 1
    seed = macd.iloc[first : first_sig + 1].mean() if len(c) > first_sig else np.nan
    signal = _seeded_ewm(macd, 2.0 / (sig + 1), first_sig, seed)
    return {"macd": macd, "macd_signal": signal, "macd_hist": macd - signal}


def _bollinger(ddof: int, suffix: str) -> Callable[[pd.DataFrame], dict[str, pd.Series]]:
    def bands(f: pd.DataFrame) -> dict[str, pd.Series]:
        c, p = f["close"], _k.BB_PERIOD
        w = _windows(c, p)
        m = _mean_around_last(w)
        mid = _per_window(c, p, m)
        std = _per_window(c, p, np.sqrt(((w - m[:, None]) ** 2).sum(axis=1) / (p - ddof)))
        upper, lower = mid + _k.BB_NSTD * std, mid - _k.BB_NSTD * std
        width = upper - lower
        pct = ((c - lower) / width).mask(width == 0, 0.5)
        return {f"bb_upper{suffix}": upper, f"bb_lower{suffix}": lower, f"bb_pct{suffix}": pct}

    return bands


def _vol_ratio(f: pd.DataFrame) -> dict[str, pd.Series]:
    v = f["volume"]
    ma = _rolling_mean(v, _k.VOL_PERIOD)
    return {"vol_ratio": (v / ma).mask(ma == 0, 1.0)}


# Each group computes the features named beside it, all from one pass of pandas.
_GROUPS: tuple[tuple[tuple[str, ...], Callable[[pd.DataFrame], dict[str, pd.Series]]], ...] = (
    (tuple(f"ret_{n}" for n in _k.RETURN_HORIZONS), _returns),
    (("rsi_14",), _rsi_wilder),
    (("rsi_14_sma",), _rsi_sma),
    (("macd", "macd_signal", "macd_hist"), _macd),
    (("bb_upper", "bb_lower", "bb_pct"), _bollinger(0, "")),
    (("bb_upper_ddof1", "bb_lower_ddof1", "bb_pct_ddof1"), _bollinger(1, "_ddof1")),
    (("atr_14",), _atr_wilder),
    (("atr_14_sma",), _atr_sma),
    (("vol_ratio",), _vol_ratio),
)


class FeatureBuilder:
    """The spec's batch path: pandas over a window of bars → the feature vector of the last bar.

    ``FeatureBuilder(features=None)`` fixes the default feature order (``DEFAULT_FEATURES``);
    ``build`` may override it per call (e.g. with a model's ``feature_list``).
    """

    def __init__(self, features: Sequence[str] | None = None):
        self.features = resolve_features(features)

    def build(self, df: pd.DataFrame, lookback: int | None = 60, features: Sequence[str] | None = None) -> np.ndarray:
        """Features of the last bar of ``df`` (columns open, high, low, close, volume, any case).

        Bars with a missing value are dropped first; the features are then computed over the
        last bar and the ``lookback`` bars before it (``lookback + 1`` rows; 60 is what
        ``ret_60`` needs; None: all rows). Returns float64 of shape (len(features),), NaN for a
        feature still warming up. Equal to ``StreamingFeatures`` fed the same bars.
        """
        names = self.features if features is None else resolve_features(features)
        rows = self.frame(df, lookback, names)
        if not len(rows):
            return np.full(len(names), np.nan)
        return rows.iloc[-1].to_numpy(dtype=np.float64)

    def frame(
        self, df: pd.DataFrame, lookback: int | None = None, features: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Every bar's features as a DataFrame (rows: the kept bars, with ``df``'s index)."""
        names = self.features if features is None else resolve_features(features)
        if lookback is not None and (not isinstance(lookback, (int, np.integer)) or lookback < 0):
            raise FeatureBuildError(f"lookback must be a non-negative int or None, got {lookback!r}")
        arrays = ohlcv_arrays(df)
        valid = np.logical_and.reduce([np.isfinite(a) for a in arrays.values()])
        f = pd.DataFrame({k: a[valid] for k, a in arrays.items()}, index=df.index[valid])
        if lookback is not None:
            f = f.iloc[-(lookback + 1) :]
        index = f.index
        f = f.reset_index(drop=True)
        wanted = set(names)
        cols: dict[str, pd.Series] = {}
        for group, compute in _GROUPS:
            if wanted.intersection(group):
                cols.update(compute(f))
        out = pd.DataFrame({n: cols[n] for n in names}, index=f.index)
        out.index = index
        return out
