"""Does the user's path teach a model GP-L?  The README's training block at full size; table + PNG.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_rl_gp.py [--algo ppo|grpo] [--updates 100] [--seed 0]
[--out benchmarks/results/rl_gp]``. Every stage is the user's own command (``agent …`` in process),
the same commands as the README's quick tour shows:

1. ``agent tiny-model --kind stage0`` — the shipped GP-L stage-0 char Llama (trained on a curriculum
   of make-target-T tasks, never on 24; ``sftrl/repro/data/stage0/README.md``), and
   ``python -m sftrl.repro.hands --ood-subset 200`` — the hand pools: training multisets, 200 held-out
   ID multisets (disjoint from training), and a fixed 200 of the 796 rule-OOD multisets;
2. ``agent run --policy expert --policy-option mistakes=0.3`` on compact GP-L prompts of the training
   pool (3 attempts,
   the expert errs on purpose 30% of the time, so the logs hold revisions), ``agent data sft
   --chains full`` — demonstrations with the verifier's feedback turns;
3. ``agent train sft`` — the SFT warm start (300 steps of 64, lr 5e-4 cosine, turn-grouped batches);
4. ``agent train rl`` — online PPO (or GRPO) with the verifier's rewards on the training pool, 64
   episodes per update, the ``agent repro`` arms' update settings by default (2 epochs, minibatches of
   48 grouped by length, no entropy bonus, value lr 1e-3, reply-level ratios clipped at 0.1;
   ``--ratio token`` etc. to compare), evaluated before the first update and every ``--eval-every``
   updates on the held-out hands: ``id`` greedy (200 ID multisets), ``id_t1`` sampled at temperature 1,
   the policy RL optimises (the 200 ID multisets three times: 600 episodes), ``ood`` greedy (the 200
   rule-OOD multisets, J/Q/K = 11/12/13).

Prints the evaluation curve (success within 3 attempts, first-attempt success, reward, each spec),
the paired before/after differences over the same hands (bootstrap 95% CI) and the wall time of each
stage; saves ``rl_gp_<algo>.png`` and ``rl_gp_<algo>.json``. Every stage is seeded; a rerun in the
same ``--out`` reuses finished stages.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", choices=("grpo", "ppo"), default="ppo")
    ap.add_argument("--updates", type=int, default=100)
    ap.add_argument("--episodes-per-update", type=int, default=64)
    ap.add_argument("--group-size", type=int, default=8, help="GRPO group size")
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--value-lr", type=float, default=1e-3, help="PPO value head learning rate")
    ap.add_argument("--ratio", choices=("sequence", "token"), default="sequence", help="PPO ratio level")
    ap.add_argument("--clip", type=float, default=0.1)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--minibatch-size", type=int, default=48)
    ap.add_argument("--ent-coef", type=float, default=0.0)
    ap.add_argument("--minibatch-order", choices=("random", "length"), default="length")
    ap.add_argument(
        "--tag", default="", help="suffix of the RL run directory (compare settings in one --out)"
    )
    ap.add_argument("--expert-episodes", type=int, default=40_000)
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--sft-lr", type=float, default=5e-4)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0, help="RL run seed (episodes, learner; 0: the README)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rl_gp"))
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pools = out / "pools"
    env = ["--env", "gp", "--prompt-style", "compact", "--verify-iter", "3"]
    train = [*env, "--hand-pool", str(pools / "train.json")]
    held_out = "prompt_style=compact,verify_iter=3,pool_draw=by_index"
    id_pool, ood_pool = pools / "id_eval.json", pools / "ood_curve.json"
    t0 = time.perf_counter()
    stage_s: dict[str, float] = {}

    s = time.perf_counter()
    if not (out / "stage0" / "config.json").exists():
        _agent("tiny-model", "--kind", "stage0", "--out", str(out / "stage0"), "--overwrite")
    if not (pools / "ood_curve.json").exists():
        from sftrl.repro.hands import main as write_pools

        write_pools(["--out", str(pools), "--ood-subset", "200"])
    if not (out / "expert" / "episodes.jsonl").exists():
        _agent("run", *train, "--policy", "expert", "--policy-option", "mistakes=0.3", "--episodes",
               str(args.expert_episodes), "--concurrency", "64", "--out", str(out / "expert"),
               "--quiet")  # fmt: skip
    if not (out / "data").exists():
        _agent("data", "sft", str(out / "expert"), "--chains", "full", "--out", str(out / "data"))
    stage_s["data"] = time.perf_counter() - s
    s = time.perf_counter()
    if not (out / "sft" / "config.json").exists():
        _agent("train", "sft", "--data", str(out / "data"), "--model", str(out / "stage0"), "--out",
               str(out / "sft"), "--max-steps", str(args.sft_steps), "--lr", str(args.sft_lr),
               "--lr-scheduler", "cosine", "--batch-size", "64", "--batch-groups", "turns",
               "--no-evaluate")  # fmt: skip
    stage_s["sft"] = time.perf_counter() - s
    rl_dir = out / f"rl-{args.algo}{'-' + args.tag if args.tag else ''}"
    s = time.perf_counter()
    if not (rl_dir / "config.json").exists():
        _agent(
            "train", "rl", *train, "--model", str(out / "sft"), "--out", str(rl_dir), "--algo", args.algo,
            "--max-steps", str(args.updates), "--episodes-per-update", str(args.episodes_per_update),
            "--group-size", str(args.group_size if args.algo == "grpo" else 1), "--concurrency", "64",
            "--seed", str(args.seed),
            "--lr", str(args.lr), "--value-lr", str(args.value_lr), "--ratio", args.ratio,
            "--clip", str(args.clip), "--ppo-epochs", str(args.ppo_epochs),
            "--minibatch-size", str(args.minibatch_size), "--minibatch-order", args.minibatch_order,
            "--ent-coef", str(args.ent_coef), "--max-new-tokens", "40", "--save-every", str(args.updates),
            "--eval-env", f"id=gp:{held_out},hand_pool={id_pool},episodes=200",
            "--eval-env", f"id_t1=gp:{held_out},hand_pool={id_pool},episodes=600,temperature=1",
            "--eval-env", f"ood=gp:split=rule-ood,{held_out},hand_pool={ood_pool},episodes=200",
            "--eval-every", str(args.eval_every), "--eval-max-new-tokens", "40",
        )  # fmt: skip
    stage_s["rl (with evaluations)"] = time.perf_counter() - s
    evals = [json.loads(line) for line in (rl_dir / "eval.jsonl").read_text().splitlines() if line]
    curve = [json.loads(line) for line in (rl_dir / "metrics.jsonl").read_text().splitlines() if line]
    _report(args, evals, curve, stage_s, time.perf_counter() - t0, out)


def _paired(first: dict, last: dict, split: str) -> dict:
    from sftrl.agents.metrics import paired_difference
    from sftrl.agents.trajectory import read_episodes

    return paired_difference(
        read_episodes(Path(first[split]["out"])), read_episodes(Path(last[split]["out"]))
    )


def _report(
    args: argparse.Namespace,
    evals: list[dict],
    curve: list[dict],
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
    algo = args.algo.upper()
    names = {"id": "ID greedy", "id_t1": "ID sampled (T=1)", "ood": "OOD greedy"}
    table = Table(
        title=f"GP-L compact, shipped stage-0 model -> SFT warm start -> {algo}: held-out hands, 3 attempts "
        "(ID: 200 multisets, sampled 3x; OOD: 200 of the 796 rule-OOD multisets)"
    )
    table.add_column("update", justify="right")
    table.add_column("FLOPs", justify="right")
    for label in names.values():
        table.add_column(f"{label} success", justify="right")
        table.add_column(f"{label} 1st try", justify="right")
    for e in evals:
        cells = [str(e["step"]), f"{e['flops']:.2e}"]
        for name in names:
            cells += [f"{e[name]['success_rate']:.3f}", f"{e[name]['first_try_success_rate']:.3f}"]
        table.add_row(*cells)
    console.print(table)
    paired = {name: _paired(evals[0], evals[-1], name) for name in names}
    for name, p in paired.items():
        lo, hi = p["success_diff_ci95"]
        rlo, rhi = p["mean_reward_diff_ci95"]
        console.print(
            f"{names[name]}: paired over {p['paired_episodes']} episodes, update 0 -> {evals[-1]['step']}: "
            f"success {p['success_diff']:+.3f} (95% bootstrap CI {lo:+.3f} … {hi:+.3f}), mean reward "
            f"{p['mean_reward_diff']:+.2f} ({rlo:+.2f} … {rhi:+.2f})"
        )
    console.print(
        "stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in stage_s.items()) + f"; total {total_s:.0f}"
    )
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = [e["step"] for e in evals]
    for name, label in (
        ("id", "ID greedy (J/Q/K = 10)"),
        ("id_t1", "ID sampled, T = 1"),
        ("ood", "rule OOD greedy (J/Q/K = 11/12/13)"),
    ):
        axes[0].plot(xs, [100 * e[name]["success_rate"] for e in evals], marker="o", label=label)
    axes[0].set_xlabel(f"{algo} update")
    axes[0].set_ylabel("success within 3 attempts (%)")
    axes[0].legend(fontsize=8)
    axes[1].plot([r["update"] for r in curve], [r["reward"] for r in curve], marker=".", ms=3)
    axes[1].set_xlabel(f"{algo} update")
    axes[1].set_ylabel("mean reward of the training episodes")
    fig.suptitle(f"GP-L: {algo} from the SFT warm start of the shipped stage-0 model")
    fig.tight_layout()
    name = f"rl_gp_{args.algo}{'_' + args.tag if args.tag else ''}"
    png = out / f"{name}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    summary = {
        "algo": args.algo,
        "evals": evals,
        "paired_first_last": paired,
        "curve": [
            {k: r.get(k) for k in ("update", "reward", "success_rate", "entropy", "flops")} for r in curve
        ],
        "stage_seconds": stage_s,
        "total_seconds": total_s,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1, default=str))
    console.print(f"plot: {png}")


if __name__ == "__main__":
    main()
