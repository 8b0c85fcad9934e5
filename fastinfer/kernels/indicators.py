"""The hand-written kernel of the 19 original features: their reference definitions, and the P4 baseline.

The live path computes these names with the compiled feature program
(``fastinfer.features``, kernel ``feature_program``), which tests/test_indicators.py checks
bit for bit against this kernel; this one is kept as the definition below and as the
baseline the compiled program's speed is measured against (benchmarks/bench_features.py).

``update_bar`` advances every symbol's state by one bar and writes its features, O(1) per
symbol and without allocating. State is five arrays (``new_state``); a symbol is a row.

Definitions. ``t`` counts a symbol's *valid* bars from 0; ``c, h, l, v`` are its close, high,
low and volume; ``d_t = c_t - c_{t-1}``, ``gain_t = max(d_t, 0)``, ``loss_t = max(-d_t, 0)``,
``TR_t = max(h_t - l_t, |h_t - c_{t-1}|, |l_t - c_{t-1}|)`` (defined from t = 1). A feature is
NaN until t reaches the first index given below.

=================  ============================================================  ========
feature            definition                                                    first t
=================  ============================================================  ========
ret_n              (c_t - c_{t-n}) / c_{t-n}, n = 1, 5, 10, 20, 60              n
rsi_14             Wilder (TA-Lib): G, L seeded with the mean of gain/loss over  14
                   t = 1..14, then G = (13 G + gain_t) / 14 (same for L);
                   RSI = 100 G / (G + L)
rsi_14_sma         as rsi_14 with G, L the plain means of the last 14 gains /    14
                   losses (the upstream TRAINING code's rolling mean)
macd               EMA12 - EMA26, EMA_k = (c - EMA_k) * 2/(k+1) + EMA_k, both     25
                   seeded at t = 25 with the mean of their last k closes (TA-Lib)
macd_signal        EMA9 of macd, seeded at t = 33 with the mean of macd[25..33]  33
macd_hist          macd - macd_signal                                            33
bb_upper/lower     m ± 2 s, m = mean of the last 20 closes, s their std, ddof 0  19
bb_pct             (c - lower) / (upper - lower)                                 19
*_ddof1            the same three with the sample std (ddof 1, pandas default)   19
atr_14             Wilder (TA-Lib): mean of TR_1..14, then (13 ATR + TR_t) / 14  14
atr_14_sma         mean of the last 14 TR                                        14
vol_ratio          v_t / mean of the last 20 volumes (including v_t)            19
=================  ============================================================  ========

Flat and degenerate values (documented, exact): RSI is 50 when G + L == 0 (no gains, no
losses; TA-Lib returns 0 there); bb_pct is 0.5 when the band has zero width (all 20 closes
equal; s is then exactly 0 and m exactly the close); ATR is exactly 0 and MACD exactly 0 on a
flat series; vol_ratio is 1.0 when all 20 volumes are 0. Wilder averages after a move that
is followed by flat prices decay together, so the RSI keeps its last value.

Missing bars: a bar whose open, high, low, close or volume is not finite leaves the symbol's
state unchanged; ``update_bar`` marks it in ``stale`` and rewrites the symbol's last features.

Numerics: rolling sums (gains, losses, TR, volume) are Neumaier-compensated and recomputed
from the window every period; the Bollinger sums are taken around an anchor close that is
always inside the window (re-anchored every 20 bars), so the variance never subtracts two
numbers larger than 40 times itself, at any price scale (a plain E[x²] - E[x]², as older
TA-Lib computed it, cancels). After 10^6 bars the features still equal the whole-series
formula to 1e-9 relative (tests/test_indicators.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

RETURN_HORIZONS = (1, 5, 10, 20, 60)
RSI_PERIOD = 14
ATR_PERIOD = 14
BB_PERIOD = 20
BB_NSTD = 2.0
VOL_PERIOD = 20
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
CLOSE_WINDOW = 61  # ret_60 needs c[t-60]

# The kernel's output order: the names fastinfer computed first (features.KNOWN_FEATURES).
FEATURES: tuple[str, ...] = (
    "ret_1",
    "ret_5",
    "ret_10",
    "ret_20",
    "ret_60",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper",
    "bb_lower",
    "bb_pct",
    "atr_14",
    "vol_ratio",
    "rsi_14_sma",
    "atr_14_sma",
    "bb_upper_ddof1",
    "bb_lower_ddof1",
    "bb_pct_ddof1",
)
N_FEATURES = len(FEATURES)
(
    X_RET1,
    X_RET5,
    X_RET10,
    X_RET20,
    X_RET60,
    X_RSI,
    X_MACD,
    X_SIGNAL,
    X_HIST,
    X_BBU,
    X_BBL,
    X_BBP,
    X_ATR,
    X_VOLR,
    X_RSI_SMA,
    X_ATR_SMA,
    X_BBU1,
    X_BBL1,
    X_BBP1,
) = range(N_FEATURES)

# Float state columns. *_C is the Neumaier compensation of the sum before it.
(
    F_RSI_G,
    F_RSI_L,
    F_GSUM,
    F_GSUM_C,
    F_LSUM,
    F_LSUM_C,
    F_ATR,
    F_TRSUM,
    F_TRSUM_C,
    F_EMA_FAST,
    F_EMA_SLOW,
    F_SIGNAL,
    F_MACD_SUM,
    F_BB_K,
    F_S1,
    F_S1_C,
    F_S2,
    F_S2_C,
    F_VSUM,
    F_VSUM_C,
) = range(20)
N_FLOAT = 20
# Int state columns: bars seen, nonzero terms in each rolling sum (an exact zero test),
# and the run of closes equal to the previous one (an exact flat-window test).
I_COUNT, I_GAIN_NZ, I_LOSS_NZ, I_TR_NZ, I_VOL_NZ, I_FLAT = range(6)
N_INT = 6


class IndicatorState(NamedTuple):
    """Per-symbol state; row i is symbol i. Rings are indexed by ``t % width``."""

    closes: np.ndarray  # (n, CLOSE_WINDOW) float64
    true_ranges: np.ndarray  # (n, ATR_PERIOD) float64
    volumes: np.ndarray  # (n, VOL_PERIOD) float64
    floats: np.ndarray  # (n, N_FLOAT) float64
    ints: np.ndarray  # (n, N_INT) int64


def new_state(n_symbols: int) -> IndicatorState:
    """Cold state for ``n_symbols`` symbols (no bars seen)."""
    return IndicatorState(
        np.full((n_symbols, CLOSE_WINDOW), np.nan),
        np.full((n_symbols, ATR_PERIOD), np.nan),
        np.full((n_symbols, VOL_PERIOD), np.nan),
        np.zeros((n_symbols, N_FLOAT)),
        np.zeros((n_symbols, N_INT), dtype=np.int64),
    )


def reset_symbol(state: IndicatorState, i: int) -> None:
    """Forget everything symbol ``i`` has seen."""
    state.closes[i] = np.nan
    state.true_ranges[i] = np.nan
    state.volumes[i] = np.nan
    state.floats[i] = 0.0
    state.ints[i] = 0


def all_columns() -> np.ndarray:
    """A ``cols`` map that writes every feature, in ``FEATURES`` order."""
    return np.arange(N_FEATURES, dtype=np.int64)


# ---------------------------------------------------------------- helpers
# Only the entry points are cached; these compile into them.


@njit
def _kadd(fs, i, s, x):
    """fs[i, s] += x with Neumaier compensation kept in fs[i, s + 1]."""
    total = fs[i, s]
    y = total + x
    if abs(total) >= abs(x):
        fs[i, s + 1] += (total - y) + x
    else:
        fs[i, s + 1] += (x - y) + total
    fs[i, s] = y


@njit
def _resum(fs, i, s, window, p):
    """Recompute the compensated sum fs[i, s] from the p values of window[i]: once per period,
    so the drift of p add/remove pairs never accumulates."""
    fs[i, s] = 0.0
    fs[i, s + 1] = 0.0
    for j in range(p):
        _kadd(fs, i, s, window[i, j])


@njit
def _gain_loss(closes, i, j):
    """gain_j, loss_j from the close ring; bit-identical whenever recomputed."""
    d = closes[i, j % CLOSE_WINDOW] - closes[i, (j - 1) % CLOSE_WINDOW]
    if d > 0.0:
        return d, 0.0
    if d < 0.0:
        return 0.0, -d
    return 0.0, 0.0


@njit
def _window_mean(closes, i, t, k):
    """Mean of c_{t-k+1..t}, summed around c_t so a flat window gives c_t exactly."""
    ref = closes[i, t % CLOSE_WINDOW]
    s = 0.0
    for j in range(t - k + 1, t + 1):
        s += closes[i, j % CLOSE_WINDOW] - ref
    return ref + s / k


@njit
def _bb_recompute(closes, fs, i, t):
    """Re-anchor the Bollinger sums at K = c_t and sum the window again (compensated, so that
    a large value summed here leaves no rounding behind when it is subtracted later)."""
    k = closes[i, t % CLOSE_WINDOW]
    fs[i, F_BB_K] = k
    for s in (F_S1, F_S1_C, F_S2, F_S2_C):
        fs[i, s] = 0.0
    for j in range(max(0, t - BB_PERIOD + 1), t + 1):
        dv = closes[i, j % CLOSE_WINDOW] - k
        _kadd(fs, i, F_S1, dv)
        _kadd(fs, i, F_S2, dv * dv)


# ---------------------------------------------------------------- state update


@njit
def _step_rsi(closes, fs, ist, i, t):
    gain, loss = _gain_loss(closes, i, t)
    p = RSI_PERIOD
    # Wilder, in TA-Lib's operation order: seed sums for t <= p, then (G*(p-1) + gain)/p.
    if t <= p:
        fs[i, F_RSI_G] += gain
        fs[i, F_RSI_L] += loss
        if t == p:
            fs[i, F_RSI_G] /= p
            fs[i, F_RSI_L] /= p
    else:
        fs[i, F_RSI_G] = (fs[i, F_RSI_G] * (p - 1) + gain) / p
        fs[i, F_RSI_L] = (fs[i, F_RSI_L] * (p - 1) + loss) / p
    # Simple-mean window of the last p deltas.
    _kadd(fs, i, F_GSUM, gain)
    _kadd(fs, i, F_LSUM, loss)
    ist[i, I_GAIN_NZ] += gain != 0.0
    ist[i, I_LOSS_NZ] += loss != 0.0
    if t > p:
        og, ol = _gain_loss(closes, i, t - p)
        _kadd(fs, i, F_GSUM, -og)
        _kadd(fs, i, F_LSUM, -ol)
        ist[i, I_GAIN_NZ] -= og != 0.0
        ist[i, I_LOSS_NZ] -= ol != 0.0
    if t >= p and t % p == p - 1:  # drop the drift of p add/remove pairs
        for s in (F_GSUM, F_GSUM_C, F_LSUM, F_LSUM_C):
            fs[i, s] = 0.0
        for j in range(t - p + 1, t + 1):
            g, lo = _gain_loss(closes, i, j)
            _kadd(fs, i, F_GSUM, g)
            _kadd(fs, i, F_LSUM, lo)


@njit
def _step_atr(trs, fs, ist, i, t, tr):
    p = ATR_PERIOD
    slot = t % p
    if t > p:  # TR_{t-p} sits in the slot TR_t is about to take
        old = trs[i, slot]
        _kadd(fs, i, F_TRSUM, -old)
        ist[i, I_TR_NZ] -= old != 0.0
    trs[i, slot] = tr
    _kadd(fs, i, F_TRSUM, tr)
    ist[i, I_TR_NZ] += tr != 0.0
    if t <= p:
        fs[i, F_ATR] += tr
        if t == p:
            fs[i, F_ATR] /= p
    else:
        fs[i, F_ATR] = (fs[i, F_ATR] * (p - 1) + tr) / p
    if t >= p and t % p == p - 1:
        _resum(fs, i, F_TRSUM, trs, p)


@njit
def _step_macd(closes, fs, i, t, c):
    if t < MACD_SLOW - 1:
        return
    if t == MACD_SLOW - 1:
        fs[i, F_EMA_FAST] = _window_mean(closes, i, t, MACD_FAST)
        fs[i, F_EMA_SLOW] = _window_mean(closes, i, t, MACD_SLOW)
    else:
        fs[i, F_EMA_FAST] = (c - fs[i, F_EMA_FAST]) * (2.0 / (MACD_FAST + 1)) + fs[i, F_EMA_FAST]
        fs[i, F_EMA_SLOW] = (c - fs[i, F_EMA_SLOW]) * (2.0 / (MACD_SLOW + 1)) + fs[i, F_EMA_SLOW]
    m = fs[i, F_EMA_FAST] - fs[i, F_EMA_SLOW]
    first_signal = MACD_SLOW + MACD_SIGNAL - 2
    if t <= first_signal:
        fs[i, F_MACD_SUM] += m
        if t == first_signal:
            fs[i, F_SIGNAL] = fs[i, F_MACD_SUM] / MACD_SIGNAL
    else:
        fs[i, F_SIGNAL] = (m - fs[i, F_SIGNAL]) * (2.0 / (MACD_SIGNAL + 1)) + fs[i, F_SIGNAL]


@njit
def _step_bb(closes, fs, i, t, c):
    if t % BB_PERIOD == 0:  # the anchor c_{t-20} is leaving: take c_t as the new one
        _bb_recompute(closes, fs, i, t)
        return
    k = fs[i, F_BB_K]
    dv = c - k
    _kadd(fs, i, F_S1, dv)
    _kadd(fs, i, F_S2, dv * dv)
    if t >= BB_PERIOD:
        do = closes[i, (t - BB_PERIOD) % CLOSE_WINDOW] - k
        _kadd(fs, i, F_S1, -do)
        _kadd(fs, i, F_S2, -(do * do))


@njit
def _step_volume(vols, fs, ist, i, t, v):
    p = VOL_PERIOD
    slot = t % p
    if t >= p:
        old = vols[i, slot]
        _kadd(fs, i, F_VSUM, -old)
        ist[i, I_VOL_NZ] -= old != 0.0
    vols[i, slot] = v
    _kadd(fs, i, F_VSUM, v)
    ist[i, I_VOL_NZ] += v != 0.0
    if t >= p and t % p == p - 1:
        _resum(fs, i, F_VSUM, vols, p)


@njit
def _step(i, h, l, c, v, closes, trs, vols, fs, ist):
    """Advance symbol i by one valid bar."""
    t = ist[i, I_COUNT]
    closes[i, t % CLOSE_WINDOW] = c
    if t >= 1:
        prev = closes[i, (t - 1) % CLOSE_WINDOW]
        _step_rsi(closes, fs, ist, i, t)
        tr = max(h - l, abs(h - prev), abs(l - prev))
        _step_atr(trs, fs, ist, i, t, tr)
        ist[i, I_FLAT] = ist[i, I_FLAT] + 1 if c == prev else 0
    _step_macd(closes, fs, i, t, c)
    _step_bb(closes, fs, i, t, c)
    _step_volume(vols, fs, ist, i, t, v)
    ist[i, I_COUNT] = t + 1


# ---------------------------------------------------------------- features from state


@njit
def _put(out, i, cols, k, val):
    col = cols[k]
    if col >= 0:
        out[i, col] = val


@njit
def _rsi(g, lo):
    s = g + lo
    if s == 0.0:
        return 50.0
    return 100.0 * (g / s)


@njit
def _compensated(fs, ist, i, s, nz):
    """A rolling sum of non-negative terms; exactly 0 when none of its terms is nonzero."""
    if ist[i, nz] == 0:
        return 0.0
    return max(fs[i, s] + fs[i, s + 1], 0.0)


@njit
def _emit_bands(out, i, cols, c, m, s, xu, xl, xp):
    upper = m + BB_NSTD * s
    lower = m - BB_NSTD * s
    _put(out, i, cols, xu, upper)
    _put(out, i, cols, xl, lower)
    width = upper - lower
    _put(out, i, cols, xp, (c - lower) / width if width > 0.0 else 0.5)


@njit(error_model="numpy")  # a close of 0 makes ret_n inf/NaN (masked downstream), never a ZeroDivisionError
def _emit(i, closes, vols, fs, ist, cols, out):
    """Write symbol i's features (FEATURES order k) into out[i, cols[k]] where cols[k] >= 0."""
    nan = np.nan
    n = ist[i, I_COUNT]
    t = n - 1
    c = closes[i, t % CLOSE_WINDOW] if n > 0 else nan
    for x in range(5):
        h = RETURN_HORIZONS[x]
        if t >= h:
            base = closes[i, (t - h) % CLOSE_WINDOW]
            _put(out, i, cols, x, (c - base) / base)
        else:
            _put(out, i, cols, x, nan)

    if t >= RSI_PERIOD:
        _put(out, i, cols, X_RSI, _rsi(fs[i, F_RSI_G], fs[i, F_RSI_L]))
        g = _compensated(fs, ist, i, F_GSUM, I_GAIN_NZ)
        lo = _compensated(fs, ist, i, F_LSUM, I_LOSS_NZ)
        _put(out, i, cols, X_RSI_SMA, _rsi(g, lo))
    else:
        _put(out, i, cols, X_RSI, nan)
        _put(out, i, cols, X_RSI_SMA, nan)

    if t >= ATR_PERIOD:
        _put(out, i, cols, X_ATR, fs[i, F_ATR])
        _put(out, i, cols, X_ATR_SMA, _compensated(fs, ist, i, F_TRSUM, I_TR_NZ) / ATR_PERIOD)
    else:
        _put(out, i, cols, X_ATR, nan)
        _put(out, i, cols, X_ATR_SMA, nan)

    m = fs[i, F_EMA_FAST] - fs[i, F_EMA_SLOW]
    _put(out, i, cols, X_MACD, m if t >= MACD_SLOW - 1 else nan)
    if t >= MACD_SLOW + MACD_SIGNAL - 2:
        _put(out, i, cols, X_SIGNAL, fs[i, F_SIGNAL])
        _put(out, i, cols, X_HIST, m - fs[i, F_SIGNAL])
    else:
        _put(out, i, cols, X_SIGNAL, nan)
        _put(out, i, cols, X_HIST, nan)

    if t >= BB_PERIOD - 1:
        p = BB_PERIOD
        if ist[i, I_FLAT] >= p - 1:  # all p closes equal: exact zero width
            mean, ss = c, 0.0
        else:
            s1 = fs[i, F_S1] + fs[i, F_S1_C]
            s2 = fs[i, F_S2] + fs[i, F_S2_C]
            mean = fs[i, F_BB_K] + s1 / p
            ss = max(s2 - s1 * s1 / p, 0.0)  # sum of squared deviations
        _emit_bands(out, i, cols, c, mean, math.sqrt(ss / p), X_BBU, X_BBL, X_BBP)
        _emit_bands(out, i, cols, c, mean, math.sqrt(ss / (p - 1)), X_BBU1, X_BBL1, X_BBP1)

        ma = _compensated(fs, ist, i, F_VSUM, I_VOL_NZ) / VOL_PERIOD
        v = vols[i, t % VOL_PERIOD]
        _put(out, i, cols, X_VOLR, v / ma if ma > 0.0 else 1.0)
    else:
        for x in (X_BBU, X_BBL, X_BBP, X_BBU1, X_BBL1, X_BBP1, X_VOLR):
            _put(out, i, cols, x, nan)


