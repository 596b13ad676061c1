"""Non-model policies: ``expert`` (the env's solver; the source of SFT demonstrations) and ``random``."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.tools import BaseTool

from sftrl.agents.messages import message_text
from sftrl.agents.policy import Reply, SamplingParams
from sftrl.environments.base import Observation
from sftrl.environments.registry import env_class


class PolicyInputError(ValueError):
    """A non-model policy was called without the observation it needs."""


class ExpertPolicy:
    """Answers with the env's oracle reply (a correct, well-formatted answer for the current state)."""

    name = "expert"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "expert"}

    async def generate(
        self,
        messages: Sequence[BaseMessage],
        sampling: SamplingParams,
        *,
        observation: Observation | None = None,
        tools: Sequence[BaseTool] | None = None,
    ) -> Reply:
        if observation is None or "expert_reply" not in observation.oracle:
            raise PolicyInputError("the expert policy needs an observation with an oracle expert_reply")
        call = observation.oracle.get("expert_tool_call")
        if tools and call:
            calls = [{**call, "id": "call_0"}]
            return Reply(text="", tool_calls=calls, finish_reason="tool_calls", model="expert")
        return Reply(text=observation.oracle["expert_reply"], finish_reason="stop", model="expert")


class RandomPolicy:
    """Well-formed replies with random actions (random formulas, random moves): a floor to beat."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "random", "seed": self.seed}

    def _rng_for(self, messages: Sequence[BaseMessage]) -> random.Random:
        # Derive the randomness from the conversation so that concurrent episodes stay reproducible
        # (a shared generator would make replies depend on scheduling order).
        digest = hashlib.sha256(str(self.seed).encode())
        for message in messages:
            digest.update(message.type.encode())
            digest.update(message_text(message).encode("utf-8", "replace"))
        return random.Random(int.from_bytes(digest.digest()[:8], "big"))

    async def generate(
        self,
        messages: Sequence[BaseMessage],
        sampling: SamplingParams,
        *,
        observation: Observation | None = None,
        tools: Sequence[BaseTool] | None = None,
    ) -> Reply:
        # In tool mode the random reply stays plain text (no tool call): the loop scores the text.
        if observation is None or not observation.env_id:
            raise PolicyInputError("the random policy needs the observation (to know the env's actions)")
        text = env_class(observation.env_id).random_reply(observation, self._rng_for(messages))
        return Reply(text=text, finish_reason="stop", model="random")
