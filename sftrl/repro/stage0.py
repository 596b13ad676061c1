"""Stage 0: train the tiny "foundation model" from scratch on the general curriculum (no GP episode).

The learning rate depends only on the step (warm-up, flat, then 1/sqrt decay), so the checkpoint
saved at step k is exactly what ``--stage0-steps k`` rebuilds. Run directly to rebuild the shipped
checkpoint: ``python -m sftrl.repro.stage0 --steps N --out sftrl/repro/data/stage0.pt``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sftrl.repro.data import stage0_eval_hands, stage0_item
from sftrl.repro.model import ModelConfig, TinyLM
from sftrl.repro.train import Flops, evaluate, items_to_batch, n_wrong_for_batch

SHIPPED = Path(__file__).parent / "data" / "stage0.pt"


def stage0_lr(step: int, peak: float = 1e-3, warmup: int = 200, flat: int = 1500) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < flat:
        return peak
    return peak * math.sqrt(flat / step)


def build_stage0(
    *,
    steps: int,
    out: Path,
    seed: int = 0,
    batch_size: int = 64,
    peak_lr: float = 1.5e-3,
    eval_every: int = 500,
    n_eval: int = 200,
    model_cfg: ModelConfig | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[int], None] | None = None,
) -> tuple[TinyLM, dict[str, object]]:
    """Train ``steps`` updates, evaluating and checkpointing every ``eval_every`` steps (and at the end)."""
    torch.manual_seed(seed)
    model = TinyLM(model_cfg)
    rng = random.Random(seed)
    flops = Flops(model.n_params())
    hands = stage0_eval_hands(n_eval)
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.01, betas=(0.9, 0.98))
    history: list[dict[str, float]] = []
    t0 = time.time()
    loss_avg = 0.0
    meta: dict[str, object] = {}
    model.train()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = stage0_lr(step - 1, peak_lr)
        n_wrong = n_wrong_for_batch(rng)  # one revision depth per batch keeps sequences equally long
        inputs, targets, mask = items_to_batch([stage0_item(rng, n_wrong) for _ in range(batch_size)])
        logits, _, _ = model(inputs)
        loss = F.cross_entropy(logits[mask], targets[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        flops.train(inputs.numel())
        loss_avg = 0.98 * loss_avg + 0.02 * float(loss.detach()) if step > 1 else float(loss.detach())
        if on_step is not None:
            on_step(step)
        if step % eval_every == 0 or step == steps:
            res = evaluate(model, hands, attempts=1)
            acc = sum(r["success"] for r in res) / len(res)
            history.append(
                {
                    "step": step,
                    "loss": loss_avg,
                    "task_success": acc,
                    "flops": flops.total,
                    "seconds": time.time() - t0,
                }
            )
            meta = {
                "steps": step,
                "seed": seed,
                "batch_size": batch_size,
                "peak_lr": peak_lr,
                "flops": flops.total,
                "task_success": acc,
                "history": history,
                "command": f"python -m sftrl.repro.stage0 --steps {step} --seed {seed} "
                f"--batch-size {batch_size} --lr {peak_lr}",
            }
            model.save(out, **meta)
            log(json.dumps(history[-1]))
    return model, meta


def main(argv: list[str] | None = None) -> int:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=6500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--out", type=Path, default=SHIPPED)
    ns = ap.parse_args(argv)
    build_stage0(
        steps=ns.steps,
        out=ns.out,
        seed=ns.seed,
        batch_size=ns.batch_size,
        peak_lr=ns.lr,
        eval_every=ns.eval_every,
        log=lambda m: print(m, flush=True),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
