"""Fixed-width character encoding of GeneralPoints-style prompts, attempts and verifier feedback.

Every piece has a fixed width, so a batch of episodes stays aligned at every step: a prompt is
``PROMPT_LEN`` characters, an attempt ``ATTEMPT_LEN`` (the answer, ``.``, then ``_`` padding) and a
feedback ``FEEDBACK_LEN``. That keeps KV-cached batched sampling free of attention masks.

Prompt of a "make the target" item: ``M J10 Q10 K10 T24 A5J3 >`` without spaces, i.e. kind, the
face-card mapping, the target and the cards (``T`` is the 10; ``_`` pads hands of 2–3 cards).
Prompt of an "evaluate" item: ``E`` and the expression. An attempt: the card numbers (two digits
each), ``:``, the formula, ``.``; feedback: the verifier's category letter and the formula's value.
"""

from __future__ import annotations

from collections.abc import Sequence

PAD = "_"
END = "."
CHARS = "_.>:#0123456789+-*/()AMETJQKcnpux"
"""The vocabulary (``_`` first: token 0 is padding)."""
STOI: dict[str, int] = {c: i for i, c in enumerate(CHARS)}
VOCAB_SIZE = len(CHARS)
PROMPT_LEN = 18
ATTEMPT_LEN = 28
FEEDBACK_LEN = 4
MAX_ATTEMPTS = 3
MAX_LEN = PROMPT_LEN + MAX_ATTEMPTS * ATTEMPT_LEN + (MAX_ATTEMPTS - 1) * FEEDBACK_LEN
RANK_CHAR: dict[str, str] = {
    r: ("T" if r == "10" else r) for r in ("A", *map(str, range(2, 11)), "J", "Q", "K")
}
CHAR_RANK: dict[str, str] = {c: r for r, c in RANK_CHAR.items()}
CATEGORY_CHAR: dict[str, str] = {
    "correct": "c",
    "no_solution": "n",
    "partial_solution": "p",
    "incorrect_numbers": "u",
    "illegal_formula": "x",
    "incorrect_vision": "x",
}


class CodecError(ValueError):
    """A piece does not fit its fixed width or uses characters outside the vocabulary."""


def encode(text: str) -> list[int]:
    try:
        return [STOI[c] for c in text]
    except KeyError as exc:
        raise CodecError(f"character {exc.args[0]!r} is not in the vocabulary") from None


def decode(ids: Sequence[int]) -> str:
    return "".join(CHARS[int(i)] for i in ids)


def _two(v: int) -> str:
    if not 0 <= v <= 99:
        raise CodecError(f"{v} does not fit two digits")
    return f"{v:02d}"


def make_prompt(face: tuple[int, int, int], target: int, ranks: Sequence[str]) -> str:
    """Prompt of a "make ``target`` from these cards" item under the face mapping J, Q, K = ``face``."""
    if not 2 <= len(ranks) <= 4:
        raise CodecError(f"2 to 4 cards, got {len(ranks)}")
    cards = "".join(RANK_CHAR[r] for r in ranks).ljust(4, PAD)
    text = f"MJ{_two(face[0])}Q{_two(face[1])}K{_two(face[2])}T{_two(target)}{cards}>"
    assert len(text) == PROMPT_LEN
    return text


def eval_prompt(expression: str) -> str:
    """Prompt of an "evaluate this expression" item."""
    body = "E" + expression
    if len(body) > PROMPT_LEN - 1:
        raise CodecError(f"expression {expression!r} is too long")
    return body.ljust(PROMPT_LEN - 1, PAD) + ">"


def attempt_text(numbers: Sequence[int], formula: str) -> str:
    """An answer to a make-target prompt: numbers, ``:``, formula, ``.``, padded to ``ATTEMPT_LEN``."""
    nums = "".join(_two(n) for n in numbers).ljust(8, PAD)
    return pad_attempt(f"{nums}:{formula}{END}")


def value_text(value: str) -> str:
    """An answer to an evaluate prompt (``"17"`` or ``"-7/3"``)."""
    return pad_attempt(f"{value}{END}")


def pad_attempt(text: str) -> str:
    if len(text) > ATTEMPT_LEN or END not in text:
        raise CodecError(f"attempt {text!r} does not fit {ATTEMPT_LEN} characters")
    return text.ljust(ATTEMPT_LEN, PAD)


def feedback_code(category: str, value: str | None) -> str:
    """Fixed-width verifier feedback: category letter plus the formula's value when it is a small int."""
    letter = CATEGORY_CHAR.get(category, "x")
    if value is None:
        return letter + "###"
    try:
        number = int(value)
    except ValueError:  # a fraction such as "7/3"
        return letter + "###"
    text = str(number)
    return letter + (text.rjust(3, PAD) if -99 <= number <= 999 else "###")


def parse_attempt(text: str) -> tuple[list[int] | None, str]:
    """(numbers written before ``:`` or None, the formula) of a generated attempt; never raises."""
    body = text.split(END, 1)[0]
    if ":" not in body:
        return None, body.replace(PAD, "")
    head, formula = body.split(":", 1)
    head = head.replace(PAD, "")
    numbers: list[int] | None = None
    if head.isdigit() and len(head) % 2 == 0:
        numbers = [int(head[i : i + 2]) for i in range(0, len(head), 2)]
    return numbers, formula.replace(PAD, "")
