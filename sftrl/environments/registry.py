"""Names of the sftrl environments: CLI aliases, gymnasium ids and lazy construction."""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

from sftrl.environments.base import SftrlEnv

# gymnasium id -> "module:Class"; modules are imported only when an env is built.
ENTRY_POINTS: dict[str, str] = {
    "sftrl/GeneralPoints-v0": "sftrl.environments.generalpoints.env:GeneralPointsEnv",
    "sftrl/VIRL-v0": "sftrl.environments.virl.env:VIRLEnv",
}

# Short names used on the command line.
ENV_ALIASES: dict[str, str] = {
    "gp": "sftrl/GeneralPoints-v0",
    "generalpoints": "sftrl/GeneralPoints-v0",
    "virl": "sftrl/VIRL-v0",
}


class UnknownEnvError(ValueError):
    """Raised for an env name that is neither an alias nor a registered id."""


def resolve_env_id(name: str) -> str:
    """Map a CLI alias or a gymnasium id to the gymnasium id."""
    key = name.strip()
    if key in ENTRY_POINTS:
        return key
    if key.lower() in ENV_ALIASES:
        return ENV_ALIASES[key.lower()]
    known = ", ".join(sorted({*ENV_ALIASES, *ENTRY_POINTS}))
    raise UnknownEnvError(f"unknown env {name!r}; known: {known}")


def env_class(name: str) -> type[SftrlEnv]:
    """The environment class behind an alias or id (imports its module on first use)."""
    module_name, _, attr = ENTRY_POINTS[resolve_env_id(name)].partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, SftrlEnv)):  # pragma: no cover - programming error
        raise TypeError(f"{cls!r} is not an SftrlEnv")
    return cls


def make_env(name: str, **kwargs: Any) -> SftrlEnv:
    """Build an environment from an alias or id with keyword arguments named like the CLI flags."""
    return env_class(name)(**kwargs)


def register_all() -> None:
    """Register every sftrl env with gymnasium (idempotent), so ``gym.make("sftrl/...")`` works.

    Entry points are strings: an env's module (and whatever it imports) loads only when it is made.
    """
    for env_id, entry_point in ENTRY_POINTS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point)
