"""Activation checkpointing in the RL learner (``agent train rl --gradient-checkpointing``): memory
for time, measured.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_rl_checkpointing.py [--hidden 512 --layers 8
--batch 8 --seq 256 --steps 3]``. Each setting runs in a fresh process (so its peak resident memory is
its own): a random Llama-style model built from scratch (no download), the real PPO
:class:`~sftrl.training.rl.Learner` with ``checkpointing`` off or on, one small warm-up step (gradients
and AdamW moments allocated), then ``--steps`` training steps (forward of the actor-critic, token
log-probs, backward, optimizer step) on a random batch. Reported: the step's peak memory above what the
process held before it (``ru_maxrss``; activations plus transient buffers) and the median step time,
with ratios to the setting without checkpointing, side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench_lora_rl import random_llama
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def worker(args: argparse.Namespace) -> dict[str, float]:
    """One setting in this process: returns its peak step memory and median step time."""
    import torch

    from sftrl.training.rl import Learner, RLConfig

    torch.manual_seed(0)
    model = random_llama(args.hidden, args.layers, args.vocab)
    learner = Learner(model, lambda t: {}, RLConfig(algo="ppo"), checkpointing=args.checkpointing)
    learner.module.train()

    def step(batch: int, seq: int) -> float:
        ids = torch.randint(0, args.vocab, (batch, seq))
        start = time.perf_counter()
        logits, values = learner.module(
            value_index=torch.full((batch,), seq - 1), input_ids=ids, attention_mask=torch.ones_like(ids)
        )
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1))
        learner.accelerator.backward(-logp.mean() + values.pow(2).mean())
        learner.optimizer.step()
        learner.optimizer.zero_grad(set_to_none=False)  # keep the gradient buffers: same before/after
        return time.perf_counter() - start

    step(1, 4)  # allocates gradients and AdamW's moments, which both settings hold alike
    before = _rss_bytes()
    times = [step(args.batch, args.seq) for _ in range(args.steps)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"peak_above_start": peak - before, "step_s": statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rl_checkpointing.json"))
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    console = Console(width=max(100, Console().width))
    shared = ["--hidden", str(args.hidden), "--layers", str(args.layers), "--vocab", str(args.vocab)]
    shared += ["--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
    rows = {}
    for on in (False, True):
        cmd = [sys.executable, __file__, "--worker", *shared, *(["--checkpointing"] if on else [])]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        with console.status(f"checkpointing {'on' if on else 'off'}: {args.steps} learner steps"):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"the worker failed:\n{proc.stderr[-3000:]}")
        rows[on] = json.loads(proc.stdout.strip().splitlines()[-1])
    title = (
        f"RL learner step, Llama {args.hidden}x{args.layers}, batch {args.batch}x{args.seq} tokens, "
        "fp32, one process"
    )
    table = Table(title=title)
    for col in ("activation checkpointing", "step peak MiB", "vs off", "step s", "vs off"):
        table.add_column(col, justify="right")
    off = rows[False]
    for on, r in rows.items():
        table.add_row(
            "on" if on else "off",
            f"{r['peak_above_start'] / MIB:.1f}",
            f"{r['peak_above_start'] / off['peak_above_start']:.2f}x",
            f"{r['step_s']:.2f}",
            f"{r['step_s'] / off['step_s']:.2f}x",
        )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("checkpointing", "worker", "out")}
    summary = {"settings": settings, "off": rows[False], "on": rows[True]}
    args.out.write_text(json.dumps(summary, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
