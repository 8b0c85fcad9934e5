"""The functions an expression may call: built-in primitives and indicators, and user primitives.

Every function is one ``Function`` entry: its series arguments, its constant parameters
(``bars``: a whole number of bars, a duration such as ``10d`` allowed; ``number``: any finite
number; ``ddof``: 0 or 1) and ``lower``, which adds its operations to the DAG. Indicators are
compositions of primitives, so ``rsi(close, 14)`` and ``rsi_sma(close, 14)`` share their
gains and losses, and ``atr(14)`` and ``natr(14)`` one true range.

User primitives (``register_primitive``) are registered into the same table: once
registered, a name is usable in expressions and definitions like a built-in.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..kernels import feature_program as K
from .errors import FeatureDefinitionError
from .graph import Graph, Ref

MAX_WINDOW = 20_000  # bars; a ring of this many values per symbol is the memory bound


@dataclass(frozen=True)
class Param:
    """A constant argument. ``kind``: "bars", "number" or "ddof"; ``default`` None = required."""

    name: str
    kind: str = "bars"
    default: float | None = None


@dataclass(frozen=True)
class Function:
    """A callable name in expressions."""

    name: str
    series: tuple[str, ...]
    params: tuple[Param, ...]
    lower: Callable[..., Ref] = field(repr=False)
    formula: str = ""
    convention: str = ""
    user: bool = False

    @property
    def signature(self) -> str:
        args = [*self.series, *(p.name if p.default is None else f"{p.name}={p.default:g}" for p in self.params)]
        return f"{self.name}({', '.join(args)})"


# ---------------------------------------------------------------- lowering helpers


def _add(g: Graph, a: Ref, b: Ref) -> Ref:
    return g.op1(K.OP_ADD, a, b)


def _sub(g: Graph, a: Ref, b: Ref) -> Ref:
    return g.op1(K.OP_SUB, a, b)


def _mul(g: Graph, a: Ref, b: Ref) -> Ref:
    return g.op1(K.OP_MUL, a, b)


def _div(g: Graph, a: Ref, b: Ref) -> Ref:
    return g.op1(K.OP_DIV, a, b)


def _ratio(g: Graph, a: Ref, b: Ref, fallback: Ref) -> Ref:
    return g.op1(K.OP_RATIO, a, b, fallback)


def _typical(g: Graph) -> Ref:
    """(high + low + close) / 3, in TA-Lib's order."""
    hl = _add(g, g.input("high"), g.input("low"))
    return _div(g, _add(g, hl, g.input("close")), g.const(3.0))


def _true_range(g: Graph) -> Ref:
    prev = g.op1(K.OP_LAG, g.input("close"), iparams=(1,))
    return g.op1(K.OP_TRUE_RANGE, g.input("high"), g.input("low"), prev)


def _moments(g: Graph, x: Ref, n: int) -> tuple[Ref, Ref]:
    mean, ss = g.op(K.OP_MOMENTS, (x,), (n,))
    return mean, ss


def _var(g: Graph, x: Ref, n: int, ddof: int) -> Ref:
    if n <= ddof:
        raise ValueError(f"a variance with ddof {ddof} needs a window of more than {ddof} bar(s), got {n}")
    _, ss = _moments(g, x, n)
    return _div(g, ss, g.const(n - ddof))


def _std(g: Graph, x: Ref, n: int, ddof: int) -> Ref:
    return g.op1(K.OP_SQRT, _var(g, x, n, ddof))


def _gains_losses(g: Graph, x: Ref) -> tuple[Ref, Ref]:
    d = g.op1(K.OP_DIFF, x, iparams=(1,))
    return g.op1(K.OP_GAIN, d), g.op1(K.OP_LOSS, d)


def _bands(g: Graph, x: Ref, n: int, k: float, ddof: int) -> tuple[Ref, Ref, Ref]:
    """(mid, upper, lower): mean ± k std over n (the band of ``bb_*``)."""
    mean, _ = _moments(g, x, n)
    spread = _mul(g, g.const(k), _std(g, x, n, ddof))
    return mean, _add(g, mean, spread), _sub(g, mean, spread)


