"""``agent replay DIR --export FILE.svg|png``: what the replay screen shows, written without a terminal.

The app runs headless at a fixed size on the chosen episode and call. SVG is Textual's own screenshot;
PNG is drawn here from the same screen cells with Pillow (half blocks and braille dots as pixels,
text with a monospace font when one is installed), so no SVG renderer is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

EXPORT_SIZE = (160, 50)
CELL_W, CELL_H = 8, 16  # pixels per terminal cell in a PNG export
_FONTS = (
    "DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "Menlo.ttc",
    "Consolas.ttf",
)


class ExportError(ValueError):
    """The export cannot be written (unknown format, no such episode or call)."""


def export_replay(
    run_dir: Path,
    out: Path,
    *,
    episode: int | None = None,
    call: int | None = None,
    size: tuple[int, int] = EXPORT_SIZE,
) -> Path:
    """Write the replay screen of ``run_dir`` (episode index ``episode``, 1-based ``call``) to ``out``."""
    from sftrl.tui.app import AgentApp

    suffix = out.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise ExportError(f"--export writes .svg or .png files, not {out.name!r}")
    app = AgentApp(run_dir=run_dir)
    result: dict[str, Any] = {}

    async def drive(pilot: Any) -> None:
        try:
            await pilot.pause()
            eps = {e.index: e for e in app.run_view.ordered()}
            index = episode if episode is not None else (app.selected if app.selected is not None else -1)
            if index not in eps:
                raise ExportError(f"no episode {index} in {run_dir} (it has {_ranges(sorted(eps))})")
            n = eps[index].n_frames
            position = (call if call is not None else 1) - 1
            if not 0 <= position < max(n, 1):
                raise ExportError(f"episode {index} has calls 1..{n}, not {call}")
            app.select_episode(index, position)
            await pilot.pause()
            result["svg"] = app.export_screenshot(
                title=f"sftrl replay · episode {index} · call {position + 1}"
            )
            if suffix == ".png":
                result["png"] = screen_png(app)
        except Exception as exc:  # raised again outside the app, which would swallow it
            result["error"] = exc
        finally:
            app.exit(0)

    app.run(headless=True, size=size, auto_pilot=drive)
    if "error" in result:
        raise result["error"]
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".svg":
        out.write_text(result["svg"], encoding="utf-8")
    else:
        result["png"].save(out)
    return out


def _ranges(indices: list[int]) -> str:
    if not indices:
        return "no episodes"
    return (
        f"{indices[0]}..{indices[-1]}"
        if indices == list(range(indices[0], indices[-1] + 1))
        else str(indices)
    )


def _font(size: int) -> Any:
    for name in _FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def screen_png(app: Any) -> Image.Image:
    """The app's current screen as an image: one CELL_W × CELL_H block per terminal cell."""
    from rich.console import Console
    from rich.segment import Segment

    width, height = app.size
    console = Console(width=width, height=height, color_system="truecolor", force_terminal=True, record=False)
    update = app.screen._compositor.render_update(full=True)  # what export_screenshot renders, as cells
    lines = list(
        Segment.split_and_crop_lines(
            console.render(update, console.options), width, pad=True, include_new_lines=False
        )
    )
    image = Image.new("RGB", (width * CELL_W, height * CELL_H), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    font = _font(CELL_H - 3)
    for row, line in enumerate(lines[:height]):
        col = 0
        for segment in line:
            if segment.control:  # cursor moves between the screen's lines, not cells
                continue
            style = segment.style
            fg = _rgb(style.color if style else None, (220, 220, 220))
            bg = _rgb(style.bgcolor if style else None, (0, 0, 0))
            if style is not None and style.reverse:
                fg, bg = bg, fg
            for ch in segment.text:
                if col >= width:
                    break
                _cell(draw, font, col * CELL_W, row * CELL_H, ch, fg, bg)
                col += 1
    return image


def _rgb(color: Any, default: tuple[int, int, int]) -> tuple[int, int, int]:
    if color is None or color.is_default:
        return default
    triplet = color.get_truecolor()
    return (triplet.red, triplet.green, triplet.blue)


def _cell(draw: Any, font: Any, x: int, y: int, ch: str, fg: Any, bg: Any) -> None:
    draw.rectangle((x, y, x + CELL_W - 1, y + CELL_H - 1), fill=bg)
    code = ord(ch)
    if ch == " ":
        return
    if ch == "▀":  # half blocks carry two image pixels: draw them as pixels, not as a glyph
        draw.rectangle((x, y, x + CELL_W - 1, y + CELL_H // 2 - 1), fill=fg)
    elif ch == "▄":
        draw.rectangle((x, y + CELL_H // 2, x + CELL_W - 1, y + CELL_H - 1), fill=fg)
    elif ch == "█":
        draw.rectangle((x, y, x + CELL_W - 1, y + CELL_H - 1), fill=fg)
    elif 0x2800 <= code <= 0x28FF:  # braille: 2×4 dots
        bits = code - 0x2800
        for bit, (dx, dy) in enumerate(((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 3), (1, 3))):
            if bits & (1 << bit):
                cx, cy = x + 2 + dx * 4, y + 2 + dy * 4
                draw.rectangle((cx, cy, cx + 1, cy + 1), fill=fg)
    else:
        draw.text((x, y + 1), ch, fill=fg, font=font)
