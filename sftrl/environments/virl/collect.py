"""Collect V-IRL routes from the shipped city bundles into the official SFTvsRL on-disk format.

``collect_routes`` writes ``route_infos.json`` (``[[route_info, …], n]``, what SFTvsRL's
``NavigationEnvironment`` and :func:`sftrl.environments.virl.official.load_routes` read) plus
``manifest.json`` (fingerprints, source data, licences, the exact options; no timestamps, so the same
seed gives byte-identical files). With ``views_dir`` it also renders a panorama at every point a walk
visits, in the official offline layout (``gps_pano_mapping.pkl``, ``street_views/{pano_id}.jpg`` and
``{pano_id}.metadata.json``), so ``--street-view panorama-dir --panorama-dir VIEWS`` replays the
collected routes from disk.

Each route_info holds the official keys (start/dest place with ``relocated_geocode``, ``init_heading``,
``instruction``, ``milestone_info``, ``route_results`` with ``geocode_list``, ``distance_list``,
``landmark_list``, ``distance``, per-leg Google-encoded ``polyline`` and ``n_landmarks``) and sftrl's own
``route_id``, ``city`` and ``path`` (street-node indices), which other readers ignore.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from sftrl.environments.virl.routes import (
    RouteInfo,
    generate_routes,
    route_fingerprint,
    route_summary,
    split_routes,
)
from sftrl.street_view.city import CityMap, load_city
from sftrl.street_view.provider import StreetViewProvider, ViewRequest

__all__ = [
    "CollectResult",
    "collect_routes",
    "encode_polyline",
    "official_route_info",
    "render_panorama",
    "write_views",
]

MANIFEST_FORMAT: Final = "sftrl-collected-routes/1"
ROUTES_FILE: Final = "route_infos.json"
MANIFEST_FILE: Final = "manifest.json"
MAPPING_FILE: Final = "gps_pano_mapping.pkl"
VIEWS_SUBDIR: Final = "street_views"
PANO_VIEWS: Final = 8  # perspective renders per panorama (every 45°, 90° fov: each column is covered)
JPEG_QUALITY: Final = 90

ViewsAt = Literal["path", "milestones"]
# (stage, done, total): "routes" once, then "views" per panorama.
ProgressFn = Callable[[str, int, int], None]


# --- official route_info --------------------------------------------------------------------------------


def encode_polyline(points: Sequence[tuple[float, float]]) -> str:
    """Google's encoded-polyline string of lat/lng points (5 decimals), as in V-IRL's ``polyline``."""
    out: list[str] = []
    prev = (0, 0)
    for lat, lng in points:
        cur = (round(lat * 1e5), round(lng * 1e5))
        for delta in (cur[0] - prev[0], cur[1] - prev[1]):
            v = ~(delta << 1) if delta < 0 else delta << 1
            while v >= 0x20:
                out.append(chr((0x20 | (v & 0x1F)) + 63))
                v >>= 5
            out.append(chr(v + 63))
        prev = cur
    return "".join(out)


def _milestone_positions(route: RouteInfo, city: CityMap) -> list[int]:
    """Positions in ``route.path`` of the start and of every ``geocode_list`` entry (the leg ends)."""
    assert route.path is not None
    marks = [0]
    for lat, lng in route.route_results.geocode_list:
        for k in range(marks[-1], len(route.path)):
            if city.latlng(route.path[k]) == (lat, lng):
                marks.append(k)
                break
        else:
            raise ValueError(f"route {route.route_id}: milestone ({lat}, {lng}) is not on the route's path")
    return marks


def official_route_info(route: RouteInfo, city: CityMap) -> dict[str, Any]:
    """``route`` as an official route_info dict (JSON-ready), with the per-leg polylines filled in."""
    data = route.model_dump(mode="json", exclude_none=True)
    rr = data["route_results"]
    rr["n_landmarks"] = len(route.route_results.landmark_list)
    if route.path is not None:
        marks = _milestone_positions(route, city)
        rr["polyline"] = [
            encode_polyline([city.latlng(v) for v in route.path[a : b + 1]]) for a, b in pairwise(marks)
        ]
    # SFTvsRL replaces init_heading 0 with a random heading; 360 is the same direction, kept fixed.
    heading = float(route.init_heading) % 360.0
    data["init_heading"] = 360 if heading == 0 else (int(heading) if heading.is_integer() else heading)
    return data


# --- panoramas ------------------------------------------------------------------------------------------


def render_panorama(
    provider: StreetViewProvider,
    lat: float,
    lng: float,
    *,
    width: int = 1024,
    city: str | None = None,
    node: int | None = None,
    landmarks: tuple[tuple[str, float, float], ...] = (),
) -> Image.Image:
    """An equirectangular panorama (``width`` × ``width/2``, centre column facing north) stitched from
    eight 90° perspective views of ``provider``.

    Each panorama column is sampled from the view whose centre is nearest its heading; a 90° view
    covers elevations up to about ±40°, so rows nearer the poles repeat the view's top / bottom row
    (sky and ground), which a street-level crop rarely reaches.
    """
    if width < 64 or width % 8:
        raise ValueError("panorama width must be a multiple of 8, at least 64")
    height = width // 2
    size = width // 4  # a 90° view at the panorama's angular resolution
    step = 360.0 / PANO_VIEWS
    views = np.stack(
        [
            np.asarray(
                provider.get_view(
                    ViewRequest(
                        lat=lat,
                        lng=lng,
                        heading=k * step,
                        fov=90.0,
                        width=size,
                        height=size,
                        city=city,
                        node=node,
                        landmarks=landmarks,
                    )
                ).convert("RGB"),
                dtype=np.float32,
            )
            for k in range(PANO_VIEWS)
        ]
    )
    heading = (np.arange(width, dtype=np.float64) + 0.5) / width * 360.0 - 180.0  # rotation 0: north centre
    k = np.rint(heading / step).astype(np.int64) % PANO_VIEWS
    delta = np.radians(((heading - k * step + 180.0) % 360.0) - 180.0)  # within ±22.5°
    elev = np.radians(90.0 - (np.arange(height, dtype=np.float64) + 0.5) / height * 180.0)
    f = size / 2.0  # focal length of a 90° view
    u = np.broadcast_to(np.tan(delta) * f + size / 2.0 - 0.5, (height, width))
    v = size / 2.0 - 0.5 - np.tan(elev)[:, None] * f / np.cos(delta)[None, :]
    u = np.clip(u, 0.0, size - 1.0)
    v = np.clip(v, 0.0, size - 1.0)
    kk = np.broadcast_to(k, (height, width))
    out = _bilinear(views, kk, v, u)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def _bilinear(
    stack: npt.NDArray[np.float32],
    k: npt.NDArray[np.int64],
    v: npt.NDArray[np.float64],
    u: npt.NDArray[np.float64],
) -> npt.NDArray[np.float32]:
    n_rows, n_cols = stack.shape[1:3]
    v0 = np.floor(v).astype(np.int64)
    u0 = np.floor(u).astype(np.int64)
    v1 = np.minimum(v0 + 1, n_rows - 1)
    u1 = np.minimum(u0 + 1, n_cols - 1)
    fv = (v - v0)[..., None].astype(np.float32)
    fu = (u - u0)[..., None].astype(np.float32)
    top = stack[k, v0, u0] * (1 - fu) + stack[k, v0, u1] * fu
    bottom = stack[k, v1, u0] * (1 - fu) + stack[k, v1, u1] * fu
    return top * (1 - fv) + bottom * fv


@dataclass
class _PanoSite:
    lat: float
    lng: float
    node: int
    city: str
    landmarks: set[tuple[str, float, float]] = field(default_factory=set)


def _route_marks(route: RouteInfo) -> set[tuple[str, float, float]]:
    marks = {(lm.name, *lm.geocode) for lm in route.route_results.landmark_list}
    marks.add((route.dest_place.name, *route.dest_place.geocode))
    marks.add((route.start_place.name, *route.start_place.geocode))
    return marks


def write_views(
    routes: Sequence[RouteInfo],
    views_dir: str | Path,
    provider: StreetViewProvider,
    *,
    at: ViewsAt = "path",
    pano_width: int = 1024,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Render a panorama at every visited point of ``routes`` into ``views_dir`` (official layout).

    ``at="path"`` covers every street node of each walk (every point the rail can stand on);
    ``"milestones"`` only the start and each leg end. A node shared by routes gets one panorama,
    drawn with the landmarks of all of them. Returns a summary for the manifest.
    """
    root = Path(views_dir)
    (root / VIEWS_SUBDIR).mkdir(parents=True, exist_ok=True)
    sites: dict[str, _PanoSite] = {}
    for route in routes:
        if route.path is None or route.city is None:
            raise ValueError(f"route {route.route_id}: views need a route generated from a city bundle")
        city = load_city(route.city)
        positions = range(len(route.path)) if at == "path" else _milestone_positions(route, city)
        for pos in positions:
            node = route.path[pos]
            pano_id = f"sftrl-{provider.name}-{city.name}-n{node}"
            if pano_id not in sites:
                lat, lng = city.latlng(node)
                sites[pano_id] = _PanoSite(lat, lng, node, city.name)
            sites[pano_id].landmarks |= _route_marks(route)
    mapping: dict[tuple[float, float], str] = {}
    for done, (pano_id, site) in enumerate(sorted(sites.items()), start=1):
        image = render_panorama(
            provider,
            site.lat,
            site.lng,
            width=pano_width,
            city=site.city,
            node=site.node,
            landmarks=tuple(sorted(site.landmarks)),
        )
        image.save(root / VIEWS_SUBDIR / f"{pano_id}.jpg", quality=JPEG_QUALITY)
        (root / VIEWS_SUBDIR / f"{pano_id}.metadata.json").write_text(json.dumps({"rotation": 0.0}) + "\n")
        mapping[(site.lat, site.lng)] = pano_id
        if progress:
            progress("views", done, len(sites))
    # A plain dict of float tuples -> str: what the official file holds (and safe_pickle accepts).
    with (root / MAPPING_FILE).open("wb") as f:
        pickle.dump(mapping, f, protocol=4)
    return {
        "dir": str(root),
        "provider": provider.name,
        "at": at,
        "panoramas": len(sites),
        "pano_width": pano_width,
        "mapping": MAPPING_FILE,
        "mapping_sha256": _sha256(root / MAPPING_FILE),
        "rotation_convention": "metadata rotation = compass heading of the panorama's centre column",
    }


