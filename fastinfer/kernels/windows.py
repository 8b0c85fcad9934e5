"""Sequence windows for a whole history at once, by the live sequence buffers' rules.

For rows of one or many symbols in time order, ``windows`` gives every row the (T, F) window
a live ``SeqBufferManager`` would hand its sequence model at that bar, and whether the model
would be ready: a row enters its symbol's ring only when its bar is present and every value is
finite (a warming-up or missing row adds nothing); the window is the last T rows entered,
oldest first, front-padded while fewer than T are in (copies of the oldest row, or zeros);
ready once ``warmup`` rows are in and the bar itself is present.

State (``ring``, ``counts``) carries over between calls, so a long history runs in chunks.
Leaf module: imports nothing from the rest of fastinfer.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def windows(rows, symbol, present, ring, counts, repeat_first, warmup, out, ready):
    """rows (n, F) float32; symbol (n,) int64 ring index; present (n,) bool; ring (S, T, F)
    float32 and counts (S,) int64 (state); out (n, T, F) float32 and ready (n,) bool written."""
    n, width = rows.shape
    T = ring.shape[1]
    for i in range(n):
        s = symbol[i]
        if present[i]:
            finite = True
            for u in range(width):
                if not np.isfinite(rows[i, u]):
                    finite = False
                    break
            if finite:
                slot = counts[s] % T
                for u in range(width):
                    ring[s, slot, u] = rows[i, u]
                counts[s] += 1
        c = counts[s]
        k = min(c, T)
        pad = T - k
        oldest = (c - k) % T
        for j in range(pad):
            for u in range(width):
                out[i, j, u] = ring[s, oldest, u] if repeat_first and k > 0 else 0.0
        for j in range(k):
            src = (c - k + j) % T
            for u in range(width):
                out[i, pad + j, u] = ring[s, src, u]
        ready[i] = present[i] and c >= warmup


def warmup() -> None:
    rows = np.ones((2, 3), dtype=np.float32)
    ring = np.zeros((1, 4, 3), dtype=np.float32)
    out = np.zeros((2, 4, 3), dtype=np.float32)
    windows(
        rows,
        np.zeros(2, dtype=np.int64),
        np.ones(2, dtype=np.bool_),
        ring,
        np.zeros(1, dtype=np.int64),
        True,
        1,
        out,
        np.zeros(2, dtype=np.bool_),
    )
