"""Experiment tracking for ``agent train sft|rl`` (``--report-to``): TensorBoard, Weights & Biases, Trackio.

One :class:`Tracker` per run, opened by the main process only, fans each call out to every chosen
tracker: :meth:`Tracker.log` for scalars (nested dicts such as verdict counts become ``verdicts/<k>``;
non-numbers and non-finite values are left out) and :meth:`Tracker.log_table` for sample episodes
(text columns plus one image column). Where the data lands:

* ``tensorboard``: event files in ``OUT/tensorboard`` (scalars; the table as a markdown text summary;
  its images as image summaries).
* ``wandb``: a W&B run under ``OUT/wandb`` (``WANDB_MODE=offline`` keeps it local; ``wandb sync``
  uploads it later). Its id is kept in ``OUT/tracking.json`` so ``--resume`` continues the same run.
* ``trackio``: a Trackio project (local SQLite under ``$TRACKIO_DIR``, default ``~/.cache/huggingface/
  trackio``), one run per training run.

The tracker packages are optional (``pip install 'sftrl[tracking]'``); asking for a missing one fails
before training starts. Credentials are the trackers' own business (``wandb login`` / env variables):
they are never read, logged or stored here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

from pydantic import BeforeValidator

REPORT_TARGETS = ("tensorboard", "wandb", "trackio")
TENSORBOARD_DIR = "tensorboard"
STATE_FILE = "tracking.json"
DEFAULT_PROJECT = "sftrl"
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
# Longest text a table cell keeps: replies can be long, and trackers render cells inline.
MAX_CELL_CHARS = 2000


class TrackingError(ValueError):
    """A ``--report-to`` request that cannot work (unknown tracker, package not installed)."""


def parse_report_to(value: Any) -> list[str]:
    """``"none"``, ``"tensorboard,wandb"`` or a list of names → the trackers, in order, no repeats."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip().lower()
            if not name or name == "none" or name in names:
                continue
            if name not in REPORT_TARGETS:
                raise ValueError(
                    f"unknown tracker {name!r}; choose none or any of {', '.join(REPORT_TARGETS)}"
                )
            names.append(name)
    return names


ReportTo = Annotated[list[str], BeforeValidator(parse_report_to)]
"""A config field for ``--report-to``: accepts ``none``, comma-separated names or a list."""


def check_installed(targets: Iterable[str]) -> None:
    """Fail in one line, before any training, if a chosen tracker's package is missing."""
    for name in targets:
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise TrackingError(
                f"--report-to {name} needs the `{_PACKAGES[name]}` package "
                f"(pip install {_PACKAGES[name]}, or pip install 'sftrl[tracking]')"
            )


class DistributedSetupError(ValueError):
    """``accelerate launch`` asked for a distributed mode that accelerate does not run here."""


def check_distributed_type(state: Any) -> None:
    """Refuse a launch whose FSDP request accelerate ignored (instead of training another way).

    accelerate (1.15) turns ``ACCELERATE_USE_FSDP=true`` (``distributed_type: FSDP`` in the launch
    config) into FSDP only on multi-GPU/accelerator devices; on a machine without GPUs the processes
    come up as ``MULTI_CPU`` (gloo DDP) or ``NO`` and would train unsharded, each believing it is the
    configuration asked for.
    """
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")
    got = getattr(state.distributed_type, "name", str(state.distributed_type))
    if asked and got != "FSDP":
        raise DistributedSetupError(
            f"accelerate launch asked for FSDP but accelerate runs this process as {got}: accelerate "
            "enables FSDP only on GPUs/accelerators, not on CPU/gloo; use configs/accelerate/fsdp.yaml on "
            "GPUs, or plain data-parallel on CPU (accelerate launch --multi_gpu --num_processes N; "
            "agent train rl shards there too with --fsdp)"
        )


