"""The ``agent repro`` sub-command: flags and the rich progress display around ``pipeline.run``.

Imports nothing heavy at module level so ``agent --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="tiny model and budgets: checks the whole pipeline in minutes"
    )
    parser.add_argument(
        "--experiment",
        default=None,
        help="gp-l-rule (default), virl-l-rule, gp-vl-visual, virl-vl-visual, or all (one after another)",
    )
    parser.add_argument("--modality", default=None, help="alias: language = gp-l-rule, vision = gp-vl-visual")
    parser.add_argument(
        "--ablations",
        default=None,
        help="comma-separated extra arms: rl-no-sft (PPO from stage 0), rl-verify1 (PPO, verify_iter 1)",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="post-training seeds per arm (GP-L 5, V-IRL-L 3; --quick 1)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/repro"), help="output directory (runs/repro)")
    parser.add_argument(
        "--stage0",
        type=Path,
        default=None,
        help="stage-0 model directory (GP-L and V-IRL-L default: the shipped one; --quick and --from-scratch "
        "train one; the vision settings: required unless --quick (alone: an untrained tiny model)",
    )
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="train stage 0 too, on the setting's curriculum (GP-L, V-IRL-L), instead of loading it",
    )
    parser.add_argument(
        "--stage0-only",
        action="store_true",
        help="with --from-scratch: train and evaluate stage 0, then stop (no stages 1-2)",
    )
    parser.add_argument(
        "--stage0-steps", type=int, default=None, help="stage-0 optimizer steps when training it"
    )
    parser.add_argument("--stage2-flops", type=float, default=None, help="training FLOPs per stage-2 arm")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (2)")
    parser.add_argument("--json", action="store_true", help="print the results summary as JSON")


def run_command(ns: argparse.Namespace) -> int:
    """Entry point of ``agent repro``; returns the exit status (CLIError-style problems raise ValueError)."""
    import json

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from sftrl.repro import experiments
    from sftrl.repro.pipeline import ABLATIONS, SHIPPED_STAGE0S, ReproConfig, run, with_overrides

    names = _experiments(ns.experiment, ns.modality)
    if ns.stage0_only and not ns.from_scratch:
        raise ValueError("--stage0-only trains stage 0: it needs --from-scratch")
    ablations = tuple(a.strip() for a in (ns.ablations or "").split(",") if a.strip())
    unknown = sorted(set(ablations) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"--ablations {','.join(unknown)}: unknown; choose from {', '.join(ABLATIONS)}")
    plans = []
    for name in names:
        exp = experiments.get(name)
        cfg = ReproConfig.quick(name) if ns.quick else ReproConfig.full(name)
        cfg = with_overrides(
            cfg,
            seeds=ns.seeds,
            stage0_steps=ns.stage0_steps,
            stage2_flops=ns.stage2_flops,
            workers=ns.workers,
            ablations=ablations or None,
        )
        if cfg.seeds < 1:
            raise ValueError("--seeds must be at least 1")
        stage0: Path | None = ns.stage0
        if name in SHIPPED_STAGE0S and stage0 is None and not (ns.quick or ns.from_scratch):
            shipped = SHIPPED_STAGE0S[name]
            if not (shipped / "config.json").exists():
                raise ValueError(f"no shipped stage-0 model at {shipped}: use --from-scratch")
            stage0 = shipped
        elif ns.from_scratch:
            if exp.stage0_curriculum is None:
                raise ValueError(
                    f"--experiment {name}: no stage-0 curriculum exists for it yet (--from-scratch)"
                )
        elif stage0 is None and not ns.quick:
            raise ValueError(
                f"--experiment {name}: no stage-0 model exists for it yet; pass --stage0 DIR "
                f"({'a char or char-vision' if exp.modality == 'vision' else 'a char'} model), "
                + ("--from-scratch (trains one on its curriculum) " if exp.stage0_curriculum else "")
                + "or --quick"
            )
        if stage0 is not None:
            problem = experiments.stage0_problem(exp, Path(stage0))
            if problem:
                raise ValueError(f"--stage0 {stage0}: {problem}")
        out = ns.out if len(names) == 1 else ns.out / name
        plans.append((name, cfg, stage0, out, ns.from_scratch))
    err = Console(stderr=True)
    quiet = ns.json or not sys.stderr.isatty()
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    )
    tasks: dict[str, Any] = {}

    def on_progress(job: str, completed: float, total: float, description: str) -> None:
        text = description if len(description) <= 110 else description[:107] + "..."
        if job not in tasks:
            tasks[job] = progress.add_task(text, total=None)
        progress.update(tasks[job], description=text)

    for name, cfg, stage0, out, from_scratch in plans:
        t0 = time.time()
        with progress:
            results = run(
                cfg,
                out,
                stage0=stage0,
                from_scratch=from_scratch,
                stage0_only=ns.stage0_only,
                on_progress=on_progress,
                log=(lambda m: None) if ns.json else (lambda m: err.print(m)),
            )
        if ns.stage0_only:
            _print_stage0(results, out, ns.json, err, time.time() - t0)
            continue
        if ns.json:
            splits = experiments.get(name).splits
            rows = {k: {m: v[m] for m in splits} for k, v in results["rows"].items()}
            summary = {"out": str(out), "rows": rows, "wall_seconds": results["wall_seconds"]}
            if len(plans) > 1:
                summary["experiment"] = name
            print(json.dumps(summary, sort_keys=True))
        else:
            err.print((out / "results.md").read_text())
            err.print(
                f"wrote {out}/results.json, results.md, figure.png, commands.md and checkpoints "
                f"in {time.time() - t0:.0f} s"
            )
    return 0


def _print_stage0(results: dict[str, Any], out: Path, as_json: bool, err: Any, seconds: float) -> None:
    """The stage-0 build's evaluation points (``--stage0-only``)."""
    import json

    from sftrl.training.evaluation import summary_line

    if as_json:
        print(json.dumps({"out": str(out), **results}, sort_keys=True, default=str))
        return
    for row in results["stage0_evals"]:
        err.print(f"step {row['step']:>6}  {summary_line(row)}")
    err.print(f"wrote {out}/stage0 (eval.jsonl, the checkpoint) and commands.md in {seconds:.0f} s")


def _experiments(experiment: str | None, modality: str | None) -> list[str]:
    """The experiments to run from ``--experiment`` / its alias ``--modality``."""
    from sftrl.repro.experiments import EXPERIMENTS, MODALITY_ALIAS

    if modality is not None:
        if modality not in MODALITY_ALIAS:
            raise ValueError(f"--modality {modality}: choose language (gp-l-rule) or vision (gp-vl-visual)")
        alias = MODALITY_ALIAS[modality]
        if experiment is not None and experiment != alias:
            raise ValueError(f"--modality {modality} means --experiment {alias}, not {experiment}")
        return [alias]
    if experiment is None:
        return ["gp-l-rule"]
    if experiment == "all":
        return list(EXPERIMENTS)
    if experiment not in EXPERIMENTS:
        raise ValueError(f"--experiment {experiment}: unknown; choose from {', '.join(EXPERIMENTS)} or all")
    return [experiment]
