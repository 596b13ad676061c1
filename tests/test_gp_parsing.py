"""The shared tolerant reply parser: strict and loose JSON, fences, truncation, limits, never raising."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftrl.environments.parsing import (
    ParseError,
    as_list,
    extract_fields,
    find_objects,
    loads_loose,
    strip_code_fences,
)

GP = ("cards", "number", "formula")
NAV = ("current observation", "current instruction", "action")
EXPECTED = {"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "(1+3)*6=24"}


@pytest.mark.parametrize(
    "reply",
    [
        json.dumps(EXPECTED),
        json.dumps(EXPECTED, indent=2),
        # The paper's own demonstration style: single-quoted list items and a trailing comma.
        "{\n  \"cards\": ['A', '3', 'K', '6'],\n  \"number\": [1, 3, 10, 6],\n"
        '  "formula": "(1+3)*6=24",\n}',
        "{'cards': ['A', '3', 'K', '6'], 'number': [1, 3, 10, 6], 'formula': '(1+3)*6=24',}",
        "{cards: ['A', '3', 'K', '6'], number: [1, 3, 10, 6], formula: (1+3)*6=24}",
        '```json\n{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "(1+3)*6=24"}\n```',
        'Let me think. 1+3 is 4, and 4*6 = 24.\n\n{"cards": ["A","3","K","6"], "number": [1,3,10,6],'
        ' "formula": "(1+3)*6=24"}\nHope this helps!',
        '{" Cards ": ["A","3","K","6"], "NUMBER": [1,3,10,6], "Formula": "(1+3)*6=24"}',
        '{"cards": ["A","3","K","6"]\n "number": [1,3,10,6]\n "formula": "(1+3)*6=24"}',
    ],
)
def test_reply_styles_give_the_same_fields(reply: str) -> None:
    assert extract_fields(reply, GP) == EXPECTED


def test_bare_words_become_strings_and_numbers_stay_numbers() -> None:
    got = extract_fields("{'cards': [4, 3, 2, K], 'number': [A, 10, J], 'ok': True}", [*GP, "ok"])
    assert got == {"cards": [4, 3, 2, "K"], "number": ["A", 10, "J"], "ok": True}


def test_missing_keys_are_absent_and_result_keys_are_spelled_as_asked() -> None:
    got = extract_fields('{"Formula": "3*8", "number": null}', ["FORMULA ", "number", "cards"])
    assert got == {"FORMULA ": "3*8"}


def test_truncated_reply_still_yields_the_formula() -> None:
    reply = "{\n  \"cards\": ['3', '3', '8', '8'],\n  \"number\": [3, 3, 8, 8],\n  \"formula\": \"(8/(3-8/3"
    assert extract_fields(reply, GP) == {
        "cards": ["3", "3", "8", "8"],
        "number": [3, 3, 8, 8],
        "formula": "(8/(3-8/3",
    }
    assert extract_fields("'formula': '8/(3-8/3)=24", GP) == {"formula": "8/(3-8/3)=24"}
    assert extract_fields('"formula": 8/(3-8/3), "cards": [3, 3, 8', GP) == {
        "formula": "8/(3-8/3)",
        "cards": "[3, 3, 8",
    }


def test_the_last_complete_answer_wins_over_an_echoed_template() -> None:
    reply = (
        'The format is {"cards": [x, y, z, w], "number": [a, b, c, d], "formula": "an equation"}.\n'
        'My answer: {"cards": ["2", "3", "4", "5"], "number": [2, 3, 4, 5], "formula": "2*(3+4+5)"}'
    )
    assert extract_fields(reply, GP)["formula"] == "2*(3+4+5)"
    # An object holding more of the wanted keys beats a later one holding fewer.
    reply = '{"cards": [1, 2], "formula": "1+2"} and then {"formula": "oops"}'
    assert extract_fields(reply, GP) == {"cards": [1, 2], "formula": "1+2"}


def test_nested_answer_objects_and_broken_outer_objects() -> None:
    assert extract_fields('{"answer": {"formula": "3*8"}}', GP) == {"formula": "3*8"}
    assert extract_fields('{ thinking... :( {"formula": "3*8"} }', GP) == {"formula": "3*8"}


def test_apostrophes_in_prose_do_not_hide_the_answer() -> None:
    reply = 'I\'ll use (3+3)*4. {"formula": "(3+3)*4", "note": "it\'s {fine}"} That\'s it.'
    assert extract_fields(reply, ["formula", "note"]) == {"formula": "(3+3)*4", "note": "it's {fine}"}


def test_navigation_keys_with_spaces() -> None:
    reply = (
        "{'Current Observation': 'an intersection on my left',\n"
        " 'current  instruction': 'turn left at the bank',\n 'action': 'turn_direction(west)',}"
    )
    assert extract_fields(reply, NAV) == {
        "current observation": "an intersection on my left",
        "current instruction": "turn left at the bank",
        "action": "turn_direction(west)",
    }
    assert extract_fields('"current observation": "none",\n"action": forward()', NAV) == {
        "current observation": "none",
        "action": "forward()",
    }


def test_code_fences_are_stripped_but_their_content_kept() -> None:
    assert strip_code_fences('```json\n{"a": 1}\n```').strip() == '{"a": 1}'
    assert strip_code_fences("```\nx\n```").strip() == "x"


def test_find_objects_respects_quotes_and_balance() -> None:
    text = 'x {"a": "}{", "b": {"c": 1}} y {z'
    assert [text[s:e] for s, e in find_objects(text)] == ['{"a": "}{", "b": {"c": 1}}']
    assert find_objects("no braces") == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("{'a': 1, 'b': [1, 2,], }", {"a": 1, "b": [1, 2]}),
        ("[A, 10, J]", ["A", 10, "J"]),
        ("[True, False, None, null, -2.5, 1e3]", [True, False, None, None, -2.5, 1000.0]),
        ('"a\\n\\"b\\" \\u00e9"', 'a\n"b" é'),
        ("'it\\'s'", "it's"),
        ("{x: {y: [[]]}}", {"x": {"y": [[]]}}),
        ("[" + "9" * 5000 + "]", ["9" * 5000]),  # more digits than int() accepts stays text
    ],
    ids=range(7),
)
def test_loads_loose(text: str, value: object) -> None:
    assert loads_loose(text) == value


@pytest.mark.parametrize(
    "text", ["{", "[1, 2", "{'a' 1}", "'open", "{a: }", "", "[" * 50 + "]" * 50, "x" * 30_000], ids=range(8)
)
def test_loads_loose_raises_only_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        loads_loose(text)


@pytest.mark.parametrize(
    ("value", "items"),
    [
        (["A", 3, 10.0, None], ["A", "3", "10"]),
        (("Q", "K"), ["Q", "K"]),
        ("['A', '3', 'K']", ["A", "3", "K"]),
        ("[A, 10, J]", ["A", "10", "J"]),
        ("A, 3, K", ["A", "3", "K"]),
        ("A 3 K", ["A", "3", "K"]),
        ("[4, 3, 2", ["4", "3", "2"]),
        ("(1, 2)", ["1", "2"]),
        ("[]", []),
        ("", None),
        (5, None),
        ({"a": 1}, None),
        (None, None),
    ],
)
def test_as_list(value: object, items: list[str] | None) -> None:
    assert as_list(value) == items


HOSTILE = {
    "open-brackets": "[" * 10_000,
    "open-braces": "{" * 10_000,
    "open-objects": '{"a": ' * 5_000,
    "balanced-deep": "[" * 10_000 + "]" * 10_000,
    "deep-value": '{"formula": ' + "[" * 10_000,
    "quotes": '"' * 10_001,
    "apostrophes": "'" * 10_001 + "{",
    "huge-string": "{'formula': '" + "x" * 200_000,
    "backslashes": "\\" * 1000 + '{"formula": "1"}',
    "many-objects": '{"formula": 1}' * 20_000,
    "many-keys": '"formula": ' * 20_000,
    "nested-braces": "{" * 50_000 + "}" * 50_000,
}


@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_inputs_are_bounded(text: str) -> None:
    t0 = time.perf_counter()
    got = extract_fields(text, GP)
    assert isinstance(got, dict) and set(got) <= set(GP)
    assert time.perf_counter() - t0 < 2.0


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(max_size=300)
    | st.text(alphabet=st.sampled_from(list("{}[]\"':,\\\n abc123formula")), max_size=300)
)
def test_extract_fields_never_raises(text: str) -> None:
    got = extract_fields(text, GP)
    assert set(got) <= set(GP) and None not in got.values()
    for value in got.values():
        json.dumps(value)  # always plain JSON data
        as_list(value)


@settings(max_examples=200, deadline=None)
@given(
    payload=st.dictionaries(
        st.sampled_from(GP),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
        | st.lists(st.integers(0, 13) | st.sampled_from(["A", "J", "Q", "K"]), max_size=5),
    )
)
def test_strict_json_round_trips(payload: dict[str, object]) -> None:
    got = extract_fields("Answer:\n" + json.dumps(payload), GP)
    assert got == {k: v for k, v in payload.items()}
