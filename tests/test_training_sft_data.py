"""Logged episodes -> SFT and preference datasets, on real logs written by the real runner."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import datasets  # noqa: F401 - a hard dependency: fail, never skip
import pytest
from datasets import load_from_disk

from sftrl.agents.policy import Reply
from sftrl.agents.runner import run_async, split_config
from sftrl.agents.trajectory import read_episodes
from sftrl.training.pairs import build_preference_pairs, data_pairs_main
from sftrl.training.sft_data import (
    CARD_FILE,
    META_FILE,
    DataError,
    build_sft_dataset,
    data_sft_main,
    validation_seeds,
)

WRONG = "I am not sure."
FEEDBACK_PREFIX = "You failed this trial because"


class FailOncePolicy:
    """First try of every step is wrong; after the verifier's feedback it answers like the expert."""

    name = "fail-once"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "test"}

    async def generate(self, messages, sampling, *, observation=None, tools=None) -> Reply:
        assert observation is not None
        if observation.kind == "task":
            return Reply(text=WRONG, finish_reason="stop", model="test")
        return Reply(text=observation.oracle["expert_reply"], finish_reason="stop", model="test")


def make_run(out: Path, env: str, episodes: int, agent: Any = None, **options: Any) -> Path:
    """A real run directory; ``agent`` overrides the named policy (``policy="random"`` in options)."""
    run, env_cfg = split_config({"env": env, "episodes": episodes, "out": out, **options})
    asyncio.run(run_async(run, env_cfg, policy=agent))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "gp": make_run(root / "gp", "gp", 24),
        "gp_again": make_run(root / "gp_again", "gp", 24),  # same run seed: the same 24 episodes
        "gp_other_seed": make_run(root / "gp_other", "gp", 10, seed=1),
        "random": make_run(root / "random", "gp", 4, policy="random"),
        "failonce": make_run(root / "failonce", "gp", 6, FailOncePolicy()),
        "virl": make_run(root / "virl", "virl", 3),
        "virl_failonce": make_run(root / "virl_failonce", "virl", 2, FailOncePolicy()),
        "gpv": make_run(root / "gpv", "gp", 4, modality="vision", resolution=64),
        "gpv_failonce": make_run(
            root / "gpv_failonce", "gp", 3, FailOncePolicy(), modality="vision", resolution=64
        ),
    }


def all_rows(dd: Any) -> list[dict[str, Any]]:
    return [row for split in dd.values() for row in split]


# --------------------------------------------------------------------------- chains


def test_success_chains_on_expert_logs_give_one_messages_row_per_episode(runs, tmp_path):
    out = tmp_path / "ds"
    dd = build_sft_dataset([runs["gp"]], out, chains="success", val_fraction=0.2)
    reloaded = load_from_disk(str(out))
    assert set(reloaded) == {"train", "validation"}
    cols = ["messages", "seed", "env_id", "run_id", "episode_index", "step", "attempt"]
    assert reloaded["train"].column_names == cols
    episodes = {e.episode_index: e for e in read_episodes(runs["gp"])}
    rows = all_rows(dd)
    assert len(rows) == len(episodes) == 24
    for row in rows:
        ep = episodes[row["episode_index"]]
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert isinstance(row["messages"][0]["content"], str)  # text-only datasets: plain strings
        assert row["messages"][0]["content"] == ep.turns[0].prompt[0]["content"]
        assert row["messages"][1]["content"] == ep.turns[0].reply.text
        assert row["seed"] == ep.seed and row["attempt"] == 0
    meta = json.loads((out / META_FILE).read_text())
    assert meta["format"] == "messages" and meta["modality"] == "text"
    assert meta["splits"]["train"]["rows"] + meta["splits"]["validation"]["rows"] == 24
    card = (out / CARD_FILE).read_text()
    for section in (
        "## Sources",
        "## Filters",
        "## Splits",
        "## Schema",
        "## Usage",
        str(runs["gp"]),
        "expert",
    ):
        assert section in card


