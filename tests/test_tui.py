"""The TUI driven headless through Textual's pilot, on logs written by the real runner."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from rich.style import Style
from rich.text import Text
from textual.widgets import Input, Static

from sftrl.agents.runner import RunConfig, run_async
from sftrl.agents.trajectory import TrajectoryWriter, read_episodes
from sftrl.cli import main
from sftrl.tui.app import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, AgentApp, HelpScreen, LiveRun
from sftrl.tui.canvas import BrailleCanvas, halfblock_strips
from sftrl.tui.state import EpisodeFilter
from sftrl.tui.widgets import HalfBlockImage, RouteMap

SIZE = (150, 44)


def _run(out: Path, env: str, episodes: int, policy: str = "expert", **env_cfg: Any) -> Path:
    from sftrl.agents.runner import split_config

    run, cfg = split_config({"env": env, "policy": policy, "episodes": episodes, "out": out, **env_cfg})
    asyncio.run(run_async(run, cfg))
    return out


@pytest.fixture(scope="module")
def gp_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The random policy gives failed episodes with retries (sequential revision) to browse.
    out = tmp_path_factory.mktemp("runs", numbered=True) / "gp-vl"
    return _run(out, "gp", 5, policy="random", modality="vision", resolution=240, seed=3)


@pytest.fixture(scope="module")
def gp_vl_expert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs", numbered=True) / "gp-vl-expert"
    return _run(out, "gp", 3, modality="vision", resolution=240)


@pytest.fixture(scope="module")
def virl_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs", numbered=True) / "virl-vl"
    return _run(out, "virl", 1, modality="vision", resolution=64)


async def _query(pilot: Any, app: AgentApp, text: str) -> None:
    """Open the filter box with /, type ``text`` (set at once: typing key by key is slow) and submit."""
    await pilot.press("slash")
    app.query_one("#filter", Input).value = text
    await pilot.press("enter")


def _header(app: AgentApp) -> str:
    return str(app.query_one("#header").render())


# -- replay ----------------------------------------------------------------------------------------
async def test_replay_gp_keys_step_through_turns_and_episodes(gp_vl: Path) -> None:
    records = read_episodes(gp_vl)
    app = AgentApp(run_dir=gp_vl)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "GP-VL" in _header(app) and "5/5 episodes" in _header(app) and "replay" in _header(app)
        assert app.selected == 0 and app.turn_pos == 0
        assert app.query_one("#obs-image", HalfBlockImage).has_image  # the cards image the model saw
        n_calls = len(records[0].turns)
        assert n_calls > 1  # random replies fail and are retried
        await pilot.press("right", "right")
        assert app.turn_pos == 2
        conv = str(app.query_one("#conv-text").render())
        assert "▶ try 3" in conv and conv.count("try ") == n_calls  # retries grouped under step 1
        task = str(app.query_one("#task-text").render())
        assert records[0].turns[2].action is None or str(records[0].turns[2].action["formula"]) in task
        for _ in range(n_calls + 3):
            await pilot.press("right")
        assert app.turn_pos == n_calls - 1  # clamped at the last call
        await pilot.press("left")
        assert app.turn_pos == n_calls - 2
        await pilot.press("down", "down")
        assert app.selected == 2 and app.turn_pos == 0
        await pilot.press("up")
        assert app.selected == 1
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
    assert app.return_code == EXIT_OK


async def test_replay_filter_and_jump(gp_vl: Path, gp_vl_expert: Path) -> None:
    app = AgentApp(run_dir=gp_vl)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await _query(pilot, app, "success")
        assert app.visible_episodes() == []  # the random policy solved none of these hands
        assert "filter: success" in _header(app)
        await _query(pilot, app, "failure reward<-100")
        assert app.visible_episodes() == []
        await _query(pilot, app, "failure split=id")
        assert len(app.visible_episodes()) == 5
        await _query(pilot, app, "#4")
        assert app.selected == 4
        assert not app.query_one("#filter").display  # the box closes after a query
        await _query(pilot, app, "bogus")
        assert app.query_one("#filter").display  # an unknown filter keeps the box open (and notifies)
        await pilot.press("escape", "q")
    app = AgentApp(run_dir=gp_vl_expert)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await _query(pilot, app, "success reward>=5")
        assert [e.index for e in app.visible_episodes()] == [0, 1, 2]
        await pilot.press("q")


async def test_episode_list_click_selects(gp_vl: Path) -> None:
    app = AgentApp(run_dir=gp_vl)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        # Row 3 of the list (under the border and the header row).
        await pilot.click("#episodes", offset=(3, 5))
        await pilot.pause()
        assert app.selected == 3
        await pilot.press("q")


async def test_replay_virl_map_follows_the_agent(virl_vl: Path) -> None:
    record = read_episodes(virl_vl)[0]
    route = record.info["route_map"]
    assert route["path"] and route["instructions"] and len(route["rail"]) == record.info["rail_length"]
    app = AgentApp(run_dir=virl_vl)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "V-IRL-VL" in _header(app)
        rmap = app.query_one(RouteMap)
        assert rmap._agent is not None and rmap._agent[3] == 0
        first = "".join(s.text for s in rmap._draw(60, 20))
        assert "D" in first and "●" in first  # destination and a landmark are drawn
        task = app.query_one("#task-text", Static).content
        assert isinstance(task, Text)
        highlighted = [task.plain[s.start : s.end] for s in task.spans if "on yellow" in str(s.style)]
        assert highlighted == [route["instructions"][route["instruction_at"][0]]]
        last = len(record.turns) - 1
        for _ in range(last):
            await pilot.press("right")
        assert rmap._agent[3] == record.turns[last].info["position"]
        task = app.query_one("#task-text", Static).content
        assert isinstance(task, Text)
        highlighted = [task.plain[s.start : s.end] for s in task.spans if "on yellow" in str(s.style)]
        assert highlighted == [route["instructions"][-1]]  # stop() is the last sentence
        await pilot.press("q")


# -- live ------------------------------------------------------------------------------------------
async def _wait_done(pilot: Any, live: LiveRun) -> None:
    for _ in range(600):
        if live.done.is_set():
            break
        await pilot.pause(0.05)
    # The UI polls the run's queue on a timer: on a loaded machine its last poll can come seconds
    # after the rollout ended, so wait (bounded) for the header to say the run is over.
    for _ in range(200):
        await pilot.pause(0.05)
        if any(w in _header(pilot.app) for w in ("finished", "failed", "interrupted")):
            break


async def test_live_expert_run_shows_progress_and_exits_zero(tmp_path: Path) -> None:
    run = RunConfig(env="gp", policy="expert", episodes=4, out=tmp_path / "live")
    live = LiveRun(run, {"modality": "vision", "resolution": 200})
    app = AgentApp(live=live)
    async with app.run_test(size=SIZE) as pilot:
        await _wait_done(pilot, live)
        header = _header(app)
        assert "4/4 episodes" in header and "finished" in header and "success 100.0%" in header
        assert app.follow and app.selected == 3  # following the newest episode
        await pilot.press("f")
        assert not app.follow
        await pilot.press("q")
    assert app.return_code == EXIT_OK
    assert len(read_episodes(tmp_path / "live")) == 4


async def test_live_run_failing_midway_shows_error_and_exits_nonzero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = TrajectoryWriter.write
    calls = {"n": 0}

    def write(self: TrajectoryWriter, record: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the disk fills up while the third episode is being logged
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, record)

    monkeypatch.setattr(TrajectoryWriter, "write", write)
    run = RunConfig(env="gp", policy="expert", episodes=10, out=tmp_path / "fail")
    live = LiveRun(run, {"modality": "language"})
    app = AgentApp(live=live)
    async with app.run_test(size=SIZE) as pilot:
        await _wait_done(pilot, live)
        error = app.query_one("#error")
        assert error.display and "No space left on device" in str(error.render())
        assert "failed" in _header(app)
        await pilot.press("q")
    assert app.return_code == EXIT_FAILED
    assert len(read_episodes(tmp_path / "fail")) == 2  # what was logged before the failure is intact


async def test_live_pause_then_quit_cancels_with_log_intact(tmp_path: Path) -> None:
    run = RunConfig(env="gp", policy="expert", episodes=5000, out=tmp_path / "cancel")
    live = LiveRun(run, {"modality": "language"})
    app = AgentApp(live=live)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(200):
            await pilot.pause(0.05)
            if app.run_view.done_count() >= 2:
                break
        await pilot.press("space")
        await pilot.pause(0.3)
        assert live.gate.paused and "paused" in _header(app)
        held = len(read_episodes(tmp_path / "cancel"))
        await pilot.pause(0.3)
        # Paused: at most the episode in flight finishes.
        assert len(read_episodes(tmp_path / "cancel")) <= held + 1
        await pilot.press("q")
    assert app.return_code == EXIT_CANCELLED and live.cancelled
    logged = read_episodes(tmp_path / "cancel")
    assert 2 <= len(logged) < 5000
    assert sorted(r.episode_index for r in logged) == list(range(len(logged)))


# -- CLI ---------------------------------------------------------------------------------------------
def test_cli_replay_needs_a_run_dir_and_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["replay", str(tmp_path)]) == 2  # no episodes.jsonl
    assert "no trajectory log" in capsys.readouterr().err


def test_cli_tui_refuses_without_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # pytest's stdin/stdout are not a TTY: the TUI must refuse instead of garbling the output.
    assert main(["run", "--env", "gp", "--episodes", "1", "--out", str(tmp_path / "o"), "--tui"]) == 2
    assert "interactive terminal" in capsys.readouterr().err


# -- drawing primitives ------------------------------------------------------------------------------
def test_braille_canvas_dots_lines_and_labels() -> None:
    canvas = BrailleCanvas(3, 2)
    red = Style(color="red")
    canvas.set(0, 0, red)
    canvas.set(1, 3, red)
    canvas.line(0, 7, 5, 7, Style(color="blue"), priority=1)
    canvas.text(2, 0, "D", Style(bold=True))
    rows = [strip.text for strip in canvas.strips()]
    assert rows[0][0] == chr(0x2800 | 0x01 | 0x80)  # top-left and bottom-right dots of cell (0, 0)
    assert rows[0][2] == "D"
    assert rows[1] == chr(0x2800 | 0x40 | 0x80) * 3  # the bottom dot row, full width


def test_halfblock_keeps_aspect_and_colours() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 10, 40, 20))  # bottom half blue
    strips = halfblock_strips(image, 20, 20)
    assert len(strips) == 20 and all(s.cell_length == 20 for s in strips)
    drawn = [s for s in strips if "▀" in s.text]
    assert len(drawn) == 5  # 20×10 pixels in 20×5 cells: a 2:1 image stays 2:1
    top_style = next(seg.style for seg in drawn[0] if seg.text.strip())
    assert top_style is not None and top_style.color is not None
    assert top_style.color.get_truecolor()[:3] == (255, 0, 0)
    bottom_style = next(seg.style for seg in drawn[-1] if seg.text.strip())
    assert bottom_style is not None and bottom_style.bgcolor is not None
    assert bottom_style.bgcolor.get_truecolor()[:3] == (0, 0, 255)


def test_filter_parse() -> None:
    f = EpisodeFilter.parse("failure split=id reward >= -3 reward<5")
    assert (f.outcome, f.split, f.min_reward) == ("failure", "id", -3.0)
    assert f.max_reward is not None and 4.9 < f.max_reward < 5
    assert EpisodeFilter.parse("") == EpisodeFilter()
    with pytest.raises(ValueError, match="unknown filter"):
        EpisodeFilter.parse("winners")


# -- snapshots ---------------------------------------------------------------------------------------
def test_snapshot_gp_vl_replay(gp_vl: Path, snap_compare: Any) -> None:
    assert snap_compare(AgentApp(run_dir=gp_vl), press=["right", "right"], terminal_size=SIZE)


def test_snapshot_virl_vl_replay(virl_vl: Path, snap_compare: Any) -> None:
    assert snap_compare(AgentApp(run_dir=virl_vl), press=["right"] * 4, terminal_size=SIZE)


def test_snapshot_help(gp_vl: Path, snap_compare: Any) -> None:
    assert snap_compare(AgentApp(run_dir=gp_vl), press=["question_mark"], terminal_size=SIZE)
