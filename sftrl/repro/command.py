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
    parser.add_argument("--modality", default="language", help="language (vision is not implemented yet)")
    parser.add_argument(
        "--seeds", type=int, default=None, help="post-training seeds per arm (5; 1 with --quick)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/repro"), help="output directory (runs/repro)")
    parser.add_argument(
        "--stage0",
        type=Path,
        default=None,
        help="stage-0 model directory (default: the shipped one; --quick and --from-scratch train one)",
    )
    parser.add_argument("--from-scratch", action="store_true", help="train stage 0 too instead of loading it")
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

    from sftrl.repro.pipeline import SHIPPED_STAGE0, ReproConfig, run, with_overrides

    if ns.modality != "language":
        raise ValueError(
            f"--modality {ns.modality}: only 'language' (GP-L) is implemented; GP-VL is the stretch goal"
        )
    cfg = ReproConfig.quick() if ns.quick else ReproConfig.full()
    cfg = with_overrides(
        cfg, seeds=ns.seeds, stage0_steps=ns.stage0_steps, stage2_flops=ns.stage2_flops, workers=ns.workers
    )
    if cfg.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    stage0: Path | None = ns.stage0
    if stage0 is None and not (ns.quick or ns.from_scratch):
        if not (SHIPPED_STAGE0 / "config.json").exists():
            raise ValueError(f"no shipped stage-0 model at {SHIPPED_STAGE0}: use --from-scratch")
        stage0 = SHIPPED_STAGE0
    if stage0 is not None and not (Path(stage0) / "config.json").exists():
        raise ValueError(f"--stage0 {stage0}: not a model directory (no config.json)")
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

    t0 = time.time()
    with progress:
        results = run(
            cfg,
            ns.out,
            stage0=stage0,
            on_progress=on_progress,
            log=(lambda m: None) if ns.json else (lambda m: err.print(m)),
        )
    if ns.json:
        rows = {
            k: {m: v[m] for m in ("id", "ood", "ood_seen", "ood_unseen")} for k, v in results["rows"].items()
        }
        print(
            json.dumps(
                {"out": str(ns.out), "rows": rows, "wall_seconds": results["wall_seconds"]}, sort_keys=True
            )
        )
    else:
        err.print((ns.out / "results.md").read_text())
        err.print(
            f"wrote {ns.out}/results.json, results.md, figure.png, commands.md and checkpoints "
            f"in {time.time() - t0:.0f} s"
        )
    return 0
