"""The settings of ``agent repro --experiment``: env and options of training (ID) and of the OOD
evaluation, the held-out sets (disjoint from training), the model kind and the extra metrics.

GP experiments use the fixed hand pools of :mod:`sftrl.repro.hands`; V-IRL experiments write fixed route
files (the env's ``routes`` option): training routes and held-out ID routes are disjoint slices of the
``id`` split's route set, and the OOD routes are another split's set (``rule-ood`` routes are disjoint
from ``id`` by construction; ``visual-ood`` routes are in other cities).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftrl.repro.hands import Pools, make_pools


@dataclass(frozen=True)
class Experiment:
    name: str
    env: str
    modality: str
    ood_split: str
    title: str
    id_label: str
    ood_label: str
    extra_metrics: tuple[str, ...] = ()
    resolution: int | None = None
    verify_iter: int = 3
    stage0_curriculum: str | None = None
    """The module whose curriculum ``--from-scratch`` trains stage 0 on (None: no curriculum yet)."""

    @property
    def model_kind(self) -> str:
        return "char-vision" if self.modality == "vision" else "char"

    @property
    def splits(self) -> tuple[str, ...]:
        # Only the rule shift has OOD multisets that training saw under the other rule.
        return ("id", "ood", "ood_seen", "ood_unseen") if self.name == "gp-l-rule" else ("id", "ood")


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "gp-l-rule",
            "gp",
            "language",
            "rule-ood",
            "GP-L",
            "In-distribution (J/Q/K = 10)",
            "Rule OOD (J/Q/K = 11/12/13)",
            stage0_curriculum="sftrl.repro.stage0",
        ),
        Experiment(
            "virl-l-rule",
            "virl",
            "language",
            "rule-ood",
            "V-IRL-L",
            "In-distribution (absolute actions, NYC)",
            "Rule OOD (relative actions)",
            extra_metrics=("step_accuracy",),
            verify_iter=2,
            stage0_curriculum="sftrl.repro.stage0_virl",
        ),
        Experiment(
            "gp-vl-visual",
            "gp",
            "vision",
            "visual-ood",
            "GP-VL",
            "In-distribution (black suits)",
            "Visual OOD (red suits)",
            extra_metrics=("recognition_accuracy",),
            resolution=64,
            stage0_curriculum="sftrl.repro.stage0_gpvl",
        ),
        Experiment(
            "virl-vl-visual",
            "virl",
            "vision",
            "visual-ood",
            "V-IRL-VL",
            "In-distribution (NYC street views)",
            "Visual OOD (Helsinki + Baltimore)",
            extra_metrics=("step_accuracy",),
            resolution=32,  # per view: the 2x2 grid is 64 px, the tiny VLM's input size
            verify_iter=2,
            stage0_curriculum="sftrl.repro.stage0_virlvl",
        ),
    )
}
QUICK_VISION = {"image_size": 32, "vision_hidden": 32, "vision_layers": 1, "vision_heads": 1}
"""The vision sizes of ``--quick``: a 32-px input (16 image tokens) keeps every job of the check short."""
MODALITY_ALIAS = {"language": "gp-l-rule", "vision": "gp-vl-visual"}
VIRL_ID_EVAL_ROUTES = 30
"""A full V-IRL run's held-out ID routes: the first 30 of the ``id`` split's route set."""
VIRL_SPLIT_ROUTES = 100
"""A full V-IRL run's ``id`` split size (held-out ID + training routes) and OOD route count."""
VIRL_ROUTE_FILES = {
    "train": "train_routes.json",
    "id_eval": "id_eval_routes.json",
    "ood_eval": "ood_routes.json",
}


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)} or all")
    return EXPERIMENTS[name]


@dataclass(frozen=True)
class RouteSets:
    """V-IRL route sets: ids in ``route_index`` order of each written file."""

    train: tuple[str, ...]
    id_eval: tuple[str, ...]
    ood_eval: tuple[str, ...]


def virl_id_routes(n_id_eval: int, n_routes: int) -> tuple[Any, ...]:
    """The ``id`` split's ``n_routes`` routes (seed 0): the first ``n_id_eval`` are held out for ID
    evaluation, the rest are the only routes training (stage 0 included) may use."""
    from sftrl.environments.virl.routes import split_routes

    if not 0 < n_id_eval < n_routes:
        raise ValueError(f"held-out ID routes ({n_id_eval}) must be fewer than the id split's {n_routes}")
    return split_routes("nyc", "id", 0, n_routes)


def make_route_sets(
    exp: Experiment, n_id_eval: int, n_ood_eval: int | None, n_routes: int, out: Path
) -> tuple[RouteSets, dict[str, Path]]:
    """Write the three route files: the first ``n_id_eval`` routes of the ``id`` split (``n_routes``
    of them, seed 0) are held out for ID evaluation, the rest are the only routes training sees; the OOD
    file is the first ``n_ood_eval`` (None: all) routes of the experiment's OOD split."""
    from sftrl.environments.virl.routes import split_routes

    ids = virl_id_routes(n_id_eval, n_routes)
    city = "nyc" if exp.ood_split == "rule-ood" else "helsinki+baltimore"
    ood = split_routes(city, exp.ood_split, 0, n_ood_eval or n_routes)
    parts = {"train": ids[n_id_eval:], "id_eval": ids[:n_id_eval], "ood_eval": ood[: n_ood_eval or len(ood)]}
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, routes in parts.items():
        path = out / VIRL_ROUTE_FILES[key]
        # SFTvsRL's route_infos.json layout, which the env's ``routes`` option reads back unchanged.
        path.write_text(json.dumps([[r.model_dump(mode="json") for r in routes], len(routes)]) + "\n")
        paths[key] = path
    sets = RouteSets(*(tuple(r.route_id or "" for r in parts[k]) for k in ("train", "id_eval", "ood_eval")))
    return sets, paths


