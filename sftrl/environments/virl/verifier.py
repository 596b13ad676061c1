"""The pure V-IRL verifier: parse a reply, normalise its action, judge observation and action.

Rewards follow the paper: correct action +1, incorrect action -1, incorrect observation -1.5 (the
reply's "current observation" claims an intersection where there is none, or misses one). An
unparseable reply counts as an incorrect action (-1) with a message saying what the format must be.
Replies in the ``compact`` style (:mod:`~sftrl.environments.virl.compact`) are read into the same
fields and judged the same way; they carry no observation, so their states skip the observation check.
:func:`verify_reading` judges the ``read`` task's replies: what the street view shows, in compact form.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from sftrl.environments.base import PromptStyle, Verdict
from sftrl.environments.virl import compact
from sftrl.environments.virl.prompts import OUTPUT_BLOCK, directions

FIELDS: Final = ["current observation", "current instruction", "action"]

REWARD_CORRECT: Final = 1.0
REWARD_INCORRECT_ACTION: Final = -1.0
REWARD_INCORRECT_OBSERVATION: Final = -1.5

_NEGATED_INTERSECTION_RE = re.compile(
    r"\b(no|not|without|isn't|aren't|none|never)\b[^.;]*\bintersections?\b", re.IGNORECASE
)


@dataclass(frozen=True)
class VIRLState:
    """What the verifier needs to know about the current rail point (or free-mode position)."""

    gt_action: str
    at_intersection: bool
    actions: Literal["absolute", "relative"] = "absolute"
    instruction: str = ""
    output_block: str = OUTPUT_BLOCK
    check_observation: bool = True


# The action grammar, matched case-insensitively against the whole (stripped) action string:
#
#   action    := Q? call Q?                          Q: one of ' " `, the same on both sides
#   call      := ("forward" | "stop") (S "(" S ")")?
#              | turn S "(" S (("x" | "direction") S "=" S)? Q? direction Q? S ")"
#   turn      := "turn_direction" | "turn direction" | "turn-direction" | "turn"
#   direction := a name of the action space; its words joined by spaces, "-" or "_" (absolute
#                names also written as one word: "north east", "north-east", "northeast")
#   S         := spaces or tabs (never a newline)
#
# Anything else (stray characters inside the parentheses, signs, trailing punctuation, newlines)
# is not an action: the reply scores as an incorrect action with the allowed spellings listed.
_S: Final = r"[ \t]*"
_SEP: Final = r"(?:[ \t]+|[-_])"


def _direction_pattern(name: str, actions: str) -> str:
    if actions == "absolute" and name not in ("north", "south", "east", "west"):
        head, tail = name[:5], name[5:]  # northeast -> north + east, southwest -> south + west
        return f"{head}{_SEP}?{tail}"
    return _SEP.join(re.escape(word) for word in name.split())


def _action_re(actions: Literal["absolute", "relative"]) -> re.Pattern[str]:
    names = sorted(directions(actions), key=len, reverse=True)
    direction = "|".join(f"(?P<d{i}>{_direction_pattern(n, actions)})" for i, n in enumerate(names))
    quoted_dir = rf"(?P<dq>['\"`]?)(?:{direction})(?P=dq)"
    call = (
        rf"(?P<plain>forward|stop)(?:{_S}\({_S}\))?"
        rf"|turn(?:[_ -]direction)?{_S}\({_S}(?:(?:x|direction){_S}={_S})?{quoted_dir}{_S}\)"
    )
    return re.compile(rf"(?P<q>['\"`]?)(?:{call})(?P=q)", re.IGNORECASE)


_ACTION_RES: Final = {a: _action_re(a) for a in ("absolute", "relative")}


def normalize_action(text: Any, actions: Literal["absolute", "relative"] = "absolute") -> str | None:
    """Canonical action string (``forward()``, ``turn_direction(northeast)``, ``stop()``) or None.

    Exact grammar (above): case, surrounding quotes, spaces, a missing ``()`` on forward/stop,
    ``turn_direction`` written with a space or hyphen (or as ``turn``), an ``x=`` keyword and
    direction words joined by space/hyphen are accepted; nothing else is. Directions outside the
    action space (e.g. "north" in relative mode) give None.
    """
    if not isinstance(text, str):
        return None
    m = _ACTION_RES[actions].fullmatch(text.strip())
    if m is None:
        return None
    if m.group("plain"):
        return f"{m.group('plain').lower()}()"
    names = sorted(directions(actions), key=len, reverse=True)
    for i, name in enumerate(names):
        if m.group(f"d{i}"):
            return f"turn_direction({name})"
    return None


def claims_intersection(observation: str) -> bool:
    """Whether an observation text says the agent is at an intersection (negations count as no)."""
    low = observation.lower()
    if "intersection" not in low:
        return False
    return not _NEGATED_INTERSECTION_RE.search(low)


def _fallback_extract(text: str, keys: list[str]) -> dict[str, Any]:
    """Minimal field extraction used only while ``sftrl.environments.parsing`` is unavailable."""
    for m in re.finditer(r"\{.*\}", text, re.DOTALL):
        try:
            obj = json.loads(m.group())
        except ValueError:
            continue
        if isinstance(obj, dict):
            low = {str(k).strip().lower(): v for k, v in obj.items()}
            return {k: low.get(k) for k in keys}
    out: dict[str, Any] = {}
    for k in keys:
        km = re.search(rf'"?{re.escape(k)}"?\s*:\s*"([^"\n]*)"', text, re.IGNORECASE)
        out[k] = km.group(1) if km else None
    return out


def _extract(reply: str) -> dict[str, Any] | None:
    try:
        from sftrl.environments.parsing import extract_fields
    except ImportError:  # the shared parser is optional for this module; keep a minimal fallback
        extract_fields = _fallback_extract
    try:
        fields = extract_fields(reply, FIELDS)
    except Exception:  # a malformed reply is the model's error, never the env's
        return None
    if not isinstance(fields, dict):
        return None
    return fields


def verify(state: VIRLState, reply: str, *, style: PromptStyle = "paper") -> Verdict:
    """Judge one reply against the current state (pure: same inputs, same verdict).

    ``style`` says how the reply is read: the paper's JSON-like object, or the ``compact`` answer (the
    action alone); everything after reading is the same.
    """
    fields = compact.parse_reply(reply) if style == "compact" else (_extract(reply) or {})
    raw_action = fields.get("action")
    obs = fields.get("current observation")
    instr = fields.get("current instruction")
    action = normalize_action(raw_action, state.actions)
    parsed = {"action": action, "observation": obs, "instruction": instr}
    details: dict[str, Any] = {"gt_action": state.gt_action, "raw_action": raw_action}
    if action is None:
        if raw_action is None:
            why = (
                'your reply could not be parsed: answer with a JSON object holding "current observation", '
                '"current instruction" and "action".'
            )
        else:
            allowed = ", ".join(
                ["forward()", *(f"turn_direction({d})" for d in directions(state.actions)), "stop()"]
            )
            why = f"the action {str(raw_action)!r} is not in the action space ({allowed})."
        return Verdict(
            reward=REWARD_INCORRECT_ACTION,
            category="unparseable",
            message=f"{why} Please try again in the same format:\n{state.output_block}",
            correct=False,
            action=parsed if fields else None,
            details=details,
        )
    # A missing observation claims nothing, so it is wrong exactly where there is an intersection.
    obs_text = obs if isinstance(obs, str) else ""
    if state.check_observation and claims_intersection(obs_text) != state.at_intersection:
        where = "at an intersection" if state.at_intersection else "not at any intersection"
        return Verdict(
            reward=REWARD_INCORRECT_OBSERVATION,
            category="incorrect_observation",
            message=f"you are {where}. Please avoid this observation and try again in the same format:\n"
            f"{state.output_block}",
            correct=False,
            action=parsed,
            details=details,
        )
    if action != state.gt_action:
        return Verdict(
            reward=REWARD_INCORRECT_ACTION,
            category="incorrect_action",
            message="you make incorrect action. Please avoid this action and try again in the same format:\n"
            f"{state.output_block}",
            correct=False,
            action=parsed,
            details=details,
        )
    return Verdict(
        reward=REWARD_CORRECT,
        category="correct_action",
        message="Correct action",
        correct=True,
        action=parsed,
        details=details,
    )


def verify_reading(observation: str, reply: str) -> Verdict:
    """Judge a reading of the street view (the env's ``read`` task) against the rail's ``observation``.

    Right when the reply, folded to ASCII with spaces collapsed and case ignored, is the compact
    observation (:func:`compact.observation_text`: ``Bon Chon Chicken F``, ``none, intersection``):
    the landmark's name, where it lies and whether this is an intersection, all at once. Reward 1 or 0.
    ``details["landmark_correct"]`` feeds the run summary's ``recognition_accuracy``; on the views that
    show a landmark (``details["landmark_in_view"]``) also its ``landmark_recognition_accuracy``, since
    answering ``none`` everywhere is right at every plain point.
    """
    truth = compact.observation_text(observation)
    read = compact.ascii_text(reply[: compact.MAX_REPLY_CHARS])
    correct = read.lower() == truth.lower()
    details = {
        "gt_observation": truth,
        "landmark_correct": correct,
        "landmark_in_view": not (truth == "none" or truth.startswith("none,")),
    }
    if correct:
        return Verdict(
            reward=1.0, category="correct_reading", message="correct", correct=True, details=details
        )
    return Verdict(
        reward=0.0,
        category="incorrect_reading",
        message=f"the street view shows: {truth}",
        correct=False,
        details=details,
    )
