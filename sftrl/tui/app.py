"""The Textual app: follow a live ``agent run`` or browse a logged run (``agent replay``).

Live mode runs the real rollout (:func:`sftrl.agents.runner.run_async`) on its own thread and event
loop; the rollout publishes events into a bounded :class:`EventQueue` (oldest dropped, never blocks)
and the UI drains it on a timer at its own pace, redrawing once per tick however many events arrived.
Quitting mid-run cancels the rollout: every finished episode is already on disk (``--resume`` goes on).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.coordinate import Coordinate
from textual.events import Click
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Sparkline, Static

from sftrl.agents.events import EventQueue
from sftrl.agents.trajectory import read_episodes
from sftrl.street_view.provider import GRID_LAYOUT
from sftrl.tui.graphics import detect, image_widget
from sftrl.tui.state import EpisodeFilter, EpisodeView, Frame, RunView
from sftrl.tui.widgets import (
    RouteMap,
    conversation_text,
    gp_text,
    stats_text,
    virl_instructions,
)

POLL_S = 0.25
"""UI refresh period: events are folded in and the screen redrawn at most this often."""

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_CANCELLED = 0, 1, 2, 130


class _Gate:
    """Pause switch between the UI thread and the rollout: costs one flag check when open."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def wait(self) -> None:
        while not self._open.is_set():
            await asyncio.sleep(0.05)


class _PausablePolicy:
    """Wraps the run's policy so that ``space`` can hold the rollout before its next model call."""

    def __init__(self, inner: Any, gate: _Gate) -> None:
        self._inner = inner
        self._gate = gate
        self.name = inner.name

    def describe(self) -> dict[str, Any]:
        return dict(self._inner.describe())

    async def generate(self, messages: Sequence[Any], sampling: Any, **kwargs: Any) -> Any:
        await self._gate.wait()
        return await self._inner.generate(messages, sampling, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LiveRun:
    """The rollout of ``agent run --tui`` on a background thread with its own asyncio loop."""

    def __init__(
        self,
        run: Any,
        env_cfg: dict[str, Any],
        policy: Any = None,
        maxlen: int = 4096,
        owns_policy: bool = False,
    ) -> None:
        self.run = run
        self.env_cfg = env_cfg
        self.queue = EventQueue(maxlen=maxlen)
        self.gate = _Gate()
        self.summary: dict[str, Any] | None = None
        self.error: str | None = None
        self.config_error = False
        self.cancelled = False
        self.done = threading.Event()
        self._policy = policy
        self._owns_policy = owns_policy or policy is None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._thread = threading.Thread(target=self._main, name="sftrl-rollout", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        from sftrl.config import ConfigError

        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._rollout())
            self.summary = loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            self.cancelled = True
        except ConfigError as exc:
            self.config_error = True
            self.error = str(exc)
        except BaseException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            loop.close()
            self.done.set()

    async def _rollout(self) -> dict[str, Any]:
        from sftrl.agents.factory import close_policy, make_policy
        from sftrl.agents.runner import run_async

        inner = self._policy if self._policy is not None else make_policy(self.run)
        policy = _PausablePolicy(inner, self.gate)
        try:
            return await run_async(self.run, self.env_cfg, listeners=[self.queue], policy=policy)  # type: ignore[arg-type]
        finally:
            if self._owns_policy:  # ours to release: its HTTP clients / engine
                await close_policy(inner)

    def cancel(self, timeout: float = 30.0) -> None:
        """Cancel the rollout and wait for it: the log is closed with every finished episode in it."""
        self.gate.resume()
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not self.done.is_set():
            loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout)


class _NoFocusScroll(VerticalScroll, can_focus=False):
    """A scroll area that leaves the arrow keys to the app (the mouse wheel still scrolls it)."""


class EpisodeTable(DataTable[Any], can_focus=False):
    """The episode list; a click picks an episode (keys are the app's, so the table never has focus)."""

    class Picked(Message):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    async def _on_click(self, event: Click) -> None:
        await super()._on_click(event)
        if self.row_count and 0 <= self.cursor_row < self.row_count:
            key = self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key.value
            if key is not None:
                self.post_message(self.Picked(int(key)))


