"""The ``compact`` GeneralPoints prompt style: a short fixed-layout prompt, answer and feedback.

Written for small models (a character-level model reads every character): the prompt states the
cards, the face-card rule in force and the target in one line, ``A 5 J 3 | J=10 Q=10 K=10 | 24``
(vision mode leaves the cards out: they are only in the image). The answer pairs each card with the
number it counts as, then gives the formula: ``A=1 5=5 J=10 3=3: (5-1)*(10-3)`` (in vision mode the
cards named are the ones read from the image, and they are judged). Pairs keep each number next to
its card, so a small model copies the hand card by card (each step looks up the card after the one
it just wrote) instead of having to count positions.
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


def face_text(face_values: Sequence[int]) -> str:
    """``J=10 Q=10 K=10`` for the values J, Q and K count as."""
    j, q, k = face_values
    return f"J={j} Q={q} K={k}"


def prompt(*, ranks: Sequence[str] | None, face_values: Sequence[int], target: int) -> str:
    """The task line; ``ranks`` None in vision mode (the cards are in the image only)."""
    rule = f"{face_text(face_values)} | {target}"
    return rule if ranks is None else f"{' '.join(ranks)} | {rule}"


def reply(*, ranks: Sequence[str], numbers: Sequence[int], formula: str) -> str:
    """An answer in compact form: ``CARD=NUMBER ...: FORMULA``."""
    pairs = " ".join(f"{r}={n}" for r, n in zip(ranks, numbers, strict=True))
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
