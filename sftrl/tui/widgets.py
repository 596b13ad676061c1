"""The TUI's own widgets (half-block image, braille route map) and the rich text of its panels."""

from __future__ import annotations

import math
from typing import Any

from PIL import Image
from rich.style import Style
from rich.text import Text
from textual.strip import Strip
from textual.widget import Widget

from sftrl.agents.trajectory import TurnRecord
from sftrl.tui.canvas import BrailleCanvas, halfblock_strips
from sftrl.tui.state import EpisodeView, Stats, group_turns

# Verdict categories by kind of outcome (GP and V-IRL names); unknown ones are shown neutral.
_GOOD = {"correct", "correct_action"}
_PARTIAL = {"partial_solution"}
_WRONG = {"no_solution", "incorrect_action", "incorrect_observation", "incorrect_vision", "incorrect_numbers"}
_BROKEN = {"illegal_formula", "unparseable"}


def verdict_style(category: str) -> str:
    if category in _GOOD:
        return "bold green"
    if category in _PARTIAL:
        return "yellow"
    if category in _WRONG:
        return "red"
    if category in _BROKEN:
        return "magenta"
    return "cyan"


def terminal_colours(color_system: str | None) -> int:
    """How many colours a Rich colour system shows (``truecolor`` 2^24; ``256``; ``standard`` 16...)."""
    return {"truecolor": 1 << 24, "256": 256, "standard": 16, "windows": 16}.get(color_system or "", 256)


class HalfBlockImage(Widget):
    """An image drawn with ▀ half blocks (two pixels per cell): works in every colour terminal.

    Without truecolor (``COLORTERM`` unset, e.g. macOS Terminal) the image is dithered onto the xterm
    256-colour palette, so what the terminal shows is what was drawn.
    """

    DEFAULT_CSS = "HalfBlockImage { height: 1fr; width: 1fr; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._image: Image.Image | None = None
        self._key: object = None
        self._cache: tuple[object, int, int, list[Strip]] | None = None

    def set_image(self, image: Image.Image | None, key: object = None) -> None:
        """Show ``image``; ``key`` identifies it so an unchanged image is not re-rendered."""
        key = key if key is not None else id(image)
        if key == self._key:
            return
        self._image, self._key = image, key
        self.refresh()

    @property
    def has_image(self) -> bool:
        return self._image is not None

    def render_line(self, y: int) -> Strip:
        width, height = self.size.width, self.size.height
        if self._image is None:
            return Strip.blank(width)
        if self._cache is None or self._cache[:3] != (self._key, width, height):
            colours = terminal_colours(self.app.console.color_system)
            self._cache = (self._key, width, height, halfblock_strips(self._image, width, height, colours))
        strips = self._cache[3]
        return strips[y] if 0 <= y < len(strips) else Strip.blank(width)


_ARROWS = "↑↗→↘↓↙←↖"
_STREET = Style(color="grey35")
_ROUTE = Style(color="dodger_blue1")
_WALKED = Style(color="bright_cyan", bold=True)
_MILESTONE = Style(color="yellow", bold=True)
_LANDMARK = Style(color="magenta", bold=True)
_START = Style(color="green", bold=True)
_DEST = Style(color="red", bold=True)
_AGENT = Style(color="bright_white", bgcolor="dark_blue", bold=True)


