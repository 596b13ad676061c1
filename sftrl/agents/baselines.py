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


def _conversation_rng(seed: int, messages: Sequence[BaseMessage]) -> random.Random:
    """Randomness derived from the conversation, so that concurrent episodes stay reproducible (a shared
    generator would make replies depend on scheduling order)."""
    digest = hashlib.sha256(str(seed).encode())
    for message in messages:
        digest.update(message.type.encode())
        digest.update(message_text(message).encode("utf-8", "replace"))
    return random.Random(int.from_bytes(digest.digest()[:8], "big"))


class ExpertPolicy:
    """Answers with the env's oracle reply (a correct, well-formatted answer for the current state).

    ``mistakes`` > 0 makes it answer with the env's random reply instead, with that probability at each
    attempt (decided from the conversation and ``seed``, so runs are reproducible): its episodes then
    hold failed attempts, verifier feedback and the corrected answer — revision demonstrations for
    ``agent data sft --chains full``.
    """

    name = "expert"

    def __init__(self, mistakes: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= mistakes < 1.0:
            raise PolicyInputError(f"expert mistakes must be in [0, 1), got {mistakes}")
        self.mistakes = mistakes
        self.seed = seed

    @classmethod
    def from_run_config(cls, run: Any) -> ExpertPolicy:
        options = dict(run.policy_options)
        unknown = set(options) - {"mistakes"}
        if unknown:
            raise PolicyInputError(
                f"unknown expert policy option(s) {', '.join(sorted(unknown))}; known: mistakes"
            )
        try:
            mistakes = float(options.get("mistakes", 0.0))
        except (TypeError, ValueError):
            raise PolicyInputError(f"expert mistakes must be a number, got {options['mistakes']!r}") from None
        return cls(mistakes=mistakes, seed=run.seed)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": "expert"}
        if self.mistakes:
            out.update(mistakes=self.mistakes, seed=self.seed)
        return out

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
        if self.mistakes:
            rng = _conversation_rng(self.seed, messages)
            if rng.random() < self.mistakes:
                text = env_class(observation.env_id).random_reply(observation, rng)
                return Reply(text=text, finish_reason="stop", model="expert")
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
        return _conversation_rng(self.seed, messages)

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
