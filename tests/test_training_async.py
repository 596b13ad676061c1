"""`agent train rl --async-rollouts`: versioned episodes, bounded staleness, truncated importance weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sftrl.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def char_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sftrl.agents.tiny import build_char_model

    return build_char_model(tmp_path_factory.mktemp("char") / "m", hidden=32, layers=1, heads=1)


def _argv(model: Path, out: Path, *extra: str) -> list[str]:
    argv = ["train", "rl", "--env", "gp", "--prompt-style", "compact", "--verify-iter", "2"]
    argv += ["--model", str(model), "--out", str(out), "--max-new-tokens", "12", "--concurrency", "4"]
    argv += ["--episodes-per-update", "4", "--group-size", "2", "--lr", "3e-2", "--save-every", "2"]
    return argv + list(extra)


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]


def _episodes(rollout_dir: str | Path) -> list:
    from sftrl.agents.trajectory import read_episodes

    return sorted(read_episodes(Path(rollout_dir)), key=lambda r: r.episode_index)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_async_run_records_versions_and_bounds_staleness(algo: str, char_model: Path, tmp_path: Path) -> None:
    out = tmp_path / algo
    argv = _argv(char_model, out, "--algo", algo, "--max-steps", "4", "--async-rollouts")
    assert main([*argv, "--max-staleness", "2", "--is-cap", "1.5"]) == 0
    rows = _rows(out)
    assert [r["update"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        version = r["update"] - 1  # the learner's version when it consumed the batch
        assert r["policy_version"] == version
        # Every episode's record names the weights that sampled it, within the bound.
        sampled = [rec.policy["policy_version"] for rec in _episodes(r["rollouts"])]
        assert len(sampled) == 4 and all(0 <= version - v <= 2 for v in sampled)
        ages = [version - v for v in sampled]
        assert r["staleness_max"] == max(ages) and r["staleness_mean"] == pytest.approx(sum(ages) / 4)
        assert 0 < r["is_weight_mean"] <= 1.5 and r["is_weight_max"] > 0
        assert 0 <= r["is_capped_fraction"] <= 1 and r["logprob_gap"] >= 0
        assert r["updates_per_s"] > 0 and r["episodes_per_s"] == pytest.approx(4 * r["updates_per_s"])
        for k in ("learner_wait_s", "rollout_wait_s", "collect_s", "policy_loss", "entropy"):
            assert math.isfinite(r[k])
    # Batch 0 is sampled by the initial weights, which the learner still holds: on-policy, weight 1.
    assert rows[0]["staleness_max"] == 0 and rows[0]["logprob_gap"] < 1e-3
    assert rows[0]["is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    # With lr 3e-2 the model moves: a batch sampled by an older version is visibly off-policy.
    stale = [r for r in rows if r["staleness_max"] > 0]
    assert stale and max(r["logprob_gap"] for r in stale) > 1e-3
    assert (out / "checkpoint-4" / "learner_state.pt").exists() and (out / "model.safetensors").exists()


def test_max_staleness_zero_is_the_synchronous_order(char_model: Path, tmp_path: Path) -> None:
    """K = 0: each batch is sampled by the weights after the previous update, as the sync loop does;
    the same seeds then give the same episodes, and the losses agree up to float noise."""
    base = ["--algo", "grpo", "--max-steps", "3"]
    assert main(_argv(char_model, tmp_path / "sync", *base)) == 0
    assert main(_argv(char_model, tmp_path / "async", *base, "--async-rollouts", "--max-staleness", "0")) == 0
    sync, asyn = _rows(tmp_path / "sync"), _rows(tmp_path / "async")
    assert len(sync) == len(asyn) == 3
    for s, a in zip(sync, asyn, strict=True):
        replies = [[t.reply.text for t in rec.turns] for rec in _episodes(s["rollouts"])]
        assert replies == [[t.reply.text for t in rec.turns] for rec in _episodes(a["rollouts"])]
        assert a["staleness_max"] == 0 and a["rollout_wait_s"] >= 0
        assert a["is_weight_mean"] == pytest.approx(1.0, abs=1e-3) and a["is_capped_fraction"] == 0
        assert a["logprob_gap"] < 1e-3 and s["logprob_gap"] < 1e-3
        for k in ("reward", "success_rate", "tokens"):
            assert a[k] == s[k]
        assert a["policy_loss"] == pytest.approx(s["policy_loss"], abs=1e-4)
        assert "staleness_max" not in s and "is_weight_mean" not in s  # sync metrics as before


def test_async_checkpoint_resume_continues_the_versions(char_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "rl"
    flags = ["--algo", "grpo", "--async-rollouts", "--max-staleness", "1"]
    assert main(_argv(char_model, out, *flags, "--max-steps", "2")) == 0
    # A batch the stopped run had collected beyond its checkpoint is re-collected on resume.
    (out / "rollouts" / "update-00002").mkdir(parents=True, exist_ok=True)
    (out / "rollouts" / "update-00002" / "stale-marker").write_text("lost future")
    assert main(_argv(char_model, out, *flags, "--max-steps", "4", "--resume")) == 0
    rows = _rows(out)
    assert [r["update"] for r in rows] == [1, 2, 3, 4]
    assert [r["policy_version"] for r in rows] == [0, 1, 2, 3]
    assert not (out / "rollouts" / "update-00002" / "stale-marker").exists()
    for r in rows[2:]:
        sampled = [rec.policy["policy_version"] for rec in _episodes(r["rollouts"])]
        assert all(2 <= v <= r["policy_version"] for v in sampled)  # resumed from version 2
    assert (out / "checkpoint-4" / "learner_state.pt").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--max-staleness", "2"], "--max-staleness applies only with --async-rollouts"),
        (["--is-cap", "3"], "--is-cap applies only with --async-rollouts"),
        (["--async-rollouts", "--is-cap", "0.5"], "is-cap: Input should be greater than or equal to 1"),
        (["--async-rollouts", "--max-staleness", "-1"], "max-staleness"),
        (["--async-rollouts", "--lora-r", "4"], "LoRA"),
        (["--async-rollouts", "--trainer", "trl", "--algo", "grpo"], "--trainer sftrl"),
    ],
)
def test_bad_async_flag_combinations_say_why_in_one_line(
    extra: list[str], needle: str, char_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    assert main(_argv(char_model, out, "--max-steps", "1", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (out / "metrics.jsonl").exists()


def test_async_refuses_logged_episodes(
    char_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "train",
        "rl",
        "--episodes",
        str(tmp_path),
        "--model",
        str(char_model),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--async-rollouts"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot learn from --episodes" in err and len(err.splitlines()) == 1


def test_truncated_importance_weights_scale_the_grpo_loss(char_model: Path, tmp_path: Path) -> None:
    """The learner's correction on real transitions: behaviour log-probs shifted by known amounts give
    known weights (one truncated at the cap), and the first step's loss is -mean(advantage x weight)."""
    import torch

    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.training.advantages import group_advantages
    from sftrl.training.rl import Learner, RLConfig
    from sftrl.training.transitions import EpisodeBatch, load_episodes

    runs = tmp_path / "runs"
    argv = ["run", "--env", "gp", "--prompt-style", "compact", "--verify-iter", "1", "--policy", "hf"]
    argv += ["--model", str(char_model), "--episodes", "4", "--logprobs", "--max-new-tokens", "8"]
    assert main([*argv, "--out", str(runs), "--quiet"]) == 0
    logged = load_episodes([runs])
    episodes = [[t] for ep in logged.episodes for t in ep[:1]]
    for ep in episodes:
        ep[0].group_key = "one-group"
    returns = [1.0, 0.0, 1.0, 0.0]
    batch = EpisodeBatch(episodes=episodes, returns=returns, successes=[False] * 4)
    # Behaviour log-probs per token: +log 2 (weight 0.5) on the rewarded replies, -log 3 (weight 3,
    # truncated to the cap 2) on the others.
    shift = [math.log(2), -math.log(3), math.log(2), -math.log(3)]
    for ep, d in zip(episodes, shift, strict=True):
        ep[0].behaviour_logprobs = [lp + d for lp in ep[0].behaviour_logprobs]
    policy = HFPolicy(char_model)
    torch.manual_seed(0)
    cfg = RLConfig(algo="grpo", ppo_epochs=1, minibatch_size=16, ent_coef=0.0, lr=1e-3)
    learner = Learner(policy.model, policy.encode_transition, cfg, pad_token_id=policy.pad_token_id)
    stats = learner.update(batch, is_cap=2.0)
    adv = group_advantages(["one-group"] * 4, returns)
    weights = [0.5, 2.0, 0.5, 2.0]
    assert stats["policy_loss"] == pytest.approx(
        -sum(a * w for a, w in zip(adv, weights, strict=True)) / 4, abs=1e-4
    )
    tokens = [len(ep[0].completion_ids) for ep in episodes]
    capped = (tokens[1] + tokens[3]) / sum(tokens)
    assert stats["is_capped_fraction"] == pytest.approx(capped)
    assert stats["is_weight_max"] == pytest.approx(3.0, rel=1e-3)
    assert stats["is_weight_mean"] == pytest.approx(
        (0.5 * (tokens[0] + tokens[2]) + 2.0 * capped * sum(tokens)) / sum(tokens), rel=1e-3
    )
    assert stats["logprob_gap"] == pytest.approx(
        (math.log(2) * (tokens[0] + tokens[2]) + math.log(3) * (tokens[1] + tokens[3])) / sum(tokens),
        rel=1e-3,
    )


def test_a_failing_collection_stops_the_run_with_its_message(
    char_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in the producer thread reaches the learner (one line, exit 2) and the thread is gone."""
    import threading

    from sftrl.training import rl_train
    from sftrl.training.transitions import TransitionError

    real = rl_train._collect

    def collect(cfg: object, policy: object, update: int, *args: object, **kw: object) -> object:
        if update == 2:
            raise TransitionError("batch 2 could not be collected (disk full)")
        return real(cfg, policy, update, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(rl_train, "_collect", collect)
    out = tmp_path / "rl"
    argv = _argv(char_model, out, "--algo", "grpo", "--max-steps", "4", "--async-rollouts")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "agent: error: batch 2 could not be collected (disk full)"
    assert [r["update"] for r in _rows(out)] == [1, 2]
    assert not any(t.name == "rollout-producer" for t in threading.enumerate())
