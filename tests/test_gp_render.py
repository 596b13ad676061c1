"""The GP-VL card image: layout, determinism, suit colours, and that every rank is actually legible.

Legibility is checked by template matching: the large centre rank of each rendered card is cropped from the
image (found from the pixels, not from the renderer's layout code) and compared with every rank drawn
independently in the same bundled font; the true rank must be the clear best match.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from sftrl.environments.generalpoints.cards import RANKS, SUITS, Card
from sftrl.environments.generalpoints.render import BACKGROUND, card_size, render_card, render_hand

HANDS_OF_ALL_RANKS = [RANKS[0:4], RANKS[4:8], RANKS[8:12], RANKS[12:13] + RANKS[0:3]]


def _card_spans(img: Image.Image) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Column spans of the cards and their common row span, from where the table green is interrupted."""
    a = np.asarray(img).astype(int)
    off_table = np.abs(a - np.array(BACKGROUND)).sum(-1) > 60
    edges = np.flatnonzero(np.diff(np.r_[0, off_table.any(0).astype(int), 0]))
    rows = np.flatnonzero(off_table.any(1))
    spans = list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
    return spans, (int(rows[0]), int(rows[-1]) + 1)


def _ink(a: np.ndarray) -> np.ndarray:
    # Both inks (near-black and red) have a low green channel; the white card face and its grey border don't.
    return a[..., 1] < 128


def _region(
    card: Image.Image, rows: tuple[float, float], cols: tuple[float, float] = (0.21, 0.79)
) -> np.ndarray:
    """Ink in a window of one card given as fractions of its height (rows) and width (cols)."""
    h, w = card.height, card.width
    return _ink(np.asarray(card)[int(rows[0] * h) : int(rows[1] * h), int(cols[0] * w) : int(cols[1] * w)])


