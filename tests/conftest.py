"""Shared test set-up: single-threaded torch (2 threads is up to ~100x slower on small CI VMs)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight text model (built offline once per test session)."""
    from sftrl.agents.tiny import build_tiny_model

    return build_tiny_model("text", tmp_path_factory.mktemp("tiny") / "text", seed=0)


@pytest.fixture(scope="session")
def tiny_vision_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2-VL model with an image-only processor."""
    from sftrl.agents.tiny import build_tiny_model

    return build_tiny_model("vision", tmp_path_factory.mktemp("tiny") / "vision", seed=0)