class RouteMap(Widget):
    """A braille map of a V-IRL route: street graph around it, route, milestones, landmarks, agent."""

    DEFAULT_CSS = "RouteMap { height: 1fr; width: 1fr; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._route: dict[str, Any] | None = None
        self._city: str | None = None
        self._agent: tuple[float, float, float, int] | None = None
        self._strips: tuple[object, list[Strip]] | None = None

    def show(
        self, route: dict[str, Any] | None, city: str | None, agent: tuple[float, float, float, int] | None
    ) -> None:
        """Draw ``route`` (an env's ``route_map`` info) with the agent at (lat, lng, heading, rail pos)."""
        if (route, city, agent) == (self._route, self._city, self._agent):
            return
        self._route, self._city, self._agent = route, city, agent
        self._strips = None
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width, height = self.size.width, self.size.height
        key = (width, height)
        if self._strips is None or self._strips[0] != key:
            self._strips = (key, self._draw(width, height))
        strips = self._strips[1]
        return strips[y] if 0 <= y < len(strips) else Strip.blank(width)

    def _draw(self, width: int, height: int) -> list[Strip]:
        if width < 4 or height < 2:
            return []
        canvas = BrailleCanvas(width, height)
        route = self._route
        if not route or not route.get("path"):
            canvas.text(1, 0, "no route geometry in this log", Style(dim=True))
            return canvas.strips()
        points = [tuple(p) for p in route["path"]]
        points += [tuple(p) for p in route.get("milestones", [])]
        points += [tuple(lm[1:3]) for lm in route.get("landmarks", [])]
        for key in ("start", "dest"):
            if route.get(key):
                points.append(tuple(route[key]))
        lats = [p[0] for p in points]
        lngs = [p[1] for p in points]
        lat0 = (min(lats) + max(lats)) / 2
        kx = math.cos(math.radians(lat0))  # metres per degree of longitude shrink with latitude
        span_x = max((max(lngs) - min(lngs)) * kx, 1e-6)
        span_y = max(max(lats) - min(lats), 1e-6)
        margin = 3
        # Braille dots are about square (a cell is ~1:2 and holds 2×4 dots): one scale for both axes.
        scale = min((canvas.dot_width - 2 * margin) / span_x, (canvas.dot_height - 2 * margin) / span_y)
        cx0 = (min(lngs) + max(lngs)) / 2
        cy0 = lat0

        def project(lat: float, lng: float) -> tuple[int, int]:
            x = canvas.dot_width / 2 + (lng - cx0) * kx * scale
            y = canvas.dot_height / 2 - (lat - cy0) * scale
            return int(round(x)), int(round(y))

        # The street graph around the route (the city bundle), dim under everything else.
        half_w = canvas.dot_width / 2 / scale
        half_h = canvas.dot_height / 2 / scale
        for (a_lat, a_lng), (b_lat, b_lng) in _streets(
            self._city, cy0 - half_h, cy0 + half_h, cx0 - half_w / kx, cx0 + half_w / kx
        ):
            canvas.line(*project(a_lat, a_lng), *project(b_lat, b_lng), _STREET, 0)
        path = [project(*p) for p in route["path"]]
        for a, b in zip(path, path[1:], strict=False):
            canvas.line(*a, *b, _ROUTE, 1)
        agent = self._agent
        rail = [project(*p) for p in route.get("rail", [])]
        if agent is not None and rail:
            pos = min(max(agent[3], 0), len(rail) - 1)
            for a, b in zip(rail[: pos + 1], rail[1 : pos + 1], strict=False):
                canvas.line(*a, *b, _WALKED, 2)
        # Markers first (one cell each), then landmark labels where they cover no marker and no other label.
        markers: list[tuple[int, int, str, Style, int]] = []
        milestones = route.get("milestones", [])
        for lat, lng in milestones[:-1]:  # the last milestone is the destination, drawn as D
            x, y = project(lat, lng)
            markers.append((x // 2, y // 4, "◆", _MILESTONE, 11))
        labels: list[tuple[int, int, str]] = []
        for name, lat, lng in route.get("landmarks", []):
            x, y = project(lat, lng)
            markers.append((x // 2, y // 4, "●", _LANDMARK, 12))
            labels.append((x // 2, y // 4, str(name)))
        if route.get("start"):
            x, y = project(*route["start"])
            markers.append((x // 2, y // 4, "S", _START, 13))
        if route.get("dest"):
            x, y = project(*route["dest"])
            markers.append((x // 2, y // 4, "D", _DEST, 13))
        if agent is not None:
            x, y = project(agent[0], agent[1])
            markers.append((x // 2, y // 4, _ARROWS[int(((agent[2] % 360) + 22.5) // 45) % 8], _AGENT, 20))
        taken = {(cx, cy) for cx, cy, *_ in markers}
        for cx, cy, ch, style, prio in markers:
            canvas.text(cx, cy, ch, style, prio)
        for cx, cy, name in labels:
            spot = place_label(cx, cy, name, width, height, taken)
            if spot is not None:
                lx, ly, text = spot
                canvas.text(lx, ly, text, Style(color="magenta"), 5)
                taken |= {(lx + i, ly) for i in range(len(text))}
        return canvas.strips()


def place_label(
    cx: int, cy: int, name: str, width: int, height: int, taken: set[tuple[int, int]]
) -> tuple[int, int, str] | None:
    """Where the label of a marker at cell (cx, cy) goes: (x, y, text) covering no ``taken`` cell.

    Tries right of the marker, left, the row above, the row below; shortens the name (with "…") down
    to 3 characters before giving up (None: no label rather than one hiding a marker).
    """
    for n in range(len(name), 2, -1):
        text = name if n == len(name) else name[: n - 1] + "…"
        for x, y in ((cx + 1, cy), (cx - n, cy), (cx - n // 2, cy - 1), (cx - n // 2, cy + 1)):
            cells = [(x + i, y) for i in range(n)]
            if x >= 0 and x + n <= width and 0 <= y < height and not any(c in taken for c in cells):
                return x, y, text
    return None


def _streets(
    city: str | None, lat_lo: float, lat_hi: float, lng_lo: float, lng_hi: float
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Street segments of ``city`` with an end inside the box (empty if the city has no bundle)."""
    if not city:
        return []
    from sftrl.street_view.city import load_city

    try:
        cmap = load_city(city)
    except (LookupError, OSError, ValueError):
        return []
    inside = (cmap.lat >= lat_lo) & (cmap.lat <= lat_hi) & (cmap.lng >= lng_lo) & (cmap.lng <= lng_hi)
    src, dst = cmap.edge_src, cmap.edge_dst
    keep = inside[src] | inside[dst]
    # Edges are directed (both ways are stored): draw each street segment once.
    keep &= src < dst
    out = []
    for a, b in zip(src[keep].tolist(), dst[keep].tolist(), strict=True):
        out.append(((float(cmap.lat[a]), float(cmap.lng[a])), (float(cmap.lat[b]), float(cmap.lng[b]))))
    return out


# -- panel text ------------------------------------------------------------------------------------
_SUIT_RED = {"♥", "♦"}


def gp_text(info: dict[str, Any], turn: TurnRecord | None, config: dict[str, Any]) -> Text:
    """GeneralPoints: the hand, the rule in force, and the current formula with its evaluation."""
    out = Text()
    out.append("Hand  ", style="bold")
    for card in info.get("cards", []):
        suit_red = card[-1:] in _SUIT_RED
        out.append(f" {card} ", style="bold red on white" if suit_red else "bold black on white")
        out.append(" ")
    values = info.get("values", [])
    out.append(f"\nValues {', '.join(str(v) for v in values)}\n", style="dim")
    face = info.get("face_cards", config.get("face_cards", "10"))
    rule = "J, Q, K count as 10" if str(face) == "10" else "J = 11, Q = 12, K = 13"
    out.append("Rule  ", style="bold")
    out.append(f"{rule}; reach {info.get('target', 24)} using each card once\n")
    solutions = info.get("num_solutions")
    if solutions is not None:
        out.append(f"      {solutions} solution(s) exist\n", style="dim")
    attempt = int(info.get("attempt", 0))
    left = info.get("remaining_attempts")
    out.append("Try   ", style="bold")
    out.append(f"{attempt + 1}" + (f" ({left} left)" if left is not None else "") + "\n")
    if turn is None:
        out.append("\nwaiting for the model…", style="italic dim")
        return out
    action = turn.action or {}
    out.append("\nCards read  ", style="bold")
    out.append(", ".join(str(c) for c in action.get("cards", []) or []) or "–")
    details = turn.verdict.details
    if "cards_correct" in details:
        ok = bool(details["cards_correct"])
        out.append("  ✓" if ok else "  ✗ wrong cards", style="green" if ok else "red")
    out.append("\nFormula     ", style="bold")
    out.append(str(action.get("formula", "–")))
    value = details.get("formula_value")
    status = details.get("formula_status")
    out.append("\nEvaluates   ", style="bold")
    out.append(f"{value if value is not None else '–'}")
    if status:
        out.append(f"  ({status})", style="dim")
    out.append("\nVerdict     ", style="bold")
    out.append(turn.verdict.category, style=verdict_style(turn.verdict.category))
    out.append(f"  {turn.reward:+g}\n")
    out.append(turn.verdict.message, style="dim")
    return out


def virl_instructions(info: dict[str, Any], route: dict[str, Any] | None, turn: TurnRecord | None) -> Text:
    """V-IRL: the numbered instruction, the sentence due at the current rail point highlighted."""
    out = Text()
    out.append(f"{info.get('start', '?')} → {info.get('destination', '?')}", style="bold")
    length = info.get("length_m")
    if length is not None:
        out.append(f"  {float(length):.0f} m")
    pos = int(info.get("position", 0))
    out.append(
        f"  point {pos + 1}/{info.get('rail_length', '?')}  heading {info.get('heading', '?')}°\n",
        style="dim",
    )
    sentences: list[str] = list((route or {}).get("instructions", []))
    at = list((route or {}).get("instruction_at", []))
    current = at[pos] if 0 <= pos < len(at) else -1
    if current < 0 and turn is not None and turn.action:
        # Free mode (or an old log): fall back to the sentence the model said it executes.
        said = str(turn.action.get("instruction", ""))
        current = next((i for i, s in enumerate(sentences) if said and said in s), -1)
    for i, sentence in enumerate(sentences):
        style = "bold black on yellow" if i == current else ""
        out.append(sentence, style=style)
        out.append("\n")
    if not sentences:
        out.append("(no instruction geometry in this log)\n", style="dim")
    return out


def turn_text(turn: TurnRecord, current: bool) -> Text:
    """One model call: reply, parsed action, verdict (coloured by category) and reward."""
    out = Text()
    marker = "▶ " if current else "  "
    out.append(f"{marker}try {turn.attempt + 1} ", style="bold reverse" if current else "bold")
    out.append(f" {turn.verdict.category} ", style=verdict_style(turn.verdict.category) + " reverse")
    out.append(f" reward {turn.reward:+g}\n", style="bold")
    reply = turn.reply.text.strip()
    out.append("   reply  ", style="dim")
    out.append(reply.replace("\n", " ") + "\n")
    out.append("   action ", style="dim")
    out.append(_compact(turn.action) + "\n")
    if not turn.verdict.correct:
        out.append("   why    ", style="dim")
        out.append(turn.verdict.message + "\n", style=verdict_style(turn.verdict.category))
    return out


def _compact(action: dict[str, Any] | None) -> str:
    if not action:
        return "– (nothing parsed)"
    return ", ".join(f"{k}={v}" for k, v in action.items())


def conversation_text(ep: EpisodeView, position: int) -> Text:
    """Every model call of ``ep``, retries grouped under their step, the cursor's call marked."""
    out = Text()
    index = {id(t): i for i, t in enumerate(ep.turns)}
    for step, turns in group_turns(ep.turns):
        out.append(f"Step {step + 1}\n", style="bold underline")
        for t in turns:
            out.append_text(turn_text(t, index[id(t)] == position))
    if ep.pending_text is not None and ep.record is None:
        marker = "▶ " if position >= len(ep.turns) else "  "
        out.append(f"{marker}waiting for the model…\n", style="italic dim")
    if ep.error:
        out.append("episode crashed:\n", style="bold red")
        out.append(ep.error.strip().splitlines()[-1] + "\n", style="red")
    if ep.record is not None and not ep.error:
        style = "bold green" if ep.success else "bold red"
        out.append(
            f"Episode {'solved' if ep.success else 'failed'}: total reward {ep.total_reward:+g}", style=style
        )
    return out


def stats_text(stats: Stats) -> Text:
    out = Text()
    n_ok = stats.finished - stats.errors
    lo, hi = stats.ci95
    out.append("success ", style="bold")
    out.append(f"{stats.rate:.1%}" if n_ok else "–", style="bold green" if stats.rate >= 0.5 else "bold red")
    out.append(f"  ({stats.successes}/{n_ok})\n")
    out.append(f"95% CI  [{lo:.1%}, {hi:.1%}]\n" if n_ok else "95% CI  –\n", style="dim")
    out.append("reward  ", style="bold")
    out.append(f"mean {stats.mean_reward:+.2f}\n" if n_ok else "–\n")
    if stats.errors:
        out.append(f"errors  {stats.errors}\n", style="bold red")
    for category, count in stats.verdicts.items():
        out.append(f"{count:>5} ", style="bold")
        out.append(category + "\n", style=verdict_style(category))
    return out
