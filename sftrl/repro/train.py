"""Training loops with FLOP accounting: next-token SFT (stages 0, 1, 2a), PPO and GRPO (stage 2b).

Compute is counted as the usual estimate: 6·N·tokens for a training pass (forward + backward) and
2·N·tokens for a forward-only pass (rollouts), N = the model's parameters, so arms can be matched on
training FLOPs. PPO follows the paper's setup: outcome reward per attempt from the verifier, GAE over
the episode's attempts (γ 0.9, λ 0.95), clipped ratio 0.1, a value head on the shared trunk. GRPO
replaces the critic by the group-normalised return of episodes sharing a hand.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sftrl.repro.codec import ATTEMPT_LEN, END, encode
from sftrl.repro.data import Hand, Item
from sftrl.repro.model import TinyLM
from sftrl.repro.rollout import Episode, play
from sftrl.training.advantages import gae, group_advantages, normalize

REVISION_MIX: tuple[float, float, float] = (0.7, 0.2, 0.1)
"""Probability of 0, 1 or 2 failed attempts before the expert answer in an SFT batch."""


@dataclass
class Flops:
    n_params: int
    total: float = 0.0

    def train(self, tokens: int) -> None:
        self.total += 6.0 * self.n_params * tokens

    def forward(self, tokens: int) -> None:
        self.total += 2.0 * self.n_params * tokens


def items_to_batch(items: Sequence[Item]) -> tuple[Tensor, Tensor, Tensor]:
    """(inputs, targets, loss mask): loss on the final (expert) attempt through its end mark only."""
    texts = [it.text for it in items]
    if len({len(t) for t in texts}) != 1:
        raise ValueError("items in a batch must have the same number of attempts")
    ids = torch.tensor([encode(t) for t in texts], dtype=torch.long)
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for row, it in enumerate(items):
        start = len(it.text) - ATTEMPT_LEN
        n = it.attempts[-1].index(END) + 1
        mask[row, start : start + n] = True
    # Nothing after the last end mark is learned: drop those columns (saves ~20% of the compute).
    last = int(mask.any(dim=0).nonzero().max()) + 1
    ids, mask = ids[:, :last], mask[:, :last]
    # Position t predicts token t+1.
    return ids[:, :-1], ids[:, 1:], mask[:, 1:]


def sft_loss(model: TinyLM, items: Sequence[Item]) -> tuple[Tensor, int]:
    inputs, targets, mask = items_to_batch(items)
    logits, _, _ = model(inputs)
    loss = F.cross_entropy(logits[mask], targets[mask])
    return loss, inputs.numel()


def n_wrong_for_batch(rng: random.Random, mix: Sequence[float] = REVISION_MIX) -> int:
    return rng.choices(range(len(mix)), mix)[0]


def lr_at(step: int, total: int, peak: float, warmup: int = 100, floor: float = 0.1) -> float:
    """Linear warm-up then cosine decay to ``floor``·peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def run_sft(
    model: TinyLM,
    make_item: Callable[[random.Random, int], Item],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    rng: random.Random,
    flops: Flops,
    warmup: int = 100,
    constant_lr: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    opt: torch.optim.Optimizer | None = None,
) -> torch.optim.Optimizer:
    """``steps`` SFT updates on items from ``make_item(rng, n_wrong)``; returns the optimizer to continue."""
    model.train()
    opt = opt or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr if constant_lr else lr_at(step, steps, lr, warmup)
        n_wrong = n_wrong_for_batch(rng)
        loss, tokens = sft_loss(model, [make_item(rng, n_wrong) for _ in range(batch_size)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        flops.train(tokens)
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return opt


# -- RL ----------------------------------------------------------------------------------------------


@dataclass
class RLConfig:
    algo: str = "ppo"
    lr: float = 3e-5
    episodes_per_update: int = 64
    group_size: int = 8
    """GRPO: episodes per hand (PPO samples one per hand)."""
    attempts: int = 3
    temperature: float = 1.0
    epochs: int = 2
    minibatches: int = 2
    clip: float = 0.1
    gamma: float = 0.9
    lam: float = 0.95
    vf_coef: float = 0.5


def _advantages(episodes: Sequence[Episode], cfg: RLConfig) -> tuple[list[list[float]], list[list[float]]]:
    """Per-attempt advantages and value targets (returns) of every episode."""
    advs: list[list[float]] = []
    rets: list[list[float]] = []
    if cfg.algo == "ppo":
        for ep in episodes:
            a, r = gae(ep.rewards, ep.values, gamma=cfg.gamma, lam=cfg.lam)
            advs.append(a)
            rets.append(r)
        flat = normalize([a for row in advs for a in row])
        it = iter(flat)
        advs = [[next(it) for _ in row] for row in advs]
        return advs, rets
    keys = [ep.hand.ranks for ep in episodes]
    returns = [sum(ep.rewards) for ep in episodes]
    group = group_advantages(keys, returns)
    return [[g] * len(ep.rewards) for g, ep in zip(group, episodes, strict=True)], [
        [0.0] * len(ep.rewards) for ep in episodes
    ]


def _episode_loss(
    model: TinyLM,
    episodes: Sequence[Episode],
    advs: Sequence[Sequence[float]],
    rets: Sequence[Sequence[float]],
    cfg: RLConfig,
) -> tuple[Tensor, int]:
    """Clipped policy loss (+ value loss for PPO) over episodes, batched by sequence length."""
    by_len: dict[int, list[int]] = {}
    for i, ep in enumerate(episodes):
        by_len.setdefault(len(ep.tokens), []).append(i)
    total = torch.zeros(())
    n_actions = sum(sum(ep.lengths) for ep in episodes)
    n_values = sum(len(ep.values) for ep in episodes)
    tokens = 0
    for idx in by_len.values():
        ids = torch.tensor([episodes[i].tokens for i in idx], dtype=torch.long)
        logits, values, _ = model(ids[:, :-1])
        logp_all = torch.log_softmax(logits / cfg.temperature, dim=-1)
        tokens += ids[:, :-1].numel()
        for row, i in enumerate(idx):
            ep = episodes[i]
            for t, (start, n) in enumerate(zip(ep.starts, ep.lengths, strict=True)):
                pos = torch.arange(start - 1, start - 1 + n)
                new_lp = logp_all[row, pos, ids[row, start : start + n]]
                old_lp = torch.tensor(ep.logprobs[t])
                ratio = torch.exp(new_lp - old_lp)
                adv = advs[i][t]
                pg = -torch.minimum(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv)
                total = total + pg.sum() / n_actions
                if cfg.algo == "ppo":
                    total = total + cfg.vf_coef * (values[row, start - 1] - rets[i][t]) ** 2 / n_values
    return total, tokens


def rl_update(
    model: TinyLM,
    opt: torch.optim.Optimizer,
    hands: Sequence[Hand],
    cfg: RLConfig,
    generator: torch.Generator,
    flops: Flops,
) -> dict[str, float]:
    """One RL iteration: roll out ``hands`` (with revision), then ``epochs`` passes of minibatch updates."""
    episodes, n_tok = play(
        model, hands, attempts=cfg.attempts, temperature=cfg.temperature, generator=generator
    )
    flops.forward(n_tok)
    advs, rets = _advantages(episodes, cfg)
    model.train()
    order = list(range(len(episodes)))
    opt.param_groups[0]["lr"] = cfg.lr  # the policy; a separate value-head group keeps its own lr
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(order), generator=generator).tolist()
        size = math.ceil(len(perm) / cfg.minibatches)
        for k in range(0, len(perm), size):
            sel = perm[k : k + size]
            loss, tokens = _episode_loss(
                model, [episodes[i] for i in sel], [advs[i] for i in sel], [rets[i] for i in sel], cfg
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            flops.train(tokens)
    n = len(episodes)
    return {
        "success": sum(ep.success for ep in episodes) / n,
        "first_success": sum(ep.first_success for ep in episodes) / n,
        "reward": sum(sum(ep.rewards) for ep in episodes) / n,
    }


# -- evaluation --------------------------------------------------------------------------------------


def evaluate(
    model: TinyLM, hands: Sequence[Hand], *, attempts: int = 3, chunk: int = 256
) -> list[dict[str, bool]]:
    """Greedy play of each hand (deterministic): per-hand success within ``attempts`` and at attempt 1."""
    out: list[dict[str, bool]] = []
    for k in range(0, len(hands), chunk):
        episodes, _ = play(model, hands[k : k + chunk], attempts=attempts, greedy=True)
        out.extend({"success": ep.success, "first": ep.first_success} for ep in episodes)
    return out
