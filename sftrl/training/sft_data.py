"""Logged episodes -> a supervised fine-tuning ``DatasetDict`` on disk, in TRL's conversational format.

Every row comes from one logged model call (``TurnRecord``): the messages the policy saw and the reply
the verifier accepted. ``chains`` decides which calls and which context (see docs/training.md):

* ``success``: steps of successful episodes; the step's task prompt (no failed attempts, no feedback)
  -> the accepted reply, as a ``messages`` column ``[user…, assistant]`` (train with
  ``assistant_only_loss``). The paper's SFT data; a V-IRL episode gives one row per rail step.
* ``full``: steps of successful episodes with the whole chain the model saw: failed attempts and the
  verifier's "You failed this trial because …" turns stay in the prompt and only the accepted reply is
  the target. ``prompt`` / ``completion`` columns, so failed replies are context, never trained on.
* ``corrected``: only calls that were correct after verifier feedback (attempt > 0), from any episode;
  same ``prompt`` / ``completion`` layout as ``full``.

Rows are deduplicated by content hash and split train/validation by episode seed (all rows of a seed
land in one split). Text datasets use string contents; image datasets use content parts
(``{"type": "image"}`` / ``{"type": "text", "text": …}``) plus an ``images`` column. The module also
holds the pieces :mod:`sftrl.training.pairs` shares (reading logs, splitting, writing, the card).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from sftrl.agents.trajectory import (
    EPISODES_FILE,
    EpisodeRecord,
    ImageStore,
    LogError,
    TurnRecord,
    iter_episodes,
)
from sftrl.config import ConfigError, load_yaml, validation_message
from sftrl.training.config import Chains, DatasetBuildConfig, SFTDataConfig

if TYPE_CHECKING:
    from datasets import DatasetDict, Features

TRAIN, VALIDATION = "train", "validation"
META_FILE = "sftrl_dataset.json"
CARD_FILE = "README.md"
RUN_CONFIG_FILE = "config.yaml"

CHAIN_DESCRIPTIONS: dict[str, str] = {
    "success": "steps of successful episodes: the step's task prompt (no failed attempts, no feedback) -> "
    "the reply the verifier accepted; one row per model call",
    "full": "steps of successful episodes with the whole chain the model saw (failed attempts and verifier "
    "feedback turns in the prompt) -> the accepted reply (the completion; failed replies are context only)",
    "corrected": "model calls that were correct after verifier feedback (attempt > 0), from any episode: "
    "the chain -> the corrected reply",
}

META_FEATURES: dict[str, str] = {
    "seed": "int64",
    "env_id": "string",
    "run_id": "string",
    "episode_index": "int64",
    "step": "int64",
    "attempt": "int64",
}


class DataError(ValueError):
    """Logs that cannot become a dataset (missing, corrupt, nothing selected…): one line for the CLI."""


@dataclass
class ImageRef:
    run_dir: Path
    path: str
    sha: str


@dataclass
class Row:
    """One dataset row before images are loaded: message columns, image references and provenance."""

    columns: dict[str, list[dict[str, Any]]]
    images: list[ImageRef]
    meta: dict[str, Any]
    """Metadata columns (always ``seed``, the split key) plus ``_run_dir`` for bookkeeping."""


@dataclass
class RunSource:
    """What one run directory contributed (for the dataset card)."""

    run_dir: Path
    config: dict[str, Any]
    env_ids: Counter[str] = field(default_factory=Counter)
    policies: Counter[str] = field(default_factory=Counter)
    episodes: int = 0
    error_episodes: int = 0
    successful_episodes: int = 0
    rows: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "env_ids": sorted(self.env_ids),
            "policies": sorted(self.policies),
            "config": self.config,
            "episodes": self.episodes,
            "error_episodes": self.error_episodes,
            "successful_episodes": self.successful_episodes,
            "rows": self.rows,
        }


# --------------------------------------------------------------------------- reading logs

# Run-config keys never copied into a dataset card (a card is meant to be shared).
_SECRET_HINTS = ("key", "token", "secret", "password")


def _run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_CONFIG_FILE
    if not path.exists():
        return {}
    try:
        config = load_yaml(path)
    except ConfigError as exc:  # a broken config only costs the card its details
        return {"unreadable_config": str(exc).splitlines()[0]}
    return {k: v for k, v in config.items() if not any(h in k.lower() for h in _SECRET_HINTS)}


def read_runs(
    run_dirs: Sequence[Path], max_episodes: int | None = None
) -> list[tuple[RunSource, list[EpisodeRecord]]]:
    """Each run directory's source info and non-error episodes; a one-line :class:`DataError` if bad."""
    out: list[tuple[RunSource, list[EpisodeRecord]]] = []
    budget = max_episodes
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise DataError(f"{run_dir}: no such run directory")
        log = run_dir / EPISODES_FILE
        if not log.exists():
            raise DataError(
                f"{run_dir}: no trajectory log ({EPISODES_FILE}); is this an `agent run --out` directory?"
            )
        source = RunSource(run_dir=run_dir, config=_run_config(run_dir))
        episodes: list[EpisodeRecord] = []
        total = 0
        try:
            for record in iter_episodes(log):
                total += 1
                if record.error is not None:
                    source.error_episodes += 1
                    continue
                if budget is not None and len(episodes) >= budget:
                    break
                if record.env_config.get("protocol") == "tools":
                    raise DataError(
                        f"{run_dir}: episode {record.episode_index} was run in tool-calling mode "
                        "(--protocol tools); SFT datasets are built from json-protocol logs only"
                    )
                episodes.append(record)
                source.successful_episodes += int(record.success)
                source.env_ids[record.env_id] += 1
                source.policies[str(record.policy.get("name", "?"))] += 1
        except LogError as exc:  # corrupt lines and wrongly-shaped records alike
            raise DataError(str(exc)) from exc
        if total == 0:
            raise DataError(f"{run_dir}: the log holds no episodes")
        if not episodes and source.error_episodes:
            raise DataError(f"{run_dir}: all {source.error_episodes} logged episodes crashed (error records)")
        source.episodes = len(episodes)
        if budget is not None:
            budget -= len(episodes)
        out.append((source, episodes))
    return out