# --- collection -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectResult:
    """What :func:`collect_routes` wrote."""

    routes_file: Path
    manifest_file: Path
    routes: tuple[RouteInfo, ...]
    manifest: dict[str, Any]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bundle_sha256(name: str) -> str:
    raw = resources.files("sftrl.street_view").joinpath(f"data/{name}.json.gz").read_bytes()
    return hashlib.sha256(raw).hexdigest()


def collect_routes(
    city: str,
    n: int,
    out: str | Path,
    *,
    route_seed: int = 0,
    max_route_m: float = 150.0,
    max_start_m: float = 150.0,
    split: str | None = None,
    views_dir: str | Path | None = None,
    provider: StreetViewProvider | None = None,
    views_at: ViewsAt = "path",
    pano_width: int = 1024,
    progress: ProgressFn | None = None,
) -> CollectResult:
    """Generate ``n`` routes in ``city`` (deterministic in ``route_seed``) and write them to ``out``.

    With ``split`` the routes are that split's fixed set (exactly what ``agent run --split`` uses);
    without, fresh routes over the whole city. ``views_dir`` additionally renders panoramas with
    ``provider`` (default: the synthetic renderer). Raises ValueError when no route can be made.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if not math.isfinite(max_route_m) or max_route_m <= 0:
        raise ValueError("max_route_m must be a positive number")
    cm = load_city(city)
    if split is not None:
        routes = tuple(split_routes(cm.name, split, route_seed, n, max_route_m, max_start_m))
    else:
        routes = tuple(
            generate_routes(
                cm.name,
                n,
                route_seed,
                area="any",
                max_route_m=max_route_m,
                max_start_m=max_start_m,
                id_prefix=f"{cm.name}-collect-{route_seed}",
            )
        )
    if not routes:
        raise ValueError(f"no routes could be generated in {cm.name!r} with max_route_m={max_route_m:g}")
    if progress:
        progress("routes", len(routes), n)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    infos = [official_route_info(r, cm) for r in routes]
    routes_file = out_dir / ROUTES_FILE
    routes_file.write_text(
        json.dumps([infos, len(infos)], ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    views: dict[str, Any] | None = None
    if views_dir is not None:
        if provider is None:
            from sftrl.street_view.provider import make_provider

            provider = make_provider("synthetic", city=cm.name)
        views = write_views(
            routes, views_dir, provider, at=views_at, pano_width=pano_width, progress=progress
        )
        views["licence"] = (
            "synthetic drawings of the city data (licence of the city data below)"
            if provider.name == "synthetic"
            else f"imagery from the {provider.name!r} provider: its terms apply"
        )
    from sftrl import __version__

    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "sftrl_version": __version__,
        "options": {
            "city": cm.name,
            "n": n,
            "route_seed": route_seed,
            "max_route_m": max_route_m,
            "max_start_m": max_start_m,
            "split": split,
        },
        "source": {
            "city": cm.name,
            "display_name": cm.display_name,
            "attribution": cm.attribution,
            "licence": cm.licence,
            "bundle_sha256": _bundle_sha256(cm.name),
        },
        "routes_file": ROUTES_FILE,
        "routes_sha256": _sha256(routes_file),
        "count": len(routes),
        "routes": [dict(route_summary(r), fingerprint=route_fingerprint(r)) for r in routes],
        "views": views,
    }
    manifest_file = out_dir / MANIFEST_FILE
    manifest_file.write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return CollectResult(routes_file, manifest_file, routes, manifest)
