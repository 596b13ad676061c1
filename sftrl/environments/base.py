"""The environment contract shared by every sftrl environment: observations, verdicts and the base env.

Environments are gymnasium environments whose actions are the model's raw reply text and whose
observations are :class:`Observation` objects (prompt text, images, structured info). A verifier turns
the reply into a :class:`Verdict`; the env turns verdicts into rewards, feedback turns and termination.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from sftrl.environments.tools import ToolSpec

ObservationKind = Literal["task", "feedback"]
PromptStyle = Literal["paper", "compact"]
"""paper: the paper's prompts and answer format; compact: short fixed layouts for small models."""


class Verdict(BaseModel):
    """What a verifier concluded about one model reply. Pure data: no I/O, no model code produced it."""

    # NaN/±inf (a verifier fed odd numbers) must still give a log line that reads back.
    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    reward: float
    category: str
    """Machine-readable outcome, e.g. ``correct``, ``illegal_formula``, ``incorrect_action``."""
    message: str
    """Human-readable feedback; sent back to the model after a failed attempt."""
    correct: bool
    """True when this attempt solves the current (sub)task."""
    action: dict[str, Any] | None = None
    """The action parsed from the reply, or None when nothing could be parsed."""
    details: dict[str, Any] = Field(default_factory=dict)
    """Extra facts for metrics, e.g. ``{"cards_correct": True}`` in vision mode."""


class Observation(BaseModel):
    """What the agent observes: the prompt text, zero or more images and structured info.

    ``kind`` tells the agent loop how the observation joins the conversation: a ``task`` observation
    starts a fresh conversation (it holds the whole task prompt); a ``feedback`` observation is
    appended as a new user turn after the model's previous reply (sequential revision).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    text: str
    images: list[Image.Image] = Field(default_factory=list)
    kind: ObservationKind = "task"
    env_id: str = ""
    info: dict[str, Any] = Field(default_factory=dict)
    """Structured, JSON-serialisable facts about the state (what a UI or analysis may show)."""
    oracle: dict[str, Any] = Field(default_factory=dict, repr=False)
    """Privileged facts for non-model policies (e.g. ``expert_reply``); never put into a prompt."""


class ObservationSpace(gym.Space[Observation]):
    """A gymnasium space whose elements are :class:`Observation` objects."""

    def __init__(self) -> None:
        super().__init__(shape=None, dtype=None)

    def contains(self, x: Any) -> bool:
        return isinstance(x, Observation)

    def sample(self, mask: Any = None, probability: Any = None) -> Observation:  # pragma: no cover
        raise NotImplementedError("observations are produced by reset/step, not sampled")


StepResult = tuple[Observation, float, bool, bool, dict[str, Any]]
RENDER_MODES = ("rgb_array", "ansi")


class SftrlEnv(gym.Env[Observation, str], ABC):
    """Base class of sftrl environments (gymnasium API with text actions).

    ``reset(seed=, options=) -> (Observation, info)`` and
    ``step(reply_text) -> (Observation, reward, terminated, truncated, info)``. ``info`` of a step holds
    the ``verdict`` (:class:`Verdict`), ``success`` (episode solved so far) and env-specific facts.
    Seeds fully determine episodes: subclasses draw randomness only from ``self.np_random``.
    """

    env_id: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]
    """Pydantic model of the env's keyword arguments (named like the CLI flags)."""
    # Text envs have no frame rate; gymnasium's checker wants one whenever render modes exist.
    metadata: ClassVar[dict[str, Any]] = {"render_modes": list(RENDER_MODES), "render_fps": 1}

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__()
        if render_mode is not None and render_mode not in RENDER_MODES:
            modes = ", ".join(RENDER_MODES)
            raise ValueError(f"render_mode must be one of {modes} or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = ObservationSpace()
        self.action_space = gym.spaces.Text(max_length=65_536)
        self._last_observation: Observation | None = None

    @property
    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The env's full, resolved configuration (JSON-serialisable), as logged with every episode."""

    @abstractmethod
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]: ...

    @abstractmethod
    def step(self, action: str) -> StepResult: ...

    @classmethod
    @abstractmethod
    def random_reply(cls, observation: Observation, rng: random.Random) -> str:
        """A well-formed reply with a random action for ``observation`` (the ``random`` policy)."""

    def render(self) -> Any:
        """``rgb_array``: the state as an image (uint8 H×W×3); ``ansi``: the last observation's text.

        In language modality the image is what the vision modality would show, so a human can watch
        either. Returns None when the env was made without a render mode.
        """
        if self.render_mode is None:
            return None
        if self._last_observation is None:
            raise gym.error.ResetNeeded("call reset() before render()")
        if self.render_mode == "ansi":
            return self._last_observation.text
        return np.asarray(self.render_image().convert("RGB"), dtype=np.uint8)

    def render_image(self) -> Image.Image:
        """The current state as an image (the observation image, or the one vision mode would show)."""
        assert self._last_observation is not None
        if self._last_observation.images:
            return self._last_observation.images[0]
        raise NotImplementedError(f"{type(self).__name__} has no image of its state")

    def _observed(self, observation: Observation) -> Observation:
        """Remember ``observation`` as the one ``render()`` shows; returns it unchanged."""
        self._last_observation = observation
        return observation

    def tool_specs(self) -> list[ToolSpec]:
        """The env's actions as tools (tool-calling mode); empty if the env has no tool mode."""
        return []

    def episode_metrics(self) -> dict[str, Any]:
        """Env-specific metrics of the current episode, stored in its log record."""
        return {}

    def check_inputs(self) -> None:
        """Open every file and data source the config names (raises, in one line, when one is unusable).

        Runs call this once before the first episode, so a corrupt input refuses the run instead of
        failing every episode.
        """
