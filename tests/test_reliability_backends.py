"""Runs against dead, hostile and key-echoing OpenAI-protocol servers: bounded, loud and key-free."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from sftrl.cli import main
from tests.hostile_server import HostileServer
from tests.openai_stub_server import StubServer

MODEL = "stub-model"


def agent_run(base_url: str, out: Path, *extra: str) -> int:
    return main(
        [
            "run",
            "--env",
            "gp",
            "--policy",
            "openai",
            "--model",
            MODEL,
            "--base-url",
            base_url,
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )


def dead_port() -> int:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_trickling_server_ends_the_run_within_the_deadline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with HostileServer("trickle", interval=0.05) as server:
        start = time.monotonic()
        rc = agent_run(
            server.base_url + "/v1",
            tmp_path / "run",
            "--episodes",
            "5",
            "--request-timeout",
            "0.5",
            "--max-retries",
            "1",
            "--policy-option",
            "backoff_s=0.01",
        )
        elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    # 2 episodes x 2 attempts x 0.5 s, then the run stops: none can succeed.
    assert rc == 1 and elapsed < 6.0
    assert len(err.splitlines()) == 1 and "stopped after 2 episode(s)" in err and "no complete answer" in err


def test_an_unreachable_server_stops_the_run_non_zero_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = agent_run(
        f"http://127.0.0.1:{dead_port()}/v1",
        tmp_path / "run",
        "--episodes",
        "20",
        "--max-retries",
        "0",
    )
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "cannot connect" in err and "ConnectError" in err and "--resume" in err
    lines = (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 2  # stopped early, the two failures are logged


def test_the_summary_counts_errors_by_cause_with_an_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with StubServer() as server:
        server.fail_next(503, 1)
        rc = agent_run(server.url, tmp_path / "run", "--episodes", "3", "--max-retries", "0", "--json")
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["episodes"] == 2 and summary["errors"] == 1
    (cause,) = summary["error_causes"].items()
    assert cause[0] == "server" and cause[1]["count"] == 1 and "503" in cause[1]["example"]


def test_a_reply_over_the_byte_cap_fails_that_episode_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with StubServer(reply=lambda body: "x" * 300_000) as server:
        rc = agent_run(
            server.url,
            tmp_path / "run",
            "--episodes",
            "1",
            "--policy-option",
            "max_response_bytes=100000",
            "--json",
        )
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["errors"] == 1
    assert "over 100000 bytes" in summary["error_causes"]["reply"]["example"]
