"""The GeneralPoints environment (GP-L and GP-VL): deal 4 cards, verify formulas, allow revisions."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, ClassVar, Literal

import gymnasium as gym
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sftrl.environments.base import Observation, SftrlEnv, StepResult, Verdict
from sftrl.environments.generalpoints import compact
from sftrl.environments.generalpoints.cards import (
    RANKS,
    Card,
    face_rule_text,
    rank_value,
    suits_for,
)
from sftrl.environments.generalpoints.prompts import feedback_text, reply_text, task_prompt
from sftrl.environments.generalpoints.solver import is_solvable, solve
from sftrl.environments.generalpoints.tools import TOOLS_OUTPUT, tool_specs
from sftrl.environments.generalpoints.verifier import GPState, PromptStyle, verify
from sftrl.environments.tools import ToolSpec

Split = Literal["id", "rule-ood", "visual-ood"]
FaceCards = Literal["10", "11-13"]
SuitColor = Literal["black", "red", "mixed"]

# What each named split means; explicit knobs (face_cards, suit_color, require_face_card) override.
SPLITS: dict[str, dict[str, Any]] = {
    "id": {"face_cards": "10", "suit_color": "black", "require_face_card": False},
    "rule-ood": {"face_cards": "11-13", "suit_color": "black", "require_face_card": True},
    "visual-ood": {"face_cards": "10", "suit_color": "red", "require_face_card": False},
}
FACE_RANKS = frozenset({"J", "Q", "K"})
# Rejection sampling of solvable hands gives up after this many deals (only absurd targets get there).
MAX_DEALS = 20_000


class GeneralPointsConfig(BaseModel):
    """Keyword arguments of ``sftrl/GeneralPoints-v0`` (named like the ``agent run`` flags)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    modality: Literal["language", "vision"] = "language"
    """language: the cards are in the prompt text (GP-L); vision: only in a rendered image (GP-VL)."""
    split: Split = "id"
    """id: J/Q/K = 10, black suits; rule-ood: J/Q/K = 11/12/13 with >= 1 face card; visual-ood: red suits."""
    face_cards: FaceCards | None = None
    """Value of J/Q/K: 10 or 11-13 (default from the split)."""
    suit_color: SuitColor | None = None
    """Suits dealt (default from the split)."""
    require_face_card: bool | None = None
    """Deal only hands with a J, Q or K (default from the split)."""
    target: int = Field(default=24, ge=1, le=100_000)
    """Points the formula must reach."""
    verify_iter: int = Field(default=5, ge=1, le=1000)
    """Attempts per episode (sequential revision)."""
    resolution: int = Field(default=1200, ge=64, le=4096)
    """Card image size in pixels (vision)."""
    solvable_only: bool = True
    """Re-deal hands that have no solution."""
    protocol: Literal["json", "tools"] = Field(
        default="json", description="answer as the paper's JSON, or by calling the submit tool"
    )
    prompt_style: PromptStyle = Field(
        default="paper",
        description="paper: the paper's prompts and JSON answer; compact: one-line prompt and answer "
        "for small models (same verifier and rewards)",
    )
    hand_pool: Path | None = Field(
        default=None,
        description='JSON file listing the rank multisets to deal from, e.g. [["A","5","J","3"], ...] '
        "(keeps evaluation hands disjoint from training hands)",
    )
    pool_draw: Literal["random", "by_index"] = Field(
        default="random",
        description="hand_pool: draw a multiset at random, or take entry (episode index mod pool size), "
        "so a run of N = pool size episodes plays every entry once",
    )

    @field_validator("face_cards", mode="before")
    @classmethod
    def _face_cards_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _resolve_split(self) -> GeneralPointsConfig:
        for key, value in SPLITS[self.split].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if self.prompt_style == "compact" and self.protocol == "tools":
            raise ValueError(
                "prompt_style compact answers in text; it cannot be combined with protocol tools"
            )
        return self


