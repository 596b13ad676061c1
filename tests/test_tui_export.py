"""TUI: SVG/PNG export without a terminal, screenshot key, full-screen view, 256 colours, map labels."""

from __future__ import annotations

import asyncio
import html
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sftrl.agents.runner import run_async, split_config
from sftrl.cli import main
from sftrl.tui.app import AgentApp, ViewScreen, grid_view
from sftrl.tui.canvas import halfblock_strips, xterm_palette
from sftrl.tui.export import CELL_H, CELL_W
from sftrl.tui.graphics import detect
from sftrl.tui.widgets import HalfBlockImage, place_label, terminal_colours

SIZE = (120, 40)


def _run(out: Path, env: str, episodes: int, **env_cfg: Any) -> Path:
    run, cfg = split_config({"env": env, "episodes": episodes, "out": out, **env_cfg})
    asyncio.run(run_async(run, cfg))
    return out


@pytest.fixture(scope="module")
def virl_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("runs") / "virl-vl", "virl", 2, modality="vision", resolution=64)


def test_export_svg_and_png_of_a_chosen_call(virl_vl: Path, tmp_path: Path, capsys) -> None:
    svg, png = tmp_path / "shot.svg", tmp_path / "out" / "shot.png"
    assert main(["replay", str(virl_vl), "--export", str(svg), "--episode", "1", "--call", "2"]) == 0
    text = html.unescape(svg.read_text()).replace("\xa0", " ")
    assert text.startswith("<svg") and "episode 1 · call 2" in text and "Observation" in text
    assert main(["replay", str(virl_vl), "--export", str(png), "--size", "100x30"]) == 0
    image = Image.open(png)
    assert image.size == (100 * CELL_W, 30 * CELL_H)
    # The street-view grid is drawn as pixels: far more colours than a text-only screen has.
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
    assert f"wrote {png}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--export", "x.gif"], "writes .svg or .png"),
        (["--export", "x.svg", "--episode", "7"], "no episode 7"),
        (["--export", "x.svg", "--call", "99"], "not 99"),
        (["--episode", "1"], "go with --export"),
        (["--export", "x.svg", "--size", "big"], "COLSxROWS"),
    ],
)
def test_export_mistakes_are_one_line(virl_vl: Path, extra: list[str], needle: str, capsys) -> None:
    assert main(["replay", str(virl_vl), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("agent: error:") and "\n" not in err and needle in err


async def test_screenshot_key_saves_into_the_run_directory(virl_vl: Path) -> None:
    before = set(virl_vl.glob("*.svg"))
    app = AgentApp(run_dir=virl_vl)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("right", "s", "s")
        await pilot.pause()
    shots = sorted(set(virl_vl.glob("*.svg")) - before)
    assert [p.name for p in shots] == ["screenshot-0-2-2.svg", "screenshot-0-2.svg"]
    assert all(p.read_text().startswith("<svg") for p in shots)


async def test_view_key_shows_the_image_full_screen_and_one_view(virl_vl: Path) -> None:
    app = AgentApp(run_dir=virl_vl)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        small = app.query_one("#obs-image", HalfBlockImage).size
        await pilot.press("v")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ViewScreen)
        big = screen.query_one("#view-image", HalfBlockImage)
        assert big.size.width >= SIZE[0] - 2 and big.size.height >= SIZE[1] - 4
        assert big.size.width * big.size.height > 4 * small.width * small.height
        grid = screen.image
        await pilot.press("3")  # the back view, alone
        assert screen.part == 3 and big._image.size == grid_view(grid, 2).size
        assert big._image.size == ((grid.width - 4) // 2, (grid.height - 4) // 2)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ViewScreen)


def test_without_truecolor_images_use_exactly_the_256_colour_palette() -> None:
    assert terminal_colours("truecolor") == 1 << 24 and terminal_colours("256") == 256
    gradient = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    palette = set(xterm_palette())
    colours = {
        (c.triplet.red, c.triplet.green, c.triplet.blue)
        for strip in halfblock_strips(gradient, 32, 16, colours=256)
        for seg in strip
        if seg.style
        for c in (seg.style.color, seg.style.bgcolor)
        if c is not None and c.triplet is not None
    }
    assert colours and colours <= palette
    truecolour = {
        seg.style.color.triplet for strip in halfblock_strips(gradient, 32, 16) for seg in strip if seg.style
    }
    assert len(truecolour) > len(colours) // 2  # the truecolor path is untouched


def test_map_labels_never_cover_a_marker_or_each_other() -> None:
    # A crowded map: markers in a row, each label wants the cells where the next markers are.
    markers = {(10, 5), (11, 5), (14, 5), (12, 4), (12, 6)}
    taken = set(markers)
    for cx, cy in sorted(markers):
        spot = place_label(cx, cy, "Waterfront Ale House", 40, 12, taken)
        if spot is None:
            continue
        x, y, text = spot
        cells = {(x + i, y) for i in range(len(text))}
        assert not cells & taken and x >= 0 and x + len(text) <= 40
        assert text == "Waterfront Ale House" or text.endswith("…")
        taken |= cells
    assert place_label(0, 0, "Name", 2, 1, {(0, 0)}) is None  # no room: no label, marker stays visible


def test_graphics_fall_back_to_half_blocks_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SFTRL_TUI_GRAPHICS", raising=False)
    assert detect() == "halfblock"  # pytest's stdout is no terminal: textual-image finds no protocol
    assert detect("halfblock") == "halfblock" and detect("sixel") == "sixel"
    monkeypatch.setenv("SFTRL_TUI_GRAPHICS", "tgp")
    assert detect() == "tgp"
    monkeypatch.setenv("SFTRL_TUI_GRAPHICS", "ascii-art")
    with pytest.raises(ValueError, match="SFTRL_TUI_GRAPHICS must be one of"):
        detect()


@pytest.mark.parametrize("mode", ["sixel", "tgp"])
async def test_a_graphics_protocol_widget_shows_the_observation_image(virl_vl: Path, mode: str) -> None:
    from textual_image.widget import SixelImage, TGPImage

    app = AgentApp(run_dir=virl_vl, graphics=mode)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        widget = app.query_one("#obs-image")
        assert isinstance(widget, SixelImage if mode == "sixel" else TGPImage)
        assert widget.has_image and widget.image is not None and widget.image.size[0] >= 64
        await pilot.press("v")
        await pilot.pause()
        assert isinstance(app.screen.query_one("#view-image"), SixelImage if mode == "sixel" else TGPImage)
