"""Draw the GP-VL observation: four playing cards side by side on a casino-green table, with Pillow only.

Suit pips are vector shapes (no font needs ♠♣♥♦ glyphs); ranks use Pillow's bundled scalable font
(`ImageFont.load_default(size=...)`, Aileron Regular, public domain / CC0), so nothing is read from disk.
Each card is drawn once per (rank, suit, size) at up to 4x and box-downsampled for anti-aliasing, then cached,
so a reset only pastes four cached tiles onto a fresh canvas. Output is deterministic for a given Pillow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from sftrl.environments.generalpoints.cards import RANKS, SUIT_COLORS, SUITS, Card

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]

BACKGROUND: RGB = (0x35, 0x65, 0x4D)  # the official env's table green
CARD_FACE: RGB = (0xFF, 0xFF, 0xFF)
CARD_BORDER: RGB = (0x80, 0x80, 0x80)
INK: dict[str, RGB] = {"red": (0xC0, 0x15, 0x2F), "black": (0x1A, 0x1A, 0x1A)}

CARD_WIDTH_FRACTION = 0.9 / 4  # four cards fill ~90% of the width, as in the official layout
CARD_PITCH = 1.1  # left edge to left edge, in card widths (a 10% gap)
CARD_ASPECT = 7 / 5  # height / width of a poker card
MAX_CARDS = 4
# ImageDraw shapes are aliased; drawing at 4x and box-reducing smooths them. Very large cards (resolution
# above ~1700 px) need less, and would otherwise cost tens of MB per tile while drawing.
SUPERSAMPLE = 4
_MAX_SUPERSAMPLED_WIDTH = 1600

# Card layout in units of the card width W (the card is 1.4 W tall). The public CENTER_RANK_* numbers say
# where the big rank sits, for anyone cropping it (e.g. per-card reading probes).
_CORNER_X = 0.125  # horizontal centre of the corner index
_CORNER_TOP = 0.07
_CORNER_RANK_H = 0.15  # cap height of the corner rank
_CORNER_RANK_MAX_W = 0.17  # "10" is condensed to fit, as printed cards do
_CORNER_GAP = 0.035
_CORNER_SUIT = 0.12
CENTER_RANK_TOP = 0.27  # the large centre rank: top, cap height and max width (it is centred in x)
CENTER_RANK_H = 0.42
CENTER_RANK_MAX_W = 0.52
_CENTER_GAP = 0.08
_CENTER_SUIT = 0.34


# -- geometry ------------------------------------------------------------------------------------------
def card_size(resolution: int) -> tuple[int, int]:
    """(width, height) in pixels of one card on a `resolution`-square canvas."""
    width = max(5, round(resolution * CARD_WIDTH_FRACTION))
    return width, round(width * CARD_ASPECT)


def card_boxes(resolution: int, n: int = MAX_CARDS) -> list[Box]:
    """(left, top, right, bottom) of each of `n` cards, left to right, centred on the canvas."""
    width, height = card_size(resolution)
    pitch = width * CARD_PITCH
    x0 = (resolution - ((n - 1) * pitch + width)) / 2
    top = (resolution - height) // 2
    boxes = []
    for i in range(n):
        left = round(x0 + i * pitch)
        boxes.append((left, top, left + width, top + height))
    return boxes


# -- glyphs --------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow >= 10.1 built with FreeType (every wheel) returns a scalable font; without FreeType this
    # is the fixed bitmap font, which _rank_mask still resizes to the requested height.
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=256)
def _rank_mask(rank: str, height: int, max_width: int) -> Image.Image:
    """An L mask of `rank` cropped to its ink, exactly `height` tall and at most `max_width` wide."""
    size = max(8, round(height / 0.69))  # Aileron's cap height is ~0.69 of the font size
    font = _font(size)
    stroke = round(size * 0.025)  # Aileron is a Regular weight; a thin stroke makes it card-bold
    tracking = round(size * 0.05)  # keeps the "1" and "0" of "10" apart when the card is tiny
    canvas = Image.new("L", (size * (len(rank) + 1), size * 2), 0)
    draw = ImageDraw.Draw(canvas)
    x = float(stroke + 2)
    for ch in rank:
        draw.text((x, stroke + 2), ch, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
        x += font.getlength(ch) + tracking
    ink = canvas.crop(canvas.getbbox())
    width = max(1, min(max_width, round(ink.width * height / ink.height)))
    return ink.resize((width, height), Image.Resampling.LANCZOS)


def _tangent_point(
    p: tuple[float, float], c: tuple[float, float], r: float, side: int
) -> tuple[float, float]:
    """Where a line from external point p touches the circle (c, r); side=+1/-1 picks the tangent."""
    dx, dy = p[0] - c[0], p[1] - c[1]
    d = math.hypot(dx, dy)
    base = math.atan2(dy, dx)
    ang = base + side * math.acos(r / d)
    return c[0] + r * math.cos(ang), c[1] + r * math.sin(ang)


def _draw_heart(draw: ImageDraw.ImageDraw, x: float, y: float, s: float, flip: bool = False) -> None:
    """A heart in the s-by-s box at (x, y): two overlapping lobes plus a triangle tangent to both."""

    def at(u: float, v: float) -> tuple[float, float]:
        return x + u * s, y + (1 - v if flip else v) * s

    r, cy, dx, tip = 0.27, 0.28, 0.235, (0.5, 0.98)
    for cx in (0.5 - dx, 0.5 + dx):
        (x0, y0), (x1, y1) = at(cx - r, cy - r), at(cx + r, cy + r)
        draw.ellipse((x0, min(y0, y1), x1, max(y0, y1)), fill=255)
    left = min(
        (_tangent_point(tip, (0.5 - dx, cy), r, sd) for sd in (1, -1)),
        key=lambda q: q[0],
    )
    right = max(
        (_tangent_point(tip, (0.5 + dx, cy), r, sd) for sd in (1, -1)),
        key=lambda q: q[0],
    )
    draw.polygon([at(*left), at(0.5 - dx, cy), at(0.5 + dx, cy), at(*right), at(*tip)], fill=255)


def _draw_stem(draw: ImageDraw.ImageDraw, x: float, y: float, s: float) -> None:
    # A flared foot, as on printed spades and clubs.
    draw.polygon(
        [
            (x + 0.46 * s, y + 0.55 * s),
            (x + 0.54 * s, y + 0.55 * s),
            (x + 0.68 * s, y + 1.0 * s),
            (x + 0.32 * s, y + 1.0 * s),
        ],
        fill=255,
    )


def _draw_suit(draw: ImageDraw.ImageDraw, suit: str, x: float, y: float, s: float) -> None:
    """Fill suit `suit` into the s-by-s box whose top-left corner is (x, y)."""
    if suit == "H":
        _draw_heart(draw, x, y, s)
    elif suit == "D":
        draw.polygon(
            [(x + 0.5 * s, y), (x + 0.9 * s, y + 0.5 * s), (x + 0.5 * s, y + s), (x + 0.1 * s, y + 0.5 * s)],
            fill=255,
        )
    elif suit == "S":
        # An upside-down heart (slightly narrower) on a stem.
        lobes = 0.9 * s
        _draw_heart(draw, x + (s - lobes) / 2, y, lobes, flip=True)
        _draw_stem(draw, x, y, s)
    elif suit == "C":
        r = 0.215 * s
        for cx, cy in ((0.5, 0.25), (0.28, 0.6), (0.72, 0.6), (0.5, 0.5)):
            rr = r if (cx, cy) != (0.5, 0.5) else 0.13 * s
            draw.ellipse((x + cx * s - rr, y + cy * s - rr, x + cx * s + rr, y + cy * s + rr), fill=255)
        _draw_stem(draw, x, y, s)
    else:
        raise ValueError(f"unknown suit {suit!r}")


# -- cards ---------------------------------------------------------------------------------------------
def _paste_centered(mask: Image.Image, glyph: Image.Image, cx: float, top: float) -> None:
    # Pasting 255 *through* the glyph blends max-like, so anti-aliased edges never erase earlier ink.
    left, upper = round(cx - glyph.width / 2), round(top)
    mask.paste(255, (left, upper, left + glyph.width, upper + glyph.height), glyph)


@lru_cache(maxsize=512)
def render_card(rank: str, suit: str, width: int, height: int) -> Image.Image:
    """One card tile (RGB, `width` x `height`) with table-green corners outside its rounded edge.

    Cached: callers must treat the returned image as read-only (render_hand only pastes it).
    """
    if rank not in RANKS or suit not in SUITS:
        raise ValueError(f"render_card needs a canonical rank and suit letter, got {rank!r}, {suit!r}")
    ss = max(2, min(SUPERSAMPLE, _MAX_SUPERSAMPLED_WIDTH // width))
    w, h = width * ss, height * ss
    img = Image.new("RGB", (w, h), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle(
        (0, 0, w - 1, h - 1),
        radius=round(0.07 * w),
        fill=CARD_FACE,
        outline=CARD_BORDER,
        width=max(ss, round(0.01 * w)),
    )

    # Everything printed is one colour, so build a single ink mask and paste the colour through it.
    ink = Image.new("L", (w, h), 0)
    corner = _rank_mask(rank, max(1, round(_CORNER_RANK_H * w)), max(1, round(_CORNER_RANK_MAX_W * w)))
    _paste_centered(ink, corner, _CORNER_X * w, _CORNER_TOP * w)
    small = _CORNER_SUIT * w
    small_top = _CORNER_TOP * w + corner.height + _CORNER_GAP * w
    _draw_suit(ImageDraw.Draw(ink), suit, _CORNER_X * w - small / 2, small_top, small)
    # The bottom-right index is the top-left one turned 180 degrees, as on a real card.
    ink.paste(255, (0, 0), ink.transpose(Image.Transpose.ROTATE_180))

    big_rank = _rank_mask(rank, max(1, round(CENTER_RANK_H * w)), max(1, round(CENTER_RANK_MAX_W * w)))
    _paste_centered(ink, big_rank, w / 2, CENTER_RANK_TOP * w)
    big = _CENTER_SUIT * w
    big_top = CENTER_RANK_TOP * w + big_rank.height + _CENTER_GAP * w
    _draw_suit(ImageDraw.Draw(ink), suit, w / 2 - big / 2, big_top, big)

    img.paste(INK[SUIT_COLORS[suit]], (0, 0), ink)
    return img.reduce(ss)


def render_hand(cards: Sequence[Card | str], resolution: int = 1200) -> Image.Image:
    """The observation image: `cards` left to right on a `resolution`-square green table (RGB)."""
    if not 1 <= len(cards) <= MAX_CARDS:
        raise ValueError(f"render_hand draws 1 to {MAX_CARDS} cards, got {len(cards)}")
    if resolution < 32:
        raise ValueError(f"resolution must be at least 32 px, got {resolution}")
    parsed = [c if isinstance(c, Card) else Card.parse(c) for c in cards]
    for card in parsed:
        if card.suit is None:
            raise ValueError(f"card {card} has no suit; the renderer needs one to pick pip and colour")
    canvas = Image.new("RGB", (resolution, resolution), BACKGROUND)
    width, height = card_size(resolution)
    for card, (left, top, _, _) in zip(parsed, card_boxes(resolution, len(parsed)), strict=True):
        assert card.suit is not None
        canvas.paste(render_card(card.rank, card.suit, width, height), (left, top))
    return canvas
