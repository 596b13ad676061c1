"""V-IRL route descriptions: the ``RouteInfo`` schema and a deterministic route generator on city data.

``RouteInfo`` mirrors V-IRL's ``route_info`` JSON (start/destination places, milestone geocodes,
landmark list and the ``milestone_info`` text blocks) and tolerates extra keys, so official files load
as-is. :func:`generate_routes` builds such routes from the shipped street graphs: the destination is a
named landmark POI, the start another named POI 50-150 m away, the path the city's shortest path, and
each turn at an intersection becomes a milestone with the nearest unique-name landmark.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from itertools import pairwise
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sftrl.street_view.city import POI, CityMap, NoPathError, load_city
from sftrl.street_view.geometry import (
    bearing_deg,
    compass_name,
    haversine_m,
    heading_delta,
    relative_name,
    turn_name,
)

Split = Literal["id", "rule-ood", "visual-ood", "nyc-unseen"]

# Which cities feed each split's route pool, and which part of the city ("seen"/"unseen"/"any").
SPLIT_CITIES: Final[dict[str, tuple[str, ...]]] = {
    "id": ("nyc",),
    "rule-ood": ("nyc",),
    "visual-ood": ("helsinki", "baltimore"),
    "nyc-unseen": ("nyc",),
}
# id and rule-ood share the NYC pool outside the unseen area; routes alternate between them so the
# two sets are disjoint yet drawn from the same distribution.
_SHARED_POOL: Final[dict[str, tuple[str, int]]] = {"id": ("seen", 0), "rule-ood": ("seen", 1)}

TURN_MIN_DEG: Final = 45.0  # a heading change above this at an intersection is a milestone
HEADING_WINDOW_M: Final = 15.0  # measure headings this far before/after a node (smooths short links)
MIN_LINK_M: Final = 5.0  # links shorter than this never define a heading on their own
LANDMARK_RADIUS_M: Final = 25.0  # a milestone's landmark lies within this of the turn node
MERGE_TURNS_M: Final = 20.0  # turn candidates closer than this along the path are one turn
UTURN_DEG: Final = 157.5
DEFAULT_ROUTES_PER_SPLIT: Final = 100
MAX_PASSES: Final = 6  # passes over the destinations when an area has too few of them
RELATIVE_TURNS: Final = ("left", "right", "slightly left", "slightly right")


# --- schema --------------------------------------------------------------------------------------------


class Place(BaseModel):
    """A start or destination place (V-IRL keeps many more Google Places keys; they are kept too)."""

    model_config = ConfigDict(extra="allow")

    name: str
    geocode: tuple[float, float]
    relocated_geocode: tuple[float, float] | None = None
    """The place snapped onto the street (where the agent actually starts or stops)."""

    @property
    def street_geocode(self) -> tuple[float, float]:
        return self.relocated_geocode or self.geocode


class Landmark(BaseModel):
    """One entry of ``route_results.landmark_list``."""

    model_config = ConfigDict(extra="allow")

    name: str
    geocode: tuple[float, float]
    spatial_relation: str | None = None
    expression: str | None = None


class RouteResults(BaseModel):
    """``route_results``: milestone geocodes (start, intermediate intersections, destination) and more."""

    model_config = ConfigDict(extra="allow")

    geocode_list: list[tuple[float, float]]
    distance_list: list[float] = Field(default_factory=list)
    landmark_list: list[Landmark] = Field(default_factory=list)
    distance: float | None = None


class Milestone(BaseModel):
    """One parsed ``milestone_info`` block."""

    intersection_idx: int
    landmarks: str
    """E.g. "Aritzia is on your left front" or "The destination X is on your left"."""
    distance: float
    human_heading: float
    """Heading of the walker on arrival at this milestone."""
    to_next_intersection_heading: float
    """Heading to leave this milestone with (towards the next one)."""

    @property
    def landmark_name_and_relation(self) -> tuple[str, str] | None:
        m = _LANDMARK_RE.match(self.landmarks.strip())
        return (m.group(1).strip(), m.group(2).strip()) if m else None


_LANDMARK_RE = re.compile(r"^(?:the destination\s+)?(.+?)\s+is\s+on\s+your\s+(.+?)\.?$", re.IGNORECASE)
# One ``"key": "value",`` pair per line. The value runs to the line's last quote: V-IRL writes the
# landmark names unescaped, so a name may hold quotes (``Clarence "Du" Burns Arena``) or braces.
_KV_LINE_RE = re.compile(r'^\s*"([a-z_]+)"\s*:\s*"(.*)"\s*,?\s*$')
_NUM_RE = re.compile(r"-?\d+(?:\.\d+)?")


class RouteInfo(BaseModel):
    """V-IRL's ``route_info`` (lenient: unknown keys are kept) plus sftrl's own optional keys."""

    model_config = ConfigDict(extra="allow")

    start_place: Place
    dest_place: Place
    route_results: RouteResults
    init_heading: float = 0.0
    instruction: str = ""
    milestone_info: str = ""
    # sftrl additions (absent from official files):
    route_id: str | None = None
    city: str | None = None
    path: list[int] | None = None
    """Street-graph node indices from start to destination, when generated from city data."""

    def milestones(self) -> list[Milestone]:
        """Parse the ``milestone_info`` blocks (V-IRL writes them as almost-JSON with trailing commas)."""
        out = []
        for kv in _milestone_blocks(self.milestone_info):

            def num(key: str, kv: dict[str, str] = kv) -> float:
                m = _NUM_RE.search(kv.get(key, ""))
                return float(m.group()) if m else 0.0

            out.append(
                Milestone(
                    intersection_idx=int(num("intersection_idx")),
                    landmarks=kv.get("landmarks", ""),
                    distance=num("distance"),
                    human_heading=num("human_heading"),
                    to_next_intersection_heading=num("to_next_intersection_heading"),
                )
            )
        return out


def _milestone_blocks(text: str) -> list[dict[str, str]]:
    """The key/value pairs of each ``{ ... }`` block of ``milestone_info``, in order.

    Blocks are read line by line (a line ``{`` opens one, a line ``}`` or ``},`` closes it), never
    by matching braces or quotes, so a landmark name cannot end its block or value early.
    """
    blocks: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        mark = line.strip()
        if mark == "{":
            current = {}
        elif mark in ("}", "},"):
            if current:
                blocks.append(current)
            current = None
        elif current is not None and (m := _KV_LINE_RE.match(line)):
            current[m.group(1)] = m.group(2)
    return blocks


def milestone_block(
    idx: int, landmarks: str, distance_m: float, human_heading: float, next_heading: float
) -> str:
    """One ``milestone_info`` block in V-IRL's exact text format (names verbatim, one pair per line)."""
    landmarks = " ".join(landmarks.splitlines())  # a line break would split the pair (see _milestone_blocks)
    return (
        "\n{\n"
        f'"intersection_idx": "{idx}",\n'
        f'"landmarks": "{landmarks}",\n'
        f'"distance": "{round(distance_m)} meters",\n'
        f'"human_heading": "{round(human_heading) % 360}",\n'
        f'"to_next_intersection_heading": "{round(next_heading) % 360} ({compass_name(next_heading)})",\n'
        "}\n"
    )


