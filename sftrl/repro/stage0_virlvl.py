"""Stage 0 of V-IRL-VL: the street-view reading curriculum, written as an ordinary SFT dataset with images.

The V-IRL-L stage 0 (:mod:`sftrl.repro.stage0_virl`) teaches compact V-IRL navigation from text, whose
``now:`` line says what the rail sees (``Bon Chon Chicken F``, ``none, intersection``). In V-IRL-VL that
line is gone: the observation is only the 2x2 street-view grid. This curriculum teaches a tiny
vision-language model (:mod:`sftrl.agents.tiny_vlm`, its decoder seeded with the V-IRL-L stage-0 model)
to read the grid instead. Every row's user turn is the grid first, then text, exactly as the agent
loop sends a V-IRL-VL observation. Two item kinds, both at a random rail point of a training route
(the ``id`` split's routes after the held-out ID ones, as :mod:`sftrl.repro.stage0_virl`), the expert
having walked there:

* **read** (``O``): the grid and ``now`` -> the compact observation, the very text the language
  env's ``now:`` line shows at that point (reading alone).
* **route step** (``R``): the env's compact vision prompt (route, actions, done; no ``now:`` line)
  -> the expert's action, after 0-2 failed attempts each followed by the env's own feedback.

Only New York's training routes are used: the visual-OOD cities (Helsinki, Baltimore) never appear,
as in the paper's V-IRL-VL split (Singapore, the other shipped city, yields no routes). The grid is
rendered by the env itself (the synthetic street view, ``resolution`` pixels per view).

    python -m sftrl.repro.stage0_virlvl --rows 40000 --out data/stage0-virlvl
    agent train sft --data data/stage0-virlvl --model models/char-vision --out ckpt/stage0-virlvl ...
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

from sftrl.environments.virl import compact
from sftrl.repro.experiments import VIRL_ID_EVAL_ROUTES, VIRL_SPLIT_ROUTES
from sftrl.repro.stage0 import REVISION_MIX, refuse_existing, write_dataset
from sftrl.repro.stage0_gpvl import assistant_turn, png_bytes, user_turn
from sftrl.repro.stage0_virl import (
    add_route_arguments,
    check_route_arguments,
    failed_attempts,
    route_env,
    training_indices,
    walk,
)

MIX: tuple[tuple[str, float], ...] = (("O", 0.35), ("R", 0.65))
"""Item kinds: read the grid, take a route step from the grid."""
READ_PROMPT = compact.READ_PROMPT
"""An ``O`` row's text: the env's ``read`` task prompt, so that task probes what these rows taught."""
RESOLUTION = 32
"""Pixels per view (the grid is twice that): ``experiments.EXPERIMENTS['virl-vl-visual'].resolution``."""
NOW_PREFIX = "now: "
EPISODE_SEEDS = tuple(range(8))
"""The episode seeds each route is walked with (a seed moves the rail's points, so the views differ):
70 training routes x 8 seeds give ~8,000 distinct grids, each rendered once (~20 ms a grid)."""
COLUMNS: dict[str, str] = {
    "kind": "string",
    "gt_action": "string",
    "observation": "string",
    "route_id": "string",
    "route_index": "int64",
    "episode_seed": "int64",
    "position": "int64",
}
"""Extra columns: what each row is, what the rail sees there, and the env episode that rebuilds it."""


class Curriculum:
    """Rows from the language env on the training routes: walking it renders nothing, and at the chosen
    point its prompt gives the ``now:`` line (``O`` rows) and, without that line, the vision env's
    prompt (``R`` rows), while ``render_image`` gives the vision env's grid (the tests check both
    against a vision env walked the same way)."""

    def __init__(
        self,
        held_out: int = VIRL_ID_EVAL_ROUTES,
        split_routes: int = VIRL_SPLIT_ROUTES,
        resolution: int = RESOLUTION,
    ) -> None:
        self.env = route_env(split_routes, "language", resolution)
        self.indices = training_indices(held_out, split_routes)
        self._grids: dict[tuple[int, int, int], bytes] = {}

    def grid(self, where: dict[str, Any]) -> bytes:
        """The PNG of the grid at the env's current point (``where``: :func:`walk`'s episode facts);
        a reset with the same seed and route, walked as far, is at the same point: rendered once."""
        key = (where["route_index"], where["episode_seed"], where["position"])
        if key not in self._grids:
            self._grids[key] = png_bytes(self.env.render_image())
        return self._grids[key]

    def read_item(self, rng: random.Random) -> dict[str, Any]:
        obs, where = walk(self.env, self.indices, rng, EPISODE_SEEDS)
        now, _ = split_observation(obs.text)
        return {
            "prompt": [user_turn(READ_PROMPT, image=True)],
            "completion": [assistant_turn(now)],
            "images": [{"bytes": self.grid(where), "path": None}],
            "kind": "O",
            "gt_action": obs.oracle["gt_action"],
            "observation": now,
            **where,
        }

    def route_item(self, n_wrong: int, rng: random.Random) -> dict[str, Any]:
        obs, where = walk(self.env, self.indices, rng, EPISODE_SEEDS)
        now, text = split_observation(obs.text)
        answer, gt_action = obs.oracle["expert_reply"], obs.oracle["gt_action"]
        image = self.grid(where)
        prompt = [user_turn(text, image=True)]
        for attempt, feedback in failed_attempts(self.env, answer, n_wrong, rng):
            prompt += [assistant_turn(attempt), user_turn(feedback)]
        return {
            "prompt": prompt,
            "completion": [assistant_turn(answer)],
            "images": [{"bytes": image, "path": None}],
            "kind": "R",
            "gt_action": gt_action,
            "observation": now,
            **where,
        }

    def item(self, rng: random.Random) -> dict[str, Any]:
        """One row (kinds mixed as :data:`MIX`, revision depth as stage 0's ``REVISION_MIX``)."""
        kinds, weights = zip(*MIX, strict=True)
        if rng.choices(kinds, weights)[0] == "O":
            return self.read_item(rng)
        n_wrong = rng.choices(range(len(REVISION_MIX)), REVISION_MIX)[0]
        return self.route_item(n_wrong, rng)


def split_observation(prompt: str) -> tuple[str, str]:
    """A language-mode compact V-IRL prompt as (its ``now:`` observation, the prompt without that line,
    which is the vision-mode prompt: :func:`sftrl.environments.virl.compact.prompt` with no observation)."""
    lines = prompt.splitlines()
    now = [i for i, line in enumerate(lines) if line.startswith(NOW_PREFIX)]
    if len(now) != 1:
        raise ValueError("not a compact V-IRL-L prompt: no single 'now:' line")
    return lines[now[0]][len(NOW_PREFIX) :], "\n".join(lines[: now[0]] + lines[now[0] + 1 :])


def rows(
    n: int,
    rng: random.Random,
    held_out: int = VIRL_ID_EVAL_ROUTES,
    split_routes: int = VIRL_SPLIT_ROUTES,
    resolution: int = RESOLUTION,
) -> list[dict[str, Any]]:
    """``n`` curriculum rows drawn with ``rng``."""
    curriculum = Curriculum(held_out, split_routes, resolution)
    return [curriculum.item(rng) for _ in range(n)]


def build_dataset(
    out: Path,
    n_rows: int,
    *,
    seed: int = 0,
    val_rows: int = 512,
    held_out: int = VIRL_ID_EVAL_ROUTES,
    split_routes: int = VIRL_SPLIT_ROUTES,
    resolution: int = RESOLUTION,
    overwrite: bool = False,
) -> Path:
    """Write ``n_rows`` training rows (+ ``val_rows`` validation rows) as a DatasetDict at ``out``."""
    refuse_existing(out, overwrite)
    rng = random.Random(seed)
    train = rows(n_rows, rng, held_out, split_routes, resolution)
    validation = rows(val_rows, rng, held_out, split_routes, resolution)
    meta = {
        "kind": "sft",
        "format": ["prompt", "completion"],
        "modality": "vision",
        "source": "sftrl.repro.stage0_virlvl curriculum",
        "command": f"python -m sftrl.repro.stage0_virlvl --rows {n_rows} --seed {seed} --val-rows {val_rows}"
        f" --held-out {held_out} --split-routes {split_routes}"
        + ("" if resolution == RESOLUTION else f" --resolution {resolution}"),
        "mix": dict(MIX),
        "revision_mix": list(REVISION_MIX),
        "resolution": resolution,
        "routes": {"split": "id", "held_out": held_out, "split_routes": split_routes},
        "splits": {"train": {"rows": n_rows}, "validation": {"rows": val_rows}},
    }
    about = (
        "V-IRL-VL street-view reading: read-the-grid items (the compact observation) and route steps "
        "from the grid alone (compact vision prompt, absolute actions), on New York's training routes "
        f"only (the `id` split's routes {held_out}..{split_routes - 1}), with 0-2 failed attempts and "
        "the env's feedback as context. Conversational prompt/completion rows with an `images` column "
        "(train with `completion_only_loss`)."
    )
    return write_dataset(out, train, validation, COLUMNS, meta, about, overwrite=overwrite, vision=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the V-IRL-VL stage-0 curriculum as an SFT dataset.")
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--val-rows", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    add_route_arguments(ap)
    ap.add_argument("--resolution", type=int, default=RESOLUTION, help=f"pixels per view ({RESOLUTION})")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--overwrite", action="store_true")
    ns = ap.parse_args(argv)
    if ns.rows < 1 or ns.val_rows < 1:
        ap.error("--rows and --val-rows must be at least 1")
    check_route_arguments(ap, ns)
    build_dataset(
        ns.out,
        ns.rows,
        seed=ns.seed,
        val_rows=ns.val_rows,
        held_out=ns.held_out,
        split_routes=ns.split_routes,
        resolution=ns.resolution,
        overwrite=ns.overwrite,
    )
    print(f"wrote {ns.rows} + {ns.val_rows} rows to {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
