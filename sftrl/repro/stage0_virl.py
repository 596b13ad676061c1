"""Stage 0 of V-IRL-L: the "foundation model" curriculum for compact V-IRL navigation, as an SFT dataset.

The V-IRL rule shift trains on absolute actions (``turn northwest``) and evaluates relative turns
(``turn slightly left``). Like GP-L's stage 0 (:mod:`sftrl.repro.stage0`), the curriculum teaches the
format and the skills of the task and shows the OOD rule's vocabulary, but never its exact task:

* ``R`` (route step): one step of a real V-IRL episode in the ``compact`` style with absolute actions,
  on the training routes only (the ``id`` split's routes after the held-out ID ones, exactly those of
  :func:`sftrl.repro.experiments.make_route_sets`; rule-OOD routes are disjoint from them by
  construction). The env builds everything: it is reset on a route, walked by its expert to a random
  rail point (so the ``done:`` list and the milestone being walked to vary), and its prompt at that
  point is the row's prompt and its expert answer the completion. This teaches reading the route line,
  tracking which milestone comes next, turning to the compass half of a ``REL>COMPASS`` item, walking
  and stopping at the destination.
* ``T`` (turn vocabulary): a synthetic turn, not a route: ``facing: east / turn to: north /
  actions: relative`` -> ``turn left`` (or ``turn north`` with ``actions: absolute``), the relative
  word computed by the rail's own :func:`~sftrl.environments.virl.rail.turn_action` from the two
  headings. Both vocabularies, and the ``actions:`` line choosing between them, are learned here; the
  relative vocabulary is never the answer of a route step.

A share of the rows shows 1-2 failed attempts before the answer (a wrong action, sometimes a word of
the other vocabulary), each followed by the real verifier's feedback: for ``R`` rows the env's own
feedback turn after stepping it with the attempt; for ``T`` rows the verifier's verdict in the
compact wording. Rows are TRL conversational ``prompt`` / ``completion`` pairs written by
:func:`sftrl.repro.stage0.write_dataset`, so stage 0 is trained by ``agent train sft``::

    agent tiny-model --kind char --out models/char
    python -m sftrl.repro.stage0_virl --rows 224000 --out data/stage0-virl
    agent train sft --data data/stage0-virl --model models/char --out ckpt/stage0-virl ...
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from sftrl.environments.base import Observation
from sftrl.environments.virl import compact
from sftrl.environments.virl.env import VIRLEnv
from sftrl.environments.virl.prompts import directions
from sftrl.environments.virl.rail import turn_action
from sftrl.environments.virl.verifier import VIRLState, verify
from sftrl.repro.experiments import VIRL_ID_EVAL_ROUTES, VIRL_SPLIT_ROUTES, virl_id_routes
from sftrl.repro.stage0 import REVISION_MIX, refuse_existing, write_dataset
from sftrl.street_view.geometry import COMPASS_NAMES

Actions = Literal["absolute", "relative"]
MIX: tuple[tuple[str, float], ...] = (("R", 0.7), ("T", 0.3))
"""Item kinds: route step (absolute actions, training routes), turn vocabulary (both action spaces)."""
TURN_DELTAS: tuple[int, ...] = (-135, -90, -45, 45, 90, 135)
"""Heading changes of ``T`` items: each has one relative word (no "straight", no U-turn)."""
OTHER_VOCABULARY_SHARE = 0.25
"""Share of failed attempts that use a word of the other action space (judged unparseable)."""
COLUMNS: dict[str, str] = {
    "kind": "string",
    "actions": "string",
    "gt_action": "string",
    "route_id": "string",
    "route_index": "int64",
    "episode_seed": "int64",
    "position": "int64",
}
"""Extra columns: what each row is, and (``R``) the env episode that rebuilds it."""


def answers(actions: Actions) -> list[str]:
    """Every compact answer of an action space."""
    return ["forward", "stop", *(f"turn {d}" for d in directions(actions))]


def wrong_attempts(answer: str, actions: Actions, n: int, rng: random.Random) -> list[str]:
    """``n`` distinct compact answers other than ``answer``, some from the other action space."""
    other: Actions = "relative" if actions == "absolute" else "absolute"
    out: list[str] = []
    while len(out) < n:
        pool = answers(other if rng.random() < OTHER_VOCABULARY_SHARE else actions)
        attempt = rng.choice(pool)
        if attempt != answer and attempt not in out:
            out.append(attempt)
    return out


def route_env(
    split_routes: int = VIRL_SPLIT_ROUTES,
    modality: Literal["language", "vision"] = "language",
    resolution: int = 320,
) -> VIRLEnv:
    """The env of ``R`` items: the ``id`` split in the compact style, absolute actions, enough attempts
    per step for the deepest revision (the route indices to use are :func:`training_indices`).
    ``modality``/``resolution``: V-IRL-VL's curriculum (:mod:`sftrl.repro.stage0_virlvl`) uses it too."""
    return VIRLEnv(
        split="id",
        actions="absolute",
        prompt_style="compact",
        num_routes=split_routes,
        verify_iter=len(REVISION_MIX),
        modality=modality,
        resolution=resolution,
    )


