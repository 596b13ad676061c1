"""The `agent repro` recipe: stage 0 -> SFT warm start -> matched-compute SFT / PPO / GRPO, on GP-L
or another setting of :mod:`sftrl.repro.experiments` (V-IRL-L, GP-VL, V-IRL-VL), plus ablation arms.

Every stage is the framework's own code: the char-level Llama of ``agent tiny-model --kind char``,
datasets in ``agent data sft`` format, ``agent train sft`` (TRL) and ``agent train rl`` (the project's
learner, online, sequential revision through the agent loop and the hf backend), and evaluation
through the runner (each evaluated episode is a normal run directory). This module only fixes the
settings, runs the jobs (one stage-1 warm start per seed, then one job per seed and arm, in worker
processes), and turns the evaluation logs into statistics, ``results.json``, ``results.md``,
``figure.png`` and ``commands.md`` (the equivalent CLI command of every job).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sftrl.repro import experiments
from sftrl.repro.experiments import Experiment, RouteSets
from sftrl.repro.hands import OOD_CURVE_FILE, Pools

ARMS: tuple[str, ...] = ("sft", "ppo", "grpo")
ABLATIONS: tuple[str, ...] = ("rl-no-sft", "rl-verify1")
"""rl-no-sft: PPO from the stage-0 model (no SFT warm start); rl-verify1: PPO trained with verify_iter 1."""
RL_ARMS: tuple[str, ...] = ("ppo", "grpo", *ABLATIONS)
ABLATION_COMPARISONS: tuple[tuple[str, str], ...] = (("rl-no-sft", "ppo"), ("rl-verify1", "ppo"))
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("ppo", "sft"),
    ("grpo", "sft"),
    ("sft", "warmstart"),
    ("ppo", "warmstart"),
    ("grpo", "warmstart"),
    ("warmstart", "stage0"),
    ("ppo", "stage0"),
    ("grpo", "stage0"),
)
SHIPPED_STAGE0 = Path(__file__).parent / "data" / "stage0"
SHIPPED_STAGE0_VIRL = Path(__file__).parent / "data" / "stage0-virl"
SHIPPED_STAGE0_GPVL = Path(__file__).parent / "data" / "stage0-gpvl"
SHIPPED_STAGE0_VIRLVL = Path(__file__).parent / "data" / "stage0-virlvl"
SHIPPED_STAGE0S = {
    "gp-l-rule": SHIPPED_STAGE0,
    "virl-l-rule": SHIPPED_STAGE0_VIRL,
    "gp-vl-visual": SHIPPED_STAGE0_GPVL,
    "virl-vl-visual": SHIPPED_STAGE0_VIRLVL,
}
"""The stage-0 models shipped with the package, per experiment (each with a README on its rebuild)."""
Report = Callable[[float, float, str], None]
"""progress(completed, total, description)."""


@dataclass
class ReproConfig:
    """Every knob of a run; ``quick()`` and ``full()`` are the two presets the CLI uses."""

    experiment: str = "gp-l-rule"
    ablations: tuple[str, ...] = ()
    seeds: int = 5
    workers: int = 2
    split_seed: int = 1234
    n_id_eval: int = 200
    n_ood_eval: int | None = None
    """None: every rule-OOD multiset (796); V-IRL: every route of the OOD split."""
    n_ood_curve: int | None = None
    """GP: OOD multisets evaluated at every point of a run (a fixed random subset of the OOD set, spec
    ``ood``); the whole OOD set is evaluated at each run's end (spec ``ood_all``, ``at=final``), and the
    endpoint statistics use it. None: the whole set at every point."""
    virl_routes: int = experiments.VIRL_SPLIT_ROUTES
    """V-IRL: routes of the id split (held-out ID routes + training routes) and of the OOD split."""
    verify_iter: int = 3
    max_new_tokens: int = 40
    eval_concurrency: int = 128
    """Episodes evaluated at once (greedy; the batch changes speed, a reply at most by float rounding)."""
    # Stage 0 (only when no checkpoint is given or shipped): the shipped checkpoint's recipe.
    model: dict[str, int] = field(default_factory=lambda: {"hidden": 128, "layers": 4, "heads": 4})
    stage0_rows: int = 224_000
    stage0_shuffled_share: float = 0.25
    stage0_steps: int = 3500
    stage0_lr: float = 1.5e-3
    # Stage 1: SFT warm start on expert GP-L episodes (with revisions) of the training rule.
    expert_episodes: int = 40_000
    expert_mistakes: float = 0.3
    stage1_steps: int = 300
    stage1_lr: float = 5e-4
    shared_warmstart: bool = True
    """One SFT warm start (seed 0's) that every seed's arms start from - the paper's "same SFT
    initialisation"; the seeds vary stage 2. False: one warm start per seed (the complete run of
    2026-12-06), which adds the warm start's own variance to every seed."""
    batch_size: int = 64
    # Stage 2: each arm's training-FLOP budget, evaluated each time another 1/eval_points is spent.
    stage2_flops: float = 6e12
    eval_points: int = 8
    sft_lr: float = 1e-4
    rl_lr: float = 3e-5
    value_lr: float = 1e-3
    episodes_per_update: int = 64
    group_size: int = 8
    ppo_epochs: int = 2
    minibatch_size: int = 48
    minibatch_order: str = "length"
    """RL mini-batches of transitions of similar length (``--minibatch-order``): the same number of
    mini-batches per epoch as random ones, ~30% less padding on GP-L's multi-turn episodes."""
    temperature: float = 1.0

    @classmethod
    def full(cls, experiment: str = "gp-l-rule") -> ReproConfig:
        exp = experiments.get(experiment)
        if exp.env == "virl":
            # Stage 0 sized for the issue's 60-minute rebuild budget on one core: V-IRL rows are ~3x GP's
            # length (one step ~3.3 s at batch 64), so 1000 steps over 64,000 rows (one epoch).
            # Stages 1-2 sized for the issue's 30 minutes (all arms, 3 seeds), from a timing probe: the
            # 70 training routes give a few hundred distinct expert rows per 1000 episodes (the rest
            # are duplicates), a warm-start step takes ~3.5 s, and one PPO update of 64 routes
            # (~500 steps) costs 1.6e12 FLOPs - so 16 routes per update, 4e12 FLOPs per arm.
            virl = cls(
                experiment=experiment,
                verify_iter=exp.verify_iter,
                seeds=3,
                n_id_eval=experiments.VIRL_ID_EVAL_ROUTES,
                stage0_rows=64_000,
                stage0_steps=1000,
                expert_episodes=4000,
                stage1_steps=100,
                stage2_flops=4e12,
                episodes_per_update=16,
                group_size=4,
            )
            if exp.modality == "vision":
                # V-IRL-VL stage 0, sized for the 60-minute budget on one core from a timing probe
                # (2026-12-06: 2.65 s per step of 64 rows, 64 image tokens + the route text; ~10 ms a
                # row to write): 800 steps, one epoch of 51,200 rows, GP-VL's peak lr (the decoder is
                # the trained V-IRL-L stage 0). Stages 1-2 sized for the issue's 30 minutes from a
                # second probe on the shipped stage 0: expert episodes render a grid per step (~6.5
                # episodes/s), a warm-start step ~2.9 s (loss 0.03 by step 10), a PPO update of 16
                # routes ~13 s and 5.9e11 FLOPs, one evaluation of the 130 held-out routes ~25 s. So
                # 1000 expert episodes, a 50-step warm start, 4e12 FLOPs per arm, 4 evaluation points.
                return replace(
                    virl,
                    stage0_rows=51_200,
                    stage0_steps=800,
                    stage0_lr=1e-3,
                    expert_episodes=1000,
                    stage1_steps=50,
                    eval_points=4,
                )
            return virl
        if exp.name == "gp-vl-visual":
            # Stage 0 sized for the 60-minute rebuild budget on one core from a timing probe (1.74 s per
            # step of 64 rows: 64 image tokens + the text): 1600 steps, two epochs of 51,200 rows; a
            # lower peak lr than from scratch, since the decoder is the trained language stage 0 and
            # the image encoder's first outputs are noise to it.
            # Stages 1-2 sized for the issue's 30 minutes (all arms, 3 seeds, 2 workers) from a timing
            # probe on the shipped stage 0 (2026-12-06): an SFT step ~1.1 s (6e10 FLOPs), a PPO update
            # of 64 episodes ~14 s (7e11 FLOPs: each attempt carries 64 image tokens), 400 held-out
            # episodes ~12 s. So 4e12 FLOPs per arm, 32 episodes (4 hands x 8) per update for ~11
            # updates, a 150-step warm start (the probe's loss levelled off by step 10), and 10,000
            # expert episodes (~25k rows: warm start + SFT arm use < 1 epoch).
            return cls(
                experiment=experiment,
                verify_iter=exp.verify_iter,
                seeds=3,
                stage0_rows=51_200,
                stage0_steps=1600,
                stage0_lr=1e-3,
                expert_episodes=10_000,
                stage1_steps=150,
                stage2_flops=4e12,
                episodes_per_update=32,
            )
        # GP-L: the 796 rule-OOD hands at each run's end, a fixed 200 of them at the points before.
        return cls(
            experiment=experiment,
            verify_iter=exp.verify_iter,
            n_ood_curve=200 if exp.ood_split == "rule-ood" else None,
        )

    @classmethod
    def quick(cls, experiment: str = "gp-l-rule") -> ReproConfig:
        exp = experiments.get(experiment)
        if exp.env == "virl":
            # Routes are multi-step episodes: fewer of them, a shorter id split to generate.
            return replace(
                cls._quick(),
                experiment=experiment,
                verify_iter=exp.verify_iter,
                n_id_eval=6,
                n_ood_eval=6,
                virl_routes=16,
                expert_episodes=12,
                episodes_per_update=4,
                group_size=2,
                minibatch_size=16,
                stage2_flops=8e9 if exp.modality == "vision" else 6e9,
            )
        if exp.modality == "vision":
            return replace(cls._quick(), experiment=experiment, stage2_flops=1.2e10)
        return replace(cls._quick(), n_ood_curve=6)

    @classmethod
    def _quick(cls) -> ReproConfig:
        return cls(
            seeds=1,
            workers=1,
            n_id_eval=12,
            n_ood_eval=12,
            model={"hidden": 32, "layers": 1, "heads": 1},
            stage0_rows=512,
            stage0_steps=4,
            expert_episodes=60,
            stage1_steps=3,
            batch_size=8,
            stage2_flops=4e9,
            eval_points=2,
            episodes_per_update=8,
            group_size=4,
            minibatch_size=8,
            max_new_tokens=24,
        )


