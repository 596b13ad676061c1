"""The V-IRL prompt templates of the paper (Q_VIRL_L / Q_VIRL_VL), the action space text and replies."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from sftrl.street_view.geometry import COMPASS_NAMES

ABSOLUTE_DIRECTIONS: tuple[str, ...] = tuple(COMPASS_NAMES)
RELATIVE_DIRECTIONS: tuple[str, ...] = ("left", "right", "slightly left", "slightly right")

OUTPUT_BLOCK = """[Output]
{
  "current observation": latest observation from the observation sequence,
  "current instruction": analyze the full instruction and identify the sentence to be executed,
  "action": the action to be taken chosen from the action space,
}"""

OUTPUT_BLOCK_VISION = OUTPUT_BLOCK.replace(
    "latest observation from the observation sequence", "latest observation from the street view grid"
)

# The paper's wording, line breaks included (kept verbatim; joined to stay within the line limit).
_TASK_L = (
    "[Task Description]\n"
    "You are an expert in navigation. You will receive a sequence of instructions to follow. You\n"
    "are also provided with your observation and action history in text. Your goal is to first analyze "
    "the instruction and identify the next sentence to be executed.\n"
    "Then, you need to provide the action to be taken based on the current observation and instruction."
)

_TASK_VL = _TASK_L.replace(
    "instructions to follow. You", "instructions to follow while observing your surrounding street views. You"
)

_OBS_FORMAT = """[Observation format]
You observe a 2x2 grid of streetview images with the following headings:
[front, right
 back, left]
You need to identify if any of the landmarks in the instruction are visible in the street view grid."""


def directions(actions: Literal["absolute", "relative"]) -> tuple[str, ...]:
    return ABSOLUTE_DIRECTIONS if actions == "absolute" else RELATIVE_DIRECTIONS


def action_space_text(actions: Literal["absolute", "relative"]) -> str:
    """The [Action space] body listing forward / turn_direction(x) / stop."""
    dirs = "[" + ", ".join(f"'{d}'" for d in directions(actions)) + "]"
    n = "8 directions " if actions == "absolute" else ""
    return (
        '"forward()": indicates moving forward one step\n'
        f'"turn_direction(x)": indicates adjust the ego agent direction towards x direction. '
        f"x could be any following {n}{dirs}\n"
        '"stop()": indicates the navigation is finished.'
    )


def action_list(actions: Literal["absolute", "relative"]) -> list[str]:
    """Every action string of the action space (what the random policy samples from)."""
    return ["forward()", *(f"turn_direction({d})" for d in directions(actions)), "stop()"]


def history_text(observations: Sequence[str], actions_taken: Sequence[str]) -> str:
    """``O_1: … A_1: …`` lines; the last observation has no action yet."""
    lines = []
    for i, obs in enumerate(observations, start=1):
        lines.append(f"O_{i}: {obs}")
        if i <= len(actions_taken):
            lines.append(f"A_{i}: {actions_taken[i - 1]}")
    return "\n".join(lines)


def task_prompt(
    *,
    modality: Literal["language", "vision"],
    instruction: str,
    actions: Literal["absolute", "relative"],
    observations: Sequence[str],
    actions_taken: Sequence[str],
) -> str:
    """The full prompt of one step (the paper's template, filled)."""
    parts = [
        _TASK_VL if modality == "vision" else _TASK_L,
        f"[Instruction]\n{instruction}",
        f"[Action space]\n{action_space_text(actions)}",
    ]
    if modality == "vision":
        parts.append(_OBS_FORMAT)
    parts.append(f"[Observations and actions sequence]\n{history_text(observations, actions_taken)}")
    parts.append(OUTPUT_BLOCK_VISION if modality == "vision" else OUTPUT_BLOCK)
    return "\n\n".join(parts)


def reply_text(observation: str, instruction: str, action: str) -> str:
    """A reply in the paper's response format (what the expert says)."""
    return json.dumps(
        {"current observation": observation, "current instruction": instruction, "action": action},
        ensure_ascii=False,
    )


def feedback_text(message: str) -> str:
    """The revision turn after a wrong attempt."""
    return f"You failed this trial because {message}"
