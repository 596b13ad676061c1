"""V-IRL in tool-calling mode: ``forward()``, ``turn_direction(direction)`` and ``stop()`` as tools.

Each tool also takes the model's ``observation`` and ``instruction`` (the paper's JSON fields), so the
verifier judges a tool call exactly like the JSON reply it becomes.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import BaseModel, Field, create_model

from sftrl.environments.tools import ToolSpec
from sftrl.environments.virl.prompts import directions, reply_text

TOOLS_OUTPUT = (
    "[Output]\nCall exactly one action tool: forward, turn_direction or stop. Pass your current "
    "observation (latest observation{where}) and the current instruction (the sentence to be executed)."
)

_OBS = Field(default="", description="your current observation, e.g. 'You observe an intersection'")
_INSTR = Field(default="", description="the instruction sentence being executed")


class MoveArgs(BaseModel):
    observation: str = _OBS
    instruction: str = _INSTR


def _reply(action: str, args: BaseModel) -> str:
    return reply_text(getattr(args, "observation", ""), getattr(args, "instruction", ""), action)


@functools.cache
def tool_specs(actions: Literal["absolute", "relative"]) -> list[ToolSpec]:
    dirs = directions(actions)
    frame = "compass" if actions == "absolute" else "relative to your heading"
    turn_args = create_model(
        f"TurnArgs_{actions}",
        direction=(Literal[dirs], Field(description=f"one of {', '.join(dirs)}")),  # type: ignore[valid-type]
        observation=(str, _OBS),
        instruction=(str, _INSTR),
    )
    return [
        ToolSpec("forward", "Move forward one step.", MoveArgs, lambda a: _reply("forward()", a)),
        ToolSpec(
            "turn_direction",
            f"Turn to face a direction ({frame}).",
            turn_args,
            lambda a: _reply(f"turn_direction({a.direction})", a),  # type: ignore[attr-defined]
        ),
        ToolSpec("stop", "Stop: the navigation is finished.", MoveArgs, lambda a: _reply("stop()", a)),
    ]


def expert_tool_call(observation: str, instruction: str, action: str) -> dict[str, object]:
    """The tool call equivalent of the expert's JSON reply."""
    args: dict[str, object] = {"observation": observation, "instruction": instruction}
    if action.startswith("turn_direction("):
        return {"name": "turn_direction", "args": {"direction": action[len("turn_direction(") : -1], **args}}
    return {"name": action.removesuffix("()"), "args": args}