def with_overrides(cfg: ReproConfig, **kw: Any) -> ReproConfig:
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})


# -- settings of each job (the same objects give the CLI commands in commands.md) ----------------


def _env_options(
    cfg: ReproConfig, pool: Path, split: str = "id", by_index: bool = False, verify_iter: int | None = None
) -> dict[str, Any]:
    exp = experiments.get(cfg.experiment)
    return experiments.env_options(exp, verify_iter or cfg.verify_iter, pool, split, by_index)


def eval_specs(
    cfg: ReproConfig, pools: dict[str, Path], sizes: dict[str, int], view_cache: Path | None = None
) -> list[str]:
    """``--eval-env`` specs: every held-out ID and OOD item once, in order (GP: multisets of the
    held-out pool; V-IRL: routes of the held-out route file). With an OOD curve subset: ``ood`` is the
    subset at every point and ``ood_all`` the whole OOD set at the end (``at=final``).

    ``view_cache``: V-IRL-VL evaluations read their street views through the disk cache there. The rail
    puts every evaluation of a route at the same points, so each checkpoint sees the very grids the
    first evaluation drew (same pixels: the cache is lossless), and drawing them was half an
    evaluation's time."""
    exp = experiments.get(cfg.experiment)
    views = (
        {"street_view": "cache", "cache_dir": str(view_cache)}
        if view_cache is not None and exp.env == "virl" and exp.modality == "vision"
        else {}
    )
    out = []
    sets = [("id", "id", "id_eval", "")]
    if "ood_curve" in pools:
        sets += [("ood", exp.ood_split, "ood_curve", ""), ("ood_all", exp.ood_split, "ood_eval", ",at=final")]
    else:
        sets += [("ood", exp.ood_split, "ood_eval", "")]
    for name, split, pool, at in sets:
        opts = {
            **_env_options(cfg, pools[pool], split, by_index=True),
            **views,
            "episodes": sizes[pool],
            "concurrency": min(sizes[pool], cfg.eval_concurrency),
        }
        out.append(f"{name}={exp.env}:" + ",".join(f"{k}={v}" for k, v in opts.items()) + at)
    return out


def _eval_options(cfg: ReproConfig, specs: list[str]) -> dict[str, Any]:
    return {"eval_env": specs, "eval_seed": 12345, "eval_max_new_tokens": cfg.max_new_tokens}


