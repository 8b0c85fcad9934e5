"""Feature names + definitions → one ``FeatureProgram``.

``compile_features(names, definitions, interval_minutes=, bars_per_day=)`` resolves each name
in this order: a definition (which shadows the vocabulary), an external column, an OHLCV
input, a vocabulary name. Expressions are lowered into one shared DAG (``graph.Graph``), so
a sub-expression any two features share is computed once. Function parameters must be
constants (numbers, durations such as ``10d``, or their negation); durations become bars
through ``interval_minutes`` and ``bars_per_day``.

Every problem is a ``FeatureDefinitionError`` naming the feature (and the definition it came
through), what was understood of it and how to define it: unknown names or functions, wrong
arity, bad parameters or durations, and cycles between definitions.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..kernels import feature_program as K
from . import primitives, vocabulary
from .definitions import FeatureDefinitions, check_bars_per_day, check_interval_minutes
from .errors import FeatureDefinitionError
from .grammar import BinOp, Call, Duration, Expr, Name, Neg, Num, parse, unparse
from .graph import OHLCV, Graph, Ref
from .program import FeatureProgram

MAX_FEATURES = 10_000
# Lowering recurses through expressions and the definitions they read (up to three frames per
# level, plus a constant sub-expression's walk of at most grammar.MAX_TREE_DEPTH frames):
# bounded well below Python's recursion limit (1000), so a deep file is an error, not a crash.
MAX_LOWERING_DEPTH = 160


def compile_features(
    features: Iterable[str],
    definitions: FeatureDefinitions | dict | None = None,
    *,
    interval_minutes: float | None = None,
    bars_per_day: int | None = None,
) -> FeatureProgram:
    """The program computing ``features`` (output columns in this order).

    ``definitions``: a ``FeatureDefinitions`` (or the dict of a definitions file).
    ``interval_minutes`` / ``bars_per_day``: how durations become bars; when the definitions
    also fix one, both must agree.
    """
    names = check_names(features)
    defs = _as_definitions(definitions)
    interval, per_day = resolution(defs, interval_minutes, bars_per_day)
    lowering = _Lowering(defs, interval, per_day)
    outputs = []
    for name in names:
        try:
            outputs.append(lowering.feature(name))
        except FeatureDefinitionError as e:
            if e.feature is not None:
                raise
            # a bound of the whole program (operations, state) was crossed while adding this feature
            raise FeatureDefinitionError(e.reason, feature=name, understood=e.understood, hint=e.hint) from None
    outputs = tuple(outputs)
    return FeatureProgram.build(
        lowering.graph,
        names,
        outputs,
        lowering.users,
        definitions=defs if (defs.features or defs.external or defs.bars_per_day or defs.interval_minutes) else None,
        interval_minutes=lowering.interval_minutes,
        bars_per_day=lowering.bars_per_day,
    )


def check_names(features: Iterable[str]) -> tuple[str, ...]:
    """``features`` as a tuple: a non-empty list of distinct names."""
    if isinstance(features, str):
        raise FeatureDefinitionError(f"features must be a list of names, not the string {features!r}")
    try:
        names = tuple(features)
    except TypeError:
        raise FeatureDefinitionError(f"features must be a list of names, got {type(features).__name__}") from None
    if not names:
        raise FeatureDefinitionError("no features requested")
    if len(names) > MAX_FEATURES:
        raise FeatureDefinitionError(f"{len(names)} features requested (at most {MAX_FEATURES})")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise FeatureDefinitionError(f"feature names must be non-empty text, got {bad[:3]!r}")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise FeatureDefinitionError(f"feature(s) requested twice: {dup}")
    return names


def _as_definitions(definitions: FeatureDefinitions | dict | None) -> FeatureDefinitions:
    if definitions is None:
        return FeatureDefinitions({})
    if isinstance(definitions, FeatureDefinitions):
        return definitions
    return FeatureDefinitions.from_dict(definitions)


def resolution(
    definitions: FeatureDefinitions | dict | None, interval_minutes=None, bars_per_day=None
) -> tuple[float | None, int | None]:
    """(interval_minutes, bars_per_day) durations become bars with: the caller's, else the ones
    the definitions fix; both given must agree. Each is checked (bounded) first."""
    defs = _as_definitions(definitions)
    interval = _agree("interval_minutes", check_interval_minutes(interval_minutes), defs.interval_minutes)
    per_day = _agree("bars_per_day", check_bars_per_day(bars_per_day), defs.bars_per_day)
    return interval, per_day


def _agree(key: str, given, fixed):
    if given is not None and fixed is not None and given != fixed:
        raise FeatureDefinitionError(f"{key} is {given:g} here but the definitions fix it at {fixed:g}")
    return fixed if given is None else given


@dataclass
class _Lowering:
    defs: FeatureDefinitions
    interval_minutes: float | None
    bars_per_day: int | None
    graph: Graph = field(init=False)
    users: dict[int, primitives.UserPrimitive] = field(default_factory=dict)
    done: dict[str, Ref] = field(default_factory=dict)
    stack: list[str] = field(default_factory=list)
    trees: dict[str, Expr] = field(default_factory=dict)
    depth: int = 0

    def __post_init__(self):
        self.graph = Graph(self.defs.external)

    # ------------------------------------------------------------ names

    def feature(self, name: str) -> Ref:
        """The value of a requested feature (or of a name read inside an expression)."""
        if name in self.done:
            return self.done[name]
        if name in self.stack:
            cycle = " -> ".join([*self.stack[self.stack.index(name) :], name])
            raise FeatureDefinitionError(f"definitions form a cycle: {cycle}", feature=self.stack[0])
        if name in self.defs.features:
            self.stack.append(name)
            try:
                tree = self.defs.trees.get(name) or parse(self.defs.features[name], where=name)
                ref = self.lower(tree, name)
            finally:
                self.stack.pop()
        elif name in self.defs.external or name in OHLCV:
            ref = self.graph.input(name)
        else:
            ref = self.vocabulary(name)
        self.done[name] = ref
        return ref

    def vocabulary(self, name: str) -> Ref:
        root, via = self._context(name)
        try:
            found = vocabulary.match(name, interval_minutes=self.interval_minutes, bars_per_day=self.bars_per_day)
        except FeatureDefinitionError as e:
            raise FeatureDefinitionError(via + e.reason, feature=root, understood=e.understood, hint=e.hint) from None
        if found is None:
            near = vocabulary.suggestions(name)
            understood = "no vocabulary pattern matches it" + (f" (similar: {', '.join(near)})" if near else "")
            raise FeatureDefinitionError(
                via + "unknown feature", feature=root, understood=understood, hint=vocabulary.hint(name)
            )
        self.stack.append(name)
        try:
            return self.lower(parse(found.expression, where=name), name, found)
        finally:
            self.stack.pop()

    def _context(self, name: str) -> tuple[str, str]:
        """(the requested feature an error belongs to, a prefix naming ``name`` and the chain of
        definitions it was read through, when it is not the requested feature itself)."""
        chain = [n for n in self.stack if n != name]
        return (chain[0], f"{name!r} (read via {' -> '.join(chain)}): ") if chain else (name, "")

    # ------------------------------------------------------------ expressions

    def lower(self, expr: Expr, owner: str, found: vocabulary.Match | None = None) -> Ref:
        if self.depth >= MAX_LOWERING_DEPTH:
            names = self.stack if len(self.stack) <= 8 else [*self.stack[:4], "...", *self.stack[-3:]]
            raise FeatureDefinitionError(
                f"definitions nest more than {MAX_LOWERING_DEPTH} operations deep (through "
                f"{' -> '.join(names)}); flatten the chain of definitions",
                feature=self.stack[0] if self.stack else owner,
            )
        self.depth += 1
        try:
            return self._lower(expr, owner, found)
        finally:
            self.depth -= 1

    def _lower(self, expr: Expr, owner: str, found: vocabulary.Match | None = None) -> Ref:
        g = self.graph
        if isinstance(expr, Num):
            return g.const(expr.value)
        if isinstance(expr, Duration):
            raise self.error(
                owner, f"{expr.text} at column {expr.col} is a duration: only a function's number of bars can be one"
            )
        if isinstance(expr, Name):
            return self.feature(expr.id)
        if isinstance(expr, Neg):
            value = self.constant(expr)
            if value is not None:
                return g.const(value)
            return g.op1(K.OP_NEG, self.lower(expr.operand, owner, found))
        if isinstance(expr, BinOp):
            value = self.constant(expr)
            if value is not None:
                return g.const(value)
            op = {"+": K.OP_ADD, "-": K.OP_SUB, "*": K.OP_MUL, "/": K.OP_DIV}[expr.op]
            return g.op1(op, self.lower(expr.left, owner, found), self.lower(expr.right, owner, found))
        return self.call(expr, owner, found)

    def call(self, expr: Call, owner: str, found: vocabulary.Match | None) -> Ref:
        fn = primitives.function(expr.func)
        if fn is None:
            near = difflib.get_close_matches(expr.func, list(primitives.functions()), n=3)
            also = f" (did you mean {', '.join(near)}?)" if near else ""
            raise self.error(owner, f"unknown function {expr.func!r} at column {expr.col}{also}", found)
        n_series = len(fn.series)
        required = n_series + sum(p.default is None for p in fn.params)
        if not required <= len(expr.args) <= n_series + len(fn.params):
            count = (
                str(required) if required == n_series + len(fn.params) else f"{required} to {n_series + len(fn.params)}"
            )
            raise self.error(owner, f"{fn.signature} takes {count} argument(s), got {len(expr.args)}", found)
        series = [self.lower(a, owner, found) for a in expr.args[:n_series]]
        given = expr.args[n_series:]
        params = [
            self.parameter(fn, param, given[k], owner, found)
            if k < len(given)
            else primitives.check_param(fn, param, param.default, "")
            for k, param in enumerate(fn.params)
        ]
        try:
            ref = fn.lower(self.graph, *series, *params)
        except (ValueError, ArithmeticError) as e:
            raise self.error(owner, f"{unparse(expr)}: {e}", found) from None
        if fn.user:
            self.users[ref.node] = primitives.user_primitive(fn.name)
        return ref

    def parameter(self, fn, param: primitives.Param, arg: Expr, owner: str, found) -> float | int:
        if isinstance(arg, Duration):
            if param.kind != "bars":
                raise self.error(owner, f"{param.name} of {fn.name} is a number, not a duration ({arg.text})", found)
            try:
                value = float(
                    vocabulary.duration_bars(
                        arg.amount,
                        arg.unit,
                        arg.text,
                        interval_minutes=self.interval_minutes,
                        bars_per_day=self.bars_per_day,
                    )
                )
            except ValueError as e:
                raise self.error(owner, f"{param.name} of {fn.name}: {e}", found) from None
        else:
            value = self.constant(arg)
            if value is None:
                raise self.error(
                    owner, f"{param.name} of {fn.name} must be a constant, got the expression {unparse(arg)!r}", found
                )
        try:
            return primitives.check_param(fn, param, value, "")
        except ValueError as e:
            raise self.error(owner, str(e), found) from None

    def constant(self, expr: Expr) -> float | None:
        """The value of a constant sub-expression (numbers and arithmetic on them), else None."""
        if isinstance(expr, Num):
            return expr.value
        if isinstance(expr, Neg):
            inner = self.constant(expr.operand)
            return None if inner is None else -inner
        if isinstance(expr, BinOp):
            a, b = self.constant(expr.left), self.constant(expr.right)
            if a is None or b is None:
                return None
            if expr.op == "/" and b == 0:
                return None  # left to the kernel: x / 0 is inf or NaN there, as everywhere
            return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else math.nan}[expr.op]
        return None

    def error(self, owner: str, reason: str, found: vocabulary.Match | None = None) -> FeatureDefinitionError:
        root, via = self._context(owner)
        if found is not None:
            return FeatureDefinitionError(via + reason, feature=root, understood=found.understood())
        definition = self.defs.features.get(owner)
        understood = f"definition {owner}: {definition}" if definition is not None else None
        return FeatureDefinitionError(via + reason, feature=root, understood=understood)


def explain(
    name: str, definitions: FeatureDefinitions | None = None, *, interval_minutes=None, bars_per_day=None
) -> str:
    """What ``name`` means: its definition, or the vocabulary's reading of it (durations resolved
    as ``compile_features`` resolves them: the caller's interval / bars_per_day, else the
    definitions')."""
    defs = _as_definitions(definitions)
    interval_minutes, bars_per_day = resolution(defs, interval_minutes, bars_per_day)
    if name in defs.features:
        return f"{name} = {defs.features[name]} (definition)"
    if name in defs.external:
        return f"{name}: external column"
    if name in OHLCV:
        return f"{name}: OHLCV input"
    found = vocabulary.match(name, interval_minutes=interval_minutes, bars_per_day=bars_per_day)
    if found is None:
        raise FeatureDefinitionError("unknown feature", feature=name, hint=vocabulary.hint(name))
    return f"{name}: {found.understood()}"


def union(lists: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Every name of ``lists`` once, in first-seen order."""
    return tuple(dict.fromkeys(name for names in lists for name in names))
