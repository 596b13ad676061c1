"""The V-IRL-L stage-0 curriculum: every answer accepted by the env's verifier, real feedback, training
routes only (disjoint from `agent repro`'s held-out routes), both vocabularies but never the OOD task."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from sftrl.environments.virl import compact
from sftrl.environments.virl.prompts import RELATIVE_DIRECTIONS
from sftrl.environments.virl.routes import route_fingerprint
from sftrl.environments.virl.verifier import verify
from sftrl.repro import experiments, stage0_virl
from sftrl.street_view.geometry import COMPASS_NAMES


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    return stage0_virl.rows(400, random.Random(0))


def _turns(row: dict) -> list[tuple[str, str]]:
    """(attempt, feedback) pairs before the answer."""
    turns = row["prompt"][1:]
    assert [t["role"] for t in turns] == ["assistant", "user"] * (len(turns) // 2)
    return [(a["content"], f["content"]) for a, f in zip(turns[::2], turns[1::2], strict=True)]


def test_route_steps_replay_through_the_env_and_its_verifier_accepts_each_answer(sample) -> None:
    env = stage0_virl.route_env()
    routes = [r for r in sample if r["kind"] == "R"]
    assert len(routes) > 200
    for row in routes:
        obs, info = env.reset(seed=row["episode_seed"], options={"route_index": row["route_index"]})
        for _ in range(row["position"]):
            obs = env.step(obs.oracle["expert_reply"])[0]
        assert info["route_id"] == row["route_id"] and obs.text == row["prompt"][0]["content"]
        for attempt, feedback in _turns(row):
            obs, _, terminated, _, step = env.step(attempt)
            assert not step["verdict"].correct and not terminated
            assert obs.text == feedback  # the env's own feedback turn
        (answer,) = row["completion"]
        _, reward, _, _, step = env.step(answer["content"])
        assert step["verdict"].correct and reward > 0
        assert step["verdict"].action["action"] == row["gt_action"]


def test_turn_items_answer_in_the_stated_vocabulary_and_the_verifier_agrees(sample) -> None:
    turns = [r for r in sample if r["kind"] == "T"]
    compass = {name: 45 * i for i, name in enumerate(COMPASS_NAMES)}
    for row in turns:
        lines = dict(line.split(": ", 1) for line in row["prompt"][0]["content"].split("\n"))
        assert set(lines) == {"facing", "turn to", "actions"}
        answer = row["completion"][0]["content"]
        delta = (compass[lines["turn to"]] - compass[lines["facing"]] + 180) % 360 - 180
        if lines["actions"] == "absolute":
            assert answer == f"turn {lines['turn to']}"
        else:  # the relative word the heading change means
            side = "right" if delta > 0 else "left"
            assert answer == (f"turn slightly {side}" if abs(delta) == 45 else f"turn {side}")
        state = stage0_virl.turn_state(lines["facing"], lines["turn to"], lines["actions"])
        assert verify(state, answer, style="compact").correct
        for attempt, feedback in _turns(row):
            verdict = verify(state, attempt, style="compact")
            assert not verdict.correct and feedback == compact.feedback(verdict.category)
    assert {r["actions"] for r in turns} == {"absolute", "relative"}


def test_both_vocabularies_are_taught_but_never_a_relative_route_step(sample) -> None:
    answers = Counter(r["completion"][0]["content"] for r in sample)
    assert {f"turn {d}" for d in RELATIVE_DIRECTIONS} <= set(answers)
    assert {f"turn {d}" for d in COMPASS_NAMES} <= set(answers)
    for row in sample:
        text = row["prompt"][0]["content"]
        if text.startswith("route: "):  # the V-IRL task: only ever with absolute actions
            assert row["kind"] == "R" and "\nactions: absolute\n" in text
            assert row["completion"][0]["content"].removeprefix("turn ") not in RELATIVE_DIRECTIONS
    assert {r["kind"] for r in sample} == {"R", "T"}
    assert set(Counter(len(_turns(r)) for r in sample)) == {0, 1, 2}
    assert {"forward", "stop"} <= set(answers)


@pytest.mark.parametrize(("held_out", "n_routes", "n_ood"), [(6, 16, 6), (30, 100, None)])
def test_curriculum_routes_are_training_routes_disjoint_from_the_held_out_ones(
    tmp_path: Path, held_out: int, n_routes: int, n_ood: int | None
) -> None:
    from sftrl.environments.virl.env import VIRLEnv

    exp = experiments.get("virl-l-rule")
    _, paths = experiments.make_route_sets(exp, held_out, n_ood, n_routes, tmp_path)
    rows = stage0_virl.rows(150, random.Random(1), held_out, n_routes)
    env = stage0_virl.route_env(n_routes)
    used = {r["route_index"] for r in rows if r["kind"] == "R"}
    assert len(used) >= 8  # many routes, not one
    prints = {route_fingerprint(env.routes[i]) for i in used}
    files = {k: {route_fingerprint(r) for r in VIRLEnv(routes=str(p)).routes} for k, p in paths.items()}
    # By content, not only by id: every curriculum route is a training route, none a held-out one.
    assert prints <= files["train"] and not prints & (files["id_eval"] | files["ood_eval"])
    ids = {r["route_id"] for r in rows if r["kind"] == "R"}
    assert ids <= {r["route_id"] for r in json.loads(paths["train"].read_text())[0]}


def test_dataset_is_deterministic_for_a_seed_and_train_sft_reads_it(tmp_path: Path) -> None:
    from sftrl.training.sft import inspect_data

    a = stage0_virl.build_dataset(tmp_path / "a", 30, seed=4, val_rows=6, held_out=6, split_routes=16)
    b = stage0_virl.build_dataset(tmp_path / "b", 30, seed=4, val_rows=6, held_out=6, split_routes=16)
    c = stage0_virl.build_dataset(tmp_path / "c", 30, seed=5, val_rows=6, held_out=6, split_routes=16)
    info = inspect_data(a)
    assert info.format == "prompt_completion" and not info.vision
    assert len(info.train) == 30 and info.validation is not None and len(info.validation) == 6
    assert inspect_data(b).train.to_list() == info.train.to_list()
    assert inspect_data(c).train.to_list() != info.train.to_list()
    meta = json.loads((a / "sftrl_dataset.json").read_text())
    assert meta["command"].startswith("python -m sftrl.repro.stage0_virl --rows 30 --seed 4")
    with pytest.raises(ValueError, match="already exists"):
        stage0_virl.build_dataset(a, 30, seed=4)


def test_module_cli_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s0"
    argv = ["--rows", "8", "--val-rows", "2", "--seed", "2", "--held-out", "6", "--split-routes", "16"]
    assert stage0_virl.main([*argv, "--out", str(out)]) == 0
    assert "wrote 8 + 2 rows" in capsys.readouterr().out
    assert (out / "sftrl_dataset.json").exists() and (out / "README.md").exists()


def _episode_routes(run: Path) -> list[str]:
    from sftrl.agents.trajectory import read_episodes

    records = sorted(read_episodes(run), key=lambda r: r.episode_index)
    return [r.turns[0].info["route_id"] for r in records]


@pytest.mark.slow
def test_agent_repro_quick_from_scratch_trains_stage0_on_the_curriculum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shlex

    from datasets import load_from_disk

    from sftrl.cli import main

    out = tmp_path / "repro"
    argv = ["repro", "--quick", "--experiment", "virl-l-rule", "--from-scratch", "--stage0-steps", "1"]
    argv += ["--stage2-flops", "2e9"]  # the arms only need to run: stage 0 is what this test checks
    assert main([*argv, "--out", str(out), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["rows"]) == {"stage0", "warmstart", "sft", "ppo", "grpo"}
    results = json.loads((out / "results.json").read_text())
    assert results["stage0_checkpoint"] == str(out / "stage0")
    assert (
        len((out / "stage0" / "eval.jsonl").read_text().splitlines()) == 1
    )  # trained (1 step) and evaluated
    meta = json.loads((out / "data" / "stage0" / "sftrl_dataset.json").read_text())
    assert meta["source"] == "sftrl.repro.stage0_virl curriculum"
    pools = out / "pools"
    files = {
        k: [r["route_id"] for r in json.loads((pools / f).read_text())[0]]
        for k, f in experiments.VIRL_ROUTE_FILES.items()
    }
    data = load_from_disk(str(out / "data" / "stage0"))
    used = {r for split in data.values() for r in split["route_id"] if r}
    assert used and used <= set(files["train"])  # the curriculum saw training routes only
    # Every evaluation plays each held-out route once, in file order.
    assert _episode_routes(out / "stage0-eval" / "eval" / "step-000000" / "id") == files["id_eval"]
    assert _episode_routes(out / "stage0-eval" / "eval" / "step-000000" / "ood") == files["ood_eval"]
    # commands.md's curriculum command rebuilds the same dataset.
    block = (out / "commands.md").read_text().split("## stage 0\n\n```bash\n")[1].split("\n```")[0]
    (line,) = [c for c in block.splitlines() if c.startswith("python -m sftrl.repro.stage0_virl ")]
    again = tmp_path / "again"
    assert stage0_virl.main([*shlex.split(line.replace(str(out / "data" / "stage0"), str(again)))[3:]]) == 0
    assert load_from_disk(str(again))["train"].to_list() == data["train"].to_list()