def _macd_line(g: Graph, x: Ref, fast: int, slow: int) -> Ref:
    if fast >= slow:
        raise ValueError(f"fast ({fast}) must be shorter than slow ({slow})")
    return g.op1(K.OP_MACD, x, iparams=(fast, slow), fparams=(2.0 / (fast + 1), 2.0 / (slow + 1)))


def _macd_signal(g: Graph, x: Ref, fast: int, slow: int, signal: int) -> Ref:
    return _ema(g, _macd_line(g, x, fast, slow), signal)


def _ema(g: Graph, x: Ref, n: int) -> Ref:
    return g.op1(K.OP_EMA, x, iparams=(n,), fparams=(2.0 / (n + 1),))


def _dmi(g: Graph, n: int) -> tuple[Ref, ...]:
    if n < 2:
        raise ValueError(f"the period must be at least 2 bars, got {n}")
    return g.op(K.OP_DMI, (g.input("high"), g.input("low"), g.input("close")), (n,))


def _extremes(g: Graph, n: int) -> tuple[Ref, Ref]:
    """(lowest low, highest high) over n bars."""
    return g.op1(K.OP_MIN, g.input("low"), iparams=(n,)), g.op1(K.OP_MAX, g.input("high"), iparams=(n,))


def _stoch_k(g: Graph, n: int) -> Ref:
    low, high = _extremes(g, n)
    return g.op1(K.OP_STOCH, g.input("close"), low, high)


def _rolling_sum(g: Graph, x: Ref, n: int, divisor: float = 1.0) -> Ref:
    return g.op1(K.OP_SUM, x, iparams=(n,), fparams=(divisor,))


def _mfi(g: Graph, n: int) -> Ref:
    tp = _typical(g)
    d = g.op1(K.OP_DIFF, tp, iparams=(1,))
    flow = _mul(g, tp, g.input("volume"))
    up = _rolling_sum(g, g.op1(K.OP_SEL_POS, d, flow), n)
    down = _rolling_sum(g, g.op1(K.OP_SEL_NEG, d, flow), n)
    return g.op1(K.OP_RSI_OF, up, down)


def _zscore(g: Graph, x: Ref, n: int, ddof: int) -> Ref:
    mean, _ = _moments(g, x, n)
    return _ratio(g, _sub(g, x, mean), _std(g, x, n, ddof), g.const(0.0))


def _clip(g: Graph, x: Ref, lo: float, hi: float) -> Ref:
    if lo > hi:
        raise ValueError(f"lo ({lo:g}) is above hi ({hi:g})")
    return g.op1(K.OP_CLIP, x, fparams=(lo, hi))


def _bb(part: str) -> Callable[..., Ref]:
    def lower(g: Graph, x: Ref, n: int, k: float = 2.0, ddof: int = 0) -> Ref:
        mid, upper, lower_ = _bands(g, x, n, k, ddof)
        if part == "upper":
            return upper
        if part == "lower":
            return lower_
        if part == "mid":
            return mid
        width = _sub(g, upper, lower_)
        if part == "pct":  # 0.5 in a zero-width band
            return _ratio(g, _sub(g, x, lower_), width, g.const(0.5))
        return _div(g, width, mid)  # "width": the band's width relative to its middle

    return lower


B = Param  # short spellings for the table below: B("k", "number", 2.0), N the usual window
N = Param("n")


def _fn(name, series, params, lower, formula, convention="") -> Function:
    return Function(name, tuple(series), tuple(params), lower, formula, convention)


