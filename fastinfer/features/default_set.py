"""A realistic feature set from the vocabulary (the demo's and the benchmarks' 200-feature runs).

``default_feature_set(interval_minutes=1440, bars_per_day=None)`` returns ≥ 100 names: returns
and log returns over several horizons, volatilities, RSI (Wilder and simple), ATR, z-scores,
moving-average ratios, Bollinger bands, MACDs, stochastics, ADX/DI, CCI, MFI, volume ratios
and z-scores, and the bar shape. On daily bars (or intraday bars with ``bars_per_day``) the
spec's seed names ``ret_1d``, ``ret_5d``, ``vol_10d`` ... appear with their day suffixes.
``large=True`` adds more windows (200 names, the P4b/P6 benchmark size). Day-suffixed windows
stay at most 20 days (``ret_20d``); longer ones are in bars.
"""

from __future__ import annotations

from .compiler import compile_features


def _days(n: int, daily: bool) -> str:
    """``{n}d`` where days resolve (and the window stays at most 20 days), else ``n`` bars."""
    return f"{n}d" if daily and n <= 20 else str(n)


def default_feature_set(
    interval_minutes: float = 1440.0, bars_per_day: int | None = None, *, large: bool = False
) -> tuple[str, ...]:
    """Vocabulary names, each of which compiles for this interval (checked here)."""
    daily = interval_minutes >= 1440 or bars_per_day is not None
    windows = (5, 10, 14, 20, 30, 60) if not large else (3, 5, 7, 10, 14, 20, 30, 40, 60, 90, 120)
    horizons = (1, 2, 3, 5, 10, 20, 60) if not large else (1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 40, 60, 90, 120)
    names: list[str] = []
    names += [f"ret_{_days(h, daily)}" for h in horizons]
    names += [f"logret_{h}" for h in horizons]
    names += [f"mom_{w}" for w in windows]
    names += [f"roc_{w}" for w in windows]
    names += [f"vol_{_days(w, daily)}" for w in windows]
    names += [f"zscore_{w}" for w in windows]
    names += [f"ma_ratio_{w}" for w in windows]
    if large:
        names += [f"{kind}_{w}" for kind in ("sma", "ema", "wma") for w in windows]
    names += [f"rsi_{w}" for w in ((7, 14, 21, 28) if not large else (5, 7, 9, 14, 21, 28))]
    names += [f"rsi_{w}_sma" for w in (7, 14, 21)]
    names += [f"atr_{w}" for w in (7, 14, 21)] + [f"natr_{w}" for w in (7, 14, 21)] + ["atr_14_sma"]
    names += [f"min_{w}" for w in (10, 20)] + [f"max_{w}" for w in (10, 20)]
    for w in (10, 20) if not large else (10, 20, 30, 50):
        names += [f"bb_{part}_{w}_2" for part in ("upper", "lower", "mid", "pct", "width")]
    names += ["bb_pct_20_2_ddof1", "bb_pct", "bb_upper", "bb_lower"]
    names += ["macd", "macd_signal", "macd_hist", "macd_5_35_5", "macd_5_35_5_signal", "macd_5_35_5_hist"]
    names += [f"stoch_k_{w}" for w in (5, 14)] + ["stoch_d_14_3", "stoch_d_5_3"]
    names += [f"willr_{w}" for w in (10, 14)] + [f"cci_{w}" for w in (14, 20)]
    names += [f"cci_{w}" for w in (30, 40)] + [f"willr_{w}" for w in (20, 30)] if large else []
    names += [f"adx_{w}" for w in (7, 14)] + [f"plus_di_{w}" for w in (7, 14)] + [f"minus_di_{w}" for w in (7, 14)]
    names += [f"mfi_{w}" for w in (7, 14)] + ["obv"]
    names += [f"vol_ratio_{w}" for w in (5, 10, 20, 60)] + [f"volume_z_{w}" for w in (10, 20, 60)]
    names += [f"vwap_{w}" for w in (10, 20)] + ["vol_ratio"]
    names += ["hl_range", "oc_range", "upper_wick", "lower_wick"]
    names = list(dict.fromkeys(names))
    compile_features(names, interval_minutes=interval_minutes, bars_per_day=bars_per_day)
    return tuple(names)
