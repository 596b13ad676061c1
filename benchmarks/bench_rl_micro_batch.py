"""Micro-batches in the own RL learner (``agent train rl --micro-batch-size N``): memory for time, measured.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_rl_micro_batch.py [--micro 0 8 2] [--updates 3
--episodes 8 --group 4] [--model DIR --extra "..."]``. Each setting is one ``agent train rl --algo grpo``
process (through :func:`bench_rl_vs_trl.run`, so the settings are those of the own-vs-TRL benchmark:
one optimizer step per epoch over the whole update); ``0`` is the whole update in one forward/backward
pass, ``N`` accumulates its gradient over passes of at most N transitions. Reported side by side in
one run: episodes/s over the training loop (the learner's own clock), the process's peak resident
memory and the mean reward of the first and last update (the update is the same, so these differ only
by floating-point order), with ratios to the whole-update setting.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_rl_vs_trl import add_run_options, run, tiny_model
from rich.console import Console
from rich.table import Table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micro", type=int, nargs="+", default=[0, 8, 2], help="0: the whole update at once")
    add_run_options(ap)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here")
    args = ap.parse_args()
    rows: dict[int, dict[str, float]] = {}
    console = Console(width=max(120, Console().width))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = args.model or tiny_model(work / "tiny")
        for micro in args.micro:
            setting = argparse.Namespace(**vars(args))
            if micro:
                setting.extra = f"{args.extra} --micro-batch-size {micro}"
            with console.status(f"micro-batch {micro or 'whole update'}"):
                rows[micro] = run("sftrl", model, work / f"micro-{micro}", setting)
    base = rows[args.micro[0]]
    table = Table(
        title=f"own GRPO learner, {model.name if args.model else 'tiny model'}: {args.updates} updates x "
        f"{args.episodes} episodes, {args.epochs} step(s)/update; ratios to micro {args.micro[0] or 'whole'}"
    )
    table.add_column("micro-batch (transitions)")
    for name in ("episodes/s", "peak RSS MB", "reward first", "reward last", "speed ratio", "memory ratio"):
        table.add_column(name, justify="right")
    for micro, r in rows.items():
        table.add_row(
            str(micro or "whole update"),
            f"{r['episodes_s']:.2f}",
            f"{r['peak_mb']:.0f}",
            f"{r['reward_first']:.3f}",
            f"{r['reward']:.3f}",
            f"{r['episodes_s'] / base['episodes_s']:.2f}",
            f"{r['peak_mb'] / base['peak_mb']:.2f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
