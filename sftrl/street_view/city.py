"""Load the street-graph city bundles shipped with sftrl and answer graph and spatial queries on them."""

from __future__ import annotations

import functools
import gzip
import heapq
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from itertools import pairwise
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sftrl.street_view.geometry import (
    GridIndex,
    LocalProjection,
    haversine_m,
    haversine_m_array,
    heading_delta,
)

__all__ = [
    "DEFAULT_TURN_PENALTY_M",
    "TURN_MIN_DEG",
    "POI",
    "Area",
    "CityMap",
    "NoPathError",
    "Route",
    "UnknownCityError",
    "available_cities",
    "load_city",
]

_DATA_PACKAGE: Final = "sftrl.street_view"
_DATA_DIR: Final = "data"
_BUNDLE_SUFFIX: Final = ".json.gz"
_SCHEMA_VERSION: Final = 1

# A heading change above this between consecutive edges counts as a turn for shortest_path.
TURN_MIN_DEG: Final = 45.0
# Extra cost per turn. On a grid many shortest paths tie (staircases); any positive penalty picks the
# one with fewest turns, and 25 m (a quarter of a short Manhattan block) prefers a route that is at
# most ~25 m longer per avoided turn, like the simple routes a person (or Google directions) would give.
DEFAULT_TURN_PENALTY_M: Final = 25.0


class UnknownCityError(LookupError):
    """Raised by :func:`load_city` for a name with no shipped bundle."""


class NoPathError(ValueError):
    """Raised by :meth:`CityMap.shortest_path` when the target cannot be reached."""


@dataclass(frozen=True, slots=True)
class POI:
    """A named point of interest joined to its nearest street node."""

    index: int
    name: str
    lat: float
    lng: float
    kind: str  # OSM key that made it a POI: amenity / shop / tourism / leisure / historic
    category: str  # that key's value, e.g. "cafe", "bank"
    node: int  # nearest street node
    dist_m: float  # distance to that node
    unique_name: bool  # no other POI in the city has this name (case/space-insensitive)
    landmark: bool  # usable as a navigation landmark (not street furniture, close to the street)


@dataclass(frozen=True, slots=True)
class Route:
    """A human-described map2seq route over the city's street nodes (NYC only)."""

    index: int
    split: str  # "test_seen" | "test_unseen" | "val"
    instructions_id: int
    path: tuple[int, ...]  # node indices, consecutive nodes joined by an edge
    initial_heading: float  # degrees, 0 = north, clockwise
    instructions: str
    crosses_unseen: bool  # some node of the path lies in the "unseen" area


@dataclass(frozen=True, slots=True)
class Area:
    """A named lat/lng box (e.g. NYC's held-out "unseen" area)."""

    name: str
    lat_min: float
    lat_max: float
    lng_min: float
    lng_max: float

    def contains(self, lat: float, lng: float) -> bool:
        return self.lat_min <= lat <= self.lat_max and self.lng_min <= lng <= self.lng_max


