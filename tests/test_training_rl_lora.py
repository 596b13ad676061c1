"""``agent train rl --lora-r``: only adapters train (value head full), checkpoints hold adapters,
``--merge`` writes a model ``agent run`` loads, ``--resume`` continues the adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftrl.cli import main


def _rl(model: Path, out: Path, *extra: str) -> list[str]:
    argv = ["train", "rl", "--model", str(model), "--out", str(out), "--algo", "ppo"]
    argv += ["--episodes-per-update", "2", "--max-new-tokens", "8", "--save-every", "1", "--lr", "1e-2"]
    return [*argv, "--lora-r", "4", *extra]


@pytest.mark.slow
def test_lora_rl_trains_adapters_merges_and_resumes(
    tiny_text_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lora"
    assert main([*_rl(tiny_text_model, out, "--max-steps", "2", "--merge")]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
    assert all(r["logprob_gap"] < 1e-3 for r in rows)  # adapters add no dropout or drift to scoring

    ckpt = out / "checkpoint-2"
    adapter = load_file(str(ckpt / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter) and not (ckpt / "model.safetensors").exists()
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it trained
    state = torch.load(ckpt / "learner_state.pt", weights_only=True)
    hidden = json.loads((tiny_text_model / "config.json").read_text())["hidden_size"]
    assert state["value_head"]["weight"].shape == (1, hidden)  # the value head is full, not adapted

    base, merged = (
        load_file(str(tiny_text_model / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    assert set(merged) == set(base)  # a plain model again
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(
        k.endswith("proj.weight") for k in changed
    )  # linear layers only; embeddings frozen
    assert (out / "adapter" / "adapter_config.json").exists()
    capsys.readouterr()
    argv = ["run", "--policy", "hf", "--model", str(out), "--episodes", "1", "--max-new-tokens", "8"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--quiet"]) == 0

    # --resume continues from checkpoint-2's adapters and optimizer state.
    assert main([*_rl(tiny_text_model, out, "--max-steps", "3", "--resume")]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3] and rows[-1]["logprob_gap"] < 1e-3
    assert (out / "checkpoint-3" / "adapter_model.safetensors").exists()


def test_pushes_carry_the_merged_weights_and_leave_the_adapters_alone(tiny_text_model: Path) -> None:
    # What vLLM is sent for a LoRA run: the base model's names, W + delta on adapted layers, exactly
    # peft's own merge, computed without merging (no rounding drift of the trained base weights).
    import copy

    import torch

    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.training.lora import apply_lora, merged_state_dict
    from sftrl.training.weight_sync import checkpoint_weights

    policy = HFPolicy(tiny_text_model)
    apply_lora(policy, 4, None, ["all-linear"], None)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # B starts at 0: give the adapters a delta to merge
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    base, merged = merged_state_dict(policy.model)
    reference = copy.deepcopy(policy.model).merge_and_unload().state_dict()
    assert sorted(merged) == sorted(reference) and not any("lora_" in k for k in merged)
    assert all(torch.equal(merged[k], reference[k]) for k in reference)
    unmerged = base.state_dict()
    assert any(not torch.equal(merged[k], unmerged[k.replace("proj.", "proj.base_layer.")])
               for k in merged if "q_proj.weight" in k)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in policy.model.state_dict().items())
    assert checkpoint_weights(policy.model)[0] is base
    assert checkpoint_weights(base) == (base, None)  # a plain model pushes its own state dict
