"""`agent repro`: data checked by the GP verifier, held-out sets, KV cache, the quick pipeline."""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import pytest

from sftrl.environments.generalpoints.formula import evaluate
from sftrl.environments.generalpoints.prompts import reply_text
from sftrl.environments.generalpoints.verifier import verify
from sftrl.repro.codec import ATTEMPT_LEN, PROMPT_LEN, decode, encode, parse_attempt
from sftrl.repro.data import (
    FACES,
    OOD_FACE,
    TARGET,
    TRAIN_FACE,
    Splits,
    expert_episode,
    hand_from_prompt,
    make_splits,
    multiset,
    stage0_item,
    training_hand,
)


@pytest.fixture(scope="module")
def splits() -> Splits:
    return make_splits(n_eval=60, seed=7)


def _final_answer_verdict(item_prompt: str, attempt: str) -> tuple[str, bool]:
    hand = hand_from_prompt(item_prompt)
    numbers, formula = parse_attempt(attempt)
    verdict = verify(hand.state(), reply_text(ranks=hand.ranks, numbers=numbers or [], formula=formula))
    return verdict.category, verdict.correct


@pytest.mark.parametrize("n_wrong", [0, 1, 2])
def test_every_stage0_answer_is_verified_and_no_gp_episode_leaks(n_wrong: int) -> None:
    rng = random.Random(n_wrong)
    kinds = set()
    for _ in range(300):
        item = stage0_item(rng, n_wrong)
        kinds.add(item.kind)
        assert len(item.prompt) == PROMPT_LEN and all(len(a) == ATTEMPT_LEN for a in item.attempts)
        assert len(item.attempts) == n_wrong + 1 and len(item.feedbacks) == n_wrong
        assert decode(encode(item.text)) == item.text
        if item.kind == "E":
            expression = item.prompt[1:].rstrip(">").rstrip("_")
            value = evaluate(expression)
            assert value is not None
            answer = item.attempts[-1].split(".")[0]
            num, _, den = answer.partition("/")
            assert value == Fraction(int(num), int(den) if den else 1)
            continue
        hand = hand_from_prompt(item.prompt)
        # No stage-0 item is a GeneralPoints episode: never the target 24, whatever the mapping.
        assert hand.target != TARGET
        category, correct = _final_answer_verdict(item.prompt, item.attempts[-1])
        assert correct, (item.text, category)
        for wrong, feedback in zip(item.attempts[:-1], item.feedbacks, strict=True):
            category, correct = _final_answer_verdict(item.prompt, wrong)
            assert not correct and feedback[0] in "nux"
    assert kinds == {"M2", "M3", "M4", "E"}


def test_expert_episodes_are_correct_under_the_training_rule(splits: Splits) -> None:
    rng = random.Random(0)
    for _ in range(100):
        item = expert_episode(training_hand(splits, rng), rng, rng.randrange(3))
        hand = hand_from_prompt(item.prompt)
        assert hand.face == TRAIN_FACE and hand.target == TARGET
        assert multiset(hand.ranks) in set(splits.train)
        assert _final_answer_verdict(item.prompt, item.attempts[-1])[1]


def test_eval_sets_are_fixed_disjoint_from_training_and_ood_needs_a_face_card(
    splits: Splits, tmp_path: Path
) -> None:
    train = set(splits.train)
    assert len(splits.id_eval) == len(splits.ood_eval) == 60
    for hand in splits.id_eval:
        assert hand.face == TRAIN_FACE and multiset(hand.ranks) not in train
        assert hand.state().solutions
    for hand in splits.ood_eval:
        assert hand.face == OOD_FACE and FACES & set(hand.ranks) and hand.state().solutions
    assert len({multiset(h.ranks) for h in splits.id_eval}) == 60
    # Same seed, same sets (saved as JSON); another seed, other sets.
    splits.save(tmp_path / "a.json")
    make_splits(n_eval=60, seed=7).save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert make_splits(n_eval=60, seed=8).id_eval != splits.id_eval


def test_kv_cached_decoding_matches_a_full_forward_pass() -> None:
    import torch

    from sftrl.repro.model import ModelConfig, TinyLM

    torch.manual_seed(0)
    model = TinyLM(ModelConfig(n_layer=2, d_model=32, n_head=2)).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (3, 30))
    with torch.no_grad():
        full, full_v, _ = model(ids)
        logits, values, cache = model(ids[:, :18])
        chunk, chunk_v, cache = model(ids[:, 18:22], cache)  # a feedback-sized chunk after the cache
        steps = [model(ids[:, t : t + 1], cache) for t in range(22, 22 + 1)]
    assert torch.allclose(full[:, :18], logits, atol=1e-5)
    assert torch.allclose(full[:, 18:22], chunk, atol=1e-5)
    assert torch.allclose(full_v[:, 18:22], chunk_v, atol=1e-5)
    assert torch.allclose(full[:, 22], steps[0][0][:, 0], atol=1e-5)


