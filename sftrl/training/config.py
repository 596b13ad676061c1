"""Validated options of the offline training commands (``agent data sft|pairs``, ``agent train sft``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sftrl.training.tracking import ReportTo

Chains = Literal["success", "full", "corrected"]


class DatasetBuildConfig(BaseModel):
    """Options shared by every logged-episodes -> dataset builder."""

    model_config = ConfigDict(extra="forbid")

    run_dirs: list[Path] = Field(min_length=1)
    out: Path
    val_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Share of episode seeds held out (a seed's rows are all in one split)."""
    seed: int = Field(default=0, ge=0)
    """Salt of the seed -> split assignment."""
    dedup: bool = True
    max_episodes: int | None = Field(default=None, ge=1)
    """Read at most this many (non-error) episodes, over the run dirs in the order given."""
    overwrite: bool = False


class SFTDataConfig(DatasetBuildConfig):
    """``agent data sft``: which model calls become SFT rows (see docs/training.md)."""

    chains: Chains = "success"


class PairsConfig(DatasetBuildConfig):
    """``agent data pairs``: (failed reply, corrected reply) preference pairs for DPO."""


LRScheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "inverse_sqrt"]


class BudgetEvalOptions(BaseModel):
    """What ``agent train sft`` and ``agent train rl`` share: a FLOP budget and periodic evaluation."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_flops: float | None = Field(default=None, gt=0)
    """Stop at the first step past this many training FLOPs (6·N per trained token, 2·N per rollout or
    scoring token; see sftrl.training.evaluation)."""
    eval_every: int | None = Field(default=None, ge=1)
    """Evaluate every N optimizer steps (SFT) / updates (RL), and always before the first and after the
    last one."""
    eval_flops: float | None = Field(default=None, gt=0)
    """Also evaluate each time training compute passes another multiple of this many FLOPs (curves
    against compute, matched across SFT and RL)."""
    eval_at_start: bool = True
    """Evaluate the starting model (False when it was evaluated already, e.g. a shared warm start)."""
    eval_env: list[str] = Field(default_factory=list)
    """Evaluation envs, ``[NAME=]ENV[:KEY=VALUE,...]``
    (e.g. ``ood=gp:split=rule-ood,prompt_style=compact``); greedy unless ``temperature=T``; ``at=final``:
    only at the run's last evaluation."""
    eval_episodes: int = Field(default=64, ge=1)
    """Episodes per evaluation env (unless its spec sets ``episodes``)."""
    eval_seed: int = Field(default=12345, ge=0)
    """Run seed of the evaluation runs: every evaluation plays the same seeds (and sampled specs the
    same per-call sampling seeds)."""
    eval_max_new_tokens: int = Field(default=128, ge=1)
    """Reply length cap of the evaluation episodes."""


class SFTTrainConfig(BudgetEvalOptions):
    """``agent train sft``: TRL ``SFTTrainer`` on a dataset written by ``agent data sft``.

    The CLI's flags and help are generated from these fields (``sftrl.cli_flags``).
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    data: Path
    """Dataset directory (``agent data sft --out``)."""
    model: str
    """A local model directory (or a hub id when the hub is reachable)."""
    out: Path
    """Checkpoint and final model directory."""
    max_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps; overrides ``epochs`` when set."""
    epochs: float = Field(default=1.0, gt=0)
    """Passes over the training split (unless ``max_steps`` is set)."""
    lr: float = Field(default=1e-5, gt=0)
    """Learning rate."""
    batch_size: int = Field(default=4, ge=1)
    """Per-device batch size."""
    grad_accum: int = Field(default=1, ge=1)
    """Gradient accumulation steps."""
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Share of the steps with a linear learning-rate warm-up."""
    lr_scheduler: LRScheduler = "linear"
    """Learning-rate schedule after the warm-up."""
    group_by_length: bool = False
    """Batch rows of similar length together: less padding, but on data mixing kinds of rows each batch
    becomes nearly one kind, which can slow learning far more than it saves (docs/repro.md)."""
    batch_groups: Literal["none", "turns"] = "none"
    """turns: each batch holds rows with the same number of conversation turns, mixed at random
    otherwise (less padding than random batches, kinds still mixed); none: random batches."""
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_length: int | None = Field(default=None, ge=16)
    """Truncate text rows to this many tokens (None: no truncation; never applied to image rows)."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    lora_r: int = Field(default=16, ge=1)
    """LoRA rank."""
    lora_alpha: int | None = Field(default=None, ge=1)
    """Defaults to ``2 * lora_r``."""
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    save_steps: int = Field(default=500, ge=1)
    """Checkpoint every N steps."""
    save_total_limit: int | None = Field(default=2, ge=1)
    """Checkpoints kept (older ones are deleted)."""
    logging_steps: int = Field(default=1, ge=1)
    eval_steps: int | None = Field(default=None, ge=1)
    """Evaluate on the validation split every N steps (it is always evaluated once at the end)."""
    evaluate: bool = True
    """Evaluate on the validation split."""
    gradient_checkpointing: bool | None = None
    """Activation checkpointing; None: on for models of >= 100M parameters, off for small ones."""
    report_to: ReportTo = Field(default_factory=list)
    """Trackers for the loss curve and sample rows: tensorboard, wandb, trackio (several allowed; none)."""
    resume: bool = False
    """Continue from the latest checkpoint in ``out``."""
    seed: int = Field(default=0, ge=0)

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a model directory")
        return value

    @model_validator(mode="after")
    def _one_batching(self) -> SFTTrainConfig:
        if self.group_by_length and self.batch_groups != "none":
            raise ValueError("group_by_length and batch_groups both choose the batches: set one")
        return self


# Options that may change between a run and its --resume without changing what is trained.
RESUMABLE_KEYS = frozenset(
    {
        "max_steps",
        "epochs",
        "resume",
        "report_to",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "eval_steps",
        "evaluate",
    }
)
