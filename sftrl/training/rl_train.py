"""``agent train rl``: alternate rollouts and RL updates (online), or update from logged episodes.

Online, each update collects episodes with the model being trained (through the ordinary runner, so
every rollout is a normal run directory under ``OUT/rollouts``), then feeds them to the
:class:`~sftrl.training.rl.Learner` exactly as logged episodes are fed offline. Rollouts are sampled
in-process (``hf``) or by vLLM (``vllm`` servers, ``vllm-offline`` engine), which is sent the updated
weights after every update (:mod:`sftrl.training.weight_sync`). With ``--async-rollouts`` the
collection runs ahead in a producer thread, at most ``--max-staleness`` versions behind the learner
(:mod:`sftrl.training.async_rollouts`). Checkpoints hold the model, its processor, the value head and
optimizer state; ``--resume`` continues from the latest.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from sftrl.agents.policy import SamplingParams
from sftrl.training.async_rollouts import staleness
from sftrl.training.config import BudgetEvalOptions
from sftrl.training.evaluation import (
    FlopCounter,
    evaluate,
    n_params,
    parse_eval_env,
    plot_evals,
    read_evals,
    summary_line,
    validate_specs,
)
from sftrl.training.rl import Learner, RLConfig
from sftrl.training.sft import wants_checkpointing
from sftrl.training.tracking import DistributedSetupError, ReportTo, check_distributed_type
from sftrl.training.transitions import EpisodeBatch, Transition, TransitionError, load_episodes

METRICS_FILE = "metrics.jsonl"
STATE_FILE = "learner_state.pt"


class RLRunConfig(BudgetEvalOptions):
    """What ``agent train rl`` does besides the update's hyper-parameters."""

    model_config = ConfigDict(extra="forbid")

    env: str = "gp"
    env_options: dict[str, Any] = Field(default_factory=dict)
    model: str
    out: Path
    updates: int = Field(default=10, ge=1, description="number of RL updates (--max-steps)")
    episodes_per_update: int = Field(default=16, ge=1)
    group_size: int = Field(default=4, ge=1, description="episodes per initial state (GRPO groups)")
    concurrency: int = Field(default=8, ge=1)
    env_workers: int = Field(
        default=0,
        ge=0,
        le=256,
        description="rollouts: processes running the env's reset/step (0: in this process; sftrl trainer)",
    )
    temperature: float = Field(default=1.0, gt=0)
    max_new_tokens: int = Field(default=128, ge=1)
    save_every: int = Field(default=5, ge=1)
    seed: int = 0
    resume: bool = False
    episodes: list[Path] = Field(default_factory=list, description="logged run dirs to learn from (offline)")
    rollout_policy: Literal["hf", "vllm", "vllm-offline"] = Field(
        default="hf", description="who samples the rollouts: the trained model in-process, or vLLM"
    )
    base_url: list[str] = Field(default_factory=list, description="vLLM servers (--rollout-policy vllm)")
    served_model: str | None = Field(default=None, description="model name the vLLM servers serve")
    weight_sync: Literal["disk", "collective"] = Field(
        default="disk",
        description="how vLLM servers get the weights after each update: disk (save + reload) or "
        "collective (broadcast into the workers, no disk: gloo on CPU, NCCL on GPUs; needs the servers' "
        "--worker-extension-cls sftrl.training.weight_sync.VLLMWorkerExtension)",
    )
    weight_sync_host: str | None = Field(
        default=None,
        description="collective: this trainer's address as the servers reach it (default 127.0.0.1 "
        "when they all run here)",
    )
    weight_sync_port: int = Field(
        default=0, ge=0, le=65535, description="collective: port of the weight group's rendezvous (0: free)"
    )
    rollout_options: dict[str, Any] = Field(
        default_factory=dict,
        description="policy options of the rollout backend (vllm-offline: vllm.LLM arguments, e.g. dtype)",
    )
    lora_r: int | None = Field(default=None, ge=1, description="train LoRA adapters of this rank (peft)")
    lora_alpha: int | None = Field(default=None, ge=1, description="LoRA alpha (default: 2 x rank)")
    lora_target: list[str] = Field(
        default_factory=lambda: ["all-linear"], description="modules that get adapters (peft names)"
    )
    merge: bool = Field(default=False, description="LoRA: save the merged full model to OUT too")
    fsdp: bool = Field(
        default=False,
        description="shard parameters, gradients and optimizer state over the processes of accelerate "
        "launch (torch FSDP2; gloo on CPU, NCCL on GPUs; bf16 compute under --mixed_precision bf16); "
        "sampling uses full weights gathered each update",
    )
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="activation checkpointing: keep each block's inputs only and recompute the block in "
        "backward (memory for time); default: on for models of >= 100M parameters",
    )
    report_to: ReportTo = Field(default_factory=list, description="trackers: tensorboard, wandb, trackio")
    track_episodes: int = Field(default=4, ge=0, description="sample episodes per update sent to trackers")
    async_rollouts: bool = Field(
        default=False, description="keep collecting episodes while the learner updates (bounded staleness)"
    )
    max_staleness: int | None = Field(
        default=None, ge=0, description="async: most policy versions a batch may lag behind (default 1)"
    )
    is_cap: float | None = Field(
        default=None, ge=1.0, description="async: truncation cap of the importance weights (default 2.0)"
    )
    rl: RLConfig = Field(default_factory=RLConfig)

    @model_validator(mode="after")
    def _async_flags(self) -> RLRunConfig:
        if self.env_workers and self.episodes:
            raise ValueError("--env-workers runs the envs of collected rollouts; --episodes collects none")
        if not self.async_rollouts:
            given = [f for f in ("max_staleness", "is_cap") if getattr(self, f) is not None]
            if given:
                flags = " and ".join("--" + f.replace("_", "-") for f in given)
                verb = "apply" if len(given) > 1 else "applies"
                raise ValueError(f"{flags} {verb} only with --async-rollouts")
        elif self.episodes:
            raise ValueError("--async-rollouts collects episodes itself: it cannot learn from --episodes")
        elif self.lora_r:
            raise ValueError("--async-rollouts does not train LoRA adapters yet; drop --lora-r or run sync")
        if self.fsdp and self.lora_r:
            raise ValueError("--fsdp shards full-model training; LoRA adapters are small: drop one of them")
        if self.fsdp and self.async_rollouts:
            raise ValueError("--fsdp runs several processes; --async-rollouts runs in one")
        if self.weight_sync == "collective" and self.rollout_policy != "vllm":
            raise ValueError(
                "--weight-sync collective pushes to vLLM servers (--rollout-policy vllm); "
                f"--rollout-policy {self.rollout_policy} needs no push or syncs in memory already"
            )
        return self

    @property
    def staleness_bound(self) -> int:
        return 1 if self.max_staleness is None else self.max_staleness

    @property
    def importance_cap(self) -> float:
        return 2.0 if self.is_cap is None else self.is_cap


