"""Logged episodes -> RL transitions: one model call (prompt with its images -> reply tokens) each.

An episode is the sequence of its model calls, verifier-feedback retries included, so GeneralPoints
(one image, text feedback) and V-IRL-VL (a new street-view grid at every step) are covered alike.
Transitions keep the behaviour policy's token ids and log-probs, so updates can correct for the
policy that collected them (importance ratios) and refuse logs that cannot be trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftrl.agents.trajectory import EpisodeRecord, LogError, iter_episodes


class TransitionError(ValueError):
    """Logged episodes that cannot be used for RL (no token ids, another model, mixed configs…)."""


@dataclass
class Transition:
    """One model call of an episode, ready to be scored by the learner."""

    prompt: list[dict[str, Any]]
    """Message records as logged (images as ``path`` references into ``run_dir``)."""
    completion_ids: list[int]
    behaviour_logprobs: list[float] | None
    reward: float
    done: bool
    """Last call of its episode (terminated or truncated)."""
    temperature: float
    run_dir: Path
    episode_key: str
    """``run_id:episode_index``: transitions of one episode share it, in order."""
    group_key: str
    """Episodes that start from the same state (env config + seed) share it: GRPO groups."""
    index: int
    text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    policy_version: int | None = None
    """Asynchronous rollouts: how many updates the sampling weights had seen (None: not recorded)."""


@dataclass
class EpisodeBatch:
    """Transitions grouped by episode, plus what the metrics need."""

    episodes: list[list[Transition]]
    returns: list[float]
    successes: list[bool]

    @property
    def transitions(self) -> list[Transition]:
        return [t for ep in self.episodes for t in ep]

    def __len__(self) -> int:
        return len(self.episodes)


def group_key(record: EpisodeRecord) -> str:
    """Initial-state key: same env, same resolved config and same seed => same initial state."""
    items = sorted((k, repr(v)) for k, v in record.env_config.items())
    return f"{record.env_id}|{items}|{record.seed}"


def episode_transitions(
    record: EpisodeRecord, run_dir: Path, *, require_tokens: bool = True
) -> list[Transition]:
    """The transitions of one logged episode (empty for an error episode)."""
    if record.error is not None:
        return []
    out: list[Transition] = []
    key = f"{record.run_id}:{record.episode_index}"
    version = record.policy.get("policy_version")
    for i, turn in enumerate(record.turns):
        ids = turn.reply.token_ids
        if ids is None:
            if require_tokens:
                raise TransitionError(
                    f"{run_dir}: episode {record.episode_index} has replies without token ids "
                    f"(policy {record.policy.get('name', '?')!r}); collect RL episodes with a model "
                    "policy that returns tokens (--policy hf, or vllm/openai with logprobs)"
                )
            ids = []
        out.append(
            Transition(
                prompt=turn.prompt,
                completion_ids=list(ids),
                behaviour_logprobs=turn.reply.logprobs,
                reward=turn.reward,
                done=i == len(record.turns) - 1,
                temperature=float(turn.reply.sampling.get("temperature", 1.0)),
                run_dir=run_dir,
                episode_key=key,
                group_key=group_key(record),
                index=i,
                text=turn.reply.text,
                extra={"tools": record.tools} if record.tools else {},
                policy_version=version if isinstance(version, int) else None,
            )
        )
    return out


def load_episodes(
    run_dirs: Sequence[Path | str],
    *,
    model: str | None = None,
    require_logprobs: bool = True,
) -> EpisodeBatch:
    """Episodes of ``run_dirs`` as transitions, checked for use by an RL update.

    ``model`` (if given) must match the logged policy's model: episodes sampled by another model are
    stale for an on-policy update and are refused with a message naming both.
    """
    episodes: list[list[Transition]] = []
    returns: list[float] = []
    successes: list[bool] = []
    for rd in run_dirs:
        run_dir = Path(rd)
        try:
            records: Iterable[EpisodeRecord] = list(iter_episodes(run_dir))
        except LogError as exc:
            raise TransitionError(str(exc)) from exc
        for rec in records:
            logged = rec.policy.get("model")
            if model is not None and logged is not None and str(logged) != str(model):
                raise TransitionError(
                    f"{run_dir}: episode {rec.episode_index} was sampled by model {logged!r}, not {model!r}; "
                    "RL from logs needs episodes of the policy being trained (re-collect them)"
                )
            trans = episode_transitions(rec, run_dir)
            if not trans:
                continue
            if require_logprobs and any(t.behaviour_logprobs is None for t in trans):
                raise TransitionError(
                    f"{run_dir}: episode {rec.episode_index} has no behaviour log-probs; collect with "
                    "sampling logprobs enabled (the hf policy always returns them)"
                )
            for t in trans:
                if t.behaviour_logprobs is not None and len(t.behaviour_logprobs) != len(t.completion_ids):
                    raise TransitionError(
                        f"{run_dir}: episode {rec.episode_index} call {t.index}: "
                        f"{len(t.completion_ids)} tokens but {len(t.behaviour_logprobs)} log-probs"
                    )
            episodes.append(trans)
            returns.append(sum(t.reward for t in trans))
            successes.append(rec.success)
    if not episodes:
        raise TransitionError(f"no usable episodes in {', '.join(map(str, run_dirs))}")
    return EpisodeBatch(episodes=episodes, returns=returns, successes=successes)
