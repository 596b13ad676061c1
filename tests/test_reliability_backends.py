"""Runs against dead, hostile and key-echoing OpenAI-protocol servers: bounded, loud and key-free."""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.parse
from pathlib import Path

import pytest
from hostile_server import HostileServer
from openai_stub_server import StubServer

from sftrl.cli import main

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


# --- the API key never reaches what is written, in any encoding ------------------------------------

KEY = 'sk-test"odd\\key/with+chars=0123456789'


def key_forms(key: str, *, searched: bool = False) -> list[str]:
    """How a server may echo ``key``; with ``searched``, what of each must not remain after masking."""
    raw = key.encode()
    basic = base64.b64encode(b"user:" + raw).decode()  # the key inside a Basic auth string
    return [
        key,
        base64.b64encode(raw).decode().rstrip("=")[: -2 if searched else None],
        base64.urlsafe_b64encode(raw).decode().rstrip("=")[: -2 if searched else None],
        basic[8:-4] if searched else basic,  # the characters that depend on the key alone
        urllib.parse.quote(key, safe=""),
        urllib.parse.quote_plus(key),
        json.dumps(key)[1:-1],
    ]


def assert_no_key(text: str, key: str = KEY) -> None:
    for form in key_forms(key, searched=True):
        assert form not in text, form


def test_a_server_echoing_the_key_encoded_leaks_it_nowhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SFTRL_TEST_KEY", KEY)
    with HostileServer("echo_key") as server:
        rc = agent_run(
            server.base_url + "/v1", tmp_path / "run", "--episodes", "2", "--api-key-env", "SFTRL_TEST_KEY"
        )
    captured = capsys.readouterr()
    log = (tmp_path / "run" / "episodes.jsonl").read_text()
    assert rc == 0 and "bad key b64=***" in log  # the echo arrived, masked
    assert_no_key(log + captured.out + captured.err)


def test_a_completion_holding_the_key_is_masked_in_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SFTRL_TEST_KEY", KEY)
    leak = " ".join(key_forms(KEY))
    with StubServer(reply=lambda body: f"my key: {leak}") as server:
        rc = agent_run(server.url, tmp_path / "run", "--episodes", "1", "--api-key-env", "SFTRL_TEST_KEY")
    captured = capsys.readouterr()
    log = (tmp_path / "run" / "episodes.jsonl").read_text()
    assert rc == 0 and "my key: ***" in log
    assert_no_key(log + captured.out + captured.err)


def test_street_view_errors_never_hold_the_key_in_any_encoding() -> None:
    from sftrl.street_view.google import GoogleStreetViewProvider
    from sftrl.street_view.provider import ProviderError, ViewRequest

    key = "AIza" + KEY
    with HostileServer("echo_key") as server:
        p = GoogleStreetViewProvider(api_key=key, base_url=server.base_url, max_retries=0)
        with pytest.raises(ProviderError) as err:
            p.get_view(ViewRequest(lat=1.0, lng=2.0, heading=0.0, width=16, height=16))
    text = str(err.value)
    assert "HTTP 400" in text and "b64=REDACTED" in text
    assert_no_key(text, key)


def test_a_server_ignoring_the_token_budget_fails_the_episode_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = {"content": " ".join(["word"] * 200), "ignore_max_tokens": True}
    with StubServer(reply=lambda body: broken) as server:
        rc = agent_run(server.url, tmp_path / "run", "--episodes", "1", "--max-new-tokens", "16", "--json")
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["errors"] == 1
    assert "for a budget of 16" in summary["error_causes"]["reply"]["example"]


def test_an_echoed_key_is_masked_before_long_error_texts_are_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from sftrl.agents.openai_policy import BackendError, OpenAIPolicy
    from sftrl.agents.policy import SamplingParams
    from sftrl.street_view.google import GoogleStreetViewProvider
    from sftrl.street_view.provider import ProviderError, ViewRequest

    monkeypatch.setenv("SFTRL_TEST_KEY", KEY)
    # With 280 characters of padding the base64 echo straddles character 300: cutting the text there
    # before masking would leave the start of the encoded key.
    with HostileServer("echo_key", body=b"p" * 280) as server:
        policy = OpenAIPolicy(MODEL, server.base_url + "/v1", api_key_env="SFTRL_TEST_KEY", max_retries=0)
        with pytest.raises(BackendError) as err:
            asyncio.run(policy.generate([], SamplingParams()))
    # Street View quotes the raw JSON body, 23 characters longer before the message.
    with HostileServer("echo_key", body=b"p" * 257) as server:
        google = GoogleStreetViewProvider(api_key="AIza" + KEY, base_url=server.base_url, max_retries=0)
        with pytest.raises(ProviderError) as gerr:
            google.get_view(ViewRequest(lat=1.0, lng=2.0, heading=0.0, width=16, height=16))
    for text, key in ((str(err.value), KEY), (str(gerr.value), "AIza" + KEY)):
        assert "p" * 200 in text and "bad key b64=" in text
        assert base64.b64encode(key.encode()).decode()[:6] not in text
