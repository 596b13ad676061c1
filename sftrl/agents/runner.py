"""Run many episodes of one env with one policy: seeding, concurrency, logging, resume and progress."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftrl.agents.env_workers import EnvWorkers, WorkerEnv
from sftrl.agents.events import (
    EpisodeFinished,
    Listener,
    RunFailed,
    RunFinished,
    RunStarted,
    publish,
)
from sftrl.agents.factory import POLICIES, close_policy, make_policy
from sftrl.agents.loop import run_episode
from sftrl.agents.metrics import select_episodes, summarize
from sftrl.agents.policy import Policy, SamplingParams
from sftrl.agents.run_dirs import RunDirError, discard_if_empty, new_run_dir, point_latest, resolve_run_dir
from sftrl.agents.trajectory import (
    DEFAULT_MAX_STRING_BYTES,
    EPISODES_FILE,
    LOCK_FILE,
    EpisodeRecord,
    TrajectoryWriter,
    lock_run_dir,
    read_episodes,
)
from sftrl.config import ConfigError, dump_yaml, load_yaml, validation_message
from sftrl.environments.base import SftrlEnv
from sftrl.environments.registry import ENV_ALIASES, env_class, resolve_env_id

CONFIG_FILE = "config.yaml"


class RunConfig(BaseModel):
    """Options of ``agent run`` that are not env-specific (env options are validated by the env).

    The CLI's flags and help are generated from these fields (``sftrl.cli_flags``).
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    env: str = "gp"
    """Env: gp | virl (or a gymnasium id, e.g. sftrl/VIRL-v0)."""
    policy: str = "expert"
    """Who answers: expert | random | hf | openai | vllm | vllm-offline."""
    episodes: int = Field(default=10, ge=1)
    """Number of episodes."""
    seed: int = Field(default=0, ge=0)
    """Run seed: fixes every episode (runs with the same seed pair up in ``agent eval A B``)."""
    out: Path | None = None
    """Run directory; None: a new ``runs/<date>-<time>-<env>-<policy>`` (with ``--resume``: runs/latest)."""
    resume: bool = False
    """Continue the run in ``out`` (episodes already logged are kept, not repeated)."""
    concurrency: int = Field(default=1, ge=1, le=4096)
    """Episodes in flight at once."""
    env_workers: int = Field(default=0, ge=0, le=256)
    """Processes running the env's reset/step (rendering included), at most one per episode in flight;
    0: in this process. For CPU-heavy envs (V-IRL-VL) with --concurrency >= N; logs are the same for any N."""
    keep_last_turns: int | None = Field(default=None, ge=0)
    """Conversation history: keep only the last N failed attempts and their feedback (None: all)."""
    group_size: int = Field(default=1, ge=1, le=1024)
    """Consecutive episodes sharing one seed (one initial state): GRPO groups for ``agent train rl``."""
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    model: str | None = None
    """Model directory or hub id (``hf``, ``vllm-offline``) or served model name (``openai``, ``vllm``)."""
    base_url: list[str] = Field(default_factory=list)
    """OpenAI-compatible endpoint(s); several ``vllm`` replicas share the requests."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself is never stored)."""
    request_timeout: float = Field(default=120.0, gt=0)
    """Seconds one model request may take (openai, vllm)."""
    max_retries: int = Field(default=3, ge=0)
    """Retries of a model request after a transient error (openai, vllm)."""
    policy_options: dict[str, Any] = Field(default_factory=dict)
    """Backend option, e.g. dtype=float32, max_batch_size=8 (values parsed as YAML)."""
    only: list[int] | None = None
    """Run just these episode indices (same seeds as in the full run): re-run any episode exactly."""
    retry_errors: bool = True
    """``--resume`` runs again the episodes whose record is an error (server down, crash)."""
    force: bool = False
    """``--resume`` a directory whose ``config.yaml`` is missing or empty (options cannot be checked)."""
    log_max_string_bytes: int = Field(default=DEFAULT_MAX_STRING_BYTES, ge=256)
    """Longest string (reply, prompt, traceback) kept in the log, in UTF-8 bytes; longer ones are cut."""


# Options that may differ between a run and its resumption without changing what is computed.
_RESUMABLE_KEYS = {
    "episodes",
    "resume",
    "concurrency",
    "env_workers",
    "out",
    "base_url",
    "api_key_env",
    "request_timeout",
    "max_retries",
    "only",
    "retry_errors",
    "force",
    "log_max_string_bytes",
}


