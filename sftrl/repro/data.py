"""Training items and evaluation sets: the stage-0 curriculum, expert GP-L episodes, held-out hands.

Stage 0 ("foundation model") never sees a GeneralPoints episode of the training rule: its targets are
never 24, its face-card mapping is drawn at random (1–13 each) and written in the prompt, and it mixes
in easier items (2–3 cards, evaluating an expression). Expert answers are correct by construction and
the tests check each one with the project's verifier. Stage 1–2 episodes are GP-L under the training
rule (J/Q/K = 10, target 24) on hands disjoint from the fixed, seeded evaluation sets.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from sftrl.environments.generalpoints.cards import RANKS, rank_value
from sftrl.environments.generalpoints.formula import render
from sftrl.environments.generalpoints.prompts import reply_text
from sftrl.environments.generalpoints.solver import is_solvable, solve
from sftrl.environments.generalpoints.verifier import GPState, verify
from sftrl.repro.codec import (
    ATTEMPT_LEN,
    attempt_text,
    eval_prompt,
    feedback_code,
    make_prompt,
    value_text,
)

TARGET = 24
TRAIN_FACE: tuple[int, int, int] = (10, 10, 10)
OOD_FACE: tuple[int, int, int] = (11, 12, 13)
FACES = frozenset({"J", "Q", "K"})
_OPS = "+-*/"


@dataclass(frozen=True)
class Item:
    """One training sequence: a prompt, failed attempts with their feedback, then the expert answer."""

    prompt: str
    attempts: tuple[str, ...]
    """Fixed-width attempts; all but the last are wrong, the last is correct."""
    feedbacks: tuple[str, ...]
    """Feedback after each wrong attempt (one fewer than ``attempts``)."""
    kind: str = "M"

    @property
    def text(self) -> str:
        out = self.prompt
        for i, a in enumerate(self.attempts):
            out += a
            if i < len(self.feedbacks):
                out += self.feedbacks[i]
        return out


@dataclass(frozen=True)
class Hand:
    """A GP hand for evaluation or training: ranks in prompt order and the face mapping in force."""

    ranks: tuple[str, ...]
    face: tuple[int, int, int]
    target: int = TARGET

    @property
    def values(self) -> tuple[int, ...]:
        return face_values(self.ranks, self.face)

    @property
    def prompt(self) -> str:
        return make_prompt(self.face, self.target, self.ranks)

    def state(self) -> GPState:
        values = self.values
        return GPState(
            ranks=self.ranks, values=values, target=self.target, solutions=solve(values, self.target)
        )


def face_values(ranks: Sequence[str], face: tuple[int, int, int]) -> tuple[int, ...]:
    mapping = {"J": face[0], "Q": face[1], "K": face[2]}
    return tuple(mapping[r] if r in mapping else rank_value(r, "10") for r in ranks)


def random_expression(values: Sequence[int], rng: random.Random) -> tuple[str, Fraction | None]:
    """A random formula using each of ``values`` once, with minimal parentheses, and its exact value."""
    items: list[tuple[tuple[str, int], Fraction | None]] = [((str(v), 3), Fraction(v)) for v in values]
    rng.shuffle(items)
    while len(items) > 1:
        i = rng.randrange(len(items) - 1)
        (left, a), (right, b) = items[i], items[i + 1]
        op = rng.choice(_OPS)
        if a is None or b is None or (op == "/" and b == 0):
            value = None
        else:
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
        items[i : i + 2] = [(render(op, left, right), value)]
    (text, _), value = items[0]
    return text, value


def _fraction_text(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def verdict_code(
    state: GPState, ranks: Sequence[str], numbers: Sequence[int], formula: str
) -> tuple[str, float]:
    """(fixed-width feedback, reward) of one attempt, both from the project's GP verifier."""
    verdict = verify(state, reply_text(ranks=list(ranks), numbers=list(numbers), formula=formula))
    return feedback_code(verdict.category, verdict.details.get("formula_value")), verdict.reward


def _wrong_attempts(
    state: GPState, ranks: Sequence[str], values: Sequence[int], n: int, rng: random.Random
) -> tuple[list[str], list[str]]:
    """``n`` wrong attempts (random formulas, sometimes over wrong numbers) and the verifier's feedback."""
    attempts: list[str] = []
    feedbacks: list[str] = []
    while len(attempts) < n:
        nums = list(values)
        if rng.random() < 0.25:
            nums[rng.randrange(len(nums))] = rng.randint(1, 13)
        formula, value = random_expression(nums, rng)
        if value == state.target and sorted(nums) == sorted(values):
            continue
        code, _ = verdict_code(state, ranks, values, formula)
        if code[0] == "c":
            continue
        attempts.append(attempt_text(values, formula))
        feedbacks.append(code)
    return attempts, feedbacks


def _make_item(rng: random.Random, n_cards: int, n_wrong: int) -> Item | None:
    face = (rng.randint(1, 13), rng.randint(1, 13), rng.randint(1, 13))
    ranks = tuple(rng.choice(RANKS) for _ in range(n_cards))
    values = face_values(ranks, face)
    formula, value = random_expression(values, rng)
    # Never 24: no stage-0 item is a GeneralPoints episode, whatever the face mapping.
    if value is None or value.denominator != 1 or not 1 <= value <= 99 or value == TARGET:
        return None
    target = int(value)
    answer = attempt_text(values, formula)
    state = GPState(ranks=ranks, values=values, target=target, solutions=(formula,))
    attempts, feedbacks = _wrong_attempts(state, ranks, values, n_wrong, rng)
    return Item(make_prompt(face, target, ranks), (*attempts, answer), tuple(feedbacks), kind=f"M{n_cards}")