def test_virl_success_gives_one_row_per_model_call(runs, tmp_path):
    dd = build_sft_dataset([runs["virl"]], tmp_path / "ds", val_fraction=0.0)
    assert list(dd) == ["train"]
    episodes = read_episodes(runs["virl"])
    assert len(dd["train"]) == sum(len(e.turns) for e in episodes)
    first = dd["train"][0]
    assert first["messages"][1]["content"] == episodes[0].turns[0].reply.text
    assert sorted({(r["episode_index"], r["step"]) for r in dd["train"]}) == sorted(
        (e.episode_index, t.step) for e in episodes for t in e.turns
    )


def test_chain_policies_on_logs_with_a_failed_first_attempt(runs, tmp_path):
    episodes = read_episodes(runs["failonce"]) + read_episodes(runs["virl_failonce"])
    steps = sum(len({t.step for t in e.turns}) for e in episodes)
    dirs = [runs["failonce"], runs["virl_failonce"]]

    success = all_rows(build_sft_dataset(dirs, tmp_path / "s", chains="success"))
    assert len(success) == steps
    for row in success:  # the clean task prompt -> the accepted reply; no failed attempt anywhere
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][1]["content"] != WRONG and row["attempt"] == 1
        assert FEEDBACK_PREFIX not in row["messages"][0]["content"]

    full_dd = build_sft_dataset(dirs, tmp_path / "f", chains="full")
    assert full_dd["train"].column_names[:2] == ["prompt", "completion"]
    full = all_rows(full_dd)
    assert len(full) == steps
    for row in full:  # failed attempt + verifier feedback are context; the completion is the fix
        roles = [m["role"] for m in row["prompt"]]
        assert roles == ["user", "assistant", "user"]
        assert row["prompt"][1]["content"] == WRONG
        assert row["prompt"][2]["content"].startswith(FEEDBACK_PREFIX)
        assert [m["role"] for m in row["completion"]] == ["assistant"]
        assert row["completion"][0]["content"] != WRONG

    corrected = all_rows(build_sft_dataset(dirs, tmp_path / "c", chains="corrected"))
    key = lambda r: (r["run_id"], r["episode_index"], r["step"])  # noqa: E731
    assert sorted(map(key, corrected)) == sorted(map(key, full))


def test_expert_logs_have_no_corrected_rows_and_random_logs_no_successes(runs, tmp_path):
    # Expert chains are all first-try successes: `full` equals `success` content, `corrected` is empty.
    full = all_rows(build_sft_dataset([runs["gp"]], tmp_path / "f", chains="full"))
    assert all(len(r["prompt"]) == 1 and r["attempt"] == 0 for r in full) and len(full) == 24
    with pytest.raises(DataError, match="no rows selected with --chains corrected"):
        build_sft_dataset([runs["gp"]], tmp_path / "c", chains="corrected")
    with pytest.raises(DataError, match="0 of 4 episodes succeeded"):
        build_sft_dataset([runs["random"]], tmp_path / "r", chains="success")
    # Random failures are never trained on: mixing random logs in adds no rows.
    mixed = all_rows(
        build_sft_dataset([runs["random"], runs["failonce"]], tmp_path / "m", chains="corrected")
    )
    assert len(mixed) == 6 and all(r["completion"][0]["content"] != WRONG for r in mixed)


# --------------------------------------------------------------------------- splits and dedup


def test_split_is_by_seed_and_disjoint(runs, tmp_path):
    dd = build_sft_dataset([runs["virl"], runs["failonce"]], tmp_path / "ds", chains="full", val_fraction=0.4)
    train, val = set(dd["train"]["seed"]), set(dd["validation"]["seed"])
    assert train and val and not train & val
    # Every row of a seed is on one side, so a V-IRL episode's rows stay together.
    for split in dd.values():
        for ep in {(r["run_id"], r["episode_index"]) for r in split}:
            assert all(
                r["seed"] in set(split["seed"]) for r in split if (r["run_id"], r["episode_index"]) == ep
            )


