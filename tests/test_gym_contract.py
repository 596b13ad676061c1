"""The gymnasium contract of every sftrl env: registration on `import sftrl`, env checker, render, close."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sftrl  # noqa: F401 - registers the envs
from sftrl.agents.runner import RunConfig, run_async
from sftrl.environments import make_env
from sftrl.street_view.cache import INDEX_NAME

# Small images keep the checker fast; every (env, modality) pair and V-IRL's free mode.
CASES = [
    ("sftrl/GeneralPoints-v0", {"modality": "language"}),
    ("sftrl/GeneralPoints-v0", {"modality": "vision", "resolution": 64}),
    ("sftrl/VIRL-v0", {"modality": "language"}),
    ("sftrl/VIRL-v0", {"modality": "vision", "resolution": 32}),
    ("sftrl/VIRL-v0", {"modality": "language", "mode": "free"}),
]


def test_import_sftrl_registers_the_envs_lazily_without_torch():
    code = (
        "import sys, gymnasium as gym, sftrl\n"
        "assert 'sftrl.environments.generalpoints.env' not in sys.modules, 'env module loaded eagerly'\n"
        "for env_id in ('sftrl/GeneralPoints-v0', 'sftrl/VIRL-v0'):\n"
        "    env = gym.make(env_id)\n"
        "    env.reset(seed=0)\n"
        "    env.close()\n"
        "assert 'torch' not in sys.modules, 'making an env imported torch'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(("env_id", "kwargs"), CASES)
def test_env_checker_passes_without_warnings(env_id, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checker warning is a contract violation too
        env = gym.make(env_id, **kwargs)
        check_env(env.unwrapped)
        env.close()


def test_gym_make_runs_the_passive_checker():
    env = gym.make("sftrl/GeneralPoints-v0")
    wrappers = []
    while isinstance(env, gym.Wrapper):
        wrappers.append(type(env).__name__)
        env = env.env
    assert "PassiveEnvChecker" in wrappers


@pytest.mark.parametrize(("env_id", "kwargs"), CASES[:4])
def test_render_modes(env_id, kwargs):
    rgb = gym.make(env_id, render_mode="rgb_array", **kwargs)
    obs, _ = rgb.reset(seed=3)
    frame = rgb.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
    assert frame.ndim == 3 and frame.shape[2] == 3
    if obs.images:  # vision: exactly the image the model sees
        assert np.array_equal(frame, np.asarray(obs.images[0].convert("RGB")))
    else:  # language: what the vision modality would show
        assert frame.shape[0] >= 16 and frame.shape[1] >= 16
    # After a step the frame still shows the state (feedback observations carry no image).
    obs, *_ = rgb.step("not an answer")
    assert rgb.render().shape == frame.shape

    ansi = gym.make(env_id, render_mode="ansi", **kwargs)
    obs, _ = ansi.reset(seed=3)
    assert ansi.render() == obs.text
    obs, *_ = ansi.step("not an answer")
    assert ansi.render() == obs.text
    for env in (rgb, ansi):
        env.close()


def test_render_without_mode_returns_none_and_bad_modes_are_refused():
    env = make_env("gp")
    env.reset(seed=0)
    assert env.render() is None
    with pytest.raises(ValueError, match="render_mode must be one of rgb_array, ansi"):
        make_env("gp", render_mode="human")
    with pytest.raises(gym.error.ResetNeeded):
        make_env("virl", render_mode="ansi").render()


def test_close_closes_the_street_view_cache_and_is_idempotent(tmp_path: Path):
    env = make_env("virl", modality="vision", resolution=32, street_view="cache", cache_dir=str(tmp_path))
    env.reset(seed=0)
    (provider,) = env._providers.values()
    conn = provider._local.conn
    conn.execute("SELECT 1")
    env.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    env.close()  # closing twice is allowed


def test_runner_closes_the_envs_it_built(tmp_path: Path):
    cache = tmp_path / "cache"
    run = RunConfig(env="virl", episodes=2, concurrency=2, out=tmp_path / "run")
    env_cfg = {"modality": "vision", "resolution": 32, "street_view": "cache", "cache_dir": str(cache)}
    env_cfg = make_env("virl", **env_cfg).config_dict
    summary = asyncio.run(run_async(run, env_cfg))
    assert summary["episodes"] == 2 and summary["errors"] == 0
    # SQLite removes the write-ahead log when the last connection to the index closes.
    assert (cache / INDEX_NAME).exists()
    assert not (cache / f"{INDEX_NAME}-wal").exists()
