"""Per-process training state of the RL learner: replicated (DDP) vs sharded (``--fsdp``).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_fsdp_rl.py [--hidden 512 --layers 8 --processes 2 4]``.
For each process count it launches ``accelerate launch --multi_gpu --num_processes N`` (gloo on a
machine without GPUs) of this script's worker, which builds a random Llama-style model from scratch
(no download), the real PPO :class:`~sftrl.training.rl.Learner` with and without ``fsdp``, runs one
backward + optimizer step on a random batch (so AdamW allocates its moments) and, under ``fsdp``,
gathers the full weights into the sampling copy as ``agent train rl --fsdp`` does after each update.
Each process reports the bytes it holds of parameters, gradients and optimizer state (its shards:
``DTensor.to_local``) and of the sampling copy (fp32, and bf16 as ``--fsdp`` keeps it under
``--mixed_precision bf16``, where the shards and AdamW stay fp32); the table shows the largest
process. A second table shows what a checkpoint gathers on each process
(``Learner.checkpoint_state``: under ``fsdp`` the full optimizer state goes to the main process only)
and the bytes of GRPO's KL reference model each process holds (``--kl-coef``: sharded under
``fsdp``). Bytes, not time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench_lora_rl import random_llama
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20


def _local_bytes(tensors: list) -> int:
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def worker(args: argparse.Namespace) -> None:
    """One process of the launch: measure both layouts, append one JSON line per layout."""
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator

    from sftrl.training.rl import Learner, RLConfig

    accelerator = Accelerator(cpu=True)
    for fsdp in (False, True):
        model = random_llama(args.hidden, args.layers, args.vocab)
        copy_bytes = copy_bf16_bytes = 0
        sampler_model = sampler_bf16 = None
        if fsdp:  # what --fsdp keeps besides the shards: the full copy that samples
            sampler_model = copy_model(model)
            copy_bytes = _local_bytes(list(sampler_model.parameters()))
            sampler_bf16 = copy_model(model, torch.bfloat16)  # the copy under --mixed_precision bf16
            copy_bf16_bytes = _local_bytes(list(sampler_bf16.parameters()))
        # GRPO's KL reference (a frozen copy of the initial model), given to the learner as `agent train
        # rl --kl-coef` does: sharded under fsdp, whole under DDP. Unused by the PPO step measured here.
        reference = copy_model(model)
        learner = Learner(
            model, lambda t: {}, RLConfig(algo="ppo"), accelerator=accelerator, fsdp=fsdp, ref_model=reference
        )
        ids = torch.randint(0, args.vocab, (2, 32))
        logits, values = learner.module(
            value_index=torch.tensor([31, 31]), input_ids=ids, attention_mask=torch.ones_like(ids)
        )
        accelerator.backward(logits.float().mean() + values.mean())
        params = list(learner.module.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        learner.optimizer.step()
        moments = [v for s in learner.optimizer.optimizer.state.values() for v in s.values() if v.dim() > 0]
        if sampler_model is not None and sampler_bf16 is not None:
            full = learner.full_policy_state()  # the per-update gather
            sampler_model.load_state_dict(full)
            sampler_bf16.load_state_dict(full)
            del full
        # As `agent train rl` checkpoints: a collective under fsdp, the main process alone under DDP.
        ckpt = learner.checkpoint_state() if fsdp or accelerator.is_main_process else {}
        row = {
            "processes": dist.get_world_size(),
            "rank": dist.get_rank(),
            "layout": "fsdp" if fsdp else "ddp",
            "params": _local_bytes(params),
            "grads": _local_bytes(grads),
            "optimizer": _local_bytes(moments),
            "copy": copy_bytes,
            "copy_bf16": copy_bf16_bytes,
            "checkpoint": _state_bytes(ckpt),
            "reference": _local_bytes(list(reference.parameters())),
        }
        with open(args.worker_out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        accelerator.wait_for_everyone()


def _state_bytes(obj: Any) -> int:
    """Bytes of the tensors anywhere in a (nested) state dict."""
    if hasattr(obj, "element_size"):
        local = obj.to_local() if hasattr(obj, "to_local") else obj
        return local.numel() * local.element_size()
    if isinstance(obj, dict):
        return sum(_state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(v) for v in obj)
    return 0


def copy_model(model: Any, dtype: Any = None) -> Any:
    """A frozen deep copy (cast to ``dtype`` if given), as
    :func:`sftrl.training.async_rollouts.hf_rollout_copy` makes."""
    import copy

    clone = copy.deepcopy(model).eval()
    if dtype is not None:
        clone = clone.to(dtype)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fsdp_rl"))
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_out is not None:
        worker(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    lines = args.out / "rows.jsonl"
    lines.unlink(missing_ok=True)
    console = Console(width=max(100, Console().width))
    for n in args.processes:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n)]
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd += ["--main_process_port", str(_free_port()), __file__, "--worker-out", str(lines)]
        cmd += ["--hidden", str(args.hidden), "--layers", str(args.layers), "--vocab", str(args.vocab)]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        with console.status(f"{n} processes: DDP and FSDP learners"):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"the {n}-process launch failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    table = Table(
        title=f"RL learner state per process (PPO, Llama {args.hidden}x{args.layers}, fp32 masters, MiB)"
    )
    for col in ("processes", "layout", "params", "grads", "AdamW", "train state", "sampling copy", "total"):
        table.add_column(col, justify="right")
    table.add_column("total vs DDP", justify="right")
    summary = []
    for n in args.processes:
        by_layout = {}
        for layout in ("ddp", "fsdp"):
            mine = [r for r in rows if r["processes"] == n and r["layout"] == layout]
            worst = max(mine, key=lambda r: r["params"] + r["grads"] + r["optimizer"] + r["copy"])
            train = worst["params"] + worst["grads"] + worst["optimizer"]
            by_layout[layout] = {**worst, "train_state": train, "total": train + worst["copy"]}
            if layout == "fsdp":  # the same shards; under bf16 compute the sampling copy is bf16
                bf16 = max(mine, key=lambda r: r["params"] + r["grads"] + r["optimizer"] + r["copy_bf16"])
                train = bf16["params"] + bf16["grads"] + bf16["optimizer"]
                by_layout["fsdp, bf16"] = {
                    **bf16,
                    "layout": "fsdp, bf16",
                    "copy": bf16["copy_bf16"],
                    "train_state": train,
                    "total": train + bf16["copy_bf16"],
                }
        for layout, r in by_layout.items():
            ratio = r["total"] / by_layout["ddp"]["total"]
            table.add_row(
                str(n),
                layout,
                *(
                    f"{r[k] / MIB:.1f}"
                    for k in ("params", "grads", "optimizer", "train_state", "copy", "total")
                ),
                f"{ratio:.2f}x",
            )
            summary.append({**r, "total_vs_ddp": ratio})
    console.print(table)
    ckpt_table = Table(
        title="Checkpoint state gathered per process (Learner.checkpoint_state) and GRPO's KL reference, MiB"
    )
    for col in ("processes", "layout", "ckpt: main process", "ckpt: each other", "ckpt: all", "KL reference"):
        ckpt_table.add_column(col, justify="right")
    checkpoints = []
    for n in args.processes:
        for layout in ("ddp", "fsdp"):
            mine = [r for r in rows if r["processes"] == n and r["layout"] == layout]
            main_bytes = next(r["checkpoint"] for r in mine if r["rank"] == 0)
            others = max(r["checkpoint"] for r in mine if r["rank"] != 0)
            total = sum(r["checkpoint"] for r in mine)
            reference = max(r["reference"] for r in mine)
            ckpt_table.add_row(
                str(n), layout, *(f"{b / MIB:.1f}" for b in (main_bytes, others, total, reference))
            )
            checkpoints.append(
                {
                    "processes": n,
                    "layout": layout,
                    "main": main_bytes,
                    "others": others,
                    "all": total,
                    "reference": reference,
                }
            )
    console.print(ckpt_table)
    summary.append({"checkpoint_state_and_reference": checkpoints})
    (args.out / "fsdp_rl.json").write_text(json.dumps(summary, indent=1))
    console.print(f"wrote {args.out / 'fsdp_rl.json'}")


if __name__ == "__main__":
    main()
