"""SFT with TRL on tiny random models: real rollouts -> dataset -> training, resume, LoRA, the CLI.

Exact loss masks are pinned in test_training_loss_masks.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
import peft  # noqa: F401 - a hard dependency: fail, never skip
import torch
import trl  # noqa: F401 - a hard dependency: fail, never skip

pytestmark = pytest.mark.slow  # a tiny model's tokenizer is trained once per module (~10 s)

from sftrl.agents.policy import Reply  # noqa: E402
from sftrl.agents.runner import run_async, split_config  # noqa: E402
from sftrl.training.pairs import build_preference_pairs  # noqa: E402
from sftrl.training.sft import (  # noqa: E402
    CURVE_JSON,
    CURVE_PNG,
    METRICS_FILE,
    SFTError,
    inspect_data,
    train_sft,
    train_sft_main,
    trl_config,
)
from sftrl.training.sft_data import build_sft_dataset  # noqa: E402

WRONG = "I am not sure."


class FailOncePolicy:
    """Wrong on the first try of each step, then the expert's reply (real feedback turns in the log)."""

    name = "fail-once"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "test"}

    async def generate(self, messages, sampling, *, observation=None, tools=None) -> Reply:
        if observation.kind == "task":
            return Reply(text=WRONG, finish_reason="stop")
        return Reply(text=observation.oracle["expert_reply"], finish_reason="stop")


def make_run(out: Path, episodes: int, agent: Any = None, **options: Any) -> Path:
    run, env_cfg = split_config({"env": "gp", "episodes": episodes, "out": out, **options})
    asyncio.run(run_async(run, env_cfg, policy=agent))
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sft")


@pytest.fixture(scope="module")
def text_model(tiny_text_model: Path) -> Path:
    return tiny_text_model


@pytest.fixture(scope="module")
def gp_data(root: Path) -> Path:
    build_sft_dataset([make_run(root / "gp", 12)], root / "gp-data", val_fraction=0.2)
    return root / "gp-data"


@pytest.fixture(scope="module")
def fo_run(root: Path) -> Path:
    return make_run(root / "fo", 3, FailOncePolicy())


# --------------------------------------------------------------------------- end to end


