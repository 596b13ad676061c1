"""sftrl: build, run and post-train vision-language agents in verifier-checked, multi-turn environments."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
