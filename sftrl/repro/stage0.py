"""Stage 0: the "foundation model" curriculum, written as an ordinary SFT dataset.

No item is a GeneralPoints episode of the training rule: "make target T from these cards" items use
the env's ``compact`` prompt with a face-card mapping drawn at random (1-13 each, so 11/12/13 occur)
and targets 1-99 but never 24 (4, 3 or 2 cards), plus "evaluate this expression" items. A share of
the items shows 1-2 failed attempts, each followed by the feedback the project's GP verifier gives
(the same compact feedback the env sends), before the answer. Targets come from a random expression
over the hand, which is also the answer, so every answer is correct by construction (the tests check
each with the verifier).

Rows are TRL conversational ``prompt`` / ``completion`` pairs (failed attempts and feedback are
context, only the final answer is trained), saved with ``save_to_disk`` like ``agent data sft``
output, so stage 0 is trained by ``agent train sft``::

    agent tiny-model --kind char --out models/char
    python -m sftrl.repro.stage0 --rows 400000 --out data/stage0
    agent train sft --data data/stage0 --model models/char --out ckpt/stage0 ...
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from sftrl.environments.generalpoints import compact
from sftrl.environments.generalpoints.cards import RANKS, rank_value
from sftrl.environments.generalpoints.formula import render
from sftrl.environments.generalpoints.verifier import GPState, verify

TARGET = 24
MIX: tuple[tuple[str, float], ...] = (("M4", 0.55), ("M3", 0.2), ("M2", 0.1), ("E", 0.15))
"""Item kinds: make-target with 4 / 3 / 2 cards, expression evaluation - the weights of each draw.
An unusable make-target draw is redrawn with a new kind, so the rows come out with more of the kinds
that are rarely unusable: 37% M4, 19% M3, 13% M2, 31% E (20,000 rows of seed 0; the shipped model's
curriculum, kept as it is so its rebuild command still rebuilds it)."""
REVISION_MIX: tuple[float, float, float] = (0.7, 0.2, 0.1)
"""Probability of 0, 1, 2 failed attempts before the answer."""
SHUFFLED_SHARE = 0.25
"""Share of make-target answers whose formula takes the numbers in a shuffled order; the rest use
them in hand order (so the answer's pairs are the hand copied, and the formula copies the numbers
in that order): the skill left to learn is the operators and brackets, as the compact expert's
preference for hand-order solutions asks of the later stages too."""
_OPS = "+-*/"


def random_expression(
    values: Sequence[int], rng: random.Random, *, shuffle: bool = True
) -> tuple[str, Fraction | None]:
    """A random formula using each of ``values`` once (in a shuffled order, or in the given order),
    with minimal brackets, and its exact value."""
    items: list[tuple[tuple[str, int], Fraction | None]] = [((str(v), 3), Fraction(v)) for v in values]
    if shuffle:
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


def face_values(ranks: Sequence[str], face: Sequence[int]) -> list[int]:
    mapping = dict(zip(("J", "Q", "K"), face, strict=True))
    return [mapping[r] if r in mapping else rank_value(r, "10") for r in ranks]


def _wrong_attempts(state: GPState, n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` wrong attempts (random formulas, sometimes over wrong numbers) and the verifier's feedback."""
    out: list[tuple[str, str]] = []
    values = list(state.values)
    while len(out) < n:
        nums = list(values)
        if rng.random() < 0.25:
            nums[rng.randrange(len(nums))] = rng.randint(1, 13)
        formula, _ = random_expression(nums, rng)
        attempt = compact.reply(ranks=state.ranks, numbers=values, formula=formula)
        verdict = verify(state, attempt, style="compact")
        if verdict.correct:
            continue
        out.append((attempt, compact.feedback(verdict.category, verdict.details)))
    return out


def make_target_item(
    rng: random.Random, n_cards: int, n_wrong: int, shuffled_share: float = SHUFFLED_SHARE
) -> dict[str, Any] | None:
    """A make-target-T item (random face mapping, T != 24) or None when the draw is unusable."""
    face = [rng.randint(1, 13) for _ in range(3)]
    ranks = [rng.choice(RANKS) for _ in range(n_cards)]
    values = face_values(ranks, face)
    formula, value = random_expression(values, rng, shuffle=rng.random() < shuffled_share)
    if value is None or value.denominator != 1 or not 1 <= value <= 99 or value == TARGET:
        return None
    target = int(value)
    state = GPState(ranks=tuple(ranks), values=tuple(values), target=target, solutions=(formula,))
    prompt = [{"role": "user", "content": compact.prompt(ranks=ranks, face_values=face, target=target)}]
    for attempt, feedback in _wrong_attempts(state, n_wrong, rng):
        prompt += [{"role": "assistant", "content": attempt}, {"role": "user", "content": feedback}]
    answer = compact.reply(ranks=ranks, numbers=values, formula=formula)
    return {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": answer}],
        "kind": f"M{n_cards}",
        "target": target,
        "ranks": " ".join(ranks),
        "face": " ".join(map(str, face)),
    }


def eval_item(rng: random.Random) -> dict[str, Any] | None:
    """``= EXPR`` -> its exact value (arithmetic practice on 2-3 numbers)."""
    values = [rng.randint(1, 13) for _ in range(rng.choice((2, 3)))]
    formula, value = random_expression(values, rng)
    if value is None:
        return None
    return {
        "prompt": [{"role": "user", "content": f"= {formula}"}],
        "completion": [{"role": "assistant", "content": _fraction_text(value)}],
        "kind": "E",
        "target": 0,
        "ranks": "",
        "face": "",
    }


