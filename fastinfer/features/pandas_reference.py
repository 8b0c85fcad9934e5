"""Independent references for the feature language: pandas / numpy whole-series formulas, and TA-Lib.

``evaluate(frame, names, definitions=None, *, interval_minutes=None, bars_per_day=None)``
computes every name (vocabulary names, definitions, external columns, inputs) by walking its
expression tree with a pandas implementation of each function. It shares nothing with the
compiled program but the parser and the vocabulary's expression text: rolling statistics are
taken from each window on its own (numpy sliding windows, two passes), recursions are pandas'
``ewm`` seeded as TA-Lib seeds them, applied to each finite run of their input.

``talib_value(frame, name)`` is the TA-Lib function of a vocabulary name TA-Lib has (None
otherwise); ``peer_features`` is the benchmarks' "assembled peer": TA-Lib where it has the
indicator, this pandas evaluation for the rest.

``frame``: one symbol's valid bars, oldest first, columns open, high, low, close, volume (and
the external columns), a RangeIndex. The tests compare the program's two executions with
these; the benchmarks recompute them per symbol as baselines. Never on the live path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from . import vocabulary
from .compiler import _as_definitions
from .definitions import FeatureDefinitions
from .errors import FeatureDefinitionError
from .grammar import BinOp, Call, Duration, Expr, Name, Neg, Num, parse
from .graph import OHLCV

# ---------------------------------------------------------------- windows and runs


def _finite_windows(x: pd.Series, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(every window of n values as rows, which windows are wholly finite), for rows n-1.."""
    a = x.to_numpy(dtype=np.float64)
    if len(a) < n:
        return np.empty((0, n)), np.empty(0, dtype=bool)
    w = sliding_window_view(a, n)
    return w, np.isfinite(w).all(axis=1)


def _by_window(x: pd.Series, n: int, fn: Callable[[np.ndarray], np.ndarray]) -> pd.Series:
    """fn over each wholly finite window of n values, aligned on its last row; NaN elsewhere."""
    out = np.full(len(x), np.nan)
    w, ok = _finite_windows(x, n)
    if ok.any():
        values = np.full(len(ok), np.nan)
        values[ok] = fn(w[ok])
        out[n - 1 :] = values
    return pd.Series(out, index=x.index)


def _moments(x: pd.Series, n: int) -> tuple[pd.Series, pd.Series]:
    """(mean, Σ (x - mean)²) per window, two passes; a window of equal values: (value, 0)."""

    def mean(w: np.ndarray) -> np.ndarray:
        m = w.mean(axis=1)
        flat = (w == w[:, -1:]).all(axis=1)
        return np.where(flat, w[:, -1], m)

    def ss(w: np.ndarray) -> np.ndarray:
        m = w.mean(axis=1)
        flat = (w == w[:, -1:]).all(axis=1)
        return np.where(flat, 0.0, ((w - m[:, None]) ** 2).sum(axis=1))

    return _by_window(x, n, mean), _by_window(x, n, ss)


def _per_run(x: pd.Series, fn: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """fn applied to each maximal run of finite values of x separately (NaN elsewhere): a
    recursion restarts after a hole."""
    a = x.to_numpy(dtype=np.float64)
    finite = np.isfinite(a)
    out = pd.Series(np.nan, index=x.index)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], finite.astype(np.int8), [0]])))
    for lo, hi in zip(edges[::2], edges[1::2]):
        out.iloc[lo:hi] = fn(x.iloc[lo:hi].reset_index(drop=True)).to_numpy()
    return out


def _seeded(x: pd.Series, n: int, alpha: float) -> pd.Series:
    """TA-Lib's seeding: NaN for the first n-1 values of each run, the mean of its first n
    values at the n-th, then y = (1 - alpha) y + alpha x (pandas ewm, adjust=False)."""

    def run(r: pd.Series) -> pd.Series:
        if len(r) < n:
            return pd.Series(np.nan, index=r.index)
        s = r.copy()
        s.iloc[: n - 1] = np.nan
        s.iloc[n - 1] = r.iloc[:n].sum() / n
        return s.ewm(alpha=alpha, adjust=False).mean()

    return _per_run(x, run)