def _sft_config(
    cfg: ReproConfig, data: Path, model: Path, out: Path, specs: list[str], **settings: Any
) -> Any:
    """An ``agent train sft`` config with what every SFT job of the recipe shares."""
    from sftrl.training.config import SFTTrainConfig

    shared = {
        "batch_size": cfg.batch_size,
        # Batches of one conversation depth, kinds mixed: as good per step as random batches and about
        # half their padding; length grouping (one kind per batch) learned several-fold slower
        # (docs/repro.md, the 800-step A/B).
        "batch_groups": "turns",
        "save_steps": 10**6,
        "evaluate": False,
        "eval_at_start": False,
        **_eval_options(cfg, specs),
    }
    return SFTTrainConfig(data=data, model=str(model), out=out, **{**shared, **settings})


def stage0_train_config(cfg: ReproConfig, data: Path, init: Path, out: Path, specs: list[str]) -> Any:
    return _sft_config(
        cfg,
        data,
        init,
        out,
        specs,
        max_steps=cfg.stage0_steps,
        lr=cfg.stage0_lr,
        lr_scheduler="cosine",
        warmup_ratio=0.03,
        weight_decay=0.01,
        save_steps=1000,
        evaluate=True,
        seed=0,
        eval_every=max(1, cfg.stage0_steps // 4),
    )


def stage1_config(cfg: ReproConfig, data: Path, stage0: Path, out: Path, seed: int, specs: list[str]) -> Any:
    # eval_at_start stays False: the stage-0 model is evaluated once, not once per seed.
    return _sft_config(
        cfg,
        data,
        stage0,
        out,
        specs,
        max_steps=cfg.stage1_steps,
        lr=cfg.stage1_lr,
        lr_scheduler="cosine",
        seed=seed,
    )


def sft_arm_config(cfg: ReproConfig, data: Path, warm: Path, out: Path, seed: int, specs: list[str]) -> Any:
    # x = 0 of every arm is the warm start's own evaluation; the FLOP budget ends the run.
    return _sft_config(
        cfg,
        data,
        warm,
        out,
        specs,
        max_steps=10**6,
        lr=cfg.sft_lr,
        lr_scheduler="constant",
        seed=1000 + seed,  # a different pass over the stage-1 data than the warm start's
        max_flops=cfg.stage2_flops,
        eval_flops=cfg.stage2_flops / cfg.eval_points,
    )


def rl_arm_config(
    cfg: ReproConfig, arm: str, pools: dict[str, Path], warm: Path, out: Path, seed: int, specs: list[str]
) -> Any:
    """PPO / GRPO from ``warm``; the ablations are PPO with one change (``warm`` is the stage-0 model for
    rl-no-sft; rl-verify1 trains with one attempt per episode, evaluated as every other arm)."""
    from sftrl.training.rl import RLConfig
    from sftrl.training.rl_train import RLRunConfig

    exp = experiments.get(cfg.experiment)
    return RLRunConfig(
        env=exp.env,
        env_options=_env_options(cfg, pools["train"], verify_iter=1 if arm == "rl-verify1" else None),
        model=str(warm),
        out=out,
        updates=10**6,  # the FLOP budget ends it
        episodes_per_update=cfg.episodes_per_update,
        group_size=cfg.group_size,
        concurrency=cfg.episodes_per_update,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        save_every=10**6,
        seed=seed,
        max_flops=cfg.stage2_flops,
        eval_flops=cfg.stage2_flops / cfg.eval_points,
        eval_at_start=False,
        **_eval_options(cfg, specs),
        rl=RLConfig(
            algo="grpo" if arm == "grpo" else "ppo",
            lr=cfg.rl_lr,
            value_lr=cfg.value_lr,
            ppo_epochs=cfg.ppo_epochs,
            minibatch_size=cfg.minibatch_size,
            minibatch_order=cfg.minibatch_order,
            clip=0.1,
            gamma=0.9,
            lam=0.95,
            ent_coef=0.0,
            seed=seed,
        ),
    )


def _flag(key: str, value: Any) -> list[str]:
    name = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        if key == "eval_at_start":
            return [] if value else ["--no-eval-at-start"]
        return [name] if value else []
    if isinstance(value, list):
        return [part for v in value for part in (name, f"'{v}'")]
    return [name, str(value)]


def sft_command(c: Any) -> str:
    """The ``agent train sft`` command line equivalent to config ``c``."""
    from sftrl.training.config import SFTTrainConfig

    defaults = SFTTrainConfig(data=c.data, model=c.model, out=c.out)
    parts = ["agent train sft"]
    for key, value in c.model_dump(mode="json").items():
        if value != getattr(defaults, key) or key in ("data", "model", "out"):
            parts += _flag("max_steps" if key == "max_steps" else key, value)
    return " ".join(parts)


def rl_command(c: Any) -> str:
    """The ``agent train rl`` command line equivalent to config ``c``."""
    from sftrl.training.rl import RLConfig
    from sftrl.training.rl_train import RLRunConfig

    defaults = RLRunConfig(model=c.model, out=c.out).model_dump(mode="json")
    values = c.model_dump(mode="json")
    parts = ["agent train rl"]
    rl_defaults = RLConfig().model_dump()
    for key, value in values["rl"].items():
        if value != rl_defaults[key] and key != "seed":
            parts += _flag(key, value)
    for key, value in values.items():
        if key in ("rl", "env_options"):
            continue
        if value != defaults[key] or key in ("model", "out"):
            parts += _flag("max_steps" if key == "updates" else key, value)
    for key, value in values["env_options"].items():
        parts += _flag(key, value)
    return " ".join(parts)


# -- jobs (run in worker processes) ----------------------------------------------------------------


def _setup_worker() -> None:
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def sft_job(config: Any, label: str, report: Report) -> dict[str, Any]:
    _setup_worker()
    from sftrl.training.sft import run_sft

    t0 = time.time()
    metrics = run_sft(config, progress=lambda m: report(0, 1, f"{label}: {m}"))
    return {"out": str(config.out), "seconds": time.time() - t0, "flops": metrics.get("flops")}


def rl_job(config: Any, label: str, report: Report) -> dict[str, Any]:
    _setup_worker()
    from sftrl.training.rl_train import train_rl

    t0 = time.time()
    metrics = train_rl(config, progress=lambda m: report(0, 1, f"{label}: {m}"))
    return {"out": str(config.out), "seconds": time.time() - t0, "flops": metrics.get("flops")}


class _Progress:
    """Forwards a job's progress to the parent through a queue."""

    def __init__(self, queue: Any, job: str) -> None:
        self.queue, self.job = queue, job

    def __call__(self, completed: float, total: float, description: str) -> None:
        self.queue.put((self.job, completed, total, description))


Job = tuple[str, Callable[..., dict[str, Any]], tuple[Any, ...]]


def _run_jobs(
    jobs: Sequence[Job],
    workers: int,
    on_progress: Callable[[str, float, float, str], None],
    then: Callable[[str], Sequence[Job]] = lambda name: (),
) -> dict[str, dict[str, Any]]:
    """Run ``(name, fn, args)`` jobs (fn gets a progress callback last); ``then(name)`` lists the jobs a
    finished job unlocks (a seed's arms after its warm start), so no worker idles. In-process when
    ``workers <= 1``."""
    results: dict[str, dict[str, Any]] = {}
    if workers <= 1:
        queue_: list[Job] = list(jobs)
        while queue_:
            name, fn, args = queue_.pop(0)
            results[name] = fn(*args, lambda c, t, d, n=name: on_progress(n, c, t, d))
            queue_.extend(then(name))
        return results
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        q = manager.Queue()
        futures: dict[str, Future[dict[str, Any]]] = {}

        def submit(batch: Sequence[Job]) -> None:
            for name, fn, args in batch:
                futures[name] = pool.submit(fn, *args, _Progress(q, name))

        submit(jobs)
        pending = set(futures)
        while pending:
            try:
                while True:
                    on_progress(*q.get(timeout=0.2))
            except queue_mod.Empty:
                pass
            for name in [n for n in pending if futures[n].done()]:
                results[name] = futures[name].result()  # re-raises a job's exception here
                pending.discard(name)
                before = set(futures)
                submit(then(name))
                pending |= set(futures) - before
    return results


# -- data --------------------------------------------------------------------------------------------


def expert_dataset(cfg: ReproConfig, pools: dict[str, Path], out: Path) -> Path:
    """Stage-1 data: expert episodes on the training pool (the expert errs with probability
    ``expert_mistakes`` per attempt, so 0-2 failed attempts with real feedback precede the answer),
    turned into prompt/completion rows with ``agent data sft --chains full``."""
    from sftrl.agents.runner import RunConfig, run_async, split_config
    from sftrl.training.sft_data import build_sft_dataset

    run_dir = out / "runs" / "expert"
    data = out / "data" / "stage1"
    if data.exists():
        return data
    values = {
        "env": experiments.get(cfg.experiment).env,
        "policy": "expert",
        "episodes": cfg.expert_episodes,
        "seed": 1,
        "out": run_dir,
        "concurrency": 64,
        "resume": run_dir.exists(),
        **_env_options(cfg, pools["train"]),
    }
    run, env_cfg = split_config(values)
    run = RunConfig.model_validate({**run.model_dump(), "policy_options": {"mistakes": cfg.expert_mistakes}})
    asyncio.run(run_async(run, env_cfg))
    build_sft_dataset([run_dir], data, chains="full", val_fraction=0.02)
    return data


def _stage0_data(cfg: ReproConfig, data: Path) -> None:
    """Write the experiment's stage-0 curriculum at ``data`` (V-IRL: from this run's training routes)."""
    exp = experiments.get(cfg.experiment)
    if exp.name == "gp-vl-visual":
        from sftrl.repro import stage0_gpvl

        stage0_gpvl.build_dataset(data, cfg.stage0_rows, seed=0, resolution=exp.resolution or 64)
    elif exp.name == "virl-vl-visual":
        from sftrl.repro import stage0_virlvl

        stage0_virlvl.build_dataset(
            data,
            cfg.stage0_rows,
            seed=0,
            held_out=cfg.n_id_eval,
            split_routes=cfg.virl_routes,
            resolution=exp.resolution or stage0_virlvl.RESOLUTION,
        )
    elif exp.env == "virl":
        from sftrl.repro import stage0_virl

        stage0_virl.build_dataset(
            data, cfg.stage0_rows, seed=0, held_out=cfg.n_id_eval, split_routes=cfg.virl_routes
        )
    else:
        from sftrl.repro import stage0

        stage0.build_dataset(data, cfg.stage0_rows, seed=0, shuffled_share=cfg.stage0_shuffled_share)


def _stage0_data_command(cfg: ReproConfig, data: Path) -> str:
    exp = experiments.get(cfg.experiment)
    if exp.name == "gp-vl-visual":
        return f"python -m {exp.stage0_curriculum} --rows {cfg.stage0_rows} --seed 0 --out {data}"
    if exp.name == "virl-vl-visual":
        return (
            f"python -m {exp.stage0_curriculum} --rows {cfg.stage0_rows} --seed 0"
            f" --held-out {cfg.n_id_eval} --split-routes {cfg.virl_routes} --out {data}"
        )
    if exp.env == "virl":
        return (
            f"python -m {exp.stage0_curriculum} --rows {cfg.stage0_rows} --seed 0"
            f" --held-out {cfg.n_id_eval} --split-routes {cfg.virl_routes} --out {data}"
        )
    return (
        f"python -m {exp.stage0_curriculum} --rows {cfg.stage0_rows} --seed 0"
        f" --shuffled-share {cfg.stage0_shuffled_share} --out {data}"
    )


def build_stage0(
    cfg: ReproConfig, out: Path, specs: list[str], progress: Callable[[str], None] = lambda m: None
) -> Path:
    """Stage 0 from scratch with the framework's commands (what the shipped checkpoint was built by):
    the experiment's curriculum, a new model (:func:`stage0_init`), ``agent train sft``."""
    from sftrl.training.sft import run_sft

    _setup_worker()
    init = out / "stage0-init"
    data = out / "data" / "stage0"
    if not data.exists():
        _stage0_data(cfg, data)
    if not init.exists():
        stage0_init(cfg, init)
    config = stage0_train_config(cfg, data, init, out / "stage0", specs)
    run_sft(config, progress=progress)
    return out / "stage0"


def _text_stage0(cfg: ReproConfig) -> Path:
    """The shipped language stage-0 model a vision experiment's decoder starts from (same env)."""
    return SHIPPED_STAGE0_VIRL if experiments.get(cfg.experiment).env == "virl" else SHIPPED_STAGE0


def stage0_init(cfg: ReproConfig, init: Path) -> None:
    """The model stage 0 starts from: a new char model; GP-VL / V-IRL-VL: a new char-vision model whose
    decoder is the shipped language stage-0 model of the same env (it reads the compact text already;
    the curriculum teaches it to read the image), or with the quick sizes an all-new small one."""
    from sftrl.agents.tiny import build_char_model
    from sftrl.agents.tiny_vlm import build_char_vision_model

    if experiments.get(cfg.experiment).modality != "vision":
        build_char_model(init, seed=0, **cfg.model)
    elif cfg.model == ReproConfig().model:
        build_char_vision_model(init, seed=0, text_model=_text_stage0(cfg))
    else:
        build_char_vision_model(init, seed=0, **cfg.model, **experiments.QUICK_VISION)


def _stage0_init_command(cfg: ReproConfig, init: Path) -> str:
    m = cfg.model
    if experiments.get(cfg.experiment).modality != "vision":
        sizes = "" if m == ReproConfig().model else " --hidden {hidden} --layers {layers} --heads {heads}"
        return f"agent tiny-model --kind char --out {init} --seed 0" + sizes.format(**m)
    if m == ReproConfig().model:
        call = f"build_char_vision_model('{init}', seed=0, text_model='{_text_stage0(cfg)}')"
    else:
        sizes = ", ".join(f"{k}={v}" for k, v in {**m, **experiments.QUICK_VISION}.items())
        call = f"build_char_vision_model('{init}', seed=0, {sizes})"
    return f'python -c "from sftrl.agents.tiny_vlm import build_char_vision_model; {call}"'


def stage0_commands(cfg: ReproConfig, out: Path, specs: list[str]) -> list[str]:
    config = stage0_train_config(cfg, out / "data" / "stage0", out / "stage0-init", out / "stage0", specs)
    return [
        _stage0_init_command(cfg, out / "stage0-init"),
        _stage0_data_command(cfg, out / "data" / "stage0"),
        sft_command(config),
    ]


# -- orchestration -----------------------------------------------------------------------------------


def run(
    cfg: ReproConfig,
    out: Path,
    *,
    stage0: Path | None = None,
    from_scratch: bool = False,
    stage0_only: bool = False,
    on_progress: Callable[[str, float, float, str], None] = lambda *a: None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage and write pools, checkpoints, ``results.json``/``.md``, ``figure.png``,
    ``commands.md``. ``stage0`` None trains stage 0 from the experiment's curriculum (GP-L always; other
    settings with ``from_scratch``, else an untrained tiny model: the --quick pipeline check).
    ``stage0_only``: stop after training stage 0 (its evaluations are in ``stage0/eval.jsonl``); the
    returned dict then has ``stage0_evals`` and no arms."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    exp = experiments.get(cfg.experiment)
    unknown = set(cfg.ablations) - set(ABLATIONS)
    if unknown:
        raise ValueError(f"unknown ablation(s) {', '.join(sorted(unknown))}; known: {', '.join(ABLATIONS)}")
    sets, pools, sizes = experiments.make_sets(
        exp, cfg.n_id_eval, cfg.n_ood_eval, cfg.split_seed, cfg.virl_routes, out / "pools", cfg.n_ood_curve
    )
    specs = eval_specs(cfg, pools, sizes, view_cache=out / "street-view-cache")
    commands: dict[str, list[str]] = {}
    if stage0 is None and (from_scratch or exp.name == "gp-l-rule"):
        if exp.stage0_curriculum is None:
            raise ValueError(f"{exp.name}: no stage-0 curriculum exists for it yet")
        log(
            f"stage 0: training a {cfg.model} char-level {'LLaVA' if exp.modality == 'vision' else 'Llama'} "
            f"for {cfg.stage0_steps} steps on {exp.stage0_curriculum}"
        )
        commands["stage 0"] = stage0_commands(cfg, out, specs)
        stage0 = build_stage0(cfg, out, specs, lambda m: on_progress("stage0", 0, 1, f"stage 0: {m}"))
        if stage0_only:
            from sftrl.training.evaluation import read_evals

            write_commands(out / "commands.md", commands)
            return {
                "stage0_checkpoint": str(stage0),
                "stage0_evals": read_evals(stage0),
                "wall_seconds": time.time() - t0,
            }
    elif exp.name != "gp-l-rule":
        # A given model, or (--quick without --from-scratch) an untrained one.
        log(f"stage 0: {stage0 or 'an untrained ' + exp.model_kind + ' model (pipeline check only)'}")
        commands["stage 0"] = experiments.stage0_command(exp, stage0, out, cfg.model)
        stage0 = experiments.prepare_stage0(exp, stage0, out, cfg.model)
    stage0 = Path(stage0).resolve()
    log(f"stage 1 data: {cfg.expert_episodes} expert episodes on the training pool")
    data = expert_dataset(cfg, pools, out)
    seeds = list(range(cfg.seeds))
    configs: dict[str, Any] = {}
    warm_jobs = ["stage1"] if cfg.shared_warmstart else [f"stage1-{s}" for s in seeds]
    if cfg.shared_warmstart:
        configs["stage1"] = stage1_config(cfg, data, stage0, warm_dir(cfg, out, 0), 0, specs)
    for s in seeds:
        warm = warm_dir(cfg, out, s)
        if not cfg.shared_warmstart:
            configs[f"stage1-{s}"] = stage1_config(cfg, data, stage0, warm, s, specs)
        # RL arms first: the longer jobs start first, so the last ones to finish are short.
        for arm in ("ppo", "grpo", *cfg.ablations):
            init = stage0 if arm == "rl-no-sft" else warm
            configs[f"{arm}-{s}"] = rl_arm_config(cfg, arm, pools, init, out / f"seed{s}" / arm, s, specs)
        configs[f"sft-{s}"] = sft_arm_config(cfg, data, warm, out / f"seed{s}" / "sft", s, specs)
    # By hand: the held-out sets a run's end is evaluated on (the whole OOD set, not the curve subset).
    whole = [s for s in specs if not s.startswith("ood=")] if "ood_curve" in pools else specs
    commands["evaluation of a model directory M"] = [
        f"agent run --policy hf --model M --temperature 0 --env {exp.env} "
        + " ".join(_spec_flags(spec))
        + f" --out M-eval/{spec.split('=')[0]}"
        for spec in whole
    ]
    for name, c in configs.items():
        commands[name] = [rl_command(c) if _arm_of(name) in RL_ARMS else sft_command(c)]
    write_commands(out / "commands.md", commands)

    def job(name: str) -> Job:
        c = configs[name]
        fn = rl_job if _arm_of(name) in RL_ARMS else sft_job
        return (name, fn, (c, name))

    def unlocked(name: str) -> list[Job]:
        """The arm jobs a finished warm start unlocks (all of them for the shared one)."""
        if name == "stage1":
            return [job(n) for n in configs if n != "stage1"]
        if name.startswith("stage1-"):
            s = name.split("-")[1]
            return [job(n) for n in configs if n.endswith(f"-{s}") and not n.startswith("stage1-")]
        return []

    log("stage 0: evaluating; stage 1: the SFT warm start" + ("" if cfg.shared_warmstart else "s"))
    stage0_eval = out / "stage0-eval"
    first: list[Job] = [job(n) for n in warm_jobs]
    if not (stage0_eval / "eval.jsonl").exists():
        first.insert(0, ("stage0-eval", eval_job, (cfg, stage0, stage0_eval, specs)))
    _run_jobs(first, cfg.workers, on_progress, then=unlocked)
    results = summarize(cfg, sets, out, seeds)
    results["wall_seconds"] = time.time() - t0
    results["stage0_checkpoint"] = str(stage0)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "figure.png")
    return results


