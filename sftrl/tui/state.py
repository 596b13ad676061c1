"""What the TUI shows, as plain data: episodes built from run events or a log, filters and statistics.

No widgets here: the app turns a :class:`RunView` into panels. Live runs feed it events
(:meth:`RunView.apply`); replays load finished records (:meth:`RunView.add_record`). Both paths end
with the same :class:`EpisodeView`, so a replayed log looks exactly like the live run did.
"""

from __future__ import annotations

import functools
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from sftrl.agents.events import (
    EpisodeFinished,
    EpisodeStarted,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    TurnFinished,
)
from sftrl.agents.metrics import wilson_interval
from sftrl.agents.trajectory import EpisodeRecord, TurnRecord

Status = Literal["starting", "running", "paused", "finished", "failed", "cancelled", "replay"]
Outcome = Literal["all", "success", "failure", "error"]


_LABELS = {"gp": "GP", "virl": "V-IRL"}


def env_label(env_id: str, config: dict[str, Any]) -> str:
    """The paper's short name of an env setting: GP-L, GP-VL, V-IRL-L, V-IRL-VL (else the env id)."""
    kind = env_kind(env_id)
    if kind == "other":
        return env_id or "?"
    return f"{_LABELS[kind]}-{'VL' if config.get('modality') == 'vision' else 'L'}"


def env_kind(env_id: str) -> Literal["gp", "virl", "other"]:
    """Which env a log's ``env_id`` names, resolved through the env registry (its CLI alias)."""
    from sftrl.environments.registry import ENV_ALIASES, UnknownEnvError, resolve_env_id

    try:
        resolved = resolve_env_id(env_id)
    except UnknownEnvError:
        return "other"
    alias = next((a for a, i in ENV_ALIASES.items() if i == resolved), "")
    return alias if alias in ("gp", "virl") else "other"  # type: ignore[return-value]


@dataclass
class Frame:
    """One position of the turn cursor: what the model saw, and (unless pending) what it did."""

    text: str
    image: Image.Image | None
    info: dict[str, Any]
    turn: TurnRecord | None
    """None for a live observation the model has not answered yet."""


@dataclass
class EpisodeView:
    """One episode as the UI knows it: possibly still running (live), possibly crashed."""

    index: int
    seed: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    env_config: dict[str, Any] = field(default_factory=dict)
    turns: list[TurnRecord] = field(default_factory=list)
    record: EpisodeRecord | None = None
    pending_text: str | None = None
    pending_image: Image.Image | None = None
    pending_info: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.record is not None

    @property
    def error(self) -> str | None:
        return self.record.error if self.record is not None else None

    @property
    def success(self) -> bool:
        return bool(self.record is not None and self.record.success)

    @property
    def total_reward(self) -> float:
        return self.record.total_reward if self.record is not None else sum(t.reward for t in self.turns)

    @property
    def split(self) -> str | None:
        value = self.env_config.get("split", self.info.get("split"))
        return None if value is None else str(value)

    @property
    def outcome(self) -> Literal["running", "success", "failure", "error"]:
        if self.record is None:
            return "running"
        if self.record.error is not None:
            return "error"
        return "success" if self.record.success else "failure"

    @property
    def n_frames(self) -> int:
        return len(self.turns) + (1 if self.pending_text is not None and self.record is None else 0)


