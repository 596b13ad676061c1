"""The ground-truth "rail" of a route: the positions an expert visits and the action due at each.

A rail starts with a turn at the start place, then per leg: a ``forward()`` from the milestone (now
facing the leg), ``straight_line_length`` interpolated ``forward()`` points (a seeded ``drop_rate``
fraction dropped, the rest snapped to the nearest path node), and at the leg's end either a turn (an
intermediate intersection) or ``stop()`` (the destination). The agent's heading changes only at turns,
exactly as the instructions say. Each point carries the observation text an expert would report and
the instruction sentence being executed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Final, Literal

import numpy as np

from sftrl.environments.virl.instructions import instruction_lines
from sftrl.environments.virl.routes import RouteInfo, relative_turn
from sftrl.street_view.city import CityMap
from sftrl.street_view.geometry import (
    bearing_deg,
    compass_name,
    haversine_m,
    heading_delta,
    relative_name,
    relative_phrase,
)

ActionSpace = Literal["absolute", "relative"]

OBS_RADIUS_M: Final = 20.0  # a route landmark this close to a rail point is "visible"
NO_LANDMARK: Final = "No landmarks nearby"
INTERSECTION: Final = "You observe an intersection"
# A geocode further than this from every graph node means "the city graph does not cover it".
MAX_SNAP_M: Final = 30.0


@dataclass(frozen=True)
class RailPoint:
    """One rail position and what is due there."""

    index: int
    lat: float
    lng: float
    node: int | None
    heading: float
    """The agent's heading here, before acting (degrees, 0 = north, clockwise)."""
    action: str
    """Ground-truth action: ``forward()``, ``turn_direction(x)`` or ``stop()``."""
    observation: str
    intersection: bool
    instruction: str
    milestone: int | None = None
    """Index into the route's milestones when this point is one (arrival there)."""


@dataclass
class Rail:
    """The rail of a route plus facts the env and metrics need."""

    route: RouteInfo
    points: list[RailPoint]
    instructions: list[str]
    actions: ActionSpace
    geocode_only: bool = False
    dest: tuple[float, float] = (0.0, 0.0)
    path: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.points)


def turn_action(from_heading: float, to_heading: float, actions: ActionSpace) -> str:
    """The ``turn_direction(x)`` action turning ``from_heading`` to ``to_heading``."""
    x = compass_name(to_heading) if actions == "absolute" else relative_turn(from_heading, to_heading)
    return f"turn_direction({x})"


def _polyline(
    route: RouteInfo, city: CityMap | None
) -> tuple[list[tuple[float, float, int | None]], list[int], bool]:
    """(lat, lng, node) points from the start along the route, the leg ends' positions in it (the
    start first) and whether the rail is geocode-only."""
    geos = [route.start_place.street_geocode, *route.route_results.geocode_list]
    if city is not None and route.path and route.city in (None, city.name):
        path = list(route.path)
        marks = [0]
        for lat, lng in geos[1:]:
            # Leg ends lie on the path in order: search forward from the previous one.
            lo = marks[-1]
            marks.append(
                min(range(lo, len(path)), key=lambda i: haversine_m(lat, lng, *city.latlng(path[i])))
            )
        marks[-1] = len(path) - 1
        return [(*city.latlng(v), v) for v in path], marks, False
    if city is not None and all(_in_bbox(city, lat, lng) for lat, lng in geos):
        nodes = [city.nearest_node(lat, lng) for lat, lng in geos]
        if all(
            haversine_m(lat, lng, *city.latlng(v)) <= MAX_SNAP_M
            for (lat, lng), v in zip(geos, nodes, strict=True)
        ):
            path = [nodes[0]]
            marks = [0]
            for u, v in pairwise(nodes):
                if u != v:
                    path.extend(city.shortest_path(u, v)[1:])
                marks.append(len(path) - 1)
            return [(*city.latlng(v), v) for v in path], marks, False
    # No graph covers the route: walk straight between the geocodes.
    return [(lat, lng, None) for lat, lng in geos], list(range(len(geos))), True


def _in_bbox(city: CityMap, lat: float, lng: float, margin_deg: float = 0.001) -> bool:
    # Checked before nearest_node: the grid search from a point far outside the city (another
    # continent) would scan a huge number of empty cells.
    return bool(
        float(city.lat.min()) - margin_deg <= lat <= float(city.lat.max()) + margin_deg
        and float(city.lng.min()) - margin_deg <= lng <= float(city.lng.max()) + margin_deg
    )


def _cumulative(poly: list[tuple[float, float, int | None]]) -> list[float]:
    cum = [0.0]
    for a, b in pairwise(poly):
        cum.append(cum[-1] + haversine_m(a[0], a[1], b[0], b[1]))
    return cum


def _at_distance(
    poly: list[tuple[float, float, int | None]],
    cum: list[float],
    lo: int,
    hi: int,
    d: float,
    geocode_only: bool,
) -> tuple[float, float, int | None, int]:
    """The point ``d`` metres along the polyline between positions lo and hi (snapped to a node)."""
    if not geocode_only:
        i = min(range(lo + 1, hi), key=lambda k: abs(cum[k] - d), default=lo)
        return (*poly[i], i)
    # Geocode-only: linear interpolation between the two geocodes.
    span = cum[hi] - cum[lo]
    t = 0.0 if span <= 0 else (d - cum[lo]) / span
    lat = poly[lo][0] + t * (poly[hi][0] - poly[lo][0])
    lng = poly[lo][1] + t * (poly[hi][1] - poly[lo][1])
    return lat, lng, None, -1