HELP = """\
[b]Keys[/b]

  [b]space[/b]   pause / resume the rollout (live run)
  [b]← →[/b]     previous / next model call of the episode
  [b]↑ ↓[/b]     previous / next episode (in the filtered list)
  [b]f[/b]       follow the newest episode and call (live run)
  [b]v[/b]       the observation image full-screen (V-IRL: 1-4 one view, 0 the grid)
  [b]s[/b]       save a screenshot (SVG) into the run directory
  [b]/[/b]       filter: success | failure | error | all, split=NAME,
          reward>=X, reward<X …; a number (or #N) jumps to episode N;
          empty clears the filter
  [b]?[/b]       this help
  [b]q[/b]       quit (a live run is cancelled; logged episodes are kept)

[b]Mouse[/b]: click an episode in the list; scroll any panel with the wheel.

[dim]esc, q or ? closes this help[/dim]"""


class ViewScreen(ModalScreen[None]):
    """One observation image over the whole terminal; a V-IRL grid can show one view at a time."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,v", "close", "Close"),
        Binding("0", "part(0)", "Grid", show=False),
        *(
            Binding(str(i + 1), f"part({i + 1})", name.capitalize())
            for i, (name, _) in enumerate(GRID_LAYOUT)
        ),
    ]
    DEFAULT_CSS = """
    ViewScreen { background: $background; }
    #view-title { height: 1; padding: 0 1; background: $boost; }
    #view-image { height: 1fr; width: 1fr; }
    """

    def __init__(self, image: Any, title: str, grid: bool, graphics: str = "halfblock") -> None:
        super().__init__()
        self.graphics = graphics
        self.image, self.title_text, self.grid = image, title, grid
        self.part = 0

    def compose(self) -> ComposeResult:
        yield Static(id="view-title")
        yield image_widget(self.graphics, id="view-image")
        yield Footer()

    def on_mount(self) -> None:
        self.action_part(0)

    def action_part(self, part: int) -> None:
        if part and not self.grid:
            return  # not a 2x2 grid: only the whole image
        self.part = part
        image = self.image if part == 0 else grid_view(self.image, part - 1)
        name = "" if part == 0 else f" · {GRID_LAYOUT[part - 1][0]} view"
        keys = " (1-4: one view, 0: grid, esc: back)" if self.grid else " (esc: back)"
        self.query_one("#view-title", Static).update(Text(f"{self.title_text}{name}{keys}"))
        self.query_one("#view-image").set_image(image, key=(id(self.image), part))  # type: ignore[attr-defined]

    def action_close(self) -> None:
        self.dismiss(None)


def _unique(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem.suffix``, or ``stem-2``, ``stem-3``… when taken (screenshots never overwrite)."""
    path = folder / f"{stem}{suffix}"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}{suffix}"
        n += 1
    return path


