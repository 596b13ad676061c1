"""Training options are honoured or refused, never dropped without a word (issue 13, item 20)."""

from __future__ import annotations

import pytest
import trl
from trl import GRPOConfig, SFTConfig

from sftrl.cli import main
from sftrl.training.sft import TRLVersionError, declared_trl_range, trl_config
from sftrl.training.trl_grpo import TRL_UNUSED_RL_OPTIONS


def test_an_option_the_installed_trl_lacks_is_refused_not_dropped(tmp_path):
    with pytest.raises(
        TRLVersionError,
        match=rf"TRL {trl.__version__} \(transformers .*\) has no SFTConfig option no_such_opt",
    ):
        trl_config(SFTConfig, {"output_dir": str(tmp_path), "no_such_opt": 1, "learning_rate": 0.5})
    ok = {"output_dir": str(tmp_path), "learning_rate": 0.5, "use_cpu": True, "bf16": False}
    assert trl_config(GRPOConfig, ok).learning_rate == 0.5


def test_a_renamed_option_reaches_an_older_transformers_by_its_old_name(tmp_path):
    # transformers releases before `activation_checkpointing` (e.g. 5.17, on CUDA images) know only
    # `gradient_checkpointing`: the setting still arrives, under the name that release has.
    from dataclasses import dataclass

    @dataclass
    class OlderArgs:
        output_dir: str
        gradient_checkpointing: bool = False

    both = {"output_dir": str(tmp_path), "activation_checkpointing": True, "gradient_checkpointing": True}
    assert trl_config(OlderArgs, both).gradient_checkpointing is True
    with pytest.raises(TRLVersionError, match="has no OlderArgs option activation_checkpointing"):
        trl_config(OlderArgs, {**both, "gradient_checkpointing": False})  # differing values: refused
    installed = trl_config(SFTConfig, {**both, "use_cpu": True})  # whichever names this release has
    assert installed.gradient_checkpointing is True
    assert getattr(installed, "activation_checkpointing", True) is True


def test_the_declared_trl_range_holds_the_installed_trl():
    from packaging.requirements import Requirement

    req = Requirement(declared_trl_range())
    assert req.name == "trl" and req.specifier and trl.__version__ in req.specifier


@pytest.mark.parametrize("option", TRL_UNUSED_RL_OPTIONS)
def test_trl_trainer_refuses_rl_options_it_cannot_honour(tmp_path, capsys, option):
    value = "false" if option == "normalize_advantages" else "0.3"
    config = tmp_path / "rl.yaml"
    config.write_text(f"rl:\n  {option}: {value}\n")
    args = ["train", "rl", "--trainer", "trl", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o")]
    assert main([*args, "--group-size", "2", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"--trainer trl cannot honour {option}" in err and err.count("\n") == 1


def test_trl_trainer_refuses_the_per_reply_loss_average(tmp_path, capsys):
    args = ["train", "rl", "--trainer", "trl", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o")]
    assert main([*args, "--group-size", "2", "--loss-agg", "reply"]) == 2
    err = capsys.readouterr().err
    assert "--loss-agg reply needs --trainer sftrl" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("distributed_type", "zero_stage", "refused"),
    [
        ("FSDP", None, "FSDP"),
        ("DEEPSPEED", 3, "DeepSpeed ZeRO-3"),
        ("DEEPSPEED", 2, None),
        ("MULTI_GPU", None, None),
        ("MULTI_CPU", None, None),
        ("NO", None, None),
    ],
)
def test_rl_refuses_sharded_parameters_it_does_not_gather(distributed_type, zero_stage, refused):
    from sftrl.training.rl_train import check_full_weights
    from sftrl.training.transitions import TransitionError

    if refused is None:
        check_full_weights(distributed_type, zero_stage)
    else:
        with pytest.raises(TransitionError, match=f"does not run under accelerate's {refused}: .*--fsdp"):
            check_full_weights(distributed_type, zero_stage)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--fsdp shards over the processes of accelerate launch: start 2 or more"),
        (["--lora-r", "4"], "--fsdp shards full-model training; LoRA adapters are small"),
        (["--async-rollouts"], "--fsdp runs several processes; --async-rollouts runs in one"),
    ],
)
def test_fsdp_without_processes_to_shard_over_is_refused(tiny_text_model, tmp_path, capsys, extra, message):
    out = tmp_path / "rl"
    args = ["train", "rl", "--model", str(tiny_text_model), "--out", str(out), "--max-steps", "1"]
    assert main([*args, "--fsdp", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    ("precision", "refused"), [("no", False), ("bf16", False), ("fp16", True), ("fp8", True)]
)
def test_fsdp_takes_fp32_or_bf16_compute(tmp_path, precision, refused):
    from sftrl.training.rl_train import RLRunConfig, check_fsdp
    from sftrl.training.transitions import TransitionError

    cfg = RLRunConfig(model="m", out=tmp_path, fsdp=True)
    if not refused:
        check_fsdp(cfg, 2, precision)
        return
    with pytest.raises(
        TransitionError, match=f"asks for {precision} mixed precision: .*--mixed_precision bf16"
    ):
        check_fsdp(cfg, 2, precision)


def test_an_fsdp_request_accelerate_ignores_is_refused(monkeypatch):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from sftrl.training.tracking import DistributedSetupError, check_distributed_type

    cpu = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)
    check_distributed_type(cpu)  # no FSDP asked: fine
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(
        DistributedSetupError, match="asked for FSDP but accelerate runs this process as MULTI_CPU"
    ):
        check_distributed_type(cpu)
    check_distributed_type(SimpleNamespace(distributed_type=DistributedType.FSDP))


def test_activation_checkpointing_default_and_refusal():
    import torch
    import transformers

    from sftrl.training.sft import CHECKPOINTING_MIN_PARAMS, wants_checkpointing

    def llama(hidden: int) -> transformers.LlamaForCausalLM:
        config = transformers.LlamaConfig(
            vocab_size=32000, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=8,
        )  # fmt: skip
        with torch.device("meta"):  # shapes only: no memory for the 100M+ one
            return transformers.LlamaForCausalLM(config)

    large, small = llama(1024), llama(64)
    assert sum(p.numel() for p in large.parameters()) >= CHECKPOINTING_MIN_PARAMS
    assert wants_checkpointing(None, large) and not wants_checkpointing(None, small)
    assert wants_checkpointing(True, small) and not wants_checkpointing(False, large)
    with torch.device("meta"):
        plain = torch.nn.Sequential(*(torch.nn.Linear(8192, 8192) for _ in range(2)))  # no such support
    assert not wants_checkpointing(None, plain)  # the default skips it
    with pytest.raises(ValueError, match="Sequential does not support activation checkpointing: drop"):
        wants_checkpointing(True, plain)
