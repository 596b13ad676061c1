"""`agent train sft` and `agent train rl` on CPU and on a CUDA GPU: tokens/s and updates/s side by side.

Run: ``python benchmarks/bench_train_devices.py [--devices cpu cuda] [--out DIR]`` (the GPU figures of
docs/gpu_recipe.md; the prepared device check is ``scripts/gpu_figures.sh``). On the same small
from-scratch model (``agent tiny-model --kind char``, sized by ``--hidden/--layers/--heads``) and the
same GP-L data, each device runs, each command in its own ``python -m sftrl`` process:

1. ``agent train sft`` for ``--sft-steps`` optimizer steps (batch ``--batch-size``) on demonstrations
   of the expert (``agent run --policy expert`` -> ``agent data sft``); on CUDA TRL trains in bf16
   (sftrl turns ``bf16`` on where the GPU has it), on CPU in fp32;
2. ``agent train rl --algo ppo`` and ``--algo grpo`` (the ``hf`` backend: the trained model samples
   its own rollouts) for ``--rl-updates`` updates of ``--episodes`` GP-L episodes; on CUDA under
   accelerate's bf16 autocast (``ACCELERATE_MIXED_PRECISION=bf16``, what ``configs/accelerate/*.yaml``
   set), on CPU in fp32.

The CPU runs hide the GPU (``CUDA_VISIBLE_DEVICES=``) and use ``--cpu-threads`` torch threads.
Reported per device: SFT trained tokens/s and steps/s (the trainer's own clock); RL updates/s,
episodes/s and generated tokens/s (one epoch per update: each is trained once; the JSON has trained
tokens/s too) over the updates after the first (the first holds one-off start-up costs: CUDA
context, allocator warm-up), and each process's wall time; then
the ratio CUDA / CPU per figure. Prints a table; writes ``OUT/train_devices.json`` and ``.md``.
A small random model earns no reward: the figures are throughput, not learning.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ENV = ["--env", "gp", "--prompt-style", "compact", "--verify-iter", "2"]


def _agent(args: list[str], env: dict[str, str]) -> float:
    """Run ``python -m sftrl ARGS`` in its own process; its wall time in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sftrl", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise SystemExit(f"`agent {' '.join(args)}` failed ({proc.returncode}):\n" + "\n".join(tail))
    return time.perf_counter() - t0


