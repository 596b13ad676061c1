"""sftrl: build, run and post-train vision-language agents in verifier-checked, multi-turn environments.

Importing the package registers its gymnasium envs (``gym.make("sftrl/GeneralPoints-v0")``); env
modules, and any model library, load only when an env is made or a command needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

from sftrl.environments.registry import register_all as _register_all

_register_all()