def test_validation_seeds_are_stable_when_runs_are_added():
    seeds = list(range(1000, 1200))
    val = validation_seeds(seeds, 0.1, salt=3)
    assert 5 < len(val) < 40
    bigger = validation_seeds(seeds + list(range(5000, 5300)), 0.1, salt=3)
    assert bigger & set(seeds) == val  # old seeds never change sides
    assert validation_seeds(seeds, 0.1, salt=4) != val
    assert validation_seeds([1, 2], 0.0) == set()
    assert len(validation_seeds([1, 2], 0.01)) == 1  # a positive fraction always holds something out
    assert validation_seeds([7], 0.5) == set()  # ...but never the only seed


def test_dedup_by_content(runs, tmp_path):
    dirs = [runs["gp"], runs["gp_again"], runs["gp_other_seed"]]
    distinct = {
        (e.turns[0].prompt[0]["content"], e.turns[0].reply.text) for d in dirs for e in read_episodes(d)
    }
    dd = build_sft_dataset(dirs, tmp_path / "d", val_fraction=0.2)
    rows = all_rows(dd)
    assert len(rows) == len(distinct) >= 24
    assert [r["run_id"] for r in rows].count(rows[0]["run_id"]) == 24  # first occurrence wins
    removed = json.loads((tmp_path / "d" / META_FILE).read_text())["dedup"]["duplicates_removed"]
    assert removed == 24 + 24 + 10 - len(distinct)
    raw = all_rows(build_sft_dataset(dirs, tmp_path / "n", dedup=False, val_fraction=0.2))
    assert len(raw) == 24 * 2 + 10
    texts = [json.dumps(r["messages"]) for r in rows]
    assert len(set(texts)) == len(texts)
    assert not set(dd["train"]["seed"]) & set(dd["validation"]["seed"])


def test_max_episodes_caps_episodes_read(runs, tmp_path):
    dd = build_sft_dataset([runs["gp"], runs["virl"]], tmp_path / "d", max_episodes=5, val_fraction=0.0)
    assert len(dd["train"]) == 5 and set(dd["train"]["env_id"]) == {"sftrl/GeneralPoints-v0"}


# --------------------------------------------------------------------------- images


def test_vision_rows_have_content_parts_and_the_logged_images(runs, tmp_path):
    dd = build_sft_dataset([runs["gpv"]], tmp_path / "v", val_fraction=0.0)
    assert dd["train"].column_names[:2] == ["messages", "images"]
    episodes = {e.episode_index: e for e in read_episodes(runs["gpv"])}
    for row in dd["train"]:
        user, reply = row["messages"]
        kinds = [p["type"] for p in user["content"]]
        assert kinds == ["image", "text"]  # images first, as the policy saw them
        assert reply["content"] == [
            {"type": "text", "text": episodes[row["episode_index"]].turns[0].reply.text}
        ]
        assert len(row["images"]) == kinds.count("image") == 1
        logged = episodes[row["episode_index"]].turns[0].prompt[0]["content"][0]
        buf = io.BytesIO()
        row["images"][0].save(buf, format="PNG")
        png = (runs["gpv"] / logged["path"]).read_bytes()
        assert hashlib.sha256(png).hexdigest() == logged["id"]
        assert row["images"][0].size == (64, 64)
    meta = json.loads((tmp_path / "v" / META_FILE).read_text())
    assert meta["modality"] == "vision" and "images" in meta["columns"]


def test_vision_full_chain_keeps_one_image_and_text_feedback(runs, tmp_path):
    rows = all_rows(build_sft_dataset([runs["gpv_failonce"]], tmp_path / "v", chains="full"))
    assert len(rows) == 3
    for row in rows:
        kinds = [[p["type"] for p in m["content"]] for m in row["prompt"]]
        assert kinds == [["image", "text"], ["text"], ["text"]]
        assert len(row["images"]) == 1


def test_mixing_text_and_image_logs_is_refused(runs, tmp_path):
    with pytest.raises(DataError, match="mix image prompts"):
        build_sft_dataset([runs["gp"], runs["gpv"]], tmp_path / "x")


