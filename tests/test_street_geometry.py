"""Tests for the pure geodesy / direction helpers in sftrl.street_view.geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sftrl.street_view.geometry import (
    EARTH_RADIUS_M,
    GridIndex,
    LocalProjection,
    bearing_deg,
    compass_name,
    destination_point,
    haversine_m,
    haversine_m_array,
    heading_delta,
    relative_name,
    turn_name,
)


class TestHeadingDelta:
    def test_wraparound_is_small_right_turn(self) -> None:
        # The official V-IRL code gets this wrap wrong (350 -> 10 must be +20, i.e. to the right).
        assert heading_delta(350, 10) == pytest.approx(20)
        assert heading_delta(10, 350) == pytest.approx(-20)
        assert turn_name(heading_delta(350, 80)) == "right"
        assert turn_name(heading_delta(80, 350)) == "left"

    @pytest.mark.parametrize(
        ("a", "b", "expected"),
        [(0, 0, 0), (0, 90, 90), (90, 0, -90), (0, 180, 180), (180, 0, 180), (0, 181, -179), (720, -30, -30)],
    )
    def test_range_is_half_open(self, a: float, b: float, expected: float) -> None:
        d = heading_delta(a, b)
        assert -180 < d <= 180
        assert d == pytest.approx(expected)


@pytest.mark.parametrize(
    ("heading", "name"),
    [
        (0, "north"),
        (360, "north"),
        (-0.001, "north"),
        (22.49, "north"),
        (22.5, "northeast"),
        (45, "northeast"),
        (67.5, "east"),
        (90, "east"),
        (135, "southeast"),
        (180, "south"),
        (202.5, "southwest"),
        (270, "west"),
        (315, "northwest"),
        (337.49, "northwest"),
        (337.5, "north"),
        (-45, "northwest"),
    ],
)
def test_compass_name_boundaries(heading: float, name: str) -> None:
    assert compass_name(heading) == name


@pytest.mark.parametrize(
    ("delta", "name"),
    [
        (0, "front"),
        (22.49, "front"),
        (-22.5, "front"),
        (22.5, "right front"),
        (45, "right front"),
        (90, "right"),
        (135, "right behind"),
        (180, "behind"),
        (-180, "behind"),
        (-135, "left behind"),
        (-90, "left"),
        (-45, "left front"),
        (315, "left front"),
    ],
)
def test_relative_sectors(delta: float, name: str) -> None:
    assert relative_name(delta) == name


@pytest.mark.parametrize(
    ("delta", "name"),
    [
        (0, "straight"),
        (22.4, "straight"),
        (-22.4, "straight"),
        (22.5, "slightly right"),
        (-45, "slightly left"),
        (67.5, "right"),
        (90, "right"),
        (-90, "left"),
        (157.5, "right"),
        (-157.5, "left"),
        (158, "back"),
        (180, "back"),
        (-170, "back"),
        (270, "left"),
    ],
)
def test_turn_name_thresholds(delta: float, name: str) -> None:
    assert turn_name(delta) == name


def test_haversine_known_distances() -> None:
    # One degree of latitude along a meridian is pi/180 * R.
    assert haversine_m(0, 0, 1, 0) == pytest.approx(math.pi / 180 * EARTH_RADIUS_M, rel=1e-9)
    # Paris (Notre-Dame area) to London (Charing Cross): ~343.5 km great-circle.
    assert haversine_m(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343_560, abs=500)
    assert haversine_m(40.7, -74.0, 40.7, -74.0) == 0.0
    arr = haversine_m_array([0, 48.8566], [0, 2.3522], [1, 51.5074], [0, -0.1278])
    assert arr[0] == pytest.approx(haversine_m(0, 0, 1, 0))
    assert arr[1] == pytest.approx(haversine_m(48.8566, 2.3522, 51.5074, -0.1278))


def test_bearing_cardinal_directions() -> None:
    assert bearing_deg(0, 0, 1, 0) == pytest.approx(0)
    assert bearing_deg(0, 0, 0, 1) == pytest.approx(90)
    assert bearing_deg(0, 0, -1, 0) == pytest.approx(180)
    assert bearing_deg(0, 0, 0, -1) == pytest.approx(270)


@pytest.mark.parametrize("bearing", [0.0, 63.0, 181.0, 300.0])
def test_destination_point_round_trip(bearing: float) -> None:
    lat, lng = destination_point(40.75, -73.99, bearing, 1234.0)
    assert haversine_m(40.75, -73.99, lat, lng) == pytest.approx(1234.0, rel=1e-9)
    assert heading_delta(bearing, bearing_deg(40.75, -73.99, lat, lng)) == pytest.approx(0, abs=1e-6)


def test_local_projection_matches_haversine_at_city_scale() -> None:
    rng = np.random.default_rng(0)
    lat = 60.17 + rng.uniform(-0.02, 0.02, 200)
    lng = 24.94 + rng.uniform(-0.04, 0.04, 200)
    proj = LocalProjection.around(lat, lng)
    x, y = proj.to_xy(lat, lng)
    planar = np.hypot(x[1:] - x[:-1], y[1:] - y[:-1])
    exact = haversine_m_array(lat[:-1], lng[:-1], lat[1:], lng[1:])
    assert np.allclose(planar, exact, rtol=5e-3)
    back_lat, back_lng = proj.to_latlng(x, y)
    assert np.allclose(back_lat, lat) and np.allclose(back_lng, lng)


class TestGridIndex:
    @pytest.fixture(scope="class")
    def points(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(42)
        # Clustered + uniform points, including exact duplicates, to exercise empty and crowded cells.
        x = np.concatenate([rng.uniform(-2000, 2000, 1500), rng.normal(300, 20, 500), [5.0, 5.0]])
        y = np.concatenate([rng.uniform(-1000, 1000, 1500), rng.normal(-100, 20, 500), [7.0, 7.0]])
        return x, y

    def test_nearest_equals_brute_force(self, points: tuple[np.ndarray, np.ndarray]) -> None:
        x, y = points
        index = GridIndex(x, y, cell_m=50.0)
        rng = np.random.default_rng(1)
        queries = [
            *zip(rng.uniform(-2500, 2500, 200), rng.uniform(-1500, 1500, 200), strict=True),
            (5.0, 7.0),
        ]
        queries.append((10_000.0, -8_000.0))  # far outside the data: many empty rings
        for qx, qy in queries:
            d = np.hypot(x - qx, y - qy)
            i, dist = index.nearest(qx, qy)
            assert dist == pytest.approx(d.min())
            assert i == int(np.argmin(d))  # ties (the duplicate pair) resolve to the lower index

    def test_within_equals_brute_force(self, points: tuple[np.ndarray, np.ndarray]) -> None:
        x, y = points
        index = GridIndex(x, y, cell_m=37.0)
        rng = np.random.default_rng(2)
        for qx, qy, r in zip(
            rng.uniform(-2500, 2500, 100),
            rng.uniform(-1500, 1500, 100),
            rng.uniform(0, 400, 100),
            strict=True,
        ):
            d = np.hypot(x - qx, y - qy)
            got = index.within(qx, qy, r)
            assert set(got.tolist()) == set(np.flatnonzero(d <= r).tolist())
            assert np.all(np.diff(d[got]) >= 0)  # nearest first

    def test_empty_index(self) -> None:
        index = GridIndex([], [])
        assert len(index) == 0
        assert index.within(0, 0, 100).size == 0
        with pytest.raises(ValueError):
            index.nearest(0, 0)