def observation_at(
    lat: float,
    lng: float,
    heading: float,
    landmarks: list[tuple[str, float, float]],
    radius_m: float = OBS_RADIUS_M,
) -> str:
    """ "{name} is on your {rel}" for the nearest route landmark within ``radius_m``, else none nearby."""
    best: tuple[float, str, float, float] | None = None
    for name, la, ln in landmarks:
        d = haversine_m(lat, lng, la, ln)
        if d <= radius_m and (best is None or d < best[0]):
            best = (d, name, la, ln)
    if best is None:
        return NO_LANDMARK
    rel = relative_name(heading_delta(heading, bearing_deg(lat, lng, best[2], best[3])))
    return f"{best[1]} is {relative_phrase(rel)}"


def _milestone_text(
    text: str,
    at: tuple[float, float] | None = None,
    heading: float | None = None,
    known: dict[str, tuple[float, float]] | None = None,
) -> str:
    """The observation at a milestone: "X is on your {rel}" for the milestone's landmark X.

    The route text's relation was written for the route's own arrival heading; when X's position is
    known, the relation is recomputed for the rail's heading so the words match what a view shows.
    """
    # "The destination X is on your left" -> "X is on your left": observations name what is seen.
    t = text.strip().rstrip(".")
    t = t[len("the destination ") :] if t.lower().startswith("the destination ") else t
    from sftrl.environments.virl.routes import _LANDMARK_RE

    m = _LANDMARK_RE.match(t)
    if m is None:
        return t
    if at is None or heading is None or not known or m.group(1).strip() not in known:
        return f"{m.group(1).strip()} is {relative_phrase(m.group(2))}"  # the route file's relation
    name = m.group(1).strip()
    la, ln = known[name]
    rel = relative_name(heading_delta(heading, bearing_deg(at[0], at[1], la, ln)))
    return f"{name} is {relative_phrase(rel)}"


def build_rail(
    route: RouteInfo,
    city: CityMap | None,
    actions: ActionSpace = "absolute",
    straight_line_length: int = 5,
    drop_rate: float = 0.5,
    seed: int = 0,
) -> Rail:
    """The rail of ``route`` (deterministic for ``seed``).

    ``city`` may be None or not cover the route: the rail then runs straight between the milestone
    geocodes (``geocode_only``; nodes are None and vision views come from coordinates alone).
    """
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError("drop_rate must be in [0, 1)")
    ms = route.milestones()
    if len(ms) != len(route.route_results.geocode_list) or not ms:
        raise ValueError(
            f"route {route.route_id!r}: {len(ms)} milestone_info blocks for "
            f"{len(route.route_results.geocode_list)} geocodes"
        )
    instructions = instruction_lines(route)
    poly, marks, geocode_only = _polyline(route, city)
    cum = _cumulative(poly)
    landmarks = [(lm.name, *lm.geocode) for lm in route.route_results.landmark_list]
    landmarks.append((route.dest_place.name, *route.dest_place.geocode))
    rng = np.random.default_rng(seed)
    points: list[RailPoint] = []

    def add(
        lat: float,
        lng: float,
        node: int | None,
        heading: float,
        action: str,
        obs: str,
        inter: bool,
        instr: int,
        milestone: int | None = None,
    ) -> None:
        points.append(
            RailPoint(
                len(points),
                lat,
                lng,
                node,
                heading % 360.0,
                action,
                obs,
                inter,
                instructions[instr],
                milestone,
            )
        )

    start_landmarks = [*landmarks, (route.start_place.name, *route.start_place.geocode)]
    known = {name: (la, ln) for name, la, ln in landmarks}
    heading = float(route.init_heading)
    last = len(ms) - 1
    for k, m in enumerate(ms):
        lo, hi = marks[k], marks[k + 1]
        lat, lng, node = poly[lo]
        leg = m.to_next_intersection_heading
        # At the start or at the previous leg's end: report what is seen, then turn to face the leg.
        if k == 0:
            obs = observation_at(lat, lng, heading, start_landmarks)
        else:
            obs = f"{_milestone_text(ms[k - 1].landmarks, (lat, lng), heading, known)}. {INTERSECTION}"
        add(
            lat,
            lng,
            node,
            heading,
            turn_action(heading, leg, actions),
            obs,
            k > 0,
            2 * k,
            k - 1 if k else None,
        )
        heading = leg
        # Facing the leg at the same spot: walk.
        add(
            lat,
            lng,
            node,
            heading,
            "forward()",
            observation_at(lat, lng, heading, landmarks),
            False,
            2 * k + 1,
        )
        picks: list[tuple[float, float, int | None]] = []
        seen: set[int] = set()
        for j in range(1, straight_line_length + 1):
            d = cum[lo] + (cum[hi] - cum[lo]) * j / (straight_line_length + 1)
            la, ln, nd, i = _at_distance(poly, cum, lo, hi, d, geocode_only)
            if i in (lo, hi) or (i >= 0 and i in seen):
                continue
            seen.add(i)
            picks.append((la, ln, nd))
        n_drop = int(math.floor(len(picks) * drop_rate + 0.5))
        if n_drop:
            keep = sorted(rng.choice(len(picks), size=len(picks) - n_drop, replace=False).tolist())
            picks = [picks[i] for i in keep]
        for la, ln, nd in picks:
            add(
                la, ln, nd, heading, "forward()", observation_at(la, ln, heading, landmarks), False, 2 * k + 1
            )
    lat, lng, node = poly[marks[-1]]
    add(
        lat,
        lng,
        node,
        heading,
        "stop()",
        _milestone_text(ms[last].landmarks, (lat, lng), heading, known),
        False,
        len(instructions) - 1,
        last,
    )
    return Rail(
        route=route,
        points=points,
        instructions=instructions,
        actions=actions,
        geocode_only=geocode_only,
        dest=(lat, lng),
        path=[p[2] for p in poly if p[2] is not None],
    )