def steps_of(record: EpisodeRecord) -> list[list[TurnRecord]]:
    """The episode's model calls grouped by env step (attempts of one step together, in order)."""
    groups: list[list[TurnRecord]] = []
    for turn in record.turns:
        if groups and groups[-1][0].step == turn.step:
            groups[-1].append(turn)
        else:
            groups.append([turn])
    return groups


def select_sft_calls(record: EpisodeRecord, chains: Chains) -> list[tuple[list[dict[str, Any]], TurnRecord]]:
    """(prompt message records, call whose reply is the target) that ``chains`` takes from ``record``."""
    if chains != "corrected" and not record.success:
        return []
    out: list[tuple[list[dict[str, Any]], TurnRecord]] = []
    for turns in steps_of(record):
        if chains == "corrected":
            out.extend((t.prompt, t) for t in turns if t.attempt > 0 and t.verdict.correct)
            continue
        last = turns[-1]
        if not last.verdict.correct:
            continue
        # The first attempt's prompt is the step's task alone: a task observation starts a new conversation.
        prompt = turns[0].prompt if chains == "success" and turns[0].attempt == 0 else last.prompt
        out.append((prompt, last))
    return out


# --------------------------------------------------------------------------- message conversion


def to_parts(record: dict[str, Any], run_dir: Path, images: list[ImageRef], where: str) -> dict[str, Any]:
    """A logged message record as a TRL message whose content is a list of parts; collects its images."""
    role = record.get("role")
    if role not in ("system", "user", "assistant"):
        raise DataError(f"{where}: unsupported message role {role!r} (tool-calling logs are not supported)")
    if record.get("tool_calls"):
        raise DataError(f"{where}: assistant tool calls are not supported in SFT data")
    content = record.get("content")
    if isinstance(content, str):
        return {"role": role, "content": [{"type": "text", "text": content}]}
    parts: list[dict[str, Any]] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            if "path" not in block:
                raise DataError(
                    f"{where}: an image block has no stored file (was the run logged without images?)"
                )
            # TRL fills image placeholders from the `images` column, in order.
            parts.append({"type": "image", "text": None})
            images.append(ImageRef(run_dir, block["path"], str(block.get("id", block["path"]))))
        else:
            raise DataError(f"{where}: unsupported content block type {kind!r}")
    return {"role": role, "content": parts}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _flatten(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text-only datasets: contents as plain strings (what text chat templates such as Qwen2.5 expect)."""
    return [{"role": m["role"], "content": "".join(p["text"] or "" for p in m["content"])} for m in messages]


def content_key(kind: str, columns: dict[str, list[dict[str, Any]]], images: list[ImageRef]) -> str:
    """Hash of what a row trains on: message texts and image content hashes (not provenance)."""
    payload = json.dumps([kind, columns, [i.sha for i in images]], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- splitting and writing


def _unit(salt: int, seed: int) -> float:
    digest = hashlib.sha256(f"sftrl-split:{salt}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def validation_seeds(seeds: Iterable[int], val_fraction: float, salt: int = 0) -> set[int]:
    """Episode seeds held out for validation.

    A seed's side depends only on (salt, seed), so adding runs never moves a seed across splits. With a
    positive fraction and at least two seeds, validation gets at least one seed and train keeps one.
    """
    uniq = sorted(set(seeds))
    if val_fraction <= 0 or len(uniq) < 2:
        return set()
    val = {s for s in uniq if _unit(salt, s) < val_fraction}
    if not val:
        val = {min(uniq, key=lambda s: _unit(salt, s))}
    if len(val) == len(uniq):
        val.discard(max(val, key=lambda s: _unit(salt, s)))
    return val


def dataset_features(message_columns: Sequence[str], vision: bool, meta: dict[str, str]) -> Features:
    from datasets import Features, Image, List, Value

    if vision:
        message = {
            "role": Value("string"),
            "content": List({"type": Value("string"), "text": Value("string")}),
        }
    else:
        message = {"role": Value("string"), "content": Value("string")}
    feats: dict[str, Any] = {name: List(message) for name in message_columns}
    if vision:
        feats["images"] = List(Image())
    feats.update({name: Value(dtype) for name, dtype in meta.items()})
    return Features(feats)


def _materialize(row: Row, meta_names: Iterable[str], stores: dict[Path, ImageStore]) -> dict[str, Any]:
    out: dict[str, Any] = dict(row.columns)
    if row.images:
        out["images"] = []
        for ref in row.images:
            store = stores.setdefault(ref.run_dir, ImageStore(ref.run_dir))
            try:
                out["images"].append({"bytes": store.get(ref.path), "path": None})
            except FileNotFoundError as exc:
                raise DataError(
                    f"{ref.run_dir}: image {ref.path} is referenced by the log but missing"
                ) from exc
    out.update({name: row.meta[name] for name in meta_names})
    return out


def check_out(cfg: DatasetBuildConfig) -> None:
    """Refuse to clobber an existing dataset (unless --overwrite) or to write into a run directory."""
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg.overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if any(Path(d).resolve() == out.resolve() for d in cfg.run_dirs):
        raise DataError(f"--out {out} is one of the run directories")


@dataclass
class DatasetSpec:
    """What distinguishes one kind of dataset (SFT, preference pairs) when it is written."""

    kind: str
    message_columns: list[str]
    meta_features: dict[str, str]
    filters: dict[str, str]
    intro: str
    usage: str


def write_dataset(
    rows: list[Row], sources: list[RunSource], cfg: DatasetBuildConfig, spec: DatasetSpec
) -> DatasetDict:
    """Dedup, split by seed, write the DatasetDict (Arrow), its metadata JSON and its card, atomically."""
    from datasets import Dataset, DatasetDict, load_from_disk
    from datasets.utils import logging as ds_logging

    with_images = sum(1 for r in rows if r.images)
    if 0 < with_images < len(rows):
        raise DataError(
            f"the run dirs mix image prompts ({with_images} rows) and text-only prompts "
            f"({len(rows) - with_images} rows); build one dataset per modality"
        )
    vision = with_images > 0
    kept: list[Row] = []
    seen: set[str] = set()
    by_dir = {s.run_dir: s for s in sources}
    for row in rows:  # first occurrence wins
        key = content_key(spec.kind, row.columns, row.images)
        if cfg.dedup and key in seen:
            continue
        seen.add(key)
        if not vision:
            row.columns = {name: _flatten(msgs) for name, msgs in row.columns.items()}
        kept.append(row)
        by_dir[Path(row.meta["_run_dir"])].rows += 1

    val = validation_seeds((r.meta["seed"] for r in kept), cfg.val_fraction, cfg.seed)
    split_rows = {
        TRAIN: [r for r in kept if r.meta["seed"] not in val],
        VALIDATION: [r for r in kept if r.meta["seed"] in val],
    }
    split_rows = {name: rs for name, rs in split_rows.items() if rs}
    features = dataset_features(spec.message_columns, vision, spec.meta_features)
    stores: dict[Path, ImageStore] = {}
    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # the CLI prints one summary line instead
    try:
        dd = DatasetDict(
            {
                name: Dataset.from_list(
                    [_materialize(r, spec.meta_features, stores) for r in rs], features=features
                )
                for name, rs in split_rows.items()
            }
        )
        meta = {
            "kind": spec.kind,
            "format": "messages" if spec.message_columns == ["messages"] else spec.message_columns,
            "modality": "vision" if vision else "text",
            "columns": list(features),
            "splits": {
                name: {
                    "rows": len(rs),
                    "seeds": len({r.meta["seed"] for r in rs}),
                    "episodes": len({(r.meta["_run_dir"], r.meta["episode_index"]) for r in rs}),
                }
                for name, rs in split_rows.items()
            },
            "filters": spec.filters,
            "dedup": {"enabled": cfg.dedup, "duplicates_removed": len(rows) - len(kept)},
            "split": {"by": "episode seed", "val_fraction": cfg.val_fraction, "salt": cfg.seed},
            "max_episodes": cfg.max_episodes,
            "sources": [s.summary() for s in sources],
            "sftrl_version": _version(),
        }
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            dd.save_to_disk(str(tmp))
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n")
            example = dd[TRAIN][0] if TRAIN in dd else None
            (tmp / CARD_FILE).write_text(_card(meta, spec, features, example))
            if out.exists():
                shutil.rmtree(out)  # only reached with --overwrite (check_out ran before any work)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return load_from_disk(str(out))
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def _version() -> str:
    from sftrl import __version__

    return str(__version__)


# --------------------------------------------------------------------------- the dataset card


def _example_for_card(example: dict[str, Any] | None) -> str:
    if example is None:
        return "(no train rows)"
    shown = dict(example)
    if "images" in shown:
        shown["images"] = [f"<PIL.Image {img.size[0]}x{img.size[1]}>" for img in shown["images"]]
    text = json.dumps(shown, ensure_ascii=False, indent=1, default=str)
    return text if len(text) <= 4000 else text[:4000] + "\n… (truncated)"


def _card(meta: dict[str, Any], spec: DatasetSpec, features: Any, example: dict[str, Any] | None) -> str:
    """The dataset card (README.md): sources, filters, counts, schema, usage and an example row."""
    task = "image-text-to-text" if meta["modality"] == "vision" else "text-generation"
    lines = [
        "---",
        "tags: [sftrl, trl]",
        f"task_categories: [{task}]",
        "---",
        "",
        f"# sftrl {spec.kind} dataset",
        "",
        spec.intro,
        "",
        f"Written by sftrl {meta['sftrl_version']}; load with `datasets.load_from_disk(PATH)`.",
        "",
        "## Sources",
        "",
        "| run dir | env | policy | episodes | crashed | successful | rows |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in meta["sources"]:
        lines.append(
            f"| `{s['run_dir']}` | {', '.join(s['env_ids']) or '-'} | {', '.join(s['policies']) or '-'} | "
            f"{s['episodes']} | {s['error_episodes']} | {s['successful_episodes']} | {s['rows']} |"
        )
    lines += ["", "Run configurations (`config.yaml` of each run; `agent run --config` repeats a run):", ""]
    for s in meta["sources"]:
        cfg = {k: v for k, v in s["config"].items() if k not in {"out", "resume", "concurrency"}}
        lines.append(f"* `{s['run_dir']}`: `{json.dumps(cfg, sort_keys=True, default=str)}`")
    dedup, split = meta["dedup"], meta["split"]
    lines += ["", "## Filters", ""]
    lines += [f"* **{key}**: {value}" for key, value in meta["filters"].items()]
    lines += [
        f"* **dedup**: {'on' if dedup['enabled'] else 'off'} (content hash of messages and image hashes); "
        f"{dedup['duplicates_removed']} duplicate rows removed",
        f"* **max_episodes**: {meta['max_episodes']}",
        f"* **split**: by episode seed (no seed in two splits), val_fraction {split['val_fraction']}, "
        f"salt {split['salt']}",
        "",
        "## Splits",
        "",
        "| split | rows | seeds | episodes |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {n} | {c['rows']} | {c['seeds']} | {c['episodes']} |" for n, c in meta["splits"].items()]
    lines += ["", "## Schema", "", f"Modality: {meta['modality']}.", ""]
    lines += [f"* `{name}`: {str(feature).replace(chr(10), ' ')}" for name, feature in features.items()]
    lines += ["", "## Usage", "", spec.usage, "", "## Example (first train row)", "", "```json"]
    lines += [_example_for_card(example), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- SFT rows


def sft_rows(runs: list[tuple[RunSource, list[EpisodeRecord]]], chains: Chains) -> list[Row]:
    rows: list[Row] = []
    for source, episodes in runs:
        for record in episodes:
            for prompt, turn in select_sft_calls(record, chains):
                where = f"{source.run_dir}: episode {record.episode_index} call {turn.index}"
                images: list[ImageRef] = []
                messages = [to_parts(m, source.run_dir, images, where) for m in prompt]
                completion = [assistant(turn.reply.text)]
                if chains == "success":
                    columns = {"messages": messages + completion}
                else:
                    columns = {"prompt": messages, "completion": completion}
                meta = {
                    "seed": record.seed,
                    "env_id": record.env_id,
                    "run_id": record.run_id,
                    "episode_index": record.episode_index,
                    "step": turn.step,
                    "attempt": turn.attempt,
                    "_run_dir": str(source.run_dir),
                }
                rows.append(Row(columns, images, meta))
    return rows


_SFT_USAGE = """```python
from datasets import load_from_disk
from trl import SFTConfig, SFTTrainer

dd = load_from_disk(PATH)
# {comment}
args = SFTConfig(output_dir="ckpt", {loss}=True, max_length=None)
SFTTrainer(model=MODEL, args=args, train_dataset=dd["train"], eval_dataset=dd.get("validation")).train()
```
Or: `agent train sft --data PATH --model MODEL --out CKPT`."""


def build_sft_dataset(
    run_dirs: Sequence[Path | str],
    out: Path | str,
    *,
    chains: Chains = "success",
    val_fraction: float = 0.05,
    seed: int = 0,
    dedup: bool = True,
    max_episodes: int | None = None,
    overwrite: bool = False,
) -> DatasetDict:
    """Build an SFT ``DatasetDict`` (``train`` and, when any seed is held out, ``validation``) at ``out``.

    Raises :class:`DataError` (one line) for bad options, missing/empty/corrupt logs, or no selected rows.
    """
    cfg = validated(
        SFTDataConfig,
        run_dirs=list(run_dirs),
        out=out,
        chains=chains,
        val_fraction=val_fraction,
        seed=seed,
        dedup=dedup,
        max_episodes=max_episodes,
        overwrite=overwrite,
    )
    check_out(cfg)
    runs = read_runs(cfg.run_dirs, cfg.max_episodes)
    rows = sft_rows(runs, cfg.chains)
    if not rows:
        episodes = sum(s.episodes for s, _ in runs)
        successes = sum(s.successful_episodes for s, _ in runs)
        if cfg.chains == "corrected":
            why = f"no call among {episodes} episodes was correct after verifier feedback"
        else:
            why = f"{successes} of {episodes} episodes succeeded"
        raise DataError(f"no rows selected with --chains {cfg.chains}: {why}")
    messages = cfg.chains == "success"
    spec = DatasetSpec(
        kind="sft",
        message_columns=["messages"] if messages else ["prompt", "completion"],
        meta_features=META_FEATURES,
        filters={"chains": f"`{cfg.chains}`: {CHAIN_DESCRIPTIONS[cfg.chains]}"},
        intro="Supervised fine-tuning rows built by `agent data sft` from verifier-checked episodes, in "
        + (
            "TRL's conversational language-modeling format (`messages`)."
            if messages
            else "TRL's conversational prompt-completion format (`prompt`, `completion`)."
        ),
        usage=_SFT_USAGE.format(
            comment="train only assistant replies (TRL swaps in a training chat template for known families)"
            if messages
            else "the loss covers the completion (the accepted reply) only; the chain is context",
            loss="assistant_only_loss" if messages else "completion_only_loss",
        ),
    )
    return write_dataset(rows, [s for s, _ in runs], cfg, spec)


# --------------------------------------------------------------------------- CLI entry points


def validated(model: type[BaseModel], **values: Any) -> Any:
    """``model(**values)``, with a validation failure as a one-line :class:`DataError` naming the flag."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise DataError(validation_message(exc)) from exc


def run_main(build: Callable[[], DatasetDict], out: Path | str, json_output: bool) -> int:
    """Shared body of the ``agent data …`` entry points: build, report one line (or JSON), map errors to 2."""
    import time

    t0 = time.perf_counter()
    try:
        dd = build()
    except (DataError, LogError) as exc:
        print(f"agent: error: {exc}", file=sys.stderr)
        return 2
    meta = json.loads((Path(out) / META_FILE).read_text())
    summary = {
        "out": str(out),
        "format": meta["format"],
        "modality": meta["modality"],
        "splits": {name: len(ds) for name, ds in dd.items()},
        "duplicates_removed": meta["dedup"]["duplicates_removed"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if json_output:
        print(json.dumps(summary, sort_keys=True))
    else:
        counts = ", ".join(f"{n} {name}" for name, n in summary["splits"].items())
        print(
            f"wrote {counts} rows ({summary['modality']}, {summary['format']}) to {out} in "
            f"{summary['seconds']:.1f} s; see {Path(out) / CARD_FILE}",
            file=sys.stderr,
        )
    return 0


def data_sft_main(
    run_dirs: Sequence[Path | str],
    out: Path | str,
    chains: str = "success",
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    dedup: bool = True,
    max_episodes: int | None = None,
    overwrite: bool = False,
    json_output: bool = False,
) -> int:
    """``agent data sft RUN_DIR... --out DATA_DIR``: exit status 0, or 2 with a one-line error on stderr."""
    return run_main(
        lambda: build_sft_dataset(
            run_dirs,
            out,
            chains=chains,  # type: ignore[arg-type]  # validated by SFTDataConfig
            val_fraction=val_fraction,
            seed=seed,
            dedup=dedup,
            max_episodes=max_episodes,
            overwrite=overwrite,
        ),
        out,
        json_output,
    )