_BUILTINS: tuple[Function, ...] = (
    # -------- elementwise
    _fn("log", ["x"], [], lambda g, x: g.op1(K.OP_LOG, x), "ln x"),
    _fn("exp", ["x"], [], lambda g, x: g.op1(K.OP_EXP, x), "e^x"),
    _fn("sqrt", ["x"], [], lambda g, x: g.op1(K.OP_SQRT, x), "√x"),
    _fn("abs", ["x"], [], lambda g, x: g.op1(K.OP_ABS, x), "|x|"),
    _fn("sign", ["x"], [], lambda g, x: g.op1(K.OP_SIGN, x), "-1, 0 or 1"),
    _fn("clip", ["x"], [B("lo", "number"), B("hi", "number")], _clip, "min(max(x, lo), hi)"),
    _fn("min", ["a", "b"], [], lambda g, a, b: g.op1(K.OP_MIN2, a, b), "the smaller of a and b (NaN if either is)"),
    _fn("max", ["a", "b"], [], lambda g, a, b: g.op1(K.OP_MAX2, a, b), "the larger of a and b (NaN if either is)"),
    _fn("ratio", ["a", "b", "fallback"], [], _ratio, "a / b, or fallback where b is exactly 0"),
    # -------- lags
    _fn("lag", ["x"], [N], lambda g, x, n: g.op1(K.OP_LAG, x, iparams=(n,)), "x[t-n]", "pandas shift"),
    _fn("diff", ["x"], [N], lambda g, x, n: g.op1(K.OP_DIFF, x, iparams=(n,)), "x[t] - x[t-n]", "pandas diff"),
    _fn(
        "pct_change",
        ["x"],
        [N],
        lambda g, x, n: g.op1(K.OP_PCT, x, iparams=(n,)),
        "(x[t] - x[t-n]) / x[t-n]",
        "pandas pct_change",
    ),
    _fn("log_return", ["x"], [N], lambda g, x, n: g.op1(K.OP_LOGRET, x, iparams=(n,)), "ln(x[t] / x[t-n])"),
    # -------- rolling windows (NaN while any of the n values is missing)
    _fn("rolling_sum", ["x"], [N], _rolling_sum, "Σ x over the last n bars", "pandas rolling"),
    _fn(
        "rolling_mean",
        ["x"],
        [N],
        lambda g, x, n: _rolling_sum(g, x, n, float(n)),
        "Σ x / n over the last n bars",
        "pandas rolling, TA-Lib SMA",
    ),
    _fn(
        "rolling_var",
        ["x"],
        [N, B("ddof", "ddof", 1)],
        _var,
        "Σ (x - mean)² / (n - ddof)",
        "pandas rolling (ddof 1)",
    ),
    _fn(
        "rolling_std",
        ["x"],
        [N, B("ddof", "ddof", 1)],
        _std,
        "√rolling_var(x, n, ddof)",
        "pandas rolling (ddof 1)",
    ),
    _fn(
        "rolling_zscore",
        ["x"],
        [N, B("ddof", "ddof", 1)],
        _zscore,
        "(x - mean) / std over n (0 when std is 0)",
        "pandas rolling (ddof 1)",
    ),
    _fn(
        "rolling_min",
        ["x"],
        [N],
        lambda g, x, n: g.op1(K.OP_MIN, x, iparams=(n,)),
        "min of the last n",
        "TA-Lib MIN",
    ),
    _fn(
        "rolling_max",
        ["x"],
        [N],
        lambda g, x, n: g.op1(K.OP_MAX, x, iparams=(n,)),
        "max of the last n",
        "TA-Lib MAX",
    ),
    _fn(
        "wma",
        ["x"],
        [N],
        lambda g, x, n: g.op1(K.OP_WMA, x, iparams=(n,)),
        "Σ i·x[t-n+i] / (n(n+1)/2), i = 1..n",
        "TA-Lib WMA",
    ),
    # -------- recursive smoothing (seeded with the mean of the first n values)
    _fn("ema", ["x"], [N], _ema, "e = e + 2/(n+1) (x - e)", "TA-Lib EMA"),
    _fn(
        "wilder",
        ["x"],
        [N],
        lambda g, x, n: g.op1(K.OP_WILDER, x, iparams=(n,)),
        "e = (e (n-1) + x) / n",
        "TA-Lib (RSI, ATR)",
    ),
    # -------- indicators
    _fn("true_range", [], [], _true_range, "max(h - l, |h - c[t-1]|, |l - c[t-1]|)", "TA-Lib TRANGE"),
    _fn(
        "rsi",
        ["x"],
        [N],
        lambda g, x, n: g.op1(K.OP_RSI_OF, *(g.op1(K.OP_WILDER, s, iparams=(n,)) for s in _gains_losses(g, x))),
        "100 G / (G + L), G, L Wilder averages of gains / losses; 50 when both are 0",
        "TA-Lib RSI",
    ),
    _fn(
        "rsi_sma",
        ["x"],
        [N],
        lambda g, x, n: g.op1(K.OP_RSI_OF, *(_rolling_sum(g, s, n) for s in _gains_losses(g, x))),
        "as rsi with plain sums of the last n gains / losses",
        "pandas rolling",
    ),
    _fn(
        "atr",
        [],
        [N],
        lambda g, n: g.op1(K.OP_WILDER, _true_range(g), iparams=(n,)),
        "Wilder average of the true range",
        "TA-Lib ATR",
    ),
    _fn(
        "atr_sma",
        [],
        [N],
        lambda g, n: _rolling_sum(g, _true_range(g), n, float(n)),
        "mean of the last n true ranges",
        "pandas rolling",
    ),
    _fn(
        "natr",
        [],
        [N],
        lambda g, n: _mul(
            g, _div(g, g.op1(K.OP_WILDER, _true_range(g), iparams=(n,)), g.input("close")), g.const(100.0)
        ),
        "atr / close · 100",
        "TA-Lib NATR",
    ),
    _fn(
        "macd",
        ["x"],
        [B("fast", "bars", 12), B("slow", "bars", 26)],
        _macd_line,
        "EMA_fast - EMA_slow, both seeded on the slow EMA's first bar",
        "TA-Lib MACD",
    ),
    _fn(
        "macd_signal",
        ["x"],
        [B("fast", "bars", 12), B("slow", "bars", 26), B("signal", "bars", 9)],
        _macd_signal,
        "ema(macd, signal)",
        "TA-Lib MACD",
    ),
    _fn(
        "macd_hist",
        ["x"],
        [B("fast", "bars", 12), B("slow", "bars", 26), B("signal", "bars", 9)],
        lambda g, x, fast=12, slow=26, signal=9: _sub(
            g, _macd_line(g, x, fast, slow), _macd_signal(g, x, fast, slow, signal)
        ),
        "macd - macd_signal",
        "TA-Lib MACD",
    ),
    *(
        _fn(
            f"bb_{part}",
            ["x"],
            [N, B("k", "number", 2.0), B("ddof", "ddof", 0)],
            _bb(part),
            formula,
            "TA-Lib BBANDS (ddof 0)",
        )
        for part, formula in (
            ("upper", "mean + k std over n"),
            ("lower", "mean - k std over n"),
            ("mid", "mean over n"),
            ("pct", "(x - lower) / (upper - lower); 0.5 when the band has no width"),
            ("width", "(upper - lower) / mid"),
        )
    ),
    _fn(
        "stoch_k",
        [],
        [N],
        _stoch_k,
        "100 (c - lowest low) / (highest high - lowest low) over n; 50 when flat",
        "TA-Lib STOCHF fastk",
    ),
    _fn(
        "stoch_d",
        [],
        [N, B("m", "bars", 3)],
        lambda g, n, m=3: _rolling_sum(g, _stoch_k(g, n), m, float(m)),
        "mean of the last m stoch_k(n)",
        "TA-Lib STOCHF fastd (SMA)",
    ),
    _fn(
        "willr",
        [],
        [N],
        lambda g, n: g.op1(K.OP_WILLR, g.input("close"), *_extremes(g, n)),
        "-100 (highest high - c) / (highest high - lowest low); -50 when flat",
        "TA-Lib WILLR",
    ),
    _fn(
        "cci",
        [],
        [N],
        lambda g, n: g.op1(K.OP_CCI, _typical(g), iparams=(n,)),
        "(tp - mean) / (0.015 mean |tp - mean|), tp = (h + l + c) / 3; 0 when flat",
        "TA-Lib CCI",
    ),
    _fn("plus_di", [], [N], lambda g, n: _dmi(g, n)[0], "100 Wilder(+DM) / Wilder(TR)", "TA-Lib PLUS_DI"),
    _fn("minus_di", [], [N], lambda g, n: _dmi(g, n)[1], "100 Wilder(-DM) / Wilder(TR)", "TA-Lib MINUS_DI"),
    _fn(
        "adx", [], [N], lambda g, n: _dmi(g, n)[2], "Wilder average of DX = 100 |+DI - -DI| / (+DI + -DI)", "TA-Lib ADX"
    ),
    _fn(
        "obv",
        [],
        [],
        lambda g: g.op1(K.OP_OBV, g.input("close"), g.input("volume")),
        "running Σ ±volume by the sign of the close's change, from the first volume",
        "TA-Lib OBV",
    ),
    _fn(
        "mfi",
        [],
        [N],
        _mfi,
        "100 P / (P + M), P, M sums of tp·v over rising / falling tp; 50 when both are 0",
        "TA-Lib MFI",
    ),
    _fn(
        "roc",
        ["x"],
        [N],
        lambda g, x, n: _mul(g, _sub(g, _div(g, x, g.op1(K.OP_LAG, x, iparams=(n,))), g.const(1.0)), g.const(100.0)),
        "(x[t] / x[t-n] - 1) · 100",
        "TA-Lib ROC",
    ),
)