def relative_turn(from_heading: float, to_heading: float) -> str:
    """The V-IRL relative turn word (left/right/slightly left/slightly right) for a heading change.

    Wraps correctly around north (350 -> 10 is "slightly right"). The relative action space has no
    "straight" or "back": tiny changes become "slightly <side>" and U-turns "<side>".
    """
    delta = heading_delta(from_heading, to_heading)
    name = turn_name(delta)
    side = "right" if delta >= 0 else "left"
    if name == "straight":
        return f"slightly {side}"
    if name == "back":
        return side
    return name


# --- generation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CityIndex:
    """Per-city precomputation for route generation (built lazily, once per process)."""

    city: CityMap
    landmark_pois: tuple[int, ...]  # unique-name landmark POIs, in POI order
    seen: tuple[int, ...]  # ... outside the unseen area (all of them when the city has none)
    unseen: tuple[int, ...]  # ... inside it


@functools.cache
def _city_index(name: str) -> _CityIndex:
    city = load_city(name)
    lm = tuple(p.index for p in city.pois if p.landmark and p.unique_name)
    if "unseen" in city.areas:
        area = city.areas["unseen"]
        seen = tuple(i for i in lm if not area.contains(city.pois[i].lat, city.pois[i].lng))
        unseen = tuple(i for i in lm if area.contains(city.pois[i].lat, city.pois[i].lng))
    else:
        seen, unseen = lm, ()
    return _CityIndex(city, lm, seen, unseen)