def check_full_weights(distributed_type: str, zero_stage: int | None) -> None:
    """Refuse sharded parameters (FSDP, DeepSpeed ZeRO-3), which the own learner does not gather.

    Every process samples its rollouts with the full model (``hf``: ``generate`` on the trained
    module; vLLM: the weights pushed after each update) and the main process saves it with
    ``save_pretrained``; with sharded parameters each would see only its shard (or deadlock in the
    collectives ``generate`` would need). ZeRO-2 and DDP keep full parameters on every process.
    """
    if distributed_type == "FSDP" or (distributed_type == "DEEPSPEED" and zero_stage == 3):
        mode = "FSDP" if distributed_type == "FSDP" else "DeepSpeed ZeRO-3"
        raise TransitionError(
            f"agent train rl does not run under accelerate's {mode}: its rollouts, vLLM weight pushes and "
            "checkpoints need full parameters; shard with --fsdp under a plain multi-process launch "
            "(configs/accelerate/ddp.yaml: the learner applies torch's FSDP2 and gathers), use ZeRO-2 "
            "(configs/accelerate/deepspeed_zero2.yaml), or --trainer trl (TRL gathers ZeRO-3 parameters)"
        )


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def check_fsdp(cfg: RLRunConfig, world: int, mixed_precision: str) -> None:
    """``--fsdp`` shards over several processes, in fp32 or with bf16 compute (refused otherwise, not
    ignored: fp16 would need a sharded gradient scaler, fp8 an engine of its own)."""
    if not cfg.fsdp:
        return
    if world < 2:
        raise TransitionError(
            "--fsdp shards over the processes of accelerate launch: start 2 or more "
            "(accelerate launch --multi_gpu --num_processes N -m sftrl train rl ... --fsdp)"
        )
    if mixed_precision not in ("no", "bf16"):
        raise TransitionError(
            f"--fsdp trains in fp32 or with bf16 compute; this launch asks for {mixed_precision} mixed "
            "precision: launch with --mixed_precision bf16 or no"
        )


