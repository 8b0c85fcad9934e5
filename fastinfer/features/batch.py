"""Batch execution of a ``FeatureProgram`` over whole series: every feature for every bar.

``run_batch(program, inputs)`` takes each input as an (n_symbols, T) float64 array whose row s
holds symbol s's *valid* bars (open, high, low, close, volume all finite) in time order,
NaN-padded after its last one, and returns (n_symbols, T, n_features). Nodes run in program
order, each over all symbols at once: elementwise ops and lags with numpy, windowed and
recursive ops with the batch kernels (``fastinfer.kernels.feature_batch``), user primitives
with their registered ``batch`` reference per finite run. An intermediate array is freed after
its last reader.

``FeatureBuilder`` and ``fastinfer features build`` map DataFrames (gaps, a symbol column) onto
this; ``StreamingFeatures`` runs the same program incrementally.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..kernels import feature_batch as B
from ..kernels import feature_program as K
from . import primitives
from .errors import FeatureDefinitionError
from .graph import OHLCV, Node, Ref
from .program import FeatureProgram


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    if k < x.shape[1]:
        out[:, k:] = x[:, : x.shape[1] - k]
    return out


def _elementwise(op: int, a: list[np.ndarray], fp: tuple[float, ...]) -> np.ndarray:
    """The kernel's elementwise ops, value for value (same NaN and zero conventions)."""
    x = a[0]
    if op == K.OP_ADD:
        return x + a[1]
    if op == K.OP_SUB:
        return x - a[1]
    if op == K.OP_MUL:
        return x * a[1]
    if op == K.OP_DIV:
        return x / a[1]
    if op == K.OP_MIN2:
        return np.minimum(x, a[1])
    if op == K.OP_MAX2:
        return np.maximum(x, a[1])
    if op == K.OP_SEL_POS:
        return np.where(x > 0.0, a[1], np.where(np.isnan(x), np.nan, 0.0))
    if op == K.OP_SEL_NEG:
        return np.where(x < 0.0, a[1], np.where(np.isnan(x), np.nan, 0.0))
    if op == K.OP_RSI_OF:
        total = x + a[1]
        return np.where(total == 0.0, 50.0, 100.0 * (x / total))
    if op == K.OP_NEG:
        return -x
    if op == K.OP_ABS:
        return np.abs(x)
    if op == K.OP_SIGN:
        return np.where(x > 0.0, 1.0, np.where(x < 0.0, -1.0, x))
    if op == K.OP_LOG:
        return np.log(x)
    if op == K.OP_EXP:
        return np.exp(x)
    if op == K.OP_SQRT:
        return np.sqrt(x)
    if op == K.OP_CLIP:
        return np.where(x < fp[0], fp[0], np.where(x > fp[1], fp[1], x))
    if op == K.OP_GAIN:
        return np.where(x > 0.0, x, np.where(np.isnan(x), np.nan, 0.0))
    if op == K.OP_LOSS:
        return np.where(x < 0.0, -x, np.where(np.isnan(x), np.nan, 0.0))
    if op == K.OP_RATIO:
        return np.where(a[1] == 0.0, a[2], x / a[1])
    if op == K.OP_TRUE_RANGE:
        h, lo, pc = a
        return np.where(np.isnan(pc), np.nan, np.maximum(np.maximum(h - lo, np.abs(h - pc)), np.abs(lo - pc)))
    if op == K.OP_STOCH:
        c, ll, hh = a
        return np.where(hh == ll, 50.0, 100.0 * ((c - ll) / (hh - ll)))
    if op == K.OP_WILLR:
        c, ll, hh = a
        return np.where(hh == ll, -50.0, -100.0 * ((hh - c) / (hh - ll)))
    raise AssertionError(f"not an elementwise op: {op}")


def _lagged(op: int, x: np.ndarray, k: int) -> np.ndarray:
    base = _shift(x, k)
    if op == K.OP_LAG:
        return base
    if op == K.OP_DIFF:
        return x - base
    if op == K.OP_PCT:
        return (x - base) / base
    return np.log(x / base)


