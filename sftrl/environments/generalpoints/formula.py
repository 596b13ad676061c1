"""Safe GeneralPoints arithmetic: tokenize, parse and exactly evaluate a formula written by a model.

The text is untrusted, so it is never handed to ``eval``: a small recursive-descent parser over
integers, ``+ - * /`` and parentheses does the work, with hard limits on length, tokens and nesting.
Values are :class:`fractions.Fraction`, so ``8/(3-8/3)`` is exactly 24 (floats make it 23.99...).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

MAX_FORMULA_CHARS = 256
"""Most non-whitespace characters a formula may have (a 4-card formula needs about 20)."""
MAX_RAW_CHARS = 4096
"""Most characters, whitespace included, so padding cannot make tokenizing expensive."""
MAX_TOKENS = 128
MAX_DEPTH = 16
"""Deepest parenthesis nesting; also bounds the parser's recursion."""

OPERATORS: frozenset[str] = frozenset("+-*/")
# Typographic operators models (and people) write; mapped to ASCII so the canonical form is unique.
OPERATOR_ALIASES: dict[str, str] = {
    "×": "*",
    "·": "*",
    "⋅": "*",
    "∗": "*",
    "÷": "/",
    "−": "-",
    "–": "-",
}
_PRECEDENCE: dict[str, int] = {"+": 1, "-": 1, "*": 2, "/": 2}


class FormulaStatus(StrEnum):
    """How far a formula got: complete, a valid but unfinished prefix, or one of the errors."""

    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    EMPTY = "empty"
    ILLEGAL_CHARACTERS = "illegal_characters"
    SYNTAX_ERROR = "syntax_error"
    TOO_LONG = "too_long"


@dataclass(frozen=True)
class ParsedFormula:
    """The outcome of :func:`parse_formula`. ``value`` is set only for complete formulas without x/0."""

    source: str
    """The formula as given, with any ``= ...`` suffix removed."""
    status: FormulaStatus
    tokens: tuple[str, ...] = ()
    """Canonical tokens: ASCII operators, integers without leading zeros (empty if untokenizable)."""
    message: str = ""
    """Why the formula is not complete; empty when it is."""
    value: Fraction | None = None
    zero_division: bool = False
    open_parens: int = 0
    """Unclosed ``(`` of an incomplete formula."""

    @property
    def canonical(self) -> str:
        return "".join(self.tokens)

    @property
    def numbers(self) -> list[int]:
        return [int(t) for t in self.tokens if t.isdigit()]

    @property
    def is_complete(self) -> bool:
        return self.status is FormulaStatus.COMPLETE

    @property
    def is_error(self) -> bool:
        """Illegal characters, bad syntax or over a limit (an empty or unfinished formula is no error)."""
        return self.status in (
            FormulaStatus.ILLEGAL_CHARACTERS,
            FormulaStatus.SYNTAX_ERROR,
            FormulaStatus.TOO_LONG,
        )


def strip_equals(text: str) -> str:
    """The left side of ``formula = result`` (the first segment when there are several ``=``)."""
    return text.split("=", 1)[0]


def _is_ascii_digit(ch: str) -> bool:
    # str.isdigit() also accepts e.g. Arabic-Indic and superscript digits, which are not card numbers.
    return "0" <= ch <= "9"


def _tokenize(text: str) -> tuple[list[str], list[str]]:
    """Canonical tokens and the distinct illegal characters (in order of appearance)."""
    tokens: list[str] = []
    illegal: list[str] = []
    digits: list[str] = []
    for ch in text:
        if _is_ascii_digit(ch):
            digits.append(ch)
            continue
        if digits:
            tokens.append(str(int("".join(digits))))
            digits = []
        op = OPERATOR_ALIASES.get(ch, ch)
        if op in OPERATORS or op in "()":
            tokens.append(op)
        elif not ch.isspace() and ch not in illegal:
            illegal.append(ch)
    if digits:
        tokens.append(str(int("".join(digits))))
    return tokens, illegal


def tokenize(formula: str) -> tuple[str, ...] | None:
    """Canonical tokens of the left side of ``formula``, or None if it has illegal characters."""
    text = strip_equals(formula)
    if len(text) > MAX_RAW_CHARS:
        return None
    tokens, illegal = _tokenize(text)
    return None if illegal else tuple(tokens)


def canonical(formula: str) -> str:
    """Left side without whitespace, with ASCII operators and plain integers (``"( 8 ÷ 2 )"`` -> ``"(8/2)"``).

    Illegal characters are kept as they are, so two different texts never share a canonical form by
    accident of dropping something.
    """
    text = strip_equals(formula)[:MAX_RAW_CHARS]
    tokens, illegal = _tokenize(text)
    if not illegal:
        return "".join(tokens)
    return "".join(OPERATOR_ALIASES.get(ch, ch) for ch in text if not ch.isspace())


def numbers_in(formula: str) -> list[int]:
    """The integers written in the left side of ``formula``, in order (``"10-4*2=2"`` -> ``[10, 4, 2]``)."""
    text = strip_equals(formula)[:MAX_RAW_CHARS]
    out: list[int] = []
    digits: list[str] = []
    for ch in text + " ":
        if _is_ascii_digit(ch):
            digits.append(ch)
        elif digits:
            out.append(int("".join(digits)))
            digits = []
    return out


