"""`agent serve`: the vLLM command line, and the process management against a real stand-in server."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sftrl.agents.serve import ServeError, build_vllm_command, parse_limit_mm
from sftrl.cli import build_parser

STUB = Path(__file__).with_name("openai_stub_server.py")


def test_default_command_is_vllm_serve_with_flags_in_vllm_form() -> None:
    cmd = build_vllm_command(
        "/models/qwen",
        port=8100,
        max_model_len=4096,
        dtype="bfloat16",
        tensor_parallel_size=2,
        limit_mm_per_prompt="image=4",
        tool_call_parser="hermes",
        extra_args=["--", "--enforce-eager"],
    )
    assert cmd == [
        "vllm",
        "serve",
        "/models/qwen",
        "--host",
        "127.0.0.1",
        "--port",
        "8100",
        "--max-model-len",
        "4096",
        "--dtype",
        "bfloat16",
        "--tensor-parallel-size",
        "2",
        "--limit-mm-per-prompt",
        '{"image":4}',
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--enforce-eager",
    ]


def test_custom_command_takes_the_model_as_a_flag_and_optional_flags_stay_off() -> None:
    cmd = build_vllm_command("m", vllm_command="python -m vllm.entrypoints.openai.api_server")
    assert cmd == [
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "m",
        "--host",
        "127.0.0.1",
        "--port",
        "8000",
    ]


def test_limit_mm_accepts_both_forms_and_rejects_junk() -> None:
    assert parse_limit_mm("image=4,video=0") == {"image": 4, "video": 0}
    assert parse_limit_mm('{"image": 2}') == {"image": 2}
    assert parse_limit_mm(None) is None
    for bad in ("image", "image=x", "{nope", "image=-1"):
        with pytest.raises(ServeError):
            parse_limit_mm(bad)
    with pytest.raises(ServeError, match="--port"):
        build_vllm_command("m", port=0)


def test_cli_flags_reach_the_command() -> None:
    from sftrl.agents.serve import serve_from_args  # noqa: F401 - importable from the CLI

    ns = build_parser().parse_args(
        ["serve", "--model", "m", "--tool-call-parser", "hermes", "--", "--gpu-memory-utilization", "0.8"]
    )
    cmd = build_vllm_command(
        ns.model, tool_call_parser=ns.tool_call_parser, extra_args=ns.extra, port=ns.port, host=ns.host
    )
    assert cmd[-5:] == [
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--gpu-memory-utilization",
        "0.8",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_serve(port: int, *extra: str, ready_after: float = 0.6) -> subprocess.Popen[str]:
    stub = f"{shlex.quote(sys.executable)} {shlex.quote(str(STUB))} --ready-after {ready_after}"
    argv = [sys.executable, "-m", "sftrl", "serve", "--model", "tiny-model", "--port", str(port)]
    argv += ["--vllm-command", stub, "--grace-period", "5", *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stub_pid(stderr: str) -> int:
    match = re.search(r"stub serving .* pid (\d+)", stderr)
    assert match, stderr
    return int(match.group(1))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_waits_for_health_prints_url_and_stops_the_server(sig: int) -> None:
    port = _free_port()
    proc = _start_serve(port, "--", "--dtype", "auto")
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # printed only once /health answers 200
        assert url == f"http://127.0.0.1:{port}/v1"
        models = httpx.get(f"{url}/models", timeout=5, trust_env=False).json()
        assert [m["id"] for m in models["data"]] == ["tiny-model"]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "starting:" in err and "stopped" in err and "--dtype auto" in err
    pid = _stub_pid(err)
    deadline = time.monotonic() + 5
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid), "the server process outlived agent serve"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/models", timeout=2, trust_env=False)


def test_serve_reports_a_server_that_dies_before_ready() -> None:
    argv = [sys.executable, "-m", "sftrl", "serve", "--model", "m", "--port", str(_free_port())]
    argv += ["--vllm-command", f"{shlex.quote(sys.executable)} -c 'import sys; sys.exit(3)'"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stdout == ""
    assert "exited with status 3 before it was ready" in done.stderr


def test_serve_missing_vllm_binary_is_a_clear_error() -> None:
    argv = [sys.executable, "-m", "sftrl", "serve", "--model", "m", "--vllm-command", "no-such-vllm-binary"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "cannot start 'no-such-vllm-binary'" in done.stderr


def test_limit_flag_reaches_the_server_as_json() -> None:
    cmd = build_vllm_command("m", limit_mm_per_prompt="image=1")
    assert json.loads(cmd[cmd.index("--limit-mm-per-prompt") + 1]) == {"image": 1}
