"""Trajectory logs: the versioned episode schema and a crash-safe, append-only JSONL writer/reader.

A run directory holds ``episodes.jsonl`` (one line per finished episode), ``images/<sha256>.png``
(each image once, named by content hash) and ``config.yaml`` (the effective run config). Every line is
written with one ``write`` after its images are on disk (``fsync`` is grouped: see
:class:`TrajectoryWriter`), so a killed run leaves a valid file: at worst a partial last line, which
readers skip and :func:`repair_log` trims before resuming.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from sftrl.environments.base import Verdict

SCHEMA_VERSION = 1
EPISODES_FILE = "episodes.jsonl"
IMAGES_DIR = "images"


class ReplyRecord(BaseModel):
    """A policy reply as logged: text, tokens and log-probs when known, and how it was sampled."""

    text: str
    tool_calls: list[dict[str, Any]] | None = None
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    model: str | None = None
    usage: dict[str, int] | None = None
    sampling: dict[str, Any] = Field(default_factory=dict)
    latency_s: float = 0.0


class TurnRecord(BaseModel):
    """One model call: the prompt it saw, its reply, and what the verifier made of it."""

    index: int
    """Position of this call in the episode (0-based)."""
    step: int
    """Env step (sub-task) the call belongs to; GeneralPoints has one, V-IRL one per rail point."""
    attempt: int
    """Attempt number within the step (0 = first try, >0 = retries after verifier feedback)."""
    prompt: list[dict[str, Any]]
    """The messages sent to the policy (images as references into ``images/``)."""
    reply: ReplyRecord
    action: dict[str, Any] | None
    verdict: Verdict
    reward: float
    info: dict[str, Any] = Field(default_factory=dict)
    """Structured observation info at the time of the call (e.g. the hand, the rail position)."""


class EpisodeRecord(BaseModel):
    """One finished episode: one JSONL line of ``episodes.jsonl``."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    episode_index: int
    seed: int
    env_id: str
    env_config: dict[str, Any]
    policy: dict[str, Any]
    turns: list[TurnRecord] = Field(default_factory=list)
    success: bool = False
    total_reward: float = 0.0
    metrics: dict[str, Any] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)
    """Structured info of the initial observation (e.g. the hand dealt)."""
    tools: list[dict[str, Any]] | None = None
    """Tool-calling mode: the tools offered to the policy (OpenAI function schemas)."""
    started_at: float = 0.0
    duration_s: float = 0.0
    policy_s: float = 0.0
    env_s: float = 0.0
    error: str | None = None
    """A traceback when the episode crashed (the run goes on)."""


class LogError(ValueError):
    """A trajectory log that cannot be read (not a partial last line: real corruption)."""


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ImageStore:
    """Content-addressed PNG files under ``run_dir/images``; writing the same image twice is free."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / IMAGES_DIR
        self._known: set[str] = set()

    def put(self, sha: str, png: bytes) -> str:
        rel = f"{IMAGES_DIR}/{sha}.png"
        if sha not in self._known:
            path = self.run_dir / rel
            if not path.exists():
                self.dir.mkdir(parents=True, exist_ok=True)
                _atomic_write(path, png)
            self._known.add(sha)
        return rel

    def get(self, rel: str) -> bytes:
        return (self.run_dir / rel).read_bytes()


def repair_log(path: Path) -> int:
    """Trim a partial last line left by a crash; returns the number of bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        # Find the last newline; everything after it is an unfinished line.
        chunk = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            buf = fh.read(pos - start)
            nl = buf.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        if keep < size:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        return size - keep


class TrajectoryWriter:
    """Appends :class:`EpisodeRecord` lines to ``run_dir/episodes.jsonl`` crash-safely.

    Each line reaches the OS in one ``write`` (a killed process loses nothing already written);
    ``fsync`` — which guards against power loss, at ~10 ms a call — is grouped: at most every
    ``fsync_interval_s`` and on close, so a fast run does not spend its time waiting for the disk.
    A power cut can lose at most that interval's episodes; ``--resume`` re-runs them.
    """

    def __init__(self, run_dir: Path | str, fsync_interval_s: float = 1.0) -> None:
        self.fsync_interval_s = fsync_interval_s
        self._last_sync = time.monotonic()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / EPISODES_FILE
        self.images = ImageStore(self.run_dir)
        repair_log(self.path)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open for the writer's lifetime

    def write(self, record: EpisodeRecord) -> None:
        line = record.model_dump_json().encode("utf-8") + b"\n"
        self._fh.write(line)
        self._fh.flush()
        now = time.monotonic()
        if now - self._last_sync >= self.fsync_interval_s:
            os.fsync(self._fh.fileno())
            self._last_sync = now

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_episodes(run_dir: Path | str) -> Iterator[EpisodeRecord]:
    """Episodes of a run directory (or of a ``.jsonl`` file) in file order; skips a partial last line."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / EPISODES_FILE
    if not path.exists():
        raise LogError(f"no trajectory log at {path}")
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    for lineno, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LogError(f"{path}:{lineno}: corrupt line ({exc.msg})") from exc
        version = obj.get("schema_version")
        if version != SCHEMA_VERSION:
            raise LogError(f"{path}:{lineno}: schema_version {version!r}, this sftrl reads {SCHEMA_VERSION}")
        yield EpisodeRecord.model_validate(obj)
    del tail  # an unterminated last line is an episode whose write was interrupted: not logged


def read_episodes(run_dir: Path | str) -> list[EpisodeRecord]:
    return list(iter_episodes(run_dir))
