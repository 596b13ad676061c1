"""Tests for the shipped city street bundles and the CityMap loader (uses only the packaged data)."""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from itertools import pairwise

import numpy as np
import pytest

from sftrl.street_view import city as city_mod
from sftrl.street_view.city import (
    CityMap,
    NoPathError,
    UnknownCityError,
    available_cities,
    load_city,
)
from sftrl.street_view.geometry import haversine_m, haversine_m_array, heading_delta

SHIPPED = ("nyc", "helsinki", "baltimore", "singapore")
# First test_unseen route of map2seq (instructions_id 12652), past Happy Socks and Cole Haan in SoHo.
KNOWN_ROUTE_START = "GaItBVx0qpSNRPxe3NJjSg"
KNOWN_ROUTE_END = "adoEBEM9J-tTbLWUz_OTDg"


@pytest.fixture(scope="module")
def nyc() -> CityMap:
    return load_city("nyc")


@pytest.fixture(scope="module", params=SHIPPED)
def any_city(request: pytest.FixtureRequest) -> CityMap:
    return load_city(request.param)


def _turns(m: CityMap, path: list[int]) -> int:
    hs = [m.edge_heading(a, b) for a, b in pairwise(path)]
    return sum(abs(heading_delta(a, b)) > 45 for a, b in pairwise(hs))


def test_available_cities_lists_shipped_bundles() -> None:
    assert set(SHIPPED) <= set(available_cities())
    assert available_cities() == sorted(available_cities())


def test_unknown_city_error_lists_available() -> None:
    with pytest.raises(UnknownCityError, match="nyc") as info:
        load_city("atlantis")
    assert "atlantis" in str(info.value)
    assert isinstance(info.value, LookupError)


def test_load_is_cached_and_case_insensitive(nyc: CityMap) -> None:
    assert load_city("NYC") is nyc
    assert load_city(" nyc ") is nyc


def test_nyc_parses_well_under_a_second() -> None:
    raw = city_mod._data_dir().joinpath("nyc.json.gz").read_bytes()
    t0 = time.perf_counter()
    CityMap(json.loads(gzip.decompress(raw)))
    # Typically ~0.1 s; the bound is loose so slow CI machines do not flake.
    assert time.perf_counter() - t0 < 2.0


