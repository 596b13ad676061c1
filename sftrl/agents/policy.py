"""The policy protocol every agent backend implements: async chat messages in, one reply out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from langchain_core.messages import BaseMessage
from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field

from sftrl.environments.base import Observation


class SamplingParams(BaseModel):
    """Sampling settings passed with every request (backends ignore what they cannot honour)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    temperature: float = Field(default=1.0, ge=0.0)
    """Sampling temperature (0: greedy)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling: sample from the smallest token set holding this probability."""
    max_new_tokens: int = Field(default=512, ge=1)
    """Longest reply, in tokens."""
    seed: int | None = None
    """Seed of the model's sampling (None: the backend's own randomness)."""
    logprobs: bool = False
    """Log the sampled tokens' log-probabilities (needed by ``agent train rl --episodes``)."""
    stop: list[str] = Field(default_factory=list)
    """Strings that end a reply."""


class Reply(BaseModel):
    """One policy reply: the text and, when the backend has them, token ids and log-probs."""

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    """``stop``, ``length`` (hit max_new_tokens or the context window), ``error``…"""
    model: str | None = None
    usage: dict[str, int] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """Tool-calling mode: langchain-style calls ``{"name", "args", "id"}`` (first one is acted on)."""
    extra: dict[str, Any] = Field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    """An agent's decision maker. ``observation`` is given for non-model policies (expert, random)."""

    name: str

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description logged with every episode (backend, model, revision…)."""
        ...

    async def generate(
        self,
        messages: Sequence[BaseMessage],
        sampling: SamplingParams,
        *,
        observation: Observation | None = None,
        tools: Sequence[BaseTool] | None = None,
    ) -> Reply:
        """``tools`` is given in tool-calling mode: the policy should answer with a tool call."""
        ...
