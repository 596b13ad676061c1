"""The whole `agent repro` experiment: stage 0 → SFT warm start → matched-compute SFT / PPO / GRPO.

Jobs (one stage-1 warm start per seed, then one job per seed and arm) run in worker processes, one
torch thread each, and report progress to a rich display in the parent. Every arm of a seed starts
from that seed's warm start and gets the same stage-2 training-FLOP budget; every checkpoint is
evaluated greedily on the same fixed held-out ID and rule-OOD hands. Results go to ``results.json``,
``results.md`` and ``figure.png`` in the output directory.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sftrl.repro.data import Splits, expert_episode, make_splits, training_hand

ARMS: tuple[str, ...] = ("sft", "ppo", "grpo")
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("ppo", "sft"),
    ("grpo", "sft"),
    ("sft", "warmstart"),
    ("ppo", "warmstart"),
    ("grpo", "warmstart"),
    ("warmstart", "stage0"),
)
Report = Callable[[float, float, str], None]
"""progress(completed, total, description)."""


@dataclass
class ReproConfig:
    """Every knob of a run; ``quick()`` and ``full()`` are the two presets the CLI uses."""

    seeds: int = 3
    n_eval: int = 200
    split_seed: int = 1234
    attempts: int = 3
    # Stage 0 (only when no checkpoint is given or shipped).
    stage0_steps: int = 6500
    stage0_lr: float = 1.5e-3
    model: dict[str, int] = field(default_factory=lambda: {"n_layer": 4, "d_model": 128, "n_head": 4})
    # Stage 1: SFT warm start on expert GP-L episodes of the training rule.
    stage1_steps: int = 300
    stage1_lr: float = 5e-4
    batch_size: int = 64
    # Stage 2: each arm's training-FLOP budget, evaluated at `eval_points` evenly spaced budgets.
    stage2_flops: float = 6e12
    eval_points: int = 5
    sft_lr: float = 1e-4
    rl_lr: float = 3e-5
    value_lr: float = 1e-3
    episodes_per_update: int = 64
    group_size: int = 8
    ppo_epochs: int = 2
    workers: int = 2

    @classmethod
    def full(cls) -> ReproConfig:
        return cls()

    @classmethod
    def quick(cls) -> ReproConfig:
        return cls(
            seeds=1,
            n_eval=16,
            stage0_steps=20,
            model={"n_layer": 1, "d_model": 32, "n_head": 2},
            stage1_steps=10,
            batch_size=16,
            stage2_flops=2e9,
            eval_points=2,
            episodes_per_update=16,
            group_size=4,
            workers=1,
        )


# -- jobs (run in worker processes) ------------------------------------------------------------------


def _setup_worker() -> None:
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def _eval(model: Any, splits: Splits, attempts: int) -> dict[str, list[dict[str, bool]]]:
    from sftrl.repro.train import evaluate

    return {
        "id": evaluate(model, list(splits.id_eval), attempts=attempts),
        "ood": evaluate(model, list(splits.ood_eval), attempts=attempts),
    }


def _summary(per_hand: dict[str, list[dict[str, bool]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for split, rows in per_hand.items():
        out[f"{split}_success"] = sum(r["success"] for r in rows) / len(rows)
        out[f"{split}_first"] = sum(r["first"] for r in rows) / len(rows)
    return out


def stage1_job(
    cfg: ReproConfig, splits: Splits, stage0: Path, seed: int, out: Path, report: Report
) -> dict[str, Any]:
    """SFT warm start of ``seed`` from the stage-0 model; saves ``out/seed{seed}/warmstart.pt``."""
    _setup_worker()
    import torch

    from sftrl.repro.model import TinyLM
    from sftrl.repro.train import Flops, run_sft

    torch.manual_seed(seed)
    model, _ = TinyLM.load(stage0)
    rng = random.Random(1000 + seed)
    flops = Flops(model.n_params())
    t0 = time.time()
    run_sft(
        model,
        lambda r, n: expert_episode(training_hand(splits, r), r, n),
        steps=cfg.stage1_steps,
        lr=cfg.stage1_lr,
        batch_size=cfg.batch_size,
        rng=rng,
        flops=flops,
        warmup=min(50, cfg.stage1_steps // 4 + 1),
        on_step=lambda s, _loss: report(s + 1, cfg.stage1_steps, f"seed {seed} stage 1 (SFT warm start)"),
    )
    path = out / f"seed{seed}" / "warmstart.pt"
    model.save(path, half=False, seed=seed, stage="warmstart", flops=flops.total)
    per_hand = _eval(model, splits, cfg.attempts)
    return {
        "seed": seed,
        "path": str(path),
        "flops": flops.total,
        "seconds": time.time() - t0,
        "per_hand": per_hand,
        **_summary(per_hand),
    }


def arm_job(
    cfg: ReproConfig, splits: Splits, seed: int, arm: str, out: Path, report: Report
) -> dict[str, Any]:
    """Stage-2 ``arm`` of ``seed`` from its warm start up to ``cfg.stage2_flops``, evaluated on the way."""
    _setup_worker()
    import torch

    from sftrl.repro.model import TinyLM
    from sftrl.repro.train import Flops, RLConfig, n_wrong_for_batch, rl_update, sft_loss

    torch.manual_seed(10_000 * (1 + ARMS.index(arm)) + seed)
    model, _ = TinyLM.load(out / f"seed{seed}" / "warmstart.pt")
    rng = random.Random(2000 + seed)  # the same hand stream for every arm of a seed
    gen = torch.Generator().manual_seed(3000 + seed)
    flops = Flops(model.n_params())
    budget = cfg.stage2_flops
    marks = [budget * (k + 1) / cfg.eval_points for k in range(cfg.eval_points)]
    curve: list[dict[str, float]] = []
    train_log: list[dict[str, float]] = []
    label = f"seed {seed} {arm}"
    t0 = time.time()
    if arm == "sft":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.01, betas=(0.9, 0.98))
    else:
        value = [p for n, p in model.named_parameters() if n.startswith("value_head")]
        rest = [p for n, p in model.named_parameters() if not n.startswith("value_head")]
        opt = torch.optim.AdamW(
            [{"params": rest, "lr": cfg.rl_lr}, {"params": value, "lr": cfg.value_lr}],
            weight_decay=0.0,
            betas=(0.9, 0.98),
        )
    rl_cfg = RLConfig(
        algo=arm,
        lr=cfg.rl_lr,
        episodes_per_update=cfg.episodes_per_update,
        group_size=cfg.group_size,
        attempts=cfg.attempts,
        epochs=cfg.ppo_epochs,
    )
    per_hand: dict[str, list[dict[str, bool]]] = {}
    while marks:
        if arm == "sft":
            model.train()
            n_wrong = n_wrong_for_batch(rng)
            items = [expert_episode(training_hand(splits, rng), rng, n_wrong) for _ in range(cfg.batch_size)]
            loss, tokens = sft_loss(model, items)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            flops.train(tokens)
        else:
            if arm == "grpo":
                n_hands = max(1, cfg.episodes_per_update // cfg.group_size)
                hands = [
                    h
                    for h in (training_hand(splits, rng) for _ in range(n_hands))
                    for _ in range(cfg.group_size)
                ]
            else:
                hands = [training_hand(splits, rng) for _ in range(cfg.episodes_per_update)]
            stats = rl_update(model, opt, hands, rl_cfg, gen, flops)
            train_log.append({"flops": flops.total, **stats})
        report(min(flops.total, budget), budget, label)
        if flops.total >= marks[0]:
            marks.pop(0)
            per_hand = _eval(model, splits, cfg.attempts)
            curve.append({"flops": flops.total, **_summary(per_hand)})
    path = out / f"seed{seed}" / f"{arm}.pt"
    model.save(path, half=False, seed=seed, arm=arm, flops=flops.total)
    return {
        "seed": seed,
        "arm": arm,
        "curve": curve,
        "per_hand": per_hand,
        "train_log": train_log,
        "seconds": time.time() - t0,
        "path": str(path),
        **curve[-1],
    }


# -- orchestration -----------------------------------------------------------------------------------


class _Progress:
    """Forwards a job's progress to the parent through a queue (or straight to a callback in-process)."""

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


