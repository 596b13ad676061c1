"""The compact V-IRL prompt style: layout, expert answers through env.step, feedback, parsing, metrics."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import pytest
from fuzz_replies import FuzzPolicy
from pydantic import ValidationError

from sftrl.agents.baselines import ExpertPolicy
from sftrl.agents.loop import run_episode
from sftrl.agents.metrics import summarize
from sftrl.agents.runner import run_async, split_config
from sftrl.agents.trajectory import read_episodes
from sftrl.cli import main
from sftrl.environments import make_env
from sftrl.environments.base import Observation
from sftrl.environments.virl import compact
from sftrl.environments.virl.env import VIRLEnv
from sftrl.environments.virl.prompts import RELATIVE_DIRECTIONS, action_list, reply_text
from sftrl.environments.virl.rail import INTERSECTION, NO_LANDMARK
from sftrl.environments.virl.verifier import REWARD_CORRECT, REWARD_INCORRECT_ACTION, VIRLState, verify
from sftrl.street_view.geometry import COMPASS_NAMES

CODES = "|".join(compact.RELATION_CODES.values())
TURN_ITEM = re.compile(rf"(slightly )?(left|right)>({'|'.join(COMPASS_NAMES)})")
WHERE_ITEM = re.compile(rf"[ -~]+ ({CODES})")
NOW = re.compile(rf"now: (none|[ -~]+ ({CODES}))(, intersection)?")
ANSWER = re.compile(rf"forward|stop|turn ({'|'.join([*COMPASS_NAMES, *RELATIVE_DIRECTIONS])})")


def compact_env(**kwargs) -> VIRLEnv:
    return VIRLEnv(prompt_style="compact", num_routes=20, resolution=32, **kwargs)


def check_layout(text: str, env: VIRLEnv) -> None:
    """The fixed layout: route / actions / now (language only) / done, every item in compact form."""
    lines = text.split("\n")
    vision = env.config.modality == "vision"
    labels = ["route", "actions", "done"] if vision else ["route", "actions", "now", "done"]
    assert [line.split(": ", 1)[0] for line in lines] == labels, text
    assert text.isascii() and all(line.isprintable() for line in lines)
    items = lines[0].removeprefix("route: ").split(" | ")
    assert len(items) == len(env._rail.instructions)
    for i, item in enumerate(items):  # turn, leg, turn, leg, ...: no sentence left in paper form
        assert (TURN_ITEM if i % 2 == 0 else WHERE_ITEM).fullmatch(item), (item, env._rail.instructions[i])
    assert lines[1] == f"actions: {env.config.actions}"
    if not vision:
        assert NOW.fullmatch(lines[2]), lines[2]
    done = lines[-1].removeprefix("done: ")
    assert done == "-" or all(ANSWER.fullmatch(a) for a in done.split(", ")), done


@pytest.mark.parametrize("split", ["id", "rule-ood", "visual-ood"])
@pytest.mark.parametrize("modality", ["language", "vision"])
def test_expert_compact_answers_solve_every_route_through_env_step(split: str, modality: str) -> None:
    env = compact_env(split=split, modality=modality)
    routes = range(len(env.routes)) if modality == "language" else range(3)
    for route in routes:
        obs, info = env.reset(seed=route, options={"route_index": route})
        assert info["prompt_style"] == "compact" and len(obs.images) == (modality == "vision")
        given: list[str] = []
        terminated = False
        while not terminated:
            assert obs.kind == "task"
            check_layout(obs.text, env)
            done = obs.text.split("\n")[-1].removeprefix("done: ")
            assert done == (", ".join(given) or "-")  # the history is the answers given so far
            answer = obs.oracle["expert_reply"]
            assert ANSWER.fullmatch(answer) and answer == compact.reply(obs.oracle["gt_action"])
            if split == "rule-ood" and answer.startswith("turn "):
                assert answer.removeprefix("turn ") in RELATIVE_DIRECTIONS
            obs, reward, terminated, truncated, info = env.step(answer)
            assert info["verdict"].category == "correct_action" and reward == REWARD_CORRECT
            given.append(answer)
        assert info["success"] and given[-1] == "stop"
        assert obs.text == "correct action"  # the final turn, in the compact style too


def test_every_sentence_and_observation_of_the_route_sets_has_a_compact_form() -> None:
    """No instruction sentence or rail observation falls back to its paper wording (template drift)."""
    for split in ("id", "rule-ood", "visual-ood", "nyc-unseen"):
        env = VIRLEnv(split=split, num_routes=40)
        for route in range(len(env.routes)):
            env.reset(seed=route, options={"route_index": route})
            rail = env._rail
            for i, sentence in enumerate(rail.instructions):
                item = compact.instruction_item(sentence)
                assert (TURN_ITEM if i % 2 == 0 else WHERE_ITEM).fullmatch(item), (sentence, item)
            for point in rail.points:
                now = f"now: {compact.observation_text(point.observation)}"
                assert NOW.fullmatch(now), (point.observation, now)
                assert now.endswith(", intersection") == point.intersection


def test_compact_forms_of_the_paper_texts() -> None:
    assert compact.instruction_item("1. First, turn right to face southwest.") == "right>southwest"
    assert compact.instruction_item("3. Turn slightly left to face north.") == "slightly left>north"
    assert (
        compact.instruction_item(
            "2. Move forward until you reach next intersection where Kyo Chon Chicken is behind you "
            "on the left."
        )
        == "Kyo Chon Chicken BL"
    )
    assert (
        compact.instruction_item(
            "4. Move forward until you reach destination where What is Love Café is ahead on your right."
        )
        == "What is Love Cafe FR"  # names keep their own " is ", and fold to ASCII
    )
    assert compact.instruction_item("5. Walk to the park.") == "Walk to the park."  # unknown: kept
    assert compact.observation_text(NO_LANDMARK) == "none"
    assert compact.observation_text("Vbar St. Marks is ahead on your left") == "Vbar St. Marks FL"
    assert (
        compact.observation_text(f"Köln Bar is in front of you. {INTERSECTION}") == "Koln Bar F, intersection"
    )
    assert compact.observation_text(f"{NO_LANDMARK}. {INTERSECTION}") == "none, intersection"
    assert compact.observation_text("Shop is on your front left") == "Shop front left"  # route-file words
    text = compact.prompt(
        instructions=[
            "1. First, turn left to face east.",
            "2. Move forward until you reach destination where Dogtopia is on your right.",
        ],
        actions="relative",
        observation=NO_LANDMARK,
        actions_taken=["turn_direction(left)", "forward()"],
    )
    assert text == "route: left>east | Dogtopia R\nactions: relative\nnow: none\ndone: turn left, forward"


@pytest.mark.parametrize("actions", ["absolute", "relative"])
def test_parse_reply_reads_every_action_as_the_paper_parser_does(actions: str) -> None:
    from sftrl.environments.virl.verifier import normalize_action

    for action in action_list(actions):
        answer = compact.reply(action)
        assert ANSWER.fullmatch(answer)
        assert normalize_action(compact.parse_reply(answer)["action"], actions) == action
        # The same action in other spellings the paper's grammar accepts reads the same.
        for variant in (answer.upper(), f"  {answer}\t", action, answer.replace(" ", "  ")):
            assert normalize_action(compact.parse_reply(variant)["action"], actions) == action, variant
    assert normalize_action(compact.parse_reply("turn north-east")["action"], "absolute") == (
        "turn_direction(northeast)"
    )
    other = "north" if actions == "relative" else "slightly left"  # outside this action space
    assert normalize_action(compact.parse_reply(f"turn {other}")["action"], actions) is None
    for junk in ("forward.", "turn", "turn 5", "forward stop", "stop\nforward", "", "turn north!"):
        assert normalize_action(compact.parse_reply(junk)["action"], actions) is None, junk


def test_parse_reply_never_raises_and_junk_scores_from_the_paper_table() -> None:
    rng = random.Random(12)
    pieces = [
        "turn",
        "forward",
        "stop",
        " ",
        "\t",
        "\n",
        "(",
        ")",
        "_",
        "-",
        "north",
        "east",
        "slightly",
        "left",
        "right",
        "x=",
        "'",
        '"',
        "{",
        "}",
        "é",
        "\ud800",
        "\x00",
        "0",
        "turn_direction",
    ]
    states = [
        VIRLState(gt, inter, space)
        for gt, inter, space in (
            ("forward()", False, "absolute"),
            ("turn_direction(east)", True, "absolute"),
            ("turn_direction(slightly left)", True, "relative"),
            ("stop()", False, "relative"),
        )
    ]
    categories = set()
    for i in range(600):
        if i % 3 == 0:
            text = "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(0, 40)))
        else:
            text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 6)))
        fields = compact.parse_reply(text)
        assert set(fields) == {"action"} and isinstance(fields["action"], str)
        for state in states:
            state = VIRLState(state.gt_action, state.at_intersection, state.actions, check_observation=False)
            verdict = verify(state, text, style="compact")
            categories.add(verdict.category)
            assert verdict.category in {"correct_action", "incorrect_action", "unparseable"}
            assert verdict.reward == (REWARD_CORRECT if verdict.correct else REWARD_INCORRECT_ACTION)
            if verdict.correct:
                assert verdict.action["action"] == state.gt_action
    assert categories == {"correct_action", "incorrect_action", "unparseable"}
    assert compact.parse_reply(None) == {"action": ""}  # type: ignore[arg-type]
    assert len(compact.parse_reply("forward" * 1000)["action"]) == compact.MAX_REPLY_CHARS


def test_wrong_and_garbled_answers_get_their_category_and_compact_feedback() -> None:
    env = compact_env(split="rule-ood", verify_iter=3)
    obs, _ = env.reset(seed=0, options={"route_index": 0})
    gt = obs.oracle["gt_action"]
    task = obs.text
    wrong = "stop" if gt != "stop()" else "forward"
    cases = [
        ("I am not sure.", "unparseable"),
        ("turn north", "unparseable"),  # a compass turn outside the relative action space
        (wrong, "incorrect_action"),
    ]
    for i, (answer, category) in enumerate(cases):
        obs, reward, terminated, _, info = env.step(answer)
        assert info["verdict"].category == category and reward == REWARD_INCORRECT_ACTION
        assert obs.kind == "feedback" and obs.text == category.replace("_", " ")
        assert obs.oracle["expert_reply"] == compact.reply(gt)  # the retry's expert answer
        assert terminated == (i == 2) and not info["success"]
    # The prompt of a retried step is the one the model already answered: feedback is only appended.
    env.reset(seed=0, options={"route_index": 0})
    obs, *_ = env.step("I am not sure.")
    obs, reward, *_ = env.step(compact.reply(gt))
    assert reward == REWARD_CORRECT and obs.kind == "task" and obs.text != task


def test_at_an_intersection_the_bare_action_is_correct_without_an_observation_check() -> None:
    env = compact_env(split="id")
    paper = VIRLEnv(split="id", num_routes=20)
    seen = 0
    for route in range(10):
        obs, _ = env.reset(seed=route, options={"route_index": route})
        pobs, _ = paper.reset(seed=route, options={"route_index": route})
        while True:
            gt = obs.oracle["gt_action"]
            assert pobs.oracle["gt_action"] == gt  # same rail, same ground truth in both styles
            if obs.info["at_intersection"]:
                seen += 1
                # The paper's answer without the intersection is an incorrect observation (-1.5) ...
                no_obs = paper._judge(gt, True, "", reply_text(NO_LANDMARK, "", gt))
                assert no_obs.category == "incorrect_observation"
            obs, _, done, _, info = env.step(compact.reply(gt))
            pobs, *_ = paper.step(pobs.oracle["expert_reply"])
            assert info["verdict"].correct  # ... the compact answer has none to check
            if done:
                break
    assert seen >= 10


def test_compact_cannot_be_combined_with_tool_calls() -> None:
    with pytest.raises(ValidationError, match="cannot be combined with protocol tools"):
        VIRLEnv(prompt_style="compact", protocol="tools")
    make_env("virl", prompt_style="compact", protocol="json")  # the text protocol is fine


def test_cli_refuses_compact_with_tools_in_one_line(capsys) -> None:
    argv = ["run", "--env", "virl", "--prompt-style", "compact", "--protocol", "tools", "--episodes", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot be combined with protocol tools" in err


def test_random_reply_is_in_the_compact_form() -> None:
    env = compact_env(split="rule-ood")
    obs, _ = env.reset(seed=1)
    rng = random.Random(0)
    replies = {VIRLEnv.random_reply(obs, rng) for _ in range(200)}
    assert replies == {compact.reply(a) for a in action_list("relative")}
    paper = Observation(text="", kind="task", info={"actions": ["forward()"]})
    assert json.loads(VIRLEnv.random_reply(paper, rng))["action"] == "forward()"  # paper: unchanged


def test_free_mode_expert_in_compact_style() -> None:
    env = compact_env(split="id", mode="free")
    for route in range(8):
        rec = asyncio.run(run_episode(env, ExpertPolicy(), seed=route, reset_options={"route_index": route}))
        assert rec.error is None and rec.success
        assert all(ANSWER.fullmatch(t.reply.text) for t in rec.turns)


class OneMistake:
    """Answers the first attempt of the first step wrongly, everything else as the expert."""

    name = "one-mistake"

    def describe(self) -> dict:
        return {"name": self.name}

    async def generate(self, messages, sampling, *, observation=None, tools=None):
        from sftrl.agents.policy import Reply

        assert observation is not None
        first = observation.kind == "task" and "done: -" in observation.text
        return Reply(text="I am lost" if first else observation.oracle["expert_reply"])


def test_step_accuracy_and_route_success_in_the_summary_and_from_logs(tmp_path: Path, capsys) -> None:
    env = compact_env(split="id")
    records = [
        asyncio.run(run_episode(env, OneMistake(), seed=r, reset_options={"route_index": r}))
        for r in range(5)
    ]
    steps = sum(r.metrics["rail_length"] for r in records)
    s = summarize(records)
    assert s["success_rate"] == 1.0  # per-route success: every route finished after one revision
    assert s["step_accuracy"] == pytest.approx(steps / (steps + 5))
    assert s["first_try_step_accuracy"] == pytest.approx((steps - 5) / steps)
    # Written by `agent run`, recomputed by `agent eval` from the log alone.
    out = tmp_path / "run"
    run, env_cfg = split_config(
        {"env": "virl", "prompt_style": "compact", "num_routes": 20, "episodes": 5, "out": out}
    )
    summary = asyncio.run(run_async(run, env_cfg, policy=OneMistake()))
    assert main(["eval", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for key in ("success_rate", "step_accuracy", "first_try_step_accuracy", "verdicts"):
        assert again[key] == summary[key]
    assert summary["step_accuracy"] < 1.0 and summary["verdicts"]["unparseable"] == 5
    assert len(read_episodes(out)) == 5


def test_gp_summaries_have_no_step_accuracy() -> None:
    env = make_env("gp", prompt_style="compact")
    rec = asyncio.run(run_episode(env, ExpertPolicy(), seed=0))
    assert "step_accuracy" not in summarize([rec])


def test_fuzzed_replies_in_compact_style_never_crash(tmp_path: Path) -> None:
    out = tmp_path / "run"
    options = {"env": "virl", "prompt_style": "compact", "episodes": 6, "out": out, "seed": 3}
    options |= {"verify_iter": 20, "num_routes": 10, "split": "rule-ood"}
    run, env_cfg = split_config(options)
    policy = FuzzPolicy(3, tmp_path / "sentinel", tool_rate=0.0)
    summary = asyncio.run(run_async(run, env_cfg, policy=policy))
    records = read_episodes(out)
    assert not [r.error for r in records if r.error] and summary["episodes"] == 6
    assert len(policy.sent) >= 100 and not (tmp_path / "sentinel").exists()
    assert set(summary["verdicts"]) <= {"correct_action", "incorrect_action", "unparseable"}


def test_the_documented_example_is_what_the_env_prints() -> None:
    env = VIRLEnv(split="id", prompt_style="compact")
    obs, _ = env.reset(seed=3)
    for _ in range(4):
        obs, *_ = env.step(obs.oracle["expert_reply"])
    feedback, *_ = env.step("forward")
    doc = (Path(__file__).parent.parent / "docs" / "virl.md").read_text(encoding="utf-8")
    assert f"```text\n{obs.text}\n```" in doc
    shown = "\n".join(
        ("user:      " if i == 0 else "           ") + line for i, line in enumerate(obs.text.split("\n"))
    )
    expected = (
        f"{shown}\nassistant: forward\nuser:      {feedback.text}\nassistant: {obs.oracle['expert_reply']}"
    )
    assert expected in doc
