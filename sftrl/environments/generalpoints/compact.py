"""The ``compact`` GeneralPoints prompt style: a short fixed-layout prompt, answer and feedback.

Written for small models (a character-level model reads every character): the prompt states the
cards, the face-card rule in force and the target in one line, ``A 5 J 3 | J=10 Q=10 K=10 | 24``
(vision mode leaves the cards out: they are only in the image). The answer is
``[CARDS =] NUMBERS : FORMULA``, e.g. ``1 5 10 3: (5-1)*(10-3)`` (language) or
``A 5 J 3 = 1 5 10 3: (5-1)*(10-3)`` (vision, where the cards read from the image are judged).
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


def reply(*, numbers: Sequence[int], formula: str, ranks: Sequence[str] | None = None) -> str:
    """An answer in compact form (``ranks`` given in vision mode, where the cards are judged)."""
    body = f"{' '.join(str(n) for n in numbers)}: {formula}"
    return body if ranks is None else f"{' '.join(ranks)} = {body}"


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
    cards, eq, numbers = head.rpartition("=")
    if eq:
        fields["cards"] = cards.split()
    fields["number"] = [int(n) if _INT.fullmatch(n) else n for n in numbers.split()]
    return fields