def run(
    cfg: ReproConfig,
    out: Path,
    *,
    stage0: Path | None = None,
    on_progress: Callable[[str, float, float, str], None] = lambda *a: None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage and write eval sets, checkpoints, ``results.json``/``.md`` and ``figure.png``."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    splits = make_splits(cfg.n_eval, cfg.split_seed)
    splits.save(out / "eval_sets.json")
    stage0_meta: dict[str, Any]
    if stage0 is None:
        from sftrl.repro.model import ModelConfig
        from sftrl.repro.stage0 import build_stage0

        stage0 = out / "stage0.pt"
        log(f"stage 0: training a {cfg.model} model from scratch for {cfg.stage0_steps} steps")
        _setup_worker()
        build_stage0(
            steps=cfg.stage0_steps,
            out=stage0,
            peak_lr=cfg.stage0_lr,
            batch_size=cfg.batch_size,
            eval_every=max(1, cfg.stage0_steps // 4),
            n_eval=cfg.n_eval,
            model_cfg=ModelConfig(**cfg.model),
            log=lambda m: None,
            on_step=lambda s: on_progress("stage0", s, cfg.stage0_steps, "stage 0 (foundation model)"),
        )
    from sftrl.repro.model import TinyLM

    model0, stage0_meta = TinyLM.load(stage0)
    stage0_eval = _eval(model0, splits, cfg.attempts)
    log(
        f"stage 0 ({stage0}): {stage0_meta.get('task_success', float('nan')):.1%} on its own task; "
        f"ID {_summary(stage0_eval)['id_success']:.1%}, rule-OOD {_summary(stage0_eval)['ood_success']:.1%}"
    )
    seeds = list(range(cfg.seeds))
    done = _run_jobs(
        [(f"stage1-{s}", stage1_job, (cfg, splits, stage0, s, out)) for s in seeds],
        cfg.workers,
        on_progress,
        then=lambda name: [
            (f"{arm}-{name.split('-')[1]}", arm_job, (cfg, splits, int(name.split("-")[1]), arm, out))
            for arm in ARMS
            if name.startswith("stage1-")
        ],
    )
    s1 = {k: v for k, v in done.items() if k.startswith("stage1-")}
    arms = {k: v for k, v in done.items() if not k.startswith("stage1-")}
    results = summarize(cfg, splits, stage0_meta, stage0_eval, s1, arms)
    results["wall_seconds"] = time.time() - t0
    results["stage0_checkpoint"] = str(stage0)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "figure.png")
    return results


# -- statistics --------------------------------------------------------------------------------------


def _bootstrap(per_hand: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of per-hand values (hands resampled with replacement)."""
    import numpy as np

    x = np.asarray(per_hand, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _hand_means(
    runs: Sequence[dict[str, list[dict[str, bool]]]], split: str, key: str = "success"
) -> list[float]:
    """Per-hand success averaged over seeds (the unit the paired bootstrap resamples)."""
    n = len(runs[0][split])
    return [sum(r[split][i][key] for r in runs) / len(runs) for i in range(n)]


def summarize(
    cfg: ReproConfig,
    splits: Splits,
    stage0_meta: dict[str, Any],
    stage0_eval: dict[str, list[dict[str, bool]]],
    s1: dict[str, dict[str, Any]],
    arms: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    seeds = sorted(r["seed"] for r in s1.values())
    rows: dict[str, dict[str, Any]] = {}
    per_hand_runs: dict[str, list[dict[str, list[dict[str, bool]]]]] = {
        "stage0": [stage0_eval],
        "warmstart": [s1[f"stage1-{s}"]["per_hand"] for s in seeds],
    }
    for arm in ARMS:
        per_hand_runs[arm] = [arms[f"{arm}-{s}"]["per_hand"] for s in seeds]
    for name, runs in per_hand_runs.items():
        row: dict[str, Any] = {"n_seeds": len(runs)}
        for split in ("id", "ood"):
            for key in ("success", "first"):
                means = _hand_means(runs, split, key)
                row[f"{split}_{key}"] = sum(means) / len(means)
                row[f"{split}_{key}_ci"] = _bootstrap(means)
                row[f"{split}_{key}_per_seed"] = [
                    sum(r[split][i][key] for i in range(len(r[split]))) / len(r[split]) for r in runs
                ]
        rows[name] = row
    paired: dict[str, dict[str, Any]] = {}
    for a, b in COMPARISONS:
        for split in ("id", "ood"):
            da = _hand_means(per_hand_runs[a], split)
            db = _hand_means(per_hand_runs[b], split)
            diff = [x - y for x, y in zip(da, db, strict=True)]
            paired[f"{a}-{b}/{split}"] = {"diff": sum(diff) / len(diff), "ci": _bootstrap(diff)}
    curves: dict[str, list[list[dict[str, float]]]] = {}
    for arm in ARMS:
        curves[arm] = []
        for s in seeds:
            start = {
                "flops": 0.0,
                **{k: s1[f"stage1-{s}"][k] for k in ("id_success", "ood_success", "id_first", "ood_first")},
            }
            curves[arm].append([start, *arms[f"{arm}-{s}"]["curve"]])
    return {
        "config": asdict(cfg),
        "seeds": seeds,
        "n_eval": {"id": len(splits.id_eval), "ood": len(splits.ood_eval)},
        "n_train_multisets": len(splits.train),
        "stage0": {k: v for k, v in stage0_meta.items() if k != "history"},
        "stage0_history": stage0_meta.get("history", []),
        "stage1_flops": [s1[f"stage1-{s}"]["flops"] for s in seeds],
        "rows": rows,
        "paired": paired,
        # Every evaluated episode's outcome, [checkpoint][seed][split][hand], hands in eval_sets.json order.
        "per_hand": {
            name: [
                {split: [[int(h["success"]), int(h["first"])] for h in r[split]] for split in r} for r in runs
            ]
            for name, runs in per_hand_runs.items()
        },
        "curves": curves,
        "train_logs": {f"{arm}-{s}": arms[f"{arm}-{s}"]["train_log"] for arm in ARMS for s in seeds},
        "job_seconds": {
            **{k: v["seconds"] for k, v in s1.items()},
            **{k: v["seconds"] for k, v in arms.items()},
        },
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(results: dict[str, Any]) -> str:
    """The results table (success rate within the attempt budget, and at attempt 1) as Markdown."""
    rows = results["rows"]
    cfg = results["config"]
    lines = [
        f"Seeds: {results['seeds']}; held-out hands: ID {results['n_eval']['id']}, rule-OOD "
        f"{results['n_eval']['ood']}; attempts per episode: {cfg['attempts']} (greedy). Stage-2 budget per "
        f"arm: {cfg['stage2_flops']:.3g} training FLOPs. Success rates in %, mean over seeds, 95% bootstrap "
        "interval over hands in brackets.",
        "",
        "| checkpoint | ID success | rule-OOD success | ID 1st attempt | OOD 1st attempt "
        "| per-seed ID | per-seed OOD |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {
        "stage0": "stage 0 (foundation)",
        "warmstart": "stage 1 (SFT warm start)",
        "sft": "stage 2a: + SFT",
        "ppo": "stage 2b: + RL (PPO)",
        "grpo": "stage 2b': + RL (GRPO)",
    }
    for key, label in names.items():
        r = rows[key]

        def cell(name: str, r: dict[str, Any] = r) -> str:
            lo, hi = r[f"{name}_ci"]
            return f"{_pct(r[name])} [{_pct(lo)}, {_pct(hi)}]"

        per_id = ", ".join(_pct(x) for x in r["id_success_per_seed"])
        per_ood = ", ".join(_pct(x) for x in r["ood_success_per_seed"])
        lines.append(
            f"| {label} | {cell('id_success')} | {cell('ood_success')} | {cell('id_first')} "
            f"| {cell('ood_first')} | {per_id} | {per_ood} |"
        )
    lines += [
        "",
        "Paired differences (same hands, seed-averaged), percentage points, 95% bootstrap interval:",
        "",
        "| comparison | ID | rule-OOD |",
        "| --- | --- | --- |",
    ]
    for a, b in COMPARISONS:
        cells = []
        for split in ("id", "ood"):
            p = results["paired"][f"{a}-{b}/{split}"]
            cells.append(f"{100 * p['diff']:+.1f} [{100 * p['ci'][0]:+.1f}, {100 * p['ci'][1]:+.1f}]")
        lines.append(f"| {a} − {b} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Success rate vs stage-2 training FLOPs, ID and rule-OOD panels, one line per arm (PIL only).

    Thin lines are single seeds, thick lines their mean; x = 0 is the SFT warm start.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=16)
    small = ImageFont.load_default(size=13)
    colors = {"sft": (214, 39, 40), "ppo": (31, 119, 180), "grpo": (44, 160, 44)}
    w, h, pad = 1200, 560, 80
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    curves = results["curves"]
    xmax = max(pt["flops"] for runs in curves.values() for run in runs for pt in run) or 1.0
    scale, unit = (1e12, "TFLOPs") if xmax >= 1e12 else (1e9, "GFLOPs")
    panels = (("id_success", "In-distribution (J/Q/K = 10)"), ("ood_success", "Rule OOD (J/Q/K = 11/12/13)"))
    panel_w = (w - 3 * pad) // 2
    top, bottom = 60, h - 110
    for p, (key, title) in enumerate(panels):
        x0, x1 = pad + p * (panel_w + pad), pad + p * (panel_w + pad) + panel_w
        base = results["rows"]["stage0"][key]
        ymax = max(0.05, base, max(pt[key] for runs in curves.values() for run in runs for pt in run)) * 1.15
        d.rectangle([x0, top, x1, bottom], outline="black")
        # The stage-0 model's level, for reference (dashed grey).
        yb = bottom - (bottom - top) * base / ymax
        for xs in range(x0, x1, 14):
            d.line([xs, yb, min(xs + 7, x1), yb], fill=(140, 140, 140), width=2)
        d.text((x1 - 150, yb - 20), f"stage 0: {100 * base:.1f}%", fill=(110, 110, 110), font=small)
        d.text((x0, top - 28), title, fill="black", font=font)
        for k in range(5):
            yy = bottom - (bottom - top) * k / 4
            d.line([x0 - 4, yy, x0, yy], fill="black")
            d.text((x0 - 58, yy - 8), f"{100 * ymax * k / 4:.1f}%", fill="black", font=small)
            xx = x0 + (x1 - x0) * k / 4
            d.line([xx, bottom, xx, bottom + 4], fill="black")
            d.text((xx - 16, bottom + 8), f"{xmax * k / 4 / scale:.2g}", fill="black", font=small)
        d.text(
            ((x0 + x1) // 2 - 120, bottom + 30), f"stage-2 training compute ({unit})", fill="black", font=font
        )

        def xy(
            pt: dict[str, float], key: str = key, x0: int = x0, x1: int = x1, ymax: float = ymax
        ) -> tuple[float, float]:
            return x0 + (x1 - x0) * pt["flops"] / xmax, bottom - (bottom - top) * pt[key] / ymax

        for arm, runs in curves.items():
            faint = tuple(int(c + (255 - c) * 0.6) for c in colors[arm])
            for run in runs:
                d.line([xy(pt) for pt in run], fill=faint, width=1)
            n = min(len(r) for r in runs)
            mean = [
                {
                    "flops": sum(r[i]["flops"] for r in runs) / len(runs),
                    key: sum(r[i][key] for r in runs) / len(runs),
                }
                for i in range(n)
            ]
            d.line([xy(pt) for pt in mean], fill=colors[arm], width=3)
            for pt in mean:
                cx, cy = xy(pt)
                d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colors[arm])
    legend = (("sft", "SFT"), ("ppo", "RL (PPO)"), ("grpo", "RL (GRPO)"))
    for i, (arm, label) in enumerate(legend):
        lx = w // 2 - 220 + i * 150
        d.line([lx, h - 28, lx + 28, h - 28], fill=colors[arm], width=4)
        d.text((lx + 34, h - 37), label, fill="black", font=font)
    n_seeds = len(next(iter(curves.values())))
    d.text((w - 330, h - 37), f"success within 3 attempts; {n_seeds} seed(s)", fill="black", font=small)
    img.save(path)


def with_overrides(cfg: ReproConfig, **kw: Any) -> ReproConfig:
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})