# What `agent eval A B` treats as one compared setting: every option of who answers and how it samples.
_POLICY_KEYS = {"policy", "model", "policy_options", "sampling", "base_url", "api_key_env"}


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[str]]:
    """What differs between two runs' effective configs, grouped into compared settings.

    ``{"policy": ["model: m1 -> m2"], "env options": ["split: id -> rule-ood", ...]}``: the policy's
    options are one setting, the env's options another (a split also changes the options it
    resolves), every other run option its own; options that do not change what an episode computes
    (``out``, ``concurrency``, ``episodes``...) are left out.
    """
    groups: dict[str, list[str]] = {}
    for key in sorted(set(a) | set(b)):
        if key in _RESUMABLE_KEYS or a.get(key) == b.get(key):
            continue
        if key in _POLICY_KEYS:
            group = "policy"
        else:
            group = key if key in RunConfig.model_fields else "env options"
        groups.setdefault(group, []).append(f"{key}: {_short(a.get(key))} -> {_short(b.get(key))}")
    return groups


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def split_config(values: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """Split a flat option mapping into the run config and the validated, resolved env config."""
    run_keys = set(RunConfig.model_fields)
    run_values = {k: v for k, v in values.items() if k in run_keys and v is not None}
    try:
        run = RunConfig.model_validate(run_values)
        env_id = resolve_env_id(run.env)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc)) from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if run.policy not in POLICIES:
        raise ConfigError(f"unknown policy {run.policy!r}; choose one of: {', '.join(POLICIES)}")
    model = env_class(env_id).config_model
    env_values = {k: v for k, v in values.items() if k not in run_keys and v is not None}
    unknown = set(env_values) - set(model.model_fields)
    if unknown:
        raise ConfigError(
            f"option(s) {', '.join(sorted(unknown))} not known to env {run.env!r}; "
            f"it takes: {', '.join(sorted(model.model_fields))}"
        )
    try:
        env_cfg = model.model_validate(env_values)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc)) from exc
    return run, env_cfg.model_dump(mode="json")