# ---------------------------------------------------------------- user primitives


@dataclass(frozen=True, eq=False)
class UserPrimitive:
    """A registered primitive (see ``register_primitive``)."""

    name: str
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    update: Any = field(repr=False)  # the user's numba function
    batch: Callable[..., np.ndarray] = field(repr=False)
    _state_width: int | Callable[..., int] = field(repr=False)
    _warmup: int | Callable[..., int] = field(repr=False)
    _initial: Callable[..., Sequence[float]] | None = field(repr=False)
    callback: Any = field(repr=False)  # the numba cfunc wrapping ``update``
    token: str = ""
    doc: str = ""

    @property
    def address(self) -> int:
        return int(self.callback.address)

    def _kwargs(self, params: Sequence[float]) -> dict[str, float]:
        return dict(zip(self.params, (float(p) for p in params)))

    def state_width(self, params: Sequence[float]) -> int:
        width = self._state_width(**self._kwargs(params)) if callable(self._state_width) else self._state_width
        return _check_int(width, f"{self.name}: state_width", 0)

    def warmup(self, params: Sequence[float]) -> int:
        warmup = self._warmup(**self._kwargs(params)) if callable(self._warmup) else self._warmup
        return _check_int(warmup, f"{self.name}: warmup", 0)

    def initial_state(self, params: Sequence[float]) -> np.ndarray:
        width = self.state_width(params)
        if self._initial is None:
            return np.zeros(width)
        init = np.asarray(self._initial(**self._kwargs(params)), dtype=np.float64).ravel()
        if init.shape != (width,):
            raise FeatureDefinitionError(
                f"{self.name}: initial_state returned {init.shape[0]} values for a state of {width}"
            )
        return init


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise FeatureDefinitionError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)


