"""The GeneralPoints env contract: gymnasium registration, seeding, splits, prompts and attempts."""

from __future__ import annotations

import gymnasium as gym
import pytest

import sftrl.environments  # noqa: F401 - registers the envs
from sftrl.environments import make_env
from sftrl.environments.base import Observation
from sftrl.environments.generalpoints.env import GeneralPointsEnv


def test_registered_with_gymnasium_using_cli_flag_names():
    env = gym.make(
        "sftrl/GeneralPoints-v0",
        modality="vision",
        split="visual-ood",
        resolution=128,
        verify_iter=2,
        target=24,
        face_cards="10",
        suit_color="red",
    )
    obs, info = env.reset(seed=0)
    assert isinstance(obs, Observation) and len(obs.images) == 1
    assert obs.images[0].size == (128, 128)
    assert isinstance(env.unwrapped, GeneralPointsEnv)


def test_seed_determines_the_episode():
    a, b = make_env("gp"), make_env("gp")
    hands = [a.reset(seed=s)[0].info["cards"] for s in range(20)]
    assert hands == [b.reset(seed=s)[0].info["cards"] for s in range(20)]
    assert len({tuple(h) for h in hands}) > 15
    # Same seed, same expert answer too.
    assert a.reset(seed=5)[0].oracle == b.reset(seed=5)[0].oracle


def test_hands_are_dealt_from_a_deck_and_solvable():
    env = make_env("gp", split="id")
    for s in range(50):
        obs, _ = env.reset(seed=s)
        assert len(set(obs.info["cards"])) == 4  # 4 distinct physical cards
        assert obs.info["num_solutions"] > 0


def test_given_hand_option_and_rule_in_prompt():
    env = make_env("gp", face_cards="11-13")
    obs, info = env.reset(seed=0, options={"hand": ["K", "Q", "2", "A"]})
    assert info["ranks"] == ["K", "Q", "2", "A"] and info["values"] == [13, 12, 2, 1]
    assert "Cards: ['K', 'Q', '2', 'A']" in obs.text
    assert "'J', 'Q', and 'K' count as '11', '12', and '13' respectively" in obs.text
    env10 = make_env("gp")
    obs, info = env10.reset(seed=0, options={"hand": ["KH", "10S", "2C", "AD"]})
    assert info["values"] == [10, 10, 2, 1] and "count as '10'" in obs.text


def test_vision_prompt_has_no_card_text():
    env = make_env("gp", modality="vision", resolution=96)
    obs, info = env.reset(seed=1)
    assert "Cards:" not in obs.text and "image" in obs.text
    assert repr(info["ranks"]) not in obs.text
    assert "[Input]" not in obs.text


def test_explicit_knobs_override_the_split():
    env = make_env("gp", split="rule-ood", face_cards="10")
    assert env.config.face_cards == "10" and env.config.require_face_card is True
    with pytest.raises(ValueError):
        make_env("gp", split="nope")
    with pytest.raises(ValueError):
        make_env("gp", verify_iter=0)


def test_step_contract_and_attempt_limit():
    env = make_env("gp", verify_iter=2)
    env.reset(seed=0, options={"hand": ["3", "3", "8", "8"]})
    obs, reward, terminated, truncated, info = env.step("3+3+8+8")
    assert (reward, terminated, truncated) == (-1.0, False, False)
    assert obs.kind == "feedback" and obs.text.startswith("You failed this trial because")
    assert info["verdict"].category == "no_solution" and info["remaining_attempts"] == 1
    obs, reward, terminated, truncated, info = env.step('{"formula": "8/(3-8/3)=24"}')
    assert reward == 5.0 and terminated and info["success"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step("anything")


def test_malformed_output_is_scored_not_raised():
    env = make_env("gp", modality="vision", resolution=96)
    env.reset(seed=0)
    for junk in ["", "{", "\x00" * 50, "{'cards': [[[[[[", "9" * 5000]:
        env.reset(seed=0)
        _, reward, *_ = env.step(junk)
        assert reward < 0
