"""OpenAI-protocol policies against a real HTTP stub server: episodes, tools, retries, replicas, keys."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from openai_stub_server import StubServer, gp_solver_reply

from sftrl.agents.messages import image_block
from sftrl.agents.openai_policy import (
    BackendError,
    OpenAIPolicy,
    VLLMPolicy,
    parse_tool_calls,
    to_openai_messages,
)
from sftrl.agents.policy import SamplingParams
from sftrl.agents.runner import run_async, split_config
from sftrl.agents.trajectory import read_episodes
from sftrl.config import ConfigError

MODEL = "stub-model"
SECRET = "sk-test-DO-NOT-LEAK-1234567890"


def solver_reply(body: dict[str, Any]) -> str | dict[str, Any]:
    return gp_solver_reply(body)


@pytest.fixture
def stub():
    with StubServer(reply=solver_reply) as server:
        yield server


def _policy(server: StubServer, **kwargs: Any) -> OpenAIPolicy:
    kwargs.setdefault("backoff_s", 0.001)
    return OpenAIPolicy(MODEL, server.url, **kwargs)


async def _run(tmp_path: Path, policy: Any, episodes: int = 3, **values: Any) -> dict[str, Any]:
    run, env_cfg = split_config({"env": "gp", "episodes": episodes, "out": tmp_path / "run", **values})
    try:
        return await run_async(run, env_cfg, policy=policy)
    finally:
        await policy.aclose()


async def test_gp_language_episodes_through_the_server(stub: StubServer, tmp_path: Path) -> None:
    summary = await _run(tmp_path, _policy(stub), episodes=4, concurrency=2)
    records = read_episodes(tmp_path / "run")
    assert summary["episodes"] == 4 and summary["errors"] == 0
    solvable = [r for r in records if r.info["num_solutions"] > 0]
    assert solvable and all(r.success for r in solvable)
    bodies = stub.completions()
    assert len(bodies) == sum(len(r.turns) for r in records)
    body = bodies[0]
    assert body["model"] == MODEL and body["messages"][0]["role"] == "user"
    assert body["max_completion_tokens"] == 512 and "tools" not in body and "logprobs" not in body
    turn = records[0].turns[0]
    assert turn.reply.model == MODEL and turn.reply.finish_reason == "stop"
    assert turn.reply.usage and turn.reply.usage["completion_tokens"] > 0
    assert records[0].policy == {
        "name": "openai",
        "kind": "api",
        "backend": "openai",
        "model": MODEL,
        "base_url": stub.url,
    }


async def test_wrong_answers_get_verifier_feedback_as_next_user_turn(
    stub: StubServer, tmp_path: Path
) -> None:
    stub.config.reply = lambda body: '{"cards": ["A"], "number": [1], "formula": "1=24"}'
    await _run(tmp_path, _policy(stub), episodes=1, verify_iter=3)
    bodies = stub.completions()
    assert len(bodies) == 3
    last = bodies[-1]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    assert last[2]["content"].startswith("You failed this trial because")


async def test_gp_vision_sends_the_card_image_as_a_png_data_url(stub: StubServer, tmp_path: Path) -> None:
    summary = await _run(
        tmp_path, _policy(stub), episodes=1, modality="vision", resolution=128, verify_iter=1
    )
    assert summary["errors"] == 0
    content = stub.completions()[0]["messages"][0]["content"]
    assert isinstance(content, list)
    assert content[0]["type"] == "image_url"
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,iVBOR")  # PNG magic
    assert content[-1]["type"] == "text" and "cards in the image" in content[-1]["text"]


def submit_reply(body: dict[str, Any]) -> str | dict[str, Any]:
    """Tool mode: answer with a ``submit`` call carrying the solver's answer."""
    return gp_solver_reply(body, tool=True)


async def test_tool_calling_episode(stub: StubServer, tmp_path: Path) -> None:
    stub.config.reply = submit_reply
    summary = await _run(tmp_path, _policy(stub, tool_choice="required"), episodes=3, protocol="tools")
    records = read_episodes(tmp_path / "run")
    assert summary["errors"] == 0
    assert all(r.success for r in records if r.info["num_solutions"] > 0)
    body = stub.completions()[0]
    assert body["tools"][0]["type"] == "function"
    assert body["tools"][0]["function"]["name"] == "submit"
    assert body["tool_choice"] == "required"
    call = records[0].turns[0].reply.tool_calls
    assert call and call[0]["name"] == "submit" and isinstance(call[0]["args"], dict)
    assert records[0].turns[0].reply.finish_reason == "tool_calls"


