"""The GP-VL stage-0 curriculum: every image is the env's rendering of the row's hand, every answer is
accepted by the verifier in vision mode, failed attempts carry the verifier's own feedback (misreads
judged "incorrect vision"), both suit colours occur, and no row is the training task (target 24)."""

from __future__ import annotations

import io
import json
import random
import shlex
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from sftrl.environments.generalpoints import compact
from sftrl.environments.generalpoints.cards import SUIT_COLORS, Card
from sftrl.environments.generalpoints.render import render_hand
from sftrl.environments.generalpoints.verifier import GPState, verify
from sftrl.repro import stage0, stage0_gpvl


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    rng = random.Random(0)
    return [stage0_gpvl.item(rng) for _ in range(300)]


def _text(message: dict) -> str:
    return "".join(p["text"] or "" for p in message["content"] if p["type"] == "text")


def _cards(row: dict) -> list[Card]:
    return [Card.parse(c) for c in row["cards"].split()]


def test_each_image_is_the_envs_rendering_of_the_rows_hand_and_comes_first(sample) -> None:
    for row in sample[:40]:
        (png,) = row["images"]
        image = Image.open(io.BytesIO(png["bytes"])).convert("RGB")
        assert ImageChops.difference(image, render_hand(_cards(row), 64).convert("RGB")).getbbox() is None
        first = row["prompt"][0]
        assert first["role"] == "user" and first["content"][0] == {"type": "image", "text": None}
        # One image per row, in the first user turn only (as a GP-VL episode shows it).
        assert sum(p["type"] == "image" for m in row["prompt"] for p in m["content"]) == 1


def test_read_items_answer_the_ranks_left_to_right(sample) -> None:
    reads = [r for r in sample if r["kind"] == "V"]
    assert reads
    for row in reads:
        assert _text(row["prompt"][0]) == stage0_gpvl.READ_PROMPT
        assert _text(row["completion"][0]) == " ".join(c.rank for c in _cards(row))


def test_make_target_answers_are_accepted_by_the_vision_verifier_with_its_feedback(sample) -> None:
    items = [r for r in sample if r["kind"] == "M"]
    categories: Counter[str] = Counter()
    for row in items:
        ranks = [c.rank for c in _cards(row)]
        face = [int(v) for v in row["face"].split()]
        values = stage0.face_values(ranks, face)
        assert row["target"] != 24  # never the training task
        assert _text(row["prompt"][0]) == compact.prompt(ranks=None, face_values=face, target=row["target"])
        state = GPState(
            ranks=tuple(ranks), values=tuple(values), target=row["target"], solutions=(), check_cards=True
        )
        assert verify(state, _text(row["completion"][0]), style="compact").correct
        turns = row["prompt"][1:]
        assert [t["role"] for t in turns] == ["assistant", "user"] * (len(turns) // 2)
        for attempt, feedback in zip(turns[::2], turns[1::2], strict=True):
            verdict = verify(state, _text(attempt), style="compact")
            assert not verdict.correct
            assert _text(feedback) == compact.feedback(verdict.category, verdict.details)
            categories[verdict.category] += 1
    assert categories["incorrect_vision"] and sum(categories.values()) > categories["incorrect_vision"]


def test_both_suit_colours_occur_in_equal_share(sample) -> None:
    colours = Counter(SUIT_COLORS[c.suit] for row in sample for c in _cards(row) if c.suit)
    assert abs(colours["red"] - colours["black"]) < 0.1 * sum(colours.values())
    assert Counter(r["kind"] for r in sample)["V"] / len(sample) == pytest.approx(0.35, abs=0.08)


def test_dataset_is_deterministic_for_a_seed_and_train_sft_reads_it_as_vision(tmp_path: Path) -> None:
    from sftrl.training.sft import inspect_data

    a = stage0_gpvl.build_dataset(tmp_path / "a", 20, seed=3, val_rows=4)
    b = stage0_gpvl.build_dataset(tmp_path / "b", 20, seed=3, val_rows=4)
    info = inspect_data(a)
    assert info.format == "prompt_completion" and info.vision
    assert len(info.train) == 20 and info.validation is not None and len(info.validation) == 4
    assert inspect_data(b).train.to_list() == info.train.to_list()
    meta = json.loads((a / "sftrl_dataset.json").read_text())
    assert meta["modality"] == "vision" and meta["command"].startswith("python -m sftrl.repro.stage0_gpvl")
    with pytest.raises(ValueError, match="already exists"):
        stage0_gpvl.build_dataset(a, 20, seed=3)


@pytest.mark.slow
def test_agent_repro_quick_from_scratch_trains_a_vision_stage0_on_the_curriculum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datasets import load_from_disk

    from sftrl.cli import main

    out = tmp_path / "repro"
    argv = ["repro", "--quick", "--experiment", "gp-vl-visual", "--from-scratch", "--stage0-steps", "1"]
    argv += ["--stage2-flops", "2e9"]  # the arms only need to run: stage 0 is what this test checks
    assert main([*argv, "--out", str(out), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["rows"]) == {"stage0", "warmstart", "sft", "ppo", "grpo"}
    assert json.loads((out / "stage0" / "config.json").read_text())["model_type"] == "llava"
    assert len((out / "stage0" / "eval.jsonl").read_text().splitlines()) == 1  # trained and evaluated
    meta = json.loads((out / "data" / "stage0" / "sftrl_dataset.json").read_text())
    assert meta["source"] == "sftrl.repro.stage0_gpvl curriculum"
    # commands.md's curriculum command rebuilds the same dataset.
    block = (out / "commands.md").read_text().split("## stage 0\n\n```bash\n")[1].split("\n```")[0]
    (line,) = [c for c in block.splitlines() if c.startswith("python -m sftrl.repro.stage0_gpvl ")]
    again = tmp_path / "again"
    assert stage0_gpvl.main([*shlex.split(line.replace(str(out / "data" / "stage0"), str(again)))[3:]]) == 0
    assert (
        load_from_disk(str(again))["train"]["cards"]
        == load_from_disk(str(out / "data" / "stage0"))["train"]["cards"]
    )


def test_stage0_only_builds_and_evaluates_stage0_then_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sftrl.cli import main

    out = tmp_path / "repro"
    argv = ["repro", "--quick", "--experiment", "gp-vl-visual", "--from-scratch", "--stage0-steps", "1"]
    assert main([*argv, "--stage0-only", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    (point,) = summary["stage0_evals"]
    assert point["step"] == 1
    for split in ("id", "ood"):  # black and red hands, with the recognition metric the paper reports
        assert point[split]["episodes"] == 12
        assert 0.0 <= point[split]["recognition_accuracy"] <= 1.0
    assert (out / "stage0" / "config.json").exists()
    assert not (out / "warmstart").exists() and not (out / "seed0").exists()
    assert "## stage 0" in (out / "commands.md").read_text()
    # Without --from-scratch there is no stage 0 to train: a one-line refusal, nothing written.
    assert main(["repro", "--quick", "--stage0-only", "--out", str(tmp_path / "no")]) == 2
    assert "--stage0-only" in capsys.readouterr().err and not (tmp_path / "no").exists()