def _device_env(device: str, cpu_threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["OMP_NUM_THREADS"] = str(cpu_threads)
        env.pop("ACCELERATE_MIXED_PRECISION", None)
    else:
        env["ACCELERATE_MIXED_PRECISION"] = "bf16"
    return env


def _hardware(device: str) -> str:
    if device == "cuda":
        import torch

        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def prepare(out: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The from-scratch model and the SFT data every device trains on."""
    env = _device_env("cpu", args.cpu_threads)
    model, data = out / "model", out / "data"
    if not (model / "config.json").exists():
        _agent(["tiny-model", "--kind", "char", "--hidden", str(args.hidden), "--layers", str(args.layers),
                "--heads", str(args.heads), "--out", str(model), "--overwrite"], env)  # fmt: skip
    if not data.exists():
        expert = out / "expert"
        _agent(["run", *ENV, "--policy", "expert", "--policy-option", "mistakes=0.3", "--episodes",
                str(args.expert_episodes), "--concurrency", "64", "--out", str(expert), "--quiet"],
               env)  # fmt: skip
        _agent(["data", "sft", str(expert), "--chains", "full", "--out", str(data)], env)
    return model, data


def parameters(model: Path) -> int:
    """Parameters stored in the model's safetensors file (tied weights once)."""
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def bench_sft(device: str, model: Path, data: Path, out: Path, args: argparse.Namespace) -> dict:
    run = out / f"sft-{device}"
    wall = _agent(["train", "sft", "--data", str(data), "--model", str(model), "--out", str(run),
                   "--max-steps", str(args.sft_steps), "--batch-size", str(args.batch_size),
                   "--lr", "5e-4", "--no-evaluate", "--save-steps", str(10 * args.sft_steps),
                   "--logging-steps", "5", "--seed", "0"],
                  _device_env(device, args.cpu_threads))  # fmt: skip
    m = json.loads((run / "sft_metrics.json").read_text())
    runtime = m["train_runtime_s"]
    return {
        "steps": m["global_step"],
        "tokens": m["tokens"],
        "train_runtime_s": runtime,
        "tokens_per_s": m["tokens"] / runtime,
        "steps_per_s": m["global_step"] / runtime,
        "step_time_s": m.get("step_time_s"),
        "final_loss": m.get("final_loss"),
        "wall_s": wall,
    }


def bench_rl(algo: str, device: str, model: Path, out: Path, args: argparse.Namespace) -> dict:
    run = out / f"rl-{algo}-{device}"
    group = str(args.group if algo == "grpo" else 1)
    wall = _agent(["train", "rl", *ENV, "--model", str(model), "--out", str(run), "--algo", algo,
                   "--max-steps", str(args.rl_updates), "--episodes-per-update", str(args.episodes),
                   "--group-size", group, "--concurrency", str(args.episodes),
                   "--minibatch-size", str(args.episodes), "--ppo-epochs", "1", "--lr", "1e-5",
                   "--max-new-tokens", str(args.max_new_tokens), "--save-every", str(10 * args.rl_updates),
                   "--eval-every", str(10 * args.rl_updates), "--no-eval-at-start", "--seed", "0"],
                  _device_env(device, args.cpu_threads))  # fmt: skip
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    timed = rows[1:] or rows  # the first update carries the start-up costs
    seconds = sum(r["seconds"] for r in timed)
    return {
        "updates": len(rows),
        "timed_updates": len(timed),
        "seconds": seconds,
        "updates_per_s": len(timed) / seconds,
        "episodes_per_s": args.episodes * len(timed) / seconds,
        "generated_tokens_per_s": sum(r["rollout_tokens"] for r in timed) / seconds,
        "trained_tokens_per_s": sum(r["tokens_trained"] for r in timed) / seconds,
        "first_update_s": rows[0]["seconds"],
        "wall_s": wall,
    }


FIGURES = (
    ("sft", "tokens_per_s", "SFT trained tokens/s"),
    ("sft", "steps_per_s", "SFT optimizer steps/s"),
    ("rl-ppo", "updates_per_s", "PPO updates/s"),
    ("rl-ppo", "episodes_per_s", "PPO episodes/s"),
    ("rl-ppo", "generated_tokens_per_s", "PPO generated tokens/s"),
    ("rl-grpo", "updates_per_s", "GRPO updates/s"),
    ("rl-grpo", "episodes_per_s", "GRPO episodes/s"),
    ("rl-grpo", "generated_tokens_per_s", "GRPO generated tokens/s"),
)


def table_rows(results: dict[str, dict[str, dict]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the report: one row per figure, one column per device, CUDA / CPU last."""
    devices = list(results)
    header = ["figure", *devices] + (["cuda / cpu"] if {"cpu", "cuda"} <= set(devices) else [])
    rows = []
    for stage, key, label in FIGURES:
        cells = [label]
        for d in devices:
            cells.append(f"{results[d][stage][key]:,.2f}")
        if len(header) > len(devices) + 1:
            cells.append(f"{results['cuda'][stage][key] / results['cpu'][stage][key]:.1f}x")
        rows.append(cells)
    for stage, label in (("sft", "SFT"), ("rl-ppo", "PPO"), ("rl-grpo", "GRPO")):
        rows.append([f"{label} process wall s", *(f"{results[d][stage]['wall_s']:.1f}" for d in devices)])
    return header, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=None,
                    help="default: cuda and cpu where a GPU is visible, else cpu")  # fmt: skip
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--expert-episodes", type=int, default=512)
    ap.add_argument("--sft-steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rl-updates", type=int, default=4)
    ap.add_argument("--episodes", type=int, default=32, help="episodes per RL update")
    ap.add_argument("--group", type=int, default=8, help="GRPO group size")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--cpu-threads", type=int, default=1, help="torch threads of the CPU runs")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train_devices"))
    args = ap.parse_args(argv)
    if args.devices is None:
        import torch

        args.devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    model, data = prepare(out, args)
    results: dict[str, dict[str, dict]] = {}
    with console.status("") as status:
        for device in args.devices:
            status.update(f"{device}: agent train sft")
            results[device] = {"sft": bench_sft(device, model, data, out, args)}
            for algo in ("ppo", "grpo"):
                status.update(f"{device}: agent train rl --algo {algo}")
                results[device][f"rl-{algo}"] = bench_rl(algo, device, model, out, args)
    header, rows = table_rows(results)
    n_params = parameters(model)
    title = (f"agent train sft / rl on a from-scratch char Llama ({n_params / 1e6:.1f}M parameters: hidden "
             f"{args.hidden}, {args.layers} layers), GP-L compact")  # fmt: skip
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h == "figure" else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    hardware = {d: _hardware(d) for d in args.devices}
    for d, h in hardware.items():
        console.print(f"{d}: {h}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "hardware": hardware,
        "parameters": n_params,
        "settings": settings,
        "results": results,
    }
    (out / "train_devices.json").write_text(json.dumps(report, indent=1) + "\n")
    md = [f"# {title}", "", f"{report['date']}; " + "; ".join(f"{d}: {h}" for d, h in hardware.items()), "",
          "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]  # fmt: skip
    md += ["| " + " | ".join(r + [""] * (len(header) - len(r))) + " |" for r in rows]
    (out / "train_devices.md").write_text("\n".join(md) + "\n")
    console.print(f"wrote {out / 'train_devices.json'} and {out / 'train_devices.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