async def test_malformed_tool_call_arguments_are_scored_not_crashed(stub: StubServer, tmp_path: Path) -> None:
    stub.config.reply = lambda body: {
        "content": "",
        "tool_calls": [{"name": "submit", "arguments": "{cards: oops"}],
    }
    summary = await _run(tmp_path, _policy(stub), episodes=1, protocol="tools", verify_iter=2)
    records = read_episodes(tmp_path / "run")
    assert summary["errors"] == 0 and not records[0].success
    assert len(records[0].turns) == 2 and records[0].turns[0].reward < 0
    # The second request sends the model's own malformed text back, answered by a tool result.
    second = stub.completions()[1]["messages"]
    assert second[1]["tool_calls"][0]["function"]["arguments"] == "{cards: oops"
    assert second[2]["role"] == "tool" and second[2]["tool_call_id"] == second[1]["tool_calls"][0]["id"]


def test_parse_tool_calls_keeps_raw_text_of_bad_arguments() -> None:
    calls = parse_tool_calls(
        [
            {"id": "a", "function": {"name": "submit", "arguments": '{"formula": "1+1"}'}},
            {"id": "b", "function": {"name": "submit", "arguments": "[1, 2]"}},
            {"id": "c", "function": {"name": "stop", "arguments": ""}},
        ]
    )
    assert calls == [
        {"name": "submit", "args": {"formula": "1+1"}, "id": "a"},
        {"name": "submit", "args": "[1, 2]", "id": "b"},
        {"name": "stop", "args": {}, "id": "c"},
    ]
    assert parse_tool_calls(None) is None and parse_tool_calls([]) is None


