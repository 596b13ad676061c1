"""Stage 0 of GP-VL: the card-reading curriculum, written as an ordinary SFT dataset with images.

The language stage 0 (:mod:`sftrl.repro.stage0`) teaches the compact GeneralPoints task from card text;
this curriculum teaches a tiny vision-language model (:mod:`sftrl.agents.tiny_vlm`, its decoder seeded
with the language stage-0 model) to read the cards from the env's own rendering instead. Every row's
user turn is the hand's image first, then text, exactly as the agent loop sends a GP-VL observation.
Two item kinds, every card's suit drawn from all four (so red and black cards occur in equal share, the
way J/Q/K = 11/12/13 occur in the language stage 0):

* **read** (``V``): the image and ``cards`` -> the ranks left to right (``A 10 Q 7``): reading alone.
* **make target** (``M``): the env's compact vision prompt (``J=a Q=b K=c | T``: no card text) under a
  random face-card mapping and a target T != 24 -> the compact answer, whose pairs name the cards read;
  0-2 failed attempts precede it, each followed by the GP verifier's compact feedback (a quarter of
  them misread a card, which the verifier judges ``incorrect vision``).

No row is a GP-VL episode of the training task (target 24 under J/Q/K = 10). Answers are correct by
construction (targets come from a random expression over the hand; the tests check every answer with
the verifier in vision mode).

    python -m sftrl.repro.stage0_gpvl --rows 40000 --out data/stage0-gpvl
    agent train sft --data data/stage0-gpvl --model models/char-vision --out ckpt/stage0-gpvl ...
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path
from typing import Any

from sftrl.environments.generalpoints import compact
from sftrl.environments.generalpoints.cards import RANKS, SUITS, Card
from sftrl.environments.generalpoints.render import render_hand
from sftrl.environments.generalpoints.verifier import GPState, verify
from sftrl.repro import stage0

MIX: tuple[tuple[str, float], ...] = (("V", 0.35), ("M", 0.65))
"""Item kinds: read the cards, make target T from the cards in the image."""
MISREAD_SHARE = 0.25
"""Share of failed attempts that name a card wrongly (judged ``incorrect vision``)."""
READ_PROMPT = "cards"
RESOLUTION = 64
"""The image size of the GP-VL experiment (``experiments.EXPERIMENTS['gp-vl-visual'].resolution``)."""
COLUMNS = {"kind": "string", "target": "int64", "cards": "string", "face": "string"}


def deal(rng: random.Random) -> list[Card]:
    """Four cards, ranks and suits uniform (both colours)."""
    return [Card(rank=rng.choice(RANKS), suit=rng.choice(SUITS)) for _ in range(4)]


def png_bytes(image: Any) -> bytes:
    """A PIL image as the PNG bytes of an ``images`` column (fast compression: rows are many)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def hand_png(cards: list[Card], resolution: int) -> bytes:
    return png_bytes(render_hand(cards, resolution))


def user_turn(text: str, image: bool = False) -> dict[str, Any]:
    """A user turn as ``agent data sft`` writes it (the image part first, as the agent loop sends it)."""
    parts = [{"type": "image", "text": None}] if image else []
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def assistant_turn(text: str) -> dict[str, Any]:
    """An assistant turn in the parts format of vision rows."""
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def misread(ranks: list[str], rng: random.Random) -> list[str]:
    """``ranks`` with one card read as another rank."""
    out = list(ranks)
    i = rng.randrange(len(out))
    out[i] = rng.choice([r for r in RANKS if r != out[i]])
    return out