def _rsi_of(a: pd.Series, b: pd.Series) -> pd.Series:
    total = a + b
    return (100.0 * (a / total)).mask(total == 0, 50.0)


def _ratio(a: pd.Series, b: pd.Series, fallback: pd.Series) -> pd.Series:
    return (a / b).mask(b == 0, fallback)


def _gains_losses(x: pd.Series) -> tuple[pd.Series, pd.Series]:
    d = x.diff()
    return d.clip(lower=0.0), (-d).clip(lower=0.0)


def _true_range(f: pd.DataFrame) -> pd.Series:
    h, lo, pc = f["high"], f["low"], f["close"].shift(1)
    return pd.concat([h - lo, (h - pc).abs(), (lo - pc).abs()], axis=1).max(axis=1, skipna=False)


def _typical(f: pd.DataFrame) -> pd.Series:
    return (f["high"] + f["low"] + f["close"]) / 3.0


def _std(x: pd.Series, n: int, ddof: int) -> pd.Series:
    return np.sqrt(_moments(x, n)[1] / (n - ddof))


def _bands(x: pd.Series, n: int, k: float, ddof: int) -> tuple[pd.Series, pd.Series, pd.Series]:
    mid = _moments(x, n)[0]
    spread = k * _std(x, n, ddof)
    return mid, mid + spread, mid - spread


def _macd_line(x: pd.Series, fast: int, slow: int) -> pd.Series:
    def run(r: pd.Series) -> pd.Series:
        if len(r) < slow:
            return pd.Series(np.nan, index=r.index)
        lines = []
        for k in (fast, slow):
            s = r.copy()
            s.iloc[: slow - 1] = np.nan
            s.iloc[slow - 1] = r.iloc[slow - k : slow].mean()
            lines.append(s.ewm(alpha=2.0 / (k + 1), adjust=False).mean())
        return lines[0] - lines[1]

    return _per_run(x, run)


def _extremes(f: pd.DataFrame, n: int) -> tuple[pd.Series, pd.Series]:
    return _by_window(f["low"], n, lambda w: w.min(axis=1)), _by_window(f["high"], n, lambda w: w.max(axis=1))


def _dmi(f: pd.DataFrame, n: int) -> tuple[pd.Series, pd.Series, pd.Series]:
    """TA-Lib's +DI, -DI, ADX: Wilder sums seeded with the sum of the first n-1 values (as an
    ewm of alpha 1/n their ratios are the same), DX undefined where TR or +DI + -DI is 0 (the
    ADX then holds, TA-Lib's skip)."""
    h, lo = f["high"], f["low"]
    up, down = h.diff(), -lo.diff()
    minus = (down > 0) & (up < down)
    plus = ~minus & (up > 0) & (up > down)
    pdm = pd.Series(np.where(plus, up, 0.0), index=f.index)
    mdm = pd.Series(np.where(minus, down, 0.0), index=f.index)
    tr = _true_range(f)
    if len(f) <= n:
        nan = pd.Series(np.nan, index=f.index)
        return nan, nan, nan

    def wilder_sum(x: pd.Series) -> pd.Series:
        s = x.copy()
        s.iloc[: n - 1] = np.nan
        s.iloc[n - 1] = x.iloc[1:n].sum() / n
        return s.ewm(alpha=1.0 / n, adjust=False).mean()

    trs = wilder_sum(tr)
    pdi = (100.0 * (wilder_sum(pdm) / trs)).mask(trs == 0, 0.0)
    mdi = (100.0 * (wilder_sum(mdm) / trs)).mask(trs == 0, 0.0)
    pdi.iloc[:n] = np.nan
    mdi.iloc[:n] = np.nan
    total = pdi + mdi
    dx = (100.0 * ((mdi - pdi).abs() / total)).where((trs != 0) & (total != 0))
    adx = pd.Series(np.nan, index=f.index)
    if len(f) >= 2 * n:
        s = dx.copy()
        s.iloc[: 2 * n - 1] = np.nan
        s.iloc[2 * n - 1] = dx.iloc[n : 2 * n].sum() / n  # NaN (skipped) DX count as 0, as in TA-Lib
        adx = s.ewm(alpha=1.0 / n, adjust=False, ignore_na=True).mean()
        adx.iloc[: 2 * n - 1] = np.nan
    return pdi, mdi, adx