def training_indices(held_out: int = VIRL_ID_EVAL_ROUTES, split_routes: int = VIRL_SPLIT_ROUTES) -> range:
    """Route indices of the ``id`` split that training may use (after the held-out ID routes)."""
    return range(held_out, len(virl_id_routes(held_out, split_routes)))


def _row(prompt: list[dict[str, str]], answer: str, **columns: Any) -> dict[str, Any]:
    defaults = {"route_id": "", "route_index": -1, "episode_seed": -1, "position": -1}
    return {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": answer}],
        **defaults,
        **columns,
    }


def walk(
    env: VIRLEnv, indices: range, rng: random.Random, seeds: Sequence[int] | None = None
) -> tuple[Observation, dict[str, Any]]:
    """Reset ``env`` on a random training route and let its expert walk to a random rail point (so the
    ``done:`` list is the expert's actions); the observation there, and the episode's ``route_id``,
    ``route_index``, ``episode_seed`` and ``position``. ``seeds``: the episode seeds to draw from
    (None: any)."""
    route_index = rng.choice(indices)
    seed = rng.randrange(2**31) if seeds is None else rng.choice(seeds)
    obs, info = env.reset(seed=seed, options={"route_index": route_index})
    position = rng.randrange(info["rail_length"])
    for _ in range(position):
        obs, _, _, _, _ = env.step(obs.oracle["expert_reply"])
    where = {
        "route_id": info["route_id"],
        "route_index": route_index,
        "episode_seed": seed,
        "position": position,
    }
    return obs, where


