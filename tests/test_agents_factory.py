"""The one policy factory: names -> backends, served-model discovery, RL's plain sampling, weight sync.

Servers are real HTTP servers on 127.0.0.1 (the OpenAI-compatible stub, or a deliberately slow one).
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from langchain_core.messages import HumanMessage
from openai_stub_server import StubServer

from sftrl.agents.baselines import ExpertPolicy, RandomPolicy
from sftrl.agents.factory import POLICIES, make_policy
from sftrl.agents.openai_policy import VLLMPolicy, served_model
from sftrl.agents.policy import SamplingParams
from sftrl.agents.runner import RunConfig, run_async, split_config
from sftrl.config import ConfigError
from sftrl.training.rl_train import RLRunConfig, rollout_backend
from sftrl.training.transitions import TransitionError
from sftrl.training.weight_sync import (
    VLLMServerCollectiveSync,
    VLLMServerWeightSync,
    WeightSyncError,
    weight_sync_for,
)


def test_names_build_their_backends_and_bad_names_fail_in_one_line() -> None:
    assert set(POLICIES) >= {"expert", "random", "hf", "openai", "vllm", "vllm-offline"}
    assert isinstance(make_policy(RunConfig(policy="expert")), ExpertPolicy)
    assert isinstance(make_policy(RunConfig(policy="random", seed=3)), RandomPolicy)
    with pytest.raises(ConfigError, match="unknown policy 'gpt'"):
        make_policy(SimpleNamespace(policy="gpt", model="x", seed=0, policy_options={}))
    with pytest.raises(ConfigError, match="--policy hf needs --model"):
        make_policy(RunConfig(policy="hf"))
    with pytest.raises(ConfigError, match="--policy hf: .*missing"):
        make_policy(RunConfig(policy="hf", model="/nonexistent/missing-model"))


def test_vllm_without_model_uses_the_one_the_server_lists() -> None:
    with StubServer(models=("served-a",)) as server:
        policy = make_policy(RunConfig(policy="vllm", base_url=[server.url]))
        assert isinstance(policy, VLLMPolicy) and policy.model == "served-a"
    with StubServer(models=("a", "b")) as server, pytest.raises(ConfigError, match=r"serves \['a', 'b'\]"):
        make_policy(RunConfig(policy="vllm", base_url=[server.url]))


def test_agent_run_with_a_discovered_vllm_model(tmp_path: Path) -> None:
    with StubServer(models=("served-a",)) as server:
        run, env_cfg = split_config(
            {"policy": "vllm", "base_url": [server.url], "episodes": 1, "out": tmp_path / "run"}
        )
        summary = asyncio.run(run_async(run, env_cfg))
        assert summary["episodes"] == 1 and summary["errors"] == 0
        assert {b["model"] for b in server.completions()} == {"served-a"}


def test_plain_sampling_pins_server_defaults_off_unless_the_run_sets_them() -> None:
    messages = [HumanMessage(content="hi")]
    with StubServer() as server:
        for options, top_k in (({}, -1), ({"extra_body": {"top_k": 5}}, 5)):
            run = RunConfig(policy="vllm", model="stub-model", base_url=[server.url], policy_options=options)
            policy = make_policy(run, plain_sampling=True)
            asyncio.run(policy.generate(messages, SamplingParams(max_new_tokens=4)))
            asyncio.run(policy.aclose())
            body = server.completions()[-1]
            assert body["top_k"] == top_k
        plain = make_policy(RunConfig(policy="vllm", model="stub-model", base_url=[server.url]))
        asyncio.run(plain.generate(messages, SamplingParams(max_new_tokens=4)))
        asyncio.run(plain.aclose())
        assert "top_k" not in server.completions()[-1]  # agent run keeps the server's defaults


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Answers /v1/models one byte every 0.2 s: each read is quick, the whole is not."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def trickle_url() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_model_discovery_has_a_total_deadline(trickle_url: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="cannot list the models"):
        served_model(trickle_url, deadline_s=0.6)
    assert time.monotonic() - t0 < 10  # the server would take 200 s


def _rl(tmp_path: Path, **kw: object) -> RLRunConfig:
    return RLRunConfig.model_validate({"model": "m", "out": tmp_path / "rl", **kw})


def test_trainer_gets_rollout_backends_and_their_weight_sync_from_the_factory(tmp_path: Path) -> None:
    trained = SimpleNamespace(processor=None)
    assert rollout_backend(_rl(tmp_path), trained, "m", True) == (trained, None)
    with pytest.raises(TransitionError, match="--base-url is not used"):
        rollout_backend(_rl(tmp_path, base_url=["http://127.0.0.1:1/v1"]), trained, "m", True)
    with pytest.raises(TransitionError, match="needs --base-url"):
        rollout_backend(_rl(tmp_path, rollout_policy="vllm"), trained, "m", True)
    with StubServer(models=("served-a",)) as server:
        cfg = _rl(tmp_path, rollout_policy="vllm", base_url=[server.url])
        rollout, sync = rollout_backend(cfg, trained, "m", True)
        assert isinstance(rollout, VLLMPolicy) and rollout.model == "served-a"
        assert rollout.extra_body["top_k"] == -1  # what the learner's scoring assumes
        assert isinstance(sync, VLLMServerWeightSync) and sync.roots == [f"http://127.0.0.1:{server.port}"]
        assert sync.weights_dir == (tmp_path / "rl" / "live-weights").resolve()
        # Only the main process reloads the servers.
        assert rollout_backend(cfg, trained, "m", False)[1] is None
    with pytest.raises(WeightSyncError, match="cannot be sent the trained weights"):
        weight_sync_for(ExpertPolicy(), trained, tmp_path / "w")


def test_collective_weight_sync_is_chosen_by_flag_and_needs_a_reachable_trainer(tmp_path: Path) -> None:
    trained = SimpleNamespace(processor=None)
    with pytest.raises(ValueError, match="--weight-sync collective pushes to vLLM servers"):
        _rl(tmp_path, weight_sync="collective")  # hf rollouts: nothing to push
    with StubServer(models=("served-a",)) as server:
        cfg = _rl(tmp_path, rollout_policy="vllm", base_url=[server.url], weight_sync="collective")
        _, sync = rollout_backend(cfg, trained, "m", True)
        assert isinstance(sync, VLLMServerCollectiveSync)
        assert (sync.host, sync.port, sync.backend) == ("127.0.0.1", 0, "gloo")  # a CPU model: gloo
        assert not (tmp_path / "rl" / "live-weights").exists()
    remote = _rl(
        tmp_path, rollout_policy="vllm", base_url=["http://10.0.0.7:8000/v1"], weight_sync="collective"
    )
    with pytest.raises(WeightSyncError, match="needs --weight-sync-host"):
        weight_sync_for(VLLMPolicy("m", remote.base_url), trained, tmp_path / "w", mode="collective")
    sync = weight_sync_for(
        VLLMPolicy("m", remote.base_url), trained, tmp_path / "w", mode="collective", host="10.0.0.1"
    )
    assert isinstance(sync, VLLMServerCollectiveSync) and sync.host == "10.0.0.1"
