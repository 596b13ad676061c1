"""The multi-turn RL learner: PPO (as the paper, RL4VLM style) and GRPO updates from logged transitions.

One learner serves both ways in: episodes logged by ``agent run`` (importance ratios against the logged
behaviour log-probs) and episodes the online trainer just collected. Every model call is a transition
(prompt with its images -> reply tokens); the action log-prob is the sum of the reply's token
log-probs under the sampling temperature (the official code samples and scores at different
temperatures; we score at the one used for sampling). Mini-batches are padded batches, not the
official batch size 1 with 128 accumulation steps. Runs on plain torch, so ``accelerate launch``
(DeepSpeed/FSDP) can wrap it; on a CPU it trains tiny models in seconds.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sftrl.training.advantages import gae, group_advantages, normalize
from sftrl.training.batching import length_batches
from sftrl.training.lora import is_lora
from sftrl.training.transitions import EpisodeBatch, Transition

if TYPE_CHECKING:
    import torch


class RLConfig(BaseModel):
    """Hyper-parameters of an RL update (defaults: the paper's PPO values where it states them)."""

    model_config = ConfigDict(extra="forbid")

    algo: Literal["ppo", "grpo"] = "ppo"
    lr: float = Field(default=1e-5, gt=0)
    value_lr: float | None = Field(default=None, gt=0, description="value head learning rate (default lr*10)")
    ppo_epochs: int = Field(default=4, ge=1)
    minibatch_size: int = Field(default=8, ge=1)
    minibatch_order: Literal["random", "length"] = Field(
        default="random",
        description="mini-batches of random transitions (standard PPO) or of transitions of similar length "
        "(same number of mini-batches, in random order; later attempts carry the earlier ones, so random "
        "mini-batches pad to ~1.6x their tokens)",
    )
    micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="transitions per forward/backward pass: each mini-batch's gradient is accumulated "
        "over micro-batches of similar length before its one optimizer step, which bounds activation "
        "memory and leaves the update as it is (default: the whole mini-batch in one pass)",
    )
    clip: float = Field(default=0.1, gt=0)
    ratio: Literal["sequence", "token"] = Field(
        default="sequence",
        description="PPO importance ratio per reply (the paper's: a reply is one action) or per token "
        "(each token clipped on its own, the reply's advantage on every token; as GRPO always does)",
    )
    loss_agg: Literal["reply", "token"] = Field(
        default="reply",
        description="how a mini-batch's token losses are averaged: over each reply's tokens, then over "
        "the replies (every model call weighs the same), or over all its tokens at once (a long reply "
        "weighs more; TRL's loss_type='dapo', verl's token-mean). Token-level ratios only: GRPO, or PPO "
        "with --ratio token",
    )
    gamma: float = Field(default=0.9, ge=0, le=1)
    lam: float = Field(default=0.95, ge=0, le=1)
    vf_coef: float = Field(default=0.5, ge=0)
    ent_coef: float = Field(default=0.01, ge=0)
    kl_coef: float = Field(default=0.0, ge=0, description="GRPO: KL penalty to the initial model")
    max_grad_norm: float = Field(default=1.0, gt=0)
    normalize_advantages: bool = True
    logprob_tolerance: float = Field(
        default=0.05, ge=0, description="largest mean |trainer - rollout| token log-prob gap accepted"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _token_loss_needs_token_ratios(self) -> RLConfig:
        if self.loss_agg == "token" and self.algo == "ppo" and self.ratio == "sequence":
            raise ValueError(
                "--loss-agg token averages per-token losses: it needs --algo grpo or --ratio token "
                "(a sequence-level PPO ratio gives one loss per reply)"
            )
        return self


@dataclass
class Scored:
    """The learner's view of a batch of transitions (one row each)."""

    logprobs: torch.Tensor
    """[B, C] token log-probs of the completion tokens (0 on padding)."""
    mask: torch.Tensor
    """[B, C] 1 for real completion tokens."""
    entropy: torch.Tensor
    """[B, C] token entropies of the (temperature-scaled) distribution."""
    values: torch.Tensor | None
    """[B] value estimates of the prompts (PPO)."""


TOKEN_ALIGNED_KEYS = ("mm_token_type_ids",)
"""Encoder outputs holding one value per prompt token (padded like ``input_ids``, not concatenated)."""

Encoder = Callable[[Transition], dict[str, Any]]
"""Maps a transition's prompt to model inputs: ``input_ids`` (list[int]) plus optional image tensors."""


class LogprobMismatchError(RuntimeError):
    """Recomputed log-probs disagree with the rollout's: an update would be off-policy garbage."""


def actor_critic(policy: Any, with_value: bool, seed: int = 0) -> Any:
    """One ``nn.Module`` holding the policy and (PPO) its value head, so ``accelerate`` (DeepSpeed,
    FSDP, DDP) prepares a single model. ``forward`` returns the policy's logits and the values read
    from the last hidden state at each row's ``value_index`` (the prompt's last token). The value head's
    initial weights depend on ``seed`` alone (every rank, every process draws the same ones)."""
    import torch

    class ActorCritic(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.policy = policy
            self.value_head: torch.nn.Linear | None = None
            if with_value:
                hidden = _hidden_size(policy)
                self.value_head = torch.nn.Linear(hidden, 1)
                # Its own generator: torch's global one holds whatever earlier jobs of this process
                # drew (``agent repro`` workers run several), and a PPO run must not depend on that.
                torch.nn.init.normal_(
                    self.value_head.weight,
                    std=1.0 / math.sqrt(hidden + 1),
                    generator=torch.Generator().manual_seed(seed),
                )
                torch.nn.init.zeros_(self.value_head.bias)

        def forward(
            self, value_index: torch.Tensor | None = None, **batch: Any
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
            want = self.value_head is not None and value_index is not None
            out = self.policy(**batch, output_hidden_states=want, use_cache=False)
            values = None
            if want:
                assert self.value_head is not None and value_index is not None
                last = out.hidden_states[-1]
                rows = torch.arange(last.shape[0], device=last.device)
                h = last[rows, value_index]
                # A fresh tensor, not a view: FSDP2 hooks the outputs of a sharded module for backward.
                values = self.value_head(h.to(self.value_head.weight.dtype)).float().reshape(-1).clone()
            return out.logits, values

    return ActorCritic()


def _has_vision(model: Any) -> bool:
    """Whether ``model`` is a vision-language model (its config has a vision part)."""
    return getattr(getattr(model, "config", None), "vision_config", None) is not None


def _hidden_size(model: Any) -> int:
    cfg = model.config
    for c in (cfg, getattr(cfg, "text_config", None)):
        if c is not None and getattr(c, "hidden_size", None):
            return int(c.hidden_size)
    raise ValueError("cannot find the model's hidden size for the value head")


class Learner:
    """Scores transitions with the current model and applies PPO or GRPO updates."""

    def __init__(
        self,
        model: Any,
        encode: Encoder,
        config: RLConfig,
        *,
        pad_token_id: int = 0,
        ref_model: Any = None,
        accelerator: Any = None,
        suppressed_token_ids: Sequence[int] = (),
        fsdp: bool = False,
        checkpointing: bool = False,
    ) -> None:
        import torch

        if checkpointing:
            # Keep each block's input only and recompute the block in backward. Non-reentrant: composes
            # with DDP, FSDP2 and LoRA (no input needs requires_grad). Active only with gradients in
            # train mode: in updates, not while sampling or scoring.
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:  # older transformers (5.18, the declared minimum) name it so
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.model = model
        self.fsdp = fsdp
        # Tokens the sampler never emits (e.g. image placeholders): excluded here too, so the scored
        # distribution is the sampled one.
        self.suppressed = sorted(set(suppressed_token_ids))
        self.encode = encode
        self.cfg = config
        self.pad_token_id = pad_token_id
        self.ref_model = ref_model
        module = actor_critic(model, with_value=config.algo == "ppo", seed=config.seed)
        if accelerator is None:
            from accelerate import Accelerator

            accelerator = Accelerator()
        self.accelerator = accelerator
        if config.micro_batch_size is not None and accelerator.distributed_type == "DEEPSPEED":
            # accelerate's DeepSpeed backward steps the engine itself, by its own accumulation count.
            raise ValueError(
                "--micro-batch-size accumulates gradients over several backward passes, which DeepSpeed "
                "runs by its own config: set gradient_accumulation_steps there, or drop the option"
            )
        if fsdp:
            from sftrl.training.fsdp import shard

            # accelerate's bf16 autocast wraps only models it prepares: under --fsdp the all-gathers
            # cast instead (fp32 masters, bf16 compute, fp32 gradient reduction).
            compute = torch.bfloat16 if str(accelerator.mixed_precision) == "bf16" else None
            shard(module, accelerator.device.type, compute)  # new parameters: the optimizer comes after
            if ref_model is not None:
                # GRPO's frozen reference: sharded alike (it is as large as the policy), so its passes
                # are collectives too (``_in_step`` lines them up).
                shard(ref_model, accelerator.device.type, compute)
        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        if module.value_head is not None:
            groups.append(
                {"params": list(module.value_head.parameters()), "lr": config.value_lr or config.lr * 10}
            )
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=0.0)
        if accelerator.ddp_handler is None and _has_vision(model):
            from accelerate.utils import DistributedDataParallelKwargs

            # VLMs hold parameters no forward reaches (LLaVA-style towers read the second-to-last
            # vision layer: the tower's final norm gets no gradient), on which DDP stops; transformers'
            # Trainer turns this on by default for the same reason. Text models skip its extra pass.
            accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
        if fsdp:
            # Sharded already: accelerate would wrap it for DDP on top (its own FSDP is GPU-only).
            self.module, self.optimizer = module, accelerator.prepare(optimizer)
        else:
            # Under `accelerate launch` this wraps for DDP / DeepSpeed ZeRO; on one CPU it is a no-op.
            self.module, self.optimizer = accelerator.prepare(module, optimizer)
        self.rng = random.Random(config.seed)
        self.updates = 0
        self._encoded: dict[int, dict[str, Any]] = {}
        self.tokens_trained = 0
        """Real (non-padding) tokens through forward+backward passes so far."""
        self.tokens_scored = 0
        """Real tokens through forward-only passes (consistency checks, values, reference model)."""

    @property
    def value_head(self) -> Any:
        return self.accelerator.unwrap_model(self.module).value_head

    # -- scoring -----------------------------------------------------------------------------------
    def _encoding(self, t: Transition) -> dict[str, Any]:
        key = id(t)
        if key not in self._encoded:
            self._encoded[key] = self.encode(t)
        return self._encoded[key]

    def _batches(self, items: Sequence[Transition], rng: random.Random | None = None) -> list[list[int]]:
        """Index mini-batches of ``items`` of similar length (``rng`` None: forward-only passes, of
        ``micro_batch_size`` where set: no gradient to accumulate, only the memory bound matters)."""
        lengths = [len(self._encoding(t)["input_ids"]) + len(t.completion_ids) for t in items]
        size = (
            self.cfg.minibatch_size
            if rng is not None
            else self.cfg.micro_batch_size or self.cfg.minibatch_size
        )
        return length_batches(lengths, size, rng)

    def _micro(self, idx: list[int] | None, items: Sequence[Transition]) -> list[list[int] | None]:
        """The forward/backward passes of mini-batch ``idx`` (None: this process has none in this
        step): one, or with ``micro_batch_size`` chunks of similar length, padded with idle passes to
        the most any process has (each backward is a collective under DDP/FSDP)."""
        size = self.cfg.micro_batch_size
        if size is None:
            return [idx]
        if idx is None:
            return self._in_step([])
        by_length = sorted(
            idx, key=lambda i: len(self._encoding(items[i])["input_ids"]) + len(items[i].completion_ids)
        )
        return self._in_step(_chunks(by_length, size))

    def _inputs(self, items: Sequence[Transition]) -> tuple[dict[str, Any], list[int], int]:
        """A right-padded batch of prompt+completion ids, image tensors concatenated along dim 0."""
        import torch

        encs = [self._encoding(t) for t in items]
        seqs = [list(e["input_ids"]) + list(t.completion_ids) for e, t in zip(encs, items, strict=True)]
        prompt_lens = [len(e["input_ids"]) for e in encs]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            attn[i, : len(s)] = 1
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": attn}
        for k in TOKEN_ALIGNED_KEYS:
            if any(k in e for e in encs):
                # Per-token ids (e.g. which tokens are image tokens): 0 for completion and padding.
                aligned = torch.zeros((len(seqs), width), dtype=torch.long)
                for i, e in enumerate(encs):
                    if k in e:
                        aligned[i, : len(e[k])] = torch.tensor(list(e[k]), dtype=torch.long)
                batch[k] = aligned
        extra_keys = sorted({k for e in encs for k in e if k != "input_ids" and k not in TOKEN_ALIGNED_KEYS})
        for k in extra_keys:
            parts = [e[k] for e in encs if k in e and e[k] is not None]
            if parts:
                batch[k] = torch.cat(parts, dim=0)
        max_c = max((len(t.completion_ids) for t in items), default=0)
        return batch, prompt_lens, max_c

    def score(self, items: Sequence[Transition], *, model: Any = None, with_values: bool = True) -> Scored:
        """Token log-probs, entropies (and values) of ``items`` under ``model`` (default: the policy)."""
        import torch

        batch, prompt_lens, max_c = self._inputs(items)
        # Compute accounting (FLOP budgets): real tokens through a pass with / without gradients.
        real = int(batch["attention_mask"].sum())
        if torch.is_grad_enabled():
            self.tokens_trained += real
        else:
            self.tokens_scored += real
        want_hidden = with_values and self.value_head is not None and model is None
        device = self.accelerator.device
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        if model is None:
            index = torch.tensor([p - 1 for p in prompt_lens], device=device) if want_hidden else None
            logits, values_t = self.module(value_index=index, **batch)
        else:
            logits = model(**batch, use_cache=False).logits
            values_t = None
        b = len(items)
        logprobs = torch.zeros((b, max_c), dtype=torch.float32, device=device)
        entropy = torch.zeros((b, max_c), dtype=torch.float32, device=device)
        mask = torch.zeros((b, max_c), dtype=torch.float32, device=device)
        values = torch.zeros(b, dtype=torch.float32) if want_hidden else None
        rows_lp: list[torch.Tensor] = []
        rows_ent: list[torch.Tensor] = []
        for i, t in enumerate(items):
            p, c = prompt_lens[i], len(t.completion_ids)
            temp = max(t.temperature, 1e-5)
            # Logits at position j predict token j+1: the completion is predicted from p-1 .. p+c-2.
            step_logits = logits[i, p - 1 : p + c - 1].float() / temp
            if self.suppressed:
                step_logits[:, self.suppressed] = float("-inf")
            logp_all = torch.log_softmax(step_logits, dim=-1)
            target = torch.tensor(t.completion_ids, dtype=torch.long, device=logits.device)
            lp = logp_all.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            # Suppressed tokens have p = 0, log p = -inf: 0 * -inf would make the entropy (and the loss) NaN.
            ent = -(logp_all.exp() * logp_all.nan_to_num(neginf=0.0)).sum(-1)
            rows_lp.append(torch.nn.functional.pad(lp, (0, max_c - c)))
            rows_ent.append(torch.nn.functional.pad(ent, (0, max_c - c)))
            mask[i, :c] = 1.0
        if rows_lp:
            logprobs = torch.stack(rows_lp)
            entropy = torch.stack(rows_ent)
        if want_hidden:
            values = values_t
        return Scored(logprobs=logprobs, mask=mask, entropy=entropy, values=values)

    # -- consistency ------------------------------------------------------------------------------
    def logprob_gap(self, items: Sequence[Transition]) -> float:
        """Mean |trainer - rollout| token log-prob over ``items`` (before any update)."""
        import torch

        with torch.no_grad():
            scored = [(t, s.logprobs[i]) for chunk, s in self._scored(items) for i, t in enumerate(chunk)]
        return _gap(scored)

    def _scored(
        self, items: Sequence[Transition], *, with_values: bool = False
    ) -> list[tuple[list[Transition], Scored]]:
        """Forward passes over ``items`` in mini-batches of similar length: (the batch, its scores)."""
        out = []
        for idx in self._in_step(self._batches(items)):
            if idx is None:
                self._idle_pass(items, with_values=with_values)
                continue
            chunk = [items[i] for i in idx]
            out.append((chunk, self.score(chunk, with_values=with_values)))
        return out

    @contextlib.contextmanager
    def _reference(self) -> Iterator[Any]:
        """The model GRPO's KL penalty scores against: the frozen ``ref_model``, or for a LoRA policy
        without one the base model itself, i.e. the policy with its adapters off (no second copy)."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        with self.model.disable_adapter():
            yield self.model

    # -- several processes --------------------------------------------------------------------------
    def _in_step(self, batches: list[list[int]]) -> list[list[int] | None]:
        """``batches`` padded with ``None`` to the most any process has: every process then runs as
        many passes (DDP and FSDP synchronize in each), though multi-turn episodes give the processes
        different numbers of transitions. A ``None`` is an idle pass (:meth:`_idle_pass`)."""
        import torch

        if self.accelerator.num_processes == 1:
            return list(batches)
        local = torch.tensor([len(batches)], device=self.accelerator.device)
        most = int(self.accelerator.gather(local).max())
        return [*batches, *([None] * (most - len(batches)))]

    def _idle_pass(self, items: Sequence[Transition], *, with_values: bool, model: Any = None) -> Scored:
        """A pass over one transition whose result only feeds a zero loss, for the collectives of a
        step this process has no batch for; counted in no statistic."""
        if not items:
            raise RuntimeError("a process has no transitions to score: every process needs episodes")
        trained, scored = self.tokens_trained, self.tokens_scored
        s = self.score([items[0]], with_values=with_values, model=model)
        self.tokens_trained, self.tokens_scored = trained, scored
        return s

    def _shares(self, rows: int, tokens: int) -> tuple[float, float]:
        """This process's weights in a step's gradient: its rows (tokens) over the mean rows (tokens)
        per process. DDP and FSDP average the processes' gradients; scaled so, the average is the
        gradient of the mean loss over all rows (or, for token-averaged terms, all tokens) of the
        step, whatever each process held ((1.0, 1.0) when they hold equal shares)."""
        import torch

        world = self.accelerator.num_processes
        if world == 1:
            return 1.0, 1.0
        local = torch.tensor(
            [float(rows), float(tokens)], dtype=torch.float64, device=self.accelerator.device
        )
        total_rows, total_tokens = self.accelerator.reduce(local, reduction="sum").tolist()
        return rows * world / max(total_rows, 1.0), tokens * world / max(total_tokens, 1.0)

    def check_consistency(self, items: Sequence[Transition]) -> float:
        gap = self.logprob_gap(items)
        if gap > self.cfg.logprob_tolerance:
            raise LogprobMismatchError(_mismatch(gap, self.cfg.logprob_tolerance))
        return gap

    # -- advantages -------------------------------------------------------------------------------
    def _advantages(
        self, batch: EpisodeBatch, check: bool = False
    ) -> tuple[list[Transition], list[float], list[float], float | None]:
        """Flat transitions with their advantages, (PPO) value targets and, with ``check``, the mean
        |trainer - rollout| token log-prob gap (PPO reads it off the value pass: no extra forward)."""
        import torch

        items = batch.transitions
        if self.cfg.algo == "grpo":
            keys = [ep[0].group_key for ep in batch.episodes]
            ep_adv = group_advantages(keys, batch.returns)
            adv = [a for a, ep in zip(ep_adv, batch.episodes, strict=True) for _ in ep]
            return items, adv, [0.0] * len(items), self.logprob_gap(items) if check else None
        value_of: dict[int, float] = {}
        scored: list[tuple[Transition, torch.Tensor]] = []
        with torch.no_grad():
            for chunk, s in self._scored(items, with_values=True):
                assert s.values is not None
                for i, t in enumerate(chunk):
                    value_of[id(t)] = float(s.values[i])
                    scored.append((t, s.logprobs[i]))
        values = [value_of[id(t)] for t in items]
        adv, ret = [], []
        k = 0
        for ep in batch.episodes:
            v = values[k : k + len(ep)]
            a, r = gae([t.reward for t in ep], v, gamma=self.cfg.gamma, lam=self.cfg.lam)
            adv.extend(a)
            ret.extend(r)
            k += len(ep)
        if self.cfg.normalize_advantages:
            adv = normalize(adv, moments=self._global_moments(adv))
        return items, adv, ret, _gap(scored) if check else None

    def _global_moments(self, xs: list[float]) -> tuple[float, float, float] | None:
        """(count, sum, sum of squares) of ``xs`` over all processes (None in one process): several
        processes normalize by the whole batch's statistics, as one process would."""
        import torch

        if self.accelerator.num_processes == 1:
            return None
        local = torch.tensor(
            [len(xs), sum(xs), sum(x * x for x in xs)], dtype=torch.float64, device=self.accelerator.device
        )
        n, total, squares = self.accelerator.reduce(local, reduction="sum").tolist()
        return n, total, squares

    # -- update -----------------------------------------------------------------------------------
    def _proximal(self, items: Sequence[Transition]) -> list[torch.Tensor]:
        """Each transition's token log-probs under the model as it is before this update."""
        import torch

        lp: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for chunk, s in self._scored(items):
                lp.update(
                    (id(t), s.logprobs[j, : len(t.completion_ids)].clone()) for j, t in enumerate(chunk)
                )
        return [lp[id(t)] for t in items]

    def _loss_terms(
        self,
        idx: list[int],
        items: Sequence[Transition],
        adv: list[float],
        ret: list[float],
        prox: list[torch.Tensor],
        is_w: list[torch.Tensor],
        ref_lp: dict[int, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], int]:
        """One pass over transitions ``idx``: its loss terms, each its mean over these transitions
        (over their tokens for token-averaged terms), and its number of real completion tokens."""
        import torch

        cfg = self.cfg
        per_token = cfg.algo == "grpo" or cfg.ratio == "token"
        chunk = [items[i] for i in idx]
        s = self.score(chunk, with_values=cfg.algo == "ppo")
        old = torch.zeros_like(s.logprobs)
        # Truncated importance weights (async only): per token or per reply, as the ratios.
        weight = torch.ones_like(s.logprobs if per_token else s.logprobs[:, 0])
        for j, t in enumerate(chunk):
            c = len(t.completion_ids)
            if prox:
                old[j, :c] = prox[idx[j]]
                if per_token:
                    weight[j, :c] = is_w[idx[j]]
                else:
                    weight[j] = is_w[idx[j]][0]
            elif t.behaviour_logprobs is not None:
                old[j, :c] = torch.tensor(t.behaviour_logprobs, dtype=torch.float32)
            else:
                old[j, :c] = s.logprobs[j, :c].detach()
        dev = s.logprobs.device
        a = torch.tensor([adv[i] for i in idx], dtype=torch.float32, device=dev)
        if cfg.algo == "ppo":
            if cfg.ratio == "token":
                w_tok = weight if prox else None
                pg, clipped, approx_kl = _token_surrogate(s, old, a, w_tok, cfg.clip, cfg.loss_agg)
            else:
                # Action = the whole reply: its log-prob is the sum of its token log-probs.
                new_lp = (s.logprobs * s.mask).sum(-1)
                old_lp = (old * s.mask).sum(-1)
                ratio = torch.exp((new_lp - old_lp).clamp(-20, 20))
                surrogate = torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a)
                pg = -(surrogate * weight).mean() if prox else -surrogate.mean()
                clipped = ((ratio - 1).abs() > cfg.clip).float().mean()
                approx_kl = (old_lp - new_lp).mean()
            assert s.values is not None
            r = torch.tensor([ret[i] for i in idx], dtype=torch.float32, device=dev)
            v_loss = 0.5 * (s.values - r).pow(2).mean()
            kl = torch.zeros((), device=dev)
        else:
            # GRPO: token-level clipped ratios, the episode's group advantage on every token.
            pg, clipped, approx_kl = _token_surrogate(
                s, old, a, weight if prox else None, cfg.clip, cfg.loss_agg
            )
            v_loss = torch.zeros((), device=dev)
            kl = torch.zeros((), device=dev)
            if ref_lp:
                ref = torch.stack(
                    [
                        torch.nn.functional.pad(ref_lp[i], (0, s.logprobs.shape[1] - ref_lp[i].shape[0]))
                        for i in idx
                    ]
                )
                d = ref - s.logprobs
                # k3 estimator of KL(policy || reference): unbiased and always >= 0.
                k3 = torch.exp(d) - d - 1
                kl = _aggregate(k3, s.mask, cfg.loss_agg)
        terms = {
            "policy_loss": pg,
            "value_loss": v_loss,
            "entropy": _aggregate(s.entropy, s.mask, cfg.loss_agg),
            "kl": kl,
            "clip_fraction": clipped,
            "approx_kl": approx_kl,
        }
        return terms, int(s.mask.sum())

    def update(
        self, batch: EpisodeBatch, *, is_cap: float | None = None, check: bool = False
    ) -> dict[str, float]:
        """One RL update (``ppo_epochs`` passes over shuffled mini-batches) from ``batch``.

        ``check``: first compare the model's token log-probs with the logged ones (``logprob_gap`` in
        the result) and raise :class:`LogprobMismatchError` before any step when they differ by more
        than ``logprob_tolerance`` (the data was not sampled by this model).

        ``is_cap`` None: the ratios are taken against the logged behaviour log-probs (on-policy data,
        or logs read offline). ``is_cap`` set (asynchronous rollouts, data sampled by an older
        version): decoupled PPO as TRL's vLLM importance-sampling correction does it - the ratios are
        taken against the model before this update (the "old" / proximal policy) and the loss is
        weighted by the truncated importance weight ``min(exp(old - behaviour), is_cap)`` (per token
        for GRPO, per reply for PPO); the weight statistics replace the log-prob consistency check.
        """
        import torch

        cfg = self.cfg
        # Ratios (and async importance weights) per token: GRPO always, PPO with ratio="token".
        per_token = cfg.algo == "grpo" or cfg.ratio == "token"
        trained0, scored0 = self.tokens_trained, self.tokens_scored
        self.module.train()
        items, adv, ret, gap = self._advantages(batch, check=check)
        if gap is not None and gap > cfg.logprob_tolerance:
            raise LogprobMismatchError(_mismatch(gap, cfg.logprob_tolerance))
        prox: list[torch.Tensor] = []
        is_w: list[torch.Tensor] = []
        is_stats: dict[str, float] = {}
        if is_cap is not None:
            prox = self._proximal(items)
            gap_sum, gap_n, seen = 0.0, 0, []
            for t, p in zip(items, prox, strict=True):
                if t.behaviour_logprobs is None:
                    log_w = torch.zeros_like(p)  # no logged log-probs: treated as on-policy
                else:
                    log_w = p - torch.tensor(t.behaviour_logprobs, dtype=torch.float32, device=p.device)
                gap_sum += float(log_w.abs().sum())
                gap_n += len(t.completion_ids)
                if not per_token:
                    w = torch.exp(log_w.sum().clamp(-20, 20)).reshape(1)
                else:
                    w = torch.exp(log_w.clamp(-20, 20))
                seen.append(w)
                is_w.append(w.clamp(max=is_cap))
            raw = torch.cat(seen) if seen else torch.ones(1)
            is_stats = {
                "is_weight_mean": float(raw.clamp(max=is_cap).mean()),
                "is_weight_max": float(raw.max()),
                "is_capped_fraction": float((raw > is_cap).float().mean()),
                "logprob_gap": gap_sum / max(gap_n, 1),
            }
        # Transitions whose advantage is 0 teach nothing (a GRPO group whose episodes all got the same
        # return): reported so that an update without any signal is visible, not a silent no-op.
        zero_adv = sum(1 for a in adv if abs(a) < 1e-8) / max(len(adv), 1)
        ref_lp: dict[int, torch.Tensor] = {}
        if cfg.algo == "grpo" and cfg.kl_coef > 0 and (self.ref_model is not None or is_lora(self.model)):
            with torch.no_grad(), self._reference() as ref:
                for chunk in self._in_step(self._batches(items)):
                    if chunk is None:
                        self._idle_pass(items, with_values=False, model=ref)
                        continue
                    s = self.score([items[i] for i in chunk], model=ref, with_values=False)
                    for j, i in enumerate(chunk):
                        ref_lp[i] = s.logprobs[j]
        stats: dict[str, list[float]] = {
            k: [] for k in ("policy_loss", "value_loss", "entropy", "kl", "clip_fraction", "approx_kl")
        }
        order = list(range(len(items)))
        for _ in range(cfg.ppo_epochs):
            if cfg.minibatch_order == "length":
                minibatches = self._batches(items, self.rng)
            else:
                self.rng.shuffle(order)
                minibatches = _chunks(order, cfg.minibatch_size)
            for idx in self._in_step(minibatches):
                # idx None: another process still has a mini-batch; this one joins its step (the
                # same collectives in the same order: share, passes, clipping) with zero gradients.
                rows = len(idx) if idx is not None else 0
                tokens = sum(len(items[i].completion_ids) for i in idx) if idx is not None else 0
                row_share, token_share = self._shares(rows, tokens)
                # Token-averaged terms are weighed by this process's tokens, per-reply ones by its rows.
                policy_share = token_share if cfg.loss_agg == "token" else row_share
                self.optimizer.zero_grad(set_to_none=True)
                step: dict[str, float] = dict.fromkeys(stats, 0.0)
                for micro in self._micro(idx, items):
                    if micro is None:
                        s = self._idle_pass(items, with_values=cfg.algo == "ppo")
                        zero = (s.logprobs * 0).sum() + (0 if s.values is None else (s.values * 0).sum())
                        self.accelerator.backward(zero)
                        continue
                    terms, micro_tokens = self._loss_terms(micro, items, adv, ret, prox, is_w, ref_lp)
                    # Each pass's part of the mini-batch's mean: its rows, or its tokens for terms
                    # averaged over tokens (so the accumulated gradient is the whole mini-batch's).
                    row_frac = len(micro) / rows
                    token_frac = micro_tokens / max(tokens, 1)
                    policy_frac = token_frac if cfg.loss_agg == "token" else row_frac
                    fracs = {
                        "policy_loss": policy_frac,
                        "entropy": policy_frac,
                        "kl": policy_frac,
                        "value_loss": row_frac,
                        "clip_fraction": token_frac if per_token else row_frac,
                        "approx_kl": token_frac if per_token else row_frac,
                    }
                    pg, ent, kl = terms["policy_loss"], terms["entropy"], terms["kl"]
                    loss = (pg - cfg.ent_coef * ent + cfg.kl_coef * kl) * policy_share * policy_frac
                    loss = loss + cfg.vf_coef * terms["value_loss"] * row_share * row_frac
                    self.accelerator.backward(loss)
                    for k, f in fracs.items():
                        step[k] += float(terms[k].detach()) * f
                self.accelerator.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                if idx is not None:
                    for k, v in step.items():
                        stats[k].append(v)
        self.updates += 1
        # What sampling the batch cost: each call's prompt (prefill) and reply tokens, one forward each.
        rollout_tokens = float(
            sum(len(self._encoded[id(t)]["input_ids"]) + len(t.completion_ids) for t in items)
        )
        self._encoded.clear()
        self.module.eval()
        out = {k: (sum(v) / len(v) if v else 0.0) for k, v in stats.items()}
        out["tokens"] = float(sum(len(t.completion_ids) for t in items))
        out["transitions"] = float(len(items))
        out["zero_advantage_fraction"] = zero_adv
        out["tokens_trained"] = float(self.tokens_trained - trained0)
        out["tokens_scored"] = float(self.tokens_scored - scored0)
        out["rollout_tokens"] = rollout_tokens
        out.update(is_stats)
        if gap is not None:
            out["logprob_gap"] = gap
        return out

    # -- persistence ------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Optimizer, value head and counters (the model itself is saved with ``save_pretrained``).

        Under ``fsdp`` a collective (every process calls it): the optimizer state (to the main process
        only; the others get ``{}`` for it) and the value head are gathered in full, keyed by parameter
        name, so a run resumes with any number of processes.
        """
        if self.fsdp:
            from sftrl.training.fsdp import full_optimizer_state

            optimizer = full_optimizer_state(self.module, self.optimizer.optimizer)
            head = None
            if self.value_head is not None:
                head = {k: v.full_tensor().cpu() for k, v in self.value_head.state_dict().items()}
        else:
            optimizer = self.optimizer.state_dict()
            head = self.value_head.state_dict() if self.value_head is not None else None
        return {
            "optimizer": optimizer,
            "value_head": head,
            "fsdp": self.fsdp,
            "updates": self.updates,
            "rng": self.rng.getstate(),
        }

    def save_state(self, path: Path, state: dict[str, Any] | None = None) -> None:
        """Write :meth:`checkpoint_state` (or ``state``, gathered by it on every process) to ``path``."""
        import torch

        torch.save(state if state is not None else self.checkpoint_state(), path)

    def load_state(self, path: Path) -> None:
        """Every process loads the file (under ``fsdp`` each keeps its shard, broadcast from the main
        process; the file is memory-mapped, so the others never read its optimizer state)."""
        import torch

        state = torch.load(path, weights_only=True, mmap=self.fsdp)
        if bool(state.get("fsdp", False)) != self.fsdp:
            saved = "with" if state.get("fsdp") else "without"
            raise ValueError(f"{path} was saved {saved} --fsdp: resume it {saved} --fsdp")
        if self.fsdp:
            from sftrl.training.fsdp import load_full_model_state, load_full_optimizer_state

            full = state["optimizer"] if self.accelerator.is_main_process else {}
            load_full_optimizer_state(self.module, self.optimizer.optimizer, full)
            if self.value_head is not None and state.get("value_head") is not None:
                head = {f"value_head.{k}": v for k, v in state["value_head"].items()}
                load_full_model_state(self.module, head)
        else:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.value_head is not None and state.get("value_head") is not None:
                self.value_head.load_state_dict(state["value_head"])
        self.updates = int(state["updates"])
        self.rng.setstate(state["rng"])

    def full_policy_state(self, everyone: bool = True) -> dict[str, Any]:
        """``fsdp``: the policy model's full weights (its own parameter names) for the full copy that
        samples, is pushed and is saved; a collective. ``everyone`` False: on the main process only."""
        from sftrl.training.fsdp import full_model_state

        prefix = "policy."
        state = full_model_state(self.module, everyone)
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _aggregate(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Mean of per-token ``x`` [B, C] over the real tokens: each row's mean, then over rows
    (``reply``), or over all tokens at once (``token``)."""
    if how == "token":
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return ((x * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def _token_surrogate(
    s: Scored,
    old: torch.Tensor,
    adv: torch.Tensor,
    weight: torch.Tensor | None,
    clip: float,
    how: str = "reply",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-level clipped surrogate (each reply's advantage on each of its tokens, averaged as
    ``how`` says, see :func:`_aggregate`): policy loss, clipped-token fraction, approximate KL."""
    import torch

    ratio = torch.exp((s.logprobs - old).clamp(-20, 20))
    at = adv.unsqueeze(-1)
    tok = -torch.min(ratio * at, ratio.clamp(1 - clip, 1 + clip) * at)
    if weight is not None:
        tok = tok * weight
    pg = _aggregate(tok, s.mask, how)
    real = s.mask.sum().clamp(min=1)
    clipped = (((ratio - 1).abs() > clip).float() * s.mask).sum() / real
    approx_kl = ((old - s.logprobs) * s.mask).sum() / real
    return pg, clipped, approx_kl


def _gap(scored: Sequence[tuple[Transition, torch.Tensor]]) -> float:
    """Mean |scored - logged| token log-prob over (transition, its scored token log-probs) pairs."""
    import torch

    gaps, n = 0.0, 0
    for t, lp in scored:
        if t.behaviour_logprobs is None:
            continue
        c = len(t.completion_ids)
        old = torch.tensor(t.behaviour_logprobs, dtype=torch.float32, device=lp.device)
        gaps += float((lp[:c] - old).abs().sum())
        n += c
    return gaps / max(n, 1)


def _mismatch(gap: float, tolerance: float) -> str:
    return (
        f"trainer log-probs differ from the rollout's by {gap:.4f} nats/token on average "
        f"(tolerance {tolerance}): the logged episodes were not sampled by this "
        "model, with this chat template, or at the logged temperature"
    )


def _chunks(xs: list[Any], n: int) -> list[list[Any]]:
    return [xs[i : i + n] for i in range(0, len(xs), n)]
