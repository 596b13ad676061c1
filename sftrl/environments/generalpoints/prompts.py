"""GeneralPoints prompt and reply templates, worded as in the paper's released prompts."""

from __future__ import annotations

from collections.abc import Sequence

_TASK = """[Task Description]
You are an expert {target} points card game player. {observing}
Note that {face_rule}, and each card must be used once.
Your goal is to output a formula that evaluates to {target} using numbers from the cards and operators \
such as '+', '-', '*', '/', '(', ')', and '='.
"""

_LANGUAGE = (
    _TASK
    + """
[Input]
Cards: {cards}

[Output]
{{
  "cards": [x, y, z, w], where {face_rule},
  "number": [a, b, c, d], where a, b, c, and d are the numbers on the cards,
  "formula": 'an equation that equals {target}',
}}
"""
)

_VISION = (
    _TASK
    + """
[Output]
Your response should be a valid json file in the following format:
{{
  "cards": [x, y, z, w], where {face_rule},
  "number": [a, b, c, d], where a, b, c, and d are the numbers on the cards,
  "formula": 'an equation that equals {target}',
}}
"""
)

_REPLY = """{{
  "cards": {cards},
  "number": {numbers},
  "formula": "{formula}",
}}"""


def task_prompt(*, modality: str, ranks: Sequence[str], target: int, face_rule: str) -> str:
    """The first user turn. In vision mode the cards are only in the image, never in the text."""
    if modality == "vision":
        return _VISION.format(
            target=target, face_rule=face_rule, observing="You are observing these four cards in the image."
        )
    return _LANGUAGE.format(
        target=target,
        face_rule=face_rule,
        observing="You will receive a set of 4 cards.",
        cards=repr(list(ranks)),
    )


def reply_text(*, ranks: Sequence[str], numbers: Sequence[int], formula: str) -> str:
    """A reply in the paper's (loose-JSON) response format, as its SFT demonstrations are written."""
    return _REPLY.format(cards=repr(list(ranks)), numbers=repr(list(numbers)), formula=formula)


def feedback_text(message: str) -> str:
    """The verifier's message as the next user turn (sequential revision)."""
    message = message.strip()
    if not message.endswith((".", "!", "?")):
        message += "."
    return f"You failed this trial because {message}"