def _centre_rank_ink(img: Image.Image, span: tuple[int, int], rows: tuple[int, int]) -> np.ndarray:
    """Ink of the big centre rank: the middle 58% of the card's width, from 15% to 52% of its height."""
    crop = _region(img.crop((span[0], rows[0], span[1], rows[1])), (0.15, 0.52))
    ys, xs = np.nonzero(crop)
    assert len(ys) > 0, "no centre rank drawn"
    return crop[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


@lru_cache(maxsize=16)
def _glyph(rank: str) -> Image.Image:
    # Same bundled font, drawn bold-ish (stroke 2.5% of size) like a card index, cropped to its ink.
    font = ImageFont.load_default(size=200)
    im = Image.new("L", (600, 300), 0)
    ImageDraw.Draw(im).text((10, 10), rank, font=font, fill=255, stroke_width=5, stroke_fill=255)
    return im.crop(im.getbbox())


def _template_ious(ink: np.ndarray) -> dict[str, float]:
    ious = {}
    for rank in RANKS:
        tm = np.asarray(_glyph(rank).resize((ink.shape[1], ink.shape[0]), Image.Resampling.BILINEAR)) > 127
        ious[rank] = float((tm & ink).sum() / (tm | ink).sum())
    return ious


@pytest.mark.parametrize("resolution", [96, 224, 448, 1200])
def test_square_rgb_canvas_with_four_cards_of_poker_shape(resolution: int) -> None:
    img = render_hand(["AS", "10H", "QC", "7D"], resolution)
    assert img.mode == "RGB" and img.size == (resolution, resolution)
    spans, (top, bottom) = _card_spans(img)
    assert len(spans) == 4
    width, height = card_size(resolution)
    for x0, x1 in spans:
        assert abs((x1 - x0) - width) <= 1
    assert abs((bottom - top) - height) <= 1
    assert abs((bottom - top) / width - 7 / 5) < 0.1
    assert abs(top - (resolution - bottom)) <= 1  # vertically centred
    assert abs(spans[0][0] - (resolution - spans[-1][1])) <= 1  # horizontally centred
    assert 0.88 <= (spans[-1][1] - spans[0][0]) / resolution <= 0.99  # ~90% of the width
    # The corners of the canvas are bare table.
    assert img.getpixel((0, 0)) == BACKGROUND and img.getpixel((resolution - 1, resolution - 1)) == BACKGROUND


def test_deterministic_cold_and_warm() -> None:
    hand = [Card.parse(c) for c in ("KS", "2H", "JC", "9D")]
    first = render_hand(hand, 448).tobytes()
    assert render_hand(hand, 448).tobytes() == first
    render_card.cache_clear()
    assert render_hand(hand, 448).tobytes() == first
    # Strings and Cards are interchangeable; order is left to right.
    assert render_hand(["KS", "2H", "JC", "9D"], 448).tobytes() == first
    assert render_hand(["2H", "KS", "JC", "9D"], 448).tobytes() != first


def _strongly_red(img: Image.Image) -> int:
    a = np.asarray(img).astype(int)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return int(((r > 150) & (g < 90) & (b < 110)).sum())


@pytest.mark.parametrize("resolution", [224, 1200])
def test_red_suits_are_red_and_black_suits_are_not(resolution: int) -> None:
    for rank in ("A", "10", "Q"):
        black = render_hand([f"{rank}S", f"{rank}C", f"{rank}S", f"{rank}C"], resolution)
        assert _strongly_red(black) == 0
        for suit in "HD":
            red = render_hand([f"{rank}{suit}"] * 4, resolution)
            # Rank and pips together cover well over 1% of each card.
            assert _strongly_red(red) > 0.01 * 4 * np.prod(card_size(resolution))


def _xor_over_union(a: np.ndarray, b: np.ndarray) -> float:
    return float((a ^ b).sum() / (a | b).sum())


@pytest.mark.parametrize("resolution", [224, 448])
def test_suit_pips_differ_by_shape_not_only_colour(resolution: int) -> None:
    # Same rank and size: the big pips (lower middle of the card) must be pairwise clearly different shapes.
    w, h = card_size(resolution)
    pips = {s: _region(render_card("7", s, w, h), (0.52, 0.85)) for s in SUITS}
    for a, b in combinations(SUITS, 2):
        assert pips[a].sum() > 0.1 * pips[a].size
        assert _xor_over_union(pips[a], pips[b]) > 0.1, (a, b)


@pytest.mark.parametrize("suit", ["S", "H"])
def test_each_rank_gives_a_distinct_card(suit: str) -> None:
    crops = {}
    for ranks in HANDS_OF_ALL_RANKS:
        img = render_hand([r + suit for r in ranks], 448)
        spans, (top, bottom) = _card_spans(img)
        for rank, (x0, x1) in zip(ranks, spans, strict=True):
            crops[rank] = _region(img.crop((x0, top, x1, bottom)), (0.15, 0.52))
    assert len(crops) == 13
    for a, b in combinations(RANKS, 2):
        # The closest pairs (3/8, 5/6) differ in ~20% of their ink.
        assert _xor_over_union(crops[a], crops[b]) > 0.1, (a, b)


@pytest.mark.parametrize("resolution", [224, 448, 1200])
@pytest.mark.parametrize("suit", SUITS)
def test_centre_rank_reads_back_as_the_right_rank(resolution: int, suit: str) -> None:
    for ranks in HANDS_OF_ALL_RANKS:
        img = render_hand([r + suit for r in ranks], resolution)
        spans, rows = _card_spans(img)
        assert len(spans) == 4
        for rank, span in zip(ranks, spans, strict=True):
            ious = _template_ious(_centre_rank_ink(img, span, rows))
            runner_up = max(v for k, v in ious.items() if k != rank)
            assert max(ious, key=ious.__getitem__) == rank, (rank, ious)
            assert ious[rank] > 0.75 and ious[rank] - runner_up > 0.04, (rank, ious)


def test_corner_indices_are_point_symmetric() -> None:
    # A real card's bottom-right index is the top-left one turned 180 degrees.
    w, h = card_size(1200)
    ink = _ink(np.asarray(render_card("10", "C", w, h)))
    cw, ch = int(0.25 * w), int(0.3 * h)
    top_left, bottom_right = ink[:ch, :cw], np.rot90(ink[h - ch :, w - cw :], 2)
    assert top_left.sum() > 0.05 * top_left.size
    assert (top_left & bottom_right).sum() / (top_left | bottom_right).sum() > 0.9


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        render_hand(["AS"] * 5, 448)
    with pytest.raises(ValueError):
        render_hand([], 448)
    with pytest.raises(ValueError):
        render_hand(["A", "2S", "3S", "4S"], 448)  # no suit: no colour or pip to draw
    with pytest.raises(ValueError):
        render_hand(["AS", "2S", "3S", "4S"], 8)
    with pytest.raises(ValueError):
        render_card("q", "H", 100, 140)  # the cache is keyed on canonical names only
