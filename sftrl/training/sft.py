"""``agent train sft``: supervised fine-tuning with TRL's ``SFTTrainer`` on an ``agent data sft`` dataset.

The loss covers only what the model should learn to say: ``messages`` rows train with
``assistant_only_loss`` (TRL swaps in a training chat template with ``{% generation %}`` markers for
known families such as Qwen2.5 / Qwen2.5-VL), ``prompt``/``completion`` rows with
``completion_only_loss`` (failed attempts and feedback in the prompt are context, never targets).
Checkpoints land in ``OUT/checkpoint-N`` (``--resume`` continues from the latest); the final model and
its processor/tokenizer are saved to ``OUT`` itself (LoRA adapters are merged, and also kept in
``OUT/adapter``), so ``from_pretrained(OUT)`` loads the trained model. ``OUT/loss_curve.json`` /
``.png`` hold the loss curve, ``OUT/metrics.jsonl`` every logged entry and ``OUT/sft_metrics.json``
the final metrics.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sftrl.config import validation_message
from sftrl.training.config import RESUMABLE_KEYS, SFTTrainConfig
from sftrl.training.tracking import (
    DistributedSetupError,
    Tracker,
    TrackingError,
    check_installed,
    end_processes,
    leave_helper_process,
    process_info,
    sample_rows,
    trainer_callback,
)

RUN_FILE = "sft_run.json"
METRICS_FILE = "sft_metrics.json"
CURVE_JSON = "loss_curve.json"
LOG_FILE = "metrics.jsonl"  # every trainer log entry, one JSON line each (as `train rl` writes)
CURVE_PNG = "loss_curve.png"
ADAPTER_DIR = "adapter"
# Models at least this large get activation checkpointing by default (memory); tiny ones never need it.
CHECKPOINTING_MIN_PARAMS = 100_000_000


def wants_checkpointing(setting: bool | None, model: Any) -> bool:
    """Whether to train ``model`` with activation checkpointing: ``setting`` when given, else on for
    models of at least :data:`CHECKPOINTING_MIN_PARAMS` parameters (it only costs time on small ones)
    that support it. Asking for it on a model that does not is a ``ValueError``."""
    supported = bool(getattr(model, "supports_gradient_checkpointing", False))
    if setting and not supported:
        raise ValueError(
            f"{type(model).__name__} does not support activation checkpointing: drop --gradient-checkpointing"
        )
    if setting is not None:
        return setting
    return supported and sum(p.numel() for p in model.parameters()) >= CHECKPOINTING_MIN_PARAMS


class SFTError(ValueError):
    """A training request that cannot run (bad data dir, model, options…): one line for the CLI."""


@dataclass
class DataInfo:
    """What training needs to know about a dataset directory."""

    train: Any
    validation: Any | None
    format: str
    """``messages`` (language modeling) or ``prompt_completion``."""
    vision: bool


def inspect_data(data_dir: Path | str) -> DataInfo:
    """Load an ``agent data sft`` directory and check it is an SFT dataset TRL can train on."""
    from datasets import Dataset, DatasetDict, load_from_disk

    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise SFTError(
            f"no dataset at {data_dir} (build one with `agent data sft RUN_DIR... --out {data_dir}`)"
        )
    try:
        loaded = load_from_disk(str(data_dir))
    except (FileNotFoundError, ValueError) as exc:
        raise SFTError(f"{data_dir} is not a saved dataset ({str(exc).splitlines()[0]})") from exc
    if isinstance(loaded, Dataset):
        train, validation = loaded, None
    elif isinstance(loaded, DatasetDict):
        if "train" not in loaded:
            raise SFTError(f"{data_dir} has no train split (splits: {', '.join(loaded) or 'none'})")
        train, validation = loaded["train"], loaded.get("validation")
    else:  # pragma: no cover - load_from_disk returns one of the two
        raise SFTError(f"{data_dir}: unexpected dataset type {type(loaded).__name__}")
    cols = set(train.column_names)
    if {"chosen", "rejected"} <= cols:
        raise SFTError(
            f"{data_dir} is a preference dataset (`agent data pairs`); SFT needs `agent data sft` output"
        )
    if "messages" in cols:
        fmt = "messages"
    elif {"prompt", "completion"} <= cols:
        fmt = "prompt_completion"
    else:
        raise SFTError(
            f"{data_dir}: no `messages` or `prompt`/`completion` columns (columns: {', '.join(sorted(cols))})"
        )
    if len(train) == 0:
        raise SFTError(f"{data_dir}: the train split is empty")
    return DataInfo(
        train, validation if validation is not None and len(validation) else None, fmt, "images" in cols
    )


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _prepare_out(cfg: SFTTrainConfig) -> Path | None:
    """Check ``out`` against ``--resume``; returns the checkpoint to resume from (or None)."""
    out = cfg.out
    ckpts = _checkpoints(out) if out.exists() else []
    saved_path = out / RUN_FILE
    if not cfg.resume:
        if ckpts or saved_path.exists():
            raise SFTError(
                f"{out} already holds an SFT run; pass --resume to continue it or choose another --out"
            )
        return None
    if saved_path.exists():
        saved = json.loads(saved_path.read_text())
        now = json.loads(cfg.model_dump_json())
        diffs = sorted(
            k for k in set(saved) | set(now) if k not in RESUMABLE_KEYS and saved.get(k) != now.get(k)
        )
        if diffs:
            raise SFTError(
                f"--resume: {out} was trained with different options ({', '.join(diffs)}); "
                "resume with the same options or choose another --out"
            )
    return ckpts[-1] if ckpts else None


def load_model(model_name: str, vision_data: bool = False) -> tuple[Any, Any]:
    """(model, processing class) from a local directory (or hub id); VLMs get their processor."""
    from sftrl.agents.model_source import ModelSourceError, load_error, model_load_kwargs

    try:  # before the heavy imports: a mistyped path fails at once
        source = model_load_kwargs(model_name)
    except ModelSourceError as exc:
        raise SFTError(str(exc)) from None

    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    from sftrl.agents.tiny import register_processors

    try:
        config = AutoConfig.from_pretrained(model_name, **source)
    except (OSError, ValueError) as exc:
        raise SFTError(load_error(model_name, exc, source)) from exc
    is_vlm = getattr(config, "vision_config", None) is not None
    if vision_data and not is_vlm:
        raise SFTError(f"the dataset has images but {model_name} is not a vision-language model")
    # bf16 where the hardware has it; float32 on CPU (bf16 matmuls are slow or unsupported there).
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        if is_vlm:
            register_processors()  # sftrl's tiny VLM ships an image-only processor class
            processing_class = AutoProcessor.from_pretrained(model_name, **source)
            model = AutoModelForImageTextToText.from_pretrained(model_name, dtype=dtype, **source)
        else:
            processing_class = AutoTokenizer.from_pretrained(model_name, **source)
            model = AutoModelForCausalLM.from_pretrained(model_name, dtype=dtype, **source)
    except (OSError, ValueError) as exc:
        raise SFTError(load_error(model_name, exc, source)) from exc
    return model, processing_class


class TRLVersionError(SFTError):
    """The installed TRL lacks an option sftrl sets (its names move across releases)."""


def declared_trl_range() -> str:
    """The TRL requirement sftrl declares (the range its tests run with), e.g. ``trl<1.17,>=1.16``."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("sftrl") or []
    except PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
        return "trl"
    return next((r.split(";")[0].replace(" ", "") for r in reqs if r.startswith("trl")), "trl")


