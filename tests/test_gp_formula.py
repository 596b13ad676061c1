"""GeneralPoints formula arithmetic: tokens, the four parse outcomes, limits and exact evaluation."""

from __future__ import annotations

import operator
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftrl.environments.generalpoints.formula import (
    MAX_DEPTH,
    FormulaStatus,
    canonical,
    evaluate,
    numbers_in,
    parse_formula,
    render,
    strip_equals,
    tokenize,
)

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("8/(3-8/3)", ("8", "/", "(", "3", "-", "8", "/", "3", ")")),
        ("( 10 - 4 ) * ( 1 + 3 )", ("(", "10", "-", "4", ")", "*", "(", "1", "+", "3", ")")),
        ("12×2", ("12", "*", "2")),
        ("12·2", ("12", "*", "2")),
        ("48÷2", ("48", "/", "2")),
        ("30−6", ("30", "-", "6")),
        ("\t3\n+\u00a021 ", ("3", "+", "21")),
        ("007+17", ("7", "+", "17")),
        ("3+21=24", ("3", "+", "21")),
    ],
)
def test_tokenize_maps_unicode_operators_and_ignores_whitespace(text: str, tokens: tuple[str, ...]) -> None:
    assert tokenize(text) == tokens


@pytest.mark.parametrize("text", ["2^3", "3x8", "3 + a", "½+1", "٣+1", "2²", "3,5", "8.0*3", "[3+3]"])
def test_anything_else_is_an_illegal_character(text: str) -> None:
    assert tokenize(text) is None
    parsed = parse_formula(text)
    assert parsed.status is FormulaStatus.ILLEGAL_CHARACTERS
    assert parsed.message.startswith("illegal characters:") and parsed.value is None


def test_illegal_character_message_lists_each_character_once() -> None:
    assert parse_formula("a+a*b").message == "illegal characters: 'a', 'b'"


@pytest.mark.parametrize(
    ("text", "left"),
    [("3*8=24", "3*8"), ("3*8 = 24", "3*8 "), ("3*8=24=24", "3*8"), ("=24", ""), ("3*8", "3*8")],
)
def test_strip_equals_keeps_the_first_segment(text: str, left: str) -> None:
    assert strip_equals(text) == left


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3 4 +", "invalid sequence: a number cannot follow a number ('34')"),
        ("()", "invalid sequence: ')' cannot follow '(' ('()')"),
        ("3+*4", "invalid sequence: '*' cannot follow '+' ('+*')"),
        ("2**5", "invalid sequence: '*' cannot follow '*' ('**')"),
        ("(3+4))*2", "unmatched closing parenthesis"),
        (")3+4(", "invalid sequence: the formula starts with ')'"),
        ("-3+27", "invalid sequence: the formula starts with '-'"),
        ("+3+21", "invalid sequence: the formula starts with '+'"),
        ("3*(-8)", "invalid sequence: '-' cannot follow '(' ('(-')"),
        ("3(8)", "invalid sequence: '(' cannot follow a number ('3(')"),
        ("(3)8", "invalid sequence: a number cannot follow ')' (')8')"),
        ("(3+)", "invalid sequence: ')' cannot follow '+' ('+)')"),
    ],
)
def test_syntax_errors_say_what_is_wrong(text: str, message: str) -> None:
    parsed = parse_formula(text)
    assert parsed.status is FormulaStatus.SYNTAX_ERROR and parsed.is_error
    assert parsed.message == message and parsed.value is None


@pytest.mark.parametrize(
    ("text", "open_parens"),
    [("(8/(3-8/3", 2), ("3+", 0), ("(", 1), ("((3+4)*", 1), ("8/(3-8/3)*", 0), ("(1+2)*(3", 1)],
)
def test_valid_prefixes_are_incomplete_not_errors(text: str, open_parens: int) -> None:
    parsed = parse_formula(text)
    assert parsed.status is FormulaStatus.INCOMPLETE and not parsed.is_error
    assert parsed.open_parens == open_parens and parsed.value is None


@pytest.mark.parametrize("text", ["", "   ", "=24", " = 24"])
def test_empty_formula(text: str) -> None:
    assert parse_formula(text).status is FormulaStatus.EMPTY


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8/(3-8/3)", Fraction(24)),
        ("8 / ( 3 - 8 / 3 ) = 24", Fraction(24)),
        ("1/3+1/3+1/3", Fraction(1)),
        ("8-4-2", Fraction(2)),
        ("16/4/2", Fraction(2)),
        ("2+3*4", Fraction(14)),
        ("(2+3)*4", Fraction(20)),
        ("10/4", Fraction(5, 2)),
        ("((((7))))", Fraction(7)),
        ("0", Fraction(0)),
    ],
)
def test_exact_evaluation_with_precedence_and_left_associativity(text: str, value: Fraction) -> None:
    parsed = parse_formula(text)
    assert parsed.status is FormulaStatus.COMPLETE and parsed.is_complete
    assert parsed.value == value and evaluate(text) == value and not parsed.zero_division


def test_float_arithmetic_would_get_the_classic_hand_wrong() -> None:
    # Why Fractions: Python floats give 23.999999999999996 here, which the paper's checker scored wrong.
    assert 8 / (3 - 8 / 3) != 24
    assert evaluate("8/(3-8/3)") == 24


