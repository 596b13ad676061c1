"""Terminal raster drawing: a braille dot canvas (2×4 dots per cell) and half-block image rendering.

Both produce Textual :class:`Strip` lines, so they render in any terminal with Unicode and colour (no
graphics protocol needed). Pure functions and classes: no widget state, easy to test.
"""

from __future__ import annotations

from PIL import Image
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

# Bit of each dot in a braille cell, indexed [y][x] (Unicode braille patterns start at U+2800).
_BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
_BRAILLE_BASE = 0x2800
_HALF_BLOCK = "▀"


class BrailleCanvas:
    """A ``width × height`` cell canvas of ``2·width × 4·height`` dots, with per-cell colour and text.

    Each cell takes the colour of the highest-priority layer that drew a dot in it (later draws win
    ties), so a route drawn over a street graph stays visible where they share cells.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width = max(1, width)
        self.height = max(1, height)
        self._bits = [[0] * self.width for _ in range(self.height)]
        self._style: list[list[Style | None]] = [[None] * self.width for _ in range(self.height)]
        self._prio = [[-1] * self.width for _ in range(self.height)]
        self._text: dict[tuple[int, int], tuple[str, Style, int]] = {}

    @property
    def dot_width(self) -> int:
        return 2 * self.width

    @property
    def dot_height(self) -> int:
        return 4 * self.height

    def set(self, x: int, y: int, style: Style, priority: int = 0) -> None:
        """Light the dot at dot coordinates (x, y); dots outside the canvas are ignored."""
        if not (0 <= x < self.dot_width and 0 <= y < self.dot_height):
            return
        cx, cy = x // 2, y // 4
        self._bits[cy][cx] |= _BRAILLE_BITS[y % 4][x % 2]
        if priority >= self._prio[cy][cx]:
            self._prio[cy][cx] = priority
            self._style[cy][cx] = style

    def line(self, x0: int, y0: int, x1: int, y1: int, style: Style, priority: int = 0) -> None:
        """A Bresenham line between two dots (inclusive)."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        # Bound the walk: a far-off endpoint must not spin for millions of steps.
        for _ in range(dx - dy + 1):
            self.set(x0, y0, style, priority)
            if x0 == x1 and y0 == y1:
                break
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, cx: int, cy: int, text: str, style: Style, priority: int = 10) -> None:
        """Write ``text`` over cells starting at cell (cx, cy); higher priority text wins a cell."""
        for i, ch in enumerate(text):
            key = (cx + i, cy)
            if not (0 <= key[0] < self.width and 0 <= cy < self.height):
                continue
            old = self._text.get(key)
            if old is None or priority >= old[2]:
                self._text[key] = (ch, style, priority)

    def strips(self, background: Style | None = None) -> list[Strip]:
        """The canvas as one :class:`Strip` per cell row."""
        blank = background or Style()
        out: list[Strip] = []
        for cy in range(self.height):
            segments: list[Segment] = []
            for cx in range(self.width):
                label = self._text.get((cx, cy))
                if label is not None:
                    segments.append(Segment(label[0], blank + label[1]))
                    continue
                bits = self._bits[cy][cx]
                style = self._style[cy][cx]
                ch = chr(_BRAILLE_BASE + bits) if bits else " "
                segments.append(Segment(ch, blank + style if style is not None and bits else blank))
            out.append(Strip(Segment.simplify(segments), self.width))
        return out


def fit_size(image_size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """Cells (w, h) that show an image of ``image_size`` pixels within ``width × height`` cells.

    A half-block cell shows two square-ish pixels stacked, so the image is fitted into ``width × 2·height``
    pixels with its aspect ratio kept.
    """
    iw, ih = image_size
    if iw <= 0 or ih <= 0 or width <= 0 or height <= 0:
        return (0, 0)
    scale = min(width / iw, 2 * height / ih)
    w = max(1, min(width, round(iw * scale)))
    h = max(1, min(height, round(ih * scale / 2)))
    return (w, h)


def xterm_palette() -> list[tuple[int, int, int]]:
    """Colours 16-255 of the xterm 256-colour palette (6×6×6 cube and 24 greys), as terminals define them."""
    levels = (0, 95, 135, 175, 215, 255)
    cube = [(r, g, b) for r in levels for g in levels for b in levels]
    return cube + [(8 + 10 * i,) * 3 for i in range(24)]  # type: ignore[misc]


def to_256_colours(image: Image.Image) -> Image.Image:
    """``image`` dithered onto the xterm palette: a 256-colour terminal shows exactly these colours
    (mapping each pixel to its nearest palette entry instead would band smooth skies and walls)."""
    palette = Image.new("P", (1, 1))
    flat = [c for rgb in xterm_palette() for c in rgb]
    palette.putpalette(flat + flat[:3] * (256 - len(flat) // 3))
    return image.convert("RGB").quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).convert("RGB")


def halfblock_strips(image: Image.Image, width: int, height: int, colours: int = 1 << 24) -> list[Strip]:
    """``image`` drawn in ``width × height`` cells with upper-half blocks (fg = top, bg = bottom pixel).

    The picture is scaled to fit, keeps its aspect ratio and is centred; the returned list always has
    ``height`` strips of ``width`` cells. ``colours`` <= 256: dithered onto the xterm palette first.
    """
    w, h = fit_size(image.size, width, height)
    if w == 0 or h == 0:
        return [Strip.blank(max(0, width)) for _ in range(max(0, height))]
    small = image.convert("RGB").resize((w, 2 * h), Image.Resampling.BILINEAR)
    if colours <= 256:
        small = to_256_colours(small)
    px = small.load()
    assert px is not None
    left = (width - w) // 2
    top = (height - h) // 2
    rows: list[Strip] = [Strip.blank(width) for _ in range(top)]
    cache: dict[tuple[object, object], Style] = {}
    for cy in range(h):
        segments = [Segment(" " * left)] if left else []
        for cx in range(w):
            upper, lower = px[cx, 2 * cy], px[cx, 2 * cy + 1]
            key = (upper, lower)
            style = cache.get(key)
            if style is None:
                style = cache[key] = Style.parse(
                    "#{:02x}{:02x}{:02x} on #{:02x}{:02x}{:02x}".format(*upper[:3], *lower[:3])  # type: ignore[index]
                )
            segments.append(Segment(_HALF_BLOCK, style))
        right = width - left - w
        if right:
            segments.append(Segment(" " * right))
        rows.append(Strip(Segment.simplify(segments), width))
    rows.extend(Strip.blank(width) for _ in range(height - len(rows)))
    return rows