def _cumulative(city: CityMap, path: list[int]) -> list[float]:
    cum = [0.0]
    for a, b in pairwise(path):
        cum.append(cum[-1] + city.distance_m(a, b))
    return cum


def _heading_between(city: CityMap, a: int, b: int) -> float:
    return bearing_deg(*city.latlng(a), *city.latlng(b))


def path_heading_at(city: CityMap, path: list[int], cum: list[float], i: int, forward: bool = True) -> float:
    """Heading of ``path`` leaving (``forward``) or arriving at node ``i``, measured over ~15 m.

    A window instead of the single adjacent link keeps a few-metre kink (common in the Touchdown
    graph) from reading as a turn; links under 5 m never define a heading alone.
    """
    n = len(path)
    if forward:
        j = i + 1
        while j < n - 1 and cum[j] - cum[i] < HEADING_WINDOW_M:
            j += 1
        j = min(j, n - 1)
        if j == i or cum[j] - cum[i] < 1e-6:
            return path_heading_at(city, path, cum, i, forward=False) if i > 0 else 0.0
        return _heading_between(city, path[i], path[j])
    j = i - 1
    while j > 0 and cum[i] - cum[j] < HEADING_WINDOW_M:
        j -= 1
    j = max(j, 0)
    if j == i or cum[i] - cum[j] < 1e-6:
        return path_heading_at(city, path, cum, i, forward=True) if i < n - 1 else 0.0
    return _heading_between(city, path[j], path[i])


def find_turns(city: CityMap, path: list[int]) -> list[tuple[int, float]] | None:
    """Turns of ``path`` as (path position, signed heading change); None if a turn is unusable.

    A turn is a heading change > 45° (measured ~15 m before/after). Candidates within 20 m merge into
    the sharpest one. Returns None when a turn is not at an intersection or is a U-turn, since such
    a route cannot be described by "turn at the next intersection" instructions.
    """
    cum = _cumulative(city, path)
    cands: list[tuple[int, float]] = []
    for i in range(1, len(path) - 1):
        if cum[i] - cum[i - 1] < MIN_LINK_M and cum[i + 1] - cum[i] < MIN_LINK_M:
            continue
        d = heading_delta(
            path_heading_at(city, path, cum, i, False), path_heading_at(city, path, cum, i, True)
        )
        if abs(d) > TURN_MIN_DEG:
            cands.append((i, d))
    turns: list[tuple[int, float]] = []
    group: list[tuple[int, float]] = []
    for c in cands:
        if group and cum[c[0]] - cum[group[-1][0]] > MERGE_TURNS_M:
            turns.append(max(group, key=lambda t: abs(t[1])))
            group = []
        group.append(c)
    if group:
        turns.append(max(group, key=lambda t: abs(t[1])))
    out = []
    for i, d in turns:
        node = path[i]
        if abs(d) > UTURN_DEG:
            return None
        if not city.is_intersection(node):
            # Snap to an intersection node of the path within the merge window, if there is one.
            near = [
                k
                for k in range(len(path))
                if abs(cum[k] - cum[i]) <= MERGE_TURNS_M / 2 and city.is_intersection(path[k])
            ]
            if not near:
                return None
            i = min(near, key=lambda k: abs(cum[k] - cum[i]))
            d = heading_delta(
                path_heading_at(city, path, cum, i, False), path_heading_at(city, path, cum, i, True)
            )
        out.append((i, d))
    return out


