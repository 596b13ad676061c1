"""Pure geodesy and direction helpers for street graphs: distances, bearings, names, a grid index."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "EARTH_RADIUS_M",
    "COMPASS_NAMES",
    "RELATIVE_NAMES",
    "TURN_SLIGHT_MIN_DEG",
    "TURN_FULL_MIN_DEG",
    "TURN_BACK_MIN_DEG",
    "GridIndex",
    "LocalProjection",
    "bearing_deg",
    "compass_name",
    "destination_point",
    "haversine_m",
    "haversine_m_array",
    "heading_delta",
    "relative_name",
    "turn_name",
]

# Mean Earth radius (IUGG); the spherical model is accurate to ~0.3 %, far below GPS noise of panoramas.
EARTH_RADIUS_M: Final = 6_371_008.8

# Clockwise from north, one name per 45° sector centred on the name's exact bearing.
COMPASS_NAMES: Final = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")

# Clockwise from straight ahead, same 45° sectoring as the compass (delta 0 = "front", +90 = "right").
RELATIVE_NAMES: Final = (
    "front",
    "right front",
    "right",
    "right behind",
    "behind",
    "left behind",
    "left",
    "left front",
)

# How prompts say where a thing lies ("X is behind you", never "X is on your behind").
RELATIVE_PHRASES: Final = {
    "front": "in front of you",
    "right front": "ahead on your right",
    "right": "on your right",
    "right behind": "behind you on the right",
    "behind": "behind you",
    "left behind": "behind you on the left",
    "left": "on your left",
    "left front": "ahead on your left",
}

# turn_name thresholds on |delta| (degrees). V-IRL's relative action vocabulary only has
# "slightly left/right" (~45°) and "left/right" (~90°), so each name owns the band around its nominal
# angle: [0, 22.5) straight, [22.5, 67.5) slightly, [67.5, 157.5] left/right (sharp turns included,
# there is no "sharp" action), (157.5, 180] back (a U-turn).
TURN_SLIGHT_MIN_DEG: Final = 22.5
TURN_FULL_MIN_DEG: Final = 67.5
TURN_BACK_MIN_DEG: Final = 157.5


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in metres between two WGS84 points (scalar, pure ``math`` for speed)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lng2 - lng1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    # min() guards against h creeping above 1 by rounding for antipodal points.
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def haversine_m_array(
    lat1: npt.ArrayLike, lng1: npt.ArrayLike, lat2: npt.ArrayLike, lng2: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Vectorised :func:`haversine_m`; arguments broadcast like numpy arrays."""
    p1 = np.radians(np.asarray(lat1, dtype=np.float64))
    p2 = np.radians(np.asarray(lat2, dtype=np.float64))
    dl = np.radians(np.asarray(lng2, dtype=np.float64) - np.asarray(lng1, dtype=np.float64))
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(h)))


