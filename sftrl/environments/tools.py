"""Tool-calling protocol of the envs: each action as a named tool with a pydantic argument schema.

Pure data and pure functions (no langchain, no model code): an env lists its :class:`ToolSpec` s and
turns a tool call back into the reply text its verifier already scores, so JSON mode and tool mode
produce the same episodes and metrics. The agents layer wraps the specs as langchain-core tools.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

Protocol = Literal["json", "tools"]


@dataclass(frozen=True)
class ToolSpec:
    """One action tool: its name, what it does, its arguments and how a call becomes reply text."""

    name: str
    description: str
    args_schema: type[BaseModel]
    to_reply: Callable[[BaseModel], str]


def call_to_reply(specs: list[ToolSpec], name: str, args: dict[str, Any] | None) -> str:
    """The reply text of a tool call, or a plain description of what was wrong with the call.

    A bad call (unknown tool, invalid arguments) is not an error of the run: its text goes to the
    verifier like any malformed reply and is scored as such.
    """
    by_name = {s.name: s for s in specs}
    spec = by_name.get(name)
    if spec is None:
        return f"(called unknown tool {name!r}; tools are {', '.join(by_name)})"
    try:
        parsed = spec.args_schema.model_validate(args or {})
    except ValidationError as exc:
        return f"(invalid arguments for {name}: {exc.errors()[0]['msg']})"
    return spec.to_reply(parsed)
