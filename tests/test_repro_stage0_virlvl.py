"""The V-IRL-VL stage-0 curriculum: every row is what the vision env shows at that point (prompt and grid,
byte for byte), reading answers are the language env's observations, route-step answers are accepted by
the verifier, feedback is the env's own, and only New York training routes are used."""

from __future__ import annotations

import io
import json
import random
import shlex
from collections import Counter
from pathlib import Path

import pytest

from sftrl.environments.virl.env import VIRLEnv
from sftrl.environments.virl.routes import route_fingerprint
from sftrl.repro import experiments, stage0_virl, stage0_virlvl

HELD_OUT, ROUTES = 6, 16


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    return stage0_virlvl.rows(120, random.Random(0), HELD_OUT, ROUTES)


def _text(turn: dict) -> str:
    return "".join(p["text"] for p in turn["content"] if p["type"] == "text")


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _replay(env: VIRLEnv, row: dict):
    obs, info = env.reset(seed=row["episode_seed"], options={"route_index": row["route_index"]})
    for _ in range(row["position"]):
        obs = env.step(obs.oracle["expert_reply"])[0]
    assert info["route_id"] == row["route_id"]
    return obs


def test_each_row_is_the_vision_envs_own_observation_and_the_verifier_accepts_each_answer(sample) -> None:
    vision = stage0_virl.route_env(ROUTES, "vision", stage0_virlvl.RESOLUTION)
    language = stage0_virl.route_env(ROUTES, "language", stage0_virlvl.RESOLUTION)
    kinds = Counter(r["kind"] for r in sample)
    assert kinds["O"] > 20 and kinds["R"] > 50
    for row in sample:
        obs = _replay(vision, row)
        (image,) = obs.images
        assert row["images"][0]["bytes"] == _png(image)  # the grid the agent loop would send
        first = row["prompt"][0]
        assert first["role"] == "user" and first["content"][0]["type"] == "image"
        now = _replay(language, row).text.split("\nnow: ")[1].split("\n")[0]
        assert row["observation"] == now
        if row["kind"] == "O":
            assert _text(first) == stage0_virlvl.READ_PROMPT and len(row["prompt"]) == 1
            assert row["completion"][0]["content"][0]["text"] == now
            continue
        assert _text(first) == obs.text and "now:" not in obs.text
        turns = row["prompt"][1:]
        assert [t["role"] for t in turns] == ["assistant", "user"] * (len(turns) // 2)
        for attempt, feedback in zip(turns[::2], turns[1::2], strict=True):
            fb, _, terminated, _, step = vision.step(_text(attempt))
            assert not step["verdict"].correct and not terminated
            assert _text(feedback) == fb.text and not fb.images  # the env's own feedback turn
        _, reward, _, _, step = vision.step(row["completion"][0]["content"][0]["text"])
        assert step["verdict"].correct and reward > 0
        assert step["verdict"].action["action"] == row["gt_action"]
    assert set(Counter(len(r["prompt"]) // 2 for r in sample if r["kind"] == "R")) == {0, 1, 2}
    # Reading covers landmarks, empty views and intersections, not one constant answer.
    seen = {r["observation"] for r in sample if r["kind"] == "O"}
    assert "none" in seen and any(s not in ("none", "none, intersection") for s in seen)


def test_curriculum_uses_new_york_training_routes_only(tmp_path: Path, sample) -> None:
    exp = experiments.get("virl-vl-visual")
    _, paths = experiments.make_route_sets(exp, HELD_OUT, 6, ROUTES, tmp_path)
    env = stage0_virl.route_env(ROUTES)
    used = {r["route_index"] for r in sample}
    assert len(used) >= 6 and min(used) >= HELD_OUT
    prints = {route_fingerprint(env.routes[i]) for i in used}
    files = {k: {route_fingerprint(r) for r in VIRLEnv(routes=str(p)).routes} for k, p in paths.items()}
    # By content: every route is a training route, none a held-out ID or an other-city (OOD) one.
    assert prints <= files["train"] and not prints & (files["id_eval"] | files["ood_eval"])
    assert {r["route_id"].split("-")[0] for r in sample} == {"nyc"}


def test_split_observation_refuses_a_vision_prompt() -> None:
    now, rest = stage0_virlvl.split_observation("route: a\nactions: absolute\nnow: none\ndone: -")
    assert now == "none" and rest == "route: a\nactions: absolute\ndone: -"
    with pytest.raises(ValueError, match="now:"):
        stage0_virlvl.split_observation("route: a\nactions: absolute\ndone: -")


def test_dataset_is_deterministic_for_a_seed_and_train_sft_reads_it_as_vision(tmp_path: Path) -> None:
    from sftrl.training.sft import inspect_data

    kw = {"val_rows": 4, "held_out": HELD_OUT, "split_routes": ROUTES}
    a = stage0_virlvl.build_dataset(tmp_path / "a", 20, seed=4, **kw)
    b = stage0_virlvl.build_dataset(tmp_path / "b", 20, seed=4, **kw)
    c = stage0_virlvl.build_dataset(tmp_path / "c", 20, seed=5, **kw)
    info = inspect_data(a)
    assert info.format == "prompt_completion" and info.vision
    assert len(info.train) == 20 and info.validation is not None and len(info.validation) == 4
    assert inspect_data(b).train.to_list() == info.train.to_list()
    assert inspect_data(c).train.to_list() != info.train.to_list()
    meta = json.loads((a / "sftrl_dataset.json").read_text())
    assert meta["modality"] == "vision"
    assert meta["command"].startswith("python -m sftrl.repro.stage0_virlvl --rows 20 --seed 4")
    with pytest.raises(ValueError, match="already exists"):
        stage0_virlvl.build_dataset(a, 20, seed=4)


@pytest.mark.slow
def test_agent_repro_quick_from_scratch_trains_a_street_view_stage0_on_the_curriculum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datasets import load_from_disk

    from sftrl.cli import main

    out = tmp_path / "repro"
    argv = ["repro", "--quick", "--experiment", "virl-vl-visual", "--from-scratch", "--stage0-steps", "1"]
    assert main([*argv, "--stage0-only", "--out", str(out), "--json"]) == 0
    (point,) = json.loads(capsys.readouterr().out)["stage0_evals"]
    for split in ("id", "ood"):  # New York and the other cities, with per-step accuracy
        assert point[split]["episodes"] == 6 and 0.0 <= point[split]["step_accuracy"] <= 1.0
    assert json.loads((out / "stage0" / "config.json").read_text())["model_type"] == "llava"
    meta = json.loads((out / "data" / "stage0" / "sftrl_dataset.json").read_text())
    assert meta["source"] == "sftrl.repro.stage0_virlvl curriculum"
    # commands.md's curriculum command rebuilds the same dataset.
    block = (out / "commands.md").read_text().split("## stage 0\n\n```bash\n")[1].split("\n```")[0]
    (line,) = [c for c in block.splitlines() if c.startswith("python -m sftrl.repro.stage0_virlvl ")]
    again = tmp_path / "again"
    argv = shlex.split(line.replace(str(out / "data" / "stage0"), str(again)))[3:]
    assert stage0_virlvl.main(argv) == 0
    ours, theirs = load_from_disk(str(again))["train"], load_from_disk(str(out / "data" / "stage0"))["train"]
    assert ours["route_id"] == theirs["route_id"] and ours["position"] == theirs["position"]