def item(rng: random.Random, shuffled_share: float = SHUFFLED_SHARE) -> dict[str, Any]:
    """One curriculum row (kinds mixed as MIX, revision depth as REVISION_MIX)."""
    kinds, weights = zip(*MIX, strict=True)
    while True:
        kind = rng.choices(kinds, weights)[0]
        if kind == "E":
            row = eval_item(rng)
        else:
            n_wrong = rng.choices(range(len(REVISION_MIX)), REVISION_MIX)[0]
            row = make_target_item(rng, int(kind[1]), n_wrong, shuffled_share)
        if row is not None:
            return row


def task_items(n: int, seed: int = 4321) -> list[dict[str, Any]]:
    """The stage-0 benchmark: ``n`` seeded 4-card make-target items (random mapping, T != 24, no
    revision), the held-out measure of the foundation model on its own task."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        row = make_target_item(rng, 4, 0)
        if row is not None:
            out.append(row)
    return out


MESSAGE_COLUMNS: tuple[str, ...] = ("prompt", "completion")


def refuse_existing(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite`` (checked before the rows are drawn)."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite or choose another --out")


def write_dataset(
    out: Path,
    train: list[dict[str, Any]],
    validation: list[dict[str, Any]],
    columns: dict[str, str],
    meta: dict[str, Any],
    about: str,
    *,
    overwrite: bool = False,
    vision: bool = False,
) -> Path:
    """Write curriculum rows as an ``agent data sft`` style DatasetDict at ``out`` (atomically).

    ``columns`` names the rows' extra columns and their ``datasets`` value types (``"string"``,
    ``"int64"``); ``meta`` is ``sftrl_dataset.json``'s content and ``about`` the README's first
    paragraph (the README adds the rebuild command and an example row). ``vision``: contents are
    lists of parts and rows have an ``images`` column (PNG bytes), as ``agent data sft`` writes them.
    """
    from datasets import Dataset, DatasetDict
    from datasets.utils import logging as ds_logging

    from sftrl.training.sft_data import dataset_features

    refuse_existing(out, overwrite)
    ds_logging.disable_progress_bar()
    features = dataset_features(MESSAGE_COLUMNS, vision, columns)
    dd = DatasetDict(
        {
            "train": Dataset.from_list(train, features=features),
            "validation": Dataset.from_list(validation, features=features),
        }
    )
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    dd.save_to_disk(str(tmp))
    (tmp / "sftrl_dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    example = dict(train[0])
    if vision:
        example["images"] = [f"<PNG, {len(i['bytes'])} bytes>" for i in example["images"]]
    (tmp / "README.md").write_text(
        f"# {meta['source']}\n\n{about}\n\n"
        f"Rebuild: `{meta['command']}`\n\nExample:\n\n```json\n{json.dumps(example, indent=1)}\n```\n"
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def build_dataset(
    out: Path,
    rows: int,
    *,
    seed: int = 0,
    val_rows: int = 512,
    shuffled_share: float = SHUFFLED_SHARE,
    overwrite: bool = False,
) -> Path:
    """Write ``rows`` training rows (+ ``val_rows`` validation rows) as a DatasetDict at ``out``."""
    refuse_existing(out, overwrite)
    rng = random.Random(seed)
    train = [item(rng, shuffled_share) for _ in range(rows)]
    validation = [item(rng, shuffled_share) for _ in range(val_rows)]
    meta = {
        "kind": "sft",
        "format": ["prompt", "completion"],
        "modality": "text",
        "source": "sftrl.repro.stage0 curriculum",
        "command": f"python -m sftrl.repro.stage0 --rows {rows} --seed {seed} --val-rows {val_rows}"
        + ("" if shuffled_share == SHUFFLED_SHARE else f" --shuffled-share {shuffled_share}"),
        "mix": dict(MIX),
        "revision_mix": list(REVISION_MIX),
        "splits": {"train": {"rows": rows}, "validation": {"rows": val_rows}},
    }
    about = (
        "Make-target-T items (T != 24, random J/Q/K values stated in the prompt, 2-4 cards) and expression "
        "evaluation, in the GeneralPoints `compact` prompt style, with 0-2 failed attempts and the "
        "verifier's feedback as context. Conversational prompt/completion rows (train with "
        "`completion_only_loss`)."
    )
    columns = {"kind": "string", "target": "int64", "ranks": "string", "face": "string"}
    return write_dataset(out, train, validation, columns, meta, about, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the stage-0 curriculum as an SFT dataset.")
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--val-rows", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--shuffled-share",
        type=float,
        default=SHUFFLED_SHARE,
        help=f"share of make-target formulas over shuffled numbers ({SHUFFLED_SHARE}; others in hand order)",
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--overwrite", action="store_true")
    ns = ap.parse_args(argv)
    if not 0.0 <= ns.shuffled_share <= 1.0:
        ap.error("--shuffled-share must be between 0 and 1")
    build_dataset(
        ns.out,
        ns.rows,
        seed=ns.seed,
        val_rows=ns.val_rows,
        shuffled_share=ns.shuffled_share,
        overwrite=ns.overwrite,
    )
    print(f"wrote {ns.rows} + {ns.val_rows} rows to {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