def _cci(f: pd.DataFrame, n: int) -> pd.Series:
    def cci(w: np.ndarray) -> np.ndarray:
        m = w.mean(axis=1)
        flat = (w == w[:, -1:]).all(axis=1)
        m = np.where(flat, w[:, -1], m)
        dev = np.abs(w - m[:, None]).mean(axis=1)
        diff = w[:, -1] - m
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((diff != 0) & (dev != 0), diff / (0.015 * dev), 0.0)

    return _by_window(_typical(f), n, cci)


def _mfi(f: pd.DataFrame, n: int) -> pd.Series:
    tp = _typical(f)
    d = tp.diff()
    flow = tp * f["volume"]
    up = flow.where(d > 0, 0.0).where(d.notna())
    down = flow.where(d < 0, 0.0).where(d.notna())
    return _rsi_of(*(_by_window(s, n, lambda w: w.sum(axis=1)) for s in (up, down)))


def _obv(f: pd.DataFrame) -> pd.Series:
    signed = np.sign(f["close"].diff()).fillna(0.0) * f["volume"]
    if len(f):
        signed.iloc[0] = f["volume"].iloc[0]
    return signed.cumsum()


def _wma(x: pd.Series, n: int) -> pd.Series:
    weights = np.arange(1, n + 1, dtype=np.float64)
    return _by_window(x, n, lambda w: w @ weights / weights.sum())


def _sum(w: np.ndarray) -> np.ndarray:
    return w.sum(axis=1)