def _arm_of(job: str) -> str:
    """``rl-no-sft-3`` -> ``rl-no-sft`` (job names are ARM-SEED)."""
    return job.rsplit("-", 1)[0]


def _spec_flags(spec: str) -> list[str]:
    """``agent run`` flags of an ``--eval-env`` spec (for the hand-evaluation commands)."""
    _, _, rest = spec.partition(":")
    return [
        f"--{k.replace('_', '-')} {v}"
        for k, _, v in (kv.partition("=") for kv in rest.split(","))
        if k != "at"
    ]


def write_commands(path: Path, commands: dict[str, list[str]]) -> None:
    lines = [
        "# The commands behind this run",
        "",
        "Each job of `agent repro` is exactly the `agent` command below (same settings, same seeds);",
        "run by hand, it writes the same checkpoints and `eval.jsonl` (evaluation logs under `eval/`).",
        "",
    ]
    for name, cmds in commands.items():
        lines += [f"## {name}", "", "```bash", *cmds, "```", ""]
    path.write_text("\n".join(lines))


def warm_dir(cfg: ReproConfig, out: Path, seed: int) -> Path:
    """Where seed ``seed``'s arms start from (the shared warm start, or the seed's own)."""
    return out / "warmstart" if cfg.shared_warmstart else out / f"seed{seed}" / "warmstart"