class _Incomplete(Exception):
    def __init__(self, open_parens: int) -> None:
        super().__init__("incomplete")
        self.open_parens = open_parens


class _Invalid(Exception):
    def __init__(self, status: FormulaStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _describe(token: str) -> str:
    return "a number" if token.isdigit() else f"'{token}'"


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ; factor := INT | '(' expr ')'.

    No unary signs: card numbers are positive and the paper's verifier rejects ``-3`` too. A value of
    None inside the parser means a division by zero happened below; syntax is still checked to the end.
    """

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0
        self.zero_division = False

    def _peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _unexpected(self, token: str) -> _Invalid:
        prev = self.tokens[self.i - 1] if self.i > 0 else None
        if prev is None:
            return _Invalid(
                FormulaStatus.SYNTAX_ERROR, f"invalid sequence: the formula starts with '{token}'"
            )
        return _Invalid(
            FormulaStatus.SYNTAX_ERROR,
            f"invalid sequence: {_describe(token)} cannot follow {_describe(prev)} ('{prev}{token}')",
        )

    def parse(self) -> Fraction | None:
        value = self._expr()
        token = self._peek()
        if token is None:
            return value
        if token == ")":
            raise _Invalid(FormulaStatus.SYNTAX_ERROR, "unmatched closing parenthesis")
        raise self._unexpected(token)

    def _binary(self, op: str, left: Fraction | None, right: Fraction | None) -> Fraction | None:
        if left is None or right is None:
            return None
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        if right == 0:
            self.zero_division = True
            return None
        return left / right

    def _expr(self) -> Fraction | None:
        value = self._term()
        while (op := self._peek()) in ("+", "-"):
            self.i += 1
            value = self._binary(str(op), value, self._term())
        return value

    def _term(self) -> Fraction | None:
        value = self._factor()
        while (op := self._peek()) in ("*", "/"):
            self.i += 1
            value = self._binary(str(op), value, self._factor())
        return value

    def _factor(self) -> Fraction | None:
        token = self._peek()
        if token is None:
            raise _Incomplete(self.depth)
        if token.isdigit():
            self.i += 1
            return Fraction(int(token))
        if token != "(":
            raise self._unexpected(token)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Invalid(
                FormulaStatus.TOO_LONG, f"formula too deeply nested (over {MAX_DEPTH} parentheses)"
            )
        self.i += 1
        value = self._expr()
        closing = self._peek()
        if closing is None:
            raise _Incomplete(self.depth)
        if closing != ")":
            raise self._unexpected(closing)
        self.i += 1
        self.depth -= 1
        return value


def parse_formula(formula: str) -> ParsedFormula:
    """Classify and evaluate ``formula`` (a trailing ``= 24`` is ignored). Never raises on any string."""
    source = strip_equals(formula)
    if len(source) > MAX_RAW_CHARS:
        return ParsedFormula(source[:MAX_FORMULA_CHARS], FormulaStatus.TOO_LONG, message="formula too long")
    tokens, illegal = _tokenize(source)
    if illegal:
        shown = ", ".join(repr(ch) for ch in illegal[:10])
        return ParsedFormula(source, FormulaStatus.ILLEGAL_CHARACTERS, message=f"illegal characters: {shown}")
    tok = tuple(tokens)
    if sum(not ch.isspace() for ch in source) > MAX_FORMULA_CHARS or len(tokens) > MAX_TOKENS:
        return ParsedFormula(source, FormulaStatus.TOO_LONG, tok, message="formula too long")
    if not tokens:
        return ParsedFormula(source, FormulaStatus.EMPTY, tok, message="the formula is empty")
    parser = _Parser(tokens)
    try:
        value = parser.parse()
    except _Incomplete as inc:
        return ParsedFormula(
            source,
            FormulaStatus.INCOMPLETE,
            tok,
            message="the formula is incomplete",
            open_parens=inc.open_parens,
        )
    except _Invalid as bad:
        return ParsedFormula(source, bad.status, tok, message=bad.message)
    return ParsedFormula(source, FormulaStatus.COMPLETE, tok, value=value, zero_division=parser.zero_division)


def evaluate(formula: str) -> Fraction | None:
    """Exact value of a complete formula; None if it is not complete or divides by zero."""
    return parse_formula(formula).value


def render(op: str, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int]:
    """``left op right`` with the fewest parentheses that keep its value; pieces are (text, precedence).

    Precedence 3 marks an atom. A right operand of equal precedence needs parentheses only under
    ``-`` and ``/`` (``a+(b-c)`` is ``a+b-c`` exactly; ``a-(b-c)`` is not ``a-b-c``).
    """
    prec = _PRECEDENCE[op]
    ltext, lprec = left
    rtext, rprec = right
    if lprec < prec:
        ltext = f"({ltext})"
    if rprec < prec or (rprec == prec and op in "-/"):
        rtext = f"({rtext})"
    return f"{ltext}{op}{rtext}", prec
