"""CLI flags are generated from the config models: every field has a flag, help shows its real default."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sftrl.agents.runner import RunConfig, split_config
from sftrl.cli import _run_values, build_parser, main, train_rl_config
from sftrl.cli_flags import default_text, is_model
from sftrl.environments.generalpoints.env import GeneralPointsConfig
from sftrl.environments.virl.env import VIRLConfig
from sftrl.training.config import SFTTrainConfig
from sftrl.training.rl import RLConfig
from sftrl.training.rl_train import RLRunConfig


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _actions(*path: str, argv: list[str] | None = None) -> dict[str, argparse.Action]:
    parser = _subparser(build_parser(argv or list(path)), *path)
    return {a.dest: a for a in parser._actions}


def _fields(model):
    """(dest, field) for every field, nested models flattened the way the CLI flattens them."""
    out = []
    for name, field in model.model_fields.items():
        if is_model(field.annotation):
            sub = field.annotation
            for sub_name, sub_field in sub.model_fields.items():
                dest = f"{name}_{sub_name}" if sub_name in model.model_fields else sub_name
                out.append((dest, sub_field))
        else:
            out.append((name, field))
    return out


@pytest.mark.parametrize(
    ("path", "model", "skip"),
    [
        (("run",), RunConfig, set()),
        (("train", "rl"), RLRunConfig, {"env_options"}),
        (("train", "sft"), SFTTrainConfig, set()),
    ],
)
def test_every_config_field_has_a_flag_with_its_default_and_description(path, model, skip):
    actions = _actions(*path)
    for dest, field in _fields(model):
        if dest in skip:
            continue
        assert dest in actions, f"{model.__name__}.{dest} has no flag in `agent {' '.join(path)}`"
        helptext = actions[dest].help or ""
        default = default_text(field)
        if default:
            assert f"(default: {default})" in helptext, (dest, helptext)
        if field.description:
            assert " ".join(field.description.split())[:30] in " ".join(helptext.split()), (dest, helptext)


def test_rl_hyper_parameters_are_flat_flags_and_old_names_still_work(tmp_path: Path):
    rl_fields = set(RLConfig.model_fields) - {"seed"}
    assert rl_fields <= set(_actions("train", "rl"))
    argv = [
        "train", "rl", "--model", "m", "--out", str(tmp_path / "o"), "--max-steps", "3", "--algo", "grpo",
        "--lr", "3e-4", "--group-size", "2", "--episodes", "runs/a", "runs/b", "--seed", "7",
        "--base-url", "http://a/v1", "--base-url", "http://b/v1", "--rollout-option", "dtype=float32",
        "--verify-iter", "3",
    ]  # fmt: skip
    ns = build_parser(argv).parse_args(argv)
    trainer, cfg = train_rl_config(ns)
    assert trainer == "sftrl" and cfg.updates == 3 and cfg.group_size == 2
    assert cfg.rl.algo == "grpo" and cfg.rl.lr == 3e-4 and cfg.rl.seed == 7 and cfg.seed == 7
    assert cfg.episodes == [Path("runs/a"), Path("runs/b")]
    assert cfg.base_url == ["http://a/v1", "http://b/v1"]
    assert cfg.rollout_options == {"dtype": "float32"} and cfg.env_options == {"verify_iter": 3}
    ns = build_parser(["train", "rl"]).parse_args(
        ["train", "rl", "--model", "m", "--out", "o", "--updates", "2"]
    )
    assert train_rl_config(ns)[1].updates == 2


def test_flags_override_the_config_file_key_by_key(tmp_path: Path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "policy: random\nepisodes: 4\ntemperature: 0.9\nsampling:\n  max_new_tokens: 9\n"
        "policy_options:\n  device: cpu\nverify_iter: 3\n"
    )
    argv = ["run", "--config", str(cfg), "--temperature", "0.3", "--sampling-seed", "4"]
    argv += ["--policy-option", "dtype=float32", "--group-size", "2"]
    run, env_cfg = split_config(_run_values(build_parser(argv).parse_args(argv)))
    assert run.policy == "random" and run.episodes == 4 and run.group_size == 2
    assert run.sampling.temperature == 0.3 and run.sampling.seed == 4 and run.sampling.max_new_tokens == 9
    assert run.policy_options == {"device": "cpu", "dtype": "float32"}
    assert env_cfg["verify_iter"] == 3


@pytest.mark.parametrize(
    ("env", "model", "absent"),
    [("virl", VIRLConfig, "--target"), ("gp", GeneralPointsConfig, "--city")],
)
def test_per_env_help_shows_that_envs_options_defaults_and_splits(env, model, absent, capsys):
    assert main(["run", "--env", env, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for name in model.model_fields:
        assert f"--{name.replace('_', '-')}" in out
    actions = _actions("run", argv=["run", "--env", env])
    assert actions["verify_iter"].help.endswith(f"(default: {model.model_fields['verify_iter'].default})")
    assert actions["resolution"].help.endswith(f"(default: {model.model_fields['resolution'].default})")
    assert list(actions["split"].choices) == list(model.model_fields["split"].annotation.__args__)
    assert absent not in out
    # An option of another env is refused at once.
    assert main(["run", "--env", env, absent, "1"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_help_without_env_labels_each_envs_default(capsys):
    actions = _actions("run")
    assert "gp 5, virl 2" in actions["verify_iter"].help
    assert "gp 1200, virl 320" in actions["resolution"].help
    assert "virl: id, rule-ood, visual-ood, nyc-unseen" in " ".join(actions["split"].help.split())
    assert "[virl only]" in actions["city"].help and "[gp only]" in actions["target"].help
