"""Kernel helper: a row's per-target sums to its outputs, as ONNX Runtime 1.32 CPU computes them.

* ``tree_ensemble_aggregator.h`` FinalizeScores1 (one target): ``(sum [/ n_trees]) + origin``
  (MIN/MAX: origin alone when no tree scored); **no post-transform** is applied to one target
  (ORT applies only PROBIT there, which is refused), so LOGISTIC/SOFTMAX on one target are no-ops.
* FinalizeScores (several targets): ``sum [/ n_trees] + base[j]`` (base only when there is one
  per target); a target no reached leaf scored reads as 0 (ORT's ``ScoreValue`` cast), then
  ``ml_common.h`` write_scores: ComputeLogistic / ComputeSoftmax / ComputeSoftmaxZero in float32
  with ``std::exp`` (glibc ``expf``, which numba's float32 ``np.exp`` calls too).
* The graph's ``Exp`` node: ORT's ``Exp<float>`` runs MLAS ``MlasComputeExp``, a polynomial, not
  ``expf``; both of MLAS's x86 kernels are reproduced operation by operation (`mlas_exp`).
* The graph's ``Sigmoid`` node: MLAS ``MlasComputeLogistic`` (a rational polynomial, FMA3 kernel on
  x86-64), reproduced operation by operation (`mlas_logistic`).
* The binary tail ``Sub(1, p)`` + ``Concat``: ``[1 - p, p]``, one float32 subtraction.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .codes import (
    AGG_AVERAGE,
    AGG_MIN,
    EXP_SCALEF,
    FCONST_BASE,
    FCONST_N_TREES,
    FCONST_ORIGIN,
    FIN_AGGREGATE,
    FIN_BINARY,
    FIN_EXP_VARIANT,
    FIN_LINK,
    FIN_N_TARGETS,
    FIN_POST_TRANSFORM,
    FIN_USE_BASE,
    LINK_EXP,
    LINK_IDENTITY,
    LINK_SIGMOID,
    POST_LOGISTIC,
    POST_SOFTMAX,
    POST_SOFTMAX_ZERO,
)

_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_FLT_MAX = np.float32(np.finfo(np.float32).max)
_SOFTMAX_ZERO_EPS = np.float32(0.0000001)  # ComputeSoftmaxZero's "is zero" band


@intrinsic
def fma32(typingctx, a, b, c):
    """a * b + c in float32 with one rounding (llvm.fma: vfmadd where the CPU has FMA)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _f32_bits(typingctx, x):
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def _bits_f32(typingctx, x):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


# MlasExpConstants (onnxruntime/core/mlas/lib/compute.cpp)
_LOWER_RANGE = np.float32(-103.9720840454)
_UPPER_RANGE = np.float32(88.7762626647950)
_ROUNDING_BIAS = np.float32(12582912.0)  # MLAS_ROUNDING_BIAS_MAGIC, 1.5 * 2^23
_LOG2_RECIPROCAL = np.float32(1.44269504088896341)
_LOG2_HIGH = np.float32(-6.93145752e-1)
_LOG2_LOW = np.float32(-1.42860677e-6)
_POLY_0 = np.float32(float.fromhex("0x1.694000p-10"))
_POLY_1 = np.float32(float.fromhex("0x1.125edcp-7"))
_POLY_2 = np.float32(float.fromhex("0x1.555b5ap-5"))
_POLY_3 = np.float32(float.fromhex("0x1.555450p-3"))
_POLY_4 = np.float32(float.fromhex("0x1.fffff6p-2"))
_POLY_56 = np.float32(1.0)
_MIN_EXPONENT = np.int32(-0x3F000000)  # int32(0xC1000000): 2^-126 once biased
_MAX_EXPONENT = np.int32(0x3F800000)  # the bits of 1.0f
_SCALEF_CAP = 300  # any larger exponent overflows float32 as vscalefps does


