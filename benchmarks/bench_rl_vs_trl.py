"""Own GRPO learner vs TRL's GRPOTrainer (``agent train rl --trainer trl``) at equal settings.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_rl_vs_trl.py [--updates 3 --episodes 8 --group 4]``.
Both runs go through ``agent train rl`` (``python -m sftrl``), each in its own process, on the same
tiny from-scratch model (``agent tiny-model``), the same GP-L env, group size, episodes per update,
sequence length, learning rate, epochs per update and number of updates. Reported per trainer:
episodes/s and updates/s over the training loop (the trainers' own clocks: the sum of the own
learner's per-update ``seconds``; TRL's ``train_runtime``), the process wall time (imports and model
load included), the peak resident memory of the process, and the mean reward of the last update;
then the ratio own / TRL (> 1 = the own learner is faster / uses more). A tiny random model earns
no reward, so rewards only show that both ran the same task.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Runs `python -m sftrl ...` and reports the process's peak RSS (ru_maxrss, KiB on Linux) on stderr.
_WRAPPER = (
    "import resource, runpy, sys\n"
    "sys.argv = ['sftrl', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('sftrl', run_name='__main__')\n"
    "finally:\n"
    "    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def run(trainer: str, model: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, "-c", _WRAPPER, "train", "rl", "--model", str(model), "--out", str(out)]
    cmd += ["--trainer", trainer, "--algo", "grpo", "--max-steps", str(args.updates)]
    cmd += ["--episodes-per-update", str(args.episodes), "--group-size", str(args.group)]
    cmd += ["--max-new-tokens", str(args.max_new_tokens), "--ppo-epochs", str(args.epochs)]
    cmd += ["--minibatch-size", str(args.episodes), "--lr", "1e-5", "--concurrency", str(args.episodes)]
    cmd += ["--save-every", str(args.updates), "--seed", "0", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{trainer} failed:\n{proc.stderr[-3000:]}")
    peak = max(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    if trainer == "sftrl":
        train_s = sum(float(r["seconds"]) for r in rows)
        reward = float(rows[-1]["reward"])
    else:
        train_s = float(last["train_runtime"])
        reward = float([r for r in rows if "reward" in r][-1]["reward"])
    return {
        "episodes_s": args.updates * args.episodes / train_s,
        "updates_s": args.updates / train_s,
        "train_s": train_s,
        "wall_s": wall,
        "peak_mb": peak / 1024,
        "reward": reward,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=8, help="episodes per update")
    ap.add_argument("--group", type=int, default=4, help="GRPO group size")
    ap.add_argument("--epochs", type=int, default=1, help="optimizer passes per update")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        subprocess.run(
            [sys.executable, "-m", "sftrl", "tiny-model", "--out", str(model)],
            check=True,
            capture_output=True,
        )
        own = run("sftrl", model, Path(tmp) / "own", args)
        trl = run("trl", model, Path(tmp) / "trl", args)
    table = Table(
        title=f"GRPO on GP-L, tiny model: {args.updates} updates x {args.episodes} episodes "
        f"(groups of {args.group}), {args.max_new_tokens} new tokens, {args.epochs} epoch(s)/update"
    )
    for col in ("metric", "own (sftrl)", "TRL GRPOTrainer", "own / TRL"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for key, name, fmt in (
        ("episodes_s", "episodes/s (training loop)", "{:.2f}"),
        ("updates_s", "updates/s (training loop)", "{:.3f}"),
        ("train_s", "training loop s", "{:.1f}"),
        ("wall_s", "process wall s (with start-up)", "{:.1f}"),
        ("peak_mb", "peak RSS MB", "{:.0f}"),
        ("reward", "mean reward, last update", "{:.3f}"),
    ):
        ratio = own[key] / trl[key] if trl[key] else float("nan")
        table.add_row(name, fmt.format(own[key]), fmt.format(trl[key]), f"{ratio:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
