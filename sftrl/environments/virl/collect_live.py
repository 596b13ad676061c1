"""Collect new V-IRL routes with the live Google Maps Platform APIs, following V-IRL's own recipe.

V-IRL's ``CollectVLNRoutes`` task (``tools/tasks/collect_benchmark/collect_vln_routes.py`` with
``cfgs/collect_data/collect_vln_routes.yaml``) builds its navigation routes like this, and so does
:func:`collect_live_routes`:

1. **Destinations**: places of common types (V-IRL's ``place_types_20.txt``: bank, cafe, pharmacy, …)
   around the city centre — here one Places Nearby Search per type around the geocoded city (or
   ``center``), pooled by ``place_id`` and visited in a seeded order.
2. **Starts**: other named places 40-150 m from the destination (Nearby Search around it).
3. **Route**: Directions from start to destination (walking; V-IRL avoids indoor paths). A step of the
   first leg is a leg of the route: ``geocode_list`` holds each step's end, ``polyline`` /
   ``instructions`` / ``distance_list`` / ``time_list`` the steps' own fields. Kept only when the walk is
   at most 150 m, has 1-2 intersections (every step after the first a turn maneuver of at least 45°),
   and ends within 18 m of the destination (V-IRL's ``MAX_DISTANCE_TO_LANDMARK``).
4. **Landmarks**: at each intersection, the most-reviewed named place within 18 m with at least 10
   reviews (V-IRL's ``MIN_REVIEWS``), not the start or destination (Nearby Search at the milestone).
   V-IRL keeps routes with a landmark-less intersection ("No landmark nearby"); sftrl's instructions
   name a landmark at every intersection, so such routes are skipped, as in the bundle generator.
5. **Milestones**: V-IRL's ``milestone_info`` blocks (heading to each milestone measured from the
   previous one) and sftrl's templated instruction; ``init_heading`` is a seeded 50-130° off the first
   leg (V-IRL writes 0, which SFTvsRL replaces with a random heading).

The output is the official SFTvsRL ``route_infos.json`` (same schema as
:func:`sftrl.environments.virl.collect.official_route_info`, which ``agent run --env virl --routes``
loads) plus ``manifest.json`` (options, source and terms, fingerprints; never the key, no timestamps:
the same seed and the same API answers give byte-identical files). Routes carry no ``city`` key: the
env walks them on a shipped city graph when one covers them (NYC) and along their milestone geocodes
otherwise (see :mod:`sftrl.environments.virl.rail`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Final

import numpy as np

from sftrl.environments.virl.instructions import instruction_lines
from sftrl.environments.virl.routes import (
    TURN_MIN_DEG,
    UTURN_DEG,
    RouteInfo,
    _init_heading,
    milestone_block,
    route_fingerprint,
    route_summary,
)
from sftrl.street_view.geometry import bearing_deg, haversine_m, heading_delta, relative_name
from sftrl.street_view.google_maps import GoogleMapsClient, LatLng

__all__ = [
    "PLACE_TYPES_20",
    "LiveCollectResult",
    "collect_live_routes",
    "parse_center",
    "route_info_from_directions",
]

MANIFEST_FORMAT: Final = "sftrl-collected-routes/1"
ROUTES_FILE: Final = "route_infos.json"
MANIFEST_FILE: Final = "manifest.json"

# V-IRL's data/benchmark/place_types_20.txt: the destination types of its VLN benchmark.
PLACE_TYPES_20: Final[tuple[str, ...]] = (
    "bank",
    "restaurant",
    "supermarket",
    "bakery",
    "cafe",
    "pharmacy",
    "hospital",
    "spa",
    "convenience_store",
    "school",
    "library",
    "park",
    "lodging",
    "laundry",
    "movie_theater",
    "book_store",
    "clothing_store",
    "jewelry_store",
    "gym",
    "bar",
)
SEARCH_RADIUS_M: Final = 800.0  # destinations within this of the centre
MIN_START_M: Final = 40.0  # V-IRL SAMPLE_START_POSITION.MIN_RADIUS
MAX_START_M: Final = 150.0  # ... MAX_RADIUS
MAX_ROUTE_M: Final = 150.0  # V-IRL ROUTE.MAX_DISTANCE
MAX_PLACE_M: Final = 18.0  # V-IRL ROUTE.MAX_DISTANCE_TO_LANDMARK (route end to destination, landmarks)
MIN_REVIEWS: Final = 10  # V-IRL ROUTE.MIN_REVIEWS (landmarks)
LANDMARK_SEARCH_M: Final = 50.0  # Nearby Search radius at a milestone (then filtered to MAX_PLACE_M)
MIN_LEG_M: Final = 10.0  # a shorter step is a kink, not a walk to an intersection
STARTS_PER_DEST: Final = 8  # Directions requests per destination at most
TURN_MANEUVERS: Final = frozenset(
    {
        "turn-left",
        "turn-right",
        "turn-slight-left",
        "turn-slight-right",
        "turn-sharp-left",
        "turn-sharp-right",
    }
)
# Nearby Search returns the city or the street itself for a point: never a landmark or a start.
_AREA_TYPES: Final = frozenset({"political", "locality", "route", "neighborhood", "sublocality", "country"})
TERMS: Final = (
    "Route data from Google Maps Platform (Geocoding, Places, Directions APIs), © Google. Its Terms "
    "of Service apply: Places content other than place IDs may be cached for at most 30 days, and "
    "Google content must be attributed where shown (https://cloud.google.com/maps-platform/terms)."
)

# (stage, done, total), as in sftrl.environments.virl.collect.
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class LiveCollectResult:
    """What :func:`collect_live_routes` wrote, and how many HTTP requests it took (retries included)."""

    routes_file: Path
    manifest_file: Path
    routes: tuple[RouteInfo, ...]
    manifest: dict[str, Any]
    requests_sent: int


def parse_center(text: str) -> LatLng:
    """``"LAT,LNG"`` as a (lat, lng) pair; ValueError when it is not two in-range numbers."""
    parts = [p.strip() for p in text.split(",")]
    try:
        lat, lng = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--center must be LAT,LNG (e.g. 40.7233,-73.9985), got {text!r}") from None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lng <= 180.0):
        raise ValueError(f"--center {text!r} is out of range (lat -90..90, lng -180..180)")
    return lat, lng


# --- Google answers -> V-IRL dicts ------------------------------------------------------------------


def _latlng(obj: dict[str, Any]) -> LatLng:
    return float(obj["lat"]), float(obj["lng"])


def _place(result: dict[str, Any], origin: LatLng, region: str) -> dict[str, Any] | None:
    """A Nearby Search result as V-IRL stores a place (``distance``/``heading`` from ``origin``)."""
    try:
        name = str(result["name"]).strip()
        geo = _latlng(result["geometry"]["location"])
        place_id = str(result["place_id"])
    except (KeyError, TypeError, ValueError):
        return None
    if not name or "\n" in name:  # milestone_info holds one "key": "value" pair per line
        return None
    photos = result.get("photos") or []
    return {
        "name": name,
        "geocode": [geo[0], geo[1]],
        "rating": result.get("rating", 0),
        "place_id": place_id,
        "distance": haversine_m(*origin, *geo),
        "n_reviews": int(result.get("user_ratings_total", 0) or 0),
        "heading": bearing_deg(*origin, *geo),
        "photo_reference": photos[0].get("photo_reference") if photos else None,
        "place_types": list(result.get("types", [])),
        "plus_code": result.get("plus_code"),
        "vicinity": result.get("vicinity"),
        "region": region,
    }


def _is_area(place: dict[str, Any]) -> bool:
    return bool(_AREA_TYPES.intersection(place["place_types"]))


def _steps(routes: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The first route's single leg and its steps (a route without a via point has one leg)."""
    try:
        leg = routes[0]["legs"][0]
        steps = list(leg["steps"])
    except (IndexError, KeyError, TypeError):
        return None
    return (leg, steps) if steps else None


