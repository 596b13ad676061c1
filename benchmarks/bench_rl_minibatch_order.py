"""RL mini-batches in random order vs grouped by length (``agent train rl --minibatch-order``).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_rl_minibatch_order.py [--model DIR] [--updates 4]
[--algo ppo grpo]``. The model defaults to the shipped GP-L stage-0 model; the settings are the repro
experiment's stage-2 ones (compact GP-L on its training pool, 3 attempts, 64 episodes per update, groups
of 8, 2 epochs, mini-batches of 48, 40-token replies, lr 3e-5). Each row is one ``agent train rl`` run
with the same seed; rows differ only in ``--minibatch-order``. Seconds are the per-update ``seconds``
of ``metrics.jsonl`` (collection + update) averaged over the updates after the first; the FLOPs column
is the budget an update spends (``flops`` / updates), which does not depend on the order.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

SHIPPED = Path(__file__).resolve().parent.parent / "sftrl" / "repro" / "data" / "stage0"


def run(args: argparse.Namespace, algo: str, order: str) -> dict[str, float]:
    from sftrl.cli import main
    from sftrl.repro.hands import make_pools

    out = args.out / f"{algo}-{order}"
    if out.exists():
        shutil.rmtree(out)
    pool = args.out / "train_pool.json"
    if not pool.exists():
        pool.parent.mkdir(parents=True, exist_ok=True)
        pool.write_text(json.dumps([list(m) for m in make_pools().train]))
    argv = ["train", "rl", "--env", "gp", "--split", "id", "--prompt-style", "compact", "--verify-iter", "3"]
    argv += ["--hand-pool", str(pool), "--model", str(args.model), "--out", str(out), "--algo", algo]
    argv += ["--max-steps", str(args.updates), "--episodes-per-update", "64", "--group-size", "8"]
    argv += ["--concurrency", "64", "--max-new-tokens", "40", "--lr", "3e-5", "--value-lr", "1e-3"]
    argv += ["--ppo-epochs", "2", "--minibatch-size", "48", "--ent-coef", "0", "--save-every", "1000000"]
    argv += ["--minibatch-order", order, "--seed", "0"]
    if main(argv) != 0:
        raise SystemExit(f"agent {' '.join(argv)} failed")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    later = rows[1:] or rows
    return {
        "s_per_update": sum(r["seconds"] for r in later) / len(later),
        "flops_per_update": rows[-1]["flops"] / len(rows),
        "transitions": sum(r["transitions"] for r in rows) / len(rows),
        "success": sum(r["success_rate"] for r in rows) / len(rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=SHIPPED)
    ap.add_argument("--updates", type=int, default=4)
    ap.add_argument("--algo", nargs="+", choices=("ppo", "grpo"), default=["ppo", "grpo"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_rl_minibatch_order"))
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"RL mini-batch order, {args.updates} updates of 64 GP-L episodes ({args.model.name})"
    )
    for col in ("algo", "order", "s / update", "ratio", "FLOPs / update", "transitions", "success"):
        table.add_column(col, justify="right")
    for algo in args.algo:
        base = None
        for order in ("random", "length"):
            r = run(args, algo, order)
            base = base or r["s_per_update"]
            table.add_row(
                algo,
                order,
                f"{r['s_per_update']:.2f}",
                f"{r['s_per_update'] / base:.2f}",
                f"{r['flops_per_update']:.3g}",
                f"{r['transitions']:.0f}",
                f"{r['success']:.3f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