def test_sft_end_to_end_loss_falls_and_the_saved_model_is_the_trained_one(text_model, gp_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "ckpt"
    metrics = train_sft(gp_data, text_model, out, max_steps=30, lr=1e-3, batch_size=4, save_steps=15)
    assert metrics["global_step"] == 30
    assert metrics["final_loss"] < metrics["initial_loss"] - 0.5
    assert metrics["eval_loss"] < metrics["initial_loss"]
    assert (out / "checkpoint-15").is_dir() and (out / "checkpoint-30").is_dir()
    curve = json.loads((out / CURVE_JSON).read_text())
    assert [p["step"] for p in curve["train"]] == list(range(1, 31)) and curve["eval"]
    assert (out / CURVE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["loss"] for e in logged if "loss" in e] == [p["loss"] for p in curve["train"]]
    assert json.loads((out / METRICS_FILE).read_text())["final_loss"] == metrics["final_loss"]

    # The reloaded model fits a training row better than the untrained one does.
    tok = AutoTokenizer.from_pretrained(out)
    row = inspect_data(gp_data).train[0]
    enc = tok.apply_chat_template(row["messages"], return_tensors="pt", return_dict=True)
    ids = enc["input_ids"]

    def loss(model_dir: Path) -> float:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        with torch.no_grad():
            return float(model(input_ids=ids, labels=ids).loss)

    assert loss(out) < loss(text_model) - 0.3


# --------------------------------------------------------------------------- resume, LoRA, errors


def test_resume_continues_from_the_latest_checkpoint(text_model, gp_data, tmp_path):
    out = tmp_path / "ckpt"
    train_sft(gp_data, text_model, out, max_steps=4, lr=1e-3, save_steps=2, evaluate=False)
    with pytest.raises(SFTError, match="already holds an SFT run"):
        train_sft(gp_data, text_model, out, max_steps=6, lr=1e-3)
    with pytest.raises(SFTError, match=r"different options \(lr\)"):
        train_sft(gp_data, text_model, out, max_steps=6, lr=1e-2, resume=True)
    metrics = train_sft(
        gp_data, text_model, out, max_steps=6, lr=1e-3, save_steps=2, resume=True, evaluate=False
    )
    assert metrics["resumed_from"].endswith("checkpoint-4")
    assert metrics["global_step"] == 6 and metrics["steps_this_run"] == 2
    steps = [p["step"] for p in json.loads((out / CURVE_JSON).read_text())["train"]]
    assert steps == [1, 2, 3, 4, 5, 6]  # the curve keeps the steps before the resume


def test_lora_adapter_is_saved_and_merged(text_model, gp_data, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    metrics = train_sft(gp_data, text_model, out, max_steps=3, lr=1e-2, lora=True, lora_r=4, evaluate=False)
    assert metrics["lora"] and (out / "adapter" / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(text_model).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert base.keys() == merged.keys()
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all("proj" in k for k in changed)  # LoRA touched the linear layers only


def test_bad_inputs_give_one_line_errors(text_model, gp_data, fo_run, root, tmp_path, capsys):
    with pytest.raises(SFTError, match="no dataset at"):
        train_sft(tmp_path / "none", text_model, tmp_path / "o")
    pairs = root / "pairs"
    build_preference_pairs([fo_run], pairs, val_fraction=0.0)
    with pytest.raises(SFTError, match="preference dataset"):
        train_sft(pairs, text_model, tmp_path / "o")
    with pytest.raises(SFTError, match="no such model directory"):
        train_sft(gp_data, tmp_path / "no-model", tmp_path / "o")
    assert train_sft_main(gp_data, str(text_model), tmp_path / "o", report_to="bogus") == 2
    assert "report-to" in capsys.readouterr().err
    assert train_sft_main(pairs, str(text_model), tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.startswith("agent: error:") and err.count("\n") == 1


def test_preference_pairs_train_with_trl_dpo_unchanged(text_model, fo_run, tmp_path):
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    build_preference_pairs([fo_run], tmp_path / "pairs", val_fraction=0.0)
    train = load_from_disk(str(tmp_path / "pairs"))["train"]
    tok = AutoTokenizer.from_pretrained(text_model)
    args = trl_config(
        DPOConfig,
        {
            "output_dir": str(tmp_path / "dpo"),
            "max_steps": 1,
            "per_device_train_batch_size": 2,
            "report_to": [],
            "bf16": False,
            "activation_checkpointing": False,
            "gradient_checkpointing": False,
            "dataloader_pin_memory": False,
            "save_strategy": "no",
            "disable_tqdm": True,
        },
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(text_model),
        args=args,
        train_dataset=train,
        processing_class=tok,
    )
    row, raw = trainer.train_dataset[0], train[0]
    assert tok.decode(row["chosen_ids"]).strip() == raw["chosen"][0]["content"] + "<|im_end|>"
    assert tok.decode(row["rejected_ids"]).strip() == WRONG + "<|im_end|>"
    assert raw["prompt"][0]["content"] in tok.decode(row["prompt_ids"])
    assert trainer.train().training_loss == pytest.approx(0.6931, abs=0.01)  # log(2): policy == reference


# --------------------------------------------------------------------------- the CLI, vision


def test_cli_data_sft_then_train_sft_on_a_vision_model(tiny_vision_model, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from sftrl.agents.tiny import register_processors
    from sftrl.cli import main

    vision_model = tiny_vision_model
    run = make_run(tmp_path / "gpv", 4, modality="vision", resolution=64)
    data, out = tmp_path / "data", tmp_path / "ckpt"
    assert main(["data", "sft", str(run), "--out", str(data), "--val-fraction", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["modality"] == "vision"
    argv = ["train", "sft", "--data", str(data), "--model", str(vision_model), "--out", str(out)]
    assert (
        main([*argv, "--max-steps", "4", "--lr", "1e-2", "--batch-size", "2", "--save-steps", "2", "--json"])
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["modality"] == "vision" and metrics["format"] == "messages" and metrics["global_step"] == 4
    assert metrics["final_loss"] < metrics["initial_loss"]
    assert (out / "checkpoint-4").is_dir() and (out / CURVE_PNG).exists()
    register_processors()
    AutoProcessor.from_pretrained(out)  # the saved directory is a loadable VLM with its processor
    trained = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    base = AutoModelForImageTextToText.from_pretrained(vision_model).state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    # Finishing a run twice is refused; --resume with a higher --max-steps continues it.
    assert main([*argv, "--max-steps", "4"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (
        main(
            [*argv, "--max-steps", "5", "--lr", "1e-2", "--batch-size", "2", "--save-steps", "2", "--resume"]
        )
        == 0
    )
    assert json.loads((out / METRICS_FILE).read_text())["global_step"] == 5
    assert main(["train", "sft", "--data", str(data), "--model", str(vision_model)]) == 2
    assert "--out" in capsys.readouterr().err