def load_hand_pool(path: Path) -> list[tuple[str, ...]]:
    """The rank multisets of a hand-pool file (each sorted A..K), or ValueError with the reason."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"hand_pool {path}: cannot read a JSON list ({type(exc).__name__})") from None
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"hand_pool {path}: expected a non-empty JSON list of 4-card hands")
    pool = []
    for i, hand in enumerate(raw):
        if not isinstance(hand, list) or len(hand) != 4:
            raise ValueError(f"hand_pool {path}: entry {i} is not a list of 4 ranks")
        try:
            ranks = [Card.parse(str(r)).rank for r in hand]
        except ValueError:
            raise ValueError(f"hand_pool {path}: entry {i} ({hand!r}) names an unknown rank") from None
        pool.append(tuple(sorted(ranks, key=RANKS.index)))
    return pool


class GeneralPointsEnv(SftrlEnv):
    """4 cards, one target: answer with a JSON object holding the cards, their numbers and a formula.

    Each episode allows ``verify_iter`` attempts; after a wrong one the verifier's message comes back
    as a ``feedback`` observation. Seeds fully determine the hand and the expert's chosen solution.
    """

    env_id: ClassVar[str] = "sftrl/GeneralPoints-v0"
    config_model: ClassVar[type[BaseModel]] = GeneralPointsConfig

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(render_mode)
        self.config = GeneralPointsConfig.model_validate(kwargs)
        self._state: GPState | None = None
        self._cards: list[Card] = []
        self._attempts = 0
        self._done = True
        self._success = False
        self._cards_checked = 0
        self._cards_correct = 0
        self._expert_reply: str | None = None
        self._expert_call: dict[str, Any] | None = None
        self._task: Observation | None = None
        self._pool = load_hand_pool(self.config.hand_pool) if self.config.hand_pool else None

    @property
    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    # -- dealing ---------------------------------------------------------------------------------
    def _values(self, cards: list[Card]) -> tuple[int, ...]:
        assert self.config.face_cards is not None
        return tuple(rank_value(c.rank, self.config.face_cards) for c in cards)

    def _deal(self, index: int | None) -> list[Card]:
        cfg = self.config
        assert cfg.suit_color is not None
        if self._pool is not None:
            if cfg.pool_draw == "by_index" and index is not None:
                ranks = list(self._pool[index % len(self._pool)])
            else:
                ranks = list(self._pool[int(self.np_random.integers(len(self._pool)))])
            self.np_random.shuffle(ranks)
            suits = suits_for(cfg.suit_color)
            cards = [Card(rank=r, suit=suits[int(self.np_random.integers(len(suits)))]) for r in ranks]
            if cfg.solvable_only and not is_solvable(self._values(cards), cfg.target):
                raise ValueError(f"hand_pool hand {' '.join(ranks)} has no solution for {cfg.target}")
            return cards
        deck = [Card(rank=r, suit=s) for s in suits_for(cfg.suit_color) for r in RANKS]
        for _ in range(MAX_DEALS):
            idx = self.np_random.choice(len(deck), size=4, replace=False)
            cards = [deck[int(i)] for i in idx]
            if cfg.require_face_card and not any(c.rank in FACE_RANKS for c in cards):
                continue
            if cfg.solvable_only and not is_solvable(self._values(cards), cfg.target):
                continue
            return cards
        raise RuntimeError(f"could not deal a solvable hand for target {cfg.target} in {MAX_DEALS} tries")

    def _hand_from_options(self, hand: Any) -> list[Card]:
        if not isinstance(hand, list | tuple) or len(hand) != 4:
            raise ValueError(f"options['hand'] must list 4 cards, got {hand!r}")
        assert self.config.suit_color is not None
        suits = suits_for(self.config.suit_color)
        cards = []
        for item in hand:
            card = item if isinstance(item, Card) else Card.parse(str(item))
            if card.suit is None:
                card = Card(rank=card.rank, suit=suits[int(self.np_random.integers(len(suits)))])
            cards.append(card)
        return cards

    # -- gymnasium API ---------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        # gym.Env.reset seeds self.np_random; SftrlEnv.reset is abstract.
        gym.Env.reset(self, seed=seed)
        cfg = self.config
        options = options or {}
        cards = (
            self._hand_from_options(options["hand"])
            if "hand" in options
            else self._deal(options.get("episode_index"))
        )
        values = self._values(cards)
        solutions = solve(values, cfg.target)
        ranks = tuple(c.rank for c in cards)
        self._cards = cards
        self._state = GPState(
            ranks=ranks,
            values=values,
            target=cfg.target,
            solutions=solutions,
            check_cards=cfg.modality == "vision",
        )
        self._attempts = 0
        self._done = False
        self._success = False
        self._cards_checked = self._cards_correct = 0
        self._expert_reply = None
        self._expert_call = None
        if solutions:
            pick = solutions[int(self.np_random.integers(len(solutions)))]
            if cfg.prompt_style == "compact":
                # A solution over the numbers in hand order when one exists (the compact answer
                # then copies the hand twice; see compact.in_hand_order).
                in_order = [f for f in solutions if compact.in_hand_order(values, f)]
                if in_order:
                    pick = in_order[int(self.np_random.integers(len(in_order)))]
                self._expert_reply = compact.reply(ranks=ranks, numbers=values, formula=pick)
            else:
                self._expert_reply = reply_text(ranks=ranks, numbers=values, formula=f"{pick}={cfg.target}")
            self._expert_call = {
                "name": "submit",
                "args": {"cards": list(ranks), "numbers": list(values), "formula": f"{pick}={cfg.target}"},
            }
        assert cfg.face_cards is not None
        if cfg.prompt_style == "compact":
            text = compact.prompt(
                ranks=None if cfg.modality == "vision" else ranks,
                face_values=[rank_value(r, cfg.face_cards) for r in ("J", "Q", "K")],
                target=cfg.target,
            )
        else:
            text = task_prompt(
                modality=cfg.modality,
                ranks=ranks,
                target=cfg.target,
                face_rule=face_rule_text(cfg.face_cards),
            )
        if cfg.protocol == "tools":
            text = text[: text.index("[Output]")] + TOOLS_OUTPUT.format(target=cfg.target)
        images = []
        if cfg.modality == "vision":
            from sftrl.environments.generalpoints.render import render_hand

            images = [render_hand(cards, cfg.resolution)]
        self._task = Observation(
            text=text,
            images=images,
            kind="task",
            env_id=self.env_id,
            info=self._info(),
            oracle=self._oracle(),
        )
        return self._observed(self._task), self._info()

    def _info(self) -> dict[str, Any]:
        assert self._state is not None
        return {
            "cards": [str(c) for c in self._cards],
            "ranks": list(self._state.ranks),
            "values": list(self._state.values),
            "target": self._state.target,
            "face_cards": self.config.face_cards,
            "modality": self.config.modality,
            "prompt_style": self.config.prompt_style,
            "attempt": self._attempts,
            "remaining_attempts": self.config.verify_iter - self._attempts,
            "num_solutions": len(self._state.solutions),
        }

    def _oracle(self) -> dict[str, Any]:
        if not self._expert_reply:
            return {}
        return {"expert_reply": self._expert_reply, "expert_tool_call": self._expert_call}

    def tool_specs(self) -> list[ToolSpec]:
        return tool_specs()

    def step(self, action: str) -> StepResult:
        if self._done or self._state is None:
            raise RuntimeError("the episode is over: call reset() before step()")
        style = self.config.prompt_style
        verdict: Verdict = verify(
            self._state, action if isinstance(action, str) else str(action), style=style
        )
        self._attempts += 1
        if "cards_correct" in verdict.details:
            self._cards_checked += 1
            self._cards_correct += bool(verdict.details["cards_correct"])
        self._success = verdict.correct
        terminated = verdict.correct or self._attempts >= self.config.verify_iter
        self._done = terminated
        info = self._info()
        info.update({"verdict": verdict, "success": self._success})
        if style == "compact":
            text = compact.feedback(verdict.category, verdict.details)
        else:
            text = feedback_text(verdict.message) if not verdict.correct else verdict.message
        obs = Observation(
            text=text,
            kind="feedback",
            env_id=self.env_id,
            info=self._info(),
            oracle=self._oracle(),
        )
        return self._observed(obs), verdict.reward, terminated, False, info

    def render_image(self) -> Any:
        """The dealt hand as the vision modality shows it (rendered on demand in language modality)."""
        if self._task is None:
            raise gym.error.ResetNeeded("call reset() before render()")
        if self._task.images:
            return self._task.images[0]
        from sftrl.environments.generalpoints.render import render_hand

        return render_hand(self._cards, self.config.resolution)

    def episode_metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"attempts": self._attempts}
        if self._cards_checked:
            metrics["cards_checked"] = self._cards_checked
            metrics["cards_correct"] = self._cards_correct
        return metrics

    @classmethod
    def random_reply(cls, observation: Observation, rng: random.Random) -> str:
        """A random formula over the hand's numbers (random order, operators and bracketing)."""
        values = [int(v) for v in observation.info.get("values", [])]
        ranks = list(observation.info.get("ranks", []))
        if len(values) != 4:
            return reply_text(ranks=ranks, numbers=values, formula="")
        a, b, c, d = rng.sample(values, 4)
        o1, o2, o3 = (rng.choice("+-*/") for _ in range(3))
        shapes = (
            f"(({a}{o1}{b}){o2}{c}){o3}{d}",
            f"({a}{o1}({b}{o2}{c})){o3}{d}",
            f"({a}{o1}{b}){o2}({c}{o3}{d})",
            f"{a}{o1}(({b}{o2}{c}){o3}{d})",
            f"{a}{o1}({b}{o2}({c}{o3}{d}))",
        )
        target = observation.info.get("target", 24)
        if observation.info.get("prompt_style") == "compact":
            return compact.reply(ranks=ranks, numbers=values, formula=rng.choice(shapes))
        return reply_text(ranks=ranks, numbers=values, formula=f"{rng.choice(shapes)}={target}")