class TestEveryCity:
    def test_structure(self, any_city: CityMap) -> None:
        m = any_city
        assert m.num_nodes > 500 and m.num_edges > m.num_nodes
        assert "OpenStreetMap contributors" in m.attribution
        assert len(m.lat) == len(m.lng) == len(m.node_ids) == m.num_nodes
        assert len(set(m.node_ids)) == m.num_nodes
        assert m.edge_src.min() >= 0 and m.edge_dst.max() < m.num_nodes
        assert np.all((m.edge_headings >= 0) & (m.edge_headings < 360))
        assert np.all(m.edge_src != m.edge_dst)
        assert m.intersection.sum() > 0
        # Junction ids exist exactly on intersection nodes.
        assert np.array_equal(m.junction >= 0, m.intersection)

    def test_edges_are_walkable_both_ways(self, any_city: CityMap) -> None:
        pairs = set(zip(any_city.edge_src.tolist(), any_city.edge_dst.tolist(), strict=True))
        missing = sum((b, a) not in pairs for a, b in pairs)
        # Touchdown has a handful of one-way links (3 of 61,319); OSM streets are all bidirectional.
        assert missing <= 5

    def test_pois(self, any_city: CityMap) -> None:
        m = any_city
        assert any(p.landmark for p in m.pois)
        for p in m.pois:
            assert 0 <= p.node < m.num_nodes
            assert p.dist_m == pytest.approx(haversine_m(p.lat, p.lng, *m.latlng(p.node)), abs=0.2)
            assert p.dist_m <= 100.0
            assert p.name.strip() == p.name and p.name
            if p.landmark:
                assert p.dist_m <= 50.0
                assert p.category not in {"atm", "bench", "bicycle_rental"}
                assert "citi bike" not in p.name.lower()
        names = Counter(" ".join(p.name.casefold().split()) for p in m.pois)
        for p in m.pois:
            assert p.unique_name == (names[" ".join(p.name.casefold().split())] == 1)

    def test_nearest_node_matches_brute_force(self, any_city: CityMap) -> None:
        m = any_city
        rng = np.random.default_rng(7)
        for _ in range(20):
            lat = rng.uniform(m.lat.min(), m.lat.max())
            lng = rng.uniform(m.lng.min(), m.lng.max())
            d = haversine_m_array(lat, lng, m.lat, m.lng)
            got = m.nearest_node(lat, lng)
            # Planar vs great-circle ranking may differ only for near-ties (< 0.5 % apart).
            assert d[got] <= d.min() * 1.005 + 1e-6

    def test_pois_near_node_are_within_radius(self, any_city: CityMap) -> None:
        m = any_city
        node = m.pois[len(m.pois) // 2].node
        lat, lng = m.latlng(node)
        all_near = m.pois_near(lat, lng, 150.0, landmarks_only=False)
        landmarks = m.pois_near(lat, lng, 150.0)
        assert all_near, "a POI's own nearest node must see it within 100 m"
        dists = [haversine_m(lat, lng, p.lat, p.lng) for p in all_near]
        assert max(dists) <= 150.0 and dists == sorted(dists)
        assert all(p.landmark for p in landmarks)
        assert {p.index for p in landmarks} <= {p.index for p in all_near}
        brute = {p.index for p in m.pois if haversine_m(lat, lng, p.lat, p.lng) <= 150.0}
        assert {p.index for p in all_near} == brute

    def test_nodes_within(self, any_city: CityMap) -> None:
        m = any_city
        lat, lng = m.latlng(m.num_nodes // 3)
        got = m.nodes_within(lat, lng, 60.0)
        d = haversine_m_array(lat, lng, m.lat, m.lng)
        assert set(got) == set(np.flatnonzero(d <= 60.0).tolist())
        assert got[0] == m.num_nodes // 3 or d[got[0]] == 0.0

    def test_shortest_path_is_connected_and_not_shorter_than_crow_flies(self, any_city: CityMap) -> None:
        m = any_city
        # Two intersections far apart (first and last by latitude) in the same city.
        inter = np.flatnonzero(m.intersection)
        a, b = int(inter[np.argmin(m.lat[inter])]), int(inter[np.argmax(m.lat[inter])])
        path = m.shortest_path(a, b)
        assert path[0] == a and path[-1] == b
        assert all(m.has_edge(u, v) for u, v in pairwise(path))
        assert m.path_length_m(path) >= m.distance_m(a, b)
        plain = m.shortest_path(a, b, turn_penalty_m=0.0)
        assert m.path_length_m(plain) <= m.path_length_m(path) + 1e-6
        assert _turns(m, path) <= _turns(m, plain)


class TestNYC:
    def test_sizes(self, nyc: CityMap) -> None:
        assert nyc.num_nodes == 29_641
        assert 60_000 <= nyc.num_edges <= 62_000
        assert 1_100 <= int(nyc.intersection.sum()) <= 1_500
        assert 900 <= len({int(j) for j in nyc.junction if j >= 0}) <= 1_400
        assert 3_000 <= sum(p.landmark for p in nyc.pois) <= 4_380
        assert "Touchdown" in nyc.attribution and "CC BY 4.0" in nyc.licence

    def test_routes(self, nyc: CityMap) -> None:
        assert Counter(r.split for r in nyc.routes) == {"test_seen": 700, "test_unseen": 700, "val": 605}
        for r in nyc.routes:
            assert len(r.path) >= 2 and 0 <= r.initial_heading < 360 and r.instructions
            assert all(nyc.has_edge(u, v) for u, v in pairwise(r.path))

    def test_known_route_connected_edge_by_edge(self, nyc: CityMap) -> None:
        route = next(r for r in nyc.routes if r.instructions_id == 12652)
        assert route.split == "test_unseen"
        assert nyc.node_ids[route.path[0]] == KNOWN_ROUTE_START
        assert nyc.node_ids[route.path[-1]] == KNOWN_ROUTE_END
        assert "Starbucks" in route.instructions
        for u, v in pairwise(route.path):
            assert v in nyc.neighbors(u)
            assert 0 <= nyc.edge_heading(u, v) < 360
        # A shortest path between the route's ends is never longer than the human route.
        sp = nyc.shortest_path(route.path[0], route.path[-1], turn_penalty_m=0.0)
        assert nyc.path_length_m(sp) <= nyc.path_length_m(route.path) + 1e-6
        # The instructions name shops along the way; they must be landmarks next to the path.
        near = {p.name for i in route.path for p in nyc.pois_near(*nyc.latlng(i), 40.0)}
        assert {"Happy Socks", "Cole Haan", "Canada Goose Flagship Store"} <= near

    def test_unseen_area(self, nyc: CityMap) -> None:
        assert nyc.in_area(40.7259, -73.9972, "unseen")  # SoHo, inside the held-out box
        assert not nyc.in_area(40.7580, -73.9855, "unseen")  # Times Square
        by_split: dict[str, list[bool]] = {}
        for r in nyc.routes:
            by_split.setdefault(r.split, []).append(r.crosses_unseen)
            assert r.crosses_unseen == any(nyc.in_area(*nyc.latlng(i), "unseen") for i in r.path)
        assert all(by_split["test_unseen"])
        assert not any(by_split["test_seen"])
        with pytest.raises(KeyError, match="unseen"):
            nyc.in_area(40.7, -74.0, "nowhere")

    def test_graph_queries(self, nyc: CityMap) -> None:
        i = nyc.node_index(KNOWN_ROUTE_START)
        outs = nyc.out_edges(i)
        assert [j for j, _ in outs] == nyc.neighbors(i)
        for j, h in outs:
            assert nyc.edge_heading(i, j) == h
        with pytest.raises(KeyError):
            nyc.edge_heading(i, i)
        with pytest.raises(IndexError):
            nyc.neighbors(nyc.num_nodes)
        assert nyc.shortest_path(i, i) == [i]
        assert nyc.is_intersection(i) == bool(nyc.intersection[i])
        assert "Starbucks" in {p.name for p in nyc.pois if not p.unique_name}
        assert nyc.junction_of(i) is None or nyc.is_intersection(i)


def test_unreachable_raises() -> None:
    # The shipped graphs are connected, so use a tiny synthetic bundle with an isolated node.
    bundle = {
        "schema": 1,
        "name": "toy",
        "attribution": "OpenStreetMap contributors",
        "licence": "test",
        "nodes": {
            "id": ["a", "b", "c"],
            "lat": [0.0, 0.0, 1.0],
            "lng": [0.0, 0.001, 0.0],
            "intersection": [0, 0, 0],
            "junction": [-1, -1, -1],
        },
        "edges": {"src": [0, 1], "dst": [1, 0], "heading": [90.0, 270.0]},
        "pois": {
            k: []
            for k in ("name", "lat", "lng", "kind", "category", "node", "dist_m", "unique_name", "landmark")
        },
    }
    toy = CityMap(bundle)
    assert toy.shortest_path(0, 1) == [0, 1]
    with pytest.raises(NoPathError):
        toy.shortest_path(0, 2)