def _check_steps(
    leg: dict[str, Any], steps: list[dict[str, Any]], *, max_route_m: float, min_turns: int, max_turns: int
) -> list[LatLng] | None:
    """The steps' end points when the walk fits the recipe (length, 1-2 real turns), else None."""
    try:
        total = float(leg["distance"]["value"])
        start = _latlng(steps[0]["start_location"])
        ends = [_latlng(s["end_location"]) for s in steps]
        lengths = [float(s["distance"]["value"]) for s in steps]
    except (KeyError, TypeError, ValueError):
        return None
    if total > max_route_m or not min_turns <= len(steps) - 1 <= max_turns:
        return None
    if any(s.get("maneuver") not in TURN_MANEUVERS for s in steps[1:]) or min(lengths) < MIN_LEG_M:
        return None
    points = [start, *ends]
    legs = [bearing_deg(*a, *b) for a, b in pairwise(points)]
    # Headings are measured straight between milestones (as V-IRL does, and as a geocode-only rail
    # walks): each turn must read as one, not "straight on" nor a U-turn.
    if any(not TURN_MIN_DEG < abs(heading_delta(a, b)) <= UTURN_DEG for a, b in pairwise(legs)):
        return None
    return points


def _pick_landmark(
    results: list[dict[str, Any]], at: LatLng, region: str, exclude: set[str], min_reviews: int
) -> dict[str, Any] | None:
    """V-IRL's choice: the most-reviewed place within 18 m with enough reviews (ties: nearest, id)."""
    places = [p for r in results if (p := _place(r, at, region)) is not None]
    names = [p["name"].casefold() for p in places]
    best: dict[str, Any] | None = None
    for p in places:
        key = p["name"].casefold()
        if (
            p["distance"] > MAX_PLACE_M
            or p["n_reviews"] < min_reviews
            or key in exclude
            or names.count(key) > 1  # two "Starbucks" in view: the name would not pick one out
            or _is_area(p)
        ):
            continue
        if best is None or (-p["n_reviews"], p["distance"], p["place_id"]) < (
            -best["n_reviews"],
            best["distance"],
            best["place_id"],
        ):
            best = p
    return best


