"""``agent train rl --trainer trl``: TRL's ``GRPOTrainer`` fed by our own agent loop.

TRL owns the GRPO update (group advantages, clipped loss, KL, optimizer, checkpoints); the rollouts
come from :func:`sftrl.agents.loop.run_episode`, the one agent loop every run uses, through TRL's
``rollout_func`` hook. No env logic is copied: the env, verifier and feedback turns are the same
objects ``agent run`` drives.

How an episode becomes one GRPO completion:

* The dataset is a list of initial states: one row per env seed, whose ``prompt`` is the env's first
  observation. TRL hands ``rollout_func`` only the prompts (already repeated ``num_generations``
  times), so the seed is recovered from the prompt text; seeds whose first observation repeats an
  earlier one's are left out of the dataset, so the mapping is one-to-one.
* Each prompt plays one episode with the model being trained (an :class:`HFPolicy` whose model *is*
  the trainer's model). The completion is ONE token sequence: reply 1, the verifier's feedback turn
  (chat-template tokens included), reply 2, … ``env_mask`` is 1 on the tokens the model sampled and 0
  on the feedback tokens, so only the model's own tokens carry loss.
* The feedback segment is the text the chat template adds between the sequence so far and call
  *k* + 1's generation prompt (with prefix-stable templates such as Qwen2.5's: the closing
  ``<|im_end|>`` of an unfinished reply, the user turn holding the verifier's feedback, and the next
  ``<|im_start|>assistant``). When the template rewrote history instead (e.g. dropped earlier
  reasoning, or a reply held special tokens that its decoded text loses) the segment is rebuilt from
  the template's rendering of the new turn.
* The sequence keeps the tokens the model sampled, while a later call was given the re-tokenised
  text of earlier replies; a call whose input is not token-for-token the sequence before it is
  counted in ``trl/inexact_turns``: zero when every reply is the canonical tokenisation of its text
  (no special tokens) under a prefix-stable template, frequent with an untrained random model. Our
  own trainer (``--trainer sftrl``) scores every call on its exact input.
* The episode's return (sum of the verifier's rewards) reaches TRL through a reward function reading
  the ``episode_reward`` field the rollout returns; success is logged with weight 0.

What does not fit: images. On the ``rollout_func`` path TRL's forward pass only gets the dataset's
prompt images, so observations with new images every turn (GP-VL feedback, V-IRL-VL street views)
cannot be scored; vision models are refused here and trained with ``--trainer sftrl``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage
from langchain_core.tools import BaseTool

from sftrl.agents.hf_policy import to_chat
from sftrl.agents.policy import Reply, SamplingParams
from sftrl.environments.base import Observation, SftrlEnv

if TYPE_CHECKING:
    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.training.rl_train import RLRunConfig

METRICS_FILE = "metrics.jsonl"
_PROBE = "SFTRL-PROBE-REPLY"


# RLConfig options our learner uses and TRL's GRPOTrainer has no counterpart for: refused when given.
TRL_UNUSED_RL_OPTIONS = (
    "value_lr",
    "gamma",
    "lam",
    "vf_coef",
    "ent_coef",
    "logprob_tolerance",
    "normalize_advantages",
)


class TRLGRPOError(ValueError):
    """The TRL GRPO run cannot start or continue as configured (one-line message)."""


@dataclass
class EpisodeTokens:
    """One episode as a GRPO (prompt, completion) pair with TRL's ``env_mask``."""

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    """1 on tokens the model sampled, 0 on feedback (env) tokens."""
    logprobs: list[float] = field(default_factory=list)
    """Sampling log-probs of the model's tokens (0.0 on feedback tokens, which carry no loss)."""
    inexact_turns: int = 0
    """Calls after the first whose input differs from the sequence's tokens before them."""
    rollout_tokens: int = 0
    """What sampling cost: each call's input (prefill) and reply tokens (the FLOP count)."""

    def extend(self, ids: Sequence[int], mask: int, logprobs: Sequence[float] | None = None) -> None:
        self.completion_ids.extend(ids)
        self.env_mask.extend([mask] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))


@dataclass
class PolicyCall:
    """One model call of an episode: the messages and tools it was given, and the reply."""

    messages: list[BaseMessage]
    tools: list[BaseTool] | None
    reply: Reply


