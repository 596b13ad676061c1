"""Numbered route instructions in the paper's format, derived from a route's milestones.

1. First, turn {rel} to face {dir}.
2. Move forward until you reach next intersection where {landmark} is {where it lies}.
3. Turn {rel} to face {dir}.
...
N. Move forward until you reach destination where {dest} is {where it lies}.

Where a landmark lies is said in plain English (:func:`relative_phrase`: "on your left", "behind you",
"ahead on your right"), not the paper's "on your {relation}" (which reads "on your behind").

Relative turn words come from :func:`relative_turn`, which wraps around north correctly (350° -> 10°
is "slightly right"; the official code calls it "left").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sftrl.street_view.geometry import compass_name, relative_phrase

if TYPE_CHECKING:
    from sftrl.environments.virl.routes import RouteInfo


def _landmark_clause(text: str, fallback_name: str) -> tuple[str, str]:
    from sftrl.environments.virl.routes import _LANDMARK_RE

    m = _LANDMARK_RE.match(text.strip())
    if m:
        return m.group(1).strip(), m.group(2).strip()
    return fallback_name, "front"


def instruction_lines(route: RouteInfo) -> list[str]:
    """The numbered instruction sentences of ``route`` (one per turn and per leg)."""
    from sftrl.environments.virl.routes import relative_turn

    ms = route.milestones()
    if not ms:
        raise ValueError("a route needs at least one milestone (the destination)")
    lines: list[str] = []
    heading = route.init_heading
    # One milestone block per leg: turn to face the leg's heading, then walk to the leg's end.
    for k, m in enumerate(ms):
        leg = m.to_next_intersection_heading
        turn = f"turn {relative_turn(heading, leg)} to face {compass_name(leg)}."
        lines.append(
            f"{len(lines) + 1}. First, {turn}" if k == 0 else f"{len(lines) + 1}. {turn.capitalize()}"
        )
        last = k == len(ms) - 1
        name, rel = _landmark_clause(m.landmarks, route.dest_place.name if last else "a landmark")
        where = "destination" if last else "next intersection"
        lines.append(
            f"{len(lines) + 1}. Move forward until you reach {where} where {name} is {relative_phrase(rel)}."
        )
        heading = leg
    return lines


def instruction_text(route: RouteInfo) -> str:
    """All instruction sentences, one per line."""
    return "\n".join(instruction_lines(route))
