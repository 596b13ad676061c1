"""Policies speaking the OpenAI chat-completions protocol: the OpenAI API and vLLM server replicas.

``OpenAIPolicy`` sends each model call as one ``POST {base_url}/chat/completions`` (httpx, async, one
pooled client per event loop) and turns the answer into a :class:`~sftrl.agents.policy.Reply`: text,
tool calls, finish reason, usage and, when asked, per-token log-probs. ``VLLMPolicy`` spreads the calls
over several replicas (least outstanding requests first) and asks vLLM for the sampled token ids.

The API key is read from the environment variable named by ``api_key_env`` at each request and only
ever placed in the ``Authorization`` header: it is not an attribute, not in :meth:`describe`, ``repr``
or any exception message (server error texts are scrubbed of it before they are raised).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx
import requests
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from sftrl.agents.messages import message_text
from sftrl.agents.policy import Reply, SamplingParams
from sftrl.agents.tools import openai_tools
from sftrl.config import ConfigError
from sftrl.environments.base import Observation
from sftrl.net import MAX_RETRY_AFTER_S, RETRY_STATUSES, DeadlineSession, retry_after_s
from sftrl.scrub import scrub, scrub_json

OPENAI_BASE_URL = "https://api.openai.com/v1"
VLLM_BASE_URL = "http://127.0.0.1:8000/v1"
# A reply body is at most this many bytes per requested token, plus a fixed allowance (headers of the
# JSON, log-probs): a server that ignores the token budget cannot fill memory or the log.
BYTES_PER_TOKEN = 256
BASE_RESPONSE_BYTES = 1 << 20
_TOKEN_ID = re.compile(r"^token_id:(-?\d+)$")


class BackendError(RuntimeError):
    """A model call that failed for good: retries exhausted, or an error retrying cannot fix.

    ``cause`` says why (``connect``, ``connection``, ``timeout``, ``server``, ``auth``, ``model``,
    ``request`` for other 4xx, ``reply`` for an unusable answer);
    ``infrastructure`` is true when the model never got to answer, so no episode can succeed while it
    lasts (the runner stops a run whose episodes all fail that way).
    """

    def __init__(self, message: str, *, status: int | None = None, cause: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        # Bad key, no permission, unknown model: every later call would fail the same way.
        self.fatal = status in (401, 403, 404)
        by_status = {401: "auth", 403: "auth", 404: "model"}
        self.cause = cause or by_status.get(status or 0) or ("request" if status else "reply")
        self.infrastructure = self.cause in ("connect", "connection", "timeout", "server", "auth", "model")


class _Retryable(Exception):
    """Internal: one attempt failed in a way another attempt (maybe on another replica) may fix."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        connect: bool = False,
        avoid: set[int] | None = None,
        cause: str = "server",
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.connect = connect
        self.avoid = avoid if avoid is not None else set()
        self.cause = "connect" if connect else cause


# --- request building -----------------------------------------------------------------------------


def _normalize_base_url(url: str) -> str:
    """``http://host:8000`` → ``http://host:8000/v1`` (the usual mistake); trailing slashes dropped."""
    url = url.strip().rstrip("/")
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"base URL {public_url(url)!r} is not an http(s) URL like http://host:8000/v1")
    if parsed.path in ("", "/"):
        url += "/v1"
    return url


