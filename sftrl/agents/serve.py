"""``agent serve``: start a vLLM OpenAI-compatible server, wait until it is ready, stop it cleanly.

The command line is built by the pure :func:`build_vllm_command`; :func:`serve` runs it in its own
process group, polls ``/health`` (showing progress while the model loads), prints the base URL that
``agent run --policy vllm --base-url …`` takes, forwards SIGINT/SIGTERM to the whole group and kills
what is left after a grace period, so no GPU worker outlives the command.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"


class ServeError(RuntimeError):
    """The server could not be started or did not become ready (the message says why)."""


def parse_limit_mm(value: str | dict[str, int] | None) -> dict[str, int] | None:
    """``image=4,video=0`` or ``{"image": 4}`` → ``{"image": 4, "video": 0}`` (what new vLLM expects)."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        items: dict[str, Any] = dict(value)
    elif value.lstrip().startswith("{"):
        try:
            items = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ServeError(f"--limit-mm-per-prompt: not valid JSON: {value!r}") from exc
        if not isinstance(items, dict):
            raise ServeError(f"--limit-mm-per-prompt: expected a JSON object, got {value!r}")
    else:
        items = {}
        for part in value.split(","):
            key, sep, count = part.partition("=")
            if not sep or not key.strip():
                raise ServeError(f"--limit-mm-per-prompt expects MODALITY=N[,MODALITY=N], got {value!r}")
            items[key.strip()] = count.strip()
    out: dict[str, int] = {}
    for key, count in items.items():
        try:
            n = int(count)
        except (TypeError, ValueError):
            raise ServeError(f"--limit-mm-per-prompt: {key} needs an integer count, got {count!r}") from None
        if n < 0:
            raise ServeError(f"--limit-mm-per-prompt: {key} count must be >= 0")
        out[str(key)] = n
    return out


