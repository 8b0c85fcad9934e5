"""The expression grammar of feature definitions: a tokeniser and a recursive-descent parser.

::

    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "/") unary)*
    unary   := "-" unary | primary
    primary := NUMBER | DURATION | NAME | NAME "(" [expr ("," expr)*] ")" | "(" expr ")"

NUMBER is a decimal (``14``, ``2.5``, ``1e-3``); DURATION a number with a time unit directly
after it (``30m``, ``4h``, ``10d``), usable wherever a number of bars is expected; NAME an
identifier (``close``, ``rsi_14``, ``my_feature``). Nothing is evaluated here (no ``eval``):
the parser returns a small tree that the compiler lowers. Inputs are bounded (length,
tokens, nesting depth), and every error is a ``FeatureDefinitionError`` with the column.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..state import short_repr
from .errors import FeatureDefinitionError

MAX_EXPRESSION_CHARS = 4000
MAX_TOKENS = 2000
MAX_DEPTH = 64
# Depth of the tree (a chain a + b + c is a left-deep tree: one level per operator). Everything
# that walks a tree (unparse, the compiler) recurses, so it is bounded well below Python's limit.
MAX_TREE_DEPTH = 128

UNITS = {"m": "minutes", "h": "hours", "d": "days"}
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?P<unit>[mhd](?![A-Za-z0-9_]))?
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>[-+*/(),])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Num:
    value: float
    col: int = field(compare=False)


@dataclass(frozen=True)
class Duration:
    """``amount`` followed by a unit (m, h, d); ``text`` as written."""

    amount: float
    unit: str
    text: str = field(compare=False)
    col: int = field(compare=False)


@dataclass(frozen=True)
class Name:
    id: str
    col: int = field(compare=False)


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    col: int = field(compare=False)


@dataclass(frozen=True)
class Neg:
    operand: Expr
    col: int = field(compare=False)


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Expr
    right: Expr
    col: int = field(compare=False)


Expr = Num | Duration | Name | Call | Neg | BinOp


@dataclass(frozen=True)
class Token:
    kind: str  # "number", "duration", "name", "op", "end"
    text: str
    col: int = field(compare=False)
    value: float = 0.0
    unit: str = ""


def tokenize(text: str, where: str | None = None) -> list[Token]:
    if not isinstance(text, str):
        raise FeatureDefinitionError(f"an expression must be text, got {type(text).__name__}", feature=where)
    if len(text) > MAX_EXPRESSION_CHARS:
        raise FeatureDefinitionError(
            f"expression is {len(text)} characters long (at most {MAX_EXPRESSION_CHARS})", feature=where
        )
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FeatureDefinitionError(f"unexpected character {text[pos]!r} at column {pos + 1}", feature=where)
        if m.group("space") is None:
            if m.group("number") is not None:
                unit = m.group("unit") or ""
                value = float(m.group("number"))
                if not math.isfinite(value):
                    raise FeatureDefinitionError(
                        f"number {short_repr(m.group(0))} at column {pos + 1} is too large", feature=where
                    )
                tokens.append(Token("duration" if unit else "number", m.group(0), pos + 1, value, unit))
                if m.end() < len(text) and (text[m.end()].isalpha() or text[m.end()] == "_"):
                    word = re.match(r"[\w.]+", text[pos:]).group(0)
                    raise FeatureDefinitionError(
                        f"{word!r} at column {pos + 1} is neither a number nor a name "
                        f"(a duration is a number followed by m, h or d)",
                        feature=where,
                    )
            else:
                tokens.append(Token("name" if m.group("name") else "op", m.group(0), pos + 1))
            if len(tokens) > MAX_TOKENS:
                raise FeatureDefinitionError(f"expression has more than {MAX_TOKENS} tokens", feature=where)
        pos = m.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


class _Parser:
    def __init__(self, text: str, where: str | None):
        self.where = where
        self.tokens = tokenize(text, where)
        self.pos = 0
        self.depth = 0

    def error(self, message: str, tok: Token | None = None) -> FeatureDefinitionError:
        tok = tok or self.peek()
        at = "at the end" if tok.kind == "end" else f"at column {tok.col} ({tok.text!r})"
        return FeatureDefinitionError(f"{message} {at}", feature=self.where)

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def take(self) -> Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expect(self, text: str) -> Token:
        tok = self.peek()
        if tok.kind != "op" or tok.text != text:
            raise self.error(f"expected {text!r}")
        return self.take()

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nests deeper than {MAX_DEPTH} levels")

    def parse(self) -> Expr:
        if self.peek().kind == "end":
            raise FeatureDefinitionError("empty expression", feature=self.where)
        expr = self.expr()
        if self.peek().kind != "end":
            raise self.error("unexpected token")
        return expr

    def expr(self) -> Expr:
        left = self.term()
        while self.peek().kind == "op" and self.peek().text in "+-":
            tok = self.take()
            left = BinOp(tok.text, left, self.term(), tok.col)
        return left

    def term(self) -> Expr:
        left = self.unary()
        while self.peek().kind == "op" and self.peek().text in "*/":
            tok = self.take()
            left = BinOp(tok.text, left, self.unary(), tok.col)
        return left

    def unary(self) -> Expr:
        tok = self.peek()
        if tok.kind == "op" and tok.text == "-":
            self.take()
            self.nest()
            operand = self.unary()
            self.depth -= 1
            return Neg(operand, tok.col)
        return self.primary()

    def primary(self) -> Expr:
        tok = self.take()
        if tok.kind == "number":
            return Num(tok.value, tok.col)
        if tok.kind == "duration":
            return Duration(tok.value, tok.unit, tok.text, tok.col)
        if tok.kind == "name":
            if self.peek().kind == "op" and self.peek().text == "(":
                self.take()
                self.nest()
                args: list[Expr] = []
                if not (self.peek().kind == "op" and self.peek().text == ")"):
                    args.append(self.expr())
                    while self.peek().kind == "op" and self.peek().text == ",":
                        self.take()
                        args.append(self.expr())
                self.expect(")")
                self.depth -= 1
                return Call(tok.text, tuple(args), tok.col)
            return Name(tok.text, tok.col)
        if tok.kind == "op" and tok.text == "(":
            self.nest()
            inner = self.expr()
            self.expect(")")
            self.depth -= 1
            return inner
        self.pos -= 1
        raise self.error("expected a number, a name, a call or '('")


def parse(text: str, where: str | None = None) -> Expr:
    """The tree of ``text``; ``where`` (a feature name) is named in errors."""
    tree = _Parser(text, where).parse()
    if tree_depth(tree) > MAX_TREE_DEPTH:
        raise FeatureDefinitionError(
            f"expression is more than {MAX_TREE_DEPTH} levels deep (each operator of a long chain such as "
            "a + b + c + ... is one level); split it into several definitions",
            feature=where,
        )
    return tree


def _children(expr: Expr) -> tuple[Expr, ...]:
    if isinstance(expr, Call):
        return expr.args
    if isinstance(expr, Neg):
        return (expr.operand,)
    if isinstance(expr, BinOp):
        return (expr.left, expr.right)
    return ()


def tree_depth(expr: Expr) -> int:
    """Levels of the tree (a leaf is 1), found without recursion."""
    deepest, stack = 0, [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in _children(node))
    return deepest


_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def unparse(expr: Expr, parent: int = 0) -> str:
    """Canonical text of a tree: one spelling per tree (the definitions hash is taken over it)."""
    if isinstance(expr, Num):
        value = expr.value
        return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)
    if isinstance(expr, Duration):
        amount = expr.amount
        return (str(int(amount)) if amount == int(amount) else repr(amount)) + expr.unit
    if isinstance(expr, Name):
        return expr.id
    if isinstance(expr, Call):
        return f"{expr.func}({', '.join(unparse(a) for a in expr.args)})"
    if isinstance(expr, Neg):
        text = "-" + unparse(expr.operand, 3)
        return f"({text})" if parent >= 3 else text
    prec = _PRECEDENCE[expr.op]
    # left-associative: a right operand of equal precedence keeps its brackets, so that
    # a + (b + c) (another rounding than a + b + c) reads back as the same tree
    text = f"{unparse(expr.left, prec)} {expr.op} {unparse(expr.right, prec + 1)}"
    return f"({text})" if prec < parent else text


def names_in(expr: Expr) -> set[str]:
    """Every bare name the tree reads (not the called function names)."""
    if isinstance(expr, Name):
        return {expr.id}
    if isinstance(expr, Call):
        return set().union(*(names_in(a) for a in expr.args)) if expr.args else set()
    if isinstance(expr, Neg):
        return names_in(expr.operand)
    if isinstance(expr, BinOp):
        return names_in(expr.left) | names_in(expr.right)
    return set()