def wrong_attempts(state: GPState, n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` failed attempts and the verifier's compact feedback: wrong formulas (the language
    curriculum's) or, with probability :data:`MISREAD_SHARE` each, the right formula over a misread hand."""
    out: list[tuple[str, str]] = []
    for attempt, feedback in stage0._wrong_attempts(state, n, rng):
        if rng.random() < MISREAD_SHARE:
            _, _, formula = attempt.partition(": ")
            wrong = misread(list(state.ranks), rng)
            attempt = compact.reply(ranks=wrong, numbers=state.values, formula=formula)
            verdict = verify(state, attempt, style="compact")
            assert verdict.category == "incorrect_vision", verdict
            feedback = compact.feedback(verdict.category, verdict.details)
        out.append((attempt, feedback))
    return out


def read_item(rng: random.Random, resolution: int = RESOLUTION) -> dict[str, Any]:
    cards = deal(rng)
    ranks = [c.rank for c in cards]
    return {
        "prompt": [user_turn(READ_PROMPT, image=True)],
        "completion": [assistant_turn(" ".join(ranks))],
        "images": [{"bytes": hand_png(cards, resolution), "path": None}],
        "kind": "V",
        "target": 0,
        "cards": " ".join(f"{c.rank}{c.suit}" for c in cards),
        "face": "",
    }


def make_target_item(rng: random.Random, n_wrong: int, resolution: int = RESOLUTION) -> dict[str, Any] | None:
    """A make-target-T item from the image (random face mapping, T != 24), or None for an unusable draw."""
    face = [rng.randint(1, 13) for _ in range(3)]
    cards = deal(rng)
    ranks = [c.rank for c in cards]
    values = stage0.face_values(ranks, face)
    formula, value = stage0.random_expression(values, rng, shuffle=rng.random() < stage0.SHUFFLED_SHARE)
    if value is None or value.denominator != 1 or not 1 <= value <= 99 or value == stage0.TARGET:
        return None
    target = int(value)
    state = GPState(
        ranks=tuple(ranks), values=tuple(values), target=target, solutions=(formula,), check_cards=True
    )
    prompt = [user_turn(compact.prompt(ranks=None, face_values=face, target=target), image=True)]
    for attempt, feedback in wrong_attempts(state, n_wrong, rng):
        prompt += [assistant_turn(attempt), user_turn(feedback)]
    return {
        "prompt": prompt,
        "completion": [assistant_turn(compact.reply(ranks=ranks, numbers=values, formula=formula))],
        "images": [{"bytes": hand_png(cards, resolution), "path": None}],
        "kind": "M",
        "target": target,
        "cards": " ".join(f"{c.rank}{c.suit}" for c in cards),
        "face": " ".join(map(str, face)),
    }


def item(rng: random.Random, resolution: int = RESOLUTION) -> dict[str, Any]:
    """One curriculum row (kinds mixed as :data:`MIX`, revision depth as the language stage 0's)."""
    kinds, weights = zip(*MIX, strict=True)
    if rng.choices(kinds, weights)[0] == "V":
        return read_item(rng, resolution)
    n_wrong = rng.choices(range(len(stage0.REVISION_MIX)), stage0.REVISION_MIX)[0]
    while True:  # the kind is drawn once, so unusable draws do not shift the mix
        row = make_target_item(rng, n_wrong, resolution)
        if row is not None:
            return row


def build_dataset(
    out: Path,
    rows: int,
    *,
    seed: int = 0,
    val_rows: int = 512,
    resolution: int = RESOLUTION,
    overwrite: bool = False,
) -> Path:
    """Write ``rows`` training rows (+ ``val_rows`` validation rows) as a DatasetDict at ``out``."""
    stage0.refuse_existing(out, overwrite)
    rng = random.Random(seed)
    train = [item(rng, resolution) for _ in range(rows)]
    validation = [item(rng, resolution) for _ in range(val_rows)]
    meta = {
        "kind": "sft",
        "format": ["prompt", "completion"],
        "modality": "vision",
        "source": "sftrl.repro.stage0_gpvl curriculum",
        "command": f"python -m sftrl.repro.stage0_gpvl --rows {rows} --seed {seed} --val-rows {val_rows}"
        + ("" if resolution == RESOLUTION else f" --resolution {resolution}"),
        "mix": dict(MIX),
        "revision_mix": list(stage0.REVISION_MIX),
        "misread_share": MISREAD_SHARE,
        "resolution": resolution,
        "splits": {"train": {"rows": rows}, "validation": {"rows": val_rows}},
    }
    about = (
        "GP-VL card reading: read-the-cards items and make-target-T items (T != 24, random J/Q/K values "
        "in the prompt) from the rendered hand (all four suits), in the GeneralPoints `compact` vision "
        "style, with 0-2 failed attempts and the verifier's feedback as context. Conversational "
        "prompt/completion rows with an `images` column (train with `completion_only_loss`)."
    )
    return stage0.write_dataset(
        out, train, validation, COLUMNS, meta, about, overwrite=overwrite, vision=True
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the GP-VL stage-0 curriculum as an SFT dataset.")
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--val-rows", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolution", type=int, default=RESOLUTION, help=f"image size in pixels ({RESOLUTION})")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--overwrite", action="store_true")
    ns = ap.parse_args(argv)
    if ns.rows < 1 or ns.val_rows < 1:
        ap.error("--rows and --val-rows must be at least 1")
    build_dataset(
        ns.out, ns.rows, seed=ns.seed, val_rows=ns.val_rows, resolution=ns.resolution, overwrite=ns.overwrite
    )
    print(f"wrote {ns.rows} + {ns.val_rows} rows to {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
