"""Rollout backends side by side: ``agent run --policy hf`` vs ``--policy vllm-offline`` (vLLM's CPU build).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_rollout_backends.py [--episodes 32 --concurrency 16
--max-new-tokens 32 --kinds char text --temperatures 0 1]``. Needs ``.venv-vllm``
(``bash .ci/vllm_venv.sh``): the vLLM rows run ``python -m sftrl run`` with that venv's python (a
second process, ``PYTHONPATH`` = this checkout), the hf rows with this interpreter. Every row runs the
same tiny random-weight model (``agent tiny-model --kind char|text``), the same GP-L compact episodes
(``--prompt-style compact --verify-iter 3``, same run seed → same hands), concurrency, reply length,
``--logprobs`` (what RL needs) and sampling seed; rows differ only in the backend and the temperature.

Reported per row: the process wall time (imports, model/engine load included), the episode-loop time
(first episode start → last episode end, from ``episodes.jsonl``: the rollouts themselves), episodes/s
and generated tokens/s over that loop, and the ratio vllm-offline / hf of tokens/s (> 1: vLLM faster).
A random model never answers correctly, so every episode uses all its attempts and every reply with
greedy decoding runs to ``--max-new-tokens``; the token counts come from each reply's ``usage``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def _env(tmp: Path) -> dict[str, str]:
    """Environment of both runs: one OpenMP thread, offline; vLLM: 1 GiB KV cache, loopback, own TMPDIR."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        PYTHONPATH=str(REPO),
        TMPDIR=str(tmp),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_HOST_IP="127.0.0.1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
    )
    return env


def run(
    backend: str, model: Path, temperature: float, out: Path, args: argparse.Namespace
) -> dict[str, float]:
    python = str(VLLM_PYTHON) if backend == "vllm-offline" else sys.executable
    cmd = [python, "-m", "sftrl", "run", "--env", "gp", "--prompt-style", "compact", "--verify-iter", "3"]
    cmd += ["--policy", backend, "--model", str(model), "--out", str(out), "--episodes", str(args.episodes)]
    cmd += ["--concurrency", str(args.concurrency), "--max-new-tokens", str(args.max_new_tokens)]
    cmd += ["--temperature", str(temperature), "--sampling-seed", "0", "--seed", "0", "--logprobs"]
    cmd += ["--json", "--quiet"]
    if backend == "vllm-offline":
        cmd += ["--policy-option", "dtype=float32", "--policy-option", "max_model_len=1024"]
        cmd += ["--policy-option", "enforce_eager=true"]
    tmp = out.parent / f"{out.name}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp), cwd=REPO, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{backend} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    if summary["errors"]:
        raise SystemExit(f"{backend}: {summary['errors']} episodes failed, see {out}/episodes.jsonl")

    from sftrl.agents.trajectory import read_episodes

    records = read_episodes(out)
    start = min(r.started_at for r in records)
    loop = max(r.started_at + r.duration_s for r in records) - start
    tokens = sum(t.reply.usage["completion_tokens"] for r in records for t in r.turns)
    calls = sum(len(r.turns) for r in records)
    return {
        "wall_s": wall,
        "loop_s": loop,
        "episodes": len(records),
        "calls": calls,
        "tokens": tokens,
        "episodes_per_s": len(records) / loop,
        "tokens_per_s": tokens / loop,
        "mean_reward": float(summary["mean_reward"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", choices=("char", "text"), default=["char", "text"])
    ap.add_argument("--temperatures", nargs="+", type=float, default=[0.0, 1.0])
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rollout_backends"))
    args = ap.parse_args()
    if not VLLM_PYTHON.exists():
        raise SystemExit(f"{VLLM_PYTHON} not found: build the vLLM venv with `bash .ci/vllm_venv.sh`")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    from sftrl.cli import main as agent

    results: dict[str, dict[str, float]] = {}
    for kind in args.kinds:
        model = args.out / kind
        built = (model / "config.json").exists()
        if not built and agent(["tiny-model", "--kind", kind, "--out", str(model), "--overwrite"]) != 0:
            raise SystemExit(f"agent tiny-model --kind {kind} failed")
        for temp in args.temperatures:
            for backend in ("hf", "vllm-offline"):
                key = f"{kind}|{temp:g}|{backend}"
                results[key] = run(backend, model, temp, args.out / key.replace("|", "-"), args)
                print(key, json.dumps(results[key]), flush=True)

    table = Table(
        title=f"agent run --env gp --prompt-style compact --verify-iter 3: {args.episodes} episodes, "
        f"concurrency {args.concurrency}, max {args.max_new_tokens} new tokens, --logprobs; "
        f"OMP_NUM_THREADS=1, {os.cpu_count()} CPUs"
    )
    cols = ["model", "temp", "backend", "wall s", "loop s", "calls", "tokens", "episodes/s", "tokens/s"]
    for col in [*cols, "ratio vs hf", "reward"]:
        table.add_column(col, justify="left" if col in ("model", "backend") else "right")
    for key, r in results.items():
        kind, temp, backend = key.split("|")
        base = results[f"{kind}|{temp}|hf"]
        table.add_row(
            kind,
            temp,
            backend,
            f"{r['wall_s']:.1f}",
            f"{r['loop_s']:.2f}",
            str(int(r["calls"])),
            str(int(r["tokens"])),
            f"{r['episodes_per_s']:.2f}",
            f"{r['tokens_per_s']:.0f}",
            f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x",
            f"{r['mean_reward']:.2f}",
        )
    Console(width=160).print(table)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