class CityMap:
    """A walkable street graph (nodes + directed edges with headings), its POIs and, for NYC, routes.

    Instances returned by :func:`load_city` are shared per process: treat them as read-only.
    """

    def __init__(self, bundle: dict[str, Any]) -> None:
        if bundle.get("schema") != _SCHEMA_VERSION:
            raise ValueError(f"unsupported city bundle schema {bundle.get('schema')!r}")
        self.name: str = bundle["name"]
        self.display_name: str = bundle.get("display_name", self.name)
        self.attribution: str = bundle["attribution"]
        self.licence: str = bundle["licence"]
        self.build_params: dict[str, float] = dict(bundle.get("build", {}))

        nodes = bundle["nodes"]
        self.node_ids: list[str] = nodes["id"]
        self.lat: npt.NDArray[np.float64] = np.asarray(nodes["lat"], dtype=np.float64)
        self.lng: npt.NDArray[np.float64] = np.asarray(nodes["lng"], dtype=np.float64)
        self.intersection: npt.NDArray[np.bool_] = np.asarray(nodes["intersection"], dtype=bool)
        self.junction: npt.NDArray[np.int64] = np.asarray(nodes["junction"], dtype=np.int64)

        edges = bundle["edges"]
        src = np.asarray(edges["src"], dtype=np.int64)
        order = np.argsort(src, kind="stable")  # bundles are sorted already; this is a cheap guarantee
        self.edge_src: npt.NDArray[np.int64] = src[order]
        self.edge_dst: npt.NDArray[np.int64] = np.asarray(edges["dst"], dtype=np.int64)[order]
        self.edge_headings: npt.NDArray[np.float64] = np.asarray(edges["heading"], dtype=np.float64)[order]
        self.edge_lengths_m: npt.NDArray[np.float64] = haversine_m_array(
            self.lat[self.edge_src], self.lng[self.edge_src], self.lat[self.edge_dst], self.lng[self.edge_dst]
        )
        n = len(self.node_ids)
        # CSR offsets: out-edges of node i are edge rows offsets[i]:offsets[i+1].
        self._offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.edge_src, minlength=n), out=self._offsets[1:])
        # Python lists make the per-node hot paths (neighbors, Dijkstra) several times faster than
        # indexing numpy scalars one at a time.
        self._off_l: list[int] = self._offsets.tolist()
        self._dst_l: list[int] = self.edge_dst.tolist()
        self._head_l: list[float] = self.edge_headings.tolist()
        self._len_l: list[float] = self.edge_lengths_m.tolist()
        self._lat_l: list[float] = self.lat.tolist()
        self._lng_l: list[float] = self.lng.tolist()

        p = bundle["pois"]
        self.pois: list[POI] = [
            POI(i, *row[:7], bool(row[7]), bool(row[8]))
            for i, row in enumerate(
                zip(
                    p["name"],
                    p["lat"],
                    p["lng"],
                    p["kind"],
                    p["category"],
                    p["node"],
                    p["dist_m"],
                    p["unique_name"],
                    p["landmark"],
                    strict=True,
                )
            )
        ]
        self.poi_lat: npt.NDArray[np.float64] = np.asarray(p["lat"], dtype=np.float64)
        self.poi_lng: npt.NDArray[np.float64] = np.asarray(p["lng"], dtype=np.float64)
        self.poi_landmark: npt.NDArray[np.bool_] = np.asarray(p["landmark"], dtype=bool)

        r = bundle.get("routes") or {}
        self.routes: list[Route] = [
            Route(i, split, int(iid), tuple(path), float(h), text, bool(cu))
            for i, (split, iid, path, h, text, cu) in enumerate(
                zip(
                    r.get("split", []),
                    r.get("instructions_id", []),
                    r.get("path", []),
                    r.get("initial_heading", []),
                    r.get("instructions", []),
                    r.get("crosses_unseen", []),
                    strict=True,
                )
            )
        ]
        # One CityMap is shared by every caller of load_city(); freeze the arrays so no caller can
        # silently corrupt the map for the others.
        for arr in (
            self.lat,
            self.lng,
            self.intersection,
            self.junction,
            self.edge_src,
            self.edge_dst,
            self.edge_headings,
            self.edge_lengths_m,
            self._offsets,
            self.poi_lat,
            self.poi_lng,
            self.poi_landmark,
        ):
            arr.flags.writeable = False
        self.areas: dict[str, Area] = {
            k: Area(k, v["lat_min"], v["lat_max"], v["lng_min"], v["lng_max"])
            for k, v in bundle.get("areas", {}).items()
        }

    def __repr__(self) -> str:
        return (
            f"CityMap({self.name!r}, nodes={self.num_nodes}, edges={self.num_edges}, "
            f"pois={len(self.pois)}, routes={len(self.routes)})"
        )

    # --- size / lookup ---------------------------------------------------------------------------------

    @property
    def num_nodes(self) -> int:
        return len(self.node_ids)

    @property
    def num_edges(self) -> int:
        return len(self._dst_l)

    @functools.cached_property
    def _id_to_index(self) -> dict[str, int]:
        return {nid: i for i, nid in enumerate(self.node_ids)}

    def node_index(self, node_id: str) -> int:
        """Index of a node by its id (e.g. a Touchdown panoid); KeyError if absent."""
        return self._id_to_index[node_id]

    def latlng(self, i: int) -> tuple[float, float]:
        return self._lat_l[i], self._lng_l[i]

    def _check_node(self, i: int) -> None:
        if not 0 <= i < self.num_nodes:
            raise IndexError(f"node index {i} out of range for {self.name!r} ({self.num_nodes} nodes)")

    # --- graph -----------------------------------------------------------------------------------------

    def out_edges(self, i: int) -> list[tuple[int, float]]:
        """(target node, heading in degrees) of every edge leaving node i."""
        self._check_node(i)
        lo, hi = self._off_l[i], self._off_l[i + 1]
        return list(zip(self._dst_l[lo:hi], self._head_l[lo:hi], strict=True))

    def neighbors(self, i: int) -> list[int]:
        """Nodes reachable from node i in one step."""
        self._check_node(i)
        return self._dst_l[self._off_l[i] : self._off_l[i + 1]]

    def has_edge(self, i: int, j: int) -> bool:
        return j in self.neighbors(i)

    def edge_heading(self, i: int, j: int) -> float:
        """Heading (deg, 0 = north, clockwise) of the edge i -> j; KeyError if there is none."""
        for k in range(self._off_l[i], self._off_l[i + 1]):
            if self._dst_l[k] == j:
                return self._head_l[k]
        raise KeyError(f"no edge {i} -> {j} in {self.name!r}")

    def is_intersection(self, i: int) -> bool:
        """True if node i has >= 3 out-edges in >= 3 distinct directions (30° apart)."""
        return bool(self.intersection[i])

    def junction_of(self, i: int) -> int | None:
        """Junction group of an intersection node (intersections within 20 m share one), else None."""
        j = int(self.junction[i])
        return None if j < 0 else j

    def distance_m(self, i: int, j: int) -> float:
        """Straight-line distance between two nodes."""
        return haversine_m(self._lat_l[i], self._lng_l[i], self._lat_l[j], self._lng_l[j])

    def path_length_m(self, path: Sequence[int]) -> float:
        """Sum of straight-line distances between consecutive nodes of ``path``."""
        return sum(self.distance_m(a, b) for a, b in pairwise(path))

    def shortest_path(self, a: int, b: int, turn_penalty_m: float = DEFAULT_TURN_PENALTY_M) -> list[int]:
        """Node list of the cheapest walk from a to b (both included).

        Cost = metres walked + ``turn_penalty_m`` per heading change > 45° between consecutive edges
        (the first edge is free). Because the cost of an edge depends on the previous edge, the search
        runs over edges, A*-guided by the straight-line distance to b (admissible: every edge costs at
        least its own straight-line length). Raises :class:`NoPathError` if b is unreachable.
        """
        self._check_node(a)
        self._check_node(b)
        if turn_penalty_m < 0:
            raise ValueError("turn_penalty_m must be >= 0")
        if a == b:
            return [a]
        off, dst, head, length = self._off_l, self._dst_l, self._head_l, self._len_l
        lat, lng = self._lat_l, self._lng_l
        blat, blng = lat[b], lng[b]
        h_cache: dict[int, float] = {}

        def h(v: int) -> float:
            d = h_cache.get(v)
            if d is None:
                d = h_cache[v] = haversine_m(lat[v], lng[v], blat, blng)
            return d

        best: dict[int, float] = {}
        parent: dict[int, int] = {}
        heap: list[tuple[float, float, int]] = []
        for e in range(off[a], off[a + 1]):
            best[e] = length[e]
            parent[e] = -1
            heapq.heappush(heap, (length[e] + h(dst[e]), length[e], e))
        while heap:
            _, g, e = heapq.heappop(heap)
            if g > best[e]:
                continue  # stale heap entry
            v = dst[e]
            if v == b:
                edges = []
                while e >= 0:
                    edges.append(e)
                    e = parent[e]
                return [a, *(dst[x] for x in reversed(edges))]
            he = head[e]
            for f in range(off[v], off[v + 1]):
                cost = g + length[f]
                if abs(heading_delta(he, head[f])) > TURN_MIN_DEG:
                    cost += turn_penalty_m
                if cost < best.get(f, math.inf):
                    best[f] = cost
                    parent[f] = e
                    heapq.heappush(heap, (cost + h(dst[f]), cost, f))
        raise NoPathError(f"no path from node {a} to node {b} in {self.name!r}")

    # --- spatial -----------------------------------------------------------------------------------------

    @functools.cached_property
    def _projection(self) -> LocalProjection:
        return LocalProjection.around(self.lat, self.lng)

    @functools.cached_property
    def _node_index(self) -> GridIndex:
        x, y = self._projection.to_xy(self.lat, self.lng)
        return GridIndex(x, y, cell_m=50.0)

    @functools.cached_property
    def _poi_index(self) -> GridIndex:
        x, y = self._projection.to_xy(self.poi_lat, self.poi_lng)
        return GridIndex(x, y, cell_m=50.0)

    def _xy(self, lat: float, lng: float) -> tuple[float, float]:
        x, y = self._projection.to_xy(lat, lng)
        return float(x), float(y)

    def nearest_node(self, lat: float, lng: float) -> int:
        """Index of the street node closest to (lat, lng)."""
        return self._node_index.nearest(*self._xy(lat, lng))[0]

    @staticmethod
    def _exact_within(
        cand: npt.NDArray[np.int64],
        lats: npt.NDArray[np.float64],
        lngs: npt.NDArray[np.float64],
        lat: float,
        lng: float,
        r_m: float,
    ) -> list[int]:
        d = haversine_m_array(lat, lng, lats[cand], lngs[cand])
        keep = d <= r_m
        return cand[keep][np.argsort(d[keep], kind="stable")].tolist()

    def nodes_within(self, lat: float, lng: float, r_m: float) -> list[int]:
        """Nodes within ``r_m`` metres (great-circle) of (lat, lng), nearest first."""
        # The planar projection is off by < 0.5 % at city scale: over-fetch, then filter exactly.
        cand = self._node_index.within(*self._xy(lat, lng), r_m * 1.01 + 1.0)
        return self._exact_within(cand, self.lat, self.lng, lat, lng, r_m)

    def pois_near(self, lat: float, lng: float, r_m: float, landmarks_only: bool = True) -> list[POI]:
        """POIs within ``r_m`` metres of (lat, lng), nearest first (landmarks only by default)."""
        cand = self._poi_index.within(*self._xy(lat, lng), r_m * 1.01 + 1.0)
        if landmarks_only:
            cand = cand[self.poi_landmark[cand]]
        return [self.pois[i] for i in self._exact_within(cand, self.poi_lat, self.poi_lng, lat, lng, r_m)]

    def in_area(self, lat: float, lng: float, area_name: str) -> bool:
        """Whether (lat, lng) lies in the named area (e.g. "unseen" for NYC)."""
        try:
            area = self.areas[area_name]
        except KeyError:
            raise KeyError(
                f"{self.name!r} has no area {area_name!r}; available: {sorted(self.areas) or 'none'}"
            ) from None
        return area.contains(lat, lng)


def _data_dir() -> Traversable:
    # Resolve through the parent package so this works whether or not data/ is itself a package
    # (wheels ship it as plain package data).
    return resources.files(_DATA_PACKAGE).joinpath(_DATA_DIR)


def available_cities() -> list[str]:
    """Names of the city bundles shipped with the package, sorted."""
    return sorted(
        p.name[: -len(_BUNDLE_SUFFIX)] for p in _data_dir().iterdir() if p.name.endswith(_BUNDLE_SUFFIX)
    )


def load_city(name: str) -> CityMap:
    """The :class:`CityMap` for ``name`` (case-insensitive), loaded once per process."""
    key = name.strip().lower()
    cities = available_cities()
    if key not in cities:
        raise UnknownCityError(f"unknown city {name!r}; available cities: {', '.join(cities)}")
    return _load_cached(key)


@functools.cache
def _load_cached(key: str) -> CityMap:
    raw = _data_dir().joinpath(key + _BUNDLE_SUFFIX).read_bytes()
    return CityMap(json.loads(gzip.decompress(raw)))