def eval_job(cfg: ReproConfig, model: Path, out: Path, specs: list[str], report: Report) -> dict[str, Any]:
    """The stage-0 evaluation as a job (it runs beside the warm start)."""
    t0 = time.time()
    report(0, 1, "evaluating stage 0")
    _evaluate_checkpoint(cfg, model, out, specs)
    return {"out": str(out), "seconds": time.time() - t0}


def _evaluate_checkpoint(cfg: ReproConfig, model: Path, out: Path, specs: list[str]) -> None:
    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.training.evaluation import evaluate, parse_eval_env

    _setup_worker()
    out.mkdir(parents=True, exist_ok=True)
    policy = HFPolicy(model, max_batch_size=cfg.eval_concurrency)
    evaluate(
        policy,
        [parse_eval_env(s) for s in specs],
        out,
        step=0,
        flops=0.0,
        episodes=64,
        seed=12345,
        max_new_tokens=cfg.max_new_tokens,
        final=True,
    )


# -- statistics --------------------------------------------------------------------------------------


def _outcomes(run_dir: Path) -> tuple[list[int], list[int]]:
    """(success, first-attempt success) per episode of an evaluation run, in pool order."""
    from sftrl.agents.trajectory import read_episodes

    records = sorted(read_episodes(run_dir), key=lambda r: r.episode_index)
    if any(r.error for r in records):
        raise RuntimeError(f"{run_dir}: evaluation episodes ended in errors")
    success = [int(r.success) for r in records]
    # Solved without a failed attempt (GP: the first attempt; V-IRL: no retry at any step).
    first = [int(r.success and all(t.attempt == 0 for t in r.turns)) for r in records]
    return success, first


