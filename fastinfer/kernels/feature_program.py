"""The incremental feature interpreter: one jitted call per bar runs a whole compiled feature program.

A program (built by ``fastinfer.features.compiler``) is a list of instructions, one row of
``code`` each, in dependency order. ``update_bar`` takes one bar for every symbol, copies the
valid symbols' inputs into their registers, then runs the instructions **ops outer, symbols
inner**: the dispatch on an opcode happens once per instruction per bar and the loop under it
walks every valid symbol, so its cost is amortised over all symbols. Everything lives in
arrays laid out (slot, n_symbols), so that inner loop reads contiguous memory:

- ``regs``   float64 (n_registers, n): one register per value (inputs, constants, each op's
  outputs). Rows 0-4 are open, high, low, close, volume; external columns follow.
- ``fstate`` float64 (n_float_slots, n): rings (a series' history, pushed once per bar by a
  PUSH instruction and read by every op that needs a lagged value) and each op's sums.
- ``istate`` int64 (n_int_slots, n): run counters and deques.
- ``count``  int64 (n,): valid bars seen per symbol; the current bar's index is ``count - 1``.

Missing bars: a symbol whose open, high, low, close or volume is not finite gets no bar: none
of its registers or state is touched (``stale[i] = True``) and its output row is rewritten
from its registers, i.e. it repeats its last features.

Holes: a stateful op whose *input* is not finite on a bar (a derived series, e.g. a return
of a zero price) restarts: its sums and counters reset, its output is NaN until it has again
seen the values it needs. A windowed op's value is therefore defined exactly when its whole
window is finite (pandas' rolling with ``min_periods = window``), and a recursive op re-seeds
after a hole as TA-Lib seeds after leading NaNs.

Numerics: every rolling sum is Neumaier-compensated and recomputed from its window once per
period (so the rounding of add/remove pairs never accumulates), counts its nonzero terms (a
window of zeros sums to exactly 0), and the rolling variance is taken around an anchor that
is always inside the window (re-anchored every period) with an exact flat-window test.

Instructions reading a ring read ``fstate[ring + ((t - k) & mask), i]``: ring widths are
powers of two. User-defined primitives run through ``OP_USER``: their compiled update is a
C callback (a numba ``cfunc``) called by address, with per-symbol state rows in ``ustate``.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# ---------------------------------------------------------------- instruction layout

# Columns of a ``code`` row.
C_OP = 0
C_OUT0, C_OUT1, C_OUT2 = 1, 2, 3
C_IN0, C_IN1, C_IN2 = 4, 5, 6
C_P0, C_P1 = 7, 8  # integer parameters (window, lag, ...)
C_RING, C_MASK = 9, 10  # the input's ring: first fstate row and width - 1
C_F, C_I = 11, 12  # this op's first float / int state slot
N_CODE = 13
N_FPARAMS = 2  # float parameters per instruction (alpha, divisor, bounds, ...)
N_INPUTS = 5  # open, high, low, close, volume: registers 0..4

# Opcodes, grouped so the dispatcher tests ranges. The numbers are part of a saved state's
# program hash: append new ones, never renumber.
OP_PUSH = 0  # push the input into its ring
OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_MIN2, OP_MAX2, OP_SEL_POS, OP_SEL_NEG, OP_RSI_OF = range(1, 10)
OP_NEG, OP_ABS, OP_SIGN, OP_LOG, OP_EXP, OP_SQRT, OP_CLIP, OP_GAIN, OP_LOSS = range(10, 19)
OP_RATIO, OP_TRUE_RANGE, OP_STOCH, OP_WILLR = range(19, 23)
OP_LAG, OP_DIFF, OP_PCT, OP_LOGRET = range(23, 27)
OP_SUM, OP_MOMENTS, OP_MIN, OP_MAX, OP_WMA, OP_EMA, OP_WILDER, OP_MACD, OP_DMI, OP_OBV, OP_CCI = range(27, 38)
OP_USER = 38
N_OPS = 39

# State each op keeps, per symbol: (float slots, int slots); windowed ops add their window
# where noted (see ``state_width``).
F_SUM, F_SUM_C = 0, 1
I_RUN, I_NZ = 0, 1
F_K, F_S1, F_S1C, F_S2, F_S2C = 0, 1, 2, 3, 4
I_EQ = 1
I_HEAD, I_SIZE, I_DEQUE = 1, 2, 3
F_WS, F_WSC, F_WW, F_WWC = 0, 1, 2, 3
F_E, F_ACC = 0, 1
F_FAST, F_SLOW = 0, 1
F_PH, F_PL, F_PC, F_PDM, F_MDM, F_TR, F_SUMDX, F_ADX = range(8)
F_OBV, F_OBV_C, F_OBV_PC = 0, 1, 2


def state_width(op: int, window: int) -> tuple[int, int]:
    """(float slots, int slots) one instruction of ``op`` keeps per symbol."""
    if op == OP_SUM:
        return 2, 2
    if op == OP_MOMENTS:
        return 5, 2
    if op in (OP_MIN, OP_MAX):
        return 0, 3 + window
    if op == OP_WMA:
        return 4, 1
    if op in (OP_EMA, OP_WILDER):
        return 2, 1
    if op == OP_MACD:
        return 2, 1
    if op == OP_DMI:
        return 8, 0
    if op == OP_OBV:
        return 3, 0
    if op == OP_CCI:
        return 0, 1
    if op == OP_USER:
        return 0, 1
    return 0, 0


# ---------------------------------------------------------------- helpers
# Only the entry points are cached; these compile into them.


@njit
def _kadd(fs, s, i, x):
    """fs[s, i] += x with the Neumaier compensation kept in fs[s + 1, i]."""
    total = fs[s, i]
    y = total + x
    if abs(total) >= abs(x):
        fs[s + 1, i] += (total - y) + x
    else:
        fs[s + 1, i] += (x - y) + total
    fs[s, i] = y


@njit
def _finite(x):
    return not (math.isnan(x) or math.isinf(x))


# ---------------------------------------------------------------- elementwise ops


@njit
def _elementwise2(op, c, regs, sel, nv):
    out = regs[c[C_OUT0]]
    a = regs[c[C_IN0]]
    b = regs[c[C_IN1]]
    if op == OP_ADD:
        for k in range(nv):
            i = sel[k]
            out[i] = a[i] + b[i]
    elif op == OP_SUB:
        for k in range(nv):
            i = sel[k]
            out[i] = a[i] - b[i]
    elif op == OP_MUL:
        for k in range(nv):
            i = sel[k]
            out[i] = a[i] * b[i]
    elif op == OP_DIV:
        for k in range(nv):
            i = sel[k]
            out[i] = a[i] / b[i]
    elif op == OP_MIN2:
        for k in range(nv):
            i = sel[k]
            x, y = a[i], b[i]
            out[i] = np.nan if (math.isnan(x) or math.isnan(y)) else min(x, y)
    elif op == OP_MAX2:
        for k in range(nv):
            i = sel[k]
            x, y = a[i], b[i]
            out[i] = np.nan if (math.isnan(x) or math.isnan(y)) else max(x, y)
    elif op == OP_SEL_POS:  # b where a > 0, else 0 (NaN stays NaN)
        for k in range(nv):
            i = sel[k]
            d = a[i]
            out[i] = b[i] if d > 0.0 else (np.nan if math.isnan(d) else 0.0)
    elif op == OP_SEL_NEG:  # b where a < 0, else 0
        for k in range(nv):
            i = sel[k]
            d = a[i]
            out[i] = b[i] if d < 0.0 else (np.nan if math.isnan(d) else 0.0)
    elif op == OP_RSI_OF:  # 100 a / (a + b); 50 when both are 0 (no gains, no losses)
        for k in range(nv):
            i = sel[k]
            s = a[i] + b[i]
            out[i] = 50.0 if s == 0.0 else 100.0 * (a[i] / s)


@njit
def _elementwise1(op, c, fp, regs, sel, nv):
    out = regs[c[C_OUT0]]
    a = regs[c[C_IN0]]
    if op == OP_NEG:
        for k in range(nv):
            i = sel[k]
            out[i] = -a[i]
    elif op == OP_ABS:
        for k in range(nv):
            i = sel[k]
            out[i] = abs(a[i])
    elif op == OP_SIGN:
        for k in range(nv):
            i = sel[k]
            x = a[i]
            out[i] = 1.0 if x > 0.0 else (-1.0 if x < 0.0 else x)  # 0 -> 0 (sign kept), NaN -> NaN
    elif op == OP_LOG:
        for k in range(nv):
            i = sel[k]
            out[i] = np.log(a[i])
    elif op == OP_EXP:
        for k in range(nv):
            i = sel[k]
            out[i] = np.exp(a[i])
    elif op == OP_SQRT:
        for k in range(nv):
            i = sel[k]
            out[i] = np.sqrt(a[i])
    elif op == OP_CLIP:
        lo, hi = fp[0], fp[1]
        for k in range(nv):
            i = sel[k]
            x = a[i]
            out[i] = lo if x < lo else (hi if x > hi else x)
    elif op == OP_GAIN:
        for k in range(nv):
            i = sel[k]
            d = a[i]
            out[i] = d if d > 0.0 else (np.nan if math.isnan(d) else 0.0)
    elif op == OP_LOSS:
        for k in range(nv):
            i = sel[k]
            d = a[i]
            out[i] = -d if d < 0.0 else (np.nan if math.isnan(d) else 0.0)


@njit
def _elementwise3(op, c, regs, sel, nv):
    out = regs[c[C_OUT0]]
    a = regs[c[C_IN0]]
    b = regs[c[C_IN1]]
    f = regs[c[C_IN2]]
    if op == OP_RATIO:  # a / b, or f where b is exactly 0
        for k in range(nv):
            i = sel[k]
            d = b[i]
            out[i] = f[i] if d == 0.0 else a[i] / d
    elif op == OP_TRUE_RANGE:  # a, b, f = high, low, previous close
        for k in range(nv):
            i = sel[k]
            h, lo, pc = a[i], b[i], f[i]
            if math.isnan(pc):
                out[i] = np.nan
            else:
                out[i] = max(h - lo, abs(h - pc), abs(lo - pc))
    elif op == OP_STOCH:  # a, b, f = close, lowest low, highest high; 50 in a flat window
        for k in range(nv):
            i = sel[k]
            x, ll, hh = a[i], b[i], f[i]
            out[i] = 50.0 if hh == ll else 100.0 * ((x - ll) / (hh - ll))
    elif op == OP_WILLR:  # -100 (hh - c) / (hh - ll); -50 in a flat window
        for k in range(nv):
            i = sel[k]
            x, ll, hh = a[i], b[i], f[i]
            out[i] = -50.0 if hh == ll else -100.0 * ((hh - x) / (hh - ll))


# ---------------------------------------------------------------- lags (read the input's ring)


@njit
def _push(c, regs, fs, count, sel, nv):
    x = regs[c[C_IN0]]
    ring, mask = c[C_RING], c[C_MASK]
    for k in range(nv):
        i = sel[k]
        fs[ring + ((count[i] - 1) & mask), i] = x[i]


@njit(error_model="numpy")  # a zero base gives inf/NaN (a hole downstream), never ZeroDivisionError
def _lagged(op, c, regs, fs, count, sel, nv):
    out = regs[c[C_OUT0]]
    x = regs[c[C_IN0]]
    lag = c[C_P0]
    ring, mask = c[C_RING], c[C_MASK]
    for k in range(nv):
        i = sel[k]
        t = count[i] - 1
        if t < lag:
            out[i] = np.nan
            continue
        base = fs[ring + ((t - lag) & mask), i]
        if op == OP_LAG:
            out[i] = base
        elif op == OP_DIFF:
            out[i] = x[i] - base
        elif op == OP_PCT:
            out[i] = (x[i] - base) / base
        else:  # OP_LOGRET
            out[i] = np.log(x[i] / base)


# ---------------------------------------------------------------- windowed ops


@njit
def _rolling_sum(c, fp, regs, fs, ist, count, sel, nv):
    """Sum of the last n values divided by fp[0] (1: sum, n: mean); exactly 0 for a window of zeros."""
    out = regs[c[C_OUT0]]
    x = regs[c[C_IN0]]
    n = c[C_P0]
    ring, mask = c[C_RING], c[C_MASK]
    f, s = c[C_F], c[C_I]
    divisor = fp[0]
    for k in range(nv):
        i = sel[k]
        v = x[i]
        if not _finite(v):
            ist[s + I_RUN, i] = 0
            ist[s + I_NZ, i] = 0
            fs[f + F_SUM, i] = 0.0
            fs[f + F_SUM_C, i] = 0.0
            out[i] = np.nan
            continue
        t = count[i] - 1
        run = ist[s + I_RUN, i] + 1
        ist[s + I_RUN, i] = run
        nz = ist[s + I_NZ, i] + (v != 0.0)
        if run > n:  # x_{t-n} leaves the window
            old = fs[ring + ((t - n) & mask), i]
            _kadd(fs, f + F_SUM, i, -old)
            nz -= old != 0.0
        _kadd(fs, f + F_SUM, i, v)
        ist[s + I_NZ, i] = nz
        if run < n:
            out[i] = np.nan
            continue
        if run % n == 0:  # drop the drift of n add/remove pairs
            fs[f + F_SUM, i] = 0.0
            fs[f + F_SUM_C, i] = 0.0
            for q in range(t - n + 1, t + 1):
                _kadd(fs, f + F_SUM, i, fs[ring + (q & mask), i])
        total = 0.0 if nz == 0 else fs[f + F_SUM, i] + fs[f + F_SUM_C, i]
        out[i] = total / divisor


@njit
def _anchor(fs, f, i, ring, mask, lo, t, anchor):
    """Re-anchor the moment sums at ``anchor`` and sum the window lo..t again (compensated, so
    a large value summed here leaves no rounding behind when it is subtracted later)."""
    fs[f + F_K, i] = anchor
    fs[f + F_S1, i] = 0.0
    fs[f + F_S1C, i] = 0.0
    fs[f + F_S2, i] = 0.0
    fs[f + F_S2C, i] = 0.0
    for q in range(lo, t + 1):
        dv = fs[ring + (q & mask), i] - anchor
        _kadd(fs, f + F_S1, i, dv)
        _kadd(fs, f + F_S2, i, dv * dv)


@njit
def _moments(c, regs, fs, ist, count, sel, nv):
    """Rolling mean (out0) and sum of squared deviations (out1) of the last n values.

    Sums are of x - K for an anchor K inside the window, so the variance never subtracts two
    numbers much larger than itself, at any price scale. A window of equal values (tracked by
    the run of values equal to the one before) gives mean = that value and ss = 0 exactly.
    """
    mean_out = regs[c[C_OUT0]]
    ss_out = regs[c[C_OUT1]]
    x = regs[c[C_IN0]]
    n = c[C_P0]
    ring, mask = c[C_RING], c[C_MASK]
    f, s = c[C_F], c[C_I]
    for k in range(nv):
        i = sel[k]
        v = x[i]
        if not _finite(v):
            ist[s + I_RUN, i] = 0
            ist[s + I_EQ, i] = 0
            mean_out[i] = np.nan
            ss_out[i] = np.nan
            continue
        t = count[i] - 1
        run = ist[s + I_RUN, i] + 1
        ist[s + I_RUN, i] = run
        if run > 1 and v == fs[ring + ((t - 1) & mask), i]:
            ist[s + I_EQ, i] += 1
        else:
            ist[s + I_EQ, i] = 0
        if (run - 1) % n == 0:  # the anchor leaves the window: take this value as the new one
            _anchor(fs, f, i, ring, mask, t - min(run, n) + 1, t, v)
        else:
            anchor = fs[f + F_K, i]
            dv = v - anchor
            _kadd(fs, f + F_S1, i, dv)
            _kadd(fs, f + F_S2, i, dv * dv)
            if run > n:
                do = fs[ring + ((t - n) & mask), i] - anchor
                _kadd(fs, f + F_S1, i, -do)
                _kadd(fs, f + F_S2, i, -(do * do))
        if run < n:
            mean_out[i] = np.nan
            ss_out[i] = np.nan
        elif ist[s + I_EQ, i] >= n - 1:  # all n values equal: exact
            mean_out[i] = v
            ss_out[i] = 0.0
        else:
            s1 = fs[f + F_S1, i] + fs[f + F_S1C, i]
            s2 = fs[f + F_S2, i] + fs[f + F_S2C, i]
            mean_out[i] = fs[f + F_K, i] + s1 / n
            ss_out[i] = max(s2 - s1 * s1 / n, 0.0)


@njit
def _extremum(op, c, regs, fs, ist, count, sel, nv):
    """Rolling min / max of the last n values: a monotonic deque of bar indices (amortised O(1))."""
    out = regs[c[C_OUT0]]
    x = regs[c[C_IN0]]
    n = c[C_P0]
    ring, mask = c[C_RING], c[C_MASK]
    s = c[C_I]
    dq = s + I_DEQUE
    want_min = op == OP_MIN
    for k in range(nv):
        i = sel[k]
        v = x[i]
        if not _finite(v):
            ist[s + I_RUN, i] = 0
            ist[s + I_HEAD, i] = 0
            ist[s + I_SIZE, i] = 0
            out[i] = np.nan
            continue
        t = count[i] - 1
        run = ist[s + I_RUN, i] + 1
        ist[s + I_RUN, i] = run
        head = ist[s + I_HEAD, i]
        size = ist[s + I_SIZE, i]
        while size > 0 and ist[dq + head, i] <= t - n:  # left the window
            head += 1
            if head == n:
                head = 0
            size -= 1
        while size > 0:  # drop values the new one dominates
            back = head + size - 1
            if back >= n:
                back -= n
            old = fs[ring + (ist[dq + back, i] & mask), i]
            if (old >= v) if want_min else (old <= v):
                size -= 1
            else:
                break
        tail = head + size
        if tail >= n:
            tail -= n
        ist[dq + tail, i] = t
        size += 1
        ist[s + I_HEAD, i] = head
        ist[s + I_SIZE, i] = size
        out[i] = fs[ring + (ist[dq + head, i] & mask), i] if run >= n else np.nan


@njit
def _wma(c, regs, fs, ist, count, sel, nv):
    """TA-Lib WMA: weights 1..n (newest n) over n(n+1)/2; weighted and plain sums compensated,
    recomputed from the window every n bars."""
    out = regs[c[C_OUT0]]
    x = regs[c[C_IN0]]
    n = c[C_P0]
    ring, mask = c[C_RING], c[C_MASK]
    f, s = c[C_F], c[C_I]
    divisor = n * (n + 1) / 2.0
    for k in range(nv):
        i = sel[k]
        v = x[i]
        if not _finite(v):
            ist[s + I_RUN, i] = 0
            for q in range(4):
                fs[f + q, i] = 0.0
            out[i] = np.nan
            continue
        t = count[i] - 1
        run = ist[s + I_RUN, i] + 1
        ist[s + I_RUN, i] = run
        if run <= n:
            _kadd(fs, f + F_WS, i, v)
            _kadd(fs, f + F_WW, i, run * v)
        else:  # W_t = W_{t-1} + n x_t - S_{t-1};  S_t = S_{t-1} + x_t - x_{t-n}
            previous = fs[f + F_WS, i] + fs[f + F_WSC, i]
            _kadd(fs, f + F_WW, i, n * v)
            _kadd(fs, f + F_WW, i, -previous)
            _kadd(fs, f + F_WS, i, v)
            _kadd(fs, f + F_WS, i, -fs[ring + ((t - n) & mask), i])
        if run < n:
            out[i] = np.nan
            continue
        if run % n == 0:
            for q in range(4):
                fs[f + q, i] = 0.0
            for q in range(n):
                val = fs[ring + ((t - n + 1 + q) & mask), i]
                _kadd(fs, f + F_WS, i, val)
                _kadd(fs, f + F_WW, i, (q + 1) * val)
        out[i] = (fs[f + F_WW, i] + fs[f + F_WWC, i]) / divisor


@njit
def _cci(c, regs, fs, ist, count, sel, nv):
    """TA-Lib CCI over the input (the typical price): (x - mean) / (0.015 mean |x_j - mean|), 0
    when either is 0. The mean absolute deviation has no O(1) update: O(n) per bar."""
    out = regs[c[C_OUT0]]
    x = regs[c[C_IN0]]
    n = c[C_P0]
    ring, mask = c[C_RING], c[C_MASK]
    s = c[C_I]
    for k in range(nv):
        i = sel[k]
        v = x[i]
        if not _finite(v):
            ist[s + I_RUN, i] = 0
            out[i] = np.nan
            continue
        t = count[i] - 1
        run = ist[s + I_RUN, i] + 1
        ist[s + I_RUN, i] = run
        if run < n:
            out[i] = np.nan
            continue
        acc = 0.0  # summed around the newest value: a flat window has mean == v exactly
        for q in range(t - n + 1, t + 1):
            acc += fs[ring + (q & mask), i] - v
        mean = v + acc / n
        dev = 0.0
        for q in range(t - n + 1, t + 1):
            dev += abs(fs[ring + (q & mask), i] - mean)
        dev /= n
        diff = v - mean
        out[i] = diff / (0.015 * dev) if (diff != 0.0 and dev != 0.0) else 0.0


# ---------------------------------------------------------------- recursive ops


@njit
def _smoothed(op, c, fp, regs, fs, ist, sel, nv):
    """EMA (TA-Lib: alpha = fp[0]) or Wilder's average of the input, both seeded with the plain
    mean of their first n values (summed in order, then divided)."""
    out = regs[c[C_OUT0]]
    x = regs[c[C_IN0]]
    n = c[C_P0]
    f, s = c[C_F], c[C_I]
    alpha = fp[0]
    for k in range(nv):
        i = sel[k]
        v = x[i]
        if not _finite(v):
            ist[s + I_RUN, i] = 0
            fs[f + F_ACC, i] = 0.0
            out[i] = np.nan
            continue
        run = ist[s + I_RUN, i] + 1
        ist[s + I_RUN, i] = run
        if run <= n:
            fs[f + F_ACC, i] += v
            if run == n:
                fs[f + F_E, i] = fs[f + F_ACC, i] / n
        elif op == OP_EMA:
            fs[f + F_E, i] = (v - fs[f + F_E, i]) * alpha + fs[f + F_E, i]
        else:
            fs[f + F_E, i] = (fs[f + F_E, i] * (n - 1) + v) / n
        out[i] = fs[f + F_E, i] if run >= n else np.nan


@njit
def _window_mean(fs, ring, mask, i, t, k):
    """Mean of the last k ring values, summed around the newest so a flat window gives it exactly."""
    ref = fs[ring + (t & mask), i]
    acc = 0.0
    for q in range(t - k + 1, t + 1):
        acc += fs[ring + (q & mask), i] - ref
    return ref + acc / k


@njit
def _macd(c, fp, regs, fs, ist, count, sel, nv):
    """TA-Lib MACD line: EMA_fast - EMA_slow, both seeded on the slow EMA's first bar with the
    mean of their last fast / slow values (fp = the two alphas)."""
    out = regs[c[C_OUT0]]
    x = regs[c[C_IN0]]
    fast, slow = c[C_P0], c[C_P1]
    ring, mask = c[C_RING], c[C_MASK]
    f, s = c[C_F], c[C_I]
    a_fast, a_slow = fp[0], fp[1]
    for k in range(nv):
        i = sel[k]
        v = x[i]
        if not _finite(v):
            ist[s + I_RUN, i] = 0
            out[i] = np.nan
            continue
        run = ist[s + I_RUN, i] + 1
        ist[s + I_RUN, i] = run
        if run < slow:
            out[i] = np.nan
            continue
        if run == slow:
            t = count[i] - 1
            fs[f + F_FAST, i] = _window_mean(fs, ring, mask, i, t, fast)
            fs[f + F_SLOW, i] = _window_mean(fs, ring, mask, i, t, slow)
        else:
            fs[f + F_FAST, i] = (v - fs[f + F_FAST, i]) * a_fast + fs[f + F_FAST, i]
            fs[f + F_SLOW, i] = (v - fs[f + F_SLOW, i]) * a_slow + fs[f + F_SLOW, i]
        out[i] = fs[f + F_FAST, i] - fs[f + F_SLOW, i]


@njit
def _dmi(c, regs, fs, count, sel, nv):
    """TA-Lib PLUS_DI (out0), MINUS_DI (out1) and ADX (out2) over high, low, close (raw inputs,
    always finite on a valid bar). Zero tests are exact (TA-Lib's allow |x| < 1e-8)."""
    pdi_out = regs[c[C_OUT0]]
    mdi_out = regs[c[C_OUT1]]
    adx_out = regs[c[C_OUT2]]
    hs = regs[c[C_IN0]]
    ls = regs[c[C_IN1]]
    cs = regs[c[C_IN2]]
    n = c[C_P0]
    f = c[C_F]
    for k in range(nv):
        i = sel[k]
        t = count[i] - 1
        h, lo, cl = hs[i], ls[i], cs[i]
        pdi_out[i] = np.nan
        mdi_out[i] = np.nan
        adx_out[i] = np.nan
        if t > 0:
            diff_p = h - fs[f + F_PH, i]
            diff_m = fs[f + F_PL, i] - lo
            pc = fs[f + F_PC, i]
            tr = max(h - lo, abs(h - pc), abs(lo - pc))
            if t >= n:
                fs[f + F_MDM, i] -= fs[f + F_MDM, i] / n
                fs[f + F_PDM, i] -= fs[f + F_PDM, i] / n
            if diff_m > 0.0 and diff_p < diff_m:
                fs[f + F_MDM, i] += diff_m
            elif diff_p > 0.0 and diff_p > diff_m:
                fs[f + F_PDM, i] += diff_p
            if t < n:
                fs[f + F_TR, i] += tr
            else:
                trs = fs[f + F_TR, i] - fs[f + F_TR, i] / n + tr
                fs[f + F_TR, i] = trs
                pdi = 0.0
                mdi = 0.0
                if trs != 0.0:
                    pdi = 100.0 * (fs[f + F_PDM, i] / trs)
                    mdi = 100.0 * (fs[f + F_MDM, i] / trs)
                pdi_out[i] = pdi
                mdi_out[i] = mdi
                total = mdi + pdi
                has_dx = trs != 0.0 and total != 0.0
                dx = 100.0 * (abs(mdi - pdi) / total) if has_dx else 0.0
                if t < 2 * n - 1:
                    if has_dx:
                        fs[f + F_SUMDX, i] += dx
                elif t == 2 * n - 1:
                    if has_dx:
                        fs[f + F_SUMDX, i] += dx
                    fs[f + F_ADX, i] = fs[f + F_SUMDX, i] / n
                elif has_dx:
                    fs[f + F_ADX, i] = (fs[f + F_ADX, i] * (n - 1) + dx) / n
                if t >= 2 * n - 1:
                    adx_out[i] = fs[f + F_ADX, i]
        fs[f + F_PH, i] = h
        fs[f + F_PL, i] = lo
        fs[f + F_PC, i] = cl


@njit
def _obv(c, regs, fs, count, sel, nv):
    """TA-Lib OBV over close and volume (raw inputs): starts at the first volume; compensated."""
    out = regs[c[C_OUT0]]
    cs = regs[c[C_IN0]]
    vs = regs[c[C_IN1]]
    f = c[C_F]
    for k in range(nv):
        i = sel[k]
        cl, v = cs[i], vs[i]
        if count[i] == 1:
            fs[f + F_OBV, i] = v
            fs[f + F_OBV_C, i] = 0.0
        elif cl > fs[f + F_OBV_PC, i]:
            _kadd(fs, f + F_OBV, i, v)
        elif cl < fs[f + F_OBV_PC, i]:
            _kadd(fs, f + F_OBV, i, -v)
        fs[f + F_OBV_PC, i] = cl
        out[i] = fs[f + F_OBV, i] + fs[f + F_OBV_C, i]


# ---------------------------------------------------------------- user-defined primitives


@intrinsic
def _call_user(typingctx, address, state, width, inputs, n_inputs, params, n_params):
    """Call the C callback at ``address``: double f(double* state, int64 width, double* inputs,
    int64 n_inputs, double* params, int64 n_params)."""
    sig = types.float64(
        types.int64,
        types.CPointer(types.float64),
        types.int64,
        types.CPointer(types.float64),
        types.int64,
        types.CPointer(types.float64),
        types.int64,
    )

    def codegen(context, builder, signature, args):
        addr, st, w, inp, ni, par, npar = args
        dbl = ir.DoubleType()
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(dbl, [dbl.as_pointer(), i64, dbl.as_pointer(), i64, dbl.as_pointer(), i64])
        fn = builder.inttoptr(addr, fnty.as_pointer())
        return builder.call(fn, [st, w, inp, ni, par, npar])

    return sig, codegen


@intrinsic
def _ptr(typingctx, arr):
    """The data pointer of a contiguous float64 array."""
    sig = types.CPointer(types.float64)(arr)

    def codegen(context, builder, signature, args):
        return context.make_array(signature.args[0])(context, builder, args[0]).data

    return sig, codegen


# Columns of ``user_meta``, one row per user instruction.
U_OFFSET, U_WIDTH, U_INPUTS, U_WARMUP = 0, 1, 2, 3


@njit
def _user(c, regs, ustate, ist, sel, nv, user_addr, user_meta, user_params, user_init, scratch):
    """A registered primitive: its callback updates symbol i's state row ustate[i, off:off+width]
    from this bar's inputs and returns the output. A non-finite input restarts it (the row goes
    back to its initial values); the output is NaN until it has seen ``warmup`` + 1 values."""
    out = regs[c[C_OUT0]]
    u = c[C_P0]
    s = c[C_I]
    off, width = user_meta[u, U_OFFSET], user_meta[u, U_WIDTH]
    n_in, warmup = user_meta[u, U_INPUTS], user_meta[u, U_WARMUP]
    address = user_addr[u]
    params = user_params[u]
    n_par = params.shape[0]
    for k in range(nv):
        i = sel[k]
        ok = True
        for q in range(n_in):
            v = regs[c[C_IN0 + q], i]
            scratch[q] = v
            ok = ok and _finite(v)
        if not ok:
            ist[s + I_RUN, i] = 0
            for q in range(width):
                ustate[i, off + q] = user_init[u, q]
            out[i] = np.nan
            continue
        run = ist[s + I_RUN, i] + 1
        ist[s + I_RUN, i] = run
        y = _call_user(address, _ptr(ustate[i, off:]), width, _ptr(scratch), n_in, _ptr(params), n_par)
        out[i] = y if run > warmup else np.nan


# ---------------------------------------------------------------- the interpreter


@njit(error_model="numpy")  # x / 0 is inf / NaN as in numpy (a hole downstream), never an exception
def _run(code, fparams, regs, fs, ist, count, sel, nv, ustate, user_addr, user_meta, user_params, user_init, scratch):
    """Every instruction, in order, for the nv symbols listed in sel."""
    for k in range(code.shape[0]):
        c = code[k]
        fp = fparams[k]
        op = c[C_OP]
        if op == OP_PUSH:
            _push(c, regs, fs, count, sel, nv)
        elif op <= OP_RSI_OF:
            _elementwise2(op, c, regs, sel, nv)
        elif op <= OP_LOSS:
            _elementwise1(op, c, fp, regs, sel, nv)
        elif op <= OP_WILLR:
            _elementwise3(op, c, regs, sel, nv)
        elif op <= OP_LOGRET:
            _lagged(op, c, regs, fs, count, sel, nv)
        elif op == OP_SUM:
            _rolling_sum(c, fp, regs, fs, ist, count, sel, nv)
        elif op == OP_MOMENTS:
            _moments(c, regs, fs, ist, count, sel, nv)
        elif op in (OP_MIN, OP_MAX):
            _extremum(op, c, regs, fs, ist, count, sel, nv)
        elif op == OP_WMA:
            _wma(c, regs, fs, ist, count, sel, nv)
        elif op in (OP_EMA, OP_WILDER):
            _smoothed(op, c, fp, regs, fs, ist, sel, nv)
        elif op == OP_MACD:
            _macd(c, fp, regs, fs, ist, count, sel, nv)
        elif op == OP_DMI:
            _dmi(c, regs, fs, count, sel, nv)
        elif op == OP_OBV:
            _obv(c, regs, fs, count, sel, nv)
        elif op == OP_CCI:
            _cci(c, regs, fs, ist, count, sel, nv)
        else:  # OP_USER
            _user(c, regs, ustate, ist, sel, nv, user_addr, user_meta, user_params, user_init, scratch)


@njit
def _valid(o, h, l, c, v):
    return _finite(o) and _finite(h) and _finite(l) and _finite(c) and _finite(v)


@njit
def _take_bar(i, o, h, l, c, v, ext_row, regs, count):
    """Symbol i has a bar: count it and load its inputs into registers 0.. (OHLCV, externals)."""
    count[i] += 1
    regs[0, i] = o
    regs[1, i] = h
    regs[2, i] = l
    regs[3, i] = c
    regs[4, i] = v
    for e in range(ext_row.shape[0]):
        regs[N_INPUTS + e, i] = ext_row[e]


@njit(cache=True, error_model="numpy")
def update_bar(
    o, h, l, c, v, ext, code, fparams, feature_regs, regs, fs, ist, count, sel, out, stale,
    ustate, user_addr, user_meta, user_params, user_init, scratch,
):  # fmt: skip
    """One bar for every symbol: o..v float64 (n,), ext float64 (n, n_external) (NaN = missing).

    A symbol with a non-finite open/high/low/close/volume keeps its state and gets
    ``stale[i] = True``; every row of ``out`` is then rewritten from the registers through
    ``feature_regs``, so a bar of missing values only rewrites ``out``. No allocation.
    """
    nv = 0
    for i in range(c.shape[0]):
        if _valid(o[i], h[i], l[i], c[i], v[i]):
            _take_bar(i, o[i], h[i], l[i], c[i], v[i], ext[i], regs, count)
            sel[nv] = i
            nv += 1
            stale[i] = False
        else:
            stale[i] = True
    _run(code, fparams, regs, fs, ist, count, sel, nv, ustate, user_addr, user_meta, user_params, user_init, scratch)
    for i in range(out.shape[0]):
        for j in range(feature_regs.shape[0]):
            out[i, j] = regs[feature_regs[j], i]


@njit(cache=True, error_model="numpy")
def update_series(
    i, o, h, l, c, v, ext, code, fparams, feature_regs, regs, fs, ist, count, sel, out, record,
    ustate, user_addr, user_meta, user_params, user_init, scratch,
):  # fmt: skip
    """Feed symbol i a whole history: o..v float64 (T,), ext float64 (T, n_external), oldest
    first; write its last features into out[i] and, when ``record`` has T rows, every bar's
    features into record[b] (a missing bar repeats the row before). Returns True when the last
    bar was missing."""
    stale = True
    sel[0] = i
    keep = record.shape[0] == c.shape[0]
    for b in range(c.shape[0]):
        stale = not _valid(o[b], h[b], l[b], c[b], v[b])
        if not stale:
            _take_bar(i, o[b], h[b], l[b], c[b], v[b], ext[b], regs, count)
            _run(
                code,
                fparams,
                regs,
                fs,
                ist,
                count,
                sel,
                1,
                ustate,
                user_addr,
                user_meta,
                user_params,
                user_init,
                scratch,
            )
        if keep:
            for j in range(feature_regs.shape[0]):
                record[b, j] = regs[feature_regs[j], i]
    for j in range(feature_regs.shape[0]):
        out[i, j] = regs[feature_regs[j], i]
    return stale


def warmup() -> None:
    """Compile both entry points (float32 and float64 outputs) on an empty program; with numba's
    on-disk cache warm this only loads them. The interpreter is one function for every program,
    so this covers every instruction."""
    n = 1
    bar = np.ones(n)
    code = np.zeros((0, N_CODE), dtype=np.int64)
    fparams = np.zeros((0, N_FPARAMS))
    feature_regs = np.zeros(1, dtype=np.int64)
    regs = np.zeros((N_INPUTS, n))
    fs = np.zeros((0, n))
    ist = np.zeros((0, n), dtype=np.int64)
    user = (np.zeros((n, 0)), np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.int64), np.zeros((0, 1)))
    user_init = np.zeros((0, 1))
    scratch = np.zeros(3)
    for dtype in (np.float32, np.float64):
        count = np.zeros(n, dtype=np.int64)
        sel = np.zeros(n, dtype=np.int64)
        out = np.zeros((n, 1), dtype=dtype)
        stale = np.zeros(n, dtype=np.bool_)
        ext = np.zeros((n, 0))
        update_bar(
            bar,
            bar,
            bar,
            bar,
            bar,
            ext,
            code,
            fparams,
            feature_regs,
            regs,
            fs,
            ist,
            count,
            sel,
            out,
            stale,
            *user,
            user_init,
            scratch,
        )
        record = np.zeros((n, 1))
        update_series(
            0,
            bar,
            bar,
            bar,
            bar,
            bar,
            ext,
            code,
            fparams,
            feature_regs,
            regs,
            fs,
            ist,
            count,
            sel,
            out,
            record,
            *user,
            user_init,
            scratch,
        )
