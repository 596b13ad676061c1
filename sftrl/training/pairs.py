"""Logged episodes -> preference pairs (failed reply vs the later correct reply) in TRL's DPO format.

For every env step where attempt ``k`` failed and a later attempt of the same step was correct, one pair:
``prompt`` = the conversation the policy saw at attempt ``k`` (the task, plus earlier attempts and
their verifier feedback when ``k > 0``), ``chosen`` = the correct reply, ``rejected`` = the failed reply
``k``. Both replies answer the same task state, and the chosen one is verifier-checked, so the pair says
"this answer, not that one" without any learned judge. Splits, dedup and the dataset card work as for
SFT data (:mod:`sftrl.training.sft_data`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sftrl.agents.trajectory import EpisodeRecord
from sftrl.training.config import PairsConfig
from sftrl.training.sft_data import (
    DataError,
    DatasetSpec,
    ImageRef,
    Row,
    RunSource,
    assistant,
    check_out,
    read_runs,
    run_main,
    steps_of,
    to_parts,
    validated,
    write_dataset,
)

if TYPE_CHECKING:
    from datasets import DatasetDict

PAIR_FEATURES: dict[str, str] = {
    "seed": "int64",
    "env_id": "string",
    "run_id": "string",
    "episode_index": "int64",
    "step": "int64",
    "rejected_attempt": "int64",
    "chosen_attempt": "int64",
    "rejected_category": "string",
}

_USAGE = """```python
from datasets import load_from_disk
from trl import DPOConfig, DPOTrainer

dd = load_from_disk(PATH)
DPOTrainer(model=MODEL, args=DPOConfig(output_dir="ckpt"), train_dataset=dd["train"]).train()
```"""


def episode_pairs(record: EpisodeRecord, source: RunSource) -> list[Row]:
    """The (failed, later correct) pairs of one episode, step by step."""
    rows: list[Row] = []
    for turns in steps_of(record):
        correct = [t for t in turns if t.verdict.correct]
        if not correct:
            continue
        chosen = correct[0]
        for failed in turns:
            if failed.attempt >= chosen.attempt or failed.verdict.correct:
                continue
            if failed.reply.text == chosen.reply.text:
                continue  # same text judged differently (state changed): not a preference
            where = f"{source.run_dir}: episode {record.episode_index} call {failed.index}"
            images: list[ImageRef] = []
            prompt = [to_parts(m, source.run_dir, images, where) for m in failed.prompt]
            meta = {
                "seed": record.seed,
                "env_id": record.env_id,
                "run_id": record.run_id,
                "episode_index": record.episode_index,
                "step": failed.step,
                "rejected_attempt": failed.attempt,
                "chosen_attempt": chosen.attempt,
                "rejected_category": failed.verdict.category,
                "_run_dir": str(source.run_dir),
            }
            columns = {
                "prompt": prompt,
                "chosen": [assistant(chosen.reply.text)],
                "rejected": [assistant(failed.reply.text)],
            }
            rows.append(Row(columns, images, meta))
    return rows


def build_preference_pairs(
    run_dirs: Sequence[Path | str],
    out: Path | str,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    dedup: bool = True,
    max_episodes: int | None = None,
    overwrite: bool = False,
) -> DatasetDict:
    """Write a DPO ``DatasetDict`` (``prompt``, ``chosen``, ``rejected`` [+ ``images``]) at ``out``."""
    cfg = validated(
        PairsConfig,
        run_dirs=list(run_dirs),
        out=out,
        val_fraction=val_fraction,
        seed=seed,
        dedup=dedup,
        max_episodes=max_episodes,
        overwrite=overwrite,
    )
    check_out(cfg)
    runs = read_runs(cfg.run_dirs, cfg.max_episodes)
    rows = [row for source, episodes in runs for record in episodes for row in episode_pairs(record, source)]
    if not rows:
        episodes = sum(s.episodes for s, _ in runs)
        raise DataError(
            f"no preference pairs in {episodes} episodes: no step has a failed attempt followed by a correct "
            "one (expert logs never fail; random logs rarely recover)"
        )
    spec = DatasetSpec(
        kind="preference",
        message_columns=["prompt", "chosen", "rejected"],
        meta_features=PAIR_FEATURES,
        filters={
            "pairs": "for each step, every failed attempt before the first correct one: prompt = the "
            "conversation at the failed attempt, chosen = the correct reply, rejected = the failed reply"
        },
        intro="Preference pairs built by `agent data pairs` from verifier-checked sftrl episodes, in TRL's "
        "conversational preference format (`prompt`, `chosen`, `rejected`).",
        usage=_USAGE,
    )
    return write_dataset(rows, [s for s, _ in runs], cfg, spec)


def data_pairs_main(
    run_dirs: Sequence[Path | str],
    out: Path | str,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    dedup: bool = True,
    max_episodes: int | None = None,
    overwrite: bool = False,
    json_output: bool = False,
) -> int:
    """``agent data pairs RUN_DIR... --out DATA_DIR``: exit status 0, or 2 with a one-line error on stderr."""
    return run_main(
        lambda: build_preference_pairs(
            run_dirs,
            out,
            val_fraction=val_fraction,
            seed=seed,
            dedup=dedup,
            max_episodes=max_episodes,
            overwrite=overwrite,
        ),
        out,
        json_output,
    )