# Every function of the language: (frame, *series, *params) -> Series.
FUNCTIONS: dict[str, Callable[..., pd.Series]] = {
    "log": lambda f, x: np.log(x),
    "exp": lambda f, x: np.exp(x),
    "sqrt": lambda f, x: np.sqrt(x),
    "abs": lambda f, x: x.abs(),
    "sign": lambda f, x: np.sign(x),
    "clip": lambda f, x, lo, hi: x.clip(lo, hi),
    "min": lambda f, a, b: pd.Series(np.minimum(a, b), index=a.index),
    "max": lambda f, a, b: pd.Series(np.maximum(a, b), index=a.index),
    "ratio": lambda f, a, b, c: _ratio(a, b, c),
    "lag": lambda f, x, n: x.shift(n),
    "diff": lambda f, x, n: x.diff(n),
    "pct_change": lambda f, x, n: x.pct_change(n, fill_method=None),
    "log_return": lambda f, x, n: np.log(x / x.shift(n)),
    "rolling_sum": lambda f, x, n: _by_window(x, n, _sum),
    "rolling_mean": lambda f, x, n: _by_window(x, n, lambda w: w.mean(axis=1)),
    "rolling_var": lambda f, x, n, ddof=1: _moments(x, n)[1] / (n - ddof),
    "rolling_std": lambda f, x, n, ddof=1: _std(x, n, ddof),
    "rolling_zscore": lambda f, x, n, ddof=1: _ratio(x - _moments(x, n)[0], _std(x, n, ddof), 0.0),
    "rolling_min": lambda f, x, n: _by_window(x, n, lambda w: w.min(axis=1)),
    "rolling_max": lambda f, x, n: _by_window(x, n, lambda w: w.max(axis=1)),
    "wma": lambda f, x, n: _wma(x, n),
    "ema": lambda f, x, n: _seeded(x, n, 2.0 / (n + 1)),
    "wilder": lambda f, x, n: _seeded(x, n, 1.0 / n),
    "true_range": lambda f: _true_range(f),
    "rsi": lambda f, x, n: _rsi_of(*(_seeded(s, n, 1.0 / n) for s in _gains_losses(x))),
    "rsi_sma": lambda f, x, n: _rsi_of(*(_by_window(s, n, _sum) for s in _gains_losses(x))),
    "atr": lambda f, n: _seeded(_true_range(f), n, 1.0 / n),
    "atr_sma": lambda f, n: _by_window(_true_range(f), n, lambda w: w.mean(axis=1)),
    "natr": lambda f, n: _seeded(_true_range(f), n, 1.0 / n) / f["close"] * 100.0,
    "macd": lambda f, x, fast=12, slow=26: _macd_line(x, fast, slow),
    "macd_signal": lambda f, x, fast=12, slow=26, signal=9: _seeded(
        _macd_line(x, fast, slow), signal, 2.0 / (signal + 1)
    ),
    "macd_hist": lambda f, x, fast=12, slow=26, signal=9: (
        _macd_line(x, fast, slow) - _seeded(_macd_line(x, fast, slow), signal, 2.0 / (signal + 1))
    ),
    "bb_upper": lambda f, x, n, k=2.0, ddof=0: _bands(x, n, k, ddof)[1],
    "bb_lower": lambda f, x, n, k=2.0, ddof=0: _bands(x, n, k, ddof)[2],
    "bb_mid": lambda f, x, n, k=2.0, ddof=0: _bands(x, n, k, ddof)[0],
    "bb_pct": lambda f, x, n, k=2.0, ddof=0: _ratio(
        x - _bands(x, n, k, ddof)[2], _bands(x, n, k, ddof)[1] - _bands(x, n, k, ddof)[2], 0.5
    ),
    "bb_width": lambda f, x, n, k=2.0, ddof=0: (
        (_bands(x, n, k, ddof)[1] - _bands(x, n, k, ddof)[2]) / _bands(x, n, k, ddof)[0]
    ),
    "stoch_k": lambda f, n: _stoch(f, n),
    "stoch_d": lambda f, n, m=3: _by_window(_stoch(f, n), m, lambda w: w.mean(axis=1)),
    "willr": lambda f, n: _willr(f, n),
    "cci": lambda f, n: _cci(f, n),
    "plus_di": lambda f, n: _dmi(f, n)[0],
    "minus_di": lambda f, n: _dmi(f, n)[1],
    "adx": lambda f, n: _dmi(f, n)[2],
    "obv": lambda f: _obv(f),
    "mfi": lambda f, n: _mfi(f, n),
    "roc": lambda f, x, n: (x / x.shift(n) - 1.0) * 100.0,
}


def _stoch(f: pd.DataFrame, n: int) -> pd.Series:
    low, high = _extremes(f, n)
    return (100.0 * ((f["close"] - low) / (high - low))).mask(high == low, 50.0)


def _willr(f: pd.DataFrame, n: int) -> pd.Series:
    low, high = _extremes(f, n)
    return (-100.0 * ((high - f["close"]) / (high - low))).mask(high == low, -50.0)


# ---------------------------------------------------------------- the evaluator