def end_processes() -> None:
    """Under ``accelerate launch``: wait for every process, then tear the process group down while
    the interpreter is intact. Left to interpreter exit, a rank was seen aborting after its work was
    done (SIGABRT, "terminate called without an active exception") and failing the launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def leave_helper_process() -> NoReturn:
    """End a launched non-main process once :func:`end_processes` has run: flush its output and exit
    at once, skipping interpreter finalization. There a helper rank was still seen aborting after
    all its work was done (SIGABRT, "terminate called without an active exception", twice in full
    CI runs, never in isolation), which fails the whole launch; gloo's C++ threads releasing
    Python-held tensors while the interpreter is torn down are a known cause (pytorch PR 179291).
    The main process, which writes every result, exits normally."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def process_info() -> tuple[bool, int]:
    """(is this the main process, how many data-parallel processes) under ``accelerate launch``."""
    import torch
    from accelerate import PartialState

    # cpu= as the trainers' use_cpu: without it a CPU-only process ignores the launcher's ranks.
    state = PartialState(cpu=not torch.cuda.is_available())
    check_distributed_type(state)
    return state.is_main_process, state.num_processes


def scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``metrics`` (bools as 0/1), nested mappings flattened as ``a/b``."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(scalars(value, prefix=name + "/"))
        elif isinstance(value, bool | int | float) and math.isfinite(float(value)):
            out[name] = float(value)
    return out


def _cell(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_CELL_CHARS:
        return value[:MAX_CELL_CHARS] + "…"
    return value


def episode_table(records: Sequence[Any], run_dir: Path, limit: int = 4) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) for the first ``limit`` logged episodes (``EpisodeRecord``): outcome, the last
    reply, the verifier's feedback on it and the first image the policy saw."""
    columns = ["episode", "seed", "success", "reward", "turns", "verdicts", "last_reply", "feedback", "image"]
    rows: list[list[Any]] = []
    for record in list(records)[:limit]:
        turns = record.turns
        last = turns[-1] if turns else None
        image = None
        for turn in turns:
            image = image or _first_image(turn.prompt, run_dir)
        rows.append(
            [
                record.episode_index,
                record.seed,
                bool(record.success),
                float(record.total_reward),
                len(turns),
                ", ".join(t.verdict.category for t in turns),
                _cell(last.reply.text if last else ""),
                _cell(last.verdict.message if last else (record.error or "")),
                image,
            ]
        )
    return columns, rows


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, Mapping) and b.get("text"))
    return ""


