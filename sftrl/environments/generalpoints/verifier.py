"""The pure GeneralPoints verifier: judge one reply (cards, numbers, formula) and give one Verdict.

Categories and rewards follow the paper's verifier (correct +5, partial +1, no solution -1, wrong cards
-1.5, wrong numbers -2, illegal formula -3), checked in that paper's order, with three of its bugs fixed:
arithmetic is exact (``8/(3-8/3)`` is 24), spaces inside a formula are fine, and strict JSON replies
are read like loose ones. Messages never reveal the hand or a solution.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict

from sftrl.environments.base import PromptStyle, Verdict
from sftrl.environments.generalpoints import compact
from sftrl.environments.generalpoints.cards import Card, FaceRule, rank_value
from sftrl.environments.generalpoints.formula import (
    MAX_RAW_CHARS,
    FormulaStatus,
    ParsedFormula,
    parse_formula,
    tokenize,
)
from sftrl.environments.parsing import as_list, extract_fields, strip_code_fences

REWARDS: dict[str, float] = {
    "correct": 5.0,
    "partial_solution": 1.0,
    "no_solution": -1.0,
    "incorrect_vision": -1.5,
    "incorrect_numbers": -2.0,
    "illegal_formula": -3.0,
}
FIELDS: tuple[str, ...] = ("cards", "number", "formula")


class GPState(BaseModel):
    """What the verifier knows about the current hand."""

    model_config = ConfigDict(frozen=True)

    ranks: tuple[str, ...]
    """Ranks as printed: "A", "2".."10", "J", "Q", "K"."""
    values: tuple[int, ...]
    """The numbers the cards stand for under the face-card rule in force."""
    target: int
    solutions: tuple[str, ...]
    """Canonical formulas (no spaces) reaching ``target``; the solver's output."""
    check_cards: bool = False
    """True in vision mode: the reply's "cards" must name the hand."""

    @classmethod
    def for_hand(
        cls,
        ranks: Sequence[str],
        *,
        face_cards: FaceRule = "10",
        target: int = 24,
        check_cards: bool = False,
    ) -> GPState:
        """A state for ``ranks`` with values and solutions worked out (convenient for tests and tools)."""
        from sftrl.environments.generalpoints.solver import solve

        values = tuple(rank_value(r, face_cards) for r in ranks)
        return cls(
            ranks=tuple(Card(rank=r).rank for r in ranks),
            values=values,
            target=target,
            solutions=solve(values, target),
            check_cards=check_cards,
        )


def normalize_rank(x: Any) -> str | None:
    """Canonical rank of a card as a model may write it ("a", "ace", 1, "T", 10, "queen", "QH", "10♠").

    None when ``x`` does not name a rank (11, "X", True, None, ...).
    """
    if isinstance(x, bool):
        return None
    if isinstance(x, float):
        if not x.is_integer():
            return None
        x = int(x)
    if not isinstance(x, int | str):
        return None
    text = str(x).strip().strip("\"'`").strip()
    if not text or len(text) > 40:
        return None
    try:
        return Card.parse(text).rank
    except ValueError:
        return None


def _verdict(category: str, message: str, action: dict[str, Any], details: dict[str, Any]) -> Verdict:
    return Verdict(
        reward=REWARDS[category],
        category=category,
        message=message,
        correct=category == "correct",
        action=action or None,
        details=details,
    )


def _as_int(item: str) -> int | str:
    text = item.strip()
    if text.isascii() and text.isdigit() and len(text) <= 12:
        return int(text)
    return text


