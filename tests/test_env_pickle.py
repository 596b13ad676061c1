"""Every env x modality pickles (for process pools and distributed env workers) and behaves the same after.

Handles an env opens (street-view providers with locks, HTTP sessions, SQLite connections) are not
pickled: they are reopened lazily by the copy. The copy must then produce the very same episode.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sftrl  # noqa: F401 - registers the envs
from sftrl.environments import make_env
from sftrl.environments.base import Observation
from sftrl.street_view.provider import ViewRequest, make_provider

FIXTURE = Path(__file__).parent / "fixtures" / "panorama_dir"

CASES = [
    ("gp", {"modality": "language"}),
    ("gp", {"modality": "vision", "resolution": 64}),
    ("virl", {"modality": "language"}),
    ("virl", {"modality": "vision", "resolution": 32}),
    ("virl", {"modality": "vision", "resolution": 32, "street_view": "cache"}),
    ("virl", {"modality": "language", "mode": "free"}),
    ("virl", {"modality": "vision", "resolution": 32, "mode": "free"}),
]


def same(a: Observation, b: Observation) -> bool:
    images_a = [np.asarray(i) for i in a.images]
    images_b = [np.asarray(i) for i in b.images]
    return (
        a.text == b.text
        and len(images_a) == len(images_b)
        and all(np.array_equal(x, y) for x, y in zip(images_a, images_b, strict=True))
    )


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_env_pickles_mid_episode_and_the_copy_continues_identically(
    name: str, kwargs: dict[str, Any], tmp_path: Path
) -> None:
    if kwargs.get("street_view") == "cache":
        kwargs = {**kwargs, "cache_dir": str(tmp_path / "cache")}
    env = make_env(name, **kwargs)
    obs, _ = env.reset(seed=3)
    if obs.images:
        env.step(type(env).random_reply(obs, random.Random(0)))  # providers are open now
    copy = pickle.loads(pickle.dumps(env))
    rng_a, rng_b = random.Random(1), random.Random(1)
    for _ in range(3):
        reply = type(env).random_reply(env._last_observation, rng_a)
        assert reply == type(copy).random_reply(copy._last_observation, rng_b)
        a, b = env.step(reply), copy.step(reply)
        assert same(a[0], b[0]) and a[1:4] == b[1:4]
        if a[2] or a[3]:
            break
    env.close()
    copy.close()


def test_panorama_dir_provider_pickles_and_serves_the_same_view() -> None:
    provider = make_provider("panorama-dir", root=str(FIXTURE), city="nyc")
    request = ViewRequest(lat=40.75, lng=-73.99, heading=90.0, width=32, height=32)
    before = np.asarray(provider.get_view(request))
    copy = pickle.loads(pickle.dumps(provider))
    assert np.array_equal(np.asarray(copy.get_view(request)), before)
