"""TRL's GRPOTrainer backend: episodes of our agent loop as multi-turn completions with ``env_mask``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import torch  # noqa: F401 - a hard dependency: fail, never skip
import trl  # noqa: F401 - a hard dependency: fail, never skip
from langchain_core.messages import AIMessage, HumanMessage

from sftrl.agents.loop import run_episode
from sftrl.agents.policy import Reply, SamplingParams
from sftrl.cli import main
from sftrl.environments.generalpoints.env import GeneralPointsEnv
from sftrl.training.trl_grpo import PolicyCall, RecordingPolicy, build_prompts, episode_tokens

IM_END = "<|im_end|>"


@pytest.fixture(scope="module")
def policy(tiny_text_model: Path) -> Any:
    from sftrl.agents.hf_policy import HFPolicy

    return HFPolicy(tiny_text_model)


def _runs(mask: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) of the maximal constant runs of ``mask``."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            runs.append((mask[start], start, i))
            start = i
    return runs


def test_env_mask_is_zero_exactly_on_the_feedback_turns(policy: Any) -> None:
    env = GeneralPointsEnv(verify_iter=3)
    recorder = RecordingPolicy(policy)
    record = asyncio.run(
        run_episode(env, recorder, seed=5, sampling=SamplingParams(max_new_tokens=24, logprobs=True, seed=3))
    )
    assert len(record.turns) == 3 and not record.success  # a random model fails every attempt
    tok = episode_tokens(policy, recorder.calls)
    decode = policy.tokenizer.decode
    assert (
        tok.prompt_ids
        == policy.encode_chat([{"role": "user", "content": record.turns[0].prompt[0]["content"]}], [])[
            "input_ids"
        ]
    )
    assert len(tok.completion_ids) == len(tok.env_mask) == len(tok.logprobs)
    runs = _runs(tok.env_mask)
    assert [v for v, *_ in runs] == [1, 0, 1, 0, 1]  # reply, feedback, reply, feedback, reply
    for k, (_, a, b) in enumerate(runs[0::2]):
        reply = record.turns[k].reply
        assert tok.completion_ids[a:b] == reply.token_ids  # the sampled tokens themselves
        assert tok.logprobs[a:b] == reply.logprobs
    for k, (_, a, b) in enumerate(runs[1::2]):
        feedback_obs = recorder.calls[k + 1].messages[-1].content  # what the env sent back
        assert record.turns[k].verdict.message in feedback_obs and "You failed" in feedback_obs
        raw_reply = decode(record.turns[k].reply.token_ids, skip_special_tokens=False)
        close = "" if raw_reply.endswith(IM_END) else IM_END  # a reply cut at max_new_tokens is closed
        expected = f"{close}\n<|im_start|>user\n{feedback_obs}{IM_END}\n<|im_start|>assistant\n"
        assert decode(tok.completion_ids[a:b], skip_special_tokens=False) == expected
        assert set(tok.logprobs[a:b]) == {0.0}


def test_a_reply_with_special_tokens_still_gets_the_feedback_turn_masked(policy: Any) -> None:
    """The template drops special tokens from history: the feedback segment is rebuilt, not misaligned."""
    ids = policy.tokenizer("24 <tool_call> no", add_special_tokens=False)["input_ids"]
    reply = Reply(
        text=policy.tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids, logprobs=[-1.0] * len(ids)
    )
    task = HumanMessage(content="Cards: 1 2 3 4")
    feedback = HumanMessage(content="You failed this trial because no formula found in your answer.")
    second = Reply(text="x", token_ids=policy.tokenizer("x")["input_ids"], logprobs=[-0.5])
    calls = [
        PolicyCall([task], None, reply),
        PolicyCall([task, AIMessage(content=reply.text), feedback], None, second),
    ]
    tok = episode_tokens(policy, calls)
    runs = _runs(tok.env_mask)
    assert [v for v, *_ in runs] == [1, 0, 1]
    _, a, b = runs[1]
    assert policy.tokenizer.decode(tok.completion_ids[a:b], skip_special_tokens=False) == (
        f"{IM_END}\n<|im_start|>user\n{feedback.content}{IM_END}\n<|im_start|>assistant\n"
    )
    assert tok.inexact_turns == 1  # the second call saw the reply without its <tool_call> token


def test_canonical_replies_make_the_sequence_exactly_what_each_call_saw(policy: Any) -> None:
    task = HumanMessage(content="Cards: 1 2 3 4")
    feedback = HumanMessage(content="You failed this trial because no formula found in your answer.")
    calls = []
    messages: list[Any] = [task]
    for text in ('{"formula": "1+2+3+4=10"}', '{"formula": "(1+2+3)*4=24"}'):
        ids = policy.tokenizer(text + IM_END, add_special_tokens=False)["input_ids"]
        reply = Reply(text=text, token_ids=ids, logprobs=[-1.0] * len(ids))
        calls.append(PolicyCall(list(messages), None, reply))
        messages += [AIMessage(content=text), feedback]
    tok = episode_tokens(policy, calls)
    assert tok.inexact_turns == 0
    assert [v for v, *_ in _runs(tok.env_mask)] == [1, 0, 1]


def test_prompts_map_back_to_their_seeds() -> None:
    rows, seeds = build_prompts(lambda: GeneralPointsEnv(), 6, seed=1)
    assert len(rows) == len(seeds) == 6
    for row in rows:
        obs, _ = GeneralPointsEnv().reset(seed=row["seed"])
        assert row["prompt"] == [{"role": "user", "content": obs.text}]
        assert seeds[obs.text] == row["seed"]


def test_trl_grpo_needs_grpo(
    tiny_text_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "rl", "--trainer", "trl", "--algo", "ppo", "--model", str(tiny_text_model)]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert "GRPO only" in capsys.readouterr().err
    # Options only the own learner honours are refused in one line, not silently dropped.
    args[args.index("ppo")] = "grpo"
    refused = [(["--fsdp"], "--fsdp is for --trainer sftrl"), (["--track-episodes", "2"], "episode")]
    refused.append((["--micro-batch-size", "2"], "--minibatch-size is TRL's per-device micro-batch"))
    for flag, says in refused:
        assert main([*args, "--out", str(tmp_path / "o"), *flag]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err


def test_train_rl_with_trl_grpo_then_run_the_checkpoint(
    tiny_text_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grpo"
    args = [
        "train",
        "rl",
        "--trainer",
        "trl",
        "--algo",
        "grpo",
        "--env",
        "gp",
        "--verify-iter",
        "2",
        "--model",
        str(tiny_text_model),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--episodes-per-update",
        "4",
        "--group-size",
        "2",
        "--ppo-epochs",
        "2",
        "--max-new-tokens",
        "16",
        "--save-every",
        "1",
        "--report-to",
        "tensorboard",
        "--eval-env",
        "id=gp:verify_iter=1,episodes=2",
        "--eval-every",
        "1",
        "--eval-max-new-tokens",
        "8",
        "--json",
    ]
    assert main(args) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["trainer"] == "trl" and metrics["step"] == 4 and metrics["update"] == 2
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    generated = logged[2]  # rewards are logged on the steps that generated: 1 and 3
    for key in ("loss", "reward", "entropy"):
        assert abs(generated[key]) < float("inf")  # finite (NaN fails too)
    assert generated["episode/turns"] == 2.0  # multi-turn: the attempt and the one after feedback
    # Evaluated between updates (2 optimizer steps each) as --trainer sftrl does: before the first,
    # after each, on the weights being trained; the FLOPs grow with each update's batch.
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 1, 2] and all(e["id"]["episodes"] == 2 for e in evals)
    assert 0 == evals[0]["flops"] < evals[1]["flops"] < evals[2]["flops"] == metrics["flops"]
    assert (out / "eval" / "step-000002" / "id" / "episodes.jsonl").exists()
    assert (out / "eval_curve.png").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()  # --report-to gets TRL's log entries and the evaluations
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([r["loss"] for r in logged])
    assert [e.step for e in acc.Scalars("eval/id/success_rate")] == [0, 2, 4]
    assert (out / "checkpoint-4" / "model.safetensors").exists()
    episodes = (out / "rollouts" / "step-00000" / "episodes.jsonl").read_text().splitlines()
    assert len(episodes) == 4
    # The trained model runs as a policy.
    run_out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--env",
                "gp",
                "--policy",
                "hf",
                "--model",
                str(out),
                "--episodes",
                "2",
                "--max-new-tokens",
                "16",
                "--out",
                str(run_out),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and summary["errors"] == 0


def test_varied_episode_rewards_give_a_gradient(
    tiny_text_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A random model scores the same in every episode (zero advantages); spread the returns a little
    to check that TRL's loss reaches the model through the multi-turn completions."""
    import random

    import sftrl.training.trl_grpo as trl_grpo
    from sftrl.training.rl import RLConfig
    from sftrl.training.rl_train import RLRunConfig

    rng = random.Random(0)

    def spread(completions: list[Any], episode_reward: list[float], **_: Any) -> list[float]:
        return [r + rng.random() for r in episode_reward]

    monkeypatch.setattr(trl_grpo, "outcome_reward", spread)
    cfg = RLRunConfig(
        model=str(tiny_text_model),
        out=tmp_path / "o",
        updates=1,
        episodes_per_update=4,
        group_size=2,
        max_new_tokens=16,
        env_options={"verify_iter": 2},
        rl=RLConfig(algo="grpo", ppo_epochs=1),
    )
    metrics = trl_grpo.train_rl_trl(cfg)
    assert metrics["reward_std"] > 0 and metrics["grad_norm"] > 0
