"""Verifier-checked, multi-turn environments (GeneralPoints, V-IRL) behind one gymnasium contract."""

from __future__ import annotations

from sftrl.environments.base import Observation, SftrlEnv, Verdict
from sftrl.environments.registry import ENV_ALIASES, env_class, make_env, register_all

__all__ = ["ENV_ALIASES", "Observation", "SftrlEnv", "Verdict", "env_class", "make_env", "register_all"]

register_all()
