"""The char-vision tiny VLM (tiny LLaVA): offline build, stock loading, episodes, SFT, RL consistency."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sftrl.agents.hf_policy import HFPolicy
from sftrl.agents.runner import run_async, split_config
from sftrl.agents.tiny import TinyModelError, build_char_model, char_tokenizer
from sftrl.agents.tiny_vlm import IMAGE_TOKEN, build_char_vision_model
from sftrl.agents.trajectory import read_episodes
from sftrl.cli import main
from sftrl.environments.generalpoints.render import render_hand
from sftrl.training.rl import Learner, RLConfig
from sftrl.training.transitions import load_episodes

PROMPT = "J=10 Q=10 K=10 | 24"


def _chat(reply: str | None = None) -> list[dict[str, Any]]:
    chat: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}
    ]
    if reply is not None:
        chat.append({"role": "assistant", "content": reply})
    return chat


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vlm") / "char-vision"
    assert main(["tiny-model", "--kind", "char-vision", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def policy(vlm: Path) -> HFPolicy:
    return HFPolicy(vlm)


def test_builds_offline_and_loads_with_the_stock_auto_classes(vlm: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(vlm)  # no sftrl registration involved
    model = AutoModelForImageTextToText.from_pretrained(vlm)
    assert type(proc).__name__ == "LlavaProcessor" and type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(proc.image_processor).__name__ == "CLIPImageProcessorPil"  # no torchvision needed
    assert model.config.text_config.model_type == "llama" and model.config.text_config.hidden_size == 128
    encoder = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    assert 200_000 < sum(p.numel() for p in encoder) < 600_000  # "a few hundred k"
    # The char model's ids, one <image> token appended after them.
    tok, char = proc.tokenizer, char_tokenizer()
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == len(char)
    assert tok("A=1 5=5: (5-1)*6")["input_ids"] == char("A=1 5=5: (5-1)*6")["input_ids"]
    text = proc.apply_chat_template(_chat(), add_generation_prompt=True, tokenize=False)
    assert text == f"<|user|>{IMAGE_TOKEN}{PROMPT}<|assistant|>"
    enc = proc(text=[text], images=[render_hand(["AS", "5C", "JS", "3C"], 200)], return_tensors="pt")
    assert tuple(enc["pixel_values"].shape) == (1, 3, 64, 64)  # any render size is resized to 64 px
    assert enc["input_ids"][0].tolist().count(model.config.image_token_id) == 64  # (64 / 8)² patches


def test_the_image_reaches_the_decoder(policy: HFPolicy) -> None:
    hands = (["AS", "5C", "JS", "3C"], ["KC", "2S", "9S", "7C"])

    def last_logits(hand: list[str]) -> torch.Tensor:
        enc = policy.encode_chat(_chat(), [render_hand(hand, 64)])
        with torch.no_grad():
            out = policy.model(input_ids=torch.tensor([enc["input_ids"]]), pixel_values=enc["pixel_values"])
        return out.logits[0, -1]

    a, b = last_logits(hands[0]), last_logits(hands[1])
    assert torch.equal(a, last_logits(hands[0]))
    assert (a - b).abs().max() > 1e-4  # another hand, another next-token distribution


def test_the_assistant_mask_covers_the_reply_and_its_end_token(policy: HFPolicy) -> None:
    reply = "A=1 5=5 J=10 3=3: (5-1)*(10-3)"
    chat = _chat(reply)
    # The image inside the message (not an images= argument): the form transformers 5.18 to 5.25 take.
    chat[0]["content"][0]["image"] = render_hand(["AS", "5C", "JS", "3C"], 64)
    out = policy.processor.apply_chat_template(
        [chat],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = out["input_ids"][0]
    mask = out["assistant_masks"][0]
    trained = [t for t, m in zip(ids, mask, strict=True) if m]
    assert policy.tokenizer.decode(trained) == reply + "<|end|>"


def test_text_model_seeds_the_language_tower(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    char = build_char_model(tmp_path / "char", seed=3, hidden=64, layers=2, heads=2)
    vlm = build_char_vision_model(tmp_path / "vlm", text_model=char)
    text_model = AutoModelForCausalLM.from_pretrained(char)
    model = AutoModelForImageTextToText.from_pretrained(vlm)
    assert model.config.text_config.hidden_size == 64  # the text model's sizes win
    ids = torch.tensor([char_tokenizer()("<|user|>A 5 J 3 | 24<|assistant|>")["input_ids"]])
    with torch.no_grad():
        want, got = text_model(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.allclose(want, got[..., : want.shape[-1]], atol=1e-5)
    with pytest.raises(TinyModelError, match="multiple of the patch size"):
        build_char_vision_model(tmp_path / "bad", image_size=60, patch_size=8)


def test_cli_run_gp_vision_compact_with_the_hf_policy(vlm: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "run"
    argv = ["run", "--env", "gp", "--modality", "vision", "--prompt-style", "compact", "--policy", "hf"]
    argv += ["--model", str(vlm), "--episodes", "4", "--max-new-tokens", "16", "--resolution", "64"]
    assert main([*argv, "--concurrency", "4", "--out", str(out), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 4 and summary["errors"] == 0 and "recognition_accuracy" in summary
    record = read_episodes(out)[0]
    assert any(b.get("type") == "image" for b in record.turns[0].prompt[0]["content"])
    assert record.turns[0].reply.token_ids and record.turns[0].reply.logprobs
    # The learner's recomputed log-probs (one full forward, images read back from the run dir, the
    # <image> token suppressed as in sampling, as `agent train rl` sets it) match the rollout's: plain
    # RoPE, so the gap is float rounding only, batched (--concurrency 4, left padding) or not.
    policy = HFPolicy(vlm)
    batch = load_episodes([out])
    enc = policy.encode_transition(batch.transitions[0])
    assert enc["input_ids"].count(policy.model.config.image_token_id) == 64
    assert policy.suppressed_token_ids == [policy.model.config.image_token_id]
    learner = Learner(
        policy.model,
        policy.encode_transition,
        RLConfig(algo="grpo"),
        pad_token_id=policy.pad_token_id,
        suppressed_token_ids=policy.suppressed_token_ids,
    )
    assert learner.check_consistency(batch.transitions) < 1e-5


def test_virl_vision_paper_prompt_runs(policy: HFPolicy, tmp_path: Path) -> None:
    values = {"env": "virl", "modality": "vision", "resolution": 16, "episodes": 2, "concurrency": 2}
    run, env_cfg = split_config({**values, "out": tmp_path / "virl", "sampling": {"max_new_tokens": 8}})
    summary = asyncio.run(run_async(run, env_cfg, policy=policy))
    assert summary["episodes"] == 2 and summary["errors"] == 0
    turn = read_episodes(tmp_path / "virl")[0].turns[0]
    assert turn.reply.token_ids  # the ~1.6k-character paper prompt fits the 2048-token context


def test_sft_on_expert_vision_data_trains_the_image_encoder(vlm: Path, tmp_path: Path, capsys: Any) -> None:
    from transformers import AutoModelForImageTextToText

    runs, data, out = tmp_path / "R", tmp_path / "D", tmp_path / "T"
    argv = ["run", "--env", "gp", "--modality", "vision", "--prompt-style", "compact", "--policy", "expert"]
    assert main([*argv, "--episodes", "8", "--resolution", "64", "--out", str(runs), "--quiet"]) == 0
    assert main(["data", "sft", str(runs), "--out", str(data), "--json"]) == 0
    capsys.readouterr()
    train = ["train", "sft", "--data", str(data), "--model", str(vlm), "--out", str(out), "--max-steps", "2"]
    assert main([*train, "--batch-size", "4", "--lr", "1e-3", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["modality"] == "vision" and metrics["global_step"] == 2
    assert metrics["final_loss"] < metrics["initial_loss"]
    base = AutoModelForImageTextToText.from_pretrained(vlm).state_dict()
    trained = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    for part in ("vision_tower", "multi_modal_projector", "language_model"):
        keys = [k for k in base if f".{part}." in k]
        assert keys and any(not torch.equal(trained[k], base[k]) for k in keys), part


def test_ppo_update_on_the_vlm_is_finite(vlm: Path, tmp_path: Path, capsys: Any) -> None:
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "rl"
    argv = ["train", "rl", "--env", "gp", "--modality", "vision", "--prompt-style", "compact"]
    argv += [
        "--resolution",
        "64",
        "--model",
        str(vlm),
        "--out",
        str(out),
        "--max-steps",
        "1",
        "--algo",
        "ppo",
    ]
    argv += [
        "--episodes-per-update",
        "4",
        "--concurrency",
        "4",
        "--max-new-tokens",
        "8",
        "--verify-iter",
        "1",
    ]
    assert main([*argv, "--no-eval-at-start", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The <image> token is suppressed (p = 0): its 0 * log 0 must not turn the entropy, and through
    # it the loss and every weight, into NaN.
    for key in ("policy_loss", "value_loss", "entropy"):
        assert metrics[key] == metrics[key], key  # not NaN
    assert metrics["entropy"] > 0.0 and metrics["logprob_gap"] < 1e-5
    trained = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    assert all(torch.isfinite(v).all() for v in trained.values())


def test_cli_sizes_the_decoder(tmp_path: Path, capsys: Any) -> None:
    from transformers import AutoConfig

    out = tmp_path / "small"
    argv = ["tiny-model", "--kind", "char-vision", "--out", str(out)]
    assert main([*argv, "--hidden", "64", "--layers", "2", "--heads", "2"]) == 0
    text = AutoConfig.from_pretrained(out).text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (64, 2, 2)
    assert main(argv) == 2  # not empty
    assert "--overwrite" in capsys.readouterr().err
