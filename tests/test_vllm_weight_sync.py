"""RL rollouts on a REAL vLLM server (CPU build) with the trainer's weights pushed after each update.

The server runs from ``.venv-vllm`` in dev mode (``VLLM_SERVER_DEV_MODE=1``) with sftrl's worker
extension; ``agent train rl --rollout-policy vllm`` runs here in the main venv. The proof of the sync:
after training, the server's greedy reply to a fixed prompt is the updated HF model's greedy reply,
token for token, with the same log-probs — and its log-probs moved away from the ones it gave before
training. The learner's consistency check passed on every vLLM-collected batch (temperature 1),
including the one sampled after the first push. Skips only when ``.venv-vllm`` is not built.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_vllm_real import (
    REPO,
    SERVER_MODULE,
    VLLM_PYTHON,
    _free_port,
    require_vllm,
    serve,
    vllm_env,
)

from sftrl.agents.policy import SamplingParams
from sftrl.training.weight_sync import (
    WORKER_EXTENSION,
    VLLMServerWeightSync,
    WeightSyncError,
    server_root,
)

SERVED = "tiny-rl"
PROMPT = "Make 24 from the cards 3, 8, 8, 10."


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_vllm()
    from sftrl.agents.tiny import build_tiny_model

    return build_tiny_model("text", tmp_path_factory.mktemp("sync") / "tiny-text", seed=0)


@pytest.fixture(scope="module")
def dev_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A vLLM server in dev mode with sftrl's worker extension → its base URL."""
    port = _free_port()
    work = tmp_path_factory.mktemp("sync-server")
    log = work / "server.log"
    cmd = [
        str(VLLM_PYTHON),
        "-m",
        SERVER_MODULE,
        "--model",
        str(tiny_model),
        "--served-model-name",
        SERVED,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--dtype",
        "float32",
        "--max-model-len",
        "4096",
        # log-probs of the temperature-scaled distribution: what the learner recomputes.
        "--logprobs-mode",
        "processed_logprobs",
        "--worker-extension-cls",
        WORKER_EXTENSION,
    ]
    env = {**vllm_env(work), "VLLM_SERVER_DEV_MODE": "1"}
    yield from serve(cmd, env, log, port)


def _greedy(policy: object) -> tuple[list[int], list[float]]:
    from langchain_core.messages import HumanMessage

    sampling = SamplingParams(temperature=0.0, max_new_tokens=12, logprobs=True)
    reply = asyncio.run(policy.generate([HumanMessage(content=PROMPT)], sampling))  # type: ignore[attr-defined]
    assert reply.token_ids and reply.logprobs
    return list(reply.token_ids), list(reply.logprobs)


def _rl_argv(
    model: Path, out: Path, server: str, *, lr: str = "0.003", updates: int = 2, episodes: int = 2
) -> list[str]:
    """``agent train rl``: PPO on GP, ``updates`` updates of ``episodes`` episodes on ``server``."""
    argv = ["train", "rl", "--env", "gp", "--model", str(model), "--out", str(out)]
    argv += ["--rollout-policy", "vllm", "--base-url", server, "--max-steps", str(updates)]
    argv += ["--episodes-per-update", str(episodes), "--concurrency", "2", "--max-new-tokens", "12"]
    return argv + ["--temperature", "1.0", "--algo", "ppo", "--lr", lr, "--ppo-epochs", "2"]


def _assert_serves(server: object, out: Path, before: tuple[list[int], list[float]] | None) -> None:
    """The server answers greedily as the model saved in ``out`` does and, given what it answered
    ``before`` training, no longer as it did then."""
    from sftrl.agents.hf_policy import HFPolicy

    after_ids, after_lp = _greedy(server)
    trained_ids, trained_lp = _greedy(HFPolicy(out))
    assert after_ids == trained_ids
    assert max(abs(a - b) for a, b in zip(after_lp, trained_lp, strict=True)) < 1e-3
    if before is not None:
        before_ids, before_lp = before
        n = min(len(before_lp), len(after_lp))
        moved = max(abs(a - b) for a, b in zip(after_lp[:n], before_lp[:n], strict=True))
        assert after_ids != before_ids or moved > 1e-2


