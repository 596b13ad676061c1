"""The V-IRL ``read`` task: a landmark-recognition probe on the expert's rail, judged from the logs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from sftrl.agents.baselines import ExpertPolicy
from sftrl.agents.loop import run_episode
from sftrl.agents.metrics import summarize
from sftrl.agents.runner import run_async, split_config
from sftrl.cli import main
from sftrl.environments.virl import compact
from sftrl.environments.virl.env import VIRLEnv
from sftrl.environments.virl.rail import INTERSECTION
from sftrl.environments.virl.verifier import verify_reading
from sftrl.street_view.geometry import RELATIVE_PHRASES


def read_env(**kwargs) -> VIRLEnv:
    return VIRLEnv(
        prompt_style="compact", modality="vision", task="read", num_routes=20, resolution=32, **kwargs
    )


def pixels(image) -> bytes:
    return image.convert("RGB").tobytes()


@pytest.mark.parametrize("split", ["id", "visual-ood"])
def test_each_rail_point_shows_its_grid_and_now_and_the_expert_reads_every_view(split: str) -> None:
    env = read_env(split=split)
    nav = VIRLEnv(prompt_style="compact", modality="vision", num_routes=20, resolution=32, split=split)
    for route in range(2):
        obs, _ = env.reset(seed=route, options={"route_index": route})
        want, _ = nav.reset(seed=route, options={"route_index": route})
        steps, terminated = 0, False
        while not terminated:
            # The navigation task's grid at the same rail point, and nothing but "now" as text.
            assert obs.kind == "task" and obs.text == compact.READ_PROMPT == "now"
            assert len(obs.images) == 1 and pixels(obs.images[0]) == pixels(want.images[0])
            truth = obs.oracle["expert_reply"]
            assert truth == compact.observation_text(nav._point().observation)
            obs, reward, terminated, _, info = env.step(truth)
            assert info["verdict"].category == "correct_reading" and reward == 1.0
            steps += 1
            if not terminated:
                want, *_ = nav.step(want.oracle["expert_reply"])
        assert info["success"] and steps == len(env._rail)
        assert obs.text == f"{steps} of {steps} views read right"


def test_a_misreading_scores_zero_and_the_route_goes_on() -> None:
    env = read_env(split="id")
    obs, _ = env.reset(seed=3, options={"route_index": 3})
    verdicts = []
    terminated = False
    while not terminated:
        obs, reward, terminated, _, info = env.step("none" if len(verdicts) % 2 else "Statue of Liberty F")
        verdicts.append(info["verdict"])
        assert reward == float(info["verdict"].correct)
    assert len(verdicts) == len(env._rail)  # one attempt per point: every point was read once
    right = sum(v.correct for v in verdicts)
    assert not info["success"] and obs.text == f"{right} of {len(verdicts)} views read right"
    assert {v.category for v in verdicts if not v.correct} == {"incorrect_reading"}


def test_verify_reading_folds_case_spaces_and_accents_and_needs_every_part() -> None:
    seen = f"Bon Chon Chicken is {RELATIVE_PHRASES['right front']}. {INTERSECTION}"
    assert compact.observation_text(seen) == "Bon Chon Chicken FR, intersection"
    for reply in ("Bon Chon Chicken FR, intersection", "  bon  chon chicken fr,   intersection\n"):
        assert verify_reading(seen, reply).correct
    for reply in ("Bon Chon Chicken FR", "Bon Chon Chicken F, intersection", "none, intersection", ""):
        v = verify_reading(seen, reply)
        assert not v.correct and v.reward == 0.0 and v.details["landmark_in_view"]
    cafe = f"Café Köln is {RELATIVE_PHRASES['left']}"
    assert verify_reading(cafe, "Cafe Koln L").correct and verify_reading(cafe, "Café Köln L").correct
    empty = verify_reading("No landmarks nearby", "none")
    assert empty.correct and not empty.details["landmark_in_view"]
    assert not verify_reading("No landmarks nearby", "none" + " x" * 5000).correct


class ReadsNone:
    """Says ``none`` at every view: right only where neither a landmark nor an intersection shows."""

    name = "reads-none"

    def describe(self) -> dict:
        return {"name": self.name}

    async def generate(self, messages, sampling, *, observation=None, tools=None):
        from sftrl.agents.policy import Reply

        return Reply(text="none")


def test_recognition_accuracy_is_in_the_summary_and_recomputed_from_the_log(tmp_path: Path, capsys) -> None:
    env = read_env(split="id")
    expert = [
        asyncio.run(run_episode(env, ExpertPolicy(), seed=r, reset_options={"route_index": r}))
        for r in range(3)
    ]
    s = summarize(expert)
    assert s["success_rate"] == s["recognition_accuracy"] == s["landmark_recognition_accuracy"] == 1.0
    assert "step_accuracy" not in s  # a reading is not a navigation step
    out = tmp_path / "run"
    run, env_cfg = split_config(
        {
            "env": "virl",
            "modality": "vision",
            "prompt_style": "compact",
            "task": "read",
            "resolution": 32,
            "num_routes": 20,
            "episodes": 4,
            "out": out,
        }
    )
    summary = asyncio.run(run_async(run, env_cfg, policy=ReadsNone()))
    # "none" everywhere is right at the plain points only: some credit overall, none on the landmarks.
    assert 0.0 < summary["recognition_accuracy"] < 1.0
    assert summary["landmark_recognition_accuracy"] == 0.0 and summary["success_rate"] == 0.0
    assert main(["eval", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for key in ("recognition_accuracy", "landmark_recognition_accuracy", "success_rate", "verdicts"):
        assert again[key] == summary[key]


def test_read_needs_vision_compact_and_rail(capsys) -> None:
    for kwargs in ({"modality": "language"}, {"prompt_style": "paper"}, {"mode": "free"}):
        with pytest.raises(ValidationError, match="task read needs modality vision"):
            VIRLEnv(**{"modality": "vision", "prompt_style": "compact", "task": "read", **kwargs})
    assert main(["run", "--env", "virl", "--task", "read", "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "task read needs modality vision" in err