def _landmark_near(city: CityMap, node: int, exclude: set[str]) -> POI | None:
    lat, lng = city.latlng(node)
    for poi in city.pois_near(lat, lng, LANDMARK_RADIUS_M):
        if poi.unique_name and poi.name.casefold() not in exclude:
            return poi
    return None


def _place(poi: POI, city: CityMap) -> Place:
    return Place(name=poi.name, geocode=(poi.lat, poi.lng), relocated_geocode=city.latlng(poi.node))


def _init_heading(rng: np.random.Generator, first_heading: float) -> float:
    # The first instruction is a turn: start 50-130° off the first leg so the turn is unambiguous in
    # both action spaces (never "straight" or a U-turn, and away from the 22.5° / 67.5° boundaries).
    offset = float(rng.uniform(50.0, 130.0)) * (1 if rng.random() < 0.5 else -1)
    return round((first_heading + offset) % 360.0)


def route_from_path(
    city: CityMap,
    path: list[int],
    start: POI,
    dest: POI,
    init_heading: float | None = None,
    rng: np.random.Generator | None = None,
    route_id: str | None = None,
    min_turns: int = 1,
    max_turns: int = 2,
) -> RouteInfo | None:
    """Describe ``path`` as a V-IRL route (milestones, landmarks, instruction); None if it is unusable."""
    from sftrl.environments.virl.instructions import instruction_lines

    turns = find_turns(city, path)
    if turns is None or not min_turns <= len(turns) <= max_turns:
        return None
    cum = _cumulative(city, path)
    # Milestones too close to each other or to the ends make ambiguous rails.
    marks = [0, *(i for i, _ in turns), len(path) - 1]
    if any(cum[b] - cum[a] < HEADING_WINDOW_M for a, b in pairwise(marks)):
        return None
    exclude = {start.name.casefold(), dest.name.casefold()}
    landmarks: list[Landmark] = []
    blocks: list[str] = []
    rng = rng or np.random.default_rng(0)
    first = path_heading_at(city, path, cum, 0, True)
    h0 = _init_heading(rng, first) if init_heading is None else init_heading
    # V-IRL's layout: one block per leg, describing the leg's end (geocode_list holds the leg ends:
    # the turn intersections, then the destination), the leg's length and heading, and the heading
    # walked before it (the initial heading for the first leg).
    before = h0
    for k in range(1, len(marks)):
        a, b = marks[k - 1], marks[k]
        leg = path_heading_at(city, path, cum, a, True)
        arrive = path_heading_at(city, path, cum, b, False)
        if k < len(marks) - 1:
            poi = _landmark_near(city, path[b], exclude)
            if poi is None:
                return None
            exclude.add(poi.name.casefold())
            expr_prefix = ""
        else:
            poi, expr_prefix = dest, "The destination "
        to_poi = _heading_between_ll(city.latlng(path[b]), (poi.lat, poi.lng))
        rel = relative_name(heading_delta(arrive, to_poi))
        expr = f"{expr_prefix}{poi.name} is on your {rel}"
        if poi is not dest:
            landmarks.append(
                Landmark(name=poi.name, geocode=(poi.lat, poi.lng), spatial_relation=rel, expression=expr)
            )
        blocks.append(milestone_block(k, expr, cum[b] - cum[a], before, leg))
        before = leg
    info = RouteInfo(
        start_place=_place(start, city),
        dest_place=_place(dest, city),
        route_results=RouteResults(
            geocode_list=[city.latlng(path[i]) for i in marks[1:]],
            distance_list=[round(cum[b] - cum[a], 1) for a, b in pairwise(marks)],
            landmark_list=landmarks,
            distance=round(cum[-1], 1),
        ),
        init_heading=h0,
        milestone_info="".join(blocks),
        route_id=route_id,
        city=city.name,
        path=list(path),
    )
    info.instruction = "\n".join(instruction_lines(info))
    return info


