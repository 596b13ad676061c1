"""Envs in worker processes (``--env-workers N``): CPU-heavy env steps (V-IRL-VL rendering) in parallel.

Each worker builds its envs itself from the run's env id and validated config: only that config, the
actions, and the observations and step results cross the process boundary; no env (nor the
street-view provider, cache connection or route set it holds) is ever pickled. Observation images
cross as PNG, encoded once in the worker exactly as the log stores them (``encode_png``), and decode
in the parent only when a policy reads their pixels.

A worker is a one-process :class:`~concurrent.futures.ProcessPoolExecutor` (``spawn``: safe next to
threads and CUDA in the parent): env state lives in one process, so each env slot is bound to one
worker, and the calls of the envs sharing a worker queue there in order. A worker that dies (killed,
out of memory, segfault) fails the run with one line (:class:`EnvWorkerError`) instead of hanging it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from sftrl.agents.messages import encode_png, png_image
from sftrl.environments.base import Observation, SftrlEnv, StepResult
from sftrl.environments.registry import env_class
from sftrl.environments.tools import ToolSpec

# An observation on the pipe: the observation without its images, and each image as (sha256, PNG).
Wire = tuple[Observation, list[tuple[str, bytes]]]


class EnvWorkerError(RuntimeError):
    """An env worker process died or could not start: every remaining episode would fail too."""

    fatal = True


# ---- in the worker process -------------------------------------------------------------------------

_ENVS: dict[int, SftrlEnv] = {}
"""The worker's envs by slot (a slot is one of the runner's episode lanes)."""


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group: the parent handles it (logged episodes are kept, the
    # workers are shut down in order); a worker's own KeyboardInterrupt would only add tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _to_wire(observation: Observation) -> Wire:
    return observation.model_copy(update={"images": []}), [encode_png(i) for i in observation.images]


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (the parent re-raises it as is), else a RuntimeError saying it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _call(method: str, slot: int, *args: Any) -> Any:
    """Run ``method`` on the env of ``slot`` (the one function the parent submits)."""
    try:
        return _METHODS[method](slot, *args)
    except Exception as exc:
        portable = _portable(exc)
        if portable is exc:
            raise
        raise portable from None


def _open(slot: int, env_id: str, env_cfg: dict[str, Any], check: bool) -> dict[str, Any]:
    _close(slot)
    env = env_class(env_id)(**env_cfg)
    _ENVS[slot] = env
    if check:
        env.check_inputs()
    return env.config_dict


def _reset(slot: int, seed: int, options: dict[str, Any] | None) -> tuple[Wire, dict[str, Any]]:
    observation, info = _ENVS[slot].reset(seed=seed, options=options)
    return _to_wire(observation), info


def _step(slot: int, action: str) -> tuple[Wire, float, bool, bool, dict[str, Any]]:
    observation, reward, terminated, truncated, info = _ENVS[slot].step(action)
    return _to_wire(observation), reward, terminated, truncated, info


def _metrics(slot: int) -> dict[str, Any]:
    return _ENVS[slot].episode_metrics()


def _close(slot: int) -> None:
    env = _ENVS.pop(slot, None)
    if env is not None:
        env.close()


def _ready(_slot: int) -> None:
    return None


def _close_all(_slot: int) -> None:
    for slot in list(_ENVS):
        _close(slot)


_METHODS: dict[str, Callable[..., Any]] = {
    "ready": _ready,
    "open": _open,
    "reset": _reset,
    "step": _step,
    "metrics": _metrics,
    "close": _close,
    "close_all": _close_all,
}

# ---- in the parent -----------------------------------------------------------------------------------


def _from_wire(wire: Wire) -> Observation:
    observation, images = wire
    if not images:
        return observation
    return observation.model_copy(update={"images": [png_image(sha, png) for sha, png in images]})


class EnvWorkers:
    """``n`` worker processes holding the envs of a run; slot ``k``'s env lives in worker ``k % n``."""

    def __init__(self, n: int, env_id: str, env_cfg: dict[str, Any]) -> None:
        if n < 1:
            raise ValueError("EnvWorkers needs at least one worker")
        self.env_id = env_id
        self.env_cfg = env_cfg
        self._tools: list[ToolSpec] | None = None
        ctx = multiprocessing.get_context("spawn")
        self._pools = [
            ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_init_worker) for _ in range(n)
        ]
        for worker in range(n):  # start every process now, side by side (each takes ~0.5 s to import)
            self.submit(worker, "ready")

    def __len__(self) -> int:
        return len(self._pools)

    async def call(self, slot: int, method: str, *args: Any) -> Any:
        """``method`` on slot ``slot``'s env, awaited; a dead worker raises :class:`EnvWorkerError`."""
        worker = slot % len(self._pools)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pools[worker], _call, method, slot, *args)
        except BrokenProcessPool:
            raise EnvWorkerError(
                f"env worker process {worker + 1} of {len(self._pools)} died (killed, out of memory or "
                "crashed); logged episodes are kept: continue with --resume"
            ) from None

    def submit(self, slot: int, method: str) -> None:
        """Queue ``method`` on slot ``slot``'s env without waiting (a dead worker is ignored here)."""
        try:
            future: Future[Any] = self._pools[slot % len(self._pools)].submit(_call, method, slot)
        except (BrokenProcessPool, RuntimeError):  # broken, or already shut down
            return
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception not retrieved"

    async def open(self, slot: int, *, check: bool = False) -> WorkerEnv:
        """A fresh env in slot ``slot`` (replacing the one there); ``check``: open its inputs too."""
        config_dict = await self.call(slot, "open", self.env_id, self.env_cfg, check)
        return WorkerEnv(self, slot, config_dict)

    def tool_specs(self) -> list[ToolSpec]:
        """The env's tools, from an env built here: specs hold code (lambdas, generated argument
        models) that does not pickle, and they depend on the config only. Building an env is cheap
        (routes, providers and renderers open on its first reset, which this one never gets)."""
        if self._tools is None:
            env = env_class(self.env_id)(**self.env_cfg)
            try:
                self._tools = env.tool_specs()
            finally:
                env.close()
        return self._tools

    def close(self) -> None:
        """Close every env in the workers, then stop the workers (waits for calls already running)."""
        for slot in range(len(self._pools)):
            self.submit(slot, "close_all")
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=False)


class WorkerEnv:
    """One env in a worker process, with the parts of the :class:`SftrlEnv` interface the agent loop
    uses; ``reset``, ``step`` and ``episode_metrics`` are awaited."""

    def __init__(self, workers: EnvWorkers, slot: int, config_dict: dict[str, Any]) -> None:
        self._workers = workers
        self.slot = slot
        self.env_id = workers.env_id
        self.config_dict = config_dict

    def tool_specs(self) -> list[ToolSpec]:
        return self._workers.tool_specs()

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        wire, info = await self._workers.call(self.slot, "reset", seed, options)
        return _from_wire(wire), info

    async def step(self, action: str) -> StepResult:
        wire, reward, terminated, truncated, info = await self._workers.call(self.slot, "step", action)
        return _from_wire(wire), reward, terminated, truncated, info

    async def episode_metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._workers.call(self.slot, "metrics")
        return result

    def close(self) -> None:
        self._workers.submit(self.slot, "close")