_LOCK = threading.Lock()
_REGISTRY: dict[str, Function] = {f.name: f for f in _BUILTINS}
_USER: dict[str, UserPrimitive] = {}
_IDENT = re.compile(r"[a-z][a-z0-9_]{0,63}")

# The C signature every user callback is wrapped into: (state*, width, inputs*, n_inputs,
# params*, n_params) -> output.
_CALLBACK_SIG = "float64(CPointer(float64), int64, CPointer(float64), int64, CPointer(float64), int64)"


def _wrap(update: Any) -> Any:
    """A numba cfunc calling the user's ``update(state, inputs, params) -> float``."""
    from numba import carray, cfunc

    @cfunc(_CALLBACK_SIG)
    def callback(state_ptr, width, inputs_ptr, n_inputs, params_ptr, n_params):
        return update(carray(state_ptr, width), carray(inputs_ptr, n_inputs), carray(params_ptr, n_params))

    return callback


def register_primitive(
    name: str,
    update: Any,
    *,
    inputs: Sequence[str] = ("x",),
    params: Sequence[str] = (),
    state_width: int | Callable[..., int],
    warmup: int | Callable[..., int],
    batch: Callable[..., np.ndarray],
    initial_state: Callable[..., Sequence[float]] | None = None,
    replace: bool = False,
    doc: str = "",
) -> UserPrimitive:
    """Register a primitive fastinfer does not have; afterwards ``name(x, ..., p, ...)`` works in
    expressions and definitions like a built-in, in both executions.

    Args:
        name: lowercase identifier, not a built-in's name.
        update: a ``numba.njit`` function ``update(state, inputs, params) -> float`` advancing
            one symbol by one bar: ``state`` is the symbol's float64 state row (``state_width``
            values, updated in place), ``inputs`` this bar's input values (one per ``inputs``
            name, always finite), ``params`` the constant parameters (float64, ``params`` order).
            It returns the output; it must not allocate (no arrays, no lists, no exceptions).
        inputs: names of the series arguments (1 to 3).
        params: names of the constant parameters, given after the series in a call.
        state_width: floats of state per symbol (an int, or a function of the params by name).
        warmup: values seen before the first valid output (an int or a function of the
            params): the output is NaN until the (warmup + 1)-th consecutive finite input.
        batch: the reference over whole series, ``batch(*inputs, **params) -> ndarray``: 1-D
            float64 arrays of finite values in, the output for each position out (its first
            ``warmup`` values are ignored). Used by the batch execution and ``check_parity``.
        initial_state: the state row before any value (default zeros), a function of the params.
        replace: allow replacing an earlier registration of the same name.

    A non-finite input restarts the primitive: its state goes back to ``initial_state`` and its
    output is NaN until it has seen warmup + 1 finite values again (as built-in windows do).
    """
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise FeatureDefinitionError(f"primitive name {name!r} must be a lowercase identifier (a-z, 0-9, _)")
    with _LOCK:
        existing = _REGISTRY.get(name)
        if existing is not None and not existing.user:
            raise FeatureDefinitionError(f"{name!r} is a built-in function; choose another name")
        if existing is not None and not replace:
            raise FeatureDefinitionError(f"primitive {name!r} is already registered (pass replace=True to replace it)")
        inputs = tuple(inputs)
        params = tuple(params)
        if not 1 <= len(inputs) <= 3:
            raise FeatureDefinitionError(f"{name}: a primitive takes 1 to 3 series inputs, got {len(inputs)}")
        if not hasattr(update, "py_func"):
            raise FeatureDefinitionError(f"{name}: update must be a numba.njit function")
        if not callable(batch):
            raise FeatureDefinitionError(f"{name}: batch must be callable")
        for what in (state_width, warmup):
            if not callable(what):
                _check_int(what, f"{name}: state_width / warmup", 0)
        callback = _wrap(update)
        source = getattr(update.py_func, "__code__", None)
        token = hashlib.sha256(
            repr((name, inputs, params, source.co_code if source else b"", source.co_consts if source else ())).encode()
        ).hexdigest()[:16]
        prim = UserPrimitive(
            name, inputs, params, update, batch, state_width, warmup, initial_state, callback, token, doc
        )

        def lower(g: Graph, *args: Any) -> Ref:
            refs, values = args[: len(inputs)], args[len(inputs) :]
            return g.user(name, token, tuple(refs), tuple(values), prim.warmup(values))

        _REGISTRY[name] = Function(
            name, inputs, tuple(Param(p, "number") for p in params), lower, doc or "user primitive", "user", user=True
        )
        _USER[name] = prim
        return prim