def make_sets(
    exp: Experiment,
    n_id_eval: int,
    n_ood_eval: int | None,
    split_seed: int,
    n_routes: int,
    out: Path,
    n_ood_curve: int | None = None,
) -> tuple[Pools | RouteSets, dict[str, Path], dict[str, int]]:
    """The experiment's fixed sets, written under ``out``: (sets, paths, sizes of the eval sets).

    ``n_ood_curve`` (GP): also ``ood_curve.json``, a fixed random subset of the OOD multisets in pool
    order, for the evaluations between a run's start and its end (the end evaluates all of them)."""
    if exp.env == "virl":
        sets, paths = make_route_sets(exp, n_id_eval, n_ood_eval, n_routes, out)
        return sets, paths, {"id_eval": len(sets.id_eval), "ood_eval": len(sets.ood_eval)}
    pools = make_pools(n_id_eval, split_seed)
    if exp.ood_split == "visual-ood":
        # Visual OOD keeps the rule: the held-out ID multisets again, dealt in red suits.
        pools = Pools(pools.train, pools.id_eval, pools.id_eval)
    elif n_ood_eval is not None:
        import random

        pick = sorted(random.Random(split_seed).sample(range(len(pools.ood_eval)), n_ood_eval))
        pools = Pools(pools.train, pools.id_eval, tuple(pools.ood_eval[i] for i in pick))
    paths = pools.write(out)
    sizes = {"id_eval": len(pools.id_eval), "ood_eval": len(pools.ood_eval)}
    if n_ood_curve is not None and n_ood_curve < len(pools.ood_eval):
        paths["ood_curve"] = pools.write_ood_curve(out, n_ood_curve, split_seed)
        sizes["ood_curve"] = n_ood_curve
    return pools, paths, sizes


def env_options(
    exp: Experiment, verify_iter: int, pool: Path, split: str = "id", by_index: bool = False
) -> dict[str, Any]:
    """The env options of one job: training (``split`` id, the training pool) or an evaluation set."""
    if exp.env == "gp":
        opts: dict[str, Any] = {
            "split": split,
            **({"modality": "vision", "resolution": exp.resolution} if exp.modality == "vision" else {}),
            "prompt_style": "compact",
            "verify_iter": verify_iter,
            "hand_pool": str(pool),
            **({"pool_draw": "by_index"} if by_index else {}),
        }
        return opts
    # Training draws a route of its file per episode; an evaluation plays every route of its held-out
    # file once, in order (route_draw=by_index, as many episodes as routes).
    return {
        "split": split,
        **({"modality": "vision", "resolution": exp.resolution} if exp.modality == "vision" else {}),
        "prompt_style": "compact",
        "verify_iter": verify_iter,
        "routes": str(pool),
        **({"route_draw": "by_index"} if by_index else {}),
    }


def stage0_problem(exp: Experiment, path: Path) -> str | None:
    """Why ``path`` cannot be this experiment's stage-0 model (None when it can)."""
    config = Path(path) / "config.json"
    if not config.exists():
        return "not a model directory (no config.json)"
    kind = json.loads(config.read_text()).get("model_type")
    allowed = ("llava", "llama") if exp.modality == "vision" else ("llama",)
    if kind not in allowed:
        return f"a {kind!r} model; {exp.name} needs a char model (llama)" + (
            " or a char-vision model (llava)" if exp.modality == "vision" else ""
        )
    return None


def prepare_stage0(exp: Experiment, stage0: Path | None, out: Path, model: dict[str, int]) -> Path:
    """The stage-0 model of a new experiment: ``stage0`` itself, a char-vision model whose decoder is
    copied from a text ``stage0``, or (None, --quick) an untrained tiny model of the experiment's kind."""
    from sftrl.agents.tiny import build_char_model
    from sftrl.agents.tiny_vlm import build_char_vision_model

    target = out / "stage0"
    if stage0 is not None:
        kind = json.loads((Path(stage0) / "config.json").read_text()).get("model_type")
        if exp.modality == "language" or kind == "llava":
            return Path(stage0)
        if not (target / "config.json").exists():
            build_char_vision_model(target, seed=0, text_model=stage0, overwrite=True)
        return target
    if not (target / "config.json").exists():
        if exp.modality == "vision":
            build_char_vision_model(target, seed=0, **model, **QUICK_VISION, overwrite=True)
        else:
            build_char_model(target, seed=0, overwrite=True, **model)
    return target


def stage0_command(exp: Experiment, stage0: Path | None, out: Path, model: dict[str, int]) -> list[str]:
    """The equivalent of :func:`prepare_stage0` (``agent tiny-model`` has no flag for a text decoder or
    the vision sizes, so those are the builder's Python call)."""
    target = out / "stage0"
    if stage0 is not None:
        if exp.modality == "language" or (
            json.loads((Path(stage0) / "config.json").read_text()).get("model_type") == "llava"
        ):
            return [f"# stage 0 given: {stage0}"]
        call = f"build_char_vision_model('{target}', seed=0, text_model='{stage0}')"
    elif exp.modality == "vision":
        sizes = ", ".join(f"{k}={v}" for k, v in model.items())
        quick = ", ".join(f"{k}={v}" for k, v in QUICK_VISION.items())
        call = f"build_char_vision_model('{target}', seed=0, {sizes}, {quick})"
    else:
        sizes = " --hidden {hidden} --layers {layers} --heads {heads}".format(**model)
        return [f"agent tiny-model --kind char --out {target} --seed 0{sizes}"]
    return [f'python -c "from sftrl.agents.tiny_vlm import build_char_vision_model; {call}"']