def public_url(url: str) -> str:
    """``url`` without credentials (user:password@) or query string, safe to log."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


def _image_part(block: dict[str, Any]) -> dict[str, Any]:
    """A langchain image block as an OpenAI ``image_url`` part (base64 data becomes a ``data:`` URL)."""
    if "base64" in block:
        mime = block.get("mime_type") or "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{block['base64']}"}}
    if block.get("url"):
        return {"type": "image_url", "image_url": {"url": block["url"]}}
    raise ValueError(
        f"image block {block.get('id', '?')} has no data (a logged prompt without its image bytes?)"
    )


def _content_parts(content: str | list[Any]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            parts.append({"type": "text", "text": block})
        elif block.get("type") == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif block.get("type") == "image":
            parts.append(_image_part(block))
        elif block.get("type") == "image_url":  # already in OpenAI form
            parts.append(dict(block))
        else:
            raise ValueError(f"content block of type {block.get('type')!r} cannot be sent to an OpenAI API")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)  # plain string: accepted by every server and template
    return parts


def _tool_call_arguments(args: Any) -> str:
    # assistant_message() wraps unparseable arguments as {"_raw": text}: send the model's text back.
    if isinstance(args, dict) and set(args) == {"_raw"} and isinstance(args["_raw"], str):
        return args["_raw"]
    if isinstance(args, str):
        return args
    return json.dumps(args if args is not None else {})


def to_openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """langchain messages → the ``messages`` field of a chat-completions request.

    Images become ``image_url`` parts with base64 PNG ``data:`` URLs. A tool result carrying images
    (V-IRL's next street view in tool mode) is split into the ``tool`` message with its text and a
    ``user`` message with the images, because the OpenAI API accepts only text in tool messages.
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": message_text(m)})
        elif isinstance(m, AIMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": message_text(m)}
            if m.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": c.get("id") or f"call_{i}",
                        "type": "function",
                        "function": {"name": c["name"], "arguments": _tool_call_arguments(c.get("args"))},
                    }
                    for i, c in enumerate(m.tool_calls)
                ]
            out.append(entry)
        elif isinstance(m, ToolMessage):
            content = _content_parts(m.content)
            if isinstance(content, str):
                out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": content})
            else:
                text = "".join(p["text"] for p in content if p["type"] == "text")
                images = [p for p in content if p["type"] != "text"]
                out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": text})
                note = {"type": "text", "text": "(the images returned by the tool call above)"}
                out.append({"role": "user", "content": [*images, note]})
        else:
            out.append({"role": "user", "content": _content_parts(m.content)})
    return out


# --- response parsing -----------------------------------------------------------------------------


def parse_tool_calls(raw: Any) -> list[dict[str, Any]] | None:
    """OpenAI ``tool_calls`` → langchain-style ``{"name", "args", "id"}``.

    Arguments that are not a JSON object stay the model's raw text (a string): the agent loop scores
    such a call as malformed instead of the run crashing on model output.
    """
    if not isinstance(raw, list) or not raw:
        return None
    calls: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            continue
        fn = item.get("function") if isinstance(item.get("function"), dict) else {}
        arguments = fn.get("arguments")
        args: Any
        if isinstance(arguments, dict):
            args = arguments
        elif isinstance(arguments, str):
            try:
                parsed = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                parsed = None
            args = parsed if isinstance(parsed, dict) else arguments
        else:
            args = {}
        calls.append(
            {"name": str(fn.get("name") or ""), "args": args, "id": str(item.get("id") or f"call_{i}")}
        )
    return calls or None


def parse_logprobs(choice: dict[str, Any]) -> tuple[list[int] | None, list[float] | None]:
    """Token ids and log-probs of the sampled tokens, when the server returned them.

    Ids come from vLLM's ``token_ids`` field (``return_token_ids``) or from logprob tokens written as
    ``token_id:N`` (``return_tokens_as_token_ids``); the OpenAI API returns neither (ids stay None).
    """
    logprobs: list[float] | None = None
    ids: list[int] | None = None
    content = (choice.get("logprobs") or {}).get("content")
    if isinstance(content, list) and content:
        try:
            logprobs = [float(t["logprob"]) for t in content]
        except (KeyError, TypeError, ValueError):
            logprobs = None
        matches = [_TOKEN_ID.match(str(t.get("token", ""))) if isinstance(t, dict) else None for t in content]
        if all(matches):
            ids = [int(m.group(1)) for m in matches if m]
    raw_ids = choice.get("token_ids")
    if isinstance(raw_ids, list) and all(isinstance(t, int) for t in raw_ids):
        ids = list(raw_ids)
    return ids, logprobs


def _usage(raw: Any) -> dict[str, int] | None:
    if not isinstance(raw, dict):
        return None
    # Nested details (prompt_tokens_details…) are dropped: Reply.usage is a flat int mapping.
    return {k: int(v) for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)} or None


# --- the policies ---------------------------------------------------------------------------------


