"""GeneralPoints in tool-calling mode: one ``submit(cards, numbers, formula)`` tool."""

from __future__ import annotations

from pydantic import BaseModel, Field

from sftrl.environments.generalpoints.prompts import reply_text
from sftrl.environments.tools import ToolSpec

TOOLS_OUTPUT = (
    "[Output]\nCall the `submit` tool with the cards you see, the number each card counts as, and a "
    "formula that equals {target} using each number once."
)


class SubmitArgs(BaseModel):
    cards: list[str] = Field(description="the four cards, e.g. ['K', '3', 'A', '8']")
    numbers: list[int] = Field(description="the number each card counts as, in the same order")
    formula: str = Field(description="an equation using each number once, e.g. '(10-3)*3+3=24'")


def _submit(args: BaseModel) -> str:
    assert isinstance(args, SubmitArgs)
    return reply_text(ranks=args.cards, numbers=args.numbers, formula=args.formula)


SUBMIT = ToolSpec(
    name="submit",
    description="Submit your answer: the cards, their numbers and a formula reaching the target.",
    args_schema=SubmitArgs,
    to_reply=_submit,
)


def tool_specs() -> list[ToolSpec]:
    return [SUBMIT]
