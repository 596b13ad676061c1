"""The ``compact`` V-IRL prompt style: a short fixed-layout prompt, answer and feedback.

Written for small models (a character-level model reads every character). The prompt has four lines:
the route (the paper's instruction sentences, shortened), the action space, the current observation
(left out in vision mode: it is only in the street-view grid) and the actions taken so far::

    route: right>southwest | Kyo Chon Chicken BL | right>northwest | BCD tofu house FR
    actions: absolute
    now: Bon Chon Chicken F
    done: turn southwest, forward, forward

A turn sentence becomes ``RELATIVE>COMPASS`` (it names both, as the paper's "turn right to face
southwest" does: the action space says which to answer); a move sentence becomes the landmark that
ends the leg and where it lies (``F`` front, ``FR`` front right, ``R``, ``BR``, ``B``, ``BL``, ``L``,
``FL``), the last one being the destination. Observations use the same codes (``none``: no landmark;
``, intersection`` when at one). Names are folded to ASCII (the character model knows printable ASCII).

The answer is the action alone: ``forward``, ``turn southwest`` / ``turn slightly left``, ``stop``.
:func:`parse_reply` maps it to the paper's action string, so one verifier scores both styles with one
reward table; it carries no observation, so the paper's observation check (-1.5) does not apply.
Feedback after a wrong answer is the verdict's category (``incorrect action``). Pure functions, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any, Final, Literal

from sftrl.environments.virl.rail import INTERSECTION, NO_LANDMARK
from sftrl.street_view.geometry import RELATIVE_PHRASES

READ_PROMPT: Final = "now"
"""The ``read`` task's whole text (after the grid): say what the street view shows, compact form."""
ANSWER_FORMAT: Final = "forward, turn DIRECTION or stop"
"""The answer forms, as the verifier's messages name them (the model itself gets :func:`feedback`)."""
MAX_REPLY_CHARS: Final = 2_000
"""Longer replies are cut before parsing (a compact answer is at most ~20 characters)."""

# Where a thing lies, by the relation names of sftrl.street_view.geometry.RELATIVE_NAMES.
RELATION_CODES: Final[dict[str, str]] = {
    "front": "F",
    "right front": "FR",
    "right": "R",
    "right behind": "BR",
    "behind": "B",
    "left behind": "BL",
    "left": "L",
    "left front": "FL",
}
_PHRASE_CODES: Final = {RELATIVE_PHRASES[name]: code for name, code in RELATION_CODES.items()}
# Longest first: "behind you on the left" must win over "behind you".
_PHRASES: Final = "|".join(re.escape(p) for p in sorted(_PHRASE_CODES, key=len, reverse=True))
# "{name} is {phrase}" (the rail's observations and the instructions' landmark clauses); the greedy
# name takes the last " is " that a known phrase follows, so names may contain " is ".
_WHERE_RE: Final = re.compile(rf"(?P<name>.+) is (?:(?P<phrase>{_PHRASES})|on your (?P<other>.+))", re.I)
_TURN_SENTENCE_RE: Final = re.compile(
    r"(?:\d+\.\s*)?(?:first,\s*)?turn (?P<rel>slightly left|slightly right|left|right)"
    r" to face (?P<dir>\w+)\.?",
    re.I,
)
_MOVE_SENTENCE_RE: Final = re.compile(
    r"(?:\d+\.\s*)?move forward until you reach (?:next intersection|destination) where (?P<where>.+?)\.?",
    re.I,
)
_NUMBER_RE: Final = re.compile(r"\d+\.\s*")
_AT_INTERSECTION: Final = f". {INTERSECTION}"  # how the rail appends it to what is seen
# A compact turn: "turn" and a direction of letters (its spellings are normalize_action's).
_TURN_RE: Final = re.compile(r"turn[ \t]+(?P<dir>[a-z][a-z \t_-]*)", re.I)


def ascii_text(text: str) -> str:
    """``text`` folded to printable ASCII (accents dropped: "Café Köln" -> "Cafe Koln"), spaces collapsed."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(folded.split())


def where_text(text: str) -> str:
    """``"{name} is {phrase}"`` as ``"{name} {CODE}"``; other text unchanged (ASCII-folded)."""
    m = _WHERE_RE.fullmatch(text.strip())
    if m is None:
        return ascii_text(text)
    code = _PHRASE_CODES[m.group("phrase").lower()] if m.group("phrase") else m.group("other")
    return ascii_text(f"{m.group('name')} {code}")


def instruction_item(sentence: str) -> str:
    """One instruction sentence in compact form: ``right>southwest`` or ``Kyo Chon Chicken BL``."""
    text = sentence.strip()
    m = _TURN_SENTENCE_RE.fullmatch(text)
    if m is not None:
        return f"{m.group('rel').lower()}>{m.group('dir').lower()}"
    m = _MOVE_SENTENCE_RE.fullmatch(text)
    if m is not None:
        return where_text(m.group("where"))
    return ascii_text(_NUMBER_RE.sub("", text, count=1))  # not a sentence of the generator: kept


def observation_text(observation: str) -> str:
    """A rail observation in compact form: ``none``, ``X FR`` or ``X FR, intersection``."""
    text = observation.strip()
    at_intersection = text == INTERSECTION or text.endswith(_AT_INTERSECTION)
    text = "" if text == INTERSECTION else text.removesuffix(_AT_INTERSECTION).strip()
    seen = "none" if text in ("", NO_LANDMARK) else where_text(text)
    return f"{seen}, intersection" if at_intersection else seen


def action_text(action: str) -> str:
    """A paper action string in compact form: ``forward()`` -> ``forward``,
    ``turn_direction(slightly left)`` -> ``turn slightly left``."""
    if action.startswith("turn_direction(") and action.endswith(")"):
        return f"turn {action[len('turn_direction(') : -1]}"
    return action.removesuffix("()")


def prompt(
    *,
    instructions: Sequence[str],
    actions: Literal["absolute", "relative"],
    observation: str | None,
    actions_taken: Sequence[str],
) -> str:
    """The compact prompt of one step; ``observation`` None in vision mode (the grid shows it).

    ``instructions``, ``observation`` and ``actions_taken`` are the paper-style texts the env holds.
    """
    lines = [
        "route: " + " | ".join(instruction_item(s) for s in instructions),
        f"actions: {actions}",
    ]
    if observation is not None:
        lines.append(f"now: {observation_text(observation)}")
    lines.append("done: " + (", ".join(action_text(a) for a in actions_taken) or "-"))
    return "\n".join(lines)


def reply(action: str) -> str:
    """The compact answer for a paper action string (what the expert says)."""
    return action_text(action)


def feedback(category: str) -> str:
    """The next user turn after an attempt: the verdict's category in words (``incorrect action``)."""
    return category.replace("_", " ")


def parse_reply(text: str) -> dict[str, Any]:
    """The ``action`` field of a compact answer, in the paper's spelling where it is a compact turn
    (``turn east`` -> ``turn_direction(east)``), else the stripped reply itself, which the verifier's
    :func:`~sftrl.environments.virl.verifier.normalize_action` reads (``forward``, ``stop()``, …).
    Never raises."""
    text = text[:MAX_REPLY_CHARS].strip() if isinstance(text, str) else ""
    m = _TURN_RE.fullmatch(text)
    if m is not None:
        return {"action": f"turn_direction({m.group('dir').strip()})"}
    return {"action": text}