def bearing_deg(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Initial bearing from point 1 to point 2 in degrees [0, 360): 0 = north, 90 = east (clockwise)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lng2 - lng1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def destination_point(lat: float, lng: float, bearing: float, distance_m: float) -> tuple[float, float]:
    """Point reached from (lat, lng) after ``distance_m`` along the great circle with initial ``bearing``."""
    d = distance_m / EARTH_RADIUS_M
    b = math.radians(bearing)
    p1, l1 = math.radians(lat), math.radians(lng)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    # Normalise longitude to [-180, 180) so results compare equal to inputs near the antimeridian.
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0


def heading_delta(from_heading: float, to_heading: float) -> float:
    """Signed change from ``from_heading`` to ``to_heading`` wrapped to (-180, 180]; positive = right.

    350 -> 10 is +20 (a right turn), 10 -> 350 is -20 (left). An exact reversal is +180 by convention.
    """
    d = (to_heading - from_heading) % 360.0
    # `%` yields [0, 360); fold the upper half so the result lies in (-180, 180].
    return d - 360.0 if d > 180.0 else d


def _sector(angle: float, n: int) -> int:
    """Index of the n equal sectors (sector 0 centred on 0°) that contains ``angle``."""
    width = 360.0 / n
    # Half-sector shift centres sector 0 on 0°; boundaries belong to the clockwise-next sector.
    return int(((angle % 360.0) + width / 2) // width) % n


def compass_name(heading: float) -> str:
    """Eight-point compass name of a heading: 22.5 -> "northeast", 337.5 -> "north" (ties go clockwise)."""
    return COMPASS_NAMES[_sector(heading, 8)]


def relative_name(delta: float) -> str:
    """Where something at relative angle ``delta`` (0 = straight ahead, +90 = right) lies, in 45° sectors.

    Sector boundaries (±22.5, ±67.5, ±112.5, ±157.5) belong to the clockwise-next sector, matching
    :func:`compass_name`; e.g. +22.5 is "right front" and -22.5 is "front".
    """
    return RELATIVE_NAMES[_sector(delta, 8)]


def relative_phrase(relation: str) -> str:
    """English for "is <relation>" in a prompt: ``behind`` -> "behind you", ``left`` -> "on your left"."""
    return RELATIVE_PHRASES.get(relation.strip().lower(), f"on your {relation}")


def turn_name(delta: float) -> str:
    """Name of a turn by signed heading change ``delta`` (degrees, positive = right).

    Returns "straight" for |delta| < 22.5, "slightly left/right" below 67.5, "left/right" up to and
    including 157.5 (sharp turns have no own action in V-IRL), and "back" beyond (a U-turn).
    """
    d = heading_delta(0.0, delta)
    a = abs(d)
    if a < TURN_SLIGHT_MIN_DEG:
        return "straight"
    if a > TURN_BACK_MIN_DEG:
        return "back"
    side = "right" if d > 0 else "left"
    return f"slightly {side}" if a < TURN_FULL_MIN_DEG else side


class LocalProjection:
    """Equirectangular projection around an origin: lat/lng -> x (east) / y (north) metres.

    At city scale (< ~20 km) the distance error is well under 0.5 %, which is plenty for neighbour
    searches; callers that need exact distances re-check candidates with :func:`haversine_m`.
    """

    def __init__(self, lat0: float, lng0: float) -> None:
        self.lat0 = float(lat0)
        self.lng0 = float(lng0)
        self._ky = math.radians(1.0) * EARTH_RADIUS_M
        self._kx = self._ky * math.cos(math.radians(self.lat0))

    @classmethod
    def around(
        cls, lats: Sequence[float] | npt.ArrayLike, lngs: Sequence[float] | npt.ArrayLike
    ) -> LocalProjection:
        """Projection centred on the bounding-box centre of the given points."""
        la = np.asarray(lats, dtype=np.float64)
        ln = np.asarray(lngs, dtype=np.float64)
        return cls((float(la.min()) + float(la.max())) / 2, (float(ln.min()) + float(ln.max())) / 2)

    def to_xy(
        self, lat: npt.ArrayLike, lng: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Project (arrays of) lat/lng to x/y metres."""
        x = (np.asarray(lng, dtype=np.float64) - self.lng0) * self._kx
        y = (np.asarray(lat, dtype=np.float64) - self.lat0) * self._ky
        return x, y

    def to_latlng(
        self, x: npt.ArrayLike, y: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Inverse of :meth:`to_xy`."""
        lat = np.asarray(y, dtype=np.float64) / self._ky + self.lat0
        lng = np.asarray(x, dtype=np.float64) / self._kx + self.lng0
        return lat, lng


class GridIndex:
    """Uniform-grid spatial index over planar points (metres) for nearest / within-radius queries.

    Points are bucketed by cell once (a numpy sort); a query then scans only the few cells a circle
    can touch, so per-query cost is independent of the number of points for city-sized data.
    """

    def __init__(self, x: npt.ArrayLike, y: npt.ArrayLike, cell_m: float = 50.0) -> None:
        if cell_m <= 0:
            raise ValueError("cell_m must be positive")
        self.x = np.ascontiguousarray(x, dtype=np.float64)
        self.y = np.ascontiguousarray(y, dtype=np.float64)
        if self.x.shape != self.y.shape or self.x.ndim != 1:
            raise ValueError("x and y must be 1-D arrays of equal length")
        self.cell_m = float(cell_m)
        cx = np.floor(self.x / self.cell_m).astype(np.int64)
        cy = np.floor(self.y / self.cell_m).astype(np.int64)
        order = np.lexsort((cy, cx))
        self._order = order
        self._cells: dict[tuple[int, int], tuple[int, int]] = {}
        if len(order):
            keys = np.stack([cx[order], cy[order]], axis=1)
            change = np.flatnonzero(np.any(keys[1:] != keys[:-1], axis=1)) + 1
            starts = np.concatenate([[0], change])
            ends = np.concatenate([change, [len(order)]])
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                self._cells[(int(keys[s, 0]), int(keys[s, 1]))] = (s, e)
            self._cx_range = (int(cx.min()), int(cx.max()))
            self._cy_range = (int(cy.min()), int(cy.max()))
        else:
            self._cx_range = (0, -1)
            self._cy_range = (0, -1)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def _cell_members(self, ix: int, iy: int) -> npt.NDArray[np.int64] | None:
        span = self._cells.get((ix, iy))
        return None if span is None else self._order[span[0] : span[1]]

    def within(self, x: float, y: float, r: float) -> npt.NDArray[np.int64]:
        """Indices of points with planar distance <= r from (x, y), sorted by distance."""
        if r < 0 or not self._cells:
            return np.empty(0, dtype=np.int64)
        x0, x1 = int(math.floor((x - r) / self.cell_m)), int(math.floor((x + r) / self.cell_m))
        y0, y1 = int(math.floor((y - r) / self.cell_m)), int(math.floor((y + r) / self.cell_m))
        # Clip to occupied cells so a huge radius does not loop over empty space.
        x0, x1 = max(x0, self._cx_range[0]), min(x1, self._cx_range[1])
        y0, y1 = max(y0, self._cy_range[0]), min(y1, self._cy_range[1])
        parts = [
            m
            for ix in range(x0, x1 + 1)
            for iy in range(y0, y1 + 1)
            if (m := self._cell_members(ix, iy)) is not None
        ]
        if not parts:
            return np.empty(0, dtype=np.int64)
        cand = np.concatenate(parts)
        d2 = (self.x[cand] - x) ** 2 + (self.y[cand] - y) ** 2
        keep = d2 <= r * r
        cand, d2 = cand[keep], d2[keep]
        return cand[np.argsort(d2, kind="stable")]

    def nearest(self, x: float, y: float) -> tuple[int, float]:
        """Index of and planar distance to the point closest to (x, y); raises on an empty index."""
        if not self._cells:
            raise ValueError("nearest() on an empty GridIndex")
        ix, iy = int(math.floor(x / self.cell_m)), int(math.floor(y / self.cell_m))
        (cx0, cx1), (cy0, cy1) = self._cx_range, self._cy_range
        if not (cx0 - 2 <= ix <= cx1 + 2 and cy0 - 2 <= iy <= cy1 + 2):
            # Far outside the data: ring search would walk empty cells for ages; one vector pass is O(n).
            d2_all = (self.x - x) ** 2 + (self.y - y) ** 2
            k = int(np.argmin(d2_all))
            return k, float(math.sqrt(d2_all[k]))
        best_i, best_d2 = -1, math.inf
        # Grow square rings of cells; once a hit is found, a ring further out than the best distance
        # cannot contain anything closer, so stop there.
        max_ring = max(
            abs(ix - self._cx_range[0]),
            abs(ix - self._cx_range[1]),
            abs(iy - self._cy_range[0]),
            abs(iy - self._cy_range[1]),
        )
        for ring in range(max_ring + 1):
            if best_i >= 0 and (ring - 1) * self.cell_m > math.sqrt(best_d2):
                break
            for jx in range(ix - ring, ix + ring + 1):
                edge_x = jx in (ix - ring, ix + ring)
                for jy in range(iy - ring, iy + ring + 1) if edge_x else (iy - ring, iy + ring):
                    m = self._cell_members(jx, jy)
                    if m is None:
                        continue
                    d2 = (self.x[m] - x) ** 2 + (self.y[m] - y) ** 2
                    k = int(np.argmin(d2))
                    # Tie-break on the lower index so results are deterministic and match brute force.
                    if d2[k] < best_d2 or (d2[k] == best_d2 and int(m[k]) < best_i):
                        best_i, best_d2 = int(m[k]), float(d2[k])
        return best_i, math.sqrt(best_d2)
