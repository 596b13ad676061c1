"""FLOP budgets, periodic evaluation and off-policy updates of `agent train sft|rl`, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftrl.cli import main
from sftrl.training.evaluation import EvalError, FlopCounter, parse_eval_env, validate_specs


def test_eval_env_specs_parse_and_bad_ones_say_why() -> None:
    spec = parse_eval_env("ood=gp:split=rule-ood,prompt_style=compact,episodes=5")
    assert spec.name == "ood"
    assert spec.values == {"env": "gp", "split": "rule-ood", "prompt_style": "compact", "episodes": "5"}
    assert parse_eval_env("gp:split=id").name == "gp-id"
    assert not spec.final_only and parse_eval_env("all=gp:episodes=9,at=final").final_only
    assert "at" not in parse_eval_env("all=gp:episodes=9,at=final").values
    sampled = parse_eval_env("t1=gp:temperature=1,episodes=3")
    assert sampled.temperature == 1.0 and "temperature" not in sampled.values and spec.temperature == 0.0
    validate_specs([spec])
    for bad in (
        "",
        "x=:split=id",
        "gp:split",
        "a b=gp",
        "gp:at=sometimes",
        "gp:temperature=hot",
        "gp:temperature=-1",
    ):
        with pytest.raises(EvalError):
            parse_eval_env(bad)
    with pytest.raises(EvalError, match="colour"):
        validate_specs([parse_eval_env("gp:colour=red")])
    with pytest.raises(EvalError, match="differ"):
        validate_specs([parse_eval_env("a=gp"), parse_eval_env("a=gp:split=id")])


def test_flop_counter_counts_training_and_forward_tokens() -> None:
    flops = FlopCounter(1000)
    flops.train(10)
    flops.forward(5)
    assert flops.total == 6 * 1000 * 10 + 2 * 1000 * 5


@pytest.fixture(scope="module")
def char_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sftrl.agents.tiny import build_char_model

    return build_char_model(tmp_path_factory.mktemp("char") / "m", hidden=32, layers=1, heads=1)


EVAL = "id=gp:prompt_style=compact,verify_iter=2,episodes=4"
FINAL = "big=gp:prompt_style=compact,verify_iter=2,episodes=6,at=final,temperature=1"


def test_train_sft_stops_at_the_flop_budget_and_evaluates_on_the_way(
    char_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sftrl.repro.stage0 import build_dataset

    data = build_dataset(tmp_path / "data", 64, seed=0, val_rows=4)
    out = tmp_path / "sft"
    argv = ["train", "sft", "--data", str(data), "--model", str(char_model), "--out", str(out)]
    argv += ["--max-steps", "1000", "--batch-size", "4", "--lr", "1e-3", "--max-flops", "3e8"]
    argv += ["--eval-env", EVAL, "--eval-env", FINAL, "--eval-every", "3", "--eval-max-new-tokens", "12"]
    assert main([*argv, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    step_flops = metrics["flops"] / metrics["global_step"]
    # It stopped at the first step past the budget (long before max_steps).
    assert 3e8 <= metrics["flops"] < 3e8 + 2 * step_flops and metrics["global_step"] < 1000
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in evals]
    assert steps[0] == 0 and steps[-1] == metrics["global_step"]
    assert all(s % 3 == 0 for s in steps[1:-1]) and len(steps) >= 3
    assert [e["flops"] for e in evals] == sorted(e["flops"] for e in evals)
    assert evals[-1]["flops"] == metrics["flops"]
    assert all(e["id"]["episodes"] == 4 and e["id"]["errors"] == 0 for e in evals)
    # at=final: the large set is played once, at the end (with the every-point specs).
    assert ["big" in e for e in evals] == [False] * (len(evals) - 1) + [True]
    assert evals[-1]["big"]["episodes"] == 6
    # temperature=1 samples (the policy as RL trains it); the other specs decode greedily.
    for name, temperature in (("big", 1.0), ("id", 0.0)):
        logged = (Path(evals[-1][name]["out"]) / "episodes.jsonl").read_text().splitlines()
        assert {t["reply"]["sampling"]["temperature"] for x in logged for t in json.loads(x)["turns"]} == {
            temperature
        }
    assert (out / "eval_curve.png").exists()
    # The evaluated episodes are ordinary runs: `agent eval` recomputes the logged rate.
    assert main(["eval", evals[-1]["id"]["out"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["success_rate"] == evals[-1]["id"]["success_rate"]


def test_train_sft_refuses_a_bad_eval_env_before_training(
    char_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sftrl.repro.stage0 import build_dataset

    data = build_dataset(tmp_path / "data", 8, seed=0, val_rows=2)
    argv = ["train", "sft", "--data", str(data), "--model", str(char_model), "--out", str(tmp_path / "o")]
    assert main([*argv, "--eval-env", "gp:no_such_option=1"]) == 2
    err = capsys.readouterr().err
    assert "no_such_option" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "eval.jsonl").exists()


def test_offline_rl_keeps_updating_after_the_model_moved(
    char_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Logged episodes are checked against the model that sampled them (before update 1); later updates
    are off-policy by design and use the logged log-probs as the behaviour policy, never abort."""
    runs = tmp_path / "runs"
    assert (
        main(
            ["run", "--env", "gp", "--prompt-style", "compact", "--verify-iter", "2", "--policy", "hf"]
            + ["--model", str(char_model), "--episodes", "8", "--concurrency", "8", "--logprobs"]
            + ["--max-new-tokens", "12", "--out", str(runs)]
        )
        == 0
    )
    out = tmp_path / "rl"
    argv = ["train", "rl", "--episodes", str(runs), "--model", str(char_model), "--out", str(out)]
    assert main([*argv, "--algo", "ppo", "--max-steps", "3", "--lr", "3e-2", "--json"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3]
    assert rows[0]["logprob_gap"] < 1e-3 and rows[1]["logprob_gap"] is None
    assert rows[-1]["approx_kl"] != 0.0  # the model did move away from the behaviour policy
    assert all(r["flops"] > 0 for r in rows) and rows[-1]["flops"] > rows[0]["flops"]


def test_rl_reports_updates_without_learning_signal(
    char_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sftrl.agents import factory

    built: list[object] = []
    real = factory.make_trainable_policy

    def keep(model: str, **options: object) -> object:
        built.append(policy := real(model, **options))
        return policy

    monkeypatch.setattr(factory, "make_trainable_policy", keep)
    out = tmp_path / "rl"
    argv = ["train", "rl", "--env", "gp", "--prompt-style", "compact", "--verify-iter", "1"]
    argv += ["--model", str(char_model), "--out", str(out), "--algo", "grpo", "--max-steps", "1"]
    argv += ["--episodes-per-update", "12", "--group-size", "12", "--max-new-tokens", "4"]
    argv += ["--concurrency", "12", "--eval-env", EVAL, "--eval-env", FINAL, "--eval-max-new-tokens", "4"]
    assert main(argv) == 0
    # The episodes that run at once share one generate call (rollouts and evaluation alike).
    (policy,) = built
    assert max(policy.batches) == 12  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    (row,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # 12 random-weight replies of 4 characters all fail the same way: one group, equal returns.
    assert row["zero_advantage_fraction"] == 1.0 and row["policy_loss"] == 0.0
    assert "no learning signal" in err
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 1]
    assert "big" not in evals[0] and evals[1]["big"]["episodes"] == 6
    logged = json.loads((out / "eval" / "step-000001" / "id" / "episodes.jsonl").read_text().splitlines()[0])
    assert logged["policy"]["model"] == f"{out}@step-1"  # the weights evaluated, not the start model


def test_sampled_evaluations_draw_from_the_eval_seed_alone(char_model: Path, tmp_path: Path) -> None:
    """Every evaluation plays the same seeds, sampled ones included: the same replies whatever the
    evaluated policy's own seed (a training seed, another trainer), so two evaluations' difference
    is the weights' (common random numbers); another --eval-seed samples other replies."""
    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.training.evaluation import evaluate

    spec = parse_eval_env("t1=gp:prompt_style=compact,verify_iter=2,episodes=4,temperature=1")

    def replies(policy_seed: int, eval_seed: int) -> list[str]:
        policy = HFPolicy(str(char_model), seed=policy_seed, max_batch_size=4)
        out = tmp_path / f"p{policy_seed}-e{eval_seed}"
        row = evaluate(policy, [spec], out, step=0, flops=0.0, episodes=4, seed=eval_seed, max_new_tokens=12)
        logged = (Path(row["t1"]["out"]) / "episodes.jsonl").read_text().splitlines()
        return [t["reply"]["text"] for x in logged for t in json.loads(x)["turns"]]

    first = replies(1, 7)
    assert replies(2, 7) == first
    assert replies(1, 8) != first