def route_info_from_directions(
    directions: list[dict[str, Any]],
    start: dict[str, Any],
    dest: dict[str, Any],
    landmarks_at: Callable[[LatLng], list[dict[str, Any]]],
    rng: np.random.Generator,
    *,
    region: str,
    route_id: str | None = None,
    max_route_m: float = MAX_ROUTE_M,
    min_turns: int = 1,
    max_turns: int = 2,
    min_reviews: int = MIN_REVIEWS,
) -> dict[str, Any] | None:
    """An official route_info dict from a Directions answer, or None when the walk does not qualify.

    ``landmarks_at(latlng)`` returns Nearby Search results around an intersection. ``rng`` draws the
    initial heading only after the route qualified, so rejected candidates do not shift later draws.
    """
    found = _steps(directions)
    if found is None:
        return None
    leg, steps = found
    points = _check_steps(leg, steps, max_route_m=max_route_m, min_turns=min_turns, max_turns=max_turns)
    if points is None or haversine_m(*points[-1], *dest["geocode"]) > MAX_PLACE_M:
        return None
    exclude = {start["name"].casefold(), dest["name"].casefold()}
    landmarks: list[dict[str, Any]] = []
    for milestone in points[1:-1]:
        lm = _pick_landmark(landmarks_at(milestone), milestone, region, exclude, min_reviews)
        if lm is None:
            return None
        exclude.add(lm["name"].casefold())
        landmarks.append(lm)
    headings = [bearing_deg(*a, *b) for a, b in pairwise(points)]
    init = _init_heading(rng, headings[0])
    blocks: list[str] = []
    before = init
    for k, (milestone, leg_heading) in enumerate(zip(points[1:], headings, strict=True)):
        if k < len(landmarks):
            lm = landmarks[k]
            rel = relative_name(heading_delta(leg_heading, bearing_deg(*milestone, *lm["geocode"])))
            lm["spatial_relation"] = rel
            lm["expression"] = expr = f"{lm['name']} is on your {rel}"
        else:
            rel = relative_name(heading_delta(leg_heading, bearing_deg(*milestone, *dest["geocode"])))
            expr = f"The destination {dest['name']} is on your {rel}"
        blocks.append(milestone_block(k + 1, expr, float(steps[k]["distance"]["value"]), before, leg_heading))
        before = leg_heading
    info: dict[str, Any] = {
        "dest_place": dict(dest, relocated_geocode=list(points[-1])),
        "start_place": dict(start, relocated_geocode=list(points[0])),
        "route_results": {
            "geocode_list": [list(p) for p in points[1:]],
            "polyline": [s.get("polyline", {}).get("points", "") for s in steps],
            "instructions": [s.get("html_instructions", "") for s in steps],
            "distance_list": [s["distance"]["value"] for s in steps],
            "time_list": [s.get("duration", {}).get("value", 0) for s in steps],
            "time": leg.get("duration", {}).get("value", 0),
            "distance": leg["distance"]["value"],
            "n_landmarks": len(landmarks),
            "landmark_list": landmarks,
        },
        # SFTvsRL replaces init_heading 0 with a random heading; 360 is the same direction, kept fixed.
        "init_heading": int(init) if init % 360 else 360,
        "instruction": "",
        "milestone_info": "".join(blocks),
    }
    if route_id is not None:
        info["route_id"] = route_id
    info["instruction"] = "\n".join(instruction_lines(RouteInfo.model_validate(info)))
    return info


