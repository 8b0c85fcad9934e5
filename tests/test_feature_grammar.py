"""The expression grammar: precedence, canonical text, bounded inputs, errors with a column."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastinfer.features.errors import FeatureDefinitionError
from fastinfer.features.grammar import (
    MAX_DEPTH,
    MAX_EXPRESSION_CHARS,
    BinOp,
    Call,
    Duration,
    Name,
    Neg,
    Num,
    names_in,
    parse,
    unparse,
)

from ._hardening import example, hostile


def test_precedence_and_associativity():
    assert parse("a - b - c") == BinOp("-", BinOp("-", Name("a", 0), Name("b", 0), 0), Name("c", 0), 0)
    assert parse("a + b * c") == BinOp("+", Name("a", 0), BinOp("*", Name("b", 0), Name("c", 0), 0), 0)
    assert parse("a / b * c") == BinOp("*", BinOp("/", Name("a", 0), Name("b", 0), 0), Name("c", 0), 0)
    assert parse("-a * b") == BinOp("*", Neg(Name("a", 0), 0), Name("b", 0), 0)
    assert parse("(a + b) * c") == BinOp("*", BinOp("+", Name("a", 0), Name("b", 0), 0), Name("c", 0), 0)
    assert parse("f(x, 10d, -2.5, 1e-3)") == Call(
        "f", (Name("x", 0), Duration(10.0, "d", "10d", 0), Neg(Num(2.5, 0), 0), Num(0.001, 0)), 0
    )
    assert parse("obv()") == Call("obv", (), 0)
    assert parse("  rsi_14\t-\nrsi_28 ") == BinOp("-", Name("rsi_14", 0), Name("rsi_28", 0), 0)


def test_the_issue_examples_parse_and_print_canonically():
    for text, canonical in [
        ("rolling_std(log_return(close,1),10d)", "rolling_std(log_return(close, 1), 10d)"),
        ("open/lag(close, 1)-1", "open / lag(close, 1) - 1"),
        ("rsi(close, 7)   -   rsi(close, 28)", "rsi(close, 7) - rsi(close, 28)"),
        ("a + (b + c)", "a + (b + c)"),  # another rounding than a + b + c: the brackets stay
        ("(a + b) + c", "a + b + c"),
        ("--x", "-(-x)"),
        ("2.50 * x", "2.5 * x"),
    ]:
        assert unparse(parse(text)) == canonical
    assert names_in(parse("rsi(close, 7) - ratio(a, b, 0) + c")) == {"close", "a", "b", "c"}


_names = st.sampled_from(["close", "open", "x", "rsi_14", "vol_10d", "_a1"])
_numbers = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
_leaves = st.one_of(
    _names.map(lambda n: Name(n, 0)),
    _numbers.map(lambda v: Num(v, 0)),
    st.tuples(st.integers(1, 500), st.sampled_from("mhd")).map(lambda p: Duration(float(p[0]), p[1], "", 0)),
)
_trees = st.recursive(
    _leaves,
    lambda sub: st.one_of(
        st.tuples(st.sampled_from("+-*/"), sub, sub).map(lambda t: BinOp(t[0], t[1], t[2], 0)),
        sub.map(lambda x: Neg(x, 0)),
        st.tuples(st.sampled_from(["f", "rolling_mean", "obv"]), st.lists(sub, max_size=3)).map(
            lambda t: Call(t[0], tuple(t[1]), 0)
        ),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(tree=_trees)
def test_property_unparse_then_parse_is_the_same_tree(tree):
    """One spelling per tree: the definitions hash is taken over ``unparse``."""
    example("grammar: unparse round trip")
    text = unparse(tree)
    assert parse(text) == tree
    assert unparse(parse(text)) == text


BAD = {
    "empty": ("", "empty expression"),
    "blank": ("   ", "empty expression"),
    "dangling operator": ("a +", "at the end"),
    "unclosed call": ("rsi(close, 14", r"expected '\)' at the end"),
    "stray bracket": ("a)", r"unexpected token at column 2"),
    "empty argument": ("f(,)", "at column 3"),
    "number glued to a name": ("10days", "'10days' at column 1 is neither a number nor a name"),
    "unit that is not one": ("lag(x, 3w)", "'3w' at column 8"),
    "operator not in the grammar": ("a ** b", r"expected a number, a name, a call or '\(' at column 4"),
    "python": ("__import__('os')", r"unexpected character \"'\""),
    "lambda": ("lambda: 1", "unexpected character ':'"),
    "attribute": ("close.shift", r"unexpected character '\.'"),
    "non-ascii identifier": ("clôse", "unexpected character 'ô'"),
    "NUL byte": ("a\x00b", "unexpected character"),
    "huge number": ("1e999", "too large"),
    "huge number, 3,900 digits": (
        "9" * 3900,
        r"^feature 'my_feature': number '9{200}'\.\.\. at column 1 is too large$",
    ),
    "too long": ("a+" * (MAX_EXPRESSION_CHARS // 2) + "a", "characters long"),
    "too deep (brackets)": ("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1), "nests deeper"),
    "too deep (unary)": ("-" * (MAX_DEPTH + 1) + "a", "nests deeper"),
    "too deep (calls)": ("f(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1), "nests deeper"),
    "too many tokens": ("+".join(["a"] * 1200), "more than 2000 tokens"),
    "not text": (42, "must be text"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_expressions_are_typed_errors_with_the_column(case):
    hostile("feature expressions", case)
    text, match = BAD[case]
    with pytest.raises(FeatureDefinitionError, match=match) as e:
        parse(text, where="my_feature")
    assert e.value.feature == "my_feature"