@njit(cache=True, nogil=True, inline="always")
def mlas_exp(x, variant):
    """ORT's float32 ``Exp`` op: MlasComputeExpF32KernelAvx512F (SCALEF) or ...Fma3 (TWO_SCALE).

    Both clamp, reduce ``x = m ln2 + r`` with two FMAs, evaluate the same degree-6 polynomial
    with FMAs and rebuild ``2^m``: AVX-512 with one ``vscalefps`` (emulated as an exact float64
    product rounded once to float32), FMA3 with two exponent factors so the result stays exact
    down to the subnormals. Checked against ORT's own Exp on every float32 in the tests.
    """
    if variant == EXP_SCALEF:
        if x == np.inf:  # ORT returns +inf here (the lanes' NaN arithmetic aside)
            return x
        v = x if (x != x or x > _LOWER_RANGE) else _LOWER_RANGE  # vmaxps keeps a NaN input
    else:
        v = x if (x != x or x > _LOWER_RANGE) else _LOWER_RANGE
        v = v if (v != v or v < _UPPER_RANGE) else _UPPER_RANGE
    biased = fma32(v, _LOG2_RECIPROCAL, _ROUNDING_BIAS)
    m = biased - _ROUNDING_BIAS
    v = fma32(m, _LOG2_HIGH, v)
    v = fma32(m, _LOG2_LOW, v)
    p = fma32(_POLY_0, v, _POLY_1)
    p = fma32(p, v, _POLY_2)
    p = fma32(p, v, _POLY_3)
    p = fma32(p, v, _POLY_4)
    p = fma32(p, v, _POLY_56)
    if variant == EXP_SCALEF:
        p = fma32(p, v, _POLY_56)
        if m != m:
            return p
        e = np.int64(min(m, np.float32(_SCALEF_CAP)))
        return np.float32(np.float64(p) * math.ldexp(1.0, e))
    shifted = np.int32(_f32_bits(biased) << np.int32(23))
    normal = min(max(shifted, _MIN_EXPONENT), _MAX_EXPONENT)
    overflow = _bits_f32(np.int32(shifted - normal + _MAX_EXPONENT))
    scale = _bits_f32(np.int32(normal + _MAX_EXPONENT))
    v = v * overflow
    p = fma32(p, v, overflow)
    return p * scale


# MlasLogisticConstants (onnxruntime/core/mlas/lib/logistic.cpp, Eigen's rational approximation)
_LOGISTIC_RANGE = np.float32(18.0)
_ALPHA_9 = np.float32(4.37031012579801e-11)
_ALPHA_7 = np.float32(1.15627324459942e-07)
_ALPHA_5 = np.float32(6.08574864600143e-05)
_ALPHA_3 = np.float32(8.51377133304701e-03)
_ALPHA_1 = np.float32(2.48287947061529e-01)
_BETA_10 = np.float32(6.10247389755681e-13)
_BETA_8 = np.float32(5.76102136993427e-09)
_BETA_6 = np.float32(6.29106785017040e-06)
_BETA_4 = np.float32(1.70198817374094e-03)
_BETA_2 = np.float32(1.16817656904453e-01)
_BETA_0 = np.float32(9.93151921023180e-01)
_HALF = np.float32(0.5)


@njit(cache=True, nogil=True, inline="always")
def mlas_logistic(x):
    """ORT's float32 ``Sigmoid`` op: MlasComputeLogisticF32KernelFma3, operation by operation.

    Clamp to [-18, 18], x * p(x^2) / q(x^2) + 0.5 with both polynomials evaluated by FMAs,
    then max(0, .) (vmaxps keeps a NaN). Checked against ORT's Sigmoid on every float32.
    """
    v = x if (x != x or x > -_LOGISTIC_RANGE) else -_LOGISTIC_RANGE
    v = v if (v != v or v < _LOGISTIC_RANGE) else _LOGISTIC_RANGE
    x2 = v * v
    p = fma32(x2, _ALPHA_9, _ALPHA_7)
    p = fma32(x2, p, _ALPHA_5)
    p = fma32(x2, p, _ALPHA_3)
    p = fma32(x2, p, _ALPHA_1)
    q = fma32(x2, _BETA_10, _BETA_8)
    q = fma32(x2, q, _BETA_6)
    q = fma32(x2, q, _BETA_4)
    q = fma32(x2, q, _BETA_2)
    q = fma32(x2, q, _BETA_0)
    r = (v * p) / q + _HALF
    return r if (r != r or r > _ZERO) else _ZERO