@dataclass(frozen=True)
class EpisodeFilter:
    """Which episodes the list shows. Text form (the ``/`` prompt): ``success split=id reward>=1``."""

    outcome: Outcome = "all"
    split: str | None = None
    min_reward: float | None = None
    max_reward: float | None = None

    _TOKEN = re.compile(r"^reward\s*(>=|<=|>|<|=)\s*(-?\d+(?:\.\d+)?)$")

    @classmethod
    def parse(cls, text: str) -> EpisodeFilter:
        """Parse the filter prompt; raises ValueError naming the first token it does not understand."""
        outcome: Outcome = "all"
        split: str | None = None
        lo: float | None = None
        hi: float | None = None
        aliases: dict[str, Outcome] = {
            "all": "all",
            "success": "success",
            "ok": "success",
            "solved": "success",
            "failure": "failure",
            "fail": "failure",
            "failed": "failure",
            "error": "error",
            "errors": "error",
        }
        for token in re.sub(r"\s*(>=|<=|>|<|=)\s*", r"\1", text.strip()).split():
            low = token.lower()
            if low in aliases:
                outcome = aliases[low]
            elif low.startswith("split="):
                split = token.split("=", 1)[1] or None
            elif m := cls._TOKEN.match(low):
                op, value = m.group(1), float(m.group(2))
                # Strict bounds nudge by a tiny epsilon: rewards are multiples of 0.5, far apart.
                if op in (">=", "="):
                    lo = value
                if op in ("<=", "="):
                    hi = value
                if op == ">":
                    lo = value + 1e-9
                if op == "<":
                    hi = value - 1e-9
            else:
                raise ValueError(
                    f"unknown filter {token!r}: use success|failure|error|all, split=NAME, "
                    "reward>=X, reward<X"
                )
        return cls(outcome=outcome, split=split, min_reward=lo, max_reward=hi)

    def matches(self, ep: EpisodeView) -> bool:
        if self.outcome != "all" and ep.outcome != self.outcome:
            return False
        if self.split is not None and ep.split != self.split:
            return False
        if self.min_reward is not None and ep.total_reward < self.min_reward:
            return False
        return not (self.max_reward is not None and ep.total_reward > self.max_reward)

    @property
    def active(self) -> bool:
        return self != EpisodeFilter()

    def describe(self) -> str:
        parts = [] if self.outcome == "all" else [self.outcome]
        if self.split is not None:
            parts.append(f"split={self.split}")
        if self.min_reward is not None and self.min_reward == self.max_reward:
            parts.append(f"reward={self.min_reward:g}")
        else:
            if self.min_reward is not None:
                parts.append(f"reward>={self.min_reward:g}")
            if self.max_reward is not None:
                parts.append(f"reward<={self.max_reward:g}")
        return " ".join(parts) or "all"


@dataclass(frozen=True)
class Stats:
    finished: int
    errors: int
    successes: int
    rate: float
    ci95: tuple[float, float]
    mean_reward: float
    rewards: list[float]
    verdicts: dict[str, int]


