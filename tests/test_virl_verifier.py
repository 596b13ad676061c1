"""The V-IRL verifier: reward categories, tolerant action parsing, observation checks, messages."""

from __future__ import annotations

import json

import pytest

from sftrl.environments.virl.verifier import VIRLState, claims_intersection, normalize_action, verify


def reply(action: str, obs: str = "No landmarks nearby", instr: str = "1. First, turn left.") -> str:
    return json.dumps({"current observation": obs, "current instruction": instr, "action": action})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("forward()", "forward()"),
        ("  Forward( ) ", "forward()"),
        ("forward", "forward()"),
        ("'stop()'", "stop()"),
        ("turn_direction(northeast)", "turn_direction(northeast)"),
        ("turn_direction('North East')", "turn_direction(northeast)"),
        ('Turn_Direction("south-west")', "turn_direction(southwest)"),
        ("turn_direction( x = west )", "turn_direction(west)"),
        ("turn_direction(up)", None),
        ("jump()", None),
        ("", None),
    ],
)
def test_normalize_absolute(raw, expected):
    assert normalize_action(raw, "absolute") == expected


def test_normalize_relative():
    assert normalize_action("turn_direction(Slightly  Left)", "relative") == "turn_direction(slightly left)"
    assert normalize_action("turn_direction(north)", "relative") is None  # not in the relative space
    assert normalize_action("turn_direction(left)", "absolute") is None
    assert normalize_action(None) is None


def test_intersection_claims():
    assert claims_intersection("Aritzia is on your left. You observe an intersection")
    assert not claims_intersection("No landmarks nearby")
    assert not claims_intersection("You are not at any intersection")
    assert not claims_intersection("There is no intersection here.")


def test_categories_and_rewards():
    plain = VIRLState("forward()", at_intersection=False)
    at_x = VIRLState("turn_direction(east)", at_intersection=True)
    v = verify(plain, reply("forward()"))
    assert (v.category, v.reward, v.correct, v.message) == ("correct_action", 1.0, True, "Correct action")
    assert v.action == {
        "action": "forward()",
        "observation": "No landmarks nearby",
        "instruction": "1. First, turn left.",
    }
    v = verify(plain, reply("stop()"))
    assert (v.category, v.reward, v.correct) == ("incorrect_action", -1.0, False)
    assert v.message.startswith(
        "you make incorrect action. Please avoid this action and try again in the same format:"
    )
    assert "[Output]" in v.message
    v = verify(plain, reply("forward()", obs="You observe an intersection"))
    assert (v.category, v.reward) == ("incorrect_observation", -1.5)
    assert v.message.startswith("you are not at any intersection. Please avoid this observation")
    v = verify(at_x, reply("turn_direction(east)", obs="No landmarks nearby"))
    assert v.category == "incorrect_observation" and v.message.startswith("you are at an intersection")
    v = verify(at_x, reply("turn_direction(East)", obs="X is on your left. You observe an intersection"))
    assert v.correct


def test_unparseable_counts_as_incorrect_action_with_help():
    state = VIRLState("forward()", at_intersection=False)
    v = verify(state, "I think we should go forward")
    assert (v.category, v.reward, v.correct) == ("unparseable", -1.0, False)
    assert '"action"' in v.message and "[Output]" in v.message
    v = verify(state, reply("fly()"))
    assert v.category == "unparseable" and "not in the action space" in v.message
    assert v.action is not None and v.action["action"] is None


def test_reply_wrapped_in_prose_and_code_fence():
    state = VIRLState("turn_direction(slightly right)", at_intersection=False, actions="relative")
    text = "Sure!\n```json\n" + reply("turn_direction(slightly right)") + "\n```"
    assert verify(state, text).correct


def test_verifier_is_pure():
    state = VIRLState("forward()", at_intersection=False)
    r = reply("forward()")
    assert verify(state, r) == verify(state, r)


# The exact action grammar (see verifier.py): every accepted spelling and a catalogue of near misses.
ACCEPTED = {
    "forward()": "forward()",
    "FORWARD": "forward()",
    "stop ( )": "stop()",
    "`stop()`": "stop()",
    '"forward()"': "forward()",
    "turn(east)": "turn_direction(east)",
    "turn direction(north_west)": "turn_direction(northwest)",
    "turn-direction( direction = 'south east' )": "turn_direction(southeast)",
    "turn_direction(\tnorth\t)": "turn_direction(north)",
}
REJECTED = [
    "forward(-)",
    "-stop()",
    "forward(\n)",
    "turn_direction(west.)",
    "stop().",
    "forward();",
    "forward()forward()",
    "forward(1)",
    "stop(now)",
    "turn_direction()",
    "turn_direction(west",
    "turn_direction(north\neast)",
    "turn_direction(north--east)",
    "turn_direction(x=)",
    "turn_direction('west\")",
    "\"forward()'",
    "forwards()",
    "go forward()",
    "turn_direction(west) please",
    "turn_direction(north)(south)",
]


@pytest.mark.parametrize(("raw", "expected"), sorted(ACCEPTED.items()))
def test_grammar_accepts_exactly_the_documented_spellings(raw: str, expected: str) -> None:
    assert normalize_action(raw, "absolute") == expected


@pytest.mark.parametrize("raw", REJECTED)
def test_grammar_rejects_malformed_spellings(raw: str) -> None:
    assert normalize_action(raw, "absolute") is None
    gt = "turn_direction(west)" if "turn" in raw else raw.strip("-`\"'").split("(")[0] + "()"
    v = verify(VIRLState(gt, at_intersection=False, check_observation=False), reply(raw))
    assert (v.category, v.reward, v.correct) == ("unparseable", -1.0, False)  # never rewarded