def _user(node: Node, args: list[np.ndarray]) -> np.ndarray:
    """A user primitive: its batch reference on every finite run of its inputs, NaN for the
    first ``warmup`` values of each run (the incremental rule)."""
    prim = primitives.user_primitive(node.name)
    params = dict(zip(prim.params, node.fparams))
    warmup = prim.warmup(node.fparams)
    out = np.full(args[0].shape, np.nan)
    finite = np.logical_and.reduce([np.isfinite(a) for a in args])
    for s in range(finite.shape[0]):
        row = finite[s]
        edges = np.flatnonzero(np.diff(np.concatenate([[False], row, [False]]).astype(np.int8)))
        for lo, hi in zip(edges[::2], edges[1::2]):
            values = np.asarray(prim.batch(*(a[s, lo:hi].copy() for a in args), **params), dtype=np.float64)
            if values.shape != (hi - lo,):
                raise FeatureDefinitionError(
                    f"{node.name}: batch returned shape {values.shape} for {hi - lo} input values"
                )
            values = values.copy()
            values[:warmup] = np.nan
            out[s, lo:hi] = values
    return out


def _node(node: Node, args: list[np.ndarray]) -> list[np.ndarray]:
    op = node.op
    if node.kind == "user":
        return [_user(node, args)]
    if op <= K.OP_WILLR:
        with np.errstate(all="ignore"):
            return [_elementwise(op, args, node.fparams)]
    if op <= K.OP_LOGRET:
        with np.errstate(all="ignore"):
            return [_lagged(op, args[0], node.iparams[0])]
    x = np.ascontiguousarray(args[0])
    n = node.iparams[0] if node.iparams else 0
    if op == K.OP_SUM:
        return [B.rolling_sum(x, n, node.fparams[0])]
    if op == K.OP_MOMENTS:
        return list(B.rolling_moments(x, n))
    if op in (K.OP_MIN, K.OP_MAX):
        return [B.rolling_extremum(x, n, op == K.OP_MIN)]
    if op == K.OP_WMA:
        return [B.wma(x, n)]
    if op in (K.OP_EMA, K.OP_WILDER):
        return [B.smoothed(x, n, node.fparams[0] if node.fparams else 0.0, op == K.OP_WILDER)]
    if op == K.OP_MACD:
        return [B.macd(x, node.iparams[0], node.iparams[1], node.fparams[0], node.fparams[1])]
    if op == K.OP_DMI:
        return list(B.dmi(*(np.ascontiguousarray(a) for a in args), n))
    if op == K.OP_OBV:
        return [B.obv(x, np.ascontiguousarray(args[1]))]
    if op == K.OP_CCI:
        return [B.cci(x, n)]
    raise AssertionError(f"no batch execution for op {op}")


def run_batch(program: FeatureProgram, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Every feature of every bar: (n_symbols, T, n_features) float64.

    ``inputs``: open, high, low, close, volume and every external column as (n_symbols, T)
    float64 arrays (see the module docstring for the layout).
    """
    names = (*OHLCV, *program.externals)
    missing = [k for k in names if k not in inputs]
    if missing:
        raise FeatureDefinitionError(f"batch inputs missing: {missing}")
    shape = np.shape(inputs["close"])
    if len(shape) != 2:
        raise FeatureDefinitionError(f"batch inputs must be (n_symbols, T) arrays, got shape {shape}")
    last_use: dict[Ref, int] = {}
    for k, node in enumerate(program.nodes):
        for ref in node.inputs:
            last_use[ref] = k
    keep = set(program.outputs)
    values: dict[Ref, np.ndarray] = {}
    for k, node in enumerate(program.nodes):
        if node.kind == "input":
            a = np.asarray(inputs[node.name], dtype=np.float64)
            if a.shape != shape:
                raise FeatureDefinitionError(f"batch input {node.name!r} has shape {a.shape}, close has {shape}")
            values[Ref(k)] = a
        elif node.kind == "const":
            values[Ref(k)] = np.full(shape, node.value)
        else:
            results = _node(node, [values[r] for r in node.inputs])
            for port, a in enumerate(results):
                values[Ref(k, port)] = a
            for ref in set(node.inputs):
                if last_use.get(ref) == k and ref not in keep:
                    del values[ref]
    out = np.empty((*shape, len(program.features)), dtype=np.float64)
    for j, ref in enumerate(program.outputs):
        out[:, :, j] = values[ref]
    return out