def _save(
    policy: Any,
    learner: Learner,
    path: Path,
    meta: dict[str, Any],
    state: dict[str, Any],
    weights: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint: ``policy`` (its full weights, or ``weights`` gathered from --fsdp shards)
    and the learner's ``state`` (:meth:`~sftrl.training.rl.Learner.checkpoint_state`)."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    policy.save_pretrained(tmp, state_dict=weights)
    learner.save_state(tmp / STATE_FILE, state)
    (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=1))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)  # a checkpoint is either complete or absent


def collects_rollouts(cfg: RLRunConfig) -> bool:
    """Whether the run samples rollouts itself (not learning from ``--episodes`` logs)."""
    return not cfg.episodes


def rollout_run_config(cfg: RLRunConfig, model_path: str) -> Any:
    """The :class:`~sftrl.agents.runner.RunConfig` that names who samples the rollouts."""
    from sftrl.agents.factory import policy_class
    from sftrl.agents.runner import RunConfig

    served = getattr(policy_class(cfg.rollout_policy), "MODEL_FROM_SERVER", False)
    if served and not cfg.base_url:
        # The trainer reloads these servers' weights: never guess them (the backend's default URL).
        raise TransitionError(
            f"--rollout-policy {cfg.rollout_policy} needs --base-url (one per server replica)"
        )
    return RunConfig(
        policy=cfg.rollout_policy,
        model=cfg.served_model if served else model_path,
        base_url=cfg.base_url,
        policy_options=cfg.rollout_options,
    )


def rollout_backend(cfg: RLRunConfig, policy: Any, model_path: str, main: bool) -> tuple[Any, Any]:
    """(the policy that samples rollouts, the :class:`~sftrl.training.weight_sync.WeightSync` or None).

    The trained policy itself (``hf``): nothing to sync. Otherwise the agents' policy factory builds
    the backend and :func:`~sftrl.training.weight_sync.weight_sync_for` picks how it gets the weights.
    """
    from sftrl.agents.factory import TRAINABLE_POLICY, make_policy
    from sftrl.training.weight_sync import LIVE_WEIGHTS_DIR, weight_sync_for

    if cfg.rollout_policy == TRAINABLE_POLICY:
        if cfg.base_url:
            raise TransitionError(f"--base-url is not used by --rollout-policy {TRAINABLE_POLICY}")
        return policy, None
    rollout = make_policy(rollout_run_config(cfg, model_path), plain_sampling=True)
    sync = weight_sync_for(
        rollout,
        policy,
        cfg.out / LIVE_WEIGHTS_DIR,
        main=main,
        mode=cfg.weight_sync,
        host=cfg.weight_sync_host,
        port=cfg.weight_sync_port,
    )
    return rollout, sync


