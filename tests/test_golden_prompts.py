"""Golden texts the model reads: whole prompts and feedback for every env x modality x split x protocol.

Each case is one file under ``tests/golden/prompts``: the task prompt of seed 0, the feedback to an
unparseable reply and to a well-formed wrong one, and (JSON protocol) what follows the expert's reply.
The matrix comes from the env config models' ``Literal`` options, so a new split, modality or prompt
style gets a golden file too. After an intended wording change, regenerate with
``SFTRL_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_prompts.py`` and read the diff.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sftrl.environments import make_env
from sftrl.environments.registry import ENTRY_POINTS, ENV_ALIASES, env_class

GOLDEN = Path(__file__).parent / "golden" / "prompts"
AXES = ("modality", "split", "protocol", "prompt_style", "style")
SMALL = {"resolution": 64}  # images are not part of the golden text; small ones are fast


def _alias(env_id: str) -> str:
    return next(a for a, i in ENV_ALIASES.items() if i == env_id)


def _cases() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for env_id in ENTRY_POINTS:
        fields = env_class(env_id).config_model.model_fields
        axes = [a for a in AXES if a in fields and typing.get_origin(fields[a].annotation) is typing.Literal]
        for values in itertools.product(*(typing.get_args(fields[a].annotation) for a in axes)):
            options = dict(zip(axes, values, strict=True))
            try:
                env_class(env_id).config_model.model_validate(options)
            except ValidationError:
                continue  # a combination the env refuses (e.g. compact prompts with tool calls)
            cases.append((_alias(env_id), options))
    return cases


def _name(env: str, options: dict[str, Any]) -> str:
    return "-".join([env, *map(str, options.values())])


def _wrong_reply(env: str, obs: Any) -> str:
    """A well-formed answer that is wrong: GP sums the numbers, V-IRL acts against the expert."""
    if env == "gp":  # the expert's reply (in the prompt style's format) with the sum as its formula
        expr = obs.oracle["expert_tool_call"]["args"]["formula"].split("=")[0]
        return obs.oracle["expert_reply"].replace(expr, "+".join(map(str, obs.info["values"])), 1)
    if obs.info.get("prompt_style") == "compact":  # the compact answer is the bare action
        return "forward" if obs.oracle["expert_reply"] == "stop" else "stop"
    expert = json.loads(obs.oracle["expert_reply"])
    expert["action"] = "stop()" if expert["action"] != "stop()" else "forward()"
    return json.dumps(expert)


def _transcript(env: str, options: dict[str, Any]) -> str:
    kwargs = {**options, **(SMALL if "resolution" in env_class(env).config_model.model_fields else {})}
    parts = []
    for title, reply in (
        ("unparseable reply", "I am not sure."),
        ("wrong answer", None),
        ("expert reply", ""),
    ):
        if title == "expert reply" and options.get("protocol") == "tools":
            continue  # tool calls reach the env through the agent loop, not as reply text
        e = make_env(env, **kwargs)
        obs, _ = e.reset(seed=0)
        if not parts:
            parts.append(f"=== task prompt ({len(obs.images)} image(s))\n{obs.text}")
        text = {
            "wrong answer": _wrong_reply(env, obs),
            "expert reply": obs.oracle.get("expert_reply", ""),
        }.get(title, reply)
        nxt, reward, terminated, truncated, _ = e.step(text)
        parts.append(
            f"=== {title}: {text}\n--- reward {reward}, terminated {terminated}, truncated {truncated}"
        )
        parts.append(nxt.text)
        e.close()
    return "\n".join(parts).rstrip() + "\n"


CASES = _cases()


@pytest.mark.parametrize(("env", "options"), CASES, ids=[_name(e, o) for e, o in CASES])
def test_prompts_and_feedback_match_the_golden_text(env: str, options: dict[str, Any]) -> None:
    text = _transcript(env, options)
    path = GOLDEN / f"{_name(env, options)}.txt"
    if os.environ.get("SFTRL_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path.name}: run with SFTRL_UPDATE_GOLDEN=1 and read it"
    assert text == path.read_text(encoding="utf-8")


def test_every_golden_file_is_a_case_and_reads_as_english() -> None:
    names = {f"{_name(e, o)}.txt" for e, o in CASES}
    files = {p.name for p in GOLDEN.glob("*.txt")}
    assert files == names, f"stale or missing golden files: {sorted(files ^ names)}"
    for path in GOLDEN.glob("*.txt"):
        text = path.read_text(encoding="utf-8")
        # Wording bugs once shipped: a garbled partial-formula message and "on your behind".
        assert not re.search(r"on your (behind|front|right behind|left behind|right front|left front)", text)
        assert "is partially correct" not in text and "( " not in text