class _Evaluator:
    def __init__(self, frame: pd.DataFrame, defs: FeatureDefinitions, interval: float | None, per_day: int | None):
        self.frame = frame.reset_index(drop=True)
        self.defs = defs
        self.interval = interval
        self.per_day = per_day
        self.memo: dict[str, pd.Series] = {}

    def name(self, name: str) -> pd.Series:
        if name not in self.memo:
            if name in self.defs.features:
                value = self.expr(parse(self.defs.features[name], where=name))
            elif name in OHLCV or name in self.defs.external:
                value = self.frame[name].astype(np.float64)
            else:
                found = vocabulary.match(name, interval_minutes=self.interval, bars_per_day=self.per_day)
                if found is None:
                    raise FeatureDefinitionError("unknown feature", feature=name)
                value = self.expr(parse(found.expression, where=name))
            self.memo[name] = value
        return self.memo[name]

    def constant(self, expr: Expr) -> float:
        if isinstance(expr, Num):
            return expr.value
        if isinstance(expr, Neg):
            return -self.constant(expr.operand)
        if isinstance(expr, Duration):
            return vocabulary.duration_bars(
                expr.amount, expr.unit, expr.text, interval_minutes=self.interval, bars_per_day=self.per_day
            )
        if isinstance(expr, BinOp):
            a, b = self.constant(expr.left), self.constant(expr.right)
            return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[expr.op]
        raise FeatureDefinitionError(f"not a constant: {expr}")

    def expr(self, expr: Expr) -> pd.Series:
        with np.errstate(all="ignore"):
            if isinstance(expr, Num):
                return pd.Series(expr.value, index=self.frame.index, dtype=np.float64)
            if isinstance(expr, Name):
                return self.name(expr.id)
            if isinstance(expr, Neg):
                return -self.expr(expr.operand)
            if isinstance(expr, BinOp):
                a, b = self.expr(expr.left), self.expr(expr.right)
                return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[expr.op]
            assert isinstance(expr, Call), expr
            fn = FUNCTIONS[expr.func]
            from . import primitives

            spec = primitives.function(expr.func)
            n_series = len(spec.series)
            series = [self.expr(a) for a in expr.args[:n_series]]
            params = []
            for p, a in zip(spec.params, expr.args[n_series:]):
                value = self.constant(a)
                params.append(float(value) if p.kind == "number" else int(value))
            return pd.Series(fn(self.frame, *series, *params), index=self.frame.index, dtype=np.float64)


def evaluate(
    frame: pd.DataFrame,
    names: Sequence[str],
    definitions: FeatureDefinitions | dict | None = None,
    *,
    interval_minutes: float | None = None,
    bars_per_day: int | None = None,
) -> pd.DataFrame:
    """Every name over ``frame`` (one symbol's valid bars), by the pandas formulas above."""
    defs = _as_definitions(definitions)
    ev = _Evaluator(frame, defs, interval_minutes, bars_per_day or defs.bars_per_day)
    if ev.interval is None:
        ev.interval = defs.interval_minutes
    return pd.DataFrame({name: ev.name(name).to_numpy() for name in names}, index=frame.index)


# ---------------------------------------------------------------- TA-Lib


def _talib_calls(talib: Any) -> dict[str, Callable[..., np.ndarray]]:
    """Vocabulary pattern → TA-Lib call over a mapping of OHLCV arrays (a DataFrame or a dict)."""

    def c(f):
        return np.asarray(f["close"], dtype=np.float64)

    def hlc(f):
        return (np.asarray(f["high"], dtype=np.float64), np.asarray(f["low"], dtype=np.float64), c(f))

    def volume(f):
        return np.asarray(f["volume"], dtype=np.float64)

    def bb(part: int):
        def call(f, n, k):
            upper, mid, lower = talib.BBANDS(c(f), n, k, k, 0)
            if part == 3:
                return (c(f) - lower) / (upper - lower)
            if part == 4:
                return (upper - lower) / mid
            return (upper, lower, mid)[part]

        return call

    return {
        "macd": lambda f: talib.MACD(c(f), 12, 26, 9)[0],
        "macd_signal": lambda f: talib.MACD(c(f), 12, 26, 9)[1],
        "macd_hist": lambda f: talib.MACD(c(f), 12, 26, 9)[2],
        "bb_upper": lambda f: talib.BBANDS(c(f), 20, 2, 2, 0)[0],
        "bb_lower": lambda f: talib.BBANDS(c(f), 20, 2, 2, 0)[2],
        "obv": lambda f: talib.OBV(c(f), volume(f)),
        "mom_{n}": lambda f, n: talib.MOM(c(f), n),
        "roc_{n}": lambda f, n: talib.ROC(c(f), n),
        "sma_{n}": lambda f, n: talib.SMA(c(f), n),
        "ema_{n}": lambda f, n: talib.EMA(c(f), n),
        "wma_{n}": lambda f, n: talib.WMA(c(f), n),
        "min_{n}": lambda f, n: talib.MIN(c(f), n),
        "max_{n}": lambda f, n: talib.MAX(c(f), n),
        "rsi_{n}": lambda f, n: talib.RSI(c(f), n),
        "atr_{n}": lambda f, n: talib.ATR(*hlc(f), n),
        "natr_{n}": lambda f, n: talib.NATR(*hlc(f), n),
        "macd_{fast}_{slow}_{signal}": lambda f, fast, slow, signal: talib.MACD(c(f), fast, slow, signal)[0],
        "macd_{fast}_{slow}_{signal}_signal": lambda f, fast, slow, signal: talib.MACD(c(f), fast, slow, signal)[1],
        "macd_{fast}_{slow}_{signal}_hist": lambda f, fast, slow, signal: talib.MACD(c(f), fast, slow, signal)[2],
        "bb_upper_{n}_{k}": bb(0),
        "bb_lower_{n}_{k}": bb(1),
        "bb_mid_{n}_{k}": bb(2),
        "bb_pct_{n}_{k}": bb(3),
        "bb_width_{n}_{k}": bb(4),
        "stoch_k_{n}": lambda f, n: talib.STOCHF(*hlc(f), n, 1, 0)[0],
        "stoch_d_{n}_{m}": lambda f, n, m: talib.STOCHF(*hlc(f), n, m, 0)[1],
        "willr_{n}": lambda f, n: talib.WILLR(*hlc(f), n),
        "cci_{n}": lambda f, n: talib.CCI(*hlc(f), n),
        "adx_{n}": lambda f, n: talib.ADX(*hlc(f), n),
        "plus_di_{n}": lambda f, n: talib.PLUS_DI(*hlc(f), n),
        "minus_di_{n}": lambda f, n: talib.MINUS_DI(*hlc(f), n),
        "mfi_{n}": lambda f, n: talib.MFI(*hlc(f), volume(f), n),
    }


