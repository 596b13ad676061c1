"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol, for tests and benchmarks.

It serves ``POST /v1/chat/completions`` (text, tool calls, log-probs, vLLM's token-id extensions),
``GET /v1/models`` and ``GET /health`` from a ``ThreadingHTTPServer`` in a background thread, so each
request runs concurrently like on a real server. Tests script it: a reply function (request body →
text or a reply dict), a latency per call, queued failures (503/429… then OK), an API key to demand,
and every request is recorded for assertions.

Run standalone (what ``agent serve --vllm-command`` tests start)::

    python tests/openai_stub_server.py --port 8001 [--model NAME] [--latency-ms 50] [--ready-after 1.5]

Unknown flags (vLLM's ``--dtype`` etc.) are accepted and ignored, like a stand-in for ``vllm serve``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ReplyFn = Callable[[dict[str, Any]], "str | dict[str, Any]"]


def echo_reply(body: dict[str, Any]) -> str:
    """Default reply: a short text naming how many messages the request carried."""
    return f"stub reply to {len(body.get('messages', []))} message(s)"


def _gp_hand(body: dict[str, Any]) -> tuple[list[str], list[int]] | None:
    """The GP-L hand in the request's first user turn (``Cards: ['K', '3', 'A', '8']``), J/Q/K = 10."""
    from sftrl.environments.generalpoints.cards import rank_value

    first = next((m for m in body.get("messages", []) if m.get("role") == "user"), None)
    if first is None:
        return None
    content = first["content"]
    text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
    match = re.search(r"Cards: (\[.*?\])", text)
    if not match:
        return None
    ranks = [str(r) for r in ast.literal_eval(match.group(1))]  # a list literal of strings, never eval
    return ranks, [rank_value(r, "10") for r in ranks]


def gp_solver_reply(body: dict[str, Any], *, wrong_first: bool = False, tool: bool = False) -> str | dict:
    """A 'model' for GP-L: solves the hand in the prompt with the env's solver.

    ``wrong_first`` answers the first attempt wrongly (so episodes exercise verifier feedback);
    ``tool`` answers with a ``submit`` tool call instead of the JSON text.
    """
    from sftrl.environments.generalpoints.prompts import reply_text
    from sftrl.environments.generalpoints.solver import solve

    ranks, values = _gp_hand(body) or ([], [])
    formulas = solve(values, 24) if values else ()
    first_attempt = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant") == 0
    formula = f"{formulas[0]}=24" if formulas and not (wrong_first and first_attempt) else "1+1=24"
    if tool:
        args = {"cards": ranks, "numbers": values, "formula": formula}
        return {"content": None, "tool_calls": [{"name": "submit", "args": args}]}
    return reply_text(ranks=ranks, numbers=values, formula=formula)


REPLIES: dict[str, ReplyFn] = {
    "echo": echo_reply,
    "gp": gp_solver_reply,
    "gp-wrong-first": lambda body: gp_solver_reply(body, wrong_first=True),
}


@dataclass
class Failure:
    """One scripted failure: the next request gets this status (and optional Retry-After)."""

    status: int
    message: str = "scripted failure"
    retry_after: float | None = None


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    port: int


@dataclass
class StubConfig:
    reply: ReplyFn = echo_reply
    latency_s: float = 0.0
    models: tuple[str, ...] = ("stub-model",)
    api_key: str | None = None
    ready_after_s: float = 0.0
    failures: list[Failure] = field(default_factory=list)


def _tokens(text: str) -> list[str]:
    """A toy tokenizer: words and the spaces before them, so tokens concatenate back to the text."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out.append(word if i == 0 else " " + word)
    return [t for t in out if t]


def _token_id(token: str) -> int:
    # Deterministic stand-in for a vocabulary id.
    return sum(ord(c) * 31**i for i, c in enumerate(token)) % 50_000


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
    # Headers and body go out as separate writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _record(self, body: dict[str, Any] | None) -> None:
        req = RecordedRequest(
            self.command, self.path, dict(self.headers.items()), body, self.server.server_address[1]
        )
        with self.server.lock:
            self.server.requests.append(req)

    def _authorized(self) -> bool:
        key = self.server.config.api_key
        if key is None:
            return True
        got = self.headers.get("Authorization", "")
        if got == f"Bearer {key}":
            return True
        # Like the OpenAI API, echo (part of) the presented key: clients must scrub it from errors.
        shown = got.removeprefix("Bearer ") or "(none)"
        self._send(
            401,
            {"error": {"message": f"Incorrect API key provided: {shown}.", "code": "invalid_api_key"}},
        )
        return False

    def do_GET(self) -> None:
        self._record(None)
        if self.path == "/health":
            ready = time.monotonic() - self.server.started >= self.server.config.ready_after_s
            self._send(200 if ready else 503, None)
        elif self.path == "/v1/models":
            if self._authorized():
                data = [{"id": m, "object": "model", "owned_by": "stub"} for m in self.server.config.models]
                self._send(200, {"object": "list", "data": data})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            self._record(None)
            self._send(400, {"error": {"message": "body is not JSON"}})
            return
        self._record(body)
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        if not self._authorized():
            return
        cfg = self.server.config
        if cfg.latency_s > 0:
            time.sleep(cfg.latency_s)  # the "model": each request thread sleeps independently
        with self.server.lock:
            failure = cfg.failures.pop(0) if cfg.failures else None
        if failure is not None:
            headers = {"Retry-After": f"{failure.retry_after:g}"} if failure.retry_after is not None else None
            self._send(failure.status, {"error": {"message": failure.message}}, headers)
            return
        if body.get("model") not in cfg.models:
            self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
            return
        self._send(200, self._completion(body, cfg.reply(body)))

    def _completion(self, body: dict[str, Any], reply: str | dict[str, Any]) -> dict[str, Any]:
        spec = {"content": reply} if isinstance(reply, str) else dict(reply)
        content = spec.get("content")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        finish = spec.get("finish_reason", "stop")
        if spec.get("tool_calls"):
            calls = []
            for i, call in enumerate(spec["tool_calls"]):
                args = call.get("arguments", call.get("args", {}))
                calls.append(
                    {
                        "id": call.get("id", f"call_{uuid.uuid4().hex[:8]}_{i}"),
                        "type": "function",
                        "function": {
                            "name": call["name"],
                            "arguments": args if isinstance(args, str) else json.dumps(args),
                        },
                    }
                )
            message["tool_calls"] = calls
            finish = spec.get("finish_reason", "tool_calls")
        toks = _tokens(content or "")
        budget = body.get("max_tokens", body.get("max_completion_tokens"))
        # Like a real server, the reply stops at the token budget (a reply dict with
        # "ignore_max_tokens" plays a broken server that does not).
        if isinstance(budget, int) and len(toks) > budget and not spec.get("ignore_max_tokens"):
            toks = toks[:budget]
            message["content"] = "".join(toks)
            finish = "length"
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
        if body.get("logprobs"):
            scripted = spec.get("logprobs")  # a reply dict may script them (NaN/-inf, as broken servers)
            as_ids = bool(body.get("return_tokens_as_token_ids"))
            choice["logprobs"] = {
                "content": [
                    {
                        "token": f"token_id:{_token_id(t)}" if as_ids else t,
                        "logprob": scripted[i % len(scripted)] if scripted else -0.01 * (i + 1),
                        "top_logprobs": [],
                    }
                    for i, t in enumerate(toks)
                ]
            }
        if body.get("return_token_ids"):
            choice["token_ids"] = [_token_id(t) for t in toks]
        prompt_tokens = len(json.dumps(body.get("messages", []))) // 4
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(toks),
                "total_tokens": prompt_tokens + len(toks),
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], config: StubConfig) -> None:
        super().__init__(address, _Handler)
        self.config = config
        self.requests: list[RecordedRequest] = []
        self.lock = threading.Lock()
        self.started = time.monotonic()


class StubServer:
    """The stub in a background thread: ``with StubServer(reply=fn, latency_s=0.05) as s: s.url``."""

    def __init__(
        self,
        reply: ReplyFn = echo_reply,
        *,
        latency_s: float = 0.0,
        models: tuple[str, ...] = ("stub-model",),
        api_key: str | None = None,
        ready_after_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        config = StubConfig(reply, latency_s, tuple(models), api_key, ready_after_s)
        self._server = _Server((host, port), config)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def config(self) -> StubConfig:
        return self._server.config

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL clients use (``…/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._server.lock:
            return list(self._server.requests)

    def completions(self) -> list[dict[str, Any]]:
        """Bodies of the chat-completions requests received, in order of arrival."""
        return [r.body for r in self.requests if r.path == "/v1/chat/completions" and r.body is not None]

    def fail_next(self, status: int, times: int = 1, *, retry_after: float | None = None) -> None:
        """Answer the next ``times`` completion requests with ``status``."""
        with self._server.lock:
            self._server.config.failures.extend(
                Failure(status, retry_after=retry_after) for _ in range(times)
            )

    def start(self) -> StubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="OpenAI-protocol stub server (a stand-in for vllm serve)")
    ap.add_argument("model_pos", nargs="?", help="served model (positional, as `vllm serve MODEL`)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--served-model-name", default=None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--ready-after", type=float, default=0.0, help="/health answers 503 until then (s)")
    ap.add_argument("--reply", choices=sorted(REPLIES), default="echo", help="the stub's 'model'")
    args, _ignored = ap.parse_known_args(argv)
    model = args.served_model_name or args.model or args.model_pos or "stub-model"
    server = StubServer(
        REPLIES[args.reply],
        latency_s=args.latency_ms / 1000,
        models=(model,),
        ready_after_s=args.ready_after,
        host=args.host,
        port=args.port,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(f"stub serving {model} at {server.url} pid {os.getpid()}", flush=True)
    stop.wait()
    server.stop()
    print("stub stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