# ---------------------------------------------------------------- entry points


@njit
def _valid(o, h, l, c, v):
    return np.isfinite(o) and np.isfinite(h) and np.isfinite(l) and np.isfinite(c) and np.isfinite(v)


@njit(cache=True)
def update_bar(o, h, l, c, v, closes, trs, vols, fs, ist, cols, out, stale):
    """One bar for every symbol: o..v are float64 arrays of length n_symbols.

    Symbol i with a non-finite input keeps its state and gets ``stale[i] = True``; every row
    of ``out`` is then (re)written from state through ``cols`` (see ``_emit``), so a bar of
    all-NaN inputs rewrites ``out`` from state and changes nothing else.
    """
    for i in range(c.shape[0]):
        if _valid(o[i], h[i], l[i], c[i], v[i]):
            _step(i, h[i], l[i], c[i], v[i], closes, trs, vols, fs, ist)
            stale[i] = False
        else:
            stale[i] = True
        _emit(i, closes, vols, fs, ist, cols, out)


@njit(cache=True)
def update_series(i, o, h, l, c, v, closes, trs, vols, fs, ist, cols, out):
    """Feed symbol i a whole history (float64 arrays, oldest first); write its last features.

    Returns True when the last bar was missing (the features are stale).
    """
    stale = True
    for b in range(c.shape[0]):
        stale = not _valid(o[b], h[b], l[b], c[b], v[b])
        if not stale:
            _step(i, h[b], l[b], c[b], v[b], closes, trs, vols, fs, ist)
    _emit(i, closes, vols, fs, ist, cols, out)
    return stale


def warmup() -> None:
    """Compile every entry point (float32 and float64 outputs) on tiny inputs; with numba's
    on-disk cache warm this only loads them."""
    bars = np.ones(3)
    for dtype in (np.float32, np.float64):
        st = new_state(1)
        out = np.empty((1, N_FEATURES), dtype=dtype)
        cols = all_columns()
        update_series(0, bars, bars, bars, bars, bars, *st, cols, out)
        one = bars[:1]
        update_bar(one, one, one, one, one, *st, cols, out, np.zeros(1, dtype=np.bool_))
