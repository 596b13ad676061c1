"""Trajectory logs: the versioned episode schema and a crash-safe, append-only JSONL writer/reader.

A run directory holds ``episodes.jsonl`` (one line per finished episode), ``images/<sha256>.png``
(each image once, named by content hash) and ``config.yaml`` (the effective run config). Every line is
written with one ``write`` after its images are on disk (``fsync`` is grouped: see
:class:`TrajectoryWriter`), so a killed run leaves a valid file: at worst a partial last line, which
readers skip and :func:`repair_log` trims before resuming.

Whatever a model sends must be loggable, and every line written must read back: non-finite floats
are stored as the JSON strings ``"NaN"``/``"Infinity"``/``"-Infinity"`` (which the schema reads back
as floats), lone UTF-16 surrogates become U+FFFD, and strings longer than the writer's byte limit are
cut with a marker; :attr:`EpisodeRecord.log_notes` counts what was changed. One writer per run
directory: :func:`lock_run_dir` refuses a second process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticSerializationError

from sftrl.environments.base import Verdict

SCHEMA_VERSION = 1
EPISODES_FILE = "episodes.jsonl"
IMAGES_DIR = "images"
LOCK_FILE = ".lock"
# Longest string (reply text, prompt, traceback) a log line keeps, in UTF-8 bytes; longer ones are cut.
DEFAULT_MAX_STRING_BYTES = 1 << 20
TRUNCATION_MARKER = " …[sftrl: {dropped} more bytes not logged]"
# NaN/±inf as JSON strings: standard JSON that the float fields validate back into the same values.
_LOG_MODEL_CONFIG = ConfigDict(ser_json_inf_nan="strings")


class ReplyRecord(BaseModel):
    """A policy reply as logged: text, tokens and log-probs when known, and how it was sampled."""

    model_config = _LOG_MODEL_CONFIG

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

    model_config = _LOG_MODEL_CONFIG

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

    model_config = _LOG_MODEL_CONFIG

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
    log_notes: dict[str, int] = Field(default_factory=dict)
    """What the writer changed to make the record loggable: ``replaced_surrogates`` (lone surrogates
    turned into U+FFFD) and ``truncated_strings`` (strings cut at the byte limit), each a count."""


class LogError(ValueError):
    """A trajectory log that cannot be read (not a partial last line: real corruption)."""


class RunLockedError(LogError):
    """Another process is writing to the run directory."""


@contextlib.contextmanager
def lock_run_dir(run_dir: Path | str) -> Iterator[None]:
    """Hold an exclusive, non-blocking ``flock`` on ``run_dir/.lock`` (a second writer is refused).

    The kernel drops the lock when the process dies, so a killed run never leaves a stale lock.
    """
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise RunLockedError(
                f"{run_dir} is being written by another process (pid {holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def clean_value(value: Any, notes: dict[str, int], max_bytes: int | None = None) -> Any:
    """``value`` with lone surrogates replaced and, given ``max_bytes``, long strings cut (see notes)."""
    return _clean(value, max_bytes if max_bytes is not None else 1 << 62, notes)


def _clean_str(s: str, max_bytes: int, notes: dict[str, int]) -> str:
    try:
        raw = s.encode("utf-8")
    except UnicodeEncodeError:
        # Surrogate pairs that arrived as two code points become one character; lone ones U+FFFD.
        fixed = s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        notes["replaced_surrogates"] = (
            notes.get("replaced_surrogates", 0) + fixed.count("\ufffd") - s.count("\ufffd")
        )
        s = fixed
        raw = s.encode("utf-8")
    if len(raw) > max_bytes:
        kept = raw[:max_bytes].decode("utf-8", "ignore")
        s = kept + TRUNCATION_MARKER.format(dropped=len(raw) - len(kept.encode("utf-8")))
        notes["truncated_strings"] = notes.get("truncated_strings", 0) + 1
    return s


def _clean(value: Any, max_bytes: int, notes: dict[str, int]) -> Any:
    if isinstance(value, str):
        return _clean_str(value, max_bytes, notes)
    if isinstance(value, dict):
        return {_clean(k, max_bytes, notes): _clean(v, max_bytes, notes) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, max_bytes, notes) for v in value]
    return value


def encode_record(record: EpisodeRecord, max_string_bytes: int = DEFAULT_MAX_STRING_BYTES) -> bytes:
    """One ``episodes.jsonl`` line (with its newline) that :func:`iter_episodes` reads back.

    The common case is one pydantic dump. A line that cannot be encoded (lone surrogates) or may hold
    a string over the limit is rebuilt from cleaned values; ``record`` itself is never changed.
    """
    line: bytes | None = None
    # A reply longer than the limit (in characters, so surely in bytes) goes straight to cleaning:
    # dumping it first would build a line several times its size (it is quoted in later prompts).
    if not any(len(t.reply.text) > max_string_bytes for t in record.turns):
        try:
            line = record.model_dump_json().encode("utf-8")
        except PydanticSerializationError:
            line = None
    # No string is longer than the line it is part of: a short line needs no cleaning.
    if line is not None and len(line) <= max_string_bytes:
        return line + b"\n"
    notes = dict(record.log_notes)
    try:
        data = _clean(record.model_dump(), max_string_bytes, notes)
        data["log_notes"] = notes
        return EpisodeRecord.model_validate(data).model_dump_json().encode("utf-8") + b"\n"
    except (RecursionError, ValueError, PydanticSerializationError) as exc:
        # Nesting too deep to walk (a pathological tool-call argument): keep the episode's outcome.
        kept = record.model_copy(update={"turns": [], "log_notes": notes})
        kept.error = f"{kept.error or ''}\nsftrl: turns not logged ({type(exc).__name__}: {exc!s:.200})"
        return kept.model_dump_json().encode("utf-8") + b"\n"


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

    def __init__(
        self,
        run_dir: Path | str,
        fsync_interval_s: float = 1.0,
        max_string_bytes: int = DEFAULT_MAX_STRING_BYTES,
    ) -> None:
        self.fsync_interval_s = fsync_interval_s
        self.max_string_bytes = max_string_bytes
        self._last_sync = time.monotonic()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / EPISODES_FILE
        self.images = ImageStore(self.run_dir)
        repair_log(self.path)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open for the writer's lifetime

    def write(self, record: EpisodeRecord) -> None:
        self._fh.write(encode_record(record, self.max_string_bytes))
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
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise LogError(f"{path}:{lineno}: corrupt line ({getattr(exc, 'msg', exc)!s:.100})") from exc
        if not isinstance(obj, dict):
            raise LogError(f"{path}:{lineno}: not an episode record (a JSON {type(obj).__name__})")
        version = obj.get("schema_version")
        if version != SCHEMA_VERSION:
            raise LogError(f"{path}:{lineno}: schema_version {version!r}, this sftrl reads {SCHEMA_VERSION}")
        try:
            record = EpisodeRecord.model_validate(obj)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "record"
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            raise LogError(f"{path}:{lineno}: corrupt episode record ({where}: {err['msg']}){more}") from None
        yield record
    del tail  # an unterminated last line is an episode whose write was interrupted: not logged


def read_episodes(run_dir: Path | str) -> list[EpisodeRecord]:
    return list(iter_episodes(run_dir))
