"""The V-IRL env through the real agent loop: expert/random success, modes, modalities, seeding, CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import gymnasium as gym
import pytest
from PIL import Image

import sftrl.environments  # noqa: F401 - registers the envs
from sftrl.agents.baselines import ExpertPolicy, RandomPolicy
from sftrl.agents.loop import run_episode
from sftrl.environments import make_env
from sftrl.environments.base import Observation
from sftrl.environments.virl.env import VIRLEnv
from sftrl.street_view.provider import ViewRequest

FIXTURES = Path(__file__).parent / "fixtures" / "virl"


class FakeProvider:
    """A tiny provider whose views encode the requested heading in their colour."""

    name = "fake"

    def __init__(self) -> None:
        self.requests: list[ViewRequest] = []

    def get_view(self, request: ViewRequest) -> Image.Image:
        self.requests.append(request)
        shade = int(request.heading % 360 / 360 * 255)
        return Image.new("RGB", (request.width, request.height), (shade, 0, 0))

    def cache_key(self, request: ViewRequest) -> str:
        return f"fake:{request.lat}:{request.lng}:{request.heading}"


def success_rate(env: VIRLEnv, policy, n: int, route_indices: bool = False) -> float:
    wins = 0
    for s in range(n):
        options = {"route_index": s} if route_indices else None
        rec = asyncio.run(run_episode(env, policy, seed=s, reset_options=options))
        assert rec.error is None
        wins += rec.success
    return wins / n


@pytest.mark.parametrize("split", ["id", "rule-ood", "visual-ood", "nyc-unseen"])
@pytest.mark.parametrize("mode", ["rail", "free"])
def test_expert_solves_every_split_in_both_modes(split, mode):
    env = make_env("virl", split=split, mode=mode)
    assert success_rate(env, ExpertPolicy(), 25, route_indices=True) == 1.0


@pytest.mark.parametrize("mode", ["rail", "free"])
def test_expert_solves_vision_with_injected_provider(mode):
    provider = FakeProvider()
    env = VIRLEnv(provider=provider, modality="vision", resolution=32, mode=mode)
    assert success_rate(env, ExpertPolicy(), 5) == 1.0
    obs, _ = env.reset(seed=0)
    assert len(obs.images) == 1 and obs.images[0].size == (2 * 32 + 4, 2 * 32 + 4)
    assert "[Observation format]" in obs.text and "street view grid" in obs.text
    assert (
        "No landmarks nearby" not in obs.text.split("[Observations and actions sequence]")[1].splitlines()[1]
    )
    # front, right, back, left relative to the agent's heading
    last4 = provider.requests[-4:]
    h = obs.info["heading"]
    assert [round((r.heading - h) % 360) for r in last4] == [0, 90, 180, 270]


def test_random_policy_rarely_succeeds():
    assert success_rate(make_env("virl"), RandomPolicy(seed=1), 20) <= 0.1
    assert success_rate(make_env("virl", mode="free"), RandomPolicy(seed=1), 20) <= 0.1


def test_gym_make_and_registration():
    env = gym.make("sftrl/VIRL-v0", city="nyc")
    obs, info = env.reset(seed=0)
    assert isinstance(obs, Observation) and isinstance(env.unwrapped, VIRLEnv)
    assert obs.kind == "task" and obs.env_id == "sftrl/VIRL-v0"
    assert info["actions"][0] == "forward()" and "turn_direction(northeast)" in info["actions"]
    assert env.unwrapped.config_dict["actions"] == "absolute"
    assert make_env("virl", split="rule-ood").config_dict["actions"] == "relative"
    assert make_env("virl", split="visual-ood").config_dict["city"] == "helsinki+baltimore"
    with pytest.raises(ValueError):
        make_env("virl", city="atlantis")


def test_seed_determines_the_episode_and_route_index_picks_a_route():
    a, b = make_env("virl"), make_env("virl")
    ids = [a.reset(seed=s)[0].info["route_id"] for s in range(10)]
    assert ids == [b.reset(seed=s)[0].info["route_id"] for s in range(10)]
    assert len(set(ids)) > 5
    assert a.reset(seed=1)[0].oracle == b.reset(seed=1)[0].oracle
    obs, info = a.reset(seed=0, options={"route_index": 7})
    assert info["route_index"] == 7 and info["route_id"] == a.routes[7].route_id
    with pytest.raises(ValueError):
        a.reset(options={"route_index": 10_000})


@pytest.mark.parametrize("concurrency", ["1", "3"])
def test_route_draw_by_index_plays_every_route_once_in_order(tmp_path, concurrency):
    from sftrl.agents.trajectory import read_episodes
    from sftrl.cli import main

    def route_ids(run: str, *extra: str) -> list[str]:
        out = tmp_path / f"{run}-{concurrency}"
        argv = ["run", "--env", "virl", "--num-routes", "7", "--episodes", "7", "--out", str(out)]
        assert main([*argv, "--concurrency", concurrency, "--seed", "5", *extra]) == 0
        records = sorted(read_episodes(out), key=lambda r: r.episode_index)
        return [r.turns[0].info["route_id"] for r in records]

    routes = [r.route_id for r in VIRLEnv(num_routes=7).routes]
    assert route_ids("by-index", "--route-draw", "by_index") == routes
    assert sorted(route_ids("random")) != sorted(routes)  # a seeded draw repeats some routes
    # An explicit route_index still wins over the episode index.
    env = VIRLEnv(num_routes=7, route_draw="by_index")
    assert env.reset(seed=0, options={"episode_index": 9})[1]["route_index"] == 2
    assert env.reset(seed=0, options={"episode_index": 9, "route_index": 4})[1]["route_index"] == 4


def test_rail_feedback_history_and_verify_iter():
    env = make_env("virl", verify_iter=2)
    obs, _ = env.reset(seed=0)
    assert "O_1:" in obs.text and "A_1:" not in obs.text
    expert = json.loads(obs.oracle["expert_reply"])
    assert set(expert) == {"current observation", "current instruction", "action"}
    obs, r, term, trunc, info = env.step(obs.oracle["expert_reply"])
    assert (r, term, obs.kind) == (1.0, False, "task")
    assert f"A_1: {expert['action']}" in obs.text and "O_2:" in obs.text
    wrong = json.dumps(
        {"current observation": "No landmarks nearby", "current instruction": "", "action": "stop()"}
    )
    obs, r, term, _, info = env.step(wrong)
    assert (r, term, obs.kind) == (-1.0, False, "feedback")
    assert obs.text.startswith("You failed this trial because you make incorrect action.")
    assert info["verdict"].category == "incorrect_action" and not info["success"]
    obs, r, term, _, info = env.step("gibberish")
    assert term and not info["success"]
    m = env.episode_metrics()
    assert m["wrong_attempts"] == 2 and m["steps"] == 3 and m["rail_length"] > 3
    with pytest.raises(RuntimeError):
        env.step(wrong)


def test_free_mode_moves_and_metrics():
    env = make_env("virl", mode="free", max_episode_steps=4)
    obs, _ = env.reset(seed=2)
    start = obs.info["node"]
    fwd = json.dumps(
        {"current observation": "No landmarks nearby", "current instruction": "", "action": "forward()"}
    )
    turned = False
    for _ in range(4):
        obs, r, term, trunc, info = env.step(fwd)
        if term or trunc:
            break
        turned = turned or obs.info["node"] != start
    assert trunc and not info["success"]
    m = env.episode_metrics()
    assert m["steps"] == 4 and m["dist_to_dest_m"] is not None
    env = make_env("virl", mode="free")
    obs, _ = env.reset(seed=2)
    while True:
        obs, r, term, trunc, info = env.step(obs.oracle["expert_reply"])
        assert r == 1.0
        if term or trunc:
            break
    assert term and info["success"] and env.episode_metrics()["dist_to_dest_m"] <= 25.0


def test_official_route_files():
    env = make_env("virl", routes=str(FIXTURES / "route_infos_ny_moma.json"))
    assert success_rate(env, ExpertPolicy(), 2) == 1.0
    assert env.reset(seed=0)[0].info["destination"] == "MoMA Design Store"
    sf = make_env("virl", routes=str(FIXTURES / "route_infos_sf_apple.json"), split="rule-ood")
    assert success_rate(sf, ExpertPolicy(), 1) == 1.0
    assert sf.reset(seed=0)[0].info["geocode_only"]
    with pytest.raises(ValueError, match="free mode"):
        make_env("virl", routes=str(FIXTURES / "route_infos_sf_apple.json"), mode="free").reset(seed=0)


def test_cli_run_reports_full_success(capsys, tmp_path):
    from sftrl.cli import main

    args = [
        "run",
        "--env",
        "virl",
        "--city",
        "nyc",
        "--episodes",
        "5",
        "--json",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["success_rate"] == 1.0


def test_vision_with_the_default_synthetic_provider():
    env = make_env("virl", modality="vision", resolution=32, split="visual-ood")
    assert success_rate(env, ExpertPolicy(), 2) == 1.0
    obs, _ = env.reset(seed=0)
    assert obs.images[0].size == (2 * 32 + 4, 2 * 32 + 4)


def test_longer_routes_option():
    env = make_env("virl", max_start_m=300, max_route_m=800, num_routes=10)
    assert max(r.route_results.distance or 0 for r in env.routes) > 200
    assert success_rate(env, ExpertPolicy(), 3) == 1.0
