"""Advantage estimators for multi-turn RL: GAE over an episode's model calls and GRPO group baselines.

Pure functions over plain floats: no torch, no I/O. An episode is the sequence of its model calls
(transitions), verifier-feedback retries included; each call's reward is the env's reward for it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence


def gae(
    rewards: Sequence[float],
    values: Sequence[float],
    *,
    gamma: float = 0.9,
    lam: float = 0.95,
    last_value: float = 0.0,
) -> tuple[list[float], list[float]]:
    """Generalised advantage estimates and returns for one episode's transitions.

    ``values[t]`` is the critic's estimate before call t; ``last_value`` bootstraps a truncated
    episode (0 for a terminated one). Returns ``(advantages, returns)`` with returns = adv + value.
    """
    if len(rewards) != len(values):
        raise ValueError(f"{len(rewards)} rewards but {len(values)} values")
    advantages = [0.0] * len(rewards)
    running = 0.0
    next_value = last_value
    for t in range(len(rewards) - 1, -1, -1):
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = values[t]
    returns = [a + v for a, v in zip(advantages, values, strict=True)]
    return advantages, returns


def normalize(
    xs: Sequence[float], eps: float = 1e-8, moments: tuple[float, float, float] | None = None
) -> list[float]:
    """Zero-mean, unit-variance copy of ``xs`` (a constant list becomes zeros).

    ``moments`` (count, sum, sum of squares) of a larger batch ``xs`` is part of — e.g. summed over
    the processes of a data-parallel run — normalize by that batch's mean and deviation instead.
    """
    if not xs:
        return []
    if moments is None:
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
    else:
        n, total, squares = moments
        mean = total / n
        std = math.sqrt(max(squares / n - mean * mean, 0.0))
    return [(x - mean) / (std + eps) for x in xs]


def group_advantages(
    keys: Sequence[Hashable], returns: Sequence[float], *, scale: bool = True, eps: float = 1e-6
) -> list[float]:
    """GRPO: each episode's return minus its group's mean (groups = episodes sharing an initial state).

    With ``scale`` the difference is divided by the group's standard deviation. A group whose
    episodes all got the same return carries no learning signal: its advantages are 0.
    """
    if len(keys) != len(returns):
        raise ValueError(f"{len(keys)} keys but {len(returns)} returns")
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    out = [0.0] * len(returns)
    for members in groups.values():
        vals = [returns[i] for i in members]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        for i in members:
            diff = returns[i] - mean
            out[i] = diff / (std + eps) if scale and std > 0 else (diff if std > 0 else 0.0)
    return out