def _heading_between_ll(a: tuple[float, float], b: tuple[float, float]) -> float:
    return bearing_deg(a[0], a[1], b[0], b[1])


def generate_routes(
    city: str,
    n: int,
    seed: int,
    *,
    area: Literal["seen", "unseen", "any"] = "any",
    min_start_m: float = 50.0,
    max_start_m: float = 150.0,
    max_route_m: float = 150.0,
    min_turns: int = 1,
    max_turns: int = 2,
    id_prefix: str | None = None,
) -> list[RouteInfo]:
    """Up to ``n`` routes in ``city``, fully determined by ``seed`` (and the arguments).

    Destinations are visited in a seeded random order; for each, a seeded start POI 50-150 m away is
    tried. Routes without 1-2 usable turns or without a landmark at every turn are rejected. Pass a
    larger ``max_start_m`` for longer routes. ``area`` restricts start, destination and path to the
    city's "unseen" box (NYC) or outside it.
    """
    idx = _city_index(city)
    cm = idx.city
    pool = {"seen": idx.seen, "unseen": idx.unseen, "any": idx.landmark_pois}[area]
    pool_set = set(pool)
    unseen_box = cm.areas.get("unseen")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool)).tolist()
    prefix = id_prefix or f"{city}-{area}-{seed}"
    routes: list[RouteInfo] = []
    used_dest: set[str] = set()
    used_paths: set[tuple[int, ...]] = set()
    # Pass 0 gives every destination one route; later passes (only when the area is too small for
    # ``n`` distinct destinations, e.g. NYC's unseen box) add routes from other starts.
    for pass_ in range(MAX_PASSES):
        for k in order:
            if len(routes) >= n:
                break
            dest = cm.pois[pool[k]]
            if pass_ == 0 and dest.name.casefold() in used_dest:
                continue
            near = [
                p
                for p in cm.pois_near(dest.lat, dest.lng, max_start_m)
                if p.index in pool_set
                and p.node != dest.node
                and p.name.casefold() != dest.name.casefold()
                and _ll_dist(p, dest) >= min_start_m
            ]
            if not near:
                continue
            start = near[int(rng.integers(len(near)))]
            try:
                path = cm.shortest_path(start.node, dest.node)
            except NoPathError:
                continue
            # POIs share street nodes: two destinations can give the same walk; keep the first only.
            if len(path) < 3 or tuple(path) in used_paths or cm.path_length_m(path) > max_route_m:
                continue
            if unseen_box is not None and area != "any":
                inside = [unseen_box.contains(*cm.latlng(v)) for v in path]
                if (area == "seen" and any(inside)) or (area == "unseen" and not all(inside)):
                    continue
            route = route_from_path(
                cm,
                path,
                start,
                dest,
                rng=rng,
                route_id=f"{prefix}-{len(routes):04d}",
                min_turns=min_turns,
                max_turns=max_turns,
            )
            if route is None:
                continue
            used_dest.add(dest.name.casefold())
            used_paths.add(tuple(path))
            routes.append(route)
        if len(routes) >= n:
            break
    return routes


def _ll_dist(a: POI, b: POI) -> float:
    return haversine_m(a.lat, a.lng, b.lat, b.lng)


# --- splits --------------------------------------------------------------------------------------------


