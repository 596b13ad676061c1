"""The GeneralPoints verifier: the paper's reward categories, their order, messages and robustness."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sftrl.environments.generalpoints.cards import RANKS
from sftrl.environments.generalpoints.formula import parse_formula
from sftrl.environments.generalpoints.verifier import REWARDS, GPState, normalize_rank, verify

CLASSIC = GPState.for_hand(["3", "3", "8", "8"])
CLASSIC_VISION = GPState.for_hand(["3", "3", "8", "8"], check_cards=True)


def reply(
    formula: str | None = None, cards: list[str] | None = None, numbers: list[int] | None = None
) -> str:
    payload: dict[str, object] = {}
    if cards is not None:
        payload["cards"] = cards
    if numbers is not None:
        payload["number"] = numbers
    if formula is not None:
        payload["formula"] = formula
    return json.dumps(payload)


def test_reward_table_is_the_papers() -> None:
    assert REWARDS == {
        "correct": 5.0,
        "partial_solution": 1.0,
        "no_solution": -1.0,
        "incorrect_vision": -1.5,
        "incorrect_numbers": -2.0,
        "illegal_formula": -3.0,
    }


@pytest.mark.parametrize(
    ("formula", "category", "message"),
    [
        ("8/(3-8/3)", "correct", "Correct solution"),
        ("8/(3-8/3)=24", "correct", "Correct solution"),
        ("8 / ( 3 - 8 / 3 ) = 24", "correct", "Correct solution"),
        ("((8/(3-8/3)))", "correct", "Correct solution"),
        ("(8/(3-8/3", "partial_solution", "partial solution: the formula is incomplete"),
        ("8/(3-8/3", "partial_solution", "partial solution: the formula is incomplete"),
        ("3+3+8+8", "no_solution", "your formula evaluates to 22, not 24"),
        ("8/(3-3)*8", "no_solution", "division by zero"),
        (
            "8/(3-8)/3",
            "no_solution",
            "your formula evaluates to -8/15, not 24 "
            "(its start 8/(3-8 matches a solution; the rest does not)",
        ),
        ("2**5", "illegal_formula", "invalid sequence: '*' cannot follow '*' ('**')"),
        ("3^3+8+8", "illegal_formula", "illegal characters: '^'"),
        ("(3+3)*(8-8))", "illegal_formula", "unmatched closing parenthesis"),
        ("8/(3-8/3)*", "illegal_formula", "the formula is incomplete"),
        ("(3+3+8+8", "illegal_formula", "the formula is incomplete"),
        ("", "illegal_formula", "no formula found in your answer"),
        ("=24", "illegal_formula", "no formula found in your answer"),
        ("+".join(["3"] * 200), "illegal_formula", "formula too long"),
        ("3*8", "incorrect_numbers", "you didn't use numbers: [3, 8]"),
        ("3+3+8+8+8", "incorrect_numbers", "you used numbers: [8] too many times"),
        ("3*3+8+8-1", "incorrect_numbers", "you used invalid numbers: [1]"),
        ("24", "incorrect_numbers", "you used invalid numbers: [24], you didn't use numbers: [3, 8]"),
    ],
)
def test_categories_and_messages_for_the_classic_hand(formula: str, category: str, message: str) -> None:
    verdict = verify(CLASSIC, reply(formula))
    assert (verdict.category, verdict.message) == (category, message)
    assert verdict.reward == REWARDS[category] and verdict.correct == (category == "correct")


def test_official_example_categories() -> None:
    # A wrong card in vision mode.
    assert verify(CLASSIC_VISION, reply("8/(3-8/3)", cards=["3", "3", "8", "9"])).reward == -1.5
    # 11 for a jack when J counts as 10.
    hand = GPState.for_hand(["J", "2", "A", "A"])
    assert hand.values == (10, 2, 1, 1)
    verdict = verify(hand, reply("11*2+1+1"))
    assert verdict.reward == -2.0 and verdict.message.startswith("you used invalid numbers: [11]")
    # ... is right when J counts as 11.
    assert verify(GPState.for_hand(["J", "2", "A", "A"], face_cards="11-13"), reply("11*2+1+1")).reward == 5.0
    assert verify(CLASSIC, reply("2**5")).reward == -3.0
    assert verify(CLASSIC, reply("(8/(3-8/3")).reward == 1.0
    assert verify(CLASSIC, reply("3+3+8+8")).reward == -1.0


def test_the_papers_float_bug_is_not_copied() -> None:
    assert 8 / (3 - 8 / 3) != 24  # what eval() saw
    verdict = verify(CLASSIC, reply("8/(3-8/3)"))
    assert verdict.correct and verdict.details["formula_value"] == "24"


def test_the_papers_space_bug_is_not_copied() -> None:
    hand = GPState.for_hand(["10", "4", "A", "3"])
    assert verify(hand, reply("( 10 - 4 ) * ( 1 + 3 )")).correct
    assert verify(hand, reply("(10-4)*(1+3)")).correct


def test_the_papers_strict_json_bug_is_not_copied() -> None:
    strict = '{"cards": ["3", "3", "8", "8"], "number": [3, 3, 8, 8], "formula": "8/(3-8/3)=24"}'
    verdict = verify(CLASSIC_VISION, strict)
    assert verdict.correct and verdict.details["cards_correct"] is True


def test_vision_mode_checks_cards_as_a_multiset_without_revealing_them() -> None:
    state = GPState.for_hand(["K", "Q", "2", "A"], check_cards=True)
    formula = "10+10+2*1"
    assert state.values == (10, 10, 2, 1)
    for cards in (["A", "2", "Q", "K"], ["ace", "2", "queen", "king"], ["1", "2", "QH", "K♠"]):
        verdict = verify(state, reply(formula, cards=cards))
        assert verdict.details["cards_correct"] is True and verdict.category != "incorrect_vision", cards
    for cards, wrong in (
        (["A", "2", "Q", "Q"], 1),
        (["A", "2"], 2),
        (["3", "4", "5", "6"], 4),
        (["X", "2", "Q", "K"], 1),
    ):
        verdict = verify(state, reply(formula, cards=cards))
        assert verdict.category == "incorrect_vision" and verdict.reward == -1.5
        assert verdict.message == f"you recognized wrong cards ({wrong} of 4 wrong)"
        assert verdict.details["cards_correct"] is False
        for rank in ("K", "Q", "A", "king", "queen"):  # never the answer
            assert rank not in verdict.message
    for bad in (reply(formula), "no json at all", reply(formula, cards=[])):
        verdict = verify(state, bad)
        assert verdict.category == "incorrect_vision"
        assert verdict.message == "you recognized wrong cards: no cards found in your answer"


def test_vision_checks_cards_before_the_formula_and_language_mode_ignores_cards() -> None:
    assert verify(CLASSIC_VISION, reply("2**5", cards=["3", "3", "8", "A"])).category == "incorrect_vision"
    assert verify(CLASSIC_VISION, reply("2**5", cards=["3", "3", "8", "8"])).category == "illegal_formula"
    verdict = verify(CLASSIC, reply("8/(3-8/3)", cards=["K", "K", "K", "K"]))
    assert verdict.correct and "cards_correct" not in verdict.details


def test_error_order_syntax_before_numbers_before_incompleteness() -> None:
    assert verify(CLASSIC, reply("3+*11")).category == "illegal_formula"
    assert verify(CLASSIC, reply("(8/(3-8/11")).category == "incorrect_numbers"
    assert verify(CLASSIC, reply("8/(3-")).category == "incorrect_numbers"


def test_missing_formula_and_reply_without_json() -> None:
    assert verify(CLASSIC, reply(cards=["3", "3", "8", "8"])).message == "no formula found in your answer"
    assert verify(CLASSIC, "I don't know").category == "illegal_formula"
    assert verify(CLASSIC, '{"formula": ["8/(3-8/3)"]}').category == "illegal_formula"
    # A reply that is nothing but a formula is read as the formula.
    assert verify(CLASSIC, "8/(3-8/3)=24").correct
    assert verify(CLASSIC, "3+3+8+8").category == "no_solution"


def test_action_and_details_are_json_data() -> None:
    verdict = verify(
        CLASSIC_VISION, "{'cards': [3, '3', 8, '8'], 'number': [3, 3, 8, 'eight'], 'formula': '3+3+8+8'}"
    )
    assert verdict.action == {
        "cards": ["3", "3", "8", "8"],
        "number": [3, 3, 8, "eight"],
        "formula": "3+3+8+8",
    }
    assert verdict.details["formula_value"] == "22" and verdict.details["cards_correct"] is True
    json.dumps(verdict.model_dump())
    assert verify(CLASSIC, "nothing here").action is None
    assert verify(CLASSIC, reply("3*8")).action == {"formula": "3*8"}


@pytest.mark.parametrize(
    ("raw", "rank"),
    [
        ("A", "A"),
        ("a", "A"),
        ("ace", "A"),
        (1, "A"),
        ("1", "A"),
        ("T", "10"),
        ("10", "10"),
        (10, "10"),
        (10.0, "10"),
        ("J", "J"),
        ("jack", "J"),
        ("Queen", "Q"),
        ("k", "K"),
        (" 7 ", "7"),
        ("'8'", "8"),
        ("QH", "Q"),
        ("10♠", "10"),
        (11, None),
        ("X", None),
        (True, None),
        (None, None),
        (2.5, None),
        ("", None),
        (["A"], None),
    ],
)
def test_normalize_rank(raw: object, rank: str | None) -> None:
    assert normalize_rank(raw) == rank


def test_state_is_frozen_and_canonical() -> None:
    state = GPState.for_hand(["t", "ace", "Q", "k"], face_cards="11-13")
    assert state.ranks == ("10", "A", "Q", "K") and state.values == (10, 1, 12, 13)
    with pytest.raises(ValidationError):
        state.target = 10  # type: ignore[misc]


def test_prefixes_are_compared_token_wise() -> None:
    # "1" starts the string "10*2+3+1" but not its first token, so it is no partially correct prefix.
    state = GPState(ranks=("A", "10", "2", "3"), values=(1, 10, 2, 3), target=24, solutions=("10*2+3+1",))
    assert verify(state, reply("1+10+2+3")).message == "your formula evaluates to 16, not 24"
    assert verify(state, reply("10*2+1-3")).message == (
        "your formula evaluates to 18, not 24 (its start 10*2 matches a solution; the rest does not)"
    )
    assert verify(state, reply("10*2+3+1")).correct
    # A lone bracket or number is no prefix worth naming.
    state = GPState(ranks=("8", "3", "8", "3"), values=(8, 3, 8, 3), target=24, solutions=("(8/(3-8/3))",))
    assert verify(state, reply("(8+3)*8/3")).message == "your formula evaluates to 88/3, not 24"


# -- properties ---------------------------------------------------------------------------------------
hands = st.tuples(
    st.lists(st.sampled_from(RANKS), min_size=4, max_size=4), st.sampled_from(["10", "11-13"]), st.booleans()
)


def state_for(hand: tuple[list[str], str, bool]) -> GPState:
    ranks, rule, vision = hand
    return GPState.for_hand(ranks, face_cards=rule, check_cards=vision)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(hand=hands, data=st.data())
def test_every_solver_solution_is_scored_correct(
    hand: tuple[list[str], str, bool], data: st.DataObject
) -> None:
    state = state_for(hand)
    assume(state.solutions)
    picks = data.draw(st.lists(st.sampled_from(state.solutions), min_size=1, max_size=5))
    for formula in picks:
        text = reply(f"{formula}={state.target}", cards=list(state.ranks), numbers=list(state.values))
        verdict = verify(state, text)
        assert verdict.category == "correct" and verdict.reward == 5.0 and verdict.correct


def styles(formula: str, cards: list[str], numbers: list[int], spaced: str, target: int) -> list[str]:
    """The same answer written the ways models write it."""
    strict = json.dumps({"cards": cards, "number": numbers, "formula": formula})
    return [
        strict,
        json.dumps({"cards": cards, "number": numbers, "formula": formula}, indent=2),
        f"```json\n{strict}\n```",
        f"Here is my answer.\n{strict}\nDone.",
        json.dumps({"cards": cards, "number": numbers, "formula": f"{formula}={target}"}),
        json.dumps({"cards": cards, "number": numbers, "formula": f"{formula} = {target}"}),
        json.dumps({"cards": cards, "number": numbers, "formula": spaced}),
        # The paper's demonstration format: Python-ish lists and a trailing comma.
        f'{{\n  "cards": {cards!r},\n  "number": {numbers!r},\n  "formula": "{formula}={target}",\n}}',
        f"{{'cards': {cards!r}, 'number': {numbers!r}, 'formula': '{spaced}',}}",
        f"{{cards: [{', '.join(cards)}], number: {numbers}, formula: {formula}}}",
    ]


def formulas_for(state: GPState) -> st.SearchStrategy[str]:
    values = [str(v) for v in state.values]
    token = st.sampled_from([*values, *values, "+", "-", "*", "/", "(", ")"])
    soup = st.lists(token, max_size=12).map("".join)
    shuffled = st.permutations(values).flatmap(
        lambda vs: st.tuples(
            st.lists(st.sampled_from("+-*/"), min_size=3, max_size=3),
            st.sampled_from(
                ["{0}{4}{1}{5}{2}{6}{3}", "({0}{4}{1}){5}({2}{6}{3})", "{0}{4}({1}{5}({2}{6}{3}))"]
            ),
        ).map(lambda t: t[1].format(*vs, *t[0]))
    )
    candidates = [soup, shuffled]
    if state.solutions:
        sol = st.sampled_from(state.solutions)
        candidates += [sol, sol.flatmap(lambda s: st.integers(1, len(s)).map(lambda n: s[:n]))]
    return st.one_of(candidates)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hand=hands, data=st.data())
def test_spacing_and_json_style_never_change_the_verdict(
    hand: tuple[list[str], str, bool], data: st.DataObject
) -> None:
    state = state_for(hand)
    formula = data.draw(formulas_for(state))
    assume(formula)
    tokens = parse_formula(formula).tokens
    pads = data.draw(
        st.lists(st.sampled_from(["", " ", "  "]), min_size=len(tokens) + 1, max_size=len(tokens) + 1)
    )
    spaced = pads[0] + "".join(t + p for t, p in zip(tokens, pads[1:], strict=True))
    verdicts = [
        verify(state, text)
        for text in styles(formula, list(state.ranks), list(state.values), spaced, state.target)
    ]
    outcomes = {(v.category, v.reward, v.message) for v in verdicts}
    assert len(outcomes) == 1, (formula, outcomes)


INJECTIONS = [
    "__import__('os').system('touch {pwned}')",
    "().__class__.__base__.__subclasses__()",
    "exec(\"open('{pwned}', 'w')\")",
    "eval(compile('1','','eval'))",
    "{{'formula': __import__('os').system('touch {pwned}')}}",
    "{{\"formula\": \"__import__('os').system('touch {pwned}')\"}}",
    "{{'cards': [open('{pwned}', 'w')], 'formula': '1+1'}}",
    "lambda: 24",
    "9" * 5000,
    "9**9**9**9",
]


@pytest.fixture
def no_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any use of eval/exec/compile during verification fail loudly."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the verifier must never evaluate model text")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)


@pytest.mark.parametrize("template", INJECTIONS, ids=range(len(INJECTIONS)))
def test_injection_attempts_are_just_illegal_text(template: str, tmp_path: Path, no_eval: None) -> None:
    pwned = tmp_path / "pwned"
    text = template.format(pwned=pwned)
    for state in (CLASSIC, CLASSIC_VISION):
        for candidate in (text, reply(text), reply(text, cards=["3", "3", "8", "8"])):
            verdict = verify(state, candidate)
            assert verdict.reward < 0 and not verdict.correct
    assert not pwned.exists()


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(max_size=400)
    | st.text(alphabet=st.sampled_from(list("{}[]\"':,=()+-*/ 0123456789\nformulacardsnumber")), max_size=200)
    | st.builds(
        lambda f, c: json.dumps({"cards": c, "formula": f}),
        st.text(max_size=40),
        st.lists(st.text(max_size=3) | st.integers(), max_size=5),
    ),
    vision=st.booleans(),
)
def test_verify_never_raises_on_any_reply(text: str, vision: bool) -> None:
    verdict = verify(CLASSIC_VISION if vision else CLASSIC, text)
    assert verdict.category in REWARDS and verdict.reward == REWARDS[verdict.category]
    json.dumps(verdict.model_dump())


@pytest.mark.parametrize("depth", [100, 10_000])
def test_deeply_nested_replies(depth: int) -> None:
    for text in ("[" * depth, "{" * depth, '{"formula": "' + "(" * depth + '"}', "(" * depth):
        assert verify(CLASSIC, text).category == "illegal_formula"