def unregister_primitive(name: str) -> None:
    """Forget a user primitive (built-ins stay)."""
    with _LOCK:
        if name in _USER:
            del _USER[name]
            del _REGISTRY[name]


def user_primitive(name: str) -> UserPrimitive:
    return _USER[name]


def function(name: str) -> Function | None:
    """The function called ``name``, or None."""
    return _REGISTRY.get(name)


def functions() -> dict[str, Function]:
    """Every callable name (built-in and registered), by name."""
    return dict(_REGISTRY)


def check_param(fn: Function, param: Param, value: float, where: str) -> float | int:
    """A constant argument checked against its kind; ``ValueError`` says what is wrong."""
    if not math.isfinite(value):
        raise ValueError(f"{param.name} of {fn.name} must be finite, got {value!r}")
    if param.kind == "number":
        return float(value)
    if value != int(value):
        raise ValueError(f"{param.name} of {fn.name} must be a whole number of bars, got {value:g}{where}")
    if param.kind == "ddof":
        if value not in (0, 1):
            raise ValueError(f"ddof of {fn.name} must be 0 or 1, got {value:g}")
        return int(value)
    if not 1 <= value <= MAX_WINDOW:
        raise ValueError(f"{param.name} of {fn.name} must be between 1 and {MAX_WINDOW} bars, got {value:g}{where}")
    return int(value)