def episode_seed(run_seed: int, index: int) -> int:
    """The seed of episode ``index``: a fixed function of the run seed, shared by runs that pair."""
    digest = hashlib.sha256(f"sftrl:{run_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def effective_config(run: RunConfig, env_cfg: dict[str, Any]) -> dict[str, Any]:
    values = run.model_dump(mode="json")
    values["env"] = resolve_env_id(run.env)
    values.update(env_cfg)
    return values


def run_id_for(config: dict[str, Any]) -> str:
    """A run id that is a function of what the run computes (so same config ⇒ same log)."""
    key = {k: v for k, v in config.items() if k not in _RESUMABLE_KEYS}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def check_run_dir(run: RunConfig, env_cfg: dict[str, Any]) -> None:
    """Raise the :class:`ConfigError` ``run_async`` would raise for ``run.out`` (episodes already there
    without ``--resume``, a resume with other options), without writing anything: the TUI asks first."""
    if run.out is not None and run.out.is_dir():
        _check_resume(run.out, effective_config(run, env_cfg), run.resume, run.force)


def _check_resume(
    out: Path, config: dict[str, Any], resume: bool, force: bool = False
) -> list[EpisodeRecord]:
    log = out / EPISODES_FILE
    has_log = log.exists() and log.stat().st_size > 0
    if not resume:
        if has_log:
            raise ConfigError(
                f"{out} already holds episodes; pass --resume to continue it or choose another --out"
            )
        return []
    saved_path = out / CONFIG_FILE
    saved = load_yaml(saved_path) if saved_path.exists() else {}
    if has_log and not saved and not force:
        what = "is empty" if saved_path.exists() else "is missing"
        raise ConfigError(
            f"--resume: {saved_path} {what}, so the logged episodes' options cannot be checked; "
            "pass --force to resume with the options given now"
        )
    if saved and not force:
        diffs = sorted(
            k for k in set(saved) | set(config) if k not in _RESUMABLE_KEYS and saved.get(k) != config.get(k)
        )
        if diffs:
            raise ConfigError(
                f"--resume: {out} was run with a different config ({', '.join(diffs)}); "
                "resume with the same options or choose another --out"
            )
    return read_episodes(out) if has_log else []


SEEDS_FILE = "seeds.json"


def _write_seed_manifest(out: Path, run: RunConfig, run_id: str) -> None:
    """``seeds.json``: every planned episode's index and seed (``--only I`` re-runs episode I exactly)."""
    manifest = {
        "run_id": run_id,
        "run_seed": run.seed,
        "group_size": run.group_size,
        "episodes": [
            {"index": i, "seed": episode_seed(run.seed, i // run.group_size)} for i in range(run.episodes)
        ],
    }
    (out / SEEDS_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def with_run_dir(run: RunConfig) -> RunConfig:
    """``run`` with ``out`` set: a new run directory when none was given (``--resume``: the latest run)."""
    if run.out is not None:
        return run
    try:
        if run.resume:
            out = resolve_run_dir(None)
        else:
            short = next((a for a, i in ENV_ALIASES.items() if i == resolve_env_id(run.env)), run.env)
            out = new_run_dir(short, run.policy)
    except (RunDirError, OSError) as exc:
        raise ConfigError(str(exc)) from exc
    return run.model_copy(update={"out": out})


async def run_async(
    run: RunConfig,
    env_cfg: dict[str, Any],
    *,
    listeners: list[Listener] | None = None,
    on_progress: Callable[[int, int, EpisodeRecord | None], None] | None = None,
    policy: Policy | None = None,
) -> dict[str, Any]:
    """Run (or resume) the episodes of ``run`` and return the summary of the whole log.

    ``policy`` overrides the one ``run.policy`` names (the RL trainer passes the model it is training).
    Once the run has started, ``runs/latest`` points at its directory when that lies in ``runs/``; a
    directory made here for a run that fails before it starts is removed again.
    """
    made_here = run.out is None and not run.resume
    run = with_run_dir(run)
    assert run.out is not None
    out = run.out
    started: list[bool] = []

    def on_event(event: Any) -> None:
        if isinstance(event, RunStarted):
            started.append(True)
            point_latest(out)

    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create output directory {out}: {exc.strerror or exc}") from exc
        with lock_run_dir(out):  # one writer per run directory: a second `agent run` is refused
            return await _run_locked(run, env_cfg, [on_event, *(listeners or [])], on_progress, policy)
    except BaseException:
        if made_here and not started:
            discard_if_empty(out, (CONFIG_FILE, SEEDS_FILE, EPISODES_FILE, LOCK_FILE))
        raise


class RunAborted(RuntimeError):
    """No episode can succeed (the backend is unreachable or refuses every call): the run stopped."""

    fatal = True


def error_cause_line(exc: BaseException) -> str:
    """The ``cause: X`` line appended to an error record, read back by the summary's error counts."""
    cause = getattr(exc, "cause", None)
    return f"cause: {cause}\n" if isinstance(cause, str) and cause.isidentifier() else ""


def _one_line_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


async def _probe_env(
    cls: type[SftrlEnv], env_cfg: dict[str, Any], workers: EnvWorkers | None
) -> SftrlEnv | WorkerEnv:
    """An env whose inputs (routes file, street-view data) were opened: a broken one refuses the run.

    With ``workers`` it is the first worker's env, opened there (where the episodes will read them).
    """
    env: SftrlEnv | None = None
    try:
        if workers is not None:
            return await workers.open(0, check=True)
        env = cls(**env_cfg)
        env.check_inputs()
    except Exception as exc:
        if env is not None:
            env.close()
        if getattr(exc, "fatal", False):
            raise
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"env {cls.env_id} cannot start: {msg}") from exc
    return env


async def _run_locked(
    run: RunConfig,
    env_cfg: dict[str, Any],
    listeners: list[Listener],
    on_progress: Callable[[int, int, EpisodeRecord | None], None] | None,
    policy: Policy | None,
) -> dict[str, Any]:
    config = effective_config(run, env_cfg)
    out = run.out
    existing = _check_resume(out, config, run.resume, run.force)
    try:
        dump_yaml(config, out / CONFIG_FILE)
    except OSError as exc:
        raise ConfigError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    run_id = run_id_for(config)
    records, _ = select_episodes(existing, run.episodes)
    # Episodes that ended in an error (a server down, a crash) are run again unless told not to.
    done = {r.episode_index for r in records if r.error is None or not run.retry_errors}
    wanted = range(run.episodes) if run.only is None else sorted(set(run.only))
    if run.only is not None and any(i < 0 or i >= run.episodes for i in wanted):
        raise ConfigError(f"--only: episode indices must lie in 0..{run.episodes - 1}")
    todo = [i for i in wanted if i not in done]
    _write_seed_manifest(out, run, run_id_for(config))
    cls = env_class(run.env)
    lanes = min(run.concurrency, max(1, len(todo)))
    # Envs in worker processes: one per lane at most (a lane plays one episode at a time).
    workers = None
    if run.env_workers and todo:
        workers = EnvWorkers(min(run.env_workers, lanes), cls.env_id, env_cfg)
    try:
        spare_envs = [await _probe_env(cls, env_cfg, workers)] if todo else []
    except BaseException:
        if workers is not None:
            workers.close()
        raise
    own_policy = policy is None
    try:
        policy = policy if policy is not None else make_policy(run)
    except BaseException:
        for env in spare_envs:
            env.close()
        if workers is not None:
            workers.close()
        raise
    finished = len(done)
    publish(listeners, RunStarted(run_id, cls.env_id, run.episodes, finished, config))
    if on_progress:
        on_progress(finished, run.episodes, None)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in todo:
        queue.put_nowait(i)

    # every env built here (the probe included), closed when the run ends (they hold providers)
    opened: list[SftrlEnv | WorkerEnv] = list(spare_envs)
    # Infrastructure failures (nothing answered: refused, DNS, TLS, timeouts, 5xx) while no episode has
    # succeeded: past a few, the run stops instead of failing every remaining episode the same way.
    health = {"ok": sum(r.error is None for r in records), "infra": 0}
    infra_limit = min(len(todo), max(2, run.concurrency))
    stop: list[str] = []
    with TrajectoryWriter(out, max_string_bytes=run.log_max_string_bytes) as writer:

        async def worker(lane: int) -> None:
            nonlocal finished
            # The probed env is lane 0's: in a worker it lives in slot 0, which only lane 0 reopens.
            env: SftrlEnv | WorkerEnv | None = spare_envs.pop() if spare_envs and lane == 0 else None
            while not stop:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                seed = episode_seed(run.seed, index // run.group_size)
                try:
                    if env is None:
                        env = cls(**env_cfg) if workers is None else await workers.open(lane)
                        opened.append(env)
                    record = await run_episode(
                        env,
                        policy,
                        seed=seed,
                        episode_index=index,
                        run_id=run_id,
                        sampling=run.sampling,
                        keep_last_turns=run.keep_last_turns,
                        images=writer.images,
                        listeners=listeners,
                        # Envs that enumerate a fixed pool (GP hand_pool, pool_draw=by_index) key on it.
                        reset_options={"episode_index": index // run.group_size},
                    )
                except Exception as exc:
                    if getattr(exc, "fatal", False):
                        raise  # a missing/rejected key or unknown model: every episode would fail
                    # One broken episode must not end the run: log it and replace the env.
                    if env is not None:
                        env.close()
                    env = None
                    record = EpisodeRecord(
                        run_id=run_id,
                        episode_index=index,
                        seed=seed,
                        env_id=cls.env_id,
                        env_config=env_cfg,
                        policy=policy.describe(),
                        started_at=time.time(),
                        error=traceback.format_exc() + error_cause_line(exc),
                    )
                    if getattr(exc, "infrastructure", False):
                        health["infra"] += 1
                        if health["ok"] == 0 and health["infra"] >= infra_limit and not stop:
                            stop.append(_one_line_error(exc))
                else:
                    health["ok"] += 1
                writer.write(record)
                records.append(record)
                finished += 1
                publish(listeners, EpisodeFinished(record))
                if on_progress:
                    on_progress(finished, run.episodes, record)
                # Yield to the loop after every episode: backends that never suspend (expert, random)
                # would otherwise run every episode before Ctrl-C's cancellation is delivered.
                await asyncio.sleep(0)

        lane_tasks = [asyncio.ensure_future(worker(lane)) for lane in range(lanes)]
        try:
            await asyncio.gather(*lane_tasks)
            if stop:
                raise RunAborted(
                    f"stopped after {health['infra']} episode(s) failed and none succeeded: {stop[0]} "
                    "(logged episodes are kept; fix the backend, then continue with --resume)"
                )
        except BaseException as exc:
            publish(listeners, RunFailed(f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            # A lane that failed the run stops the others first: none may go on (and log an episode)
            # with its env, or its env worker, closed under it.
            for task in lane_tasks:
                task.cancel()
            await asyncio.gather(*lane_tasks, return_exceptions=True)
            for built in opened:
                built.close()
            if workers is not None:
                workers.close()
            if own_policy:
                await close_policy(policy)
    records, _ = select_episodes(records, run.episodes)
    summary = summarize(records, planned=run.episodes)
    summary["out"] = str(out)
    summary["run_id"] = run_id
    publish(listeners, RunFinished(summary))
    return summary


def load_run(run_dir: Path) -> tuple[list[EpisodeRecord], dict[str, Any]]:
    """A run's episodes for evaluation: one record per planned episode, and what was set aside.

    The planned episode count comes from the run's ``config.yaml`` (when present); the report holds
    ``planned``, ``duplicates`` and ``out_of_range`` (records ignored).
    """
    records = read_episodes(run_dir)
    planned: int | None = None
    config_path = Path(run_dir) / CONFIG_FILE
    if Path(run_dir).is_dir() and config_path.exists():
        episodes = load_yaml(config_path).get("episodes")
        if isinstance(episodes, int) and not isinstance(episodes, bool) and episodes >= 1:
            planned = episodes
    selected, report = select_episodes(records, planned)
    return selected, {"planned": planned, **report}