def _evals(run: Path, metrics: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Each evaluation point of a training run: flops, per-item outcomes per split, and the run
    summary's ``metrics`` (e.g. step_accuracy) per split, as the evaluation logged them."""
    from sftrl.training.evaluation import read_evals

    points = []
    for row in read_evals(run):
        point: dict[str, Any] = {"step": row["step"], "flops": row["flops"]}
        for name in ("id", "ood", "ood_all"):
            if name == "ood_all" and name not in row:
                continue
            success, first = _outcomes(Path(row[name]["out"]))
            point[name] = success
            point[f"{name}_first"] = first
            for m in metrics:
                point[f"{name}_{m}"] = float(row[name].get(m) or 0.0)
        points.append(point)
    return points


def _endpoint(point: dict[str, Any], metrics: Sequence[str]) -> dict[str, Any]:
    """A run's last point for the endpoint statistics: its OOD results on the whole OOD set
    (``ood_all``) where the points before used a subset."""
    if "ood_all" not in point:
        return point
    keys = ["", "_first", *(f"_{m}" for m in metrics)]
    return {**point, **{f"ood{k}": point[f"ood_all{k}"] for k in keys}}


def _split_means(
    point: dict[str, Any], seen: list[bool] | None, metrics: Sequence[str] = ()
) -> dict[str, float]:
    """Mean success per split (``seen`` None: no seen/unseen OOD split) plus the extra metrics."""
    ood = point["ood"]
    out = {
        "id": sum(point["id"]) / len(point["id"]),
        "ood": sum(ood) / len(ood),
    }
    if seen is not None:
        s_seen = [x for x, m in zip(ood, seen, strict=True) if m]
        s_unseen = [x for x, m in zip(ood, seen, strict=True) if not m]
        out["ood_seen"] = sum(s_seen) / max(len(s_seen), 1)
        out["ood_unseen"] = sum(s_unseen) / max(len(s_unseen), 1)
    out["id_first"] = sum(point["id_first"]) / len(point["id_first"])
    out["ood_first"] = sum(point["ood_first"]) / len(point["ood_first"])
    for m in metrics:
        for name in ("id", "ood"):
            out[f"{name}_{m}"] = point[f"{name}_{m}"]
    return out


def _bootstrap(per_hand: Sequence[float], n_boot: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of per-hand values (hands resampled with replacement)."""
    import numpy as np

    x = np.asarray(per_hand, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


# Two-sided 97.5% quantiles of Student's t for 1..10 degrees of freedom (t-interval over seeds).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def seed_test(diffs: Sequence[float]) -> dict[str, Any]:
    """Seed-level paired test of per-seed differences: mean, 95% t-interval, exact sign-flip p-value."""
    import itertools
    import math

    n = len(diffs)
    mean = sum(diffs) / n
    out: dict[str, Any] = {"n_seeds": n, "mean": mean, "per_seed": list(diffs)}
    if n >= 2:
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        t = _T975[min(n - 1, len(_T975)) - 1] if n - 1 <= len(_T975) else 1.96
        out["ci"] = (mean - t * sd / math.sqrt(n), mean + t * sd / math.sqrt(n))
        flips = [
            sum(s * d for s, d in zip(signs, diffs, strict=True))
            for signs in itertools.product((1, -1), repeat=n)
        ]
        out["p_sign_flip"] = sum(abs(f) >= abs(sum(diffs)) - 1e-12 for f in flips) / len(flips)
    return out


def summarize(cfg: ReproConfig, pools: Pools | RouteSets, out: Path, seeds: list[int]) -> dict[str, Any]:
    exp = experiments.get(cfg.experiment)
    splits = exp.splits
    metrics = exp.extra_metrics
    seen = pools.ood_seen() if isinstance(pools, Pools) and "ood_seen" in splits else None
    # Curve points before a run's end evaluate the OOD subset (if any): its own seen/unseen flags.
    seen_curve = seen
    curve_pool = out / "pools" / OOD_CURVE_FILE
    if seen is not None and cfg.n_ood_curve is not None and curve_pool.exists():
        train = set(pools.train)
        seen_curve = [tuple(m) in train for m in json.loads(curve_pool.read_text())]
    arms = (*ARMS, *cfg.ablations)
    stage0_pts = _evals(out / "stage0-eval", metrics)
    # final[checkpoint][seed] = the evaluation point at the end of that run
    final: dict[str, list[dict[str, Any]]] = {"stage0": [_endpoint(stage0_pts[-1], metrics)]}
    curves: dict[str, list[list[dict[str, float]]]] = {}
    train_logs: dict[str, Any] = {}
    for name in ("warmstart", *arms):
        final[name] = []
        for s in seeds:
            pts = _evals(warm_dir(cfg, out, s) if name == "warmstart" else out / f"seed{s}" / name, metrics)
            final[name].append(_endpoint(pts[-1], metrics))
            if name in arms:
                # x = 0 of an arm is the model it starts from: the warm start, or stage 0 for rl-no-sft.
                start = stage0_pts if name == "rl-no-sft" else _evals(warm_dir(cfg, out, s), metrics)
                curves.setdefault(name, []).append(
                    [
                        {"flops": p["flops"], **_split_means(p, seen_curve, metrics)}
                        for p in [{**start[-1], "flops": 0.0}, *pts]
                    ]
                )
                log_file = out / f"seed{s}" / name / "metrics.jsonl"
                if log_file.exists():
                    train_logs[f"{name}-{s}"] = [
                        json.loads(x) for x in log_file.read_text().splitlines() if x
                    ]

    def per_hand(name: str, split: str) -> list[float]:
        runs = final[name]
        if split in ("ood_seen", "ood_unseen"):
            assert seen is not None
            want = split == "ood_seen"
            cols = [i for i, m in enumerate(seen) if m == want]
            return [sum(r["ood"][i] for r in runs) / len(runs) for i in cols]
        return [sum(r[split][i] for r in runs) / len(runs) for i in range(len(runs[0][split]))]

    rows: dict[str, dict[str, Any]] = {}
    for name, runs in final.items():
        row: dict[str, Any] = {"n_seeds": len(runs)}
        for split in splits:
            means = per_hand(name, split)
            row[split] = sum(means) / max(len(means), 1)
            row[f"{split}_ci"] = _bootstrap(means)
            row[f"{split}_per_seed"] = [_split_means(r, seen)[split] for r in runs]
        for split in ("id_first", "ood_first"):
            row[split] = sum(_split_means(r, seen)[split] for r in runs) / len(runs)
        for m in metrics:
            for split in ("id", "ood"):
                per_seed = [r[f"{split}_{m}"] for r in runs]
                row[f"{split}_{m}"] = sum(per_seed) / len(per_seed)
                row[f"{split}_{m}_per_seed"] = per_seed
        row["flops_per_seed"] = [r["flops"] for r in runs]
        rows[name] = row
    paired: dict[str, dict[str, Any]] = {}
    for a, b in _comparisons(cfg):
        for split in splits:
            da, db = per_hand(a, split), per_hand(b, split)
            diff = [x - y for x, y in zip(da, db, strict=True)]
            entry: dict[str, Any] = {"diff": sum(diff) / max(len(diff), 1), "ci": _bootstrap(diff)}
            if b != "stage0":
                sa, sb = rows[a][f"{split}_per_seed"], rows[b][f"{split}_per_seed"]
                entry["seed_level"] = seed_test([x - y for x, y in zip(sa, sb, strict=True)])
            paired[f"{a}-{b}/{split}"] = entry
    n_eval = {"id": len(pools.id_eval), "ood": len(pools.ood_eval)}
    if cfg.n_ood_curve is not None and cfg.n_ood_curve < len(pools.ood_eval) and isinstance(pools, Pools):
        n_eval["ood_curve"] = cfg.n_ood_curve
    if seen is not None:
        n_eval["ood_seen"] = sum(seen)
    return {
        "experiment": exp.name,
        "config": asdict(cfg),
        "seeds": seeds,
        "n_eval": n_eval,
        "n_train_multisets" if exp.env == "gp" else "n_train_routes": len(pools.train),
        "primary_endpoint": f"rl - sft {_ood_word(exp)} success (within the attempts) at the final budget",
        "rows": rows,
        "paired": paired,
        "curves": curves,
        "train_logs": train_logs,
    }


def _comparisons(cfg: ReproConfig) -> tuple[tuple[str, str], ...]:
    return COMPARISONS + tuple(c for c in ABLATION_COMPARISONS if c[0] in cfg.ablations)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ood_word(exp: Experiment) -> str:
    return "rule-OOD" if exp.ood_split == "rule-ood" else "visual-OOD"


NAMES = {
    "stage0": "stage 0 (foundation)",
    "warmstart": "stage 1 (SFT warm start)",
    "sft": "stage 2a: + SFT",
    "ppo": "stage 2b: + RL (PPO)",
    "grpo": "stage 2b': + RL (GRPO)",
    "rl-no-sft": "ablation: PPO from stage 0 (no SFT)",
    "rl-verify1": "ablation: PPO, verify_iter 1",
}
METRIC_NAMES = {"step_accuracy": "step acc.", "recognition_accuracy": "recognition"}


def markdown(results: dict[str, Any]) -> str:
    """The results tables (success within the attempts; per split) as Markdown."""
    rows = results["rows"]
    cfg = results["config"]
    n = results["n_eval"]
    exp = experiments.get(results.get("experiment", "gp-l-rule"))
    splits, metrics, ood = exp.splits, exp.extra_metrics, _ood_word(exp)
    if exp.name == "gp-l-rule":
        intro = (
            f"Seeds: {results['seeds']}; held-out hands: ID {n['id']}, rule-OOD {n['ood']} "
            f"({n['ood_seen']} of them seen in training under J/Q/K = 10); {cfg['verify_iter']} attempts "
            "per episode (greedy). "
            + (
                f"Curves: a fixed random {n['ood_curve']} of the rule-OOD hands at every evaluation point, "
                f"all {n['ood']} at each run's end (the table and the comparisons). "
                if "ood_curve" in n
                else ""
            )
        )
        header = "| checkpoint | ID | rule-OOD | OOD seen | OOD unseen | ID 1st | OOD 1st | per-seed OOD |"
    else:
        item = "hands" if exp.env == "gp" else "episodes (routes of the held-out files)"
        intro = (
            f"{exp.title} ({exp.name}); seeds: {results['seeds']}; held-out {item}: ID {n['id']}, {ood} "
            f"{n['ood']}; {cfg['verify_iter']} attempts per step (greedy). "
        )
        extra = "".join(f" ID {METRIC_NAMES[m]} | OOD {METRIC_NAMES[m]} |" for m in metrics)
        header = f"| checkpoint | ID | {ood} | ID 1st | OOD 1st |{extra} per-seed OOD |"
    lines = [
        intro + f"Stage-2 budget per arm: {cfg['stage2_flops']:.3g} training FLOPs. Success rates in %, mean "
        "over seeds, 95% bootstrap interval over hands in brackets."
        if exp.name == "gp-l-rule"
        else intro + f"Stage-2 budget per arm: {cfg['stage2_flops']:.3g} training FLOPs. Success rates and "
        "metrics in %, mean over seeds, 95% bootstrap interval over held-out items in brackets.",
        "",
        header,
        "|" + " --- |" * (header.count("|") - 1),
    ]
    for key, label in NAMES.items():
        if key not in rows:
            continue
        r = rows[key]

        def cell(name: str, r: dict[str, Any] = r) -> str:
            lo, hi = r[f"{name}_ci"]
            return f"{_pct(r[name])} [{_pct(lo)}, {_pct(hi)}]"

        per_ood = ", ".join(_pct(x) for x in r["ood_per_seed"])
        cells = [cell(split) for split in splits] + [_pct(r["id_first"]), _pct(r["ood_first"])]
        cells += [_pct(r[f"{split}_{m}"]) for m in metrics for split in ("id", "ood")]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {per_ood} |")
    lines += [
        "",
        "Paired differences in percentage points. Hand level: per-hand success averaged over seeds, "
        "95% bootstrap interval over hands. Seed level: mean of per-seed differences, 95% t-interval, "
        "exact two-sided sign-flip p-value."
        if exp.env == "gp"
        else "Paired differences in percentage points. Item level: per-episode success (the same route and "
        "seed for every checkpoint) averaged over seeds, 95% bootstrap interval over items. Seed level: "
        "mean of per-seed differences, 95% t-interval, exact two-sided sign-flip p-value.",
        "",
    ]
    if exp.name == "gp-l-rule":
        lines += [
            "| comparison | ID (hands) | rule-OOD (hands) | OOD seen | OOD unseen | rule-OOD (seeds) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
    else:
        lines += [f"| comparison | ID (items) | {ood} (items) | {ood} (seeds) |", "| --- | --- | --- | --- |"]
    for a, b in _comparisons_of(results):
        cells = []
        for split in splits:
            p = results["paired"][f"{a}-{b}/{split}"]
            cells.append(f"{100 * p['diff']:+.1f} [{100 * p['ci'][0]:+.1f}, {100 * p['ci'][1]:+.1f}]")
        sl = results["paired"][f"{a}-{b}/ood"].get("seed_level")
        if sl and "ci" in sl:
            seed_cell = (
                f"{100 * sl['mean']:+.1f} [{100 * sl['ci'][0]:+.1f}, {100 * sl['ci'][1]:+.1f}], "
                f"p = {sl['p_sign_flip']:.3f}"
            )
        elif sl:
            seed_cell = f"{100 * sl['mean']:+.1f} (1 seed)"
        else:
            seed_cell = "—"
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + f" | {seed_cell} |")
    return "\n".join(lines) + "\n"


def _comparisons_of(results: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (a, b) for a, b in (*COMPARISONS, *ABLATION_COMPARISONS) if f"{a}-{b}/ood" in results["paired"]
    )


def plot(results: dict[str, Any], path: Path) -> None:
    """Success vs stage-2 training FLOPs, ID and OOD panels, one line per arm (thin: seeds, thick:
    mean; x = 0 is the arm's starting model; dashed: the stage-0 model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = experiments.get(results.get("experiment", "gp-l-rule"))
    colors = {
        "sft": "tab:red",
        "ppo": "tab:blue",
        "grpo": "tab:green",
        "rl-no-sft": "tab:purple",
        "rl-verify1": "tab:orange",
    }
    labels = {
        "sft": "SFT",
        "ppo": "RL (PPO)",
        "grpo": "RL (GRPO)",
        "rl-no-sft": "PPO, no SFT",
        "rl-verify1": "PPO, verify 1",
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    n_curve = results["n_eval"].get("ood_curve")
    ood_title = exp.ood_label + (f" ({n_curve}-item subset)" if n_curve else "")
    for ax, (key, title) in zip(axes, (("id", exp.id_label), ("ood", ood_title)), strict=True):
        for arm, runs in results["curves"].items():
            for run_pts in runs:
                ax.plot(
                    [p["flops"] for p in run_pts],
                    [100 * p[key] for p in run_pts],
                    color=colors[arm],
                    alpha=0.25,
                    lw=1,
                )
            n = min(len(r) for r in runs)
            xs = [sum(r[i]["flops"] for r in runs) / len(runs) for i in range(n)]
            ys = [100 * sum(r[i][key] for r in runs) / len(runs) for i in range(n)]
            ax.plot(xs, ys, color=colors[arm], lw=2.5, marker="o", ms=4, label=labels[arm])
        base = 100 * results["rows"]["stage0"][key]
        ax.axhline(base, color="grey", ls="--", lw=1, label=f"stage 0 ({base:.1f}%)")
        ax.set_title(title)
        ax.set_xlabel("stage-2 training compute (FLOPs)")
        ax.set_ylabel(f"success within {results['config']['verify_iter']} attempts (%)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{exp.title}, {len(results['seeds'])} seed(s): SFT vs RL from the same warm start")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