def start_producer(
    cfg: RLRunConfig,
    policy: Any,
    rollout_policy: Any,
    sync: Any,
    start: int,
    progress: Callable[[str], None] | None,
) -> Any:
    """The :class:`~sftrl.training.async_rollouts.RolloutProducer` of an ``--async-rollouts`` run."""
    from sftrl.training.async_rollouts import RolloutProducer, hf_rollout_copy

    # Batches a stopped run collected past its last checkpoint were sampled by weights that checkpoint
    # does not hold (versions of a lost future): collected again.
    for j in range(start, cfg.updates):
        stale = cfg.out / "rollouts" / f"update-{j:05d}"
        if stale.exists():
            shutil.rmtree(stale)
    if sync is None:  # hf: the producer samples with its own copy; the learner's model stays its own
        rollout, push = hf_rollout_copy(policy, cfg.concurrency), None
    else:
        rollout, push = rollout_policy, sync.push
    return RolloutProducer(
        lambda p, j: _collect(cfg, p, j, progress),
        rollout,
        start=start,
        end=cfg.updates,
        max_staleness=cfg.staleness_bound,
        push=push,
    )


def rank_share(episodes: int, group: int, rank: int, world: int) -> list[int] | None:
    """The episode indices rank ``rank`` of ``world`` collects: whole groups, dealt round-robin, so
    the ranks together play exactly the episodes (seeds, sampling seeds) one process would."""
    if world <= 1:
        return None
    return [i for i in range(episodes) if (i // group) % world == rank]


def _collect(
    cfg: RLRunConfig,
    policy: Any,
    update: int,
    progress: Callable[[str], None] | None,
    rank: int = 0,
    world: int = 1,
) -> tuple[Path, dict[str, Any]]:
    from sftrl.agents.runner import RunConfig, run_async, split_config

    # Each data-parallel process collects its share of the update's episodes into its own run dir.
    out = cfg.out / "rollouts" / (f"update-{update:05d}" + (f"-rank{rank}" if rank else ""))
    group = cfg.group_size if cfg.rl.algo == "grpo" else 1
    values: dict[str, Any] = {
        **cfg.env_options,
        "env": cfg.env,
        "episodes": cfg.episodes_per_update,
        "only": rank_share(cfg.episodes_per_update, group, rank, world),
        "seed": cfg.seed * 1_000_003 + update * 1009,
        "out": out,
        "concurrency": cfg.concurrency,
        "env_workers": cfg.env_workers,
        "group_size": group,
        "resume": out.exists(),
    }
    run, env_cfg = split_config({k: v for k, v in values.items() if k != "policy"})
    run = RunConfig.model_validate(
        {
            **run.model_dump(),
            "policy": cfg.rollout_policy,
            "sampling": SamplingParams(
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
                logprobs=True,
                seed=cfg.seed * 7919 + update,
            ),
        }
    )
    summary = asyncio.run(run_async(run, env_cfg, policy=policy))
    if progress:
        progress(
            f"update {update}: collected {summary['episodes']} episodes, "
            f"success {summary['success_rate']:.3f}"
        )
    return out, summary


def _batch_metrics(batch: EpisodeBatch) -> dict[str, float]:
    n = max(len(batch), 1)
    return {
        "reward": sum(batch.returns) / n,
        "success_rate": sum(batch.successes) / n,
        "episode_length": sum(len(e) for e in batch.episodes) / n,
    }


def train_rl(
    cfg: RLRunConfig,
    *,
    policy: Any = None,
    encode: Callable[[Transition], dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``cfg.updates`` RL updates and save the final model to ``cfg.out``; returns the last metrics.

    ``policy`` is an :class:`~sftrl.agents.hf_policy.HFPolicy` (built from ``cfg.model`` if None): its
    model is the one trained. With ``rollout_policy`` ``hf`` it also samples the rollouts; with ``vllm`` /
    ``vllm-offline`` the weights are pushed to vLLM after each update, before the next collection.
    """
    import torch
    from accelerate import Accelerator

    # cpu=: without it a process on a machine without GPUs ignores the launcher's ranks (gloo).
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    try:
        check_distributed_type(accelerator.state)
    except DistributedSetupError as exc:
        raise TransitionError(str(exc)) from None
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    check_full_weights(accelerator.distributed_type.name, getattr(plugin, "zero_stage", None))
    world = accelerator.num_processes
    check_fsdp(cfg, world, str(accelerator.mixed_precision))
    rank = accelerator.process_index
    main = accelerator.is_main_process
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    model_path = cfg.model
    ckpt = _latest_checkpoint(out) if cfg.resume else None
    if not cfg.resume and (out / METRICS_FILE).exists():
        raise TransitionError(f"{out} already holds an RL run; pass --resume or choose another --out")
    if ckpt is not None:
        model_path = str(ckpt)
        start = json.loads((ckpt / "trainer_state.json").read_text())["update"]
    if policy is None:
        from sftrl.agents.factory import make_trainable_policy

        # A LoRA checkpoint holds adapters only: the base model comes from --model.
        # Batch as many generations as episodes run at once (rollouts and evaluation alike).
        policy = make_trainable_policy(
            cfg.model if cfg.lora_r else model_path,
            max_batch_size=cfg.concurrency,
            device=str(accelerator.device),
        )
    if cfg.lora_r:
        from sftrl.training.lora import apply_lora

        try:
            apply_lora(policy, cfg.lora_r, cfg.lora_alpha, cfg.lora_target, ckpt)
        except ValueError as exc:
            raise TransitionError(str(exc)) from None
    if str(accelerator.mixed_precision) in ("bf16", "fp16") and hasattr(policy, "autocast_dtype"):
        # accelerate autocasts the learner's forward (it prepares that module), not generation: the hf
        # sampler (and the copies made of it below) generate under the same precision themselves.
        policy.autocast_dtype = (
            torch.bfloat16 if str(accelerator.mixed_precision) == "bf16" else torch.float16
        )
    encode = encode or policy.encode_transition
    ref_model = None
    # The KL anchor is the initial model (--model), also when the policy resumes from a checkpoint.
    # With LoRA that is the base model: the learner scores with the adapters off (no copy).
    if cfg.rl.algo == "grpo" and cfg.rl.kl_coef > 0 and not cfg.lora_r:
        if ckpt is None:
            import copy

            ref_model = copy.deepcopy(policy.model).eval()
        else:
            from sftrl.agents.factory import make_trainable_policy

            initial = make_trainable_policy(cfg.model, max_batch_size=1, device=str(accelerator.device))
            ref_model = initial.model.eval()
    # Who samples, is evaluated and pushed: the trained policy, or under --fsdp a full copy of it that
    # takes the gathered weights after each update (the trained one holds shards). Every process
    # needs one when it generates itself (hf, its own vLLM engine); with vLLM servers or logged
    # episodes only the main process does (pushes, evaluation). Under bf16 the copy holds bf16
    # weights, as FSDP2 computes with (half the memory); checkpoints save the gathered fp32 weights.
    sampler = policy
    copies_everywhere = collects_rollouts(cfg) and cfg.rollout_policy != "vllm"
    full: dict[str, Any] | None = None  # --fsdp: the latest gathered weights (main process)
    if cfg.fsdp:
        from sftrl.training.async_rollouts import hf_rollout_copy

        copy_dtype = torch.bfloat16 if str(accelerator.mixed_precision) == "bf16" else None
        if main or copies_everywhere:
            sampler = hf_rollout_copy(policy, cfg.concurrency, dtype=copy_dtype)
        else:
            sampler = None
    n_model_params = n_params(policy.model)
    try:
        checkpointing = wants_checkpointing(cfg.gradient_checkpointing, policy.model)
    except ValueError as exc:
        raise TransitionError(str(exc)) from None
    learner = Learner(
        policy.model,
        encode,
        cfg.rl,
        pad_token_id=policy.pad_token_id,
        ref_model=ref_model,
        accelerator=accelerator,
        suppressed_token_ids=getattr(policy, "suppressed_token_ids", ()),
        fsdp=cfg.fsdp,
        checkpointing=checkpointing,
    )
    if ckpt is not None and (ckpt / STATE_FILE).exists():
        try:
            learner.load_state(ckpt / STATE_FILE)
        except ValueError as exc:
            raise TransitionError(str(exc)) from None
    try:
        specs = [parse_eval_env(s) for s in cfg.eval_env]
        validate_specs(specs)
    except ValueError as exc:
        raise TransitionError(str(exc)) from None
    done = read_metrics(out)
    flops = FlopCounter(n_model_params, float(done[start - 1]["flops"]) if start and done else 0.0)
    metrics: dict[str, Any] = {}

    def run_eval(update: int, final: bool = False) -> None:
        if not specs or not main:
            return
        row = evaluate(
            sampler,
            specs,
            out,
            step=update,
            flops=flops.total,
            episodes=cfg.eval_episodes,
            seed=cfg.eval_seed,
            max_new_tokens=cfg.eval_max_new_tokens,
            final=final,
        )
        if tracker is not None:
            tracker.log({"eval": row}, step=update)  # eval/<env>/success_rate, ...
        if progress:
            progress(f"eval update {update}: {summary_line(row)}")

    evaluated = {int(r["step"]) for r in read_evals(out)}
    next_flops = cfg.eval_flops
    if cfg.eval_flops:
        while next_flops <= flops.total:
            next_flops += cfg.eval_flops
    offline_batch = load_episodes(cfg.episodes, model=None) if cfg.episodes else None
    rollout_policy, sync = policy, None
    if offline_batch is None:
        rollout_policy, sync = rollout_backend(cfg, sampler, model_path, main)
        if sync is not None:
            sync.check()  # before any rollout: a server without dev mode fails now, not after update 1
            if ckpt is not None:
                sync.push(sampler.model, start)  # the engines still serve the weights they started with
        accelerator.wait_for_everyone()
    tracker = open_rl_tracker(cfg, resume=ckpt is not None) if main else None
    torch.manual_seed(cfg.seed)
    if start not in evaluated and (start > 0 or cfg.eval_at_start):
        run_eval(start)
        evaluated.add(start)
    producer = None
    if cfg.async_rollouts:
        if world > 1:
            raise TransitionError("--async-rollouts runs in one process (not under accelerate launch) yet")
        producer = start_producer(cfg, policy, rollout_policy, sync, start, progress)
    try:
        for update in range(start, cfg.updates):
            if cfg.max_flops is not None and flops.total >= cfg.max_flops:
                break
            t0 = time.perf_counter()
            async_stats: dict[str, Any] = {}
            if offline_batch is not None:
                batch, rollout_dir = offline_batch, None
            elif producer is not None:
                got, learner_wait = producer.get(update)
                rollout_dir, summary = got.rollout_dir, got.summary
                batch = load_episodes([rollout_dir])
                async_stats = {
                    "policy_version": update,
                    **staleness(batch, update),
                    "learner_wait_s": learner_wait,
                    "rollout_wait_s": got.wait_s,
                    "collect_s": got.collect_s,
                }
            else:
                rollout_dir, summary = _collect(
                    cfg, rollout_policy, update, progress if main else None, rank, world
                )
                batch = load_episodes([rollout_dir])
            # The logged log-probs are checked against the model that sampled them: online, that is the
            # model right now; offline, only the model before its first update. Later offline updates are
            # off-policy on purpose and use the logged log-probs as the behaviour policy (clipped ratios).
            # Asynchronous batches may be older than the model: the gap is a statistic of the update.
            check = producer is None and (offline_batch is None or update == 0)
            stats = learner.update(
                batch, is_cap=cfg.importance_cap if producer is not None else None, check=check
            )
            gap: float | None = stats.pop("logprob_gap", None)
            if world > 1:
                stats = reduce_stats(accelerator, stats)
            if cfg.fsdp:
                full = learner.full_policy_state(everyone=copies_everywhere)  # a collective: every rank
                if sampler is not None:
                    sampler.model.load_state_dict(full)
            sync_s = 0.0
            if producer is not None:
                sync_s = producer.publish(policy.model, update + 1)  # later batches sample from it
            elif sync is not None:
                t_sync = time.perf_counter()
                sync.push(sampler.model, update + 1)  # the next collection samples from the updated model
                sync_s = time.perf_counter() - t_sync
            if offline_batch is None:
                flops.forward(stats["rollout_tokens"])
            flops.forward(stats["tokens_scored"])
            flops.train(stats["tokens_trained"])
            if world > 1 and gap is not None:
                gap = float(accelerator.gather(torch.tensor([gap])).max())
            metrics = {
                "update": update + 1,
                **(reduce_stats(accelerator, _batch_metrics(batch)) if world > 1 else _batch_metrics(batch)),
                **stats,
                "logprob_gap": gap,
                "weight_sync_s": sync_s,
                "flops": flops.total,
                "seconds": time.perf_counter() - t0,
                "rollouts": str(rollout_dir) if rollout_dir else None,
                **async_stats,
            }
            if producer is not None:
                # Throughput of the pipeline: one update (and its batch) per loop iteration.
                metrics["updates_per_s"] = 1.0 / max(metrics["seconds"], 1e-9)
                metrics["episodes_per_s"] = len(batch) / max(metrics["seconds"], 1e-9)
            if main:
                with (out / METRICS_FILE).open("a") as fh:
                    fh.write(json.dumps(metrics) + "\n")
            if tracker is not None:
                verdicts = summary.get("verdicts") if offline_batch is None else None
                track_rl_update(tracker, cfg, metrics, rollout_dir, verdicts)
            if progress and main:
                idle = stats["zero_advantage_fraction"]
                progress(
                    f"update {update + 1}/{cfg.updates}: reward {metrics['reward']:.3f} "
                    f"success {metrics['success_rate']:.3f} policy_loss {stats['policy_loss']:.4f}"
                    + (f" zero-advantage {idle:.0%}" if idle > 0 else "")
                    + (
                        " - no learning signal: every episode's advantage is 0 (all returns equal)"
                        if idle >= 1.0
                        else ""
                    )
                )
            accelerator.wait_for_everyone()
            due = bool(cfg.eval_every and (update + 1) % cfg.eval_every == 0)
            if next_flops is not None and flops.total >= next_flops:
                due = True
                while next_flops <= flops.total:
                    next_flops += cfg.eval_flops or flops.total
            past_budget = cfg.max_flops is not None and flops.total >= cfg.max_flops
            last_update = update + 1 >= cfg.updates
            if due and not past_budget and not last_update:  # the last evaluation runs after the loop
                run_eval(update + 1)
                evaluated.add(update + 1)
            if (update + 1) % cfg.save_every == 0 or update + 1 == cfg.updates:
                state = learner.checkpoint_state() if main or cfg.fsdp else {}
                if main:
                    meta = {"update": update + 1, "flops": flops.total, **cfg.model_dump(mode="json")}
                    _save(policy, learner, out / f"checkpoint-{update + 1}", meta, state, full)
    finally:
        if producer is not None:
            producer.close()  # after the collection in progress: no rollout writes after train_rl
        if sync is not None and hasattr(sync, "close"):
            sync.close()  # the servers leave the weight group (collective sync)
    last = int(metrics.get("update", start))
    if main and last not in evaluated:
        run_eval(last, final=True)
    if metrics and last % cfg.save_every != 0 and last != cfg.updates:
        # Stopped by the FLOP budget between checkpoints: the final state is a checkpoint too.
        state = learner.checkpoint_state() if main or cfg.fsdp else {}
        if main:
            meta = {"update": last, "flops": flops.total}
            _save(policy, learner, out / f"checkpoint-{last}", meta, state, full)
    if cfg.fsdp and full is None:  # no update ran here: the weights as loaded (a collective)
        full = learner.full_policy_state(everyone=False)
    if main:
        if cfg.lora_r:
            from sftrl.training.lora import save_final

            save_final(policy, out, cfg.merge)
        else:
            policy.save_pretrained(out, state_dict=full)
        plot_metrics(out)
        if specs:
            plot_evals(out, f"RL ({cfg.rl.algo}) {Path(cfg.model).name}: evaluation")
    if tracker is not None:
        tracker.close()
    return metrics


# Per-rank counts that add up over the ranks; every other statistic is the mean of the ranks' values.
_SUMMED_STATS = ("tokens", "transitions", "tokens_trained", "tokens_scored", "rollout_tokens")


def reduce_stats(accelerator: Any, stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` over all ranks: counts summed, the rest the mean of the ranks' values (each rank plays
    as many episodes; with multi-turn episodes their transitions differ, and so do their weights)."""
    import torch

    keys = [k for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    local = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)
    total = accelerator.reduce(local, reduction="sum")
    out = dict(stats)
    for k, v in zip(keys, total.tolist(), strict=True):
        out[k] = v if k in _SUMMED_STATS else v / accelerator.num_processes
    return out


def open_rl_tracker(cfg: RLRunConfig, *, resume: bool) -> Any:
    """The run's :class:`~sftrl.training.tracking.Tracker` (a no-op one without ``--report-to``)."""
    from sftrl.training.tracking import Tracker

    config = cfg.model_dump(mode="json")
    return Tracker(cfg.out, cfg.report_to, config=config, run_name=f"rl-{cfg.out.name}", resume=resume)


def track_rl_update(
    tracker: Any,
    cfg: RLRunConfig,
    metrics: dict[str, Any],
    rollout_dir: Path | None,
    verdicts: dict[str, Any] | None,
) -> None:
    """Scalars of one update (with verdict counts and tokens/s) and a table of its first episodes."""
    from sftrl.agents.trajectory import read_episodes
    from sftrl.training.tracking import episode_table

    step = int(metrics["update"])
    extra: dict[str, Any] = {"verdicts": verdicts or {}}
    if metrics.get("seconds"):
        extra["tokens_per_s"] = metrics.get("tokens_trained", metrics.get("tokens", 0)) / metrics["seconds"]
    tracker.log({**metrics, **extra}, step=step)
    # Offline (from logs) every update sees the same episodes: show them once.
    dirs = [rollout_dir] if rollout_dir is not None else (cfg.episodes if step == 1 else [])
    if cfg.track_episodes and dirs:
        columns, rows = episode_table(read_episodes(dirs[0]), Path(dirs[0]), limit=cfg.track_episodes)
        tracker.log_table("episodes", columns, rows, step=step)


def read_metrics(out: Path) -> list[dict[str, Any]]:
    path = out / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(
    out: Path, keys: Sequence[str] = ("reward", "success_rate", "policy_loss", "entropy")
) -> Path | None:
    """A PNG of the per-update metrics (against training FLOPs, as the paper plots)."""
    rows = read_metrics(out)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    x = [r["flops"] for r in rows]
    for ax, k in zip(axes, keys, strict=True):
        ax.plot(x, [r.get(k, float("nan")) for r in rows], marker="o", ms=3)
        ax.set_title(k)
        ax.set_xlabel("training FLOPs")
    fig.tight_layout()
    path = out / "rl_metrics.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