class _Replica:
    """One server: its base URL, requests in flight and when it last refused a connection."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.outstanding = 0
        self.down_until = 0.0
        self.requests = 0


class OpenAIPolicy:
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint (the OpenAI API by default)."""

    name = "openai"
    backend: ClassVar[str] = "openai"
    default_api_key_env: ClassVar[str | None] = "OPENAI_API_KEY"
    # The OpenAI API's current name for the output budget (reasoning models reject ``max_tokens``).
    max_tokens_field: ClassVar[str] = "max_completion_tokens"
    # policy_options keys accepted by from_run_config (keyword arguments of __init__).
    OPTION_KEYS: ClassVar[frozenset[str]] = frozenset(
        {
            "backoff_s",
            "max_backoff_s",
            "tool_choice",
            "extra_body",
            "require_key",
            "max_connections",
            "max_response_bytes",
        }
    )

    def __init__(
        self,
        model: str,
        base_url: str | Sequence[str] = OPENAI_BASE_URL,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        tool_choice: str | dict[str, Any] | None = None,
        extra_body: dict[str, Any] | None = None,
        require_key: bool | None = None,
        max_connections: int | None = None,
        max_response_bytes: int | None = None,
    ) -> None:
        """``require_key=None`` requires the key only for the OpenAI API itself (local servers often
        run without one); ``extra_body`` adds fields to every request (e.g. vLLM's ``top_k``).

        ``timeout`` is a total deadline per attempt (connect and the whole reply), and there are at most
        ``max_retries`` retries, so a call ends within about ``timeout`` × (``max_retries`` + 1) plus the
        waits (≤ ``max_backoff_s`` each, or a ``Retry-After`` ≤ 60 s). A reply body is read up to
        ``max_response_bytes`` (default: 1 MiB + 256 bytes per requested token)."""
        if not model:
            raise ConfigError(f"--policy {self.name} needs --model (the served model name)")
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ConfigError(f"--policy {self.name} needs at least one --base-url")
        self.model = model
        self._replicas = [_Replica(_normalize_base_url(u)) for u in urls]
        self.api_key_env = api_key_env or None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.tool_choice = tool_choice
        self.extra_body = dict(extra_body or {})
        self.max_connections = max_connections
        if max_response_bytes is not None and int(max_response_bytes) < 1:
            raise ConfigError("--policy-option max_response_bytes must be a positive number of bytes")
        self.max_response_bytes = int(max_response_bytes) if max_response_bytes is not None else None
        if require_key is None:
            require_key = any(httpx.URL(r.base_url).host == "api.openai.com" for r in self._replicas)
        if require_key and not self._api_key():
            raise ConfigError(
                f"--policy {self.name} needs an API key in the environment variable "
                f"{self.api_key_env or 'OPENAI_API_KEY'} (set it, or name another with --api-key-env)"
            )
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._rotation = 0

    # -- construction from the run config ---------------------------------------------------------

    @classmethod
    def from_run_config(cls, run: Any) -> OpenAIPolicy:
        """Build from ``agent run``'s RunConfig (model, base_url, api_key_env, timeouts, options)."""
        options = dict(getattr(run, "policy_options", None) or {})
        unknown = set(options) - cls.OPTION_KEYS
        if unknown:
            raise ConfigError(
                f"--policy-option {', '.join(sorted(unknown))} not known to --policy {cls.name}; "
                f"it takes: {', '.join(sorted(cls.OPTION_KEYS))}"
            )
        urls = list(getattr(run, "base_url", None) or [])
        api_key_env = getattr(run, "api_key_env", None) or cls.default_api_key_env
        common = {
            "api_key_env": api_key_env,
            "timeout": float(getattr(run, "request_timeout", 120.0)),
            "max_retries": int(getattr(run, "max_retries", 3)),
            **options,
        }
        return cls._from_urls(getattr(run, "model", None) or "", urls, common)

    @classmethod
    def _from_urls(cls, model: str, urls: list[str], kwargs: dict[str, Any]) -> OpenAIPolicy:
        if len(urls) > 1:
            raise ConfigError(
                "--policy openai takes one --base-url (use --policy vllm to spread over replicas)"
            )
        return cls(model, urls[0] if urls else OPENAI_BASE_URL, **kwargs)

    # -- description (no credentials) --------------------------------------------------------------

    @property
    def base_urls(self) -> list[str]:
        return [public_url(r.base_url) for r in self._replicas]

    def describe(self) -> dict[str, Any]:
        urls = self.base_urls
        return {
            "name": self.name,
            "kind": "api",
            "backend": self.backend,
            "model": self.model,
            "base_url": urls[0] if len(urls) == 1 else urls,
        }

    def __repr__(self) -> str:
        urls = self.base_urls
        where = urls[0] if len(urls) == 1 else urls
        return f"{type(self).__name__}(model={self.model!r}, base_url={where!r})"

    def replica_stats(self) -> dict[str, int]:
        """Requests sent to each replica so far (for logs and tests of the load spreading)."""
        return {public_url(r.base_url): r.requests for r in self._replicas}

    # -- HTTP ------------------------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _scrub(self, text: str) -> str:
        """``text`` with the API key masked in every form a server may echo it in (base64, URL, JSON)."""
        return scrub(text, self._api_key())

    def _headers(self) -> dict[str, str]:
        key = self._api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _http(self) -> httpx.AsyncClient:
        # One client per event loop: pooled connections belong to the loop that opened them, and
        # callers (the RL trainer) may run several asyncio.run() in turn with one policy.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop or self._client.is_closed:
            limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=64)
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), limits=limits)
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client (the runner calls this at the end of a run)."""
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            # RuntimeError: its event loop is gone, so there is nothing left to close.
            with contextlib.suppress(RuntimeError):
                await client.aclose()

    def _pick(self, avoid: set[int]) -> int:
        """The replica for the next attempt: least outstanding requests, preferring ones not failing."""
        now = asyncio.get_running_loop().time()
        candidates = [i for i, r in enumerate(self._replicas) if i not in avoid and r.down_until <= now]
        if not candidates:
            candidates = [i for i in range(len(self._replicas)) if i not in avoid] or list(
                range(len(self._replicas))
            )
        # Rotate the starting point so ties do not always land on the first replica.
        self._rotation = (self._rotation + 1) % len(self._replicas)
        n = len(self._replicas)
        return min(candidates, key=lambda i: (self._replicas[i].outstanding, (i - self._rotation) % n))

    def _wait(self, state: RetryCallState) -> float:
        """tenacity's wait: none when another replica is healthy, else Retry-After or jittered backoff."""
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Retryable):
            now = asyncio.get_running_loop().time()
            if exc.connect and any(
                i not in exc.avoid and r.down_until <= now for i, r in enumerate(self._replicas)
            ):
                return 0.0  # fail-over to a live replica is immediate
            if exc.retry_after is not None:
                return min(exc.retry_after, MAX_RETRY_AFTER_S)
        # Full jitter: concurrent episodes do not retry in lock-step.
        return wait_random_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)(state)

    def _response_cap(self, body: dict[str, Any]) -> int:
        if self.max_response_bytes is not None:
            return self.max_response_bytes
        tokens = body.get(self.max_tokens_field)
        return BASE_RESPONSE_BYTES + BYTES_PER_TOKEN * (tokens if isinstance(tokens, int) else 4096)

    async def _send(self, method: str, url: str, body: dict[str, Any] | None, cap: int) -> httpx.Response:
        """One HTTP exchange, its body read in full but never beyond ``cap`` bytes."""
        kwargs: dict[str, Any] = {"headers": self._headers()}
        if body is not None:
            kwargs["json"] = body
        async with self._http().stream(method, url, **kwargs) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    budget = body.get(self.max_tokens_field) if body else None
                    raise BackendError(
                        f"{public_url(url)} sent a reply over {cap} bytes for a {budget}-token budget "
                        "(does the server ignore max_tokens? --policy-option max_response_bytes=N "
                        "accepts larger replies)"
                    )
                chunks.append(chunk)
        return httpx.Response(
            response.status_code, headers=response.headers, content=b"".join(chunks), request=response.request
        )

    async def _post_once(self, index: int, body: dict[str, Any], avoid: set[int]) -> dict[str, Any]:
        replica = self._replicas[index]
        url = f"{replica.base_url}/chat/completions"
        replica.outstanding += 1
        replica.requests += 1
        try:
            # A total deadline per attempt: httpx's own timeouts are per read, so a trickling server
            # would never trip them.
            response = await asyncio.wait_for(
                self._send("POST", url, body, self._response_cap(body)), self.timeout
            )
        except TimeoutError:
            raise _Retryable(
                f"no complete answer from {public_url(url)} within {self.timeout:g}s",
                avoid=avoid,
                cause="timeout",
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Retryable(
                f"cannot connect to {public_url(url)}: {type(exc).__name__}", connect=True, avoid=avoid
            ) from None
        except httpx.TimeoutException as exc:
            raise _Retryable(
                f"no answer from {public_url(url)} within {self.timeout:g}s ({type(exc).__name__})",
                avoid=avoid,
                cause="timeout",
            ) from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _Retryable(
                f"connection to {public_url(url)} failed: {type(exc).__name__}",
                avoid=avoid,
                cause="connection",
            ) from None
        finally:
            replica.outstanding -= 1
        if response.status_code == 200:
            try:
                data = response.json()
            except ValueError:
                raise _Retryable(
                    f"{public_url(url)} answered 200 with a body that is not JSON", avoid=avoid
                ) from None
            if not isinstance(data, dict):
                raise _Retryable(f"{public_url(url)} answered 200 with unexpected JSON", avoid=avoid)
            return data
        detail = self._error_detail(response)
        status = response.status_code
        where = public_url(url)
        if status in RETRY_STATUSES:
            raise _Retryable(
                f"{status} from {where}: {detail}",
                retry_after=retry_after_s(response.headers.get("retry-after")),
                avoid=avoid,
            )
        if status == 401 or status == 403:
            key_state = (
                f"the key in ${self.api_key_env} was rejected"
                if self._api_key()
                else f"${self.api_key_env or 'OPENAI_API_KEY'} is not set"
            )
            raise BackendError(f"{status} unauthorized at {where} ({key_state}): {detail}", status=status)
        if status == 404:
            served = await self._served_models(index)
            hint = (
                f"models served there: {', '.join(served)}"
                if served
                else "the server lists no models (is --base-url right? it usually ends in /v1)"
            )
            raise BackendError(f"404 from {where} for model {self.model!r}: {detail}; {hint}", status=404)
        raise BackendError(f"{status} from {where}: {detail}", status=status)

    def _error_detail(self, response: httpx.Response) -> str:
        try:
            data = response.json()
            err = data.get("error", data) if isinstance(data, dict) else data
            text = err.get("message", json.dumps(err)) if isinstance(err, dict) else str(err)
        except ValueError:
            text = response.text
        # Masked before it is cut: half an echoed key is still a leak.
        text = self._scrub(" ".join(str(text).split()))
        return (text[:300] + ("…" if len(text) > 300 else "")) or response.reason_phrase

    async def _served_models(self, index: int) -> list[str]:
        """The model ids ``GET /models`` lists (for a clear 'model not found' error)."""
        url = f"{self._replicas[index].base_url}/models"
        try:
            response = await asyncio.wait_for(self._send("GET", url, None, BASE_RESPONSE_BYTES), self.timeout)
            data = response.json()
            return [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)][:20]
        except (httpx.HTTPError, ValueError, AttributeError, TimeoutError, BackendError):
            return []

    async def _post(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """POST with bounded retries (tenacity) and replica fail-over → (response JSON, replica base URL)."""
        avoid: set[int] = set()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    index = self._pick(avoid)
                    try:
                        return await self._post_once(index, body, avoid), self._replicas[index].base_url
                    except _Retryable as exc:
                        self._note_failure(index, exc, avoid)
                        raise
        except _Retryable as exc:
            raise BackendError(
                f"model call failed after {self.max_retries + 1} attempt(s): {exc}", cause=exc.cause
            ) from None
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    def _note_failure(self, index: int, exc: _Retryable, avoid: set[int]) -> None:
        replica = self._replicas[index]
        if exc.connect:
            # Skip this replica for a while; others take its requests meanwhile.
            replica.down_until = asyncio.get_running_loop().time() + max(1.0, self.backoff_s * 4)
        if len(self._replicas) > 1:
            avoid.add(index)
            if len(avoid) >= len(self._replicas):
                avoid.clear()

    # -- the Policy protocol ----------------------------------------------------------------------

    def request_body(
        self,
        messages: Sequence[BaseMessage],
        sampling: SamplingParams,
        tools: Sequence[BaseTool] | None = None,
    ) -> dict[str, Any]:
        """The JSON body of the chat-completions request for one model call."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            self.max_tokens_field: sampling.max_new_tokens,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 0
            body.update(self._token_id_fields())
        if tools:
            body["tools"] = openai_tools(list(tools))
            if self.tool_choice is not None:
                body["tool_choice"] = self.tool_choice
        body.update(self.extra_body)
        return body

    def _token_id_fields(self) -> dict[str, Any]:
        """Extra request fields asking for sampled token ids (the OpenAI API has none)."""
        return {}

    async def generate(
        self,
        messages: Sequence[BaseMessage],
        sampling: SamplingParams,
        *,
        observation: Observation | None = None,
        tools: Sequence[BaseTool] | None = None,
    ) -> Reply:
        data, base_url = await self._post(self.request_body(messages, sampling, tools))
        if key := self._api_key():
            # A model or server echoing the key (in any encoding) must not carry it into the log.
            data = scrub_json(data, key)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BackendError(f"{public_url(base_url)} answered without choices")
        choice = choices[0]
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        content = message.get("content")
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        token_ids, logprobs = parse_logprobs(choice) if sampling.logprobs else (None, None)
        usage = _usage(data.get("usage"))
        produced = len(token_ids or logprobs or ()) or (usage or {}).get("completion_tokens")
        if produced is not None and produced > sampling.max_new_tokens:
            # The token budget is the reply cap: a server that ignores it must not grow the log or RL
            # batches past what was asked for.
            raise BackendError(
                f"{public_url(base_url)} sent {produced} tokens for a budget of {sampling.max_new_tokens} "
                "(max_new_tokens): the server ignores the token cap"
            )
        return Reply(
            text=content if isinstance(content, str) else "",
            token_ids=token_ids,
            logprobs=logprobs,
            finish_reason=choice.get("finish_reason"),
            model=str(data.get("model") or self.model),
            usage=usage,
            tool_calls=parse_tool_calls(message.get("tool_calls")),
            extra={"base_url": public_url(base_url)},
        )


class VLLMPolicy(OpenAIPolicy):
    """A model served by one or more vLLM OpenAI-compatible servers (``agent serve`` or ``vllm serve``).

    Requests go to the replica with the fewest in flight; a replica that refuses connections is
    skipped for a moment and the request retried on another. The API key is optional (vLLM's
    ``--api-key``, read here from ``$VLLM_API_KEY`` by default). With ``--logprobs`` the server is
    asked for the sampled token ids too, so RL can use the exact tokens.
    """

    name = "vllm"
    backend: ClassVar[str] = "vllm"
    default_api_key_env: ClassVar[str | None] = "VLLM_API_KEY"
    max_tokens_field: ClassVar[str] = "max_tokens"

    def __init__(
        self,
        model: str,
        base_urls: str | Sequence[str] = (VLLM_BASE_URL,),
        *,
        api_key_env: str | None = "VLLM_API_KEY",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("require_key", False)
        super().__init__(model, base_urls, api_key_env=api_key_env, **kwargs)

    MODEL_FROM_SERVER: ClassVar[bool] = True
    """``--model`` may be left out: the one model the first replica lists is used."""
    PLAIN_SAMPLING_OPTIONS: ClassVar[dict[str, Any]] = {
        # Knobs a server may take from the model's generation_config.json when a request leaves them
        # out: pinned to "off" when the caller scores plain log_softmax(logits / T) (RL).
        "extra_body": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}
    }

    @classmethod
    def _from_urls(cls, model: str, urls: list[str], kwargs: dict[str, Any]) -> OpenAIPolicy:
        urls = urls or [VLLM_BASE_URL]
        if not model:
            model = served_model(urls[0], api_key_env=kwargs.get("api_key_env"))
        return cls(model, urls, **kwargs)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["base_url"] = self.base_urls  # always a list: the replica set
        return out

    def _token_id_fields(self) -> dict[str, Any]:
        # vLLM extensions: ``token_ids`` on the choice (newer servers) and logprob tokens written as
        # "token_id:N" (older ones); unknown fields are ignored by servers that lack them.
        return {"return_token_ids": True, "return_tokens_as_token_ids": True}


def served_model(base_url: str, *, api_key_env: str | None = None, deadline_s: float = 30.0) -> str:
    """The one model an OpenAI-compatible server lists (``GET /models``), within ``deadline_s`` in all."""
    url = _normalize_base_url(base_url) + "/models"
    key = os.environ.get(api_key_env) if api_key_env else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = bytearray()
    # One deadline over headers and body alike (a server trickling either cannot hold us).
    session = DeadlineSession(timeout=deadline_s, max_retries=0, deadline=deadline_s)
    try:
        with session, session.within_deadline():
            response = session.get(url, headers=headers, stream=True)
            response.raise_for_status()
            for chunk in response.iter_content(1 << 16):
                body += chunk
                if len(body) > 1 << 20:
                    raise ValueError("model list larger than 1 MiB")
        ids = [str(m["id"]) for m in json.loads(bytes(body)).get("data", [])]
    except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"cannot list the models of {public_url(url)}: {type(exc).__name__}") from None
    if len(ids) != 1:
        raise ConfigError(
            f"{public_url(url)} serves {ids or 'no model'}: name the one to use "
            "(--model; agent train rl: --served-model)"
        )
    return ids[0]
