"""Synchronous vs asynchronous rollouts (``agent train rl --async-rollouts``) on the same budget.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_rl_async.py [--updates 8] [--episodes-per-update 8]
[--staleness 1 2] [--out benchmarks/results/rl_async]``. One tiny char model (``agent tiny-model --kind
char``), the same GP-L env, seeds, group size, batch and reply length for every row; the rows differ
only in ``--async-rollouts --max-staleness K``. Loop seconds are the sum of the per-update
``seconds`` in ``metrics.jsonl`` (collection + update, waits included; model loading and the final
save are outside), so updates/s and episodes/s compare the training loops themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _agent(*args: str) -> None:
    from sftrl.cli import main

    rc = main(list(args))
    if rc != 0:
        raise SystemExit(f"`agent {' '.join(args)}` failed with exit status {rc}")


def run(args: argparse.Namespace, model: Path, out: Path, staleness: int | None) -> dict[str, float]:
    if out.exists():
        shutil.rmtree(out)
    argv = ["train", "rl", "--env", "gp", "--prompt-style", "compact", "--verify-iter", "2"]
    argv += ["--model", str(model), "--out", str(out), "--algo", args.algo, "--max-steps", str(args.updates)]
    argv += ["--episodes-per-update", str(args.episodes_per_update), "--group-size", "4"]
    argv += ["--max-new-tokens", str(args.max_new_tokens), "--concurrency", str(args.episodes_per_update)]
    argv += ["--lr", "1e-3", "--save-every", str(args.updates), "--ppo-epochs", str(args.ppo_epochs)]
    if staleness is not None:
        argv += ["--async-rollouts", "--max-staleness", str(staleness)]
    t0 = time.perf_counter()
    _agent(*argv)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    loop = sum(r["seconds"] for r in rows)
    n = len(rows)
    return {
        "wall_s": wall,
        "loop_s": loop,
        "updates_per_s": n / loop,
        "episodes_per_s": n * args.episodes_per_update / loop,
        "staleness": sum(r.get("staleness_mean", 0.0) for r in rows) / n,
        "is_weight": sum(r.get("is_weight_mean", 1.0) for r in rows) / n,
        "reward": sum(r["reward"] for r in rows) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", choices=("grpo", "ppo"), default="grpo")
    ap.add_argument("--updates", type=int, default=8)
    ap.add_argument("--episodes-per-update", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--staleness", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rl_async"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "char"
    if not (model / "config.json").exists():
        _agent("tiny-model", "--kind", "char", "--out", str(model), "--overwrite")
    results = {"sync": run(args, model, args.out / "sync", None)}
    for k in args.staleness:
        results[f"async K={k}"] = run(args, model, args.out / f"async-k{k}", k)

    from rich.console import Console
    from rich.table import Table

    base = results["sync"]
    table = Table(
        title=f"agent train rl ({args.algo}), {args.updates} updates x {args.episodes_per_update} episodes, "
        f"char model, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {os.cpu_count()} CPUs"
    )
    cols = [
        "mode",
        "wall s",
        "loop s",
        "updates/s",
        "episodes/s",
        "ratio",
        "staleness",
        "IS weight",
        "reward",
    ]
    for col in cols:
        table.add_column(col, justify="left" if col == "mode" else "right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['wall_s']:.1f}",
            f"{r['loop_s']:.1f}",
            f"{r['updates_per_s']:.3f}",
            f"{r['episodes_per_s']:.2f}",
            f"{r['updates_per_s'] / base['updates_per_s']:.2f}x",
            f"{r['staleness']:.2f}",
            f"{r['is_weight']:.3f}",
            f"{r['reward']:.3f}",
        )
    Console(width=160).print(table)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