def failed_attempts(env: VIRLEnv, answer: str, n_wrong: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n_wrong`` wrong answers stepped in ``env`` at its current point, each with the env's feedback."""
    out = []
    for attempt in wrong_attempts(answer, "absolute", n_wrong, rng):
        feedback, _, terminated, _, step_info = env.step(attempt)
        assert not step_info["verdict"].correct and not terminated  # wrong by construction
        out.append((attempt, feedback.text))
    return out


def route_item(env: VIRLEnv, indices: range, n_wrong: int, rng: random.Random) -> dict[str, Any]:
    """An ``R`` row: the env's compact prompt at a random rail point of a training route."""
    obs, where = walk(env, indices, rng)
    answer, gt_action = obs.oracle["expert_reply"], obs.oracle["gt_action"]
    prompt = [{"role": "user", "content": obs.text}]
    for attempt, feedback in failed_attempts(env, answer, n_wrong, rng):
        prompt += [{"role": "assistant", "content": attempt}, {"role": "user", "content": feedback}]
    return _row(prompt, answer, kind="R", actions="absolute", gt_action=gt_action, **where)


def turn_prompt(facing: str, target: str, actions: Actions) -> str:
    """The prompt of a ``T`` item (the compact prompt's ``key: value`` lines)."""
    return f"facing: {facing}\nturn to: {target}\nactions: {actions}"


def turn_state(facing: str, target: str, actions: Actions) -> VIRLState:
    """The verifier state of a ``T`` item: the rail's turn action between the two compass headings."""
    heading = {name: 45.0 * i for i, name in enumerate(COMPASS_NAMES)}
    gt = turn_action(heading[facing], heading[target], actions)
    return VIRLState(gt, False, actions, "", compact.ANSWER_FORMAT, check_observation=False)


def turn_item(n_wrong: int, rng: random.Random) -> dict[str, Any]:
    """A ``T`` row: turn from one compass heading to another, answered in a random action space."""
    start = rng.randrange(len(COMPASS_NAMES))
    facing = COMPASS_NAMES[start]
    target = COMPASS_NAMES[(start + rng.choice(TURN_DELTAS) // 45) % len(COMPASS_NAMES)]
    actions: Actions = rng.choice(("absolute", "relative"))
    state = turn_state(facing, target, actions)
    answer = compact.reply(state.gt_action)
    prompt = [{"role": "user", "content": turn_prompt(facing, target, actions)}]
    for attempt in wrong_attempts(answer, actions, n_wrong, rng):
        verdict = verify(state, attempt, style="compact")
        assert not verdict.correct  # wrong by construction
        prompt += [
            {"role": "assistant", "content": attempt},
            {"role": "user", "content": compact.feedback(verdict.category)},
        ]
    return _row(prompt, answer, kind="T", actions=actions, gt_action=state.gt_action)


def item(env: VIRLEnv, indices: range, rng: random.Random) -> dict[str, Any]:
    """One curriculum row (kinds mixed as MIX, revision depth as stage 0's REVISION_MIX)."""
    kinds, weights = zip(*MIX, strict=True)
    kind = rng.choices(kinds, weights)[0]
    n_wrong = rng.choices(range(len(REVISION_MIX)), REVISION_MIX)[0]
    return route_item(env, indices, n_wrong, rng) if kind == "R" else turn_item(n_wrong, rng)


def rows(
    n: int,
    rng: random.Random,
    held_out: int = VIRL_ID_EVAL_ROUTES,
    split_routes: int = VIRL_SPLIT_ROUTES,
) -> list[dict[str, Any]]:
    """``n`` curriculum rows drawn with ``rng``."""
    env = route_env(split_routes)
    indices = training_indices(held_out, split_routes)
    return [item(env, indices, rng) for _ in range(n)]


def build_dataset(
    out: Path,
    n_rows: int,
    *,
    seed: int = 0,
    val_rows: int = 512,
    held_out: int = VIRL_ID_EVAL_ROUTES,
    split_routes: int = VIRL_SPLIT_ROUTES,
    overwrite: bool = False,
) -> Path:
    """Write ``n_rows`` training rows (+ ``val_rows`` validation rows) as a DatasetDict at ``out``."""
    refuse_existing(out, overwrite)
    rng = random.Random(seed)
    train = rows(n_rows, rng, held_out, split_routes)
    validation = rows(val_rows, rng, held_out, split_routes)
    meta = {
        "kind": "sft",
        "format": ["prompt", "completion"],
        "modality": "text",
        "source": "sftrl.repro.stage0_virl curriculum",
        "command": f"python -m sftrl.repro.stage0_virl --rows {n_rows} --seed {seed} --val-rows {val_rows}"
        f" --held-out {held_out} --split-routes {split_routes}",
        "mix": dict(MIX),
        "revision_mix": list(REVISION_MIX),
        "routes": {"split": "id", "held_out": held_out, "split_routes": split_routes},
        "splits": {"train": {"rows": n_rows}, "validation": {"rows": val_rows}},
    }
    about = (
        "V-IRL route steps in the `compact` prompt style with absolute actions, on the training routes "
        f"only (the `id` split's routes {held_out}..{split_routes - 1}), and synthetic turns answered in "
        "the absolute or the relative action space, with 0-2 failed attempts and the verifier's "
        "feedback as context. No row is a relative-action route step (the rule-OOD task). "
        "Conversational prompt/completion rows (train with `completion_only_loss`)."
    )
    return write_dataset(out, train, validation, COLUMNS, meta, about, overwrite=overwrite)


def add_route_arguments(ap: argparse.ArgumentParser) -> None:
    """``--held-out`` / ``--split-routes``: which routes of the ``id`` split a V-IRL curriculum may use."""
    ap.add_argument(
        "--held-out",
        type=int,
        default=VIRL_ID_EVAL_ROUTES,
        help=f"held-out ID routes at the start of the id split, never used ({VIRL_ID_EVAL_ROUTES}, as "
        "agent repro's V-IRL experiments)",
    )
    ap.add_argument(
        "--split-routes",
        type=int,
        default=VIRL_SPLIT_ROUTES,
        help=f"routes of the id split, held-out ones included ({VIRL_SPLIT_ROUTES})",
    )


def check_route_arguments(ap: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    if not 0 < ns.held_out < ns.split_routes:
        ap.error("--held-out must be between 1 and --split-routes - 1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the V-IRL-L stage-0 curriculum as an SFT dataset.")
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--val-rows", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    add_route_arguments(ap)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--overwrite", action="store_true")
    ns = ap.parse_args(argv)
    check_route_arguments(ap, ns)
    build_dataset(
        ns.out,
        ns.rows,
        seed=ns.seed,
        val_rows=ns.val_rows,
        held_out=ns.held_out,
        split_routes=ns.split_routes,
        overwrite=ns.overwrite,
    )
    print(f"wrote {ns.rows} + {ns.val_rows} rows to {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
