"""Does RL raise GP-L reward on a tiny CPU model from an SFT warm start?  Prints the curve, saves a PNG.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_rl_gp.py [--algo ppo|grpo] [--updates 30]
[--out benchmarks/results/rl_gp]``. Every stage is the user's own command (``agent …`` in process):

1. ``agent tiny-model`` — a tiny random-weight text model (offline);
2. ``agent run --policy expert`` — expert GP-L episodes, ``agent data sft`` — the SFT dataset;
3. ``agent train sft`` — a short warm start, which teaches the answer format only partly;
4. ``agent run --policy hf`` — a fixed, seeded evaluation of the warm start (before RL);
5. ``agent train rl`` — online RL with the verifier's rewards (sequential revision included);
6. the same evaluation of the RL model.

The printed table is the per-update training curve (reward of the episodes each update collected)
plus before/after evaluation on the same seeds; the PNG plots both. Numbers vary with the machine's
thread timing only through wall time: every stage is seeded.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _agent(*args: str) -> None:
    from sftrl.cli import main

    rc = main(list(args))
    if rc != 0:
        raise SystemExit(f"`agent {' '.join(args)}` failed with exit status {rc}")


def _evaluate(model: Path, out: Path, episodes: int, max_new_tokens: int, verify_iter: int) -> dict:
    from sftrl.agents.metrics import summarize
    from sftrl.agents.trajectory import read_episodes

    if not (out / "episodes.jsonl").exists():
        _agent(
            "run", "--env", "gp", "--policy", "hf", "--model", str(model), "--episodes", str(episodes),
            "--seed", "12345", "--sampling-seed", "1", "--max-new-tokens", str(max_new_tokens),
            "--verify-iter", str(verify_iter), "--concurrency", "8", "--out", str(out), "--quiet",
        )  # fmt: skip
    return summarize(read_episodes(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", choices=("grpo", "ppo"), default="ppo")
    ap.add_argument("--updates", type=int, default=30)
    ap.add_argument("--episodes-per-update", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--sft-lr", type=float, default=3e-3)
    ap.add_argument("--verify-iter", type=int, default=2, help="attempts per episode (sequential revision)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--eval-episodes", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rl_gp"))
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stage_s: dict[str, float] = {}

    def stage(name: str, start: float) -> None:
        stage_s[name] = time.perf_counter() - start

    s = time.perf_counter()
    if not (out / "tiny" / "config.json").exists():
        _agent("tiny-model", "--kind", "text", "--out", str(out / "tiny"), "--overwrite")
    if not (out / "expert" / "episodes.jsonl").exists():
        _agent("run", "--env", "gp", "--policy", "expert", "--episodes", "400", "--out", str(out / "expert"),
               "--quiet")  # fmt: skip
    if not (out / "data").exists():
        _agent("data", "sft", str(out / "expert"), "--out", str(out / "data"))
    stage("data", s)
    s = time.perf_counter()
    if not (out / "sft" / "config.json").exists():
        _agent("train", "sft", "--data", str(out / "data"), "--model", str(out / "tiny"), "--out",
               str(out / "sft"), "--max-steps", str(args.sft_steps), "--lr", str(args.sft_lr),
               "--batch-size", "16")  # fmt: skip
    stage("sft", s)
    s = time.perf_counter()
    before = _evaluate(
        out / "sft", out / "eval-sft", args.eval_episodes, args.max_new_tokens, args.verify_iter
    )
    stage("eval before", s)
    rl_dir = out / f"rl-{args.algo}"
    s = time.perf_counter()
    if not (rl_dir / "config.json").exists():
        _agent(
            "train", "rl", "--env", "gp", "--model", str(out / "sft"), "--out", str(rl_dir),
            "--algo", args.algo,
            "--max-steps", str(args.updates), "--episodes-per-update", str(args.episodes_per_update),
            "--group-size", str(args.group_size), "--lr", str(args.lr), "--max-new-tokens",
            str(args.max_new_tokens), "--verify-iter", str(args.verify_iter), "--concurrency", "8",
            "--save-every", str(args.updates),
        )  # fmt: skip
    stage("rl", s)
    s = time.perf_counter()
    after = _evaluate(
        rl_dir, out / f"eval-{args.algo}", args.eval_episodes, args.max_new_tokens, args.verify_iter
    )
    stage("eval after", s)
    curve = [json.loads(line) for line in (rl_dir / "metrics.jsonl").read_text().splitlines() if line]
    from sftrl.agents.metrics import paired_difference
    from sftrl.agents.trajectory import read_episodes

    paired = paired_difference(read_episodes(out / "eval-sft"), read_episodes(out / f"eval-{args.algo}"))
    _report(args, curve, before, after, paired, stage_s, time.perf_counter() - t0, out)


def _report(
    args: argparse.Namespace,
    curve: list[dict],
    before: dict,
    after: dict,
    paired: dict,
    stage_s: dict[str, float],
    total_s: float,
    out: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"GP-L, tiny text model, online {args.algo.upper()} from an SFT warm start")
    for col in ("update", "reward", "success", "entropy", "policy loss", "logprob gap", "s"):
        table.add_column(col, justify="right")
    for row in curve:
        table.add_row(
            str(row["update"]), f"{row['reward']:.3f}", f"{row['success_rate']:.3f}", f"{row['entropy']:.3f}",
            f"{row['policy_loss']:.4f}", f"{row['logprob_gap']:.1e}", f"{row['seconds']:.1f}",
        )  # fmt: skip
    console.print(table)
    ev = Table(title=f"evaluation: {args.eval_episodes} fixed seeds, verify_iter {args.verify_iter}")
    for col in ("model", "mean reward", "success", "95% CI", "first-try reward", "verdicts"):
        ev.add_column(col)
    for name, summ in (("SFT warm start", before), (f"+ {args.algo.upper()}", after)):
        lo, hi = summ["success_ci95"]
        ev.add_row(
            name, f"{summ['mean_reward']:.3f}", f"{summ['success_rate']:.3f}", f"[{lo:.3f}, {hi:.3f}]",
            f"{summ['mean_attempt_reward']:.3f}", json.dumps(summ["verdicts"], sort_keys=True),
        )  # fmt: skip
    console.print(ev)
    lo, hi = paired["mean_reward_diff_ci95"]
    console.print(
        f"paired over {paired['paired_episodes']} seeds: mean episode reward "
        f"{paired['mean_reward_diff']:+.3f} after RL (95% bootstrap CI {lo:+.3f} … {hi:+.3f})"
    )
    console.print(
        "stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in stage_s.items()) + f"; total {total_s:.0f}"
    )
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = [r["update"] for r in curve]
    axes[0].plot(xs, [r["reward"] for r in curve], marker="o", ms=3, label="training episodes")
    axes[0].axhline(before["mean_reward"], color="grey", ls="--", label="eval: SFT warm start")
    axes[0].axhline(after["mean_reward"], color="green", ls="--", label=f"eval: after {args.algo.upper()}")
    axes[0].set_xlabel("RL update")
    axes[0].set_ylabel("mean episode reward")
    axes[0].legend(fontsize=8)
    axes[1].plot([r["flops"] for r in curve], [r["entropy"] for r in curve], marker="o", ms=3)
    axes[1].set_xlabel("training FLOPs")
    axes[1].set_ylabel("policy entropy (nats/token)")
    fig.suptitle(f"GP-L tiny model: {args.algo.upper()} reward curve")
    fig.tight_layout()
    png = out / f"rl_gp_{args.algo}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    summary = {
        "algo": args.algo,
        "before": {k: before[k] for k in ("mean_reward", "success_rate", "success_ci95", "verdicts")},
        "after": {k: after[k] for k in ("mean_reward", "success_rate", "success_ci95", "verdicts")},
        "paired_reward_diff": paired["mean_reward_diff"],
        "paired_reward_diff_ci95": paired["mean_reward_diff_ci95"],
        "curve": [{k: r[k] for k in ("update", "reward", "success_rate", "entropy", "flops")} for r in curve],
        "stage_seconds": stage_s,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    (out / f"rl_gp_{args.algo}.json").write_text(json.dumps(summary, indent=1))
    console.print(f"plot: {png}")


if __name__ == "__main__":
    main()
