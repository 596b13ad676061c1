"""LoRA vs full fine-tuning in the RL learner: trainable parameters and AdamW state bytes.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_lora_rl.py [--hidden 512 --layers 8 --ranks 4 16]``.
Builds a random Llama-style model from scratch (no download), wraps it as ``agent train rl`` does
(``--lora-r R`` → :func:`sftrl.training.lora.apply_lora`), builds the real PPO
:class:`~sftrl.training.rl.Learner` (its optimizer: the trainable parameters plus the full value
head), runs one backward + optimizer step on a random batch so AdamW allocates its state, and prints
the counts and bytes. A table, nothing timed.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

from rich.console import Console
from rich.table import Table


def state_bytes(optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if hasattr(v, "numel")
    )


def random_llama(hidden: int, layers: int, vocab: int) -> Any:
    """A random-weight Llama-style causal LM built from scratch (seed 0): no download."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config)


def measure(args: argparse.Namespace, rank: int | None) -> dict[str, float]:
    import torch

    from sftrl.training.lora import apply_lora, trainable_parameters
    from sftrl.training.rl import Learner, RLConfig

    policy = SimpleNamespace(model=random_llama(args.hidden, args.layers, args.vocab))
    if rank is not None:
        apply_lora(policy, rank, None, ["all-linear"], None)
    learner = Learner(policy.model, lambda t: {}, RLConfig(algo="ppo"))
    trainable, total = trainable_parameters(policy.model)
    value_head = sum(p.numel() for p in learner.value_head.parameters())
    ids = torch.randint(0, args.vocab, (2, 32))
    logits, values = learner.module(
        value_index=torch.tensor([31, 31]), input_ids=ids, attention_mask=torch.ones_like(ids)
    )
    (logits.float().mean() + values.mean()).backward()
    learner.optimizer.step()
    return {
        "total": total,
        "trainable": trainable + value_head,
        "state": state_bytes(learner.optimizer),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 16])
    args = ap.parse_args()
    rows = [("full", measure(args, None))] + [(f"LoRA r={r}", measure(args, r)) for r in args.ranks]
    full = rows[0][1]
    table = Table(
        title=f"RL learner memory: Llama {args.layers} layers x {args.hidden}, vocab {args.vocab} "
        "(PPO, value head full, AdamW fp32)"
    )
    for col in ("setup", "params", "trainable", "trainable %", "AdamW state MB", "state vs full"):
        table.add_column(col, justify="right" if col != "setup" else "left")
    for name, m in rows:
        table.add_row(
            name,
            f"{m['total'] / 1e6:.1f}M",
            f"{m['trainable'] / 1e6:.3f}M",
            f"{100 * m['trainable'] / m['total']:.2f}",
            f"{m['state'] / 2**20:.1f}",
            f"{m['state'] / full['state']:.4f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