class RecordingPolicy:
    """Delegates to a shared policy and remembers each call of one episode (prompt, tools, reply)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.name = policy.name
        self.calls: list[PolicyCall] = []

    def describe(self) -> dict[str, Any]:
        return {**self.policy.describe(), "trainer": "trl-grpo"}

    async def generate(
        self,
        messages: Sequence[BaseMessage],
        sampling: SamplingParams,
        *,
        observation: Observation | None = None,
        tools: Sequence[BaseTool] | None = None,
    ) -> Reply:
        if tools:
            reply = await self.policy.generate(messages, sampling, observation=observation, tools=tools)
        else:
            reply = await self.policy.generate(messages, sampling, observation=observation)
        self.calls.append(PolicyCall(list(messages), list(tools) if tools else None, reply))
        return reply


def _render(policy: HFPolicy, messages: Sequence[BaseMessage], tools: Any, generation: bool) -> str:
    from sftrl.agents.tools import openai_tools

    chat, _ = to_chat(messages, policy.vision)
    schemas = openai_tools(list(tools)) if tools else None
    return str(
        policy.tokenizer.apply_chat_template(
            chat, tools=schemas, add_generation_prompt=generation, tokenize=False
        )
    )


def _turn_closure(policy: HFPolicy) -> str:
    """What the chat template writes after an assistant reply's content (Qwen: ``<|im_end|>\\n``)."""
    from langchain_core.messages import AIMessage, HumanMessage

    text = _render(policy, [HumanMessage(content="x"), AIMessage(content=_PROBE)], None, False)
    return text[text.rindex(_PROBE) + len(_PROBE) :]


def _input_ids(policy: HFPolicy, call: PolicyCall) -> list[int]:
    """The token ids the call's generation was given (the policy's own encoding)."""
    from sftrl.agents.tools import openai_tools

    chat, images = to_chat(call.messages, policy.vision)
    schemas = openai_tools(call.tools) if call.tools else None
    return list(policy.encode_chat(chat, images, schemas)["input_ids"])


def _ids(policy: HFPolicy, text: str) -> list[int]:
    return list(policy.tokenizer(text, add_special_tokens=False)["input_ids"])


def episode_tokens(policy: HFPolicy, calls: Sequence[PolicyCall]) -> EpisodeTokens:
    """The episode's calls as one prompt + one multi-turn completion with ``env_mask``.

    The prompt is the first call's input exactly as generation saw it; each reply contributes its
    sampled token ids (mask 1, with their log-probs), and each later call contributes the tokens its
    prompt adds after the sequence so far — the verifier's feedback turn (mask 0).
    """
    if not calls:
        raise TRLGRPOError("the episode made no model call")
    first = calls[0]
    out = EpisodeTokens(prompt_ids=_input_ids(policy, first))
    out.rollout_tokens = len(out.prompt_ids)
    seq_text = _render(policy, first.messages, first.tools, True)
    closure: str | None = None
    for k, call in enumerate(calls):
        if k > 0:
            text = _render(policy, call.messages, call.tools, True)
            if text.startswith(seq_text):
                delta = text[len(seq_text) :]
            else:
                # The template rewrote history: render just the new turn(s) after the previous reply.
                head = _render(policy, call.messages[:-1], call.tools, False)
                if not text.startswith(head):
                    raise TRLGRPOError(
                        "the chat template renders a conversation differently from its own prefix; "
                        "use --trainer sftrl (exact per-call transitions)"
                    )
                if closure is None:
                    closure = _turn_closure(policy)
                prev = calls[k - 1].reply
                raw_prev = policy.tokenizer.decode(prev.token_ids or [], skip_special_tokens=False)
                ends = next((c for c in range(len(closure), 0, -1) if raw_prev.endswith(closure[:c])), 0)
                delta = closure[ends:] + text[len(head) :]
            out.extend(_ids(policy, delta), 0)
            seq_text += delta
            # Token-level check: is the sequence so far exactly the input this call was given? Not when
            # a sampled reply was a non-canonical tokenisation (the next call re-tokenised its text).
            given = _input_ids(policy, call)
            out.rollout_tokens += len(given)
            if given != out.prompt_ids + out.completion_ids:
                out.inexact_turns += 1
        ids = list(call.reply.token_ids or [])
        out.rollout_tokens += len(ids)
        logprobs = list(call.reply.logprobs or [])
        if len(logprobs) != len(ids):
            raise TRLGRPOError("the policy returned a reply without one log-prob per token")
        out.extend(ids, 1, logprobs)
        seq_text += policy.tokenizer.decode(ids, skip_special_tokens=False)
    if not out.completion_ids:
        # A prompt that fills the context window gets an empty reply; TRL needs >= 1 completion token.
        out.extend([next(iter(sorted(policy.eos_ids)))], 0)
    return out


