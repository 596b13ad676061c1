"""Golden loss masks: exactly which tokens ``agent train sft`` trains on, per chat-template family.

Each example goes through the same path as training (``build_trainer`` -> ``SFTTrainer``'s dataset
preparation -> its data collator), and the tokens whose label is not -100 are decoded run by run and
compared with the expected assistant text(s) plus the end-of-turn token. System, user, feedback and
image tokens must never carry loss.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import trl  # noqa: F401 - a hard dependency: fail, never skip

from sftrl.agents.policy import Reply
from sftrl.agents.runner import run_async, split_config
from sftrl.training.config import SFTTrainConfig
from sftrl.training.sft import build_trainer, inspect_data, load_model
from sftrl.training.sft_data import build_sft_dataset, dataset_features

pytestmark = pytest.mark.slow  # the tiny models' tokenizer is trained once per session (~10 s)

WRONG = "I am not sure."
SYSTEM = "You are a careful card player."
FEEDBACK = "You failed this trial because no formula found in your answer."
END = "<|im_end|>\n"
# TRL's Qwen2.5 training template opens the {% generation %} span before the newline that follows
# '<|im_start|>assistant'; the Qwen2.5-VL one right after it. Both close it after '<|im_end|>\n'.
OPENERS = {"text": "\n", "vision": ""}


class FailOncePolicy:
    """Wrong on the first try of each step, then the expert's reply: real feedback turns in the log."""

    name = "fail-once"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "test"}

    async def generate(self, messages, sampling, *, observation=None, tools=None) -> Reply:
        if observation.kind == "task":
            return Reply(text=WRONG, finish_reason="stop")
        return Reply(text=observation.oracle["expert_reply"], finish_reason="stop")