@pytest.mark.slow
def test_agent_repro_quick_runs_every_stage_and_writes_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sftrl.cli import main

    out = tmp_path / "repro"
    assert main(["repro", "--quick", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["rows"]) == {"stage0", "warmstart", "sft", "ppo", "grpo"}
    results = json.loads((out / "results.json").read_text())
    for arm in ("sft", "ppo", "grpo"):
        curve = results["curves"][arm][0]
        assert curve[0]["flops"] == 0.0 and curve[-1]["flops"] >= results["config"]["stage2_flops"]
        assert (out / "seed0" / f"{arm}.pt").exists()
    # Arms are matched on training compute: each stops at the first update past the same budget.
    finals = [results["curves"][arm][0][-1]["flops"] for arm in ("sft", "ppo", "grpo")]
    assert max(finals) < 3 * results["config"]["stage2_flops"]
    assert "| stage 2b: + RL (PPO) |" in (out / "results.md").read_text()
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sets = json.loads((out / "eval_sets.json").read_text())
    assert len(sets["id"]) == len(sets["rule_ood"]) == results["config"]["n_eval"]
    # Every outcome is kept per hand, so any comparison can be re-done paired by hand.
    for name in ("stage0", "warmstart", "sft", "ppo", "grpo"):
        (run,) = results["per_hand"][name]
        assert len(run["id"]) == len(sets["id"]) and len(run["ood"]) == len(sets["rule_ood"])
        rate = sum(s for s, _ in run["ood"]) / len(run["ood"])
        assert rate == pytest.approx(results["rows"][name]["ood_success"])
    assert "warmstart-stage0/ood" in results["paired"]


def test_repro_rejects_vision_until_it_exists(capsys: pytest.CaptureFixture[str]) -> None:
    from sftrl.cli import main

    assert main(["repro", "--modality", "vision", "--quick"]) == 2
    assert "only 'language'" in capsys.readouterr().err


def test_revision_rollouts_append_verifier_feedback_and_stop_on_success(splits: Splits) -> None:
    import torch

    from sftrl.repro.codec import FEEDBACK_LEN, PAD, STOI
    from sftrl.repro.model import ModelConfig, TinyLM
    from sftrl.repro.rollout import play

    torch.manual_seed(0)
    model = TinyLM(ModelConfig(n_layer=1, d_model=32, n_head=2))
    hands = list(splits.id_eval[:12])
    episodes, n_tokens = play(model, hands, attempts=3, generator=torch.Generator().manual_seed(1))
    assert n_tokens >= len(hands) * (PROMPT_LEN + ATTEMPT_LEN)
    for ep in episodes:
        k = len(ep.rewards)
        assert 1 <= k <= 3 and len(ep.tokens) == PROMPT_LEN + k * ATTEMPT_LEN + (k - 1) * FEEDBACK_LEN
        assert k == 3 or ep.success  # only a solved episode stops early
        for start, n, lps, text in zip(ep.starts, ep.lengths, ep.logprobs, ep.texts, strict=True):
            assert len(lps) == n and all(lp <= 0 for lp in lps)
            # After the end mark the attempt is padding, which is not an action.
            assert set(ep.tokens[start + n : start + ATTEMPT_LEN]) <= {STOI[PAD]}
            assert decode(ep.tokens[start : start + ATTEMPT_LEN]) == text
        for t in range(k - 1):  # each failed attempt is followed by the verifier's feedback code
            feedback = decode(ep.tokens[ep.starts[t] + ATTEMPT_LEN : ep.starts[t + 1]])
            assert feedback[0] in "npux"
            numbers, formula = parse_attempt(ep.texts[t])
            verdict = verify(
                ep.hand.state(), reply_text(ranks=ep.hand.ranks, numbers=numbers or [], formula=formula)
            )
            assert ep.rewards[t] == verdict.reward and not verdict.correct
    greedy = [play(model, hands, attempts=2, greedy=True)[0] for _ in range(2)]
    assert [e.texts for e in greedy[0]] == [e.texts for e in greedy[1]]
