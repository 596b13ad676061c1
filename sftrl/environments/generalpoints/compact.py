"""The ``compact`` GeneralPoints prompt style: a short fixed-layout prompt, answer and feedback.

Written for small models (a character-level model reads every character): the prompt states the
cards, the face-card rule in force and the target in one line, ``A 5 J 3 | J=10 Q=10 K=10 | 24``
(vision mode leaves the cards out: they are only in the image). The answer pairs each card with the
number it counts as, then gives the formula: ``5=5 A=1 J=10 3=3: (5-1)*(10-3)`` (in vision mode the
cards named are the ones read from the image, and they are judged, as a multiset). The pairs come in
the order the formula uses the numbers, so the formula copies the numbers left to right from the
pairs just written: a small model chooses the order and the operators, and never has to track which
of the hand's numbers it has used (build 2 of the stage-0 model, pairs in hand order, failed that
way on 9 of 10 attempts; docs/repro.md).
:func:`parse_reply` turns it into the same fields the paper-style JSON gives, so one verifier scores
both styles with one reward table; feedback is the verdict's category and, for a wrong value, the
value (``no solution 28``). Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

MAX_REPLY_CHARS = 2_000
"""Longer replies are cut before parsing (a compact answer is ~30 characters)."""

_INT = re.compile(r"-?\d{1,12}")
_INT_LITERAL = re.compile(r"\d+")


def face_text(face_values: Sequence[int]) -> str:
    """``J=10 Q=10 K=10`` for the values J, Q and K count as."""
    j, q, k = face_values
    return f"J={j} Q={q} K={k}"


def prompt(*, ranks: Sequence[str] | None, face_values: Sequence[int], target: int) -> str:
    """The task line; ``ranks`` None in vision mode (the cards are in the image only)."""
    rule = f"{face_text(face_values)} | {target}"
    return rule if ranks is None else f"{' '.join(ranks)} | {rule}"


def formula_order(ranks: Sequence[str], numbers: Sequence[int], formula: str) -> list[tuple[str, int]]:
    """The ``(card, number)`` pairs in the order ``formula`` uses the numbers.

    Each number literal of the formula takes the first unused card of that value; cards the formula
    does not use follow in hand order: ``A 8 5 4`` with ``8-4*(1-5)`` gives ``8 4 A 5``.
    """
    pairs = list(zip(ranks, numbers, strict=True))
    used = [False] * len(pairs)
    out: list[tuple[str, int]] = []
    for literal in _INT_LITERAL.findall(formula):
        value = int(literal)
        for i, (_, n) in enumerate(pairs):
            if not used[i] and n == value:
                used[i] = True
                out.append(pairs[i])
                break
    return out + [p for i, p in enumerate(pairs) if not used[i]]


def in_hand_order(numbers: Sequence[int], formula: str) -> bool:
    """Whether ``formula``'s number literals are exactly ``numbers``, in that order."""
    return [int(x) for x in _INT_LITERAL.findall(formula)] == [int(n) for n in numbers]


def reply(*, ranks: Sequence[str], numbers: Sequence[int], formula: str) -> str:
    """An answer in compact form: ``CARD=NUMBER ...: FORMULA``, pairs in formula order
    (:func:`formula_order`; the verifier compares cards as a multiset, so any order is valid)."""
    pairs = " ".join(f"{r}={n}" for r, n in formula_order(ranks, numbers, formula))
    return f"{pairs}: {formula}"


def feedback(category: str, details: dict[str, Any]) -> str:
    """The next user turn after a failed attempt: the category, plus the value a wrong formula gave."""
    text = category.replace("_", " ")
    value = details.get("formula_value")
    if category == "no_solution" and value is not None:
        text += f" {value}"
    return text


def parse_reply(text: str) -> dict[str, Any]:
    """The fields of a compact answer: ``formula`` always (everything after the first ``:``, or the
    whole reply when there is none), ``number`` and ``cards`` when present. Never raises."""
    text = text[:MAX_REPLY_CHARS].strip()
    head, sep, formula = text.partition(":")
    if not sep:
        return {"formula": text}
    fields: dict[str, Any] = {"formula": formula.strip()}
    cards, numbers = [], []
    for item in head.split():
        card, eq, number = item.rpartition("=")
        if eq and card:
            cards.append(card)
        numbers.append(int(number) if _INT.fullmatch(number) else number)
    fields["number"] = numbers
    if cards:
        fields["cards"] = cards
    return fields
