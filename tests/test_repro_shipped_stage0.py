"""The shipped GP-L stage-0 model: `agent tiny-model --kind stage0` copies it, and it is a trained model."""

from __future__ import annotations

import json
from pathlib import Path

from sftrl.agents.metrics import summarize
from sftrl.agents.trajectory import read_episodes
from sftrl.cli import main
from sftrl.repro.pipeline import SHIPPED_STAGE0


def test_tiny_model_stage0_copies_the_shipped_model_and_refuses_a_non_empty_dir(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "models" / "stage0"
    assert main(["tiny-model", "--kind", "stage0", "--out", str(out)]) == 0
    shipped = sorted(p.name for p in SHIPPED_STAGE0.iterdir() if p.is_file())
    assert sorted(p.name for p in out.iterdir()) == shipped
    assert (out / "model.safetensors").read_bytes() == (SHIPPED_STAGE0 / "model.safetensors").read_bytes()
    assert "README.md" in shipped  # says how it was built and how to rebuild it
    capsys.readouterr()
    assert main(["tiny-model", "--kind", "stage0", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["tiny-model", "--kind", "stage0", "--out", str(out), "--hidden", "64"]) == 2


def test_the_shipped_stage0_model_solves_held_out_gp_hands_it_never_trained_on(tmp_path: Path) -> None:
    """Greedy, 3 attempts, compact GP-L prompts with target 24 (stage 0 never saw 24): at release it
    solved 17.5% of the 200 held-out ID hands; a broken or untrained copy solves none of these 64."""
    model = tmp_path / "stage0"
    assert main(["tiny-model", "--kind", "stage0", "--out", str(model)]) == 0
    run = tmp_path / "eval"
    argv = ["run", "--env", "gp", "--prompt-style", "compact", "--verify-iter", "3", "--policy", "hf"]
    argv += ["--model", str(model), "--temperature", "0", "--max-new-tokens", "40", "--episodes", "64"]
    argv += ["--seed", "12345", "--concurrency", "64", "--out", str(run), "--quiet"]
    assert main(argv) == 0
    summary = summarize(read_episodes(run))
    assert summary["episodes"] == 64 and summary["errors"] == 0
    assert summary["success_rate"] >= 3 / 64, json.dumps(summary["verdicts"])
    # The answer format is learned: almost no reply is unparseable.
    assert summary["verdicts"].get("illegal_formula", 0) < 0.2 * sum(summary["verdicts"].values())