def _eval_item(rng: random.Random, n_wrong: int) -> Item | None:
    values = [rng.randint(1, 13) for _ in range(rng.choice((2, 3)))]
    formula, value = random_expression(values, rng)
    if value is None:
        return None
    answer = _fraction_text(value)
    attempts, feedbacks = [], []
    while len(attempts) < n_wrong:
        wrong = value + rng.choice((-3, -2, -1, 1, 2, 3, 10))
        attempts.append(value_text(_fraction_text(wrong)))
        feedbacks.append(feedback_code("no_solution", _fraction_text(wrong)))
    if len(answer) + 1 > ATTEMPT_LEN:
        return None
    return Item(eval_prompt(formula), (*attempts, value_text(answer)), tuple(feedbacks), kind="E")


STAGE0_MIX: tuple[tuple[str, float], ...] = (("M4", 0.55), ("M3", 0.2), ("M2", 0.1), ("E", 0.15))


def stage0_item(rng: random.Random, n_wrong: int = 0) -> Item:
    """One stage-0 item with ``n_wrong`` failed attempts before the answer (kinds mixed as STAGE0_MIX)."""
    kinds, weights = zip(*STAGE0_MIX, strict=True)
    while True:
        kind = rng.choices(kinds, weights)[0]
        item = _eval_item(rng, n_wrong) if kind == "E" else _make_item(rng, int(kind[1]), n_wrong)
        if item is not None:
            return item


def stage0_task_item(rng: random.Random) -> Item:
    """The stage-0 benchmark task: 4 cards, random face mapping, target != 24, no revision."""
    while True:
        item = _make_item(rng, 4, 0)
        if item is not None:
            return item


def expert_episode(hand: Hand, rng: random.Random, n_wrong: int = 0) -> Item:
    """An expert GP-L episode under ``hand``'s rule: optional failed attempts, then a solver solution."""
    state = hand.state()
    if not state.solutions:
        raise ValueError(f"hand {hand.ranks} has no solution")
    answer = attempt_text(hand.values, rng.choice(state.solutions))
    attempts, feedbacks = _wrong_attempts(state, hand.ranks, hand.values, n_wrong, rng)
    return Item(hand.prompt, (*attempts, answer), tuple(feedbacks), kind="GP")


# -- hands and evaluation sets -----------------------------------------------------------------------


def multiset(ranks: Sequence[str]) -> tuple[str, ...]:
    """Canonical form of a hand regardless of card order (ranks sorted A..K)."""
    return tuple(sorted(ranks, key=RANKS.index))


def _multisets() -> list[tuple[str, ...]]:
    return list(itertools.combinations_with_replacement(RANKS, 4))


def _solvable(ranks: Sequence[str], face: tuple[int, int, int]) -> bool:
    values = face_values(ranks, face)
    return is_solvable(values, TARGET) and all(
        len(attempt_text(values, s)) == ATTEMPT_LEN for s in solve(values, TARGET)[:1]
    )


@dataclass(frozen=True)
class Splits:
    """Fixed, seeded hands: training pool (ID rule) and the held-out ID and rule-OOD evaluation sets."""

    train: tuple[tuple[str, ...], ...]
    """Rank multisets (sorted) the post-training stages may use."""
    id_eval: tuple[Hand, ...]
    ood_eval: tuple[Hand, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "target": TARGET,
            "train_multisets": [list(m) for m in self.train],
            "id": [{"ranks": list(h.ranks), "face": list(h.face)} for h in self.id_eval],
            "rule_ood": [{"ranks": list(h.ranks), "face": list(h.face)} for h in self.ood_eval],
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")


def make_splits(n_eval: int = 200, seed: int = 1234) -> Splits:
    """Split the solvable ID multisets into held-out (``n_eval``) and training; draw ``n_eval`` OOD hands.

    The card order shown in each evaluation prompt is drawn once here, so the sets are fixed by seed.
    """
    rng = random.Random(seed)
    id_ok = [m for m in _multisets() if _solvable(m, TRAIN_FACE)]
    rng.shuffle(id_ok)
    held, train = id_ok[:n_eval], id_ok[n_eval:]
    ood_ok = [m for m in _multisets() if FACES & set(m) and _solvable(m, OOD_FACE)]
    rng.shuffle(ood_ok)

    def shown(m: tuple[str, ...], face: tuple[int, int, int]) -> Hand:
        order = list(m)
        rng.shuffle(order)
        return Hand(tuple(order), face)

    return Splits(
        train=tuple(sorted(train)),
        id_eval=tuple(shown(m, TRAIN_FACE) for m in held),
        ood_eval=tuple(shown(m, OOD_FACE) for m in ood_ok[:n_eval]),
    )


def training_hand(splits: Splits, rng: random.Random) -> Hand:
    """A training-rule hand from the training pool, cards in random order."""
    order = list(rng.choice(splits.train))
    rng.shuffle(order)
    return Hand(tuple(order), TRAIN_FACE)


def hand_from_prompt(prompt: str) -> Hand:
    """The hand a make-target prompt shows (inverse of :func:`make_prompt`)."""
    from sftrl.repro.codec import CHAR_RANK

    if not prompt.startswith("M"):
        raise ValueError(f"not a make-target prompt: {prompt!r}")
    face = (int(prompt[2:4]), int(prompt[5:7]), int(prompt[8:10]))
    ranks = tuple(CHAR_RANK[c] for c in prompt[13:17] if c != "_")
    return Hand(ranks, face, int(prompt[11:13]))


def stage0_eval_hands(n: int = 200, seed: int = 4321) -> list[Hand]:
    """The fixed stage-0 benchmark: ``n`` seeded 4-card items, random mapping, target != 24."""
    rng = random.Random(seed)
    return [hand_from_prompt(stage0_task_item(rng).prompt) for _ in range(n)]