def sample_rows(dataset: Any, limit: int = 4) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) for the first ``limit`` rows of an ``agent data sft`` dataset: what the model
    is shown (the last prompt turn, with the verifier's feedback when the chain holds it), the reply
    it is taught and the row's first image."""
    columns = ["row", "prompt", "target", "image"]
    rows: list[list[Any]] = []
    for i in range(min(limit, len(dataset))):
        row = dataset[i]
        if "messages" in row:
            messages = list(row["messages"])
            target = _text(messages[-1].get("content")) if messages else ""
            prompt = _text(messages[-2].get("content")) if len(messages) > 1 else ""
        else:
            prompt_msgs = row.get("prompt")
            prompt = (
                _text(prompt_msgs[-1].get("content")) if isinstance(prompt_msgs, list) else str(prompt_msgs)
            )
            completion = row.get("completion")
            target = _text(completion[-1].get("content")) if isinstance(completion, list) else str(completion)
        images = row.get("images") or []
        rows.append([i, _cell(prompt), _cell(target), images[0] if images else None])
    return columns, rows


def _first_image(prompt: Sequence[Mapping[str, Any]], run_dir: Path) -> Path | None:
    for message in prompt:
        content = message.get("content")
        for block in content if isinstance(content, list) else ():
            if isinstance(block, Mapping) and block.get("type") == "image" and block.get("path"):
                path = run_dir / str(block["path"])
                if path.is_file():
                    return path
    return None


def _pil(image: Any) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as img:
        return img.convert("RGB")


class _TensorBoard:
    def __init__(self, out: Path, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / TENSORBOARD_DIR))
        self.writer.add_text(
            "config", "```json\n" + json.dumps(dict(config), indent=1, default=str) + "\n```"
        )

    def log(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        import numpy as np

        def esc(v: Any) -> str:
            return " ".join(str(v).split()).replace("|", "\\|")

        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for i, row in enumerate(rows):
            cells = [
                f"see {name}/{i}" if (c == "image" and v is not None) else esc(v)
                for c, v in zip(columns, row, strict=True)
            ]
            lines.append("| " + " | ".join(cells) + " |")
            for col, value in zip(columns, row, strict=True):
                if col == "image" and value is not None:
                    self.writer.add_image(f"{name}/{i}", np.asarray(_pil(value)), step, dataformats="HWC")
        self.writer.add_text(name, "\n".join(lines), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(
        self, out: Path, config: Mapping[str, Any], project: str, name: str, run_id: str | None
    ) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow" if run_id else None,
            dir=str(out),
            config=dict(config),
            # The training log is ours: no console capture, no banner.
            settings=wandb.Settings(console="off", silent=True),
        )
        self.id = self.run.id

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        data = [
            [
                self.wandb.Image(_pil(v)) if c == "image" and v is not None else v
                for c, v in zip(columns, row, strict=True)
            ]
            for row in rows
        ]
        self.run.log({name: self.wandb.Table(columns=list(columns), data=data)}, step=step)

    def close(self) -> None:
        self.run.finish()
        # finish() can return while wandb-core still writes the run's file (offline runs read back
        # or synced right after the command were seen truncated); teardown waits for the service.
        self.wandb.teardown()


class _Trackio:
    def __init__(self, config: Mapping[str, Any], project: str, name: str, resume: bool) -> None:
        import trackio

        self.trackio = trackio
        self.run = trackio.init(
            project=project,
            name=name,
            config=dict(config),
            resume="allow" if resume else "never",
            embed=False,
            auto_log_cpu=False,
            auto_log_gpu=False,
        )

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        data = [
            [
                self.trackio.Image(_pil(v)) if c == "image" and v is not None else v
                for c, v in zip(columns, row, strict=True)
            ]
            for row in rows
        ]
        self.run.log({name: self.trackio.Table(columns=list(columns), data=data)}, step=step)

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """Every chosen tracker of one run; with no targets every call is a no-op."""

    def __init__(
        self,
        out: Path,
        targets: Sequence[str],
        *,
        config: Mapping[str, Any],
        run_name: str | None = None,
        project: str = DEFAULT_PROJECT,
        resume: bool = False,
    ) -> None:
        self.out = Path(out)
        self.targets = list(targets)
        check_installed(self.targets)
        state_path = self.out / STATE_FILE
        state = json.loads(state_path.read_text()) if resume and state_path.exists() else {}
        name = run_name or state.get("run_name") or self.out.resolve().name
        config = json.loads(json.dumps(dict(config), default=str))  # paths etc. as plain text
        self._backends: list[Any] = []
        for target in self.targets:
            if target == "tensorboard":
                self._backends.append(_TensorBoard(self.out, config))
            elif target == "wandb":
                wb = _WandB(self.out, config, project, name, state.get("wandb_id"))
                state["wandb_id"] = wb.id
                self._backends.append(wb)
            else:
                self._backends.append(_Trackio(config, project, name, resume))
        if self.targets:
            state["run_name"] = name
            self.out.mkdir(parents=True, exist_ok=True)
            state_path.write_text(json.dumps(state, indent=1) + "\n")

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        values = scalars(metrics)
        if values:
            for backend in self._backends:
                backend.log(values, step)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        if rows:
            for backend in self._backends:
                backend.table(name, columns, rows, step)

    def close(self) -> None:
        for backend in self._backends:
            backend.close()
        self._backends = []

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def trainer_callback(tracker: Tracker) -> Any:
    """A ``transformers`` callback sending every trainer log entry (loss, lr, grad norm, eval loss)."""
    from transformers import TrainerCallback

    class _TrackerCallback(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and state.is_world_process_zero:
                tracker.log(logs, step=int(state.global_step))

    return _TrackerCallback()