_RENAMED = {"activation_checkpointing": "gradient_checkpointing"}
"""TrainingArguments options by their newer name -> the older name of the same setting."""


def trl_config(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` for a TRL config class, refusing options this TRL release does not have.

    Dropping them would train with TRL's defaults instead of what was asked, without a word.
    """
    known = getattr(cls, "__dataclass_fields__", {})
    values = dict(values)
    for new, old in _RENAMED.items():
        # A newer name of a setting the older one still carries (both are passed, equal): older
        # transformers releases know only the old one, and lose nothing when the new one is left out.
        if new in values and new not in known and old in known and values.get(old) == values[new]:
            del values[new]
    unknown = sorted(set(values) - set(known))
    if unknown:
        import transformers
        import trl

        raise TRLVersionError(
            f"TRL {trl.__version__} (transformers {transformers.__version__}) has no {cls.__name__} "
            f"option {', '.join(unknown)}: sftrl is tested with {declared_trl_range()} "
            f"(pip install '{declared_trl_range()}')"
        )
    return cls(**values)


def sft_config(
    cfg: SFTTrainConfig, info: DataInfo, *, checkpointing: bool = False, quiet: bool = True
) -> Any:
    """The ``SFTConfig`` of a run: loss masking by row format, CPU-friendly defaults, checkpoints."""
    import torch
    from trl import SFTConfig

    messages = info.format == "messages"
    cuda = torch.cuda.is_available()
    values: dict[str, Any] = {
        "output_dir": str(cfg.out),
        "max_steps": cfg.max_steps if cfg.max_steps is not None else -1,
        "num_train_epochs": cfg.epochs,
        "learning_rate": cfg.lr,
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "weight_decay": cfg.weight_decay,
        "warmup_steps": cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        "lr_scheduler_type": cfg.lr_scheduler,
        "train_sampling_strategy": "group_by_length" if cfg.group_by_length else "random",
        # The FLOP budget counts real tokens: 6·N per non-padding token of each training batch.
        "include_num_input_tokens_seen": "non_padding",
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "eval_strategy": "steps" if info.validation is not None and cfg.eval_steps else "no",
        "eval_steps": cfg.eval_steps,
        "report_to": [],  # trackers are fed by sftrl.training.tracking (one mechanism for sft and rl)
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "fp16": False,
        "use_cpu": not cuda,
        # TRL turns checkpointing on by default; it only costs time on a small model.
        "activation_checkpointing": checkpointing,
        "gradient_checkpointing": checkpointing,
        "dataloader_pin_memory": cuda,
        "disable_tqdm": quiet,
        # Image rows are never truncated: a cut could drop image tokens and desync pixel_values. Text rows
        # neither by default: the target reply is at the end, so truncation would cut what is trained.
        "max_length": None if info.vision else cfg.max_length,
        # messages rows: the assistant replies only; prompt/completion rows: the completion only.
        "assistant_only_loss": messages,
        "completion_only_loss": not messages,
    }
    return trl_config(SFTConfig, values)


def _lora_config(cfg: SFTTrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha or 2 * cfg.lora_r,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def build_trainer(
    cfg: SFTTrainConfig,
    info: DataInfo,
    model: Any,
    processing_class: Any,
    *,
    callbacks: list[Any] | None = None,
    quiet: bool = True,
) -> Any:
    """The configured ``SFTTrainer`` (loss masking by row format, LoRA when asked)."""
    from trl import SFTTrainer

    try:
        checkpointing = wants_checkpointing(cfg.gradient_checkpointing, model)
    except ValueError as exc:
        raise SFTError(str(exc)) from None
    args = sft_config(cfg, info, checkpointing=checkpointing, quiet=quiet)
    trainer_cls = SFTTrainer
    if cfg.batch_groups == "turns":
        from sftrl.training.batching import GroupedBatchSampler, turn_counts

        column = "messages" if info.format == "messages" else "prompt"
        try:
            sampler = GroupedBatchSampler(turn_counts(info.train[column]), args.train_batch_size, cfg.seed)
        except ValueError as exc:
            raise SFTError(f"--batch-groups turns: {exc}") from None

        class _TurnGroupedTrainer(SFTTrainer):  # type: ignore[misc]
            def _get_train_sampler(self, train_dataset: Any = None) -> Any:
                return sampler

        trainer_cls = _TurnGroupedTrainer
    try:
        return trainer_cls(
            model=model,
            args=args,
            train_dataset=info.train,
            eval_dataset=info.validation,
            processing_class=processing_class,
            peft_config=_lora_config(cfg) if cfg.lora else None,
            callbacks=callbacks,
        )
    except (ValueError, RuntimeError, TypeError) as exc:
        raise SFTError(f"cannot set up training: {str(exc).splitlines()[0]}") from exc


def _progress_callback(progress: Callable[[str], None], step_times: list[float]) -> Any:
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self._t0 = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step_times.append(time.perf_counter() - self._t0)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
        ) -> None:
            parts = [f"step {state.global_step}/{state.max_steps}"]
            for key in ("loss", "eval_loss", "learning_rate", "grad_norm", "mean_token_accuracy"):
                if isinstance((logs or {}).get(key), int | float):
                    parts.append(f"{key} {logs[key]:.4g}")  # type: ignore[index]
            if len(parts) > 1:
                progress("  ".join(parts))

    return _Progress()


def loss_curve(log_history: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Train and eval loss points from ``trainer.state.log_history``."""
    train, evals = [], []
    for entry in log_history:
        if "loss" in entry:
            point = {"step": entry.get("step"), "loss": entry["loss"], "epoch": entry.get("epoch")}
            point.update(
                {k: entry[k] for k in ("learning_rate", "grad_norm", "mean_token_accuracy") if k in entry}
            )
            train.append(point)
        if "eval_loss" in entry:
            evals.append({"step": entry.get("step"), "loss": entry["eval_loss"], "epoch": entry.get("epoch")})
    return {"train": train, "eval": evals}


def plot_loss_curve(curve: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """A small PNG line chart of the train (and validation) loss against the optimizer step (Pillow only)."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 640, 400, 64, 16, 32, 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    series = [
        (name, color, curve[name]) for name, color in (("train", (31, 119, 180)), ("eval", (214, 39, 40)))
    ]
    points = [(p["step"], p["loss"]) for _, _, pts in series for p in pts if math.isfinite(p["loss"])]
    draw.text((left, 8), title, fill="black")
    if points:
        x0, x1 = min(x for x, _ in points), max(x for x, _ in points)
        y0, y1 = min(y for _, y in points), max(y for _, y in points)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)

        def xy(x: float, y: float) -> tuple[float, float]:
            fx, fy = (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)
            return left + fx * (width - left - right), height - bottom - fy * (height - top - bottom)

        draw.rectangle((left, top, width - right, height - bottom), outline=(160, 160, 160))
        for frac in (0.0, 0.5, 1.0):
            y = y0 + frac * (y1 - y0)
            draw.text((4, xy(x0, y)[1] - 6), f"{y:.3g}", fill="black")
            x = x0 + frac * (x1 - x0)
            draw.text((xy(x, y0)[0] - 8, height - bottom + 6), f"{x:.0f}", fill="black")
        draw.text((width // 2 - 40, height - 18), "optimizer step", fill="black")
        for i, (name, color, pts) in enumerate(series):
            coords = [xy(p["step"], p["loss"]) for p in pts if math.isfinite(p["loss"])]
            if len(coords) > 1:
                draw.line(coords, fill=color, width=2)
            for cx, cy in coords if name == "eval" or len(coords) == 1 else []:
                draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=color)
            if coords:
                draw.text((width - right - 90, top + 6 + 14 * i), f"{name} loss", fill=color)
    img.save(path, format="PNG")


def _full_state_dict(trainer: Any, lora: bool) -> dict[str, Any] | None:
    """The trained weights, gathered in full on the main process (``accelerator.get_state_dict``).

    Call on EVERY process: under FSDP (``fsdp_state_dict_type: FULL_STATE_DICT``) or DeepSpeed ZeRO-3
    the gather is a collective; under DDP or one process it is the unwrapped model's state dict. LoRA
    runs merge the adapter into the model first, so they keep saving from the model itself (None).
    """
    if lora:
        return None
    return trainer.accelerator.get_state_dict(trainer.model)


def _save_final(
    trainer: Any, processing_class: Any, out: Path, lora: bool, state_dict: dict[str, Any] | None
) -> None:
    model = trainer.accelerator.unwrap_model(trainer.model)
    if lora:
        adapter = out / ADAPTER_DIR
        shutil.rmtree(adapter, ignore_errors=True)
        model.save_pretrained(str(adapter))
        model = model.merge_and_unload()
    model.save_pretrained(str(out), state_dict=state_dict)
    processing_class.save_pretrained(str(out))


def run_sft(cfg: SFTTrainConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the metrics also written to ``OUT/sft_metrics.json``."""
    info = inspect_data(cfg.data)
    try:
        check_installed(cfg.report_to)
    except TrackingError as exc:
        raise SFTError(str(exc)) from None
    resume_from = _prepare_out(cfg)
    try:
        main, processes = process_info()
    except DistributedSetupError as exc:
        raise SFTError(str(exc)) from None
    model, processing_class = load_model(cfg.model, info.vision)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if main:
        (cfg.out / RUN_FILE).write_text(cfg.model_dump_json(indent=1) + "\n")
    from sftrl.training.evaluation import budget_eval_callback, parse_eval_env, plot_evals, validate_specs

    try:
        specs = [parse_eval_env(s) for s in cfg.eval_env]
        validate_specs(specs)
    except ValueError as exc:
        raise SFTError(str(exc)) from None
    step_times: list[float] = []
    callback = _progress_callback(progress or (lambda _m: None), step_times)
    budget = budget_eval_callback(
        cfg,
        specs,
        progress or (lambda _m: None),
        out=cfg.out,
        model_name=str(cfg.model),
        seed=cfg.seed,
        flops=lambda state, n: 6.0 * n * float(state.num_input_tokens_seen),  # non-padding tokens
    )
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # no per-map bars in a training log; progress() reports one line per log step
    tracker = _open_tracker(cfg, resume=resume_from is not None)
    trainer = build_trainer(
        cfg, info, model, processing_class, callbacks=[callback, budget, trainer_callback(tracker)]
    )
    columns, rows = sample_rows(info.train, limit=4)
    tracker.log_table("train_samples", columns, rows, step=0)
    if progress is not None:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # our callback prints one line per log instead of a dict
        if resume_from is not None:
            progress(f"resuming from {resume_from}")
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics: dict[str, Any] = {
        "global_step": trainer.state.global_step,
        "flops": budget.flops(trainer.state),
        "tokens": trainer.state.num_input_tokens_seen,
        "train_loss": float(result.training_loss),
        "train_runtime_s": round(time.perf_counter() - t0, 3),
    }
    if info.validation is not None and cfg.evaluate:
        metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
    curve = loss_curve(trainer.state.log_history)
    if curve["train"]:
        metrics["initial_loss"] = float(curve["train"][0]["loss"])
        metrics["final_loss"] = float(curve["train"][-1]["loss"])
    if step_times:
        metrics["step_time_s"] = round(sorted(step_times)[len(step_times) // 2], 4)  # median
        metrics["steps_this_run"] = len(step_times)
    state_dict = _full_state_dict(trainer, cfg.lora)  # a collective under FSDP / ZeRO-3: every rank
    if main:  # data-parallel ranks hold the same weights and logs: one writes them
        _save_final(trainer, processing_class, cfg.out, cfg.lora, state_dict)
        (cfg.out / CURVE_JSON).write_text(json.dumps(curve, indent=1) + "\n")
        (cfg.out / LOG_FILE).write_text(
            "".join(json.dumps(e, sort_keys=True) + "\n" for e in trainer.state.log_history)
        )
        plot_loss_curve(curve, cfg.out / CURVE_PNG, f"SFT {Path(cfg.model).name} on {cfg.data.name}")
        if specs:
            plot_evals(cfg.out, f"SFT {Path(cfg.model).name}: evaluation")
    tracker.close()
    metrics.update(
        {
            "out": str(cfg.out),
            "model": cfg.model,
            "data": str(cfg.data),
            "format": info.format,
            "modality": "vision" if info.vision else "text",
            "lora": cfg.lora,
            "rows_train": len(info.train),
            "rows_validation": len(info.validation) if info.validation is not None else 0,
            "resumed_from": str(resume_from) if resume_from else None,
            "processes": processes,
        }
    )
    metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    if main:
        (cfg.out / METRICS_FILE).write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    trainer.accelerator.wait_for_everyone()  # no rank returns before the final model is on disk
    return metrics


def _open_tracker(cfg: SFTTrainConfig, *, resume: bool) -> Tracker:
    """The run's trackers, on the main process only (others get a no-op tracker)."""
    targets = cfg.report_to if process_info()[0] else []
    config = cfg.model_dump(mode="json")
    return Tracker(cfg.out, targets, config=config, run_name=f"sft-{cfg.out.name}", resume=resume)


def train_config(**values: Any) -> SFTTrainConfig:
    """A validated :class:`SFTTrainConfig`; ``None`` values mean "the default" (argparse passes them)."""
    values = {k: v for k, v in values.items() if v is not None}
    try:
        return SFTTrainConfig.model_validate(values)
    except ValidationError as exc:
        raise SFTError(validation_message(exc)) from exc


def train_sft(
    data_dir: Path | str,
    model: Path | str,
    out: Path | str,
    *,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Fine-tune ``model`` on the dataset at ``data_dir`` into ``out``; returns the final metrics.

    ``options`` are :class:`SFTTrainConfig` fields (``max_steps``, ``lr``, ``batch_size``, ``lora``,
    ``report_to``, ``resume``…). Raises :class:`SFTError` (one line) when the run cannot start.
    """
    cfg = train_config(data=Path(data_dir), model=str(model), out=Path(out), **options)
    return run_sft(cfg, progress=progress)


def train_sft_main(
    data: Path | str, model: str, out: Path | str, *, json_output: bool = False, **options: Any
) -> int:
    """``agent train sft --data DATA_DIR --model PATH --out CKPT …``: 0, or 2 with a one-line error."""

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        cfg = train_config(data=Path(data), model=str(model), out=Path(out), **options)
        metrics = run_sft(cfg, progress=progress)
    except SFTError as exc:
        print(f"agent: error: {exc}", file=sys.stderr)
        return 2
    main = process_info()[0]
    end_processes()
    if not main:
        leave_helper_process()  # the main process reports for all
    if json_output:
        print(json.dumps(metrics, sort_keys=True))
    else:
        loss = metrics.get("final_loss")
        print(
            f"saved to {cfg.out} after {metrics['global_step']} steps"
            + (f" (final loss {loss:.4f})" if isinstance(loss, float) else "")
            + f"; loss curve {cfg.out / CURVE_PNG}",
            file=sys.stderr,
        )
    return 0