@pytest.mark.parametrize("text", ["8/(3-3)", "1/0+5", "(4/(2-2))*0", "3/(1-1)/0"])
def test_division_by_zero_is_reported_not_raised(text: str) -> None:
    parsed = parse_formula(text)
    assert parsed.status is FormulaStatus.COMPLETE
    assert parsed.zero_division and parsed.value is None and evaluate(text) is None


def test_division_by_zero_does_not_hide_a_later_syntax_error() -> None:
    assert parse_formula("1/0+(").status is FormulaStatus.INCOMPLETE
    assert parse_formula("1/0 2").status is FormulaStatus.SYNTAX_ERROR


def test_limits() -> None:
    long = "+".join(["1"] * 200)
    assert parse_formula(long).status is FormulaStatus.TOO_LONG
    assert parse_formula(long).message == "formula too long"
    assert parse_formula("1" * 300).status is FormulaStatus.TOO_LONG
    assert parse_formula("9" * 100_000).status is FormulaStatus.TOO_LONG
    # Whitespace is not counted against the formula, only against the raw size.
    assert parse_formula(" " * 1000 + "3*8").value == 24
    deep_ok = "(" * MAX_DEPTH + "3" + ")" * MAX_DEPTH
    assert parse_formula(deep_ok).value == 3
    too_deep = "(" * (MAX_DEPTH + 1) + "3" + ")" * (MAX_DEPTH + 1)
    assert parse_formula(too_deep).status is FormulaStatus.TOO_LONG
    assert "nested" in parse_formula(too_deep).message
    assert parse_formula("(" * 10_000).status is FormulaStatus.TOO_LONG


def test_numbers_and_canonical_form() -> None:
    assert numbers_in("( 10 - 4 ) * ( 1 + 3 ) = 24") == [10, 4, 1, 3]
    assert numbers_in("10×2+4") == [10, 2, 4]
    assert numbers_in("") == []
    assert parse_formula("( 10 - 4 ) * 4").numbers == [10, 4, 4]
    assert canonical("( 10 − 4 ) × ( 1 + 3 ) = 24") == "(10-4)*(1+3)"
    assert canonical("3 x 8") == "3x8"
    assert parse_formula(" 8 ÷ ( 3 − 8 ÷ 3 ) ").canonical == "8/(3-8/3)"


def test_render_uses_minimal_parentheses_that_keep_the_value() -> None:
    a, b, c = ("7", 3), ("3", 3), ("2", 3)
    bc_minus = render("-", b, c)
    assert render("-", a, bc_minus)[0] == "7-(3-2)"
    assert render("+", a, bc_minus)[0] == "7+3-2"
    assert render("*", a, bc_minus)[0] == "7*(3-2)"
    assert render("/", a, render("*", b, c))[0] == "7/(3*2)"
    assert render("*", a, render("/", b, c))[0] == "7*3/2"
    assert render("-", render("-", a, b), c)[0] == "7-3-2"


# -- properties ---------------------------------------------------------------------------------------
def trees(max_leaves: int = 6) -> st.SearchStrategy[object]:
    leaf = st.integers(min_value=0, max_value=13)
    return st.recursive(
        leaf,
        lambda kids: st.tuples(st.sampled_from(sorted(OPS)), kids, kids),
        max_leaves=max_leaves,
    )


def reference_value(tree: object) -> Fraction | None:
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree  # type: ignore[misc]
    a, b = reference_value(left), reference_value(right)
    if a is None or b is None or (op == "/" and b == 0):
        return None
    return OPS[op](a, b)


def full_text(tree: object, spaces: list[str]) -> str:
    """Fully parenthesised text with the given whitespace between tokens (cycled)."""
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree  # type: ignore[misc]
    pad = spaces[len(op) % len(spaces)] if spaces else ""
    return f"({pad}{full_text(left, spaces[1:])}{pad}{op}{pad}{full_text(right, spaces[2:])}{pad})"


def minimal(tree: object) -> tuple[str, int]:
    if isinstance(tree, int):
        return str(tree), 3
    op, left, right = tree  # type: ignore[misc]
    return render(op, minimal(left), minimal(right))


@settings(max_examples=200, deadline=None)
@given(tree=trees(), spaces=st.lists(st.sampled_from(["", " ", "  ", "\t", "\n"]), max_size=6))
def test_parser_matches_a_reference_evaluator(tree: object, spaces: list[str]) -> None:
    expected = reference_value(tree)
    parsed = parse_formula(full_text(tree, spaces))
    assert parsed.status is FormulaStatus.COMPLETE
    assert parsed.value == expected
    assert parsed.zero_division == (expected is None)
    # The minimal rendering is the same expression.
    again = parse_formula(minimal(tree)[0])
    assert again.value == expected and again.zero_division == (expected is None)


@settings(max_examples=200, deadline=None)
@given(tree=trees())
def test_every_proper_prefix_of_a_formula_is_incomplete_or_complete(tree: object) -> None:
    tokens = parse_formula(full_text(tree, [])).tokens
    for i in range(len(tokens)):
        status = parse_formula("".join(tokens[:i])).status
        assert status in (FormulaStatus.INCOMPLETE, FormulaStatus.COMPLETE, FormulaStatus.EMPTY)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("0123456789+-*/()= ×÷x.")), max_size=60) | st.text())
def test_parse_never_raises(text: str) -> None:
    parsed = parse_formula(text)
    assert isinstance(parsed.status, FormulaStatus)
    assert parsed.value is None or parsed.is_complete
    assert bool(parsed.message) == (not parsed.is_complete)
    numbers_in(text)
    canonical(text)