def build_vllm_command(
    model: str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_model_len: int | None = None,
    dtype: str | None = None,
    tensor_parallel_size: int | None = None,
    limit_mm_per_prompt: str | dict[str, int] | None = None,
    tool_call_parser: str | None = None,
    served_model_name: str | None = None,
    vllm_command: str | Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv that starts the server.

    Default ``vllm serve MODEL …`` (model positional); a custom ``vllm_command`` (e.g.
    ``python -m vllm.entrypoints.openai.api_server``) gets ``--model MODEL`` instead, which every
    vLLM entry point accepts. Tool calling adds ``--enable-auto-tool-choice --tool-call-parser X``.
    """
    if not model:
        raise ServeError("agent serve needs --model (a model directory or hub id)")
    if not 0 < port < 65536:
        raise ServeError(f"--port must be 1-65535, got {port}")
    if vllm_command is None:
        cmd = ["vllm", "serve", model]
    else:
        base = shlex.split(vllm_command) if isinstance(vllm_command, str) else list(vllm_command)
        if not base:
            raise ServeError("--vllm-command is empty")
        cmd = [*base, "--model", model]
    cmd += ["--host", host, "--port", str(port)]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    if max_model_len is not None:
        cmd += ["--max-model-len", str(max_model_len)]
    if dtype:
        cmd += ["--dtype", dtype]
    if tensor_parallel_size is not None:
        cmd += ["--tensor-parallel-size", str(tensor_parallel_size)]
    limits = parse_limit_mm(limit_mm_per_prompt)
    if limits is not None:
        # vLLM >= 0.10 takes a JSON object here (the old `image=4` form was removed).
        cmd += ["--limit-mm-per-prompt", json.dumps(limits, separators=(",", ":"))]
    if tool_call_parser:
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", tool_call_parser]
    extra = list(extra_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    return cmd + extra


def base_url_for(host: str, port: int) -> str:
    """The URL clients use: a wildcard bind address is reached through loopback."""
    reach = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in reach and not reach.startswith("["):
        reach = f"[{reach}]"
    return f"http://{reach}:{port}/v1"


def wait_until_ready(
    health_url: str,
    proc: subprocess.Popen[bytes],
    *,
    timeout_s: float,
    poll_s: float = 0.5,
    progress_every_s: float = 10.0,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> None:
    """Poll ``health_url`` until it answers 200; fail if the process exits or ``timeout_s`` passes."""
    import requests  # only here: keeps `agent --help` fast

    from sftrl.net import DeadlineSession

    started = time.monotonic()
    next_note = started + progress_every_s
    last = "not listening yet"
    per_call = min(5.0, max(poll_s, 1.0))
    # A total deadline per poll: a server trickling its /health answer cannot stall the wait.
    with DeadlineSession(timeout=per_call, max_retries=0, deadline=per_call) as client:
        client.trust_env = False
        while True:
            code = proc.poll()
            if code is not None:
                raise ServeError(
                    f"the server exited with status {code} before it was ready (see its output above)"
                )
            if stop is not None and stop.is_set():
                raise ServeError("interrupted while waiting for the server")
            try:
                response = client.get(health_url)
                if response.status_code == 200:
                    return
                last = f"/health answered {response.status_code}"
            except requests.RequestException as exc:
                last = f"not listening yet ({type(exc).__name__})"
            now = time.monotonic()
            if now - started > timeout_s:
                raise ServeError(
                    f"the server was not ready after {timeout_s:g}s ({last}); see its output above"
                )
            if now >= next_note:
                log(f"waiting for {health_url}: {now - started:.0f}s, {last}")
                next_note = now + progress_every_s
            if stop is not None:
                stop.wait(poll_s)
            else:
                time.sleep(poll_s)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (cannot happen for our own group)
        return True
    return True


def stop_process_group(
    proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, grace_s: float = 30.0
) -> int:
    """Send ``sig`` to the server's process group, wait ``grace_s``, then SIGKILL whatever is left.

    Returns the leader's exit status. Workers (tensor-parallel ranks) are in the same group, so none
    of them survive the command.
    """
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    if proc.poll() is not None and _group_alive(pgid):
        # Leader gone, stragglers remain: ask them too, briefly, before the hard kill.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + min(grace_s, 5.0)
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return proc.wait()


def serve(
    cmd: Sequence[str],
    *,
    host: str,
    port: int,
    model_name: str,
    ready_timeout_s: float = 1800.0,
    grace_s: float = 30.0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the server until it exits or SIGINT/SIGTERM arrives; prints the base URL once ready.

    The server's own output goes to stderr, so stdout carries only the base URL.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    url = base_url_for(host, port)
    health = url.removesuffix("/v1") + "/health"

    def log(msg: str) -> None:
        print(f"agent serve: {msg}", file=err, flush=True)

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        log(f"starting: {shlex.join(cmd)}")
        try:
            err.flush()
            proc = subprocess.Popen(
                list(cmd), start_new_session=True, stdout=err.fileno(), stderr=err.fileno()
            )
        except FileNotFoundError as exc:
            raise ServeError(
                f"cannot start {cmd[0]!r}: not found (install vLLM: pip install 'sftrl[vllm]', "
                "or pass --vllm-command)"
            ) from exc
        try:
            wait_until_ready(health, proc, timeout_s=ready_timeout_s, stop=stop, log=log)
        except ServeError:
            status = stop_process_group(
                proc, sig=received[0] if received else signal.SIGTERM, grace_s=grace_s
            )
            if received:
                log(f"stopped before ready (status {status})")
                return 0
            raise
        print(url, file=out, flush=True)
        log(f"ready: agent run --policy vllm --model {shlex.quote(model_name)} --base-url {url}")
        while proc.poll() is None and not stop.is_set():
            stop.wait(0.5)
        if proc.poll() is not None and not received:
            code = proc.returncode
            log(f"the server exited with status {code}")
            stop_process_group(proc, grace_s=min(grace_s, 5.0))  # reap any stragglers in its group
            return code if code else 0
        log(f"stopping the server ({signal.Signals(received[0]).name})")
        status = stop_process_group(proc, sig=received[0], grace_s=grace_s)
        log(f"stopped (status {status})")
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def serve_from_args(ns: Any) -> int:
    """``agent serve`` with the parsed flags (see the sub-parser in :mod:`sftrl.cli`)."""
    cmd = build_vllm_command(
        ns.model,
        host=ns.host,
        port=ns.port,
        max_model_len=ns.max_model_len,
        dtype=ns.dtype,
        tensor_parallel_size=ns.tensor_parallel_size,
        limit_mm_per_prompt=ns.limit_mm_per_prompt,
        tool_call_parser=ns.tool_call_parser,
        served_model_name=ns.served_model_name,
        vllm_command=ns.vllm_command,
        extra_args=ns.extra,
    )
    return serve(
        cmd,
        host=ns.host,
        port=ns.port,
        model_name=ns.served_model_name or ns.model,
        ready_timeout_s=ns.ready_timeout,
        grace_s=ns.grace_period,
    )