def grid_view(grid: Any, index: int, gap: int = 4) -> Any:
    """View ``index`` (GRID_LAYOUT order) cut out of a :func:`~sftrl.street_view.provider.grid_2x2` image."""
    w, h = (grid.width - gap) // 2, (grid.height - gap) // 2
    x, y = (index % 2) * (w + gap), (index // 2) * (h + gap)
    return grid.crop((x, y, x + w, y + h))


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help { width: 76; height: auto; padding: 1 2; border: round $accent; background: $surface; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def action_close(self) -> None:
        self.dismiss(None)

    def on_click(self) -> None:
        self.dismiss(None)


class AgentApp(App[int]):
    """Watch a run live (``live=LiveRun``) or browse a logged run directory (``run_dir=``)."""

    TITLE = "sftrl"
    AUTO_FOCUS = None  # nothing focused: every key goes to the app's bindings (the filter box takes focus)
    CSS = """
    Screen { layout: vertical; }
    #header { height: 2; background: $boost; padding: 0 1; }
    #error { height: auto; max-height: 6; background: $error 30%; color: $text; padding: 0 1; display: none; }
    #body { height: 1fr; }
    #episodes { width: 30; border: round $primary-darken-2; }
    #observation { width: 1fr; border: round $primary-darken-2; }
    #obs-image { height: 1fr; min-height: 6; }
    #obs-scroll { height: 9; }
    #task { width: 1fr; border: round $primary-darken-2; }
    #task-scroll { height: auto; max-height: 50%; }
    #map { height: 1fr; }
    #bottom { height: 13; }
    #conversation { width: 1fr; border: round $primary-darken-2; }
    #stats { width: 36; border: round $primary-darken-2; }
    #sparkline { height: 2; margin: 0 1; }
    #filter { dock: bottom; display: none; }
    .turn { margin: 0 0 0 0; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "toggle_pause", "Pause"),
        Binding("left", "turn(-1)", "◀ Call", key_display="←"),
        Binding("right", "turn(1)", "Call ▶", key_display="→"),
        Binding("up", "episode(-1)", "▲ Ep", key_display="↑"),
        Binding("down", "episode(1)", "Ep ▼", key_display="↓"),
        Binding("f", "toggle_follow", "Follow"),
        Binding("v", "view", "View"),
        Binding("s", "screenshot", "Shot"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("escape", "close_filter", "Close filter", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit_app", "Quit"),
    ]

    def __init__(
        self, *, run_dir: Path | None = None, live: LiveRun | None = None, graphics: str = "halfblock"
    ) -> None:
        """``graphics``: how images are drawn (:func:`sftrl.tui.graphics.detect`, run before the app)."""
        super().__init__()
        self.graphics = graphics
        if (run_dir is None) == (live is None):
            raise ValueError("AgentApp needs exactly one of run_dir (replay) or live (a LiveRun)")
        self.live = live
        if live is not None:
            self.run_view = RunView(Path(live.run.out), "starting")
            self.follow = True
        else:
            assert run_dir is not None
            self.run_view = RunView(Path(run_dir), "replay")
            self.follow = False
        self.episode_filter = EpisodeFilter()
        self.selected: int | None = None
        self.turn_pos = 0
        self._drawn: tuple[Any, ...] | None = None
        self._table_sig: tuple[Any, ...] | None = None
        self._conv_sig: tuple[Any, ...] | None = None
        self._loaded_resume = False

    # -- layout ------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="header")
        yield Static(id="error")
        with Horizontal(id="body"):
            table = EpisodeTable(id="episodes", cursor_type="row", zebra_stripes=True)
            table.border_title = "Episodes"
            yield table
            with Vertical(id="observation") as obs:
                obs.border_title = "Observation"
                yield image_widget(self.graphics, id="obs-image")
                with _NoFocusScroll(id="obs-scroll"):
                    yield Static(id="obs-text")
            with Vertical(id="task") as task:
                task.border_title = "Task"
                with _NoFocusScroll(id="task-scroll"):
                    yield Static(id="task-text")
                yield RouteMap(id="map")
        with Horizontal(id="bottom"):
            with _NoFocusScroll(id="conversation") as conv:
                conv.border_title = "Conversation"
                yield Static(id="conv-text")
            with Vertical(id="stats") as stats:
                stats.border_title = "Stats"
                yield Sparkline([], id="sparkline")
                yield Static(id="stats-text")
        yield Input(placeholder="filter: success | failure | error, split=id, reward>=1 … or #N", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(EpisodeTable)
        table.add_column("#", key="index", width=5)
        table.add_column("", key="outcome", width=2)
        table.add_column("reward", key="reward", width=7)
        table.add_column("calls", key="calls", width=5)
        if self.live is not None:
            self.live.start()
        else:
            self._load_replay()
        self._refresh()
        if self.live is not None:
            self.set_interval(POLL_S, self._poll)

    def _load_replay(self) -> None:
        from sftrl.config import load_yaml

        view = self.run_view
        assert view.run_dir is not None
        config_path = view.run_dir / "config.yaml"
        if config_path.exists():
            view.config = dict(load_yaml(config_path))
        for record in read_episodes(view.run_dir):
            view.add_record(record)
        view.total = max(int(view.config.get("episodes", 0) or 0), len(view.episodes))
        eps = view.ordered()
        if eps:
            self.selected = eps[0].index

    # -- live polling ------------------------------------------------------------------------------
    def _poll(self) -> None:
        live = self.live
        if live is None:
            return
        # Fold in everything that arrived since the last tick and redraw once: a slow terminal skips
        # frames instead of holding the rollout back.
        for event in live.queue.drain():
            self.run_view.apply(event)
        if not self._loaded_resume and self.run_view.status != "starting":
            self._loaded_resume = True
            self._load_resumed()
        if live.done.is_set() and self.run_view.status in ("starting", "running", "paused"):
            if live.error is not None:
                self.run_view.status, self.run_view.error = "failed", live.error
            elif live.cancelled:
                self.run_view.status = "cancelled"
            else:
                self.run_view.status = "finished"
            self.run_view.version += 1
        if self.run_view.status in ("running", "paused"):
            status = "paused" if live.gate.paused else "running"
            if status != self.run_view.status:
                self.run_view.status = status
                self.run_view.version += 1
        self._refresh()

    def _load_resumed(self) -> None:
        """A resumed run: show the episodes its log already holds."""
        done = int(self.run_view.config.get("episodes", 0))
        if self.run_view.run_dir is None or not (self.run_view.run_dir / "episodes.jsonl").exists():
            return
        from sftrl.agents.trajectory import LogError

        try:
            for record in read_episodes(self.run_view.run_dir):
                if record.episode_index < max(done, self.run_view.total) and (
                    record.episode_index not in self.run_view.episodes
                ):
                    self.run_view.add_record(record)
        except LogError:
            return

    # -- selection ---------------------------------------------------------------------------------
    def visible_episodes(self) -> list[EpisodeView]:
        return self.run_view.ordered(self.episode_filter)

    def current_episode(self) -> EpisodeView | None:
        if self.selected is None:
            return None
        return self.run_view.episodes.get(self.selected)

    def _apply_follow(self) -> None:
        eps = self.visible_episodes()
        if not eps:
            return
        running = [e for e in eps if not e.finished]
        target = max(running or eps, key=lambda e: e.index)
        self.selected = target.index
        self.turn_pos = max(0, target.n_frames - 1)

    def _clamp(self) -> None:
        eps = self.visible_episodes()
        if self.selected is None or self.selected not in {e.index for e in eps}:
            self.selected = eps[0].index if eps else None
            self.turn_pos = 0
        ep = self.current_episode()
        if ep is not None:
            self.turn_pos = min(max(0, self.turn_pos), max(0, ep.n_frames - 1))

    # -- drawing -----------------------------------------------------------------------------------
    def _refresh(self) -> None:
        if self.follow:
            self._apply_follow()
        self._clamp()
        ep = self.current_episode()
        sig = (
            self.run_view.version,
            self.selected,
            self.turn_pos,
            self.episode_filter,
            self.follow,
            self.run_view.status,
        )
        if sig == self._drawn:
            return
        self._drawn = sig
        self._draw_header()
        self._draw_table()
        frame = self.run_view.frame(ep, self.turn_pos) if ep is not None else None
        self._draw_observation(ep, frame)
        self._draw_task(ep, frame)
        self._draw_conversation(ep)
        self._draw_stats()

    def _draw_header(self) -> None:
        view = self.run_view
        cfg = view.config
        ep_any = next(iter(view.episodes.values()), None)
        policy = cfg.get("policy") or (ep_any.record.policy.get("name") if ep_any and ep_any.record else "?")
        model = cfg.get("model") or (ep_any.record.policy.get("model") if ep_any and ep_any.record else None)
        split = cfg.get("split") or (ep_any.split if ep_any else None)
        top = Text()
        top.append(f" {view.label} ", style="bold reverse")
        top.append(" ")
        if split:
            top.append(f"  split {split}")
        top.append(f"  policy {policy}")
        if model:
            top.append(f" ({model})")
        if view.run_dir is not None:
            top.append(f"  · {view.run_dir.name}", style="dim")
        stats = view.stats()
        done, total = view.done_count(), max(view.total, len(view.episodes))
        bottom = Text()
        width = 20
        filled = int(width * done / total) if total else 0
        bottom.append(f"{done}/{total} episodes ")
        bottom.append("█" * filled, style="green")
        bottom.append("░" * (width - filled), style="dim")
        ok = stats.finished - stats.errors
        bottom.append(f"  success {stats.rate:.1%}" if ok else "  success –", style="bold")
        status_style = {
            "running": "bold green",
            "paused": "bold yellow",
            "finished": "bold cyan",
            "failed": "bold white on red",
            "cancelled": "bold yellow",
            "replay": "bold blue",
            "starting": "dim",
        }[view.status]
        bottom.append("  ")
        bottom.append(f" {view.status} ", style=status_style)
        if self.live is not None:
            bottom.append("  follow on" if self.follow else "  follow off", style="dim")
        if self.episode_filter.active:
            bottom.append(f"  filter: {self.episode_filter.describe()}", style="bold magenta")
        if self.live is not None and self.live.queue.dropped:
            bottom.append(f"  ({self.live.queue.dropped} events skipped)", style="dim")
        self.query_one("#header", Static).update(Text.assemble(top, "\n", bottom))
        error = self.query_one("#error", Static)
        if view.error and view.status == "failed":
            error.update(Text(f"run failed: {view.error}", style="bold"))
            error.display = True
        else:
            error.display = False

    def _draw_table(self) -> None:
        table = self.query_one(EpisodeTable)
        eps = self.visible_episodes()
        sig = (self.episode_filter, tuple((e.index, e.outcome, len(e.turns)) for e in eps))
        if sig != self._table_sig:
            self._table_sig = sig
            marks = {"success": ("✓", "green"), "failure": ("✗", "red"), "error": ("!", "bold red")}
            table.clear()
            for e in eps:
                mark, style = marks.get(e.outcome, ("…", "yellow"))
                table.add_row(
                    Text(str(e.index), justify="right"),
                    Text(mark, style=style),
                    Text(f"{e.total_reward:+g}", justify="right"),
                    Text(str(len(e.turns)), justify="right"),
                    key=str(e.index),
                )
            title = f"Episodes {len(eps)}"
            table.border_title = title if not self.episode_filter.active else f"{title} (filtered)"
        if self.selected is not None:
            rows = [e.index for e in eps]
            if self.selected in rows:
                row = rows.index(self.selected)
                if table.cursor_row != row:
                    table.move_cursor(row=row, animate=False)

    def _draw_observation(self, ep: EpisodeView | None, frame: Frame | None) -> None:
        image: Any = self.query_one("#obs-image")
        panel = self.query_one("#observation")
        if frame is None:
            image.set_image(None, key="none")
            image.display = False
            self.query_one("#obs-text", Static).update(Text("no episode selected", style="dim"))
            panel.border_title = "Observation"
            return
        image.display = frame.image is not None
        image.set_image(frame.image)
        self.query_one("#obs-text", Static).update(Text(frame.text))
        assert ep is not None
        n = ep.n_frames
        title = f"Observation · episode {ep.index} · call {self.turn_pos + 1}/{n}"
        if frame.turn is not None:
            title += f" · step {frame.turn.step + 1} try {frame.turn.attempt + 1}"
        panel.border_title = title

    def _draw_task(self, ep: EpisodeView | None, frame: Frame | None) -> None:
        text = self.query_one("#task-text", Static)
        route_map = self.query_one(RouteMap)
        panel = self.query_one("#task")
        kind = self.run_view.kind
        if ep is None or frame is None:
            text.update(Text("–", style="dim"))
            route_map.display = kind == "virl"
            return
        if kind == "gp":
            panel.border_title = "GeneralPoints"
            route_map.display = False
            text.update(gp_text(frame.info, frame.turn, ep.env_config or self.run_view.config))
            return
        if kind == "virl":
            panel.border_title = "Route"
            route_map.display = True
            route = ep.info.get("route_map")
            text.update(virl_instructions(frame.info, route, frame.turn))
            info = frame.info
            agent = None
            if info.get("lat") is not None and info.get("lng") is not None:
                agent = (float(info["lat"]), float(info["lng"]), float(info.get("heading", 0.0)), 0)
                agent = (*agent[:3], int(info.get("position", 0)))
            route_map.show(route, info.get("city") or ep.info.get("city"), agent)
            return
        route_map.display = False
        text.update(Text(str(frame.info)))

    def _draw_conversation(self, ep: EpisodeView | None) -> None:
        conv = self.query_one("#conversation", _NoFocusScroll)
        static = self.query_one("#conv-text", Static)
        if ep is None:
            static.update(Text("no episode", style="dim"))
            return
        sig = (ep.index, len(ep.turns), ep.finished, ep.pending_text is not None, self.turn_pos)
        if sig == self._conv_sig:
            return
        self._conv_sig = sig
        text = conversation_text(ep, self.turn_pos)
        static.update(text)
        conv.border_title = f"Conversation · episode {ep.index} · seed {ep.seed}"
        # Keep the cursor's call in view: find its marker line in the rendered text.
        plain = text.plain.splitlines()
        line = next((i for i, s in enumerate(plain) if s.startswith("▶")), 0)
        self.call_after_refresh(conv.scroll_to, y=max(0, line - 1), animate=False)

    def _draw_stats(self) -> None:
        stats = self.run_view.stats()
        spark = self.query_one(Sparkline)
        spark.data = stats.rewards[-200:] or [0.0]
        self.query_one("#stats-text", Static).update(stats_text(stats))

    # -- actions -----------------------------------------------------------------------------------
    def action_toggle_pause(self) -> None:
        live = self.live
        if live is None or live.done.is_set():
            self.notify("nothing to pause: this is not a running rollout", timeout=2)
            return
        if live.gate.paused:
            live.gate.resume()
        else:
            live.gate.pause()
        self._poll()

    def action_turn(self, delta: int) -> None:
        ep = self.current_episode()
        if ep is None:
            return
        self.follow = False
        self.turn_pos = min(max(0, self.turn_pos + delta), max(0, ep.n_frames - 1))
        self._refresh()

    def action_episode(self, delta: int) -> None:
        eps = self.visible_episodes()
        if not eps:
            return
        self.follow = False
        rows = [e.index for e in eps]
        row = rows.index(self.selected) if self.selected in rows else 0
        self.select_episode(rows[min(max(0, row + delta), len(rows) - 1)])

    def select_episode(self, index: int, position: int = 0) -> None:
        """Show episode ``index`` (cursor on call ``position``)."""
        self.selected = index
        self.turn_pos = position
        self._refresh()

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self._refresh()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = "" if not self.episode_filter.active else self.episode_filter.describe()
        box.display = True
        box.focus()

    def action_close_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display:
            box.display = False
            self.set_focus(None)

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        query = event.value.strip()
        target = query.lstrip("#")
        if target.isdigit():
            index = int(target)
            if index not in self.run_view.episodes:
                self.notify(f"no episode {index} in this run", severity="warning", timeout=3)
                return
            if not self.episode_filter.matches(self.run_view.episodes[index]):
                self.episode_filter = EpisodeFilter()  # jumping to a hidden episode shows everything again
            self.follow = False
            self.action_close_filter()
            self.select_episode(index)
            return
        try:
            self.episode_filter = EpisodeFilter.parse(query)
        except ValueError as exc:
            self.notify(str(exc), severity="error", timeout=4)
            return
        self.follow = False
        self.action_close_filter()
        self._refresh()

    @on(EpisodeTable.Picked)
    def _picked(self, event: EpisodeTable.Picked) -> None:
        self.follow = False
        if event.index != self.selected:
            self.select_episode(event.index)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_view(self) -> None:
        ep = self.current_episode()
        frame = self.run_view.frame(ep, self.turn_pos) if ep is not None else None
        if frame is None or frame.image is None:
            self.notify("no image in this call", timeout=2)
            return
        assert ep is not None
        title = f"episode {ep.index} · call {self.turn_pos + 1}/{ep.n_frames}"
        self.push_screen(
            ViewScreen(frame.image, title, grid=self.run_view.kind == "virl", graphics=self.graphics)
        )

    def action_screenshot(self, filename: str | None = None, path: str | None = None) -> None:
        """Save an SVG of the screen into the run directory (Textual's default folder may not exist)."""
        run_dir = self.run_view.run_dir or Path.cwd()
        name = (
            filename
            or f"screenshot-{self.selected if self.selected is not None else 'run'}-{self.turn_pos + 1}"
        )
        try:
            saved = self.save_screenshot(
                filename=_unique(Path(path or run_dir), name, ".svg").name, path=str(path or run_dir)
            )
        except OSError as exc:
            self.notify(f"cannot save a screenshot: {exc.strerror or exc}", severity="error", timeout=4)
            return
        self.notify(f"screenshot saved to {saved}", timeout=4)

    def action_quit_app(self) -> None:
        self.exit(return_code=self.finish())

    def finish(self) -> int:
        """Stop a live rollout (if still going) and return the exit status of the session."""
        live = self.live
        if live is None:
            return EXIT_OK
        if not live.done.is_set():
            live.cancel()
        if live.config_error:
            return EXIT_CONFIG
        if live.error is not None:
            return EXIT_FAILED
        if live.cancelled:
            return EXIT_CANCELLED
        return EXIT_OK


def run_tui(run: Any, env_cfg: dict[str, Any], policy: Any = None) -> tuple[int, LiveRun]:
    """``agent run --tui``: run the app in the terminal; returns (exit status, the finished LiveRun).

    ``policy``, when given, is used and closed by the run (the CLI builds it first, so a bad model or
    key fails before the terminal is taken).
    """
    live = LiveRun(run, env_cfg, policy=policy, owns_policy=policy is not None)
    app = AgentApp(live=live, graphics=detect())
    app.run()
    # Ctrl+C or a crash of the UI: still stop the rollout cleanly before returning.
    status = app.finish() if app.return_code is None or not live.done.is_set() else app.return_code
    return (status if status is not None else EXIT_FAILED), live


def replay_tui(run_dir: Path) -> int:
    """``agent replay RUN_DIR``: browse a logged run."""
    read_episodes(run_dir)  # fail early (LogError) with one clear line, before taking the terminal
    app = AgentApp(run_dir=run_dir, graphics=detect())
    app.run()
    return app.return_code or EXIT_OK