@functools.cache
def split_routes(
    city: str,
    split: str,
    seed: int = 0,
    n: int = DEFAULT_ROUTES_PER_SPLIT,
    max_route_m: float = 150.0,
    max_start_m: float = 150.0,
) -> tuple[RouteInfo, ...]:
    """The fixed route set of ``split`` in ``city`` (cached per process; treat it as read-only).

    ``id`` and ``rule-ood`` alternate over one NYC pool outside the unseen area (disjoint sets, same
    distribution); ``nyc-unseen`` uses routes fully inside the unseen area; other cities use all of
    their area. ``city`` may join several cities with "+" (``helsinki+baltimore``): routes interleave.
    """
    cities = city.split("+")
    if len(cities) > 1:
        per = [split_routes(c, split, seed, n, max_route_m, max_start_m) for c in cities]
        mixed = [r for group in zip(*per, strict=False) for r in group]
        used = {id(r) for r in mixed}
        mixed += [r for g in per for r in g if id(r) not in used]
        return tuple(mixed[:n])
    if split in _SHARED_POOL and city == "nyc":
        area, parity = _SHARED_POOL[split]
        pool = generate_routes(city, 2 * n, seed, area=area, max_route_m=max_route_m, max_start_m=max_start_m)
        chosen = pool[parity::2]
    elif split == "nyc-unseen":
        if city != "nyc":
            raise ValueError("split 'nyc-unseen' exists only for city 'nyc'")
        chosen = generate_routes(
            city, n, seed, area="unseen", max_route_m=max_route_m, max_start_m=max_start_m
        )
    else:
        chosen = generate_routes(city, n, seed, area="any", max_route_m=max_route_m, max_start_m=max_start_m)
    out = []
    for k, r in enumerate(chosen):
        out.append(r.model_copy(update={"route_id": f"{city}-{split}-{seed}-{k:04d}"}))
    if not out:
        raise ValueError(f"no routes could be generated for city {city!r}, split {split!r}")
    return tuple(out)


def split_manifest(city: str, split: str, seed: int = 0, n: int = DEFAULT_ROUTES_PER_SPLIT) -> list[str]:
    """Route ids of a split's fixed route set, in ``route_index`` order."""
    return [r.route_id or "" for r in split_routes(city, split, seed, n)]


# The default route sets of the shipped splits, as listed in ``data/splits_manifest.json``.
MANIFEST_SPLITS: Final[tuple[tuple[str, str], ...]] = (
    ("nyc", "id"),
    ("nyc", "rule-ood"),
    ("nyc", "nyc-unseen"),
    ("helsinki+baltimore", "visual-ood"),
)


def route_fingerprint(route: RouteInfo) -> str:
    """A short content hash of a route (start, destination, path and instruction)."""
    payload = json.dumps(
        [route.city, route.start_place.name, route.dest_place.name, route.path, route.instruction],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_manifest(seed: int = 0, n: int = DEFAULT_ROUTES_PER_SPLIT) -> dict[str, Any]:
    """Every default split's route set: id, city, endpoints, length and fingerprint of each route."""
    splits: dict[str, list[dict[str, Any]]] = {}
    for city, split in MANIFEST_SPLITS:
        splits[split] = [
            {
                "route_id": r.route_id,
                "city": r.city,
                "start": r.start_place.name,
                "destination": r.dest_place.name,
                "length_m": r.route_results.distance,
                "fingerprint": route_fingerprint(r),
            }
            for r in split_routes(city, split, seed, n)
        ]
    return {"seed": seed, "routes_per_split": n, "splits": splits}


def shipped_manifest() -> dict[str, Any]:
    """The manifest shipped with the package (``scripts/build_virl_manifest.py`` rebuilds it)."""
    text = resources.files("sftrl.environments.virl").joinpath("data/splits_manifest.json").read_text()
    return json.loads(text)


def route_summary(route: RouteInfo) -> dict[str, Any]:
    """A small JSON-friendly description of a route (for ``Observation.info``)."""
    return {
        "route_id": route.route_id,
        "city": route.city,
        "start": route.start_place.name,
        "destination": route.dest_place.name,
        "length_m": route.route_results.distance,
        "milestones": len(route.route_results.geocode_list),
    }


__all__ = [
    "RELATIVE_TURNS",
    "SPLIT_CITIES",
    "Landmark",
    "Milestone",
    "Place",
    "RouteInfo",
    "RouteResults",
    "Split",
    "build_manifest",
    "find_turns",
    "generate_routes",
    "milestone_block",
    "relative_turn",
    "route_from_path",
    "split_manifest",
    "split_routes",
]