@pytest.fixture(scope="module", params=["text", "vision"])
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny model of one template family (conftest's, built once), and a real fail-once run."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"masks-{kind}")
    model_dir = request.getfixturevalue(f"tiny_{kind}_model")
    options = {"modality": "vision", "resolution": 64} if kind == "vision" else {}
    run, env_cfg = split_config({"env": "gp", "episodes": 2, "out": root / "run", **options})
    asyncio.run(run_async(run, env_cfg, policy=FailOncePolicy()))
    return {"kind": kind, "root": root, "model": model_dir, "run": root / "run"}


def labelled_runs(data_dir: Path, model_dir: Path) -> list[dict[str, Any]]:
    """Per train row: the decoded runs of trained tokens, the full input ids and labels, the raw row."""
    info = inspect_data(data_dir)
    model, processing_class = load_model(str(model_dir), info.vision)
    cfg = SFTTrainConfig(data=data_dir, model=str(model_dir), out=data_dir.parent / f"{data_dir.name}-ckpt")
    trainer = build_trainer(cfg, info, model, processing_class)
    tok = getattr(processing_class, "tokenizer", processing_class)
    out = []
    for i in range(len(trainer.train_dataset)):
        batch = trainer.data_collator([trainer.train_dataset[i]])  # what the model's forward receives
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        runs: list[list[int]] = []
        for pos, label in enumerate(labels):
            if label == -100:
                continue
            assert label == ids[pos]  # labels are unshifted copies of the trained input ids
            if runs and runs[-1][-1] == pos - 1:
                runs[-1].append(pos)
            else:
                runs.append([pos])
        out.append(
            {
                "trained": [tok.decode([ids[p] for p in run]) for run in runs],
                "untrained": tok.decode([t for t, label in zip(ids, labels, strict=True) if label == -100]),
                "ids": ids,
                "labels": labels,
                "row": info.train[i],
                "tok": tok,
            }
        )
    return out


def assert_no_image_token_trained(item: dict[str, Any], kind: str) -> None:
    tok = item["tok"]
    image_ids = {
        tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
    }
    in_input = sum(1 for t in item["ids"] if t in image_ids)
    assert in_input > 0 if kind == "vision" else in_input == 0
    assert not any(label in image_ids for label in item["labels"])


def write_messages_dataset(out: Path, messages: list[dict[str, Any]], image_png: bytes | None) -> Path:
    """A one-row ``messages`` dataset with sftrl's own schema (what `agent data sft` writes)."""
    from datasets import Dataset, DatasetDict

    vision = image_png is not None
    meta = {"seed": "int64"}
    row: dict[str, Any] = {"seed": 0}
    if vision:
        row["messages"] = messages
        row["images"] = [{"bytes": image_png, "path": None}]
    else:
        row["messages"] = [
            {"role": m["role"], "content": "".join(p["text"] or "" for p in m["content"])} for m in messages
        ]
    features = dataset_features(["messages"], vision, meta)
    DatasetDict({"train": Dataset.from_list([row], features=features)}).save_to_disk(str(out))
    return out


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def test_multi_turn_messages_train_every_assistant_turn_and_nothing_else(family):
    """A hand-made revision chain in `messages` form: both replies are trained, nothing around them."""
    kind, root = family["kind"], family["root"]
    right = '{"cards": ["A", "3", "8", "8"], "number": [1, 3, 8, 8], "formula": "(8-1-3)*8=32"}'
    task = "Cards: A 3 8 8. Make 24."
    user_parts = [{"type": "image", "text": None}, text_part(task)] if kind == "vision" else [text_part(task)]
    messages = [
        {"role": "system", "content": [text_part(SYSTEM)]},
        {"role": "user", "content": user_parts},
        {"role": "assistant", "content": [text_part(WRONG)]},
        {"role": "user", "content": [text_part(FEEDBACK)]},
        {"role": "assistant", "content": [text_part(right)]},
    ]
    png = next((family["run"] / "images").glob("*.png")).read_bytes() if kind == "vision" else None
    data = write_messages_dataset(root / "multi", messages, png)
    [item] = labelled_runs(data, family["model"])
    opener = OPENERS[kind]
    assert item["trained"] == [opener + WRONG + END, opener + right + END]
    for context in (SYSTEM, task, FEEDBACK, "<|im_start|>assistant", "<|im_start|>user"):
        assert context in item["untrained"]
    assert_no_image_token_trained(item, kind)


def test_success_rows_train_only_the_accepted_reply(family):
    kind = family["kind"]
    data = family["root"] / "success"
    build_sft_dataset([family["run"]], data, chains="success", val_fraction=0.0)
    items = labelled_runs(data, family["model"])
    assert len(items) == 2
    for item in items:
        reply = item["row"]["messages"][-1]["content"]
        reply = reply if isinstance(reply, str) else reply[0]["text"]
        assert item["trained"] == [OPENERS[kind] + reply + END]
        assert WRONG not in item["untrained"] + "".join(item["trained"])  # the failed try is not in the row
        assert "You failed this trial" not in item["untrained"]
        assert "[Task Description]" in item["untrained"] and "<|im_start|>system" in item["untrained"]
        assert_no_image_token_trained(item, kind)


def test_full_chains_keep_failed_attempts_and_feedback_as_untrained_context(family):
    """`--chains full`: prompt = task, failed reply, feedback; only the corrected reply is trained."""
    kind = family["kind"]
    data = family["root"] / "full"
    build_sft_dataset([family["run"]], data, chains="full", val_fraction=0.0)
    items = labelled_runs(data, family["model"])
    assert len(items) == 2
    for item in items:
        completion = item["row"]["completion"][0]["content"]
        reply = completion if isinstance(completion, str) else completion[0]["text"]
        # Prompt and completion are tokenised separately, so the completion starts after the newline.
        assert item["trained"] == [reply + END]
        untrained = item["untrained"]
        assert f"<|im_start|>assistant\n{WRONG}<|im_end|>" in untrained
        assert "<|im_start|>user\nYou failed this trial because" in untrained
        assert untrained.endswith("<|im_start|>assistant\n")  # the generation cue is context too
        assert_no_image_token_trained(item, kind)
