"""One pass over a batch before a graph reads it: the float32 copy the graph needs, and whether
any value is NaN or ±inf there (a float64 beyond float32's range becomes inf).

numpy needs three passes and two temporaries for the same (``astype``, ``isfinite``, ``all``);
on 65,536 × 16 rows that was half of a linear model's whole predict.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FLT_MAX = np.float32(np.finfo(np.float32).max)


@njit(cache=True, nogil=True)
def to_float32_counting_nonfinite(src, dst):
    """``dst[i] = float32(src[i])`` over flat arrays; returns how many ``dst`` values are NaN/inf."""
    bad = 0
    for i in range(src.size):
        v = np.float32(src[i])
        dst[i] = v
        bad += not (abs(v) <= _FLT_MAX)  # NaN compares false
    return bad


@njit(cache=True, nogil=True)
def count_nonfinite_float32(src):
    """How many values of the flat array ``src`` are NaN/inf once read as float32."""
    bad = 0
    for i in range(src.size):
        bad += not (abs(np.float32(src[i])) <= _FLT_MAX)
    return bad


# What the kernels are compiled for; anything else (float16, longdouble, non-native byte order,
# narrow integers) is widened to float64 first, which float32 then reads the same.
_KERNEL_DTYPES = {np.dtype(t) for t in (np.float64, np.float32, np.int64)}


def _kernel_input(X: np.ndarray) -> np.ndarray:
    X = np.ascontiguousarray(X)
    return X if X.dtype in _KERNEL_DTYPES else X.astype(np.float64)


def float32_screened(X: np.ndarray) -> tuple[np.ndarray, int]:
    """``X`` as a C-ordered float32 array (itself when it already is one) and its NaN/inf count."""
    X = _kernel_input(X)
    if X.dtype == np.float32:
        return X, int(count_nonfinite_float32(X.reshape(-1)))
    out = np.empty(X.shape, dtype=np.float32)
    return out, int(to_float32_counting_nonfinite(X.reshape(-1), out.reshape(-1)))


def nonfinite_count(X: np.ndarray) -> int:
    """How many values of ``X`` are NaN/inf once read as float32 (no copy for the usual dtypes)."""
    return int(count_nonfinite_float32(_kernel_input(X).reshape(-1)))


def warmup() -> None:
    """Compile for the dtypes callers hand in (float64, float32, int64)."""
    for dtype in (np.float64, np.float32, np.int64):
        float32_screened(np.zeros((1, 1), dtype=dtype))
        nonfinite_count(np.zeros(1, dtype=dtype))
