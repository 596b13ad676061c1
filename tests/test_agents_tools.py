"""Tool-calling mode: env actions as langchain tools, same episodes and metrics as JSON mode."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import BaseTool

from sftrl.agents.baselines import ExpertPolicy
from sftrl.agents.loop import run_episode
from sftrl.agents.messages import message_to_record, record_to_message
from sftrl.agents.policy import Reply, SamplingParams
from sftrl.agents.tools import langchain_tools, openai_tools
from sftrl.environments import make_env
from sftrl.environments.base import Observation


async def test_expert_tool_calls_solve_both_envs():
    for name, kwargs in (("gp", {}), ("virl", {}), ("virl", {"actions": "relative"})):
        env = make_env(name, protocol="tools", **kwargs)
        json_env = make_env(name, **kwargs)
        rec = await run_episode(env, ExpertPolicy(), seed=3)
        ref = await run_episode(json_env, ExpertPolicy(), seed=3)
        assert rec.success and rec.total_reward == ref.total_reward
        assert len(rec.turns) == len(ref.turns)
        assert all(t.reply.tool_calls for t in rec.turns)


def test_tools_have_pydantic_schemas_and_openai_form():
    env = make_env("virl", protocol="tools", actions="relative")
    tools = langchain_tools(env.tool_specs())
    assert [t.name for t in tools] == ["forward", "turn_direction", "stop"]
    spec = {t["function"]["name"]: t["function"] for t in openai_tools(tools)}
    assert spec["turn_direction"]["parameters"]["properties"]["direction"]["enum"] == [
        "left",
        "right",
        "slightly left",
        "slightly right",
    ]
    gp = openai_tools(langchain_tools(make_env("gp", protocol="tools").tool_specs()))
    assert set(gp[0]["function"]["parameters"]["properties"]) == {"cards", "numbers", "formula"}


class WrongThenExpert:
    """First a bad tool call (wrong argument), then the expert's call."""

    name = "wrong-then-expert"

    def __init__(self) -> None:
        self.seen: list[list[BaseMessage]] = []

    def describe(self) -> dict:
        return {"name": self.name}

    async def generate(
        self,
        messages: Sequence[BaseMessage],
        sampling: SamplingParams,
        *,
        observation: Observation | None = None,
        tools: Sequence[BaseTool] | None = None,
    ) -> Reply:
        assert tools, "tool mode passes the tools"
        self.seen.append(list(messages))
        assert observation is not None
        if len(self.seen) == 1:
            call = {"name": "submit", "args": {"cards": ["A"], "numbers": [1], "formula": "1+"}, "id": "c1"}
            return Reply(text="", tool_calls=[call])
        return Reply(text="", tool_calls=[{**observation.oracle["expert_tool_call"], "id": "c2"}])


async def test_feedback_comes_back_as_the_tool_result():
    env = make_env("gp", protocol="tools")
    policy = WrongThenExpert()
    rec = await run_episode(env, policy, seed=0)
    assert rec.success and len(rec.turns) == 2 and rec.turns[0].reward < 0
    second = policy.seen[1]
    assert isinstance(second[1], AIMessage) and second[1].tool_calls[0]["id"] == "c1"
    assert isinstance(second[2], ToolMessage) and second[2].tool_call_id == "c1"
    assert "You failed this trial because" in str(second[2].content)
    # The log keeps tool calls and tool results, and they load back as the same messages.
    records = rec.turns[1].prompt
    assert records[2]["role"] == "tool" and records[1]["tool_calls"][0]["name"] == "submit"
    back = [record_to_message(r) for r in records]
    assert isinstance(back[2], ToolMessage) and back[1].tool_calls[0]["id"] == "c1"
    assert message_to_record(back[1]) == records[1]


async def test_a_reply_without_tool_call_is_scored_as_text():
    class TextOnly(WrongThenExpert):
        async def generate(self, messages, sampling, *, observation=None, tools=None):
            return Reply(text="I think it is 24")

    rec = await run_episode(make_env("gp", protocol="tools", verify_iter=2), TextOnly(), seed=0)
    assert not rec.success and len(rec.turns) == 2
    assert rec.turns[0].verdict.category == "illegal_formula"
