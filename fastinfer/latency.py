"""A fixed-size latency histogram: record per-bar timings forever, read percentiles any time."""

from __future__ import annotations

import math

import numpy as np

_LO_NS = 100.0  # bins start at 100 ns
_RATIO = 1.02  # 2 % wide bins: percentiles good to ~1 %
_N_BINS = int(math.log(1e11 / _LO_NS) / math.log(_RATIO)) + 2  # up to 100 s


def format_duration(seconds: float) -> str:
    """``0.000379`` → ``379.00 µs``: the largest unit that keeps the number ≥ 1."""
    for unit, factor in (("s", 1.0), ("ms", 1e3), ("µs", 1e6)):
        if seconds * factor >= 1.0:
            return f"{seconds * factor:,.2f} {unit}"
    return f"{seconds * 1e9:,.0f} ns"


def median_us(fn, repeat: int = 31) -> float:
    """Median wall time of ``fn()`` in microseconds over ``repeat`` calls, after one warm-up call
    (first-call costs — allocation, a thread pool starting — are not the steady state)."""
    import time

    fn()
    times = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter_ns()
        fn()
        times[i] = time.perf_counter_ns() - start
    return float(np.median(times)) / 1e3


class LatencyHistogram:
    """Log-spaced bins (2 % wide, 100 ns … 100 s); ``record`` is O(1) and allocates no arrays."""

    def __init__(self) -> None:
        self.counts = np.zeros(_N_BINS, dtype=np.int64)
        self.count = 0
        self.max_ns = 0.0
        self.total_ns = 0.0

    def record(self, ns: float) -> None:
        i = 0 if ns <= _LO_NS else min(_N_BINS - 1, int(math.log(ns / _LO_NS) / math.log(_RATIO)) + 1)
        self.counts[i] += 1
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    def percentile(self, q: float) -> float:
        """Upper edge of the bin holding the q-th percentile, in ns (NaN when empty)."""
        if self.count == 0:
            return float("nan")
        rank = math.ceil(q / 100.0 * self.count)
        i = int(np.searchsorted(np.cumsum(self.counts), max(rank, 1)))
        return min(_LO_NS * _RATIO**i, self.max_ns)

    def summary(self) -> dict[str, float]:
        """p50 / p99 / p99.9 / max / mean in microseconds, and the count."""
        us = 1e-3
        return {
            "count": self.count,
            "p50_us": self.percentile(50) * us,
            "p99_us": self.percentile(99) * us,
            "p99.9_us": self.percentile(99.9) * us,
            "max_us": self.max_ns * us,
            "mean_us": (self.total_ns / self.count * us) if self.count else float("nan"),
        }

    def reset(self) -> None:
        self.counts[:] = 0
        self.count, self.max_ns, self.total_ns = 0, 0.0, 0.0