# --------------------------------------------------------------------------- errors and the CLI entry


def test_bad_logs_give_one_line_errors(runs, tmp_path, capsys):
    with pytest.raises(DataError, match="no such run directory"):
        build_sft_dataset([tmp_path / "nope"], tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no trajectory log"):
        build_sft_dataset([tmp_path / "empty"], tmp_path / "o")
    (tmp_path / "empty" / "episodes.jsonl").write_text("")
    with pytest.raises(DataError, match="holds no episodes"):
        build_sft_dataset([tmp_path / "empty"], tmp_path / "o")
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = (runs["gp"] / "episodes.jsonl").read_text().splitlines()
    (bad / "episodes.jsonl").write_text(lines[0] + "\n{not json\n" + lines[1] + "\n")
    with pytest.raises(DataError, match="corrupt line"):
        build_sft_dataset([bad], tmp_path / "o")
    (bad / "episodes.jsonl").write_text(json.dumps({"schema_version": 1, "run_id": "x"}) + "\n")
    with pytest.raises(DataError, match="corrupt episode record"):
        build_sft_dataset([bad], tmp_path / "o")

    assert data_sft_main([tmp_path / "nope"], tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.startswith("agent: error: ") and err.count("\n") == 1
    assert data_sft_main([runs["gp"]], tmp_path / "o", chains="bogus") == 2
    assert "chains" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_entry_writes_and_refuses_to_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "ds"
    assert data_sft_main([runs["gp"]], out, "success", json_output=True) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"] + summary["splits"].get("validation", 0) == 24
    assert data_sft_main([runs["gp"]], out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert data_sft_main([runs["virl"]], out, overwrite=True) == 0
    assert set(load_from_disk(str(out))["train"]["env_id"]) == {"sftrl/VIRL-v0"}
    assert not list(tmp_path.glob(".ds.tmp-*"))


# --------------------------------------------------------------------------- preference pairs


def test_preference_pairs_from_failed_then_corrected_attempts(runs, tmp_path):
    from trl.data_utils import is_conversational

    dirs = [runs["failonce"], runs["virl_failonce"], runs["random"], runs["gp"]]
    dd = build_preference_pairs(dirs, tmp_path / "p", val_fraction=0.3)
    rows = all_rows(dd)
    episodes = read_episodes(runs["failonce"]) + read_episodes(runs["virl_failonce"])
    by_key = {(e.run_id, e.episode_index): e for e in episodes}
    assert len(rows) == sum(len({t.step for t in e.turns}) for e in episodes)
    for row in rows:
        ep = by_key[(row["run_id"], row["episode_index"])]
        failed, fixed = [t for t in ep.turns if t.step == row["step"]]
        assert row["prompt"] == [{"role": "user", "content": failed.prompt[0]["content"]}]
        assert row["rejected"] == [{"role": "assistant", "content": WRONG}]
        assert row["chosen"] == [{"role": "assistant", "content": fixed.reply.text}]
        assert (row["rejected_attempt"], row["chosen_attempt"]) == (0, 1) and fixed.verdict.correct
        assert is_conversational(row)
    assert not set(dd["train"]["seed"]) & set(dd["validation"]["seed"])
    assert "preference" in (tmp_path / "p" / CARD_FILE).read_text()


def test_pairs_with_images_and_errors(runs, tmp_path, capsys):
    dd = build_preference_pairs([runs["gpv_failonce"]], tmp_path / "p", val_fraction=0.0)
    row = dd["train"][0]
    assert [p["type"] for p in row["prompt"][0]["content"]] == ["image", "text"]
    assert len(row["images"]) == 1 and row["rejected"][0]["content"][0]["text"] == WRONG
    with pytest.raises(DataError, match="no preference pairs"):
        build_preference_pairs([runs["gp"], runs["random"]], tmp_path / "q")
    assert data_pairs_main([runs["random"]], tmp_path / "q") == 2
    assert "no preference pairs" in capsys.readouterr().err