class RunView:
    """The state of one run (live or replayed) that every panel reads."""

    def __init__(self, run_dir: Path | None, status: Status) -> None:
        self.run_dir = run_dir
        self.status: Status = status
        self.env_id = ""
        self.total = 0
        self.config: dict[str, Any] = {}
        self.episodes: dict[int, EpisodeView] = {}
        self.error: str | None = None
        self.summary: dict[str, Any] | None = None
        self.version = 0
        """Bumped on every change, so the app redraws only when something happened."""

    # -- feeding -----------------------------------------------------------------------------------
    def add_record(self, record: EpisodeRecord) -> None:
        """A finished episode (from the log, or the live run's EpisodeFinished)."""
        ep = self.episodes.get(record.episode_index) or EpisodeView(record.episode_index)
        ep.seed = record.seed
        ep.info = dict(record.info)
        ep.env_config = dict(record.env_config)
        ep.turns = list(record.turns)
        ep.record = record
        ep.pending_text = ep.pending_image = ep.pending_info = None
        self.episodes[record.episode_index] = ep
        if not self.env_id:
            self.env_id = record.env_id
        self.version += 1

    def apply(self, event: Event) -> None:
        """Fold one run event into the view (events may have been dropped: each is self-sufficient)."""
        if isinstance(event, RunStarted):
            self.env_id, self.total, self.config = event.env_id, event.total, dict(event.config)
            if self.status == "starting":
                self.status = "running"
        elif isinstance(event, EpisodeStarted):
            ep = self.episodes.setdefault(event.episode_index, EpisodeView(event.episode_index))
            obs = event.observation
            ep.seed = event.seed
            ep.info = dict(obs.info)
            ep.env_config = {k: v for k, v in self.config.items() if k in ("split", "modality")}
            ep.turns = []
            ep.pending_text, ep.pending_info = obs.text, dict(obs.info)
            ep.pending_image = obs.images[-1] if obs.images else None
        elif isinstance(event, TurnFinished):
            ep = self.episodes.setdefault(event.episode_index, EpisodeView(event.episode_index))
            ep.turns.append(event.turn)
            nxt = event.next_observation
            if nxt is None:
                ep.pending_text = ep.pending_image = ep.pending_info = None
            else:
                ep.pending_text, ep.pending_info = nxt.text, dict(nxt.info)
                # A feedback turn carries no image: the model still looks at the last one it got.
                ep.pending_image = nxt.images[-1] if nxt.images else None
        elif isinstance(event, EpisodeFinished):
            self.add_record(event.record)
        elif isinstance(event, RunFinished):
            self.summary = dict(event.summary)
            self.status = "finished"
        elif isinstance(event, RunFailed):
            self.error = event.error
            self.status = "cancelled" if event.error.startswith("CancelledError") else "failed"
        self.version += 1

    # -- reading -----------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        config = self.config or (next(iter(self.episodes.values())).env_config if self.episodes else {})
        return env_label(self.env_id, config)

    @property
    def kind(self) -> Literal["gp", "virl", "other"]:
        return env_kind(self.env_id)

    def ordered(self, flt: EpisodeFilter | None = None) -> list[EpisodeView]:
        eps = sorted(self.episodes.values(), key=lambda e: e.index)
        return [e for e in eps if flt is None or flt.matches(e)]

    def done_count(self) -> int:
        return sum(1 for e in self.episodes.values() if e.finished)

    def stats(self) -> Stats:
        finished = [e for e in self.ordered() if e.record is not None]
        ok = [e for e in finished if e.error is None]
        successes = sum(e.success for e in ok)
        verdicts: Counter[str] = Counter(t.verdict.category for e in ok for t in e.turns)
        rewards = [e.total_reward for e in ok]
        return Stats(
            finished=len(finished),
            errors=len(finished) - len(ok),
            successes=successes,
            rate=successes / len(ok) if ok else 0.0,
            ci95=wilson_interval(successes, len(ok)),
            mean_reward=sum(rewards) / len(rewards) if rewards else 0.0,
            rewards=rewards,
            verdicts=dict(sorted(verdicts.items())),
        )

    def frame(self, ep: EpisodeView, position: int) -> Frame | None:
        """What the model saw at cursor ``position`` (0..n_frames-1) of ``ep``."""
        if position < len(ep.turns):
            turn = ep.turns[position]
            text, image_path = prompt_view(turn.prompt)
            image = self.load_image(image_path) if image_path else None
            return Frame(text, image, dict(turn.info), turn)
        if ep.pending_text is not None and ep.record is None:
            image = ep.pending_image
            if image is None and ep.turns:
                # Feedback observation: show the image of the last model call.
                image = self.frame(ep, len(ep.turns) - 1).image  # type: ignore[union-attr]
            return Frame(ep.pending_text, image, dict(ep.pending_info or ep.info), None)
        return None

    def load_image(self, rel: str) -> Image.Image | None:
        if self.run_dir is None:
            return None
        return _load_png(str(self.run_dir / rel))


@functools.lru_cache(maxsize=64)
def _load_png(path: str) -> Image.Image | None:
    try:
        with open(path, "rb") as fh:
            image = Image.open(io.BytesIO(fh.read()))
            image.load()
        return image
    except (OSError, ValueError):
        return None


def prompt_view(prompt: list[dict[str, Any]]) -> tuple[str, str | None]:
    """(text of the last user message, path of the last image the model was shown) of a logged prompt."""
    text = ""
    image: str | None = None
    for message in prompt:
        content = message.get("content")
        if isinstance(content, str):
            if message.get("role") in ("user", "tool"):
                text = content
            continue
        parts: list[str] = []
        for block in content or []:
            if block.get("type") == "image" and block.get("path"):
                image = block["path"]
            elif block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        if message.get("role") in ("user", "tool"):
            text = "\n".join(parts)
    return text, image


def group_turns(turns: list[TurnRecord]) -> list[tuple[int, list[TurnRecord]]]:
    """Turns grouped under their env step (retries after verifier feedback stay with their step)."""
    groups: list[tuple[int, list[TurnRecord]]] = []
    for t in turns:
        if groups and groups[-1][0] == t.step:
            groups[-1][1].append(t)
        else:
            groups.append((t.step, [t]))
    return groups