@njit(cache=True, nogil=True, inline="always")
def _link(v, link, variant):
    if link == LINK_EXP:
        return mlas_exp(v, variant)
    if link == LINK_SIGMOID:
        return mlas_logistic(v)
    return v


@njit(cache=True, nogil=True, inline="always")
def compute_logistic(v):
    """ml_common.h ComputeLogistic, float32."""
    e = _ONE / (_ONE + np.exp(-abs(v)))
    return _ONE - e if v < _ZERO else e


@njit(cache=True, nogil=True)
def _softmax(out, r, K, zero_band):
    """ml_common.h ComputeSoftmax (zero_band False) or ComputeSoftmaxZero (True), in place on out[r]."""
    v_max = -_FLT_MAX
    for j in range(K):
        if out[r, j] > v_max:
            v_max = out[r, j]
    total = _ZERO
    if zero_band:
        exp_neg_max = np.exp(-v_max)
        for j in range(K):
            v = out[r, j]
            if v > _SOFTMAX_ZERO_EPS or v < -_SOFTMAX_ZERO_EPS:
                out[r, j] = np.exp(v - v_max)
                total += out[r, j]
            else:
                out[r, j] = v * exp_neg_max
    else:
        for j in range(K):
            out[r, j] = np.exp(out[r, j] - v_max)
            total += out[r, j]
    for j in range(K):
        out[r, j] = out[r, j] / total


@njit(cache=True, nogil=True, inline="always")
def finish_rows(sums, has, out, r0, n, fin, fconst):
    """out[r0 + i] = the graph's output for rows i = 0..n-1 whose per-target tree sums are
    ``sums[i * K : (i + 1) * K]``.

    ``has[j]``: some reached leaf scored target j (ORT's ``has_score``). A whole block per call,
    indexed in place: a per-row call on row views cost ~40 ns a row in reference counting.
    """
    K = np.int64(fin[FIN_N_TARGETS])
    agg = fin[FIN_AGGREGATE]
    link = fin[FIN_LINK]
    variant = fin[FIN_EXP_VARIANT]
    post = fin[FIN_POST_TRANSFORM]
    use_base = fin[FIN_USE_BASE] != 0
    for i in range(n):
        r = r0 + i
        if K == 1:
            s = sums[i]
            if agg == AGG_AVERAGE:
                s = s / fconst[FCONST_N_TREES]
            if agg >= AGG_MIN and not has[0]:
                s = fconst[FCONST_ORIGIN]
            else:
                s = s + fconst[FCONST_ORIGIN]
            s = _link(s, link, variant)
            if fin[FIN_BINARY]:
                out[r, 0] = _ONE - s
                out[r, 1] = s
            else:
                out[r, 0] = s
            continue
        for j in range(K):
            s = sums[i * K + j]
            if not has[j]:
                s = _ZERO
            elif agg >= AGG_MIN:
                s = (fconst[FCONST_BASE + j] if use_base else _ZERO) + s
            else:
                if agg == AGG_AVERAGE:
                    s = s / fconst[FCONST_N_TREES]
                if use_base:
                    s = s + fconst[FCONST_BASE + j]
            out[r, j] = s
        if post == POST_LOGISTIC:
            for j in range(K):
                out[r, j] = compute_logistic(out[r, j])
        elif post in (POST_SOFTMAX, POST_SOFTMAX_ZERO):
            _softmax(out, r, K, post == POST_SOFTMAX_ZERO)
        if link != LINK_IDENTITY:
            for j in range(K):
                out[r, j] = _link(out[r, j], link, variant)