def _formula_text(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return str(raw)
    return None


def _bare_formula(reply: str) -> str | None:
    """The whole reply when it is nothing but a formula (``3+3+8+8`` or ``(8/(3-8/3))=24``)."""
    text = strip_code_fences(reply[: MAX_RAW_CHARS + 16]).strip().strip("`'\"").strip()
    if not text or len(text) > MAX_RAW_CHARS or not any("0" <= ch <= "9" for ch in text):
        return None
    return text if tokenize(text.replace("=", " ")) is not None else None


@lru_cache(maxsize=512)
def _solution_prefixes(solutions: tuple[str, ...]) -> frozenset[str]:
    """Every prefix of every solution that ends on a token boundary ("8/(3" but not "1" of "10")."""
    out: set[str] = set()
    for sol in solutions:
        for i in range(1, len(sol) + 1):
            if i == len(sol) or not (sol[i - 1].isdigit() and sol[i].isdigit()):
                out.add(sol[:i])
    return frozenset(out)


def _partial_prefix(parsed: ParsedFormula, solutions: tuple[str, ...]) -> str:
    """The longest token-wise prefix of the formula that starts some solution ("" if none).

    Only prefixes worth naming count: ending in a number or ``)`` and holding at least two numbers
    (a lone "(" or "8" starts almost every solution and tells the model nothing).
    """
    prefixes = _solution_prefixes(solutions)
    best = ""
    text = ""
    numbers = 0
    for token in parsed.tokens:
        text += token
        if text not in prefixes:
            break
        numbers += token.isdigit()
        if numbers >= 2 and (token.isdigit() or token == ")"):
            best = text
    return best


def _is_partial(parsed: ParsedFormula, state: GPState) -> bool:
    """An unfinished formula is partial if it starts a solution or closing its brackets solves the task.

    The second test matters because solutions are listed with minimal brackets: ``(8/(3-8/3`` starts
    no listed solution of 3,3,8,8, yet ``(8/(3-8/3))`` is one.
    """
    if parsed.canonical in _solution_prefixes(state.solutions):
        return True
    if parsed.open_parens == 0:
        return False
    closed = parse_formula(parsed.canonical + ")" * parsed.open_parens)
    return closed.is_complete and closed.value == state.target


def _count_mismatch(got: Sequence[Any], want: Sequence[Any]) -> list[Any]:
    """Sorted, distinct items of ``got`` that exceed their multiplicity in ``want``."""
    extra = Counter(got) - Counter(want)
    return sorted(extra)


def verify(state: GPState, reply: str, *, style: PromptStyle = "paper") -> Verdict:
    """Judge one reply against ``state`` (pure: same inputs, same verdict). Never raises.

    ``style`` says how the reply is read: the paper's JSON-like object, or the ``compact`` answer
    (:mod:`~sftrl.environments.generalpoints.compact`); everything after reading is the same.
    """
    reply = reply if isinstance(reply, str) else str(reply)
    fields = compact.parse_reply(reply) if style == "compact" else extract_fields(reply, FIELDS)
    action: dict[str, Any] = {}
    details: dict[str, Any] = {}
    cards = as_list(fields.get("cards"))
    if cards is not None:
        action["cards"] = cards
    numbers = as_list(fields.get("number"))
    if numbers is not None:
        action["number"] = [_as_int(n) for n in numbers]
    formula = _formula_text(fields.get("formula"))
    if formula is None and not fields:
        formula = _bare_formula(reply)
    if formula is not None:
        action["formula"] = formula

    if state.check_cards:
        ranks = [normalize_rank(c) for c in cards or []]
        known = [r for r in ranks if r is not None]
        ok = cards is not None and len(known) == len(ranks) and Counter(known) == Counter(state.ranks)
        details["cards_correct"] = ok
        if not ok:
            if not cards:
                why = "you recognized wrong cards: no cards found in your answer"
            else:
                # Say how many are off, never which ones they should be.
                matched = sum((Counter(known) & Counter(state.ranks)).values())
                wrong = max(len(ranks), len(state.ranks)) - matched
                why = f"you recognized wrong cards ({wrong} of {len(state.ranks)} wrong)"
            return _verdict("incorrect_vision", why, action, details)

    if formula is None or not formula.strip():
        return _verdict("illegal_formula", "no formula found in your answer", action, details)
    parsed = parse_formula(formula)
    details["formula_status"] = str(parsed.status)
    if parsed.status is FormulaStatus.EMPTY:
        return _verdict("illegal_formula", "no formula found in your answer", action, details)
    if parsed.is_error:
        return _verdict("illegal_formula", parsed.message, action, details)

    used = parsed.numbers
    invalid = sorted({n for n in used if n not in state.values})
    overused = [n for n in _count_mismatch(used, state.values) if n not in invalid]
    unused = _count_mismatch(state.values, used)
    problems = []
    if invalid:
        problems.append(f"you used invalid numbers: {invalid}")
    elif overused:
        problems.append(f"you used numbers: {overused} too many times")
    if unused:
        problems.append(f"you didn't use numbers: {unused}")
    if problems:
        return _verdict("incorrect_numbers", ", ".join(problems), action, details)

    if parsed.status is FormulaStatus.INCOMPLETE:
        if _is_partial(parsed, state):
            return _verdict(
                "partial_solution", "partial solution: the formula is incomplete", action, details
            )
        return _verdict("illegal_formula", "the formula is incomplete", action, details)

    if parsed.zero_division or parsed.value is None:
        return _verdict("no_solution", "division by zero", action, details)
    details["formula_value"] = str(parsed.value)
    if parsed.value == state.target:
        return _verdict("correct", "Correct solution", action, details)
    prefix = _partial_prefix(parsed, state.solutions)
    if prefix:
        message = (
            f"your formula evaluates to {parsed.value}, not {state.target} "
            f"(its start {prefix} matches a solution; the rest does not)"
        )
    else:
        message = f"your formula evaluates to {parsed.value}, not {state.target}"
    return _verdict("no_solution", message, action, details)