def _env_factory(cfg: RLRunConfig) -> Callable[[], SftrlEnv]:
    from sftrl.agents.runner import split_config
    from sftrl.environments.registry import env_class

    _, env_cfg = split_config({**cfg.env_options, "env": cfg.env})
    cls = env_class(cfg.env)
    return lambda: cls(**env_cfg)


def _prompt_key(prompt: Any) -> str:
    """The text that identifies a dataset row: the (last) user message of its prompt."""
    if isinstance(prompt, str):
        return prompt
    content = prompt[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def build_prompts(
    make_env: Callable[[], SftrlEnv], n: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """``n`` dataset rows (prompt = first observation, seed) and the prompt-text -> seed map."""
    from sftrl.agents.runner import episode_seed

    env = make_env()
    rows: list[dict[str, Any]] = []
    seeds: dict[str, int] = {}
    index = 0
    while len(rows) < n:
        if index > 20 * n + 100:
            raise TRLGRPOError(f"the env gives fewer than {n} distinct initial observations")
        s = episode_seed(seed, index)
        index += 1
        obs, _ = env.reset(seed=s)
        if obs.images:
            raise TRLGRPOError(
                "observations with images do not fit TRL's rollout_func (no per-turn images in its "
                "forward pass); use --trainer sftrl"
            )
        if obs.text in seeds:
            continue  # the seed must be recoverable from the prompt alone
        seeds[obs.text] = s
        rows.append({"prompt": [{"role": "user", "content": obs.text}], "seed": s})
    return rows, seeds


def make_rollout_func(
    policy: HFPolicy,
    make_env: Callable[[], SftrlEnv],
    seeds: dict[str, int],
    *,
    sampling: SamplingParams,
    concurrency: int,
    rollouts_dir: Path | None = None,
) -> Callable[[list[Any], Any], dict[str, list[Any]]]:
    """TRL's ``rollout_func``: one episode of our agent loop per (already repeated) prompt."""
    from sftrl.agents.loop import run_episode
    from sftrl.agents.trajectory import EpisodeRecord, TrajectoryWriter

    async def play(prompts: list[Any], base_seed: int, writer: Any) -> list[tuple[EpisodeRecord, Any]]:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, prompt: Any) -> tuple[EpisodeRecord, Any]:
            key = _prompt_key(prompt)
            if key not in seeds:
                raise TRLGRPOError("rollout_func got a prompt that is not in the seed dataset")
            recorder = RecordingPolicy(policy)
            async with gate:
                record = await run_episode(
                    make_env(),
                    recorder,
                    seed=seeds[key],
                    episode_index=i,
                    run_id="trl-grpo",
                    # Distinct per-call seeds per episode: a GRPO group must not sample one reply.
                    sampling=sampling.model_copy(update={"seed": base_seed}),
                    images=writer.images if writer is not None else None,
                )
            if writer is not None:
                writer.write(record)
            return record, recorder.calls

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    def rollout_func(prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        step = int(trainer.state.global_step)
        rank = int(trainer.accelerator.process_index)
        digest = hashlib.sha256(f"{sampling.seed}:{step}:{rank}".encode()).digest()
        base_seed = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
        from trl.models.utils import unwrap_model_for_generation

        own_model, own_device = policy.model, policy.device
        was_training = own_model.training
        # Generate with the trainer's live weights, unwrapped from DDP/DeepSpeed (ZeRO-3 gathered).
        with unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=getattr(trainer.args, "ds3_gather_for_generation", True),
        ) as live:
            policy.model, policy.device = live, str(trainer.accelerator.device)
            live.eval()  # sample as `agent run` does (no dropout)
            try:
                if rollouts_dir is not None:
                    name = f"step-{step:05d}" + (f"-rank{rank}" if rank else "")
                    with TrajectoryWriter(rollouts_dir / name) as writer:
                        played = asyncio.run(play(prompts, base_seed, writer))
                else:
                    played = asyncio.run(play(prompts, base_seed, None))
            finally:
                live.train(was_training)
                policy.model, policy.device = own_model, own_device
        out: dict[str, list[Any]] = {
            k: []
            for k in (
                "prompt_ids",
                "completion_ids",
                "logprobs",
                "env_mask",
                "episode_reward",
                "episode_success",
                "rollout_tokens",
            )
        }
        inexact = 0
        for record, calls in played:
            if record.error:
                raise TRLGRPOError(f"episode {record.episode_index} failed: {record.error}")
            tok = episode_tokens(policy, calls)
            inexact += tok.inexact_turns
            out["prompt_ids"].append(tok.prompt_ids)
            out["completion_ids"].append(tok.completion_ids)
            out["logprobs"].append(tok.logprobs)
            out["env_mask"].append(tok.env_mask)
            out["episode_reward"].append(float(record.total_reward))
            out["episode_success"].append(float(record.success))
            out["rollout_tokens"].append(tok.rollout_tokens)
        mode = "train" if trainer.model.training else "eval"
        metrics = getattr(trainer, "_metrics", None)
        if metrics is not None:
            metrics[mode]["trl/inexact_turns"].append(float(inexact))
            turns = sum(len(r.turns) for r, _ in played) / max(len(played), 1)
            metrics[mode]["episode/turns"].append(turns)
        return out

    return rollout_func


def outcome_reward(completions: list[Any], episode_reward: list[float], **_: Any) -> list[float]:
    """The episode's return (sum of the verifier's rewards over its turns)."""
    return [float(r) for r in episode_reward]


def success(completions: list[Any], episode_success: list[float], **_: Any) -> list[float]:
    """1.0 when the episode was solved (logged with weight 0: information, not reward)."""
    return [float(s) for s in episode_success]


def _grpo_args(cfg: RLRunConfig, micro: int, checkpointing: bool) -> Any:
    import torch
    from trl import GRPOConfig

    from sftrl.training.sft import TRLVersionError, trl_config

    cuda = torch.cuda.is_available()
    accum = cfg.episodes_per_update // micro
    epochs = cfg.rl.ppo_epochs
    values: dict[str, Any] = {
        "output_dir": str(cfg.out),
        # One update = one generation of episodes_per_update episodes, then ppo_epochs optimizer steps
        # over all of them (TRL's num_iterations), each accumulating the whole batch.
        "max_steps": cfg.updates * epochs,
        "num_iterations": epochs,
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": accum,
        "steps_per_generation": accum,
        "num_generations": cfg.group_size,
        "learning_rate": cfg.rl.lr,
        "lr_scheduler_type": "constant",  # as our own learner: RL has no known horizon to decay over
        "beta": cfg.rl.kl_coef,
        "epsilon": cfg.rl.clip,
        # Every trained token of the update weighs the same (our --loss-agg token); pinned, as TRL's
        # default has changed between releases.
        "loss_type": "dapo",
        "max_grad_norm": cfg.rl.max_grad_norm,
        "temperature": cfg.temperature,
        "max_completion_length": cfg.max_new_tokens,
        "reward_weights": [1.0, 0.0],
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": cfg.save_every * epochs,
        "report_to": [],
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "use_cpu": not cuda,
        # TRL enables checkpointing by default; it only costs time on a small model.
        "activation_checkpointing": checkpointing,
        "gradient_checkpointing": checkpointing,
        "dataloader_pin_memory": cuda,
        "disable_tqdm": True,
    }
    try:
        return trl_config(GRPOConfig, values)
    except TRLVersionError as exc:
        raise TRLGRPOError(str(exc)) from None


class _TokenTally:
    """Tokens of the passes TRL's GRPOTrainer runs per batch, summed over processes, for the FLOP count
    both trainers share (:mod:`sftrl.training.evaluation`): sampling (each call's input and reply, as
    the own learner counts it), a scoring pass over prompt + completion for the old log-probs
    (``num_iterations`` > 1) and one for the KL reference (``beta`` > 0), and ``num_iterations``
    forward+backward passes."""

    def __init__(self, epochs: int, reference: bool) -> None:
        self.epochs = epochs
        self.scoring_passes = int(epochs > 1) + int(reference)
        self.forward = 0.0
        self.trained = 0.0
        self.prior = 0.0
        """FLOPs of the run before a resume (read back from metrics.jsonl)."""

    def add(self, batch: dict[str, list[Any]], accelerator: Any) -> None:
        import torch

        rollout = sum(batch.pop("rollout_tokens"))  # ours, not TRL's: taken out of the batch
        seq = sum(len(p) + len(c) for p, c in zip(batch["prompt_ids"], batch["completion_ids"], strict=True))
        local = torch.tensor([float(rollout), float(seq)], dtype=torch.float64, device=accelerator.device)
        total = accelerator.reduce(local, reduction="sum") if accelerator.num_processes > 1 else local
        rollout_all, seq_all = (float(v) for v in total.tolist())
        self.forward += rollout_all + self.scoring_passes * seq_all
        self.trained += self.epochs * seq_all

    def flops(self, state: Any, n_params: int) -> float:
        return self.prior + 2.0 * n_params * self.forward + 6.0 * n_params * self.trained

    def restore(self, metrics: Path, step: int) -> None:
        """The FLOPs logged at the checkpoint's step (0 when none was logged)."""
        if not metrics.exists():
            return
        for line in metrics.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if row.get("step") == step and "flops" in row:
                self.prior = float(row["flops"])


def _ckpt_step(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[1])


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def _micro_batch(episodes: int, wanted: int) -> int:
    """The largest divisor of ``episodes`` not above ``wanted`` (TRL needs whole accumulation steps)."""
    return max(d for d in range(1, min(episodes, wanted) + 1) if episodes % d == 0)


def train_rl_trl(
    cfg: RLRunConfig,
    *,
    policy: HFPolicy | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """GRPO with TRL's ``GRPOTrainer`` on episodes of our agent loop; returns the last logged metrics.

    Writes ``checkpoint-N`` (N = optimizer steps; ``--ppo-epochs`` steps per update), the final model
    in ``cfg.out``, ``metrics.jsonl`` (TRL's log entries) and each step's episodes under
    ``cfg.out/rollouts`` (readable by ``agent eval``).
    """
    import os
    import warnings

    from sftrl.training.sft import wants_checkpointing

    if cfg.rl.algo != "grpo":
        raise TRLGRPOError("--trainer trl runs GRPO only (TRL has no PPO trainer); pass --algo grpo")
    ignored = sorted(k for k in cfg.rl.model_fields_set if k in TRL_UNUSED_RL_OPTIONS)
    if ignored:
        raise TRLGRPOError(
            f"--trainer trl cannot honour {', '.join(ignored)}: TRL's GRPO has no value head, GAE, "
            "entropy bonus or rollout log-prob check; drop them or use --trainer sftrl"
        )
    if "loss_agg" in cfg.rl.model_fields_set and cfg.rl.loss_agg != "token":
        raise TRLGRPOError(
            "--trainer trl averages the loss over all tokens of an update (--loss-agg token, TRL's "
            "loss_type 'dapo'); --loss-agg reply needs --trainer sftrl"
        )
    if cfg.episodes:
        raise TRLGRPOError("--trainer trl collects its own episodes; --episodes needs --trainer sftrl")
    if cfg.rl.micro_batch_size is not None:
        raise TRLGRPOError(
            "--micro-batch-size is for --trainer sftrl; with --trainer trl, --minibatch-size is TRL's "
            "per-device micro-batch (each epoch of an update is one accumulated step)"
        )
    if cfg.env_workers:
        raise TRLGRPOError("--env-workers needs --trainer sftrl (TRL's rollout function steps its envs here)")
    if cfg.fsdp:
        raise TRLGRPOError(
            "--fsdp is for --trainer sftrl (the own learner applies torch's FSDP2); drop it with "
            "--trainer trl, which shards through an accelerate DeepSpeed ZeRO-3 config instead"
        )
    if "track_episodes" in cfg.model_fields_set:
        raise TRLGRPOError("--track-episodes is for --trainer sftrl (TRL's trainer logs no episode table)")
    if cfg.group_size < 2:
        raise TRLGRPOError("GRPO needs --group-size >= 2 (advantages are relative to the group)")
    if cfg.episodes_per_update % cfg.group_size:
        raise TRLGRPOError("--episodes-per-update must be a multiple of --group-size")
    out = cfg.out
    ckpt = _latest_checkpoint(out) if cfg.resume and out.exists() else None
    if not cfg.resume and (out / METRICS_FILE).exists():
        raise TRLGRPOError(f"{out} already holds an RL run; pass --resume or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is documented here
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    if cfg.lora_r:
        raise TRLGRPOError("--lora-r is for --trainer sftrl (the TRL backend trains all weights here)")
    if policy is None:
        from sftrl.agents.factory import make_trainable_policy

        policy = make_trainable_policy(cfg.model, seed=cfg.seed)
    if policy.vision:
        raise TRLGRPOError(
            "--trainer trl trains text models only (TRL's rollout_func cannot pass per-turn images); "
            "use --trainer sftrl for vision-language models"
        )
    make_env = _env_factory(cfg)
    prompts_per_update = cfg.episodes_per_update // cfg.group_size
    rows, seeds = build_prompts(make_env, cfg.updates * prompts_per_update, cfg.seed)
    sampling = SamplingParams(
        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, logprobs=True, seed=cfg.seed
    )
    rollout = make_rollout_func(
        policy,
        make_env,
        seeds,
        sampling=sampling,
        concurrency=cfg.concurrency,
        rollouts_dir=out / "rollouts",
    )
    try:
        checkpointing = wants_checkpointing(cfg.gradient_checkpointing, policy.model)
    except ValueError as exc:
        raise TRLGRPOError(str(exc)) from None
    args = _grpo_args(cfg, _micro_batch(cfg.episodes_per_update, cfg.rl.minibatch_size), checkpointing)
    from sftrl.training.evaluation import budget_eval_callback, parse_eval_env, plot_evals, validate_specs

    try:
        specs = [parse_eval_env(s) for s in cfg.eval_env]
        validate_specs(specs)
    except ValueError as exc:
        raise TRLGRPOError(str(exc)) from None
    tokens = _TokenTally(cfg.rl.ppo_epochs, cfg.rl.kl_coef > 0)
    if ckpt is not None:
        tokens.restore(out / METRICS_FILE, _ckpt_step(ckpt))

    def counted_rollout(prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        batch = rollout(prompts, trainer)
        tokens.add(batch, trainer.accelerator)  # a collective: every process generates each batch
        return batch

    class _Progress(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            with (out / METRICS_FILE).open("a") as fh:
                fh.write(json.dumps({"step": state.global_step, **logs, "flops": budget.flops(state)}) + "\n")
            if progress:
                # Rewards are logged on the steps that generated (every --ppo-epochs steps).
                line = f"step {state.global_step}/{state.max_steps}: loss {logs['loss']:.4f}"
                if "reward" in logs:
                    line += f" reward {logs['reward']:.3f} success {logs['rewards/success/mean']:.3f}"
                progress(line)

    from sftrl.training.tracking import Tracker, process_info, trainer_callback

    # TRL's own report_to stays off: the trackers get TRL's log entries (loss, rewards, KL) from here.
    tracker = Tracker(
        out,
        cfg.report_to if process_info()[0] else [],
        config=cfg.model_dump(mode="json"),
        run_name=f"rl-{out.name}",
        resume=ckpt is not None,
    )
    # Evaluations and the FLOP budget between updates (an update is --ppo-epochs optimizer steps), on
    # the weights being trained; eval.jsonl rows are labelled with the update, as --trainer sftrl's.
    budget = budget_eval_callback(
        cfg,
        specs,
        progress or (lambda _m: None),
        out=out,
        model_name=str(cfg.model),
        seed=cfg.seed,
        flops=tokens.flops,
        steps_per_point=cfg.rl.ppo_epochs,
        on_eval=lambda row, state: tracker.log({"eval": row}, step=int(state.global_step)),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated.*")
        trainer = GRPOTrainer(
            model=policy.model,
            reward_funcs=[outcome_reward, success],
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=policy.tokenizer,
            rollout_func=counted_rollout,
            callbacks=[_Progress(), budget, trainer_callback(tracker)],
        )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # _Progress prints one line per step instead of a dict
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    tracker.close()
    metrics: dict[str, Any] = {}
    for entry in trainer.state.log_history:
        if "loss" in entry:
            metrics = dict(entry)
    if not metrics and (out / METRICS_FILE).exists():  # resumed a finished run: nothing new was logged
        lines = [ln for ln in (out / METRICS_FILE).read_text().splitlines() if ln.strip()]
        metrics = json.loads(lines[-1]) if lines else {}
    metrics.update(
        {
            "step": int(trainer.state.global_step),
            "update": int(trainer.state.global_step) // cfg.rl.ppo_epochs,
            "train_runtime": float(result.metrics.get("train_runtime", 0.0)),
            "flops": budget.flops(trainer.state),
            "trainer": "trl",
        }
    )
    if trainer.accelerator.is_main_process:
        policy.save_pretrained(out)
        if specs:
            plot_evals(out, f"RL (grpo, TRL) {Path(cfg.model).name}: evaluation")
    return metrics