@pytest.mark.slow
def test_train_rl_rolls_out_on_vllm_and_pushes_weights_after_each_update(
    dev_server: str, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.agents.openai_policy import VLLMPolicy
    from sftrl.agents.trajectory import read_episodes
    from sftrl.cli import main

    server = VLLMPolicy(SERVED, [dev_server])
    before_ids, before_lp = _greedy(server)
    start_ids, start_lp = _greedy(HFPolicy(tiny_model))
    assert before_ids == start_ids  # same model on both sides before any update

    out = tmp_path / "rl"
    argv = [*_rl_argv(tiny_model, out, dev_server), "--json"]
    assert main(argv) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["update"] == 2

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
    # The consistency check passed on both vLLM-collected batches: update 2's rollouts were sampled
    # AFTER the first push, so they match the learner's updated weights only if the sync worked.
    assert all(r["logprob_gap"] < 1e-3 for r in rows), [r["logprob_gap"] for r in rows]
    for update in (0, 1):
        records = read_episodes(out / "rollouts" / f"update-{update:05d}")
        assert len(records) == 2 and all(r.error is None for r in records)
        assert {r.policy["backend"] for r in records} == {"vllm"}
        assert all(t.reply.sampling["temperature"] == 1.0 for r in records for t in r.turns)
    assert (out / "live-weights" / "model.safetensors").exists()

    # The server now serves the final weights (pushed after update 2, saved to OUT).
    _assert_serves(server, out, (before_ids, before_lp))


@pytest.mark.slow
def test_collective_sync_broadcasts_the_weights_into_the_server_without_disk(
    dev_server: str, tiny_model: Path, tmp_path: Path
) -> None:
    """``--weight-sync collective``: the trainer and the server's worker form a gloo group (vLLM's CPU
    build); each push broadcasts the state dict into the worker's in-place reload. The server ends up
    serving exactly the trained weights, and no weights file is written anywhere under OUT."""
    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.agents.openai_policy import VLLMPolicy
    from sftrl.cli import main
    from sftrl.training.weight_sync import VLLMServerCollectiveSync

    server = VLLMPolicy(SERVED, [dev_server])
    start = HFPolicy(tiny_model)
    # The module's server may hold an earlier test's weights: the collective push resets them.
    reset = VLLMServerCollectiveSync([dev_server])
    reset.push(start.model, 0)
    assert reset.workers == [1] and reset.pushes[0]["step"] == 0
    reset.close()
    before_ids, before_lp = _greedy(server)
    start_ids, start_lp = _greedy(start)
    assert before_ids == start_ids
    assert max(abs(a - b) for a, b in zip(before_lp, start_lp, strict=True)) < 1e-3

    out = tmp_path / "rl"
    argv = _rl_argv(tiny_model, out, dev_server)
    assert main([*argv, "--weight-sync", "collective"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Update 2's batch was sampled after the first push: it matches the learner only if it arrived.
    assert [r["update"] for r in rows] == [1, 2] and all(r["logprob_gap"] < 1e-3 for r in rows)
    assert not (out / "live-weights").exists()
    _assert_serves(server, out, (before_ids, before_lp))


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_collective_sync_under_accelerate_launch_keeps_its_own_group(
    dev_server: str, tiny_model: Path, tmp_path: Path, sharding: str
) -> None:
    """Two learner processes (accelerate's gloo group) and the weight group side by side: the main
    process pushes, both collect from the server, and both batches match the learner after the push.
    With ``--fsdp`` each process holds half of every weight: the push carries the gathered whole."""
    from test_training_multiprocess import _env, _launch

    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.agents.openai_policy import VLLMPolicy
    from sftrl.training.weight_sync import VLLMServerCollectiveSync

    reset = VLLMServerCollectiveSync([dev_server])  # the module's server may hold trained weights
    reset.push(HFPolicy(tiny_model).model, 0)
    reset.close()
    out = tmp_path / "rl"
    argv = [*_rl_argv(tiny_model, out, dev_server, episodes=4), "--weight-sync", "collective"]
    argv += ["--fsdp"] if sharding == "fsdp" else []
    proc = subprocess.run(
        [*_launch(2), *argv], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2] and all(r["logprob_gap"] < 1e-3 for r in rows)
    assert _greedy(VLLMPolicy(SERVED, [dev_server]))[0] == _greedy(HFPolicy(out))[0]


@pytest.mark.slow
@pytest.mark.parametrize("weight_sync", ["disk", "collective"])
def test_lora_rl_rolls_out_on_vllm_with_the_adapters_merged_into_each_push(
    dev_server: str, tiny_model: Path, tmp_path: Path, weight_sync: str
) -> None:
    """``--lora-r`` with vLLM rollouts: each push carries the base weights with the adapters merged in
    (vLLM serves the model the learner scores), by file or by broadcast."""
    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.agents.openai_policy import VLLMPolicy

    reset = VLLMServerWeightSync([dev_server], tmp_path / "initial-weights")
    reset.push(HFPolicy(tiny_model).model, 0)  # the module's server may hold trained weights
    out = tmp_path / "rl-lora"
    argv = _rl_argv(tiny_model, out, dev_server, lr="0.03")
    argv += ["--lora-r", "4", "--merge", "--weight-sync", weight_sync]
    from sftrl.cli import main

    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Update 2's batch was sampled after a push of merged weights: it matches the LoRA learner.
    assert [r["update"] for r in rows] == [1, 2] and all(r["logprob_gap"] < 1e-3 for r in rows)
    _assert_serves(VLLMPolicy(SERVED, [dev_server]), out, None)  # OUT: the merged model (--merge)
    assert (out / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_async_rollouts_on_vllm_label_each_batch_with_the_weights_the_server_held(
    dev_server: str, tiny_model: Path, tmp_path: Path
) -> None:
    """``--async-rollouts`` with a vLLM server: batches are collected while the learner updates, and
    a push waits for the collection in progress. A batch labelled with the learner's own version was
    sampled by exactly those weights: its log-probs match the learner's (the label is right)."""
    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.agents.trajectory import read_episodes
    from sftrl.cli import main

    # The module's server may hold an earlier test's trained weights: start it from the model's own.
    sync = VLLMServerWeightSync([dev_server], tmp_path / "initial-weights")
    sync.push(HFPolicy(tiny_model).model, 0)

    out = tmp_path / "rl-async"
    argv = _rl_argv(tiny_model, out, dev_server, updates=4)
    assert main([*argv, "--async-rollouts", "--max-staleness", "1"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        records = read_episodes(Path(r["rollouts"]))
        assert len(records) == 2 and all(rec.error is None for rec in records)
        assert {rec.policy["backend"] for rec in records} == {"vllm"}
        versions = {rec.policy["policy_version"] for rec in records}
        assert len(versions) == 1  # the weights never change inside a batch
        (version,) = versions
        assert r["policy_version"] - version == r["staleness_max"] and 0 <= r["staleness_max"] <= 1
        if r["staleness_max"] == 0:
            assert r["logprob_gap"] < 1e-3, r
            assert r["is_weight_mean"] == pytest.approx(1.0, abs=1e-2)
    assert rows[0]["staleness_max"] == 0
    # Batch 1 starts as soon as batch 0 is handed over, while update 1 runs: sampled by version 0.
    assert rows[1]["staleness_max"] == 1 and rows[1]["policy_version"] == 1


# --- the in-process engine (vllm-offline): a script in .venv-vllm, which has vLLM but no accelerate ----

OFFLINE_SCRIPT = """
import asyncio, json, sys
import torch
from langchain_core.messages import HumanMessage
from sftrl.agents.hf_policy import HFPolicy
from sftrl.agents.policy import SamplingParams
from sftrl.agents.vllm_offline import VLLMOfflinePolicy
from sftrl.training.weight_sync import VLLMEngineWeightSync

greedy = SamplingParams(temperature=0.0, max_new_tokens=12, logprobs=True)
prompt = [HumanMessage(content=sys.argv[2])]

def ask(policy):
    reply = asyncio.run(policy.generate(prompt, greedy))
    return {"ids": list(reply.token_ids), "logprobs": list(reply.logprobs)}

engine = VLLMOfflinePolicy(sys.argv[1], dtype="float32", max_model_len=4096, enforce_eager=True)
sync = VLLMEngineWeightSync(engine)
sync.check()
result = {"direct": sync.direct, "engine_before": ask(engine)}
trainer = HFPolicy(sys.argv[1])
torch.manual_seed(1)
with torch.no_grad():  # a stand-in for an update: every weight moves
    for p in trainer.model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
sync.push(trainer.model, 1)
result["engine_after"] = ask(engine)
result["hf_after"] = ask(trainer)
print("RESULT " + json.dumps(result))
"""


@pytest.mark.slow
def test_in_process_engine_gets_the_trainers_state_dict(tiny_model: Path, tmp_path: Path) -> None:
    script = tmp_path / "offline_sync.py"
    script.write_text(OFFLINE_SCRIPT)
    proc = subprocess.run(
        [str(VLLM_PYTHON), str(script), str(tiny_model), PROMPT],
        capture_output=True,
        text=True,
        env=vllm_env(tmp_path),
        cwd=REPO,
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["direct"]  # tensors handed over in-process, no disk
    after, hf, before = result["engine_after"], result["hf_after"], result["engine_before"]
    assert after["ids"] == hf["ids"]
    assert max(abs(a - b) for a, b in zip(after["logprobs"], hf["logprobs"], strict=True)) < 1e-3
    n = min(len(before["logprobs"]), len(after["logprobs"]))
    moved = max(abs(a - b) for a, b in zip(after["logprobs"][:n], before["logprobs"][:n], strict=True))
    assert after["ids"] != before["ids"] or moved > 1e-2


# --- no vLLM needed: what a server without dev mode looks like to the trainer ---------------------------


class _NotDevMode(http.server.BaseHTTPRequestHandler):
    """An OpenAI-style server without vLLM's dev endpoints: /v1/models only."""

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            body = json.dumps({"data": [{"id": SERVED}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotDevMode)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_server_without_dev_mode_is_refused_before_any_rollout(plain_server: str, tmp_path: Path) -> None:
    sync = VLLMServerWeightSync([plain_server], tmp_path / "live-weights")
    with pytest.raises(WeightSyncError, match="VLLM_SERVER_DEV_MODE=1"):
        sync.check()


def test_train_rl_cli_reports_missing_dev_mode(plain_server: str, tmp_path: Path) -> None:
    from sftrl.agents.tiny import build_tiny_model
    from sftrl.cli import main

    model = build_tiny_model("text", tmp_path / "tiny", seed=0)
    out = tmp_path / "rl"
    argv = ["train", "rl", "--model", str(model), "--out", str(out), "--rollout-policy", "vllm"]
    argv += ["--base-url", plain_server, "--max-steps", "1", "--episodes-per-update", "1"]
    assert main(argv) == 2
    assert not (out / "rollouts").exists()  # refused before collecting anything


def test_rollout_policy_vllm_needs_a_base_url(tmp_path: Path) -> None:
    from sftrl.agents.tiny import build_tiny_model
    from sftrl.cli import main

    model = build_tiny_model("text", tmp_path / "tiny", seed=0)
    argv = ["train", "rl", "--model", str(model), "--out", str(tmp_path / "rl"), "--rollout-policy", "vllm"]
    assert main([*argv, "--max-steps", "1"]) == 2


def test_dev_endpoints_live_at_the_server_root() -> None:
    assert server_root("http://h:8000/v1") == "http://h:8000"
    assert server_root("http://h:8000/v1/") == "http://h:8000"
    assert server_root("http://h:8000") == "http://h:8000"
