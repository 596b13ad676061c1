"""The agent loop: sequential revision with verifier feedback, attempt limits, images in messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from sftrl.agents.baselines import ExpertPolicy
from sftrl.agents.loop import run_episode
from sftrl.agents.messages import image_blocks, message_text
from sftrl.agents.policy import Reply, SamplingParams
from sftrl.agents.trajectory import ImageStore
from sftrl.environments import make_env
from sftrl.environments.base import Observation


class Scripted:
    """Replies from a script, then the expert answer; records what it was shown."""

    name = "scripted"

    def __init__(self, wrong: Sequence[str]) -> None:
        self.wrong = list(wrong)
        self.seen: list[list[BaseMessage]] = []

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    async def generate(
        self,
        messages: Sequence[BaseMessage],
        sampling: SamplingParams,
        *,
        observation: Observation | None = None,
    ) -> Reply:
        self.seen.append(list(messages))
        if self.wrong:
            return Reply(text=self.wrong.pop(0))
        assert observation is not None
        return Reply(text=observation.oracle["expert_reply"])


HAND = {"hand": ["3", "3", "8", "8"]}


async def test_expert_solves_first_try():
    env = make_env("gp")
    rec = await run_episode(env, ExpertPolicy(), seed=1)
    assert rec.success and len(rec.turns) == 1
    assert rec.turns[0].verdict.category == "correct" and rec.total_reward == 5.0


async def test_feedback_becomes_a_new_user_turn_and_the_policy_retries():
    env = make_env("gp")
    policy = Scripted(['{"cards": ["3","3","8","8"], "number": [3,3,8,8], "formula": "3+3+8+8"}', "garbage"])
    rec = await run_episode(env, policy, seed=0, reset_options=HAND)
    assert rec.success
    assert [t.attempt for t in rec.turns] == [0, 1, 2]
    assert [t.verdict.category for t in rec.turns] == ["no_solution", "illegal_formula", "correct"]
    third = policy.seen[2]
    assert [type(m) for m in third] == [HumanMessage, AIMessage, HumanMessage, AIMessage, HumanMessage]
    assert message_text(third[2]).startswith("You failed this trial because")
    assert message_text(third[1]) == policy.seen[1][1].content
    assert rec.total_reward == -1.0 - 3.0 + 5.0


async def test_attempts_stop_at_verify_iter_without_an_unverified_extra_try():
    env = make_env("gp", verify_iter=3)
    policy = Scripted(["nope"] * 10)
    rec = await run_episode(env, policy, seed=0)
    assert not rec.success
    assert len(rec.turns) == 3 == len(policy.seen)
    assert all(t.verdict.category == "illegal_formula" for t in rec.turns)


async def test_history_can_keep_only_the_last_retries():
    env = make_env("gp", verify_iter=5)
    policy = Scripted(["a", "b", "c", "d"])
    await run_episode(env, policy, seed=0, keep_last_turns=1)
    assert [len(p) for p in policy.seen] == [1, 3, 3, 3, 3]
    assert "[Task Description]" in message_text(policy.seen[-1][0])


async def test_vision_prompt_carries_the_image_and_the_log_stores_it_once(tmp_path):
    env = make_env("gp", modality="vision", resolution=128)
    policy = Scripted(["x", "y"])
    rec = await run_episode(env, policy, seed=3, images=ImageStore(tmp_path))
    first = policy.seen[0][0]
    blocks = image_blocks(first)
    assert len(blocks) == 1 and blocks[0]["mime_type"] == "image/png"
    # Every logged prompt references the same content-addressed file.
    refs = {
        b["path"]
        for t in rec.turns
        for m in t.prompt
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "image"
    }
    assert refs == {f"images/{blocks[0]['id']}.png"}
    assert len(list((tmp_path / "images").iterdir())) == 1
    assert rec.turns[0].verdict.details["cards_correct"] is False
    assert rec.turns[-1].verdict.details["cards_correct"] is True
