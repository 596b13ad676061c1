"""End to end on a tiny CPU model: expert rollouts -> data sft -> train sft -> train rl (PPO, GRPO) -> run.

Every step goes through the `agent` CLI as a user would type it, on real files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch  # noqa: F401 - a hard dependency: fail, never skip
import trl  # noqa: F401 - a hard dependency: fail, never skip

from sftrl.cli import main

pytestmark = pytest.mark.slow


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    assert (
        main(
            [
                "run",
                "--env",
                "gp",
                "--policy",
                "expert",
                "--episodes",
                "16",
                "--out",
                str(root / "expert"),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["data", "sft", str(root / "expert"), "--out", str(root / "data")]) == 0
    assert (
        main(
            [
                "train",
                "sft",
                "--data",
                str(root / "data"),
                "--model",
                str(tiny_text_model),
                "--out",
                str(root / "sft"),
                "--max-steps",
                "8",
            ]
        )
        == 0
    )
    return root / "sft"


def test_sft_loss_falls(sft_model: Path) -> None:
    logs = [json.loads(line) for line in (sft_model / "metrics.jsonl").read_text().splitlines() if line]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) >= 2 and losses[-1] < losses[0]


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_rl_from_the_sft_model_writes_a_reloadable_checkpoint(
    algo: str, sft_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / algo
    args = [
        "train",
        "rl",
        "--env",
        "gp",
        "--model",
        str(sft_model),
        "--out",
        str(out),
        "--algo",
        algo,
        "--max-steps",
        "2",
        "--episodes-per-update",
        "4",
        "--group-size",
        "2",
        "--max-new-tokens",
        "48",
        "--concurrency",
        "4",
        "--save-every",
        "1",
        "--json",
    ]
    assert main(args) == 0
    metrics = _json_out(capsys)
    assert metrics["update"] == 2
    for key in ("policy_loss", "entropy", "reward", "logprob_gap", "flops"):
        assert metrics[key] == metrics[key] and abs(metrics[key]) < float("inf")  # finite
    assert metrics["logprob_gap"] < 1e-3  # rollout and trainer agree
    assert (out / "checkpoint-2" / "learner_state.pt").exists() and (out / "rl_metrics.png").exists()
    # Resume is a no-op once all updates are done, and the trained model runs as a policy.
    assert main(args[:-1] + ["--resume"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "run",
                "--env",
                "gp",
                "--policy",
                "hf",
                "--model",
                str(out / "checkpoint-2"),
                "--episodes",
                "2",
                "--max-new-tokens",
                "48",
                "--out",
                str(tmp_path / f"{algo}-run"),
                "--json",
            ]
        )
        == 0
    )
    summary = _json_out(capsys)
    assert summary["episodes"] == 2 and summary["errors"] == 0


def test_rl_from_logged_episodes(sft_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The user's flow: `agent run --policy hf --logprobs` collects, `agent train rl --episodes` learns."""
    run = tmp_path / "collected"
    assert (
        main(
            [
                "run",
                "--env",
                "gp",
                "--policy",
                "hf",
                "--model",
                str(sft_model),
                "--episodes",
                "4",
                "--logprobs",
                "--max-new-tokens",
                "48",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    out = tmp_path / "offline"
    assert (
        main(
            [
                "train",
                "rl",
                "--episodes",
                str(run),
                "--model",
                str(sft_model),
                "--out",
                str(out),
                "--algo",
                "ppo",
                "--max-steps",
                "1",
                "--json",
            ]
        )
        == 0
    )
    assert _json_out(capsys)["transitions"] > 0
    # Episodes without token log-probs (the expert's) are refused with a clear message.
    expert = tmp_path / "expert"
    assert main(["run", "--env", "gp", "--episodes", "2", "--out", str(expert), "--quiet"]) == 0
    assert (
        main(
            [
                "train",
                "rl",
                "--episodes",
                str(expert),
                "--model",
                str(sft_model),
                "--out",
                str(tmp_path / "bad"),
                "--max-steps",
                "1",
            ]
        )
        == 2
    )
    assert "token ids" in capsys.readouterr().err