def test_message_conversion_covers_images_tools_and_system() -> None:
    from PIL import Image

    img = image_block(Image.new("RGB", (4, 4), "red"))
    msgs = [
        SystemMessage(content="be brief"),
        HumanMessage(content=[img, {"type": "text", "text": "what?"}]),
        AIMessage(content="", tool_calls=[{"name": "forward", "args": {}, "id": "t1"}]),
        ToolMessage(content=[img, {"type": "text", "text": "moved"}], tool_call_id="t1"),
    ]
    out = to_openai_messages(msgs)
    assert out[0] == {"role": "system", "content": "be brief"}
    assert out[1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert out[2]["tool_calls"][0] == {
        "id": "t1",
        "type": "function",
        "function": {"name": "forward", "arguments": "{}"},
    }
    # Tool results with images: text in the tool message, the images in a following user turn.
    assert out[3] == {"role": "tool", "tool_call_id": "t1", "content": "moved"}
    assert out[4]["role"] == "user" and out[4]["content"][0]["type"] == "image_url"


async def test_retries_on_503_and_429_then_succeeds(stub: StubServer) -> None:
    stub.fail_next(503, 2)
    stub.fail_next(429, 1, retry_after=0)
    policy = _policy(stub, max_retries=3)
    reply = await policy.generate([HumanMessage(content="hi")], SamplingParams())
    await policy.aclose()
    assert '"formula": "1+1=24"' in reply.text and reply.finish_reason == "stop"
    assert len(stub.completions()) == 4


async def test_gives_up_after_max_retries_with_the_status(stub: StubServer) -> None:
    stub.fail_next(503, 5)
    policy = _policy(stub, max_retries=1)
    with pytest.raises(BackendError, match=r"after 2 attempt\(s\): 503"):
        await policy.generate([HumanMessage(content="hi")], SamplingParams())
    await policy.aclose()
    assert len(stub.completions()) == 2


async def test_401_names_the_env_var_but_never_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFTRL_TEST_KEY", SECRET)
    with StubServer(api_key="the-right-key") as server:
        policy = OpenAIPolicy(MODEL, server.url, api_key_env="SFTRL_TEST_KEY", backoff_s=0.001)
        with pytest.raises(BackendError) as info:
            await policy.generate([HumanMessage(content="hi")], SamplingParams())
        await policy.aclose()
        # The key did reach the server (in the header), and only there.
        assert server.requests[0].headers["Authorization"] == f"Bearer {SECRET}"
    message = str(info.value)
    assert info.value.status == 401 and "SFTRL_TEST_KEY" in message and "Incorrect API key" in message
    assert (
        SECRET not in message and SECRET not in repr(policy) and SECRET not in json.dumps(policy.describe())
    )
    assert len(server.requests) == 1  # 401 is not retried


async def test_404_lists_the_served_models(stub: StubServer) -> None:
    policy = OpenAIPolicy("no-such-model", stub.url, backoff_s=0.001)
    with pytest.raises(BackendError, match="models served there: stub-model"):
        await policy.generate([HumanMessage(content="hi")], SamplingParams())
    await policy.aclose()


def test_missing_key_for_the_openai_api_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIPolicy("gpt-4o-mini")


async def test_key_sent_but_absent_from_the_episode_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SFTRL_TEST_KEY", SECRET)
    with StubServer(reply=solver_reply, api_key=SECRET) as server:
        policy = OpenAIPolicy(MODEL, server.url, api_key_env="SFTRL_TEST_KEY")
        summary = await _run(tmp_path, policy, episodes=2)
    assert summary["errors"] == 0
    assert all(r.headers["Authorization"] == f"Bearer {SECRET}" for r in server.requests)
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


async def test_vllm_replicas_share_requests_and_survive_a_dead_one(tmp_path: Path) -> None:
    with (
        StubServer(reply=solver_reply, latency_s=0.01) as a,
        StubServer(reply=solver_reply, latency_s=0.01) as b,
    ):
        policy = VLLMPolicy(MODEL, [a.url, b.url], backoff_s=0.001)
        await _run(tmp_path / "1", policy, episodes=8, concurrency=4)
        assert len(a.completions()) >= 2 and len(b.completions()) >= 2
        assert "max_tokens" in a.completions()[0]
        dead_port = a.port
    # a is stopped now: a replica refusing connections is skipped and its requests go to b.
    with StubServer(reply=solver_reply) as c:
        policy = VLLMPolicy(MODEL, [f"http://127.0.0.1:{dead_port}/v1", c.url], backoff_s=0.001)
        summary = await _run(tmp_path / "2", policy, episodes=3)
    assert summary["errors"] == 0 and summary["episodes"] == 3


async def test_logprobs_and_token_ids(stub: StubServer) -> None:
    stub.config.reply = lambda body: "one two three"
    sampling = SamplingParams(logprobs=True, seed=7, stop=["\n\n"], max_new_tokens=16)
    vllm = VLLMPolicy(MODEL, stub.url)
    reply = await vllm.generate([HumanMessage(content="hi")], sampling)
    await vllm.aclose()
    body = stub.completions()[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 0 and body["return_token_ids"] is True
    assert body["seed"] == 7 and body["stop"] == ["\n\n"] and body["max_tokens"] == 16
    assert reply.logprobs == pytest.approx([-0.01, -0.02, -0.03])
    assert reply.token_ids is not None and len(reply.token_ids) == 3
    # Without the token_ids field, "token_id:N" logprob tokens still give the ids.
    stub.config.reply = lambda body: {"content": "one two three"}
    openai = _policy(stub)
    plain = await openai.generate([HumanMessage(content="hi")], sampling)
    await openai.aclose()
    assert plain.logprobs == pytest.approx([-0.01, -0.02, -0.03]) and plain.token_ids is None
    assert "return_token_ids" not in stub.completions()[1]


async def test_finish_reason_length_passes_through(stub: StubServer) -> None:
    stub.config.reply = lambda body: {"content": "truncat", "finish_reason": "length"}
    policy = _policy(stub)
    reply = await policy.generate([HumanMessage(content="hi")], SamplingParams(max_new_tokens=2))
    await policy.aclose()
    assert reply.finish_reason == "length" and reply.text == "truncat"


def test_from_run_config_reads_the_backend_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    run = SimpleNamespace(
        model="m",
        base_url=["http://u:pw@h1:8000", "http://h2:8000/v1/"],
        api_key_env=None,
        request_timeout=5.0,
        max_retries=7,
        policy_options={"tool_choice": "required"},
    )
    policy = VLLMPolicy.from_run_config(run)
    assert policy.describe()["base_url"] == ["http://h1:8000/v1", "http://h2:8000/v1"]  # no credentials
    assert policy.max_retries == 7 and policy.timeout == 5.0 and policy.api_key_env == "VLLM_API_KEY"
    assert policy.tool_choice == "required"
    with pytest.raises(ConfigError, match="not known"):
        VLLMPolicy.from_run_config(SimpleNamespace(model="m", policy_options={"bogus": 1}))
    with pytest.raises(ConfigError, match="one --base-url"):
        OpenAIPolicy.from_run_config(SimpleNamespace(model="m", base_url=["http://a/v1", "http://b/v1"]))


async def test_agent_run_with_policy_vllm_via_the_runner(stub: StubServer, tmp_path: Path) -> None:
    run, env_cfg = split_config(
        {
            "env": "gp",
            "policy": "vllm",
            "model": MODEL,
            "base_url": [stub.url],
            "episodes": 2,
            "out": tmp_path,
        }
    )
    summary = await run_async(run, env_cfg)
    assert summary["errors"] == 0 and len(stub.completions()) >= 2


def test_a_rejected_key_stops_the_run_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 401 would fail every episode alike: the CLI stops at once (exit 1) instead of logging N errors."""
    from sftrl.cli import main

    monkeypatch.setenv("SFTRL_TEST_KEY", SECRET)
    with StubServer(api_key="the-right-key") as server:
        rc = main(
            [
                "run",
                "--env",
                "gp",
                "--policy",
                "openai",
                "--model",
                MODEL,
                "--base-url",
                server.url,
                "--api-key-env",
                "SFTRL_TEST_KEY",
                "--episodes",
                "5",
                "--out",
                str(tmp_path / "run"),
                "--quiet",
            ]
        )
        calls = len(server.requests)
    err = capsys.readouterr().err
    assert rc == 1 and "401" in err and "SFTRL_TEST_KEY" in err and SECRET not in err
    assert calls == 1  # stopped at the first rejected call
    assert (
        not (tmp_path / "run" / "episodes.jsonl").exists()
        or not (tmp_path / "run" / "episodes.jsonl").read_text().strip()
    )


async def test_virl_vision_tool_episode_sends_each_new_street_view(stub: StubServer, tmp_path: Path) -> None:
    """V-IRL-VL in tool mode: the model calls forward(); every tool result brings the next 2x2 grid."""

    def navigator(body: dict[str, Any]) -> dict[str, Any]:
        # First call: the instruction's opening turn ("turn … to face {dir}"); afterwards walk on.
        if not any(m["role"] == "assistant" for m in body["messages"]):
            text = " ".join(p.get("text", "") for p in body["messages"][-1]["content"] if isinstance(p, dict))
            face = re.search(r"to face (\w+)", text)
            assert face, text
            args = json.dumps({"direction": face.group(1)})
            return {"content": "", "tool_calls": [{"name": "turn_direction", "arguments": args}]}
        return {"content": "", "tool_calls": [{"name": "forward", "arguments": "{}"}]}

    stub.config.reply = navigator
    summary = await _run(
        tmp_path, _policy(stub), episodes=1, env="virl", modality="vision", protocol="tools", resolution=64
    )
    assert summary["errors"] == 0
    record = read_episodes(tmp_path / "run")[0]
    assert record.turns[0].reply.tool_calls[0]["name"] == "turn_direction" and record.turns[0].reward > 0
    assert {t["function"]["name"] for t in stub.completions()[0]["tools"]} == {
        "forward",
        "turn_direction",
        "stop",
    }
    later = stub.completions()[1]["messages"]
    tool_turns = [i for i, m in enumerate(later) if m["role"] == "tool"]
    assert tool_turns, "the env's answer must come back as the tool's result"
    # OpenAI tool messages are text-only: the new street view follows as a user turn with the image.
    after = later[tool_turns[-1] + 1]
    assert after["role"] == "user"
    assert any(p.get("type") == "image_url" for p in after["content"])
