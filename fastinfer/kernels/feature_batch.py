"""Batch execution of feature programs: whole series at once, one row per symbol.

Arrays are (n_symbols, T) float64, each row one symbol's valid bars (NaN-padded after its
last). The windowed ops here are the whole-window formulas, computed from each window
independently of the incremental kernel's running sums: a compensated sum of the window
(rolling sums and means, WMA), a two-pass mean and sum of squared deviations (moments), a scan
(min, max). They are what the incremental kernel's add/remove/re-anchor numerics are checked
against. The recursive ops (EMA, Wilder, MACD, DMI, OBV) have no other formula than their
recursion; they are written out here again over whole series.

Hole rule, as in ``feature_program``: a windowed value is defined where the whole window is
finite; a recursive op restarts after a non-finite input.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit
def _finite(x):
    return not (math.isnan(x) or math.isinf(x))


@njit
def _neumaier(values, lo, hi):
    """Σ values[lo:hi], compensated."""
    total = 0.0
    comp = 0.0
    for j in range(lo, hi):
        x = values[j]
        y = total + x
        if abs(total) >= abs(x):
            comp += (total - y) + x
        else:
            comp += (x - y) + total
        total = y
    return total + comp


@njit(cache=True)
def finite_runs(x):
    """run[s, t]: consecutive finite values of x[s] ending at t (0 where x[s, t] is not finite)."""
    run = np.zeros(x.shape, dtype=np.int64)
    for s in range(x.shape[0]):
        r = 0
        for t in range(x.shape[1]):
            r = r + 1 if _finite(x[s, t]) else 0
            run[s, t] = r
    return run


@njit(cache=True)
def rolling_sum(x, n, divisor):
    """Σ of each full finite window of n values / divisor."""
    out = np.full(x.shape, np.nan)
    run = finite_runs(x)
    for s in range(x.shape[0]):
        row = x[s]
        for t in range(x.shape[1]):
            if run[s, t] >= n:
                out[s, t] = _neumaier(row, t - n + 1, t + 1) / divisor
    return out


@njit(cache=True)
def rolling_moments(x, n):
    """(mean, Σ (x - mean)²) of each full finite window, two passes; a window of equal values
    gives (that value, 0) exactly."""
    mean = np.full(x.shape, np.nan)
    ss = np.full(x.shape, np.nan)
    run = finite_runs(x)
    for s in range(x.shape[0]):
        row = x[s]
        for t in range(x.shape[1]):
            if run[s, t] < n:
                continue
            lo = t - n + 1
            flat = True
            for j in range(lo, t):
                if row[j] != row[t]:
                    flat = False
                    break
            if flat:
                mean[s, t] = row[t]
                ss[s, t] = 0.0
                continue
            m = _neumaier(row, lo, t + 1) / n
            acc = 0.0
            for j in range(lo, t + 1):
                d = row[j] - m
                acc += d * d
            mean[s, t] = m
            ss[s, t] = acc
    return mean, ss


@njit(cache=True)
def rolling_extremum(x, n, want_min):
    """min (or max) of each full finite window, by scanning it."""
    out = np.full(x.shape, np.nan)
    run = finite_runs(x)
    for s in range(x.shape[0]):
        row = x[s]
        for t in range(x.shape[1]):
            if run[s, t] < n:
                continue
            best = row[t]
            for j in range(t - n + 1, t):
                v = row[j]
                if (v < best) if want_min else (v > best):
                    best = v
            out[s, t] = best
    return out


@njit(cache=True)
def wma(x, n):
    """Σ i·x[t-n+i] / (n(n+1)/2) of each full finite window (compensated)."""
    out = np.full(x.shape, np.nan)
    run = finite_runs(x)
    weighted = np.empty(n)
    divisor = n * (n + 1) / 2.0
    for s in range(x.shape[0]):
        row = x[s]
        for t in range(x.shape[1]):
            if run[s, t] < n:
                continue
            for q in range(n):
                weighted[q] = (q + 1) * row[t - n + 1 + q]
            out[s, t] = _neumaier(weighted, 0, n) / divisor
    return out


@njit(cache=True)
def cci(x, n):
    """(x - mean) / (0.015 mean |x_j - mean|) of each full finite window; 0 when either is 0."""
    out = np.full(x.shape, np.nan)
    run = finite_runs(x)
    for s in range(x.shape[0]):
        row = x[s]
        for t in range(x.shape[1]):
            if run[s, t] < n:
                continue
            v = row[t]
            acc = 0.0
            for j in range(t - n + 1, t + 1):
                acc += row[j] - v
            m = v + acc / n
            dev = 0.0
            for j in range(t - n + 1, t + 1):
                dev += abs(row[j] - m)
            dev /= n
            diff = v - m
            out[s, t] = diff / (0.015 * dev) if (diff != 0.0 and dev != 0.0) else 0.0
    return out


@njit(cache=True)
def smoothed(x, n, alpha, wilder):
    """EMA (alpha) or Wilder average, seeded with the plain mean of the first n finite values;
    restarts after a non-finite value."""
    out = np.full(x.shape, np.nan)
    for s in range(x.shape[0]):
        run = 0
        acc = 0.0
        e = 0.0
        for t in range(x.shape[1]):
            v = x[s, t]
            if not _finite(v):
                run = 0
                acc = 0.0
                continue
            run += 1
            if run <= n:
                acc += v
                if run == n:
                    e = acc / n
            elif wilder:
                e = (e * (n - 1) + v) / n
            else:
                e = (v - e) * alpha + e
            if run >= n:
                out[s, t] = e
    return out


@njit(cache=True)
def macd(x, fast, slow, a_fast, a_slow):
    """TA-Lib's MACD line: both EMAs seeded on the slow one's first bar with the mean of their
    last fast / slow values (summed around the newest)."""
    out = np.full(x.shape, np.nan)
    for s in range(x.shape[0]):
        run = 0
        ef = 0.0
        es = 0.0
        for t in range(x.shape[1]):
            v = x[s, t]
            if not _finite(v):
                run = 0
                continue
            run += 1
            if run < slow:
                continue
            if run == slow:
                for k in (fast, slow):
                    acc = 0.0
                    for j in range(t - k + 1, t + 1):
                        acc += x[s, j] - v
                    if k == fast:
                        ef = v + acc / k
                    else:
                        es = v + acc / k
            else:
                ef = (v - ef) * a_fast + ef
                es = (v - es) * a_slow + es
            out[s, t] = ef - es
    return out


@njit(cache=True)
def dmi(h, l, c, n):
    """TA-Lib PLUS_DI, MINUS_DI and ADX over rows of valid bars (see feature_program._dmi)."""
    pdi_out = np.full(c.shape, np.nan)
    mdi_out = np.full(c.shape, np.nan)
    adx_out = np.full(c.shape, np.nan)
    for s in range(c.shape[0]):
        pdm = 0.0
        mdm = 0.0
        trs = 0.0
        sumdx = 0.0
        adx = 0.0
        for t in range(1, c.shape[1]):
            diff_p = h[s, t] - h[s, t - 1]
            diff_m = l[s, t - 1] - l[s, t]
            pc = c[s, t - 1]
            tr = max(h[s, t] - l[s, t], abs(h[s, t] - pc), abs(l[s, t] - pc))
            if t >= n:
                mdm -= mdm / n
                pdm -= pdm / n
            if diff_m > 0.0 and diff_p < diff_m:
                mdm += diff_m
            elif diff_p > 0.0 and diff_p > diff_m:
                pdm += diff_p
            if t < n:
                trs += tr
                continue
            trs = trs - trs / n + tr
            pdi = 100.0 * (pdm / trs) if trs != 0.0 else 0.0
            mdi = 100.0 * (mdm / trs) if trs != 0.0 else 0.0
            pdi_out[s, t] = pdi
            mdi_out[s, t] = mdi
            total = mdi + pdi
            has_dx = trs != 0.0 and total != 0.0
            dx = 100.0 * (abs(mdi - pdi) / total) if has_dx else 0.0
            if t <= 2 * n - 1:
                if has_dx:
                    sumdx += dx
                if t == 2 * n - 1:
                    adx = sumdx / n
            elif has_dx:
                adx = (adx * (n - 1) + dx) / n
            if t >= 2 * n - 1:
                adx_out[s, t] = adx
    return pdi_out, mdi_out, adx_out


@njit(cache=True)
def obv(c, v):
    """TA-Lib OBV: the first volume, then ± volume by the sign of the close's change (compensated)."""
    out = np.full(c.shape, np.nan)
    for s in range(c.shape[0]):
        total = 0.0
        comp = 0.0
        for t in range(c.shape[1]):
            if t == 0:
                total = v[s, 0]
            else:
                x = v[s, t] if c[s, t] > c[s, t - 1] else (-v[s, t] if c[s, t] < c[s, t - 1] else 0.0)
                y = total + x
                if abs(total) >= abs(x):
                    comp += (total - y) + x
                else:
                    comp += (x - y) + total
                total = y
            out[s, t] = total + comp
    return out


def warmup() -> None:
    """Compile every batch kernel on a tiny input (loads them when numba's cache is warm)."""
    x = np.ones((1, 4))
    finite_runs(x)
    rolling_sum(x, 2, 2.0)
    rolling_moments(x, 2)
    rolling_extremum(x, 2, True)
    wma(x, 2)
    cci(x, 2)
    smoothed(x, 2, 0.5, True)
    macd(x, 1, 2, 1.0, 0.5)
    dmi(x, x, x, 2)
    obv(x, x)