def talib_function(
    name: str, *, interval_minutes: float | None = None, bars_per_day: int | None = None
) -> Callable[[Any], np.ndarray] | None:
    """TA-Lib's function for the vocabulary name ``name`` with its parameters bound: it takes a
    mapping of OHLCV arrays (a DataFrame or a dict) and returns the whole series. None when
    TA-Lib has no such indicator. TA-Lib's conventions hold: 0 on flat series where fastinfer
    says 50, its MACD line starting with the signal."""
    import talib

    found = vocabulary.match(name, interval_minutes=interval_minutes, bars_per_day=bars_per_day)
    call = None if found is None else _talib_calls(talib).get(found.pattern.name)
    if call is None:
        return None
    args = [
        int(found.values[k]) if k in vocabulary.BAR_PARAMS else float(found.values[k])
        for k in found.pattern.placeholders
    ]
    return lambda frame: np.asarray(call(frame, *args), dtype=np.float64)


def talib_value(
    frame: pd.DataFrame, name: str, *, interval_minutes: float | None = None, bars_per_day: int | None = None
) -> np.ndarray | None:
    """``talib_function(name)`` over ``frame`` (None when TA-Lib has no such indicator)."""
    fn = talib_function(name, interval_minutes=interval_minutes, bars_per_day=bars_per_day)
    return None if fn is None else fn(frame)


def peer_features(
    frame: pd.DataFrame,
    names: Sequence[str],
    definitions: FeatureDefinitions | dict | None = None,
    *,
    interval_minutes: float | None = None,
    bars_per_day: int | None = None,
) -> np.ndarray:
    """The last bar's features as an assembled peer computes them: TA-Lib over the window for
    every vocabulary name TA-Lib has, pandas (``evaluate``) for the rest."""
    out = np.empty(len(names))
    rest = []
    for j, name in enumerate(names):
        values = None
        if definitions is None or name not in _as_definitions(definitions).features:
            values = talib_value(frame, name, interval_minutes=interval_minutes, bars_per_day=bars_per_day)
        if values is None:
            rest.append(j)
        else:
            out[j] = values[-1]
    if rest:
        frame_rest = evaluate(
            frame, [names[j] for j in rest], definitions, interval_minutes=interval_minutes, bars_per_day=bars_per_day
        )
        out[rest] = frame_rest.to_numpy()[-1]
    return out
