"""The ``hf`` policy on tiny offline models: real transformers generation inside real episodes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import transformers  # noqa: F401 - a hard dependency: fail, never skip
from langchain_core.messages import HumanMessage

from sftrl.agents.hf_policy import HFPolicy, HFPolicyError
from sftrl.agents.policy import SamplingParams
from sftrl.agents.runner import run_async, split_config
from sftrl.agents.trajectory import read_episodes
from sftrl.cli import main
from sftrl.training.rl import Learner, RLConfig
from sftrl.training.transitions import load_episodes


def _run(out: Path, policy: Any, **options: Any) -> dict[str, Any]:
    values = {"env": "gp", "episodes": 2, "out": out, "sampling": {"max_new_tokens": 24, "logprobs": True}}
    run, env_cfg = split_config({**values, **options})
    return asyncio.run(run_async(run, env_cfg, policy=policy))


@pytest.fixture(scope="module")
def text_policy(tiny_text_model: Path) -> HFPolicy:
    return HFPolicy(tiny_text_model)


def test_tiny_models_load_with_their_chat_templates_and_processor(
    tiny_text_model: Path, tiny_vision_model: Path
) -> None:
    from transformers import AutoProcessor, AutoTokenizer

    from sftrl.agents.tiny import register_processors

    tok = AutoTokenizer.from_pretrained(tiny_text_model)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    register_processors()
    proc = AutoProcessor.from_pretrained(tiny_vision_model)
    assert type(proc).__name__ == "ImageOnlyQwen2VLProcessor"  # not the bare tokenizer
    assert proc.tokenizer.convert_tokens_to_ids("<|image_pad|>") != proc.tokenizer.unk_token_id


def test_gp_language_episode_logs_tokens_and_logprobs_the_learner_reproduces(
    tmp_path: Path, text_policy: HFPolicy
) -> None:
    summary = _run(tmp_path / "run", text_policy)
    assert summary["episodes"] == 2 and summary["errors"] == 0
    records = read_episodes(tmp_path / "run")
    turn = records[0].turns[0]
    assert turn.reply.token_ids and len(turn.reply.token_ids) == len(turn.reply.logprobs or [])
    assert all(lp <= 0.0 for lp in turn.reply.logprobs or [])
    assert records[0].policy["model"] == str(text_policy.model_name)
    # The trainer's recomputed log-probs of the logged replies match the rollout's.
    batch = load_episodes([tmp_path / "run"])
    learner = Learner(text_policy.model, text_policy.encode_transition, RLConfig(algo="grpo"))
    assert learner.check_consistency(batch.transitions) < 1e-3


def test_same_seed_same_replies_whatever_the_batching(tmp_path: Path, text_policy: HFPolicy) -> None:
    seq = _run(
        tmp_path / "seq", text_policy, episodes=4, concurrency=1, sampling={"max_new_tokens": 16, "seed": 7}
    )
    text_policy.batches.clear()
    par = _run(
        tmp_path / "par", text_policy, episodes=4, concurrency=4, sampling={"max_new_tokens": 16, "seed": 7}
    )
    assert max(text_policy.batches) > 1  # requests of concurrent episodes were batched together
    assert seq["episodes"] == par["episodes"] == 4
    a = [[t.reply.token_ids for t in r.turns] for r in read_episodes(tmp_path / "seq")]
    b = [[t.reply.token_ids for t in r.turns] for r in read_episodes(tmp_path / "par")]
    assert a == b


def test_gp_vision_episode_feeds_the_card_image_to_the_model(tmp_path: Path, tiny_vision_model: Path) -> None:
    policy = HFPolicy(tiny_vision_model)
    summary = _run(tmp_path / "vl", policy, modality="vision", resolution=224, episodes=1)
    assert summary["errors"] == 0
    record = read_episodes(tmp_path / "vl")[0]
    assert any(b.get("type") == "image" for b in record.turns[0].prompt[0]["content"])
    batch = load_episodes([tmp_path / "vl"])
    enc = policy.encode_transition(batch.transitions[0])
    assert "pixel_values" in enc and "image_grid_thw" in enc
    image_pad = policy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert enc["input_ids"].count(image_pad) > 0
    # The learner excludes the never-sampled image/video placeholders as the sampler does (as
    # `agent train rl` sets it up); then cached M-RoPE decoding and one full forward agree to rounding.
    learner = Learner(
        policy.model,
        policy.encode_transition,
        RLConfig(algo="grpo"),
        suppressed_token_ids=policy.suppressed_token_ids,
    )
    assert learner.check_consistency(batch.transitions) < 1e-5


def test_tool_mode_episode_runs_on_the_hf_backend(tmp_path: Path, text_policy: HFPolicy) -> None:
    summary = _run(tmp_path / "tools", text_policy, protocol="tools", episodes=1)
    assert summary["errors"] == 0 and summary["attempts"] >= 1
    record = read_episodes(tmp_path / "tools")[0]
    assert record.tools and record.tools[0]["function"]["name"] == "submit"
    # The trainer re-renders the logged tools into the prompt: same tokens, same log-probs.
    batch = load_episodes([tmp_path / "tools"])
    learner = Learner(text_policy.model, text_policy.encode_transition, RLConfig(algo="grpo"))
    assert learner.check_consistency(batch.transitions) < 1e-3
    prompt = text_policy.encode_chat([{"role": "user", "content": "x"}], [], tools=[_submit_schema()])
    rendered = text_policy.tokenizer.decode(prompt["input_ids"])
    assert "<tools>" in rendered and '"submit"' in rendered  # the template shows the model its tools


def _submit_schema() -> dict[str, Any]:
    return {"type": "function", "function": {"name": "submit", "parameters": {"type": "object"}}}


def test_prompt_longer_than_the_context_is_scored_not_a_crash(text_policy: HFPolicy) -> None:
    saved = text_policy.max_positions
    text_policy.max_positions = 8
    try:
        reply = asyncio.run(
            text_policy.generate([HumanMessage(content="a long prompt " * 20)], SamplingParams())
        )
    finally:
        text_policy.max_positions = saved
    assert reply.text == "" and reply.finish_reason == "length"


def test_a_trainers_mixed_precision_reaches_the_sampler_and_its_copies(text_policy: HFPolicy) -> None:
    """``agent train rl`` under bf16 sets ``autocast_dtype``: replies are computed in bf16 (the fp32
    weights stay), and the rollout copy an --fsdp or --async-rollouts run samples with inherits it."""
    import torch

    from sftrl.training.async_rollouts import hf_rollout_copy

    def sample(policy: HFPolicy) -> tuple[set[Any], list[float]]:
        dtypes: set[Any] = set()
        hook = policy.model.lm_head.register_forward_hook(lambda m, a, out: dtypes.add(out.dtype))
        try:
            reply = asyncio.run(
                policy.generate([HumanMessage(content="hi")], SamplingParams(max_new_tokens=4, seed=0))
            )
        finally:
            hook.remove()
        return dtypes, reply.logprobs

    plain, plain_lp = sample(text_policy)
    text_policy.autocast_dtype = torch.bfloat16
    try:
        half, half_lp = sample(text_policy)
        copied, copied_lp = sample(hf_rollout_copy(text_policy, 2))
    finally:
        text_policy.autocast_dtype = None
    assert plain == {torch.float32} and half == copied == {torch.bfloat16}
    assert half_lp == copied_lp and half_lp != plain_lp
    assert half_lp == pytest.approx(plain_lp, abs=0.05)
    assert next(text_policy.model.parameters()).dtype == torch.float32


def test_bad_model_path_and_options_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(HFPolicyError, match="no such model directory"):
        HFPolicy(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HFPolicyError, match="cannot load model"):
        HFPolicy(tmp_path / "empty")


def test_cli_tiny_model_and_run_with_the_hf_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tiny-model", "--kind", "text", "--out", str(tmp_path / "m")]) == 0
    assert main(["tiny-model", "--kind", "text", "--out", str(tmp_path / "m")]) == 2  # not empty
    capsys.readouterr()
    rc = main(
        [
            "run",
            "--env",
            "gp",
            "--policy",
            "hf",
            "--model",
            str(tmp_path / "m"),
            "--episodes",
            "1",
            "--max-new-tokens",
            "8",
            "--out",
            str(tmp_path / "r"),
            "--json",
            "--policy-option",
            "max_batch_size=2",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["policy"] == "hf" and summary["episodes"] == 1
    assert (
        main(["run", "--env", "gp", "--policy", "hf", "--episodes", "1", "--out", str(tmp_path / "x")]) == 2
    )
    assert "needs --model" in capsys.readouterr().err
    rc = main(
        [
            "run",
            "--policy",
            "hf",
            "--model",
            str(tmp_path / "m"),
            "--policy-option",
            "bogus=1",
            "--out",
            str(tmp_path / "y"),
        ]
    )
    assert rc != 0


HERMES_OUTPUT = (
    'Let me answer.\n<tool_call>\n{"name": "submit", "arguments": "{\\"cards\\": [\\"A\\"], '
    '\\"numbers\\": [1], \\"formula\\": \\"1=24\\"}"}\n</tool_call>'
)


def test_one_model_output_gives_one_reply_on_hf_and_vllm_offline(text_policy: HFPolicy) -> None:
    """The Hermes parser is shared: same text (here with double-encoded arguments), same reply."""
    from types import SimpleNamespace

    from sftrl.agents import vllm_offline
    from sftrl.agents.hf_policy import _Request

    tokens = text_policy.tokenizer.encode(HERMES_OUTPUT, add_special_tokens=False)
    # What vLLM returns for these tokens with skip_special_tokens=False (as tool mode asks it to).
    decoded = text_policy.tokenizer.decode(tokens, skip_special_tokens=False)
    tools = [_submit_schema()]
    request = _Request(chat=[], images=[], tools=tools, sampling=SamplingParams(), future=None)  # type: ignore[arg-type]
    hf = text_policy._reply(tokens, [0.0] * len(tokens), len(tokens), request)
    completion = SimpleNamespace(text=decoded, token_ids=tokens, logprobs=None, finish_reason="stop")
    offline_request = vllm_offline._Request(
        conversation=[], sampling=SamplingParams(), tools=tools, future=None
    )  # type: ignore[arg-type]
    offline = vllm_offline._reply(
        "m", offline_request, SimpleNamespace(outputs=[completion], prompt_token_ids=[])
    )
    assert hf.tool_calls == offline.tool_calls and hf.text == offline.text == "Let me answer."
    assert hf.tool_calls[0]["args"] == {"cards": ["A"], "numbers": [1], "formula": "1=24"}
