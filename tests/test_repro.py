"""`agent repro` on the framework's own stack: curriculum checked by the verifier, disjoint hand pools,
the compact GP style, the quick pipeline, and each job reproducible with its printed CLI command."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from sftrl.environments.generalpoints import compact
from sftrl.environments.generalpoints.cards import FACE_RANKS, RANKS
from sftrl.environments.generalpoints.env import GeneralPointsEnv
from sftrl.environments.generalpoints.formula import evaluate
from sftrl.environments.generalpoints.verifier import GPState, verify
from sftrl.repro import stage0
from sftrl.repro.hands import make_pools, solvable

REPRO_DIR = Path(__file__).parents[1] / "sftrl" / "repro"


def _state_of(row: dict) -> GPState:
    ranks = row["ranks"].split()
    face = [int(x) for x in row["face"].split()]
    values = stage0.face_values(ranks, face)
    return GPState(ranks=tuple(ranks), values=tuple(values), target=row["target"], solutions=())


def test_every_stage0_answer_is_verified_and_no_gp_episode_leaks() -> None:
    rng = random.Random(0)
    kinds, depths = Counter(), Counter()
    for _ in range(600):
        row = stage0.item(rng)
        kinds[row["kind"]] += 1
        (answer,) = row["completion"]
        assert answer["role"] == "assistant"
        if row["kind"] == "E":
            expression = row["prompt"][0]["content"].removeprefix("= ")
            num, _, den = answer["content"].partition("/")
            assert evaluate(expression) == Fraction(int(num), int(den) if den else 1)
            continue
        # No stage-0 item is a GeneralPoints episode: never the target 24, whatever the mapping.
        assert row["target"] != 24
        state = _state_of(row)
        assert row["prompt"][0]["content"] == compact.prompt(
            ranks=list(state.ranks), face_values=[int(x) for x in row["face"].split()], target=state.target
        )
        assert verify(state, answer["content"], style="compact").correct
        turns = row["prompt"][1:]
        depths[len(turns) // 2] += 1
        for attempt, feedback in zip(turns[::2], turns[1::2], strict=True):
            verdict = verify(state, attempt["content"], style="compact")
            assert not verdict.correct
            # The feedback turn is exactly what the env sends after that verdict.
            assert feedback["content"] == compact.feedback(verdict.category, verdict.details)
    assert set(kinds) == {"M2", "M3", "M4", "E"}
    assert set(depths) == {0, 1, 2}


def test_stage0_dataset_is_an_sft_dataset_train_sft_reads(tmp_path: Path) -> None:
    from sftrl.training.sft import inspect_data

    out = stage0.build_dataset(tmp_path / "s0", 40, seed=3, val_rows=8)
    info = inspect_data(out)
    assert info.format == "prompt_completion" and not info.vision
    assert len(info.train) == 40 and info.validation is not None and len(info.validation) == 8
    meta = json.loads((out / "sftrl_dataset.json").read_text())
    assert "python -m sftrl.repro.stage0 --rows 40 --seed 3" in meta["command"]
    again = stage0.build_dataset(tmp_path / "s0b", 40, seed=3, val_rows=8)
    assert inspect_data(again).train.to_list() == info.train.to_list()  # the seed fixes the data


def test_pools_are_fixed_disjoint_and_complete(tmp_path: Path) -> None:
    pools = make_pools(200, seed=1234)
    assert (len(pools.train), len(pools.id_eval), len(pools.ood_eval)) == (1036, 200, 796)
    assert not set(pools.train) & set(pools.id_eval)
    assert all(FACE_RANKS & set(m) and solvable(m, "11-13") for m in pools.ood_eval)
    assert all(solvable(m, "10") for m in pools.train + pools.id_eval)
    seen = pools.ood_seen()
    assert 0 < sum(seen) < len(seen)
    assert all((m in set(pools.train)) == s for m, s in zip(pools.ood_eval, seen, strict=True))
    assert make_pools(200, seed=1234) == pools and make_pools(200, seed=7) != pools
    paths = pools.write(tmp_path)
    assert json.loads(paths["id_eval"].read_text()) == [list(m) for m in pools.id_eval]


def test_hand_pool_keeps_training_hands_off_the_evaluation_hands(tmp_path: Path) -> None:
    pools = make_pools(200, seed=1234)
    paths = pools.write(tmp_path)
    env = GeneralPointsEnv(prompt_style="compact", hand_pool=paths["train"])
    train = set(pools.train)
    for seed in range(300):
        _, info = env.reset(seed=seed)
        assert tuple(sorted(info["ranks"], key=RANKS.index)) in train
    # by_index visits every entry of the pool exactly once in len(pool) episodes.
    ood = GeneralPointsEnv(split="rule-ood", hand_pool=paths["ood_eval"], pool_draw="by_index")
    dealt = [
        tuple(sorted(ood.reset(seed=1000 + i, options={"episode_index": i})[1]["ranks"], key=RANKS.index))
        for i in range(len(pools.ood_eval))
    ]
    assert dealt == list(pools.ood_eval)


@pytest.mark.parametrize("bad", ["not json", "[]", '[["A", "2"]]', '[["A", "2", "3", "Z"]]'])
def test_a_bad_hand_pool_is_refused_with_one_line(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "pool.json"
    path.write_text(bad)
    with pytest.raises(ValueError, match="hand_pool"):
        GeneralPointsEnv(hand_pool=path)


def test_compact_style_is_scored_by_the_same_verifier_and_rewards() -> None:
    state = GPState.for_hand(["3", "3", "8", "8"], check_cards=False)
    cases = {
        "3=3 3=3 8=8 8=8: 8/(3-8/3)": ("correct", 5.0),
        "3=3 3=3 8=8 8=8: 8+8+3+3": ("no_solution", -1.0),
        "3=3 3=3 8=8 8=8: 8+8+3+4": ("incorrect_numbers", -2.0),
        "3=3 3=3 8=8 8=8: 8/(3-8/3": ("partial_solution", 1.0),
        "garbage": ("illegal_formula", -3.0),
    }
    for reply, (category, reward) in cases.items():
        verdict = verify(state, reply, style="compact")
        assert (verdict.category, verdict.reward) == (category, reward), reply
    assert compact.feedback("no_solution", {"formula_value": "22"}) == "no solution 22"
    vision = GPState.for_hand(["3", "3", "8", "8"], check_cards=True)
    assert verify(vision, "3=3 3=3 8=8 8=8: 8/(3-8/3)", style="compact").correct
    assert verify(vision, "3=3 3=3 8=8 9=8: 8/(3-8/3)", style="compact").category == "incorrect_vision"
    assert verify(vision, "3 3 8 8: 8/(3-8/3)", style="compact").category == "incorrect_vision"
    assert compact.reply(ranks=["A", "J"], numbers=[1, 11], formula="1+11") == "A=1 J=11: 1+11"
    # Pairs follow the formula's numbers (equal values take cards in hand order; unused cards last),
    # and the reordered answer is judged exactly as the hand-ordered one.
    hand = dict(ranks=["A", "8", "5", "4"], numbers=[1, 8, 5, 4])
    assert compact.reply(**hand, formula="8-4*(1-5)") == "8=8 4=4 A=1 5=5: 8-4*(1-5)"
    tens = dict(ranks=["10", "J", "2", "2"], numbers=[10, 10, 2, 2])
    assert compact.reply(**tens, formula="(10+2)*2") == "10=10 2=2 2=2 J=10: (10+2)*2"
    assert compact.reply(**tens, formula="7*3") == "10=10 J=10 2=2 2=2: 7*3"
    assert compact.in_hand_order([1, 8, 5, 4], "1+8*(5-4)") and not compact.in_hand_order(
        [1, 8, 5, 4], "8-4*(1-5)"
    )
    vision_hand = GPState.for_hand(["A", "8", "5", "4"], check_cards=True)
    assert verify(vision_hand, compact.reply(**hand, formula="8-4*(1-5)"), style="compact").correct
    assert compact.parse_reply("A=1 J=11: 1+11") == {
        "formula": "1+11",
        "number": [1, 11],
        "cards": ["A", "J"],
    }


@pytest.mark.parametrize("modality", ["language", "vision"])
@pytest.mark.parametrize("split", ["id", "rule-ood"])
def test_compact_env_episode_expert_and_feedback_turns(modality: str, split: str) -> None:
    env = GeneralPointsEnv(
        split=split, modality=modality, prompt_style="compact", verify_iter=3, resolution=128
    )
    obs, info = env.reset(seed=5)
    faces = "J=10 Q=10 K=10" if split == "id" else "J=11 Q=12 K=13"
    assert obs.text.endswith(f"{faces} | 24")
    assert (" ".join(info["ranks"]) in obs.text) == (modality == "language")
    feedback, reward, done, _, _ = env.step("A=1 2=2 3=3 4=4: 1+2+3+4")
    assert not done and feedback.kind == "feedback" and reward < 0
    assert feedback.text in {"incorrect numbers", "incorrect vision"} or feedback.text.startswith(
        "no solution"
    )
    _, reward, done, _, step_info = env.step(obs.oracle["expert_reply"])
    assert done and reward == 5.0 and step_info["success"]


def test_expert_with_mistakes_logs_revisions_that_data_sft_full_keeps(tmp_path: Path) -> None:
    from sftrl.cli import main
    from sftrl.training.sft_data import build_sft_dataset

    run = tmp_path / "expert"
    args = ["run", "--env", "gp", "--prompt-style", "compact", "--verify-iter", "3", "--episodes", "40"]
    assert main([*args, "--policy-option", "mistakes=0.5", "--out", str(run)]) == 0
    dd = build_sft_dataset([run], tmp_path / "data", chains="full", val_fraction=0.0)
    rows = dd["train"].to_list()
    with_feedback = [r for r in rows if len(r["prompt"]) > 1]
    assert with_feedback, "no failed attempt was logged"
    for r in with_feedback:
        assert r["prompt"][1]["role"] == "assistant" and r["prompt"][2]["role"] == "user"
    assert main([*args, "--policy-option", "mistakes=1.5", "--out", str(tmp_path / "bad")]) == 2


def test_repro_keeps_only_the_recipe() -> None:
    """One stack: no model, sampler, loss or optimizer of its own under sftrl/repro."""
    files = sorted(p.name for p in REPRO_DIR.glob("*.py"))
    assert files == [
        "__init__.py",
        "command.py",
        "experiments.py",
        "hands.py",
        "pipeline.py",
        "recognition.py",
        "stage0.py",
        "stage0_gpvl.py",
        "stage0_virl.py",
        "stage0_virlvl.py",
    ]
    pattern = re.compile(r"nn\.Module|log_softmax|cross_entropy|optim\.|\.backward\(|multinomial")
    for path in REPRO_DIR.glob("*.py"):
        assert not pattern.search(path.read_text()), path.name


@pytest.mark.slow
def test_agent_repro_quick_runs_every_stage_and_each_job_reruns_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sftrl.cli import main

    out = tmp_path / "repro"
    assert main(["repro", "--quick", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["rows"]) == {"stage0", "warmstart", "sft", "ppo", "grpo"}
    results = json.loads((out / "results.json").read_text())
    budget = results["config"]["stage2_flops"]
    for arm in ("sft", "ppo", "grpo"):
        curve = results["curves"][arm][0]
        # x = 0 is the warm start; one evaluation per eval_points share of the budget, the last past it.
        assert curve[0]["flops"] == 0.0 and len(curve) == 1 + results["config"]["eval_points"]
        assert budget <= curve[-1]["flops"] < 3 * budget
        evals = [json.loads(x) for x in (out / "seed0" / arm / "eval.jsonl").read_text().splitlines()]
        assert [e["flops"] for e in evals] == [p["flops"] for p in curve[1:]]
        # Every evaluated episode is an ordinary run directory that `agent eval` reads back.
        assert main(["eval", evals[-1]["ood"]["out"], "--json"]) == 0
        rate = json.loads(capsys.readouterr().out)["success_rate"]
        assert rate == pytest.approx(curve[-1]["ood"])
        # The curve plays a fixed OOD subset; the run's end also plays the whole OOD set (the endpoint).
        assert [("ood_all" in e) for e in evals] == [False] * (len(evals) - 1) + [True]
        assert evals[-1]["ood"]["episodes"] == 6 and evals[-1]["ood_all"]["episodes"] == 12
    assert "| stage 2b: + RL (PPO) |" in (out / "results.md").read_text()
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "seed_level" in results["paired"]["ppo-sft/ood"]
    n_seen = results["n_eval"]["ood_seen"]
    assert results["n_eval"] == {"id": 12, "ood": 12, "ood_seen": n_seen, "ood_curve": 6}
    # The printed command of a job, run by hand, reproduces that job's evaluations exactly.
    commands = (out / "commands.md").read_text()
    by_hand = commands.split("## evaluation of a model directory M")[1].split("## ")[0]
    assert "ood_eval.json" in by_hand and "ood_curve.json" not in by_hand and "--at" not in by_hand
    import torch

    for job in ("sft-0", "grpo-0", "ppo-0"):
        block = commands.split(f"## {job}\n\n```bash\n")[1].split("\n```")[0]
        again = tmp_path / f"again-{job}"
        argv = _shell_split(block.replace(str(out / "seed0" / job.split("-")[0]), str(again)))
        torch.manual_seed(987_654)  # this process's global generator is not where the job's was
        assert argv[0] == "agent" and main(argv[1:]) == 0
        mine = [json.loads(x) for x in (again / "eval.jsonl").read_text().splitlines()]
        theirs = [
            json.loads(x) for x in (out / "seed0" / job.split("-")[0] / "eval.jsonl").read_text().splitlines()
        ]
        for a, b in zip(mine, theirs, strict=True):
            assert a["flops"] == b["flops"] and a["step"] == b["step"]
            for split in ("id", "ood", "ood_all")[: 3 if "ood_all" in b else 2]:
                assert a[split]["success_rate"] == b[split]["success_rate"]
                assert a[split]["mean_reward"] == b[split]["mean_reward"]


def _shell_split(text: str) -> list[str]:
    import shlex

    return shlex.split(text)


def test_compact_expert_and_curriculum_prefer_formulas_in_hand_order() -> None:
    from sftrl.environments.generalpoints.solver import solve

    env = GeneralPointsEnv(prompt_style="compact")
    preferred = 0
    for seed in range(60):
        obs, info = env.reset(seed=seed)
        values = info["values"]
        formula = obs.oracle["expert_reply"].split(": ", 1)[1]
        has_in_order = any(compact.in_hand_order(values, f) for f in solve(values, 24))
        assert compact.in_hand_order(values, formula) == has_in_order, (values, formula)
        preferred += has_in_order
        assert env.step(obs.oracle["expert_reply"])[1] > 0
    assert 20 < preferred < 60  # some hands need another order, and then the pairs follow it
    rng = random.Random(0)
    rows = [r for r in (stage0.make_target_item(rng, 4, 0) for _ in range(600)) if r is not None]
    ordered = [
        compact.in_hand_order(
            stage0.face_values(r["ranks"].split(), [int(x) for x in r["face"].split()]),
            r["completion"][0]["content"].split(": ", 1)[1],
        )
        for r in rows
    ]
    assert 0.65 < sum(ordered) / len(ordered) < 0.9  # 1 - SHUFFLED_SHARE, plus shuffles that kept the order
    rng = random.Random(0)
    rows = [r for r in (stage0.make_target_item(rng, 4, 0, shuffled_share=0.0) for _ in range(200)) if r]
    for r in rows:
        ranks = r["ranks"].split()
        values = stage0.face_values(ranks, [int(x) for x in r["face"].split()])
        pairs = " ".join(f"{c}={v}" for c, v in zip(ranks, values, strict=True))
        assert r["completion"][0]["content"].startswith(pairs + ": ")  # the hand, copied in order