# --- collection ---------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.casefold()).strip("-") or "city"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def collect_live_routes(
    city: str,
    n: int,
    out: str | Path,
    *,
    client: GoogleMapsClient | None = None,
    center: LatLng | None = None,
    place_types: Sequence[str] = PLACE_TYPES_20,
    route_seed: int = 0,
    search_radius_m: float = SEARCH_RADIUS_M,
    min_start_m: float = MIN_START_M,
    max_start_m: float = MAX_START_M,
    max_route_m: float = MAX_ROUTE_M,
    min_turns: int = 1,
    max_turns: int = 2,
    min_reviews: int = MIN_REVIEWS,
    starts_per_dest: int = STARTS_PER_DEST,
    max_requests: int | None = None,
    progress: ProgressFn | None = None,
) -> LiveCollectResult:
    """Build up to ``n`` routes around ``city`` (or ``center``) with the live APIs and write them to ``out``.

    Deterministic in ``route_seed`` given the same API answers. ``max_requests`` caps the HTTP requests
    (billing guard; default ``60 * n + len(place_types) + 1``): collection stops there with the routes
    found so far. Raises :class:`sftrl.street_view.google_maps.MapsError` for a missing or rejected
    key, exhausted quota or network failure, ValueError for bad options or an unknown place.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if not place_types:
        raise ValueError("place_types must name at least one Places type")
    if not 0 <= min_start_m < max_start_m or max_route_m <= 0 or search_radius_m <= 0:
        raise ValueError("need 0 <= min_start_m < max_start_m and positive max_route_m, search_radius_m")
    client = client or GoogleMapsClient()
    budget = max_requests if max_requests is not None else 60 * n + len(place_types) + 1
    if center is None:
        results = client.geocode(city)
        if not results:
            raise ValueError(f"Google could not geocode {city!r}: pass --center LAT,LNG")
        center = _latlng(results[0]["geometry"]["location"])
    wanted = list(dict.fromkeys(place_types))
    pool: dict[str, dict[str, Any]] = {}
    for ptype in wanted:
        for r in client.places_nearby(center, search_radius_m, type=ptype):
            p = _place(r, center, city)
            if p is not None and not _is_area(p) and set(p["place_types"]) & set(wanted):
                pool.setdefault(p["place_id"], p)
    rng = np.random.default_rng(route_seed)
    dests = [pool[k] for k in sorted(pool)]
    order = rng.permutation(len(dests)).tolist()
    landmark_cache: dict[tuple[float, float], list[dict[str, Any]]] = {}

    def landmarks_at(at: LatLng) -> list[dict[str, Any]]:
        # Routes to nearby destinations share intersections: one search per intersection.
        key = (round(at[0], 6), round(at[1], 6))
        if key not in landmark_cache:
            landmark_cache[key] = client.places_nearby(at, LANDMARK_SEARCH_M)
        return landmark_cache[key]

    infos: list[dict[str, Any]] = []
    prefix = f"google-{_slug(city)}-{route_seed}"
    if progress:
        progress("routes", 0, n)
    for k in order:
        if len(infos) >= n or client.requests_sent >= budget:
            break
        dest = dests[k]
        near = [
            p
            for r in client.places_nearby(tuple(dest["geocode"]), max_start_m)
            if (p := _place(r, tuple(dest["geocode"]), city)) is not None
            and not _is_area(p)
            and p["place_id"] != dest["place_id"]
            and p["name"].casefold() != dest["name"].casefold()
            and min_start_m <= p["distance"] <= max_start_m
        ]
        near.sort(key=lambda p: p["place_id"])
        candidates = [near[i] for i in rng.permutation(len(near)).tolist()][:starts_per_dest]
        for start in candidates:
            if client.requests_sent >= budget:
                break
            directions = client.directions(tuple(start["geocode"]), tuple(dest["geocode"]))
            # V-IRL stores the start/dest as seen from each other (distance, heading).
            start_rel = dict(start)
            dest_rel = dict(
                dest,
                distance=haversine_m(*start["geocode"], *dest["geocode"]),
                heading=bearing_deg(*start["geocode"], *dest["geocode"]),
            )
            info = route_info_from_directions(
                directions,
                start_rel,
                dest_rel,
                landmarks_at,
                rng,
                region=city,
                route_id=f"{prefix}-{len(infos):04d}",
                max_route_m=max_route_m,
                min_turns=min_turns,
                max_turns=max_turns,
                min_reviews=min_reviews,
            )
            if info is not None:
                infos.append(info)
                if progress:
                    progress("routes", len(infos), n)
                break
    if not infos:
        raise ValueError(
            f"no route around {city!r} fits the recipe ({client.requests_sent} requests): try another "
            "--center, more --place-types or another --route-seed"
        )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    routes_file = out_dir / ROUTES_FILE
    routes_file.write_text(
        json.dumps([infos, len(infos)], ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    routes = tuple(RouteInfo.model_validate(i) for i in infos)
    from sftrl import __version__

    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "sftrl_version": __version__,
        "options": {
            "source": "google",
            "city": city,
            "center": [center[0], center[1]],
            "n": n,
            "route_seed": route_seed,
            "place_types": wanted,
            "search_radius_m": search_radius_m,
            "min_start_m": min_start_m,
            "max_start_m": max_start_m,
            "max_route_m": max_route_m,
            "min_turns": min_turns,
            "max_turns": max_turns,
            "max_place_m": MAX_PLACE_M,
            "min_reviews": min_reviews,
            "mode": "walking",
        },
        "source": {
            "provider": "Google Maps Platform",
            "apis": ["Geocoding API", "Places API (Nearby Search)", "Directions API"],
            "recipe": "V-IRL CollectVLNRoutes (github.com/VIRL-Platform/VIRL), walking directions",
            "attribution": "Map data © Google",
            "licence": TERMS,
        },
        "routes_file": ROUTES_FILE,
        "routes_sha256": _sha256(routes_file),
        "count": len(routes),
        "routes": [dict(route_summary(r), fingerprint=route_fingerprint(r)) for r in routes],
        "views": None,
    }
    manifest_file = out_dir / MANIFEST_FILE
    manifest_file.write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return LiveCollectResult(routes_file, manifest_file, routes, manifest, client.requests_sent)
