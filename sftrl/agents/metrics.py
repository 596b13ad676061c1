"""Run metrics from episode records: success rate with intervals, rewards, and paired comparisons."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from sftrl.agents.trajectory import EpisodeRecord

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved at 0% and 100%)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0% / 100% the bound is exactly 0 / 1; the subtraction would leave rounding noise (3e-18).
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def select_episodes(
    records: Sequence[EpisodeRecord], planned: int | None = None
) -> tuple[list[EpisodeRecord], dict[str, int]]:
    """One record per episode index, in index order, and what was set aside.

    A log can hold several records of one episode (a ``--resume`` that retried a failed episode, or an
    old log written before runs took a lock): the last record without an error wins, else the last
    one. With ``planned`` (the run's episode count), indices outside ``0..planned-1`` are dropped.
    Returns ``(records, {"duplicates": n, "out_of_range": n})``.
    """
    best: dict[int, EpisodeRecord] = {}
    duplicates = out_of_range = 0
    for r in records:
        if r.episode_index < 0 or (planned is not None and r.episode_index >= planned):
            out_of_range += 1
            continue
        old = best.get(r.episode_index)
        if old is not None:
            duplicates += 1
            if r.error is not None and old.error is None:
                continue
        best[r.episode_index] = r
    return [best[i] for i in sorted(best)], {"duplicates": duplicates, "out_of_range": out_of_range}


def summarize(records: Sequence[EpisodeRecord], planned: int | None = None) -> dict[str, Any]:
    """The summary printed by ``agent run`` / ``agent eval`` (stable keys; see docs).

    ``records`` should hold one record per episode (:func:`select_episodes`). With ``planned``,
    ``not_logged`` counts the planned episodes that have no record at all.
    """
    ok = [r for r in records if r.error is None]
    n = len(ok)
    successes = sum(r.success for r in ok)
    lo, hi = wilson_interval(successes, n)
    categories: Counter[str] = Counter()
    category_reward: dict[str, float] = defaultdict(float)
    attempts = 0
    first_try = 0
    read_seen = read_right = marks_seen = marks_right = 0
    # Navigation envs judge one action per turn against the step's ground truth ("gt_action").
    steps_seen = steps_right = first_seen = first_right = 0
    for r in ok:
        for t in r.turns:
            attempts += 1
            categories[t.verdict.category] += 1
            category_reward[t.verdict.category] += t.reward
            # What the model read in the image: GP-VL's cards, or V-IRL's street view (task read).
            for key in ("cards_correct", "landmark_correct"):
                if key in t.verdict.details:
                    read_seen += 1
                    read_right += bool(t.verdict.details[key])
            if t.verdict.details.get("landmark_in_view"):
                marks_seen += 1
                marks_right += bool(t.verdict.details.get("landmark_correct"))
            if "gt_action" in t.verdict.details:
                steps_seen += 1
                steps_right += t.verdict.correct
                if t.attempt == 0:
                    first_seen += 1
                    first_right += t.verdict.correct
        if r.success and all(t.attempt == 0 for t in r.turns):
            first_try += 1
    summary: dict[str, Any] = {
        "episodes": n,
        "errors": len(records) - n,
        "success_rate": successes / n if n else 0.0,
        "success_ci95": [lo, hi],
        "mean_reward": sum(r.total_reward for r in ok) / n if n else 0.0,
        "mean_turns": attempts / n if n else 0.0,
        "first_try_success_rate": first_try / n if n else 0.0,
        "attempts": attempts,
        "mean_attempt_reward": sum(category_reward.values()) / attempts if attempts else 0.0,
        "verdicts": dict(sorted(categories.items())),
    }
    if read_seen:
        summary["recognition_accuracy"] = read_right / read_seen
    if marks_seen:
        summary["landmark_recognition_accuracy"] = marks_right / marks_seen
    if steps_seen:
        summary["step_accuracy"] = steps_right / steps_seen
        summary["first_try_step_accuracy"] = first_right / first_seen if first_seen else 0.0
    if planned is not None:
        summary["planned"] = planned
        summary["not_logged"] = max(0, planned - len(records))
    # Values the server sent that are not numbers (NaN/±inf log-probs): logged, and counted here.
    nonfinite = sum(
        1 for r in records for t in r.turns for lp in t.reply.logprobs or () if not math.isfinite(lp)
    )
    if nonfinite:
        summary["nonfinite_logprobs"] = nonfinite
    notes: Counter[str] = Counter()
    for r in records:
        notes.update(r.log_notes)
    if notes:
        summary["log_notes"] = dict(sorted(notes.items()))
    causes = error_causes(records)
    if causes:
        summary["error_causes"] = causes
    if ok:
        summary["env_id"] = ok[0].env_id
        summary["policy"] = ok[0].policy.get("name")
        summary["mean_policy_s"] = sum(r.policy_s for r in ok) / n
        summary["mean_env_s"] = sum(r.env_s for r in ok) / n
    return summary


def error_causes(records: Sequence[EpisodeRecord]) -> dict[str, dict[str, Any]]:
    """Failed episodes grouped by cause: ``{cause: {"count": n, "example": one message}}``.

    The cause is the ``cause: X`` line the runner appends for backend errors (``connect``,
    ``timeout``, ``server``, ``auth``, ``model``, ``reply``), else the exception's type name.
    """
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.error is None:
            continue
        lines = [line.strip() for line in r.error.strip().splitlines() if line.strip()]
        cause = None
        if lines and lines[-1].startswith("cause: "):
            cause = lines.pop()[len("cause: ") :]
        last = lines[-1] if lines else "unknown error"
        name, _, message = last.partition(": ")
        cause = cause or name.rsplit(".", 1)[-1] or "unknown"
        entry = out.setdefault(cause, {"count": 0, "example": f"{name.rsplit('.', 1)[-1]}: {message}"[:300]})
        entry["count"] += 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["count"]))


def paired_difference(
    a: Sequence[EpisodeRecord],
    b: Sequence[EpisodeRecord],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Success-rate difference ``b - a`` over episodes paired by seed, with a bootstrap 95% interval."""
    by_seed_a = {r.seed: r for r in a if r.error is None}
    by_seed_b = {r.seed: r for r in b if r.error is None}
    common = sorted(by_seed_a.keys() & by_seed_b.keys())
    if not common:
        raise ValueError("the two runs share no episode seeds: nothing to pair")
    diffs = [int(by_seed_b[s].success) - int(by_seed_a[s].success) for s in common]
    rdiffs = [by_seed_b[s].total_reward - by_seed_a[s].total_reward for s in common]
    rng = random.Random(seed)
    n = len(diffs)
    boots = []
    rboots = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        boots.append(sum(diffs[i] for i in idx) / n)
        rboots.append(sum(rdiffs[i] for i in idx) / n)
    boots.sort()
    rboots.sort()
    lo = boots[int(0.025 * (n_boot - 1))]
    hi = boots[int(math.ceil(0.975 * (n_boot - 1)))]
    rlo = rboots[int(0.025 * (n_boot - 1))]
    rhi = rboots[int(math.ceil(0.975 * (n_boot - 1)))]
    return {
        "paired_episodes": n,
        "success_rate_a": sum(by_seed_a[s].success for s in common) / n,
        "success_rate_b": sum(by_seed_b[s].success for s in common) / n,
        "success_diff": sum(diffs) / n,
        "success_diff_ci95": [lo, hi],
        "mean_reward_diff": sum(rdiffs) / n,
        "mean_reward_diff_ci95": [rlo, rhi],
        "b_only_successes": sum(d > 0 for d in diffs),
        "a_only_successes": sum(d < 0 for d in diffs),
    }
