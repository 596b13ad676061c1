"""The offline synthetic street view: a deterministic perspective drawing of the city data around a point.

What a view shows, for a request at (lat, lng, heading, fov):

* sky (a per-city gradient), a distant skyline (by absolute bearing, so it continues across views) and
  the ground;
* the real street graph within ``VIEW_RANGE_M``: every edge is a road strip on the ground, so the street
  ahead, side streets and the next intersection appear where the graph has them, in true perspective
  from a camera ``EYE_M`` above the street centre;
* building facades along both sides of every street (trimmed at intersections and wherever they would
  stand on another street), one building per ~10 m edge with height, colour and windows drawn from a
  hash of the city and node ids, in the city's style;
* at intersections: zebra crosswalks and a traffic-light pole on every approach;
* storefront signs with the real names of the POIs within ``sign_radius_m`` that lie inside the field
  of view, centred at the horizontal position of the POI's bearing and sized by its distance; the
  route's landmarks named in the request, and places within the rail's visibility radius, come first
  and are large enough to read.

Each city has its own style (palette, facade pattern, sign colours and shape, street width, trees), so
Helsinki, Baltimore or Singapore are a real visual shift from the NYC training views. Pure Pillow,
no global randomness: the same request gives byte-identical pixels. The world geometry around a node is
built once and cached; a 320 px view then costs a few milliseconds.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sftrl.street_view.city import CityMap, load_city
from sftrl.street_view.geometry import bearing_deg, haversine_m, heading_delta
from sftrl.street_view.provider import ViewRequest

__all__ = [
    "STYLES",
    "STYLE_VERSION",
    "CityStyle",
    "SignPlacement",
    "SyntheticProvider",
    "display_text",
    "layout_sign",
    "sign_font",
]

# Bump whenever the drawing changes, so disk caches keyed by cache_key() never serve stale pictures.
STYLE_VERSION: Final = 1
SIGN_RADIUS_M: Final = 60.0
# The V-IRL rail calls a landmark "visible" within 20 m (milestones: 25 m): signs this close are always
# drawn, large enough to read.
ALWAYS_SIGN_M: Final = 30.0
# Route landmarks named in the request get the same treatment this far out: a destination can stand up
# to ~50 m from the street node where the walk stops, and the instructions name it.
ROUTE_SIGN_M: Final = 50.0
MAX_SIGNS: Final = 6
VIEW_RANGE_M: Final = 130.0  # street geometry drawn this far; a skyline stands in beyond it
EYE_M: Final = 2.2  # camera height (Street View cameras sit on a car roof)
NEAR_M: Final = 0.4  # near clipping plane
SNAP_M: Final = 40.0  # a request farther than this from every node is "outside the city"
SKYLINE_M: Final = 200.0
SIGN_HEIGHT_M: Final = 3.6  # storefront sign height above the street
# Buildings are boxes this deep: a zero-thickness facade seen edge-on would stand like a spike.
BUILDING_DEPTH_M: Final = 10.0
SUN: Final = (0.55, -0.835)  # unit vector towards the sun (south-east-ish): faces are shaded by it


# --- styles --------------------------------------------------------------------------------------------

RGB = tuple[int, int, int]
SignShape = Literal["awning", "rounded", "board", "pill"]
WindowKind = Literal["sash", "grid", "band"]


@dataclass(frozen=True)
class CityStyle:
    """Colours and shapes that make one city look like itself."""

    name: str
    sky: tuple[RGB, RGB]  # zenith, horizon
    skyline: RGB
    ground: RGB  # sidewalks and everything that is not road
    road: RGB
    road_line: RGB
    dashed_line: bool
    road_half_m: float  # half the carriageway width
    sidewalk_m: float
    facades: tuple[RGB, ...]
    trim: RGB  # cornices, window frames
    window: RGB
    window_kind: WindowKind
    storefront: RGB
    floors: tuple[int, int]
    floor_m: float
    sign_bg: tuple[RGB, ...]
    sign_fg: RGB
    sign_border: RGB
    sign_shape: SignShape
    uppercase: bool
    tree: RGB
    tree_rate: float  # share of street edges with a tree
    skyline_m: tuple[float, float]


STYLES: dict[str, CityStyle] = {
    # Brick and brownstone walk-ups, dark awnings with white capitals, yellow centre line.
    "nyc": CityStyle(
        name="nyc",
        sky=((118, 160, 205), (200, 215, 228)),
        skyline=(150, 158, 172),
        ground=(152, 148, 140),
        road=(58, 58, 62),
        road_line=(232, 196, 52),
        dashed_line=False,
        road_half_m=6.0,
        sidewalk_m=4.0,
        facades=((146, 70, 52), (112, 74, 58), (163, 94, 68), (92, 66, 56), (128, 56, 44), (150, 140, 128)),
        trim=(60, 42, 36),
        window=(34, 40, 52),
        window_kind="sash",
        storefront=(40, 36, 34),
        floors=(4, 7),
        floor_m=3.3,
        sign_bg=((18, 64, 42), (22, 22, 26), (122, 22, 32), (20, 40, 96)),
        sign_fg=(250, 250, 244),
        sign_border=(236, 236, 228),
        sign_shape="awning",
        uppercase=True,
        tree=(62, 104, 52),
        tree_rate=0.12,
        skyline_m=(30.0, 90.0),
    ),
    # Pale plaster Jugend blocks, rounded light panels with dark blue text, overcast northern sky.
    "helsinki": CityStyle(
        name="helsinki",
        sky=((176, 186, 198), (226, 230, 234)),
        skyline=(188, 192, 196),
        ground=(170, 170, 166),
        road=(96, 98, 102),
        road_line=(246, 246, 246),
        dashed_line=True,
        road_half_m=5.0,
        sidewalk_m=3.5,
        facades=((230, 216, 178), (204, 214, 202), (236, 204, 172), (194, 204, 218), (222, 222, 210)),
        trim=(250, 250, 246),
        window=(66, 82, 96),
        window_kind="grid",
        storefront=(72, 80, 88),
        floors=(5, 6),
        floor_m=3.4,
        sign_bg=((238, 242, 250), (252, 246, 226)),
        sign_fg=(16, 36, 92),
        sign_border=(16, 36, 92),
        sign_shape="rounded",
        uppercase=False,
        tree=(84, 116, 70),
        tree_rate=0.15,
        skyline_m=(18.0, 30.0),
    ),
    # Red-brick rowhouses with white trim and marble steps, hand-painted cream boards.
    "baltimore": CityStyle(
        name="baltimore",
        sky=((128, 168, 214), (202, 220, 238)),
        skyline=(160, 150, 150),
        ground=(160, 146, 134),
        road=(72, 68, 66),
        road_line=(242, 242, 242),
        dashed_line=True,
        road_half_m=4.5,
        sidewalk_m=3.0,
        facades=((176, 58, 42), (152, 52, 46), (188, 78, 58), (134, 48, 42), (166, 70, 56)),
        trim=(246, 244, 236),
        window=(40, 36, 40),
        window_kind="sash",
        storefront=(62, 44, 40),
        floors=(2, 3),
        floor_m=3.2,
        sign_bg=((250, 222, 126), (246, 236, 204)),
        sign_fg=(64, 22, 12),
        sign_border=(64, 22, 12),
        sign_shape="board",
        uppercase=False,
        tree=(70, 110, 56),
        tree_rate=0.1,
        skyline_m=(12.0, 40.0),
    ),
    # White and glass towers, bright tropical sky, lush green trees, red/teal pill signs.
    "singapore": CityStyle(
        name="singapore",
        sky=((70, 150, 232), (176, 218, 246)),
        skyline=(170, 196, 214),
        ground=(184, 184, 174),
        road=(78, 80, 86),
        road_line=(250, 250, 250),
        dashed_line=True,
        road_half_m=7.0,
        sidewalk_m=4.5,
        facades=((236, 238, 240), (182, 212, 228), (222, 226, 232), (160, 192, 204), (246, 244, 236)),
        trim=(200, 206, 212),
        window=(58, 112, 152),
        window_kind="band",
        storefront=(46, 86, 110),
        floors=(8, 16),
        floor_m=3.6,
        sign_bg=((196, 28, 40), (0, 116, 128)),
        sign_fg=(255, 255, 255),
        sign_border=(255, 255, 255),
        sign_shape="pill",
        uppercase=False,
        tree=(34, 122, 48),
        tree_rate=0.65,
        skyline_m=(60.0, 160.0),
    ),
}
# Cities with a bundle but no style of their own, and places outside every city, use this one.
DEFAULT_STYLE: Final = "nyc"


# --- sign text -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def sign_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font (Aileron) at ``size`` px: no font file is shipped or read."""
    return ImageFont.load_default(size=size)


# The bundled font has ASCII glyphs only: everything else would be drawn as boxes. Letters that NFKD
# does not decompose get an explicit spelling; accents are dropped ("Pääposti" -> "Paaposti").
_FOLD = str.maketrans(
    {
        "ø": "o",
        "Ø": "O",
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
        "ł": "l",
        "Ł": "L",
        "đ": "d",
        "Đ": "D",
        "þ": "th",
        "Þ": "Th",
        "ı": "i",
        "–": "-",
        "—": "-",
        "‘": "'",
        "’": "'",
        "“": '"',
        "”": '"',
        "…": "...",
        "·": "-",
    }
)


def display_text(name: str, uppercase: bool = False) -> str:
    """The text a sign shows for ``name``: folded to the font's ASCII glyphs, optionally capitalised."""
    folded = unicodedata.normalize("NFKD", name.translate(_FOLD))
    text = " ".join("".join(c for c in folded if c.isascii() and c.isprintable()).split())
    return text.upper() if uppercase else text


def _fits(lines: tuple[str, ...], size: int, max_w: float) -> bool:
    f = sign_font(size)
    return all(f.getlength(line) <= max_w for line in lines)


def _truncate(line: str, size: int, max_w: float) -> str:
    f = sign_font(size)
    if f.getlength(line) <= max_w:
        return line
    while line and f.getlength(line.rstrip() + "...") > max_w:
        line = line[:-1]
    return line.rstrip() + "..."


@functools.lru_cache(maxsize=4096)
def layout_sign(text: str, size: int, min_size: int, max_w: int) -> tuple[tuple[str, ...], int]:
    """Wrap ``text`` into one or two lines that fit ``max_w`` px, shrinking the font from ``size`` down to
    ``min_size`` if needed and truncating with "..." only when even that is too wide."""
    words = text.split()
    splits = [(" ".join(words[:k]), " ".join(words[k:])) for k in range(1, len(words))]
    for s in range(size, min_size - 1, -1):
        if _fits((text,), s, max_w):
            return (text,), s
        f = sign_font(s)
        fitting = [sp for sp in splits if _fits(sp, s, max_w)]
        if fitting:
            # The most balanced split reads best.
            best = min(fitting, key=lambda sp: max(f.getlength(sp[0]), f.getlength(sp[1])))
            return best, s
    # Too long even at min_size: fill the first line greedily, cut the second.
    f = sign_font(min_size)
    first = words[0] if words else ""
    k = 1
    while k < len(words) and f.getlength(first + " " + words[k]) <= max_w:
        first += " " + words[k]
        k += 1
    rest = " ".join(words[k:])
    lines = (_truncate(first, min_size, max_w),) + ((_truncate(rest, min_size, max_w),) if rest else ())
    return lines, min_size


@dataclass(frozen=True)
class SignPlacement:
    """A storefront sign as drawn: whose it is, what it says and where (pixel boxes: left, top, right,
    bottom, exclusive right/bottom as in ``Image.crop``)."""

    name: str
    """The POI's (or route landmark's) real name."""
    text_lines: tuple[str, ...]
    """The text as drawn (ASCII-folded, wrapped, maybe capitalised)."""
    box: tuple[int, int, int, int]
    """The sign panel."""
    font_size: int
    text_origins: tuple[tuple[int, int], ...]
    """Where each line was drawn: ``ImageDraw.text(origin, line, font=sign_font(font_size))``."""
    distance_m: float
    delta_deg: float
    """Bearing of the place relative to the view heading (negative = left)."""


# --- world geometry ------------------------------------------------------------------------------------

XY = tuple[float, float]


@dataclass(frozen=True)
class _Wall:
    a: XY
    b: XY
    height: float
    floors: int
    colour: RGB
    seed: float  # 0..1, picks facade details
    dist_key: XY  # centre of the building, for depth sorting
    out: XY  # unit vector from the street into the building
    depth: float


@dataclass(frozen=True)
class _Prop:
    """A billboard standing on the ground: a tree or a traffic-light pole."""

    kind: Literal["tree", "light"]
    at: XY
    seed: float


@dataclass
class _Scene:
    """Everything around one node in metres east/north of ``origin``: ground polygons, walls, props."""

    origin: tuple[float, float]
    ground: list[tuple[RGB, tuple[XY, XY, XY, XY]]] = field(default_factory=list)
    walls: list[_Wall] = field(default_factory=list)
    props: list[_Prop] = field(default_factory=list)
    _ground_xy: np.ndarray | None = None

    def ground_xy(self) -> np.ndarray:
        """The ground quads as one (N, 4, 2) array, for culling them all at once per view."""
        if self._ground_xy is None:
            self._ground_xy = np.array([q for _, q in self.ground], dtype=np.float64).reshape(-1, 4, 2)
        return self._ground_xy


def _hash01(*parts: object) -> float:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _m_per_deg(lat: float) -> tuple[float, float]:
    return 111_320.0 * math.cos(math.radians(lat)), 110_540.0


def _seg_dist(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each of ``points`` (P, 2) to each segment a[i]-b[i] (S, 2): a (P, S) matrix."""
    ab = b - a
    denom = np.maximum((ab * ab).sum(1), 1e-9)
    ap = points[:, None, :] - a[None, :, :]
    t = np.clip((ap * ab[None]).sum(2) / denom[None], 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.sqrt(((points[:, None, :] - closest) ** 2).sum(2))


def _build_scene(
    style: CityStyle,
    key: str,
    origin: tuple[float, float],
    xy: dict[int, XY],
    edges: list[tuple[int, int]],
    degree: dict[int, int],
    intersections: list[int],
) -> _Scene:
    """Roads, facades, crosswalks and props of a street graph given in local metres."""
    st = style
    hw = st.road_half_m
    setback = hw + st.sidewalk_m
    scene = _Scene(origin)
    if not edges:
        return scene
    seg_a = np.array([xy[a] for a, _ in edges])
    seg_b = np.array([xy[b] for _, b in edges])

    def unit(a: XY, b: XY) -> tuple[float, float, float]:
        dx, dy = b[0] - a[0], b[1] - a[1]
        n = math.hypot(dx, dy) or 1.0
        return dx / n, dy / n, n

    # Roads: one strip per edge, stretched a little past both ends so bends have no notches.
    for a, b in edges:
        (ax, ay), (bx, by) = xy[a], xy[b]
        ux, uy, _ = unit(xy[a], xy[b])
        ex, ey = ux * min(hw, 2.5), uy * min(hw, 2.5)
        nx, ny = uy * hw, -ux * hw  # right normal
        scene.ground.append(
            (
                st.road,
                (
                    (ax - ex - nx, ay - ey - ny),
                    (bx + ex - nx, by + ey - ny),
                    (bx + ex + nx, by + ey + ny),
                    (ax - ex + nx, ay - ey + ny),
                ),
            )
        )
    # Centre line, kept out of intersections (crosswalks go there).
    lw = 0.12
    for a, b in edges:
        ux, uy, n = unit(xy[a], xy[b])
        t0 = hw + 3.5 if degree.get(a, 2) >= 3 else 0.0
        t1 = n - (hw + 3.5 if degree.get(b, 2) >= 3 else 0.0)
        if st.dashed_line:
            t0, t1 = max(t0, n * 0.25), min(t1, n * 0.75)
        if t1 - t0 < 0.5:
            continue
        (ax, ay) = xy[a]
        nx, ny = uy * lw, -ux * lw
        p0, p1 = (ax + ux * t0, ay + uy * t0), (ax + ux * t1, ay + uy * t1)
        offsets = (-2.2, 2.2) if not st.dashed_line else (0.0,)
        for o in offsets:
            ox, oy = nx * o, ny * o
            scene.ground.append(
                (
                    st.road_line,
                    (
                        (p0[0] + ox - nx, p0[1] + oy - ny),
                        (p1[0] + ox - nx, p1[1] + oy - ny),
                        (p1[0] + ox + nx, p1[1] + oy + ny),
                        (p0[0] + ox + nx, p0[1] + oy + ny),
                    ),
                )
            )
    # Crosswalks and traffic lights on every approach of every intersection.
    out_dirs: dict[int, list[tuple[float, float]]] = {}
    for a, b in edges:
        ux, uy, _ = unit(xy[a], xy[b])
        out_dirs.setdefault(a, []).append((ux, uy))
        out_dirs.setdefault(b, []).append((-ux, -uy))
    stripe_w = 0.6
    candidates: list[_Prop] = []
    incident = np.array([[a, b] for a, b in edges])
    seg_dir = (seg_b - seg_a) / np.maximum(np.hypot(*(seg_b - seg_a).T), 1e-9)[:, None]
    for node in intersections:
        cx, cy = xy[node]
        others = ~(incident == node).any(1)
        for k, (ux, uy) in enumerate(out_dirs.get(node, [])):
            rx, ry = uy, -ux
            pole = (cx + ux * (hw + 3.0) + rx * (hw + 0.8), cy + uy * (hw + 3.0) + ry * (hw + 0.8))
            candidates.append(_Prop("light", pole, _hash01(key, "light", node, k)))
            # No crosswalk where the approach runs straight into another street (clustered junctions,
            # divided roads): the stripes would lie across that street.
            # Streets along the approach (its own continuation) do not count.
            crossing = others & (np.abs(seg_dir @ np.array([ux, uy])) < 0.5)
            mid = np.array([[cx + ux * (hw + 2.1), cy + uy * (hw + 2.1)]])
            if crossing.any() and _seg_dist(mid, seg_a[crossing], seg_b[crossing]).min() < hw + 1.0:
                continue
            s0, s1 = hw + 0.8, hw + 3.4
            t = -hw + 0.4
            while t + stripe_w <= hw - 0.3:
                scene.ground.append(
                    (
                        (236, 236, 232),
                        (
                            (cx + ux * s0 + rx * t, cy + uy * s0 + ry * t),
                            (cx + ux * s1 + rx * t, cy + uy * s1 + ry * t),
                            (cx + ux * s1 + rx * (t + stripe_w), cy + uy * s1 + ry * (t + stripe_w)),
                            (cx + ux * s0 + rx * (t + stripe_w), cy + uy * s0 + ry * (t + stripe_w)),
                        ),
                    )
                )
                t += 2 * stripe_w

    # Facades on both sides of every edge, trimmed back from intersections so side streets open up.
    raw: list[tuple[int, int, int, int, XY, XY]] = []
    for i, (a, b) in enumerate(edges):
        ux, uy, n = unit(xy[a], xy[b])
        t0 = setback + 1.0 if degree.get(a, 2) >= 3 else 0.0
        t1 = n - (setback + 1.0 if degree.get(b, 2) >= 3 else 0.0)
        if t1 - t0 < 1.0:
            continue
        (ax, ay) = xy[a]
        for side in (1, -1):
            nx, ny = uy * setback * side, -ux * setback * side
            raw.append(
                (
                    i,
                    a,
                    b,
                    side,
                    (ax + ux * t0 + nx, ay + uy * t0 + ny),
                    (ax + ux * t1 + nx, ay + uy * t1 + ny),
                )
            )
        if _hash01(key, "tree", a, b) < st.tree_rate:
            side = 1 if _hash01(key, "tree-side", a, b) < 0.5 else -1
            tm = (t0 + t1) / 2
            d = hw + st.sidewalk_m * 0.45
            candidates.append(
                _Prop(
                    "tree",
                    (ax + ux * tm + uy * d * side, ay + uy * tm - ux * d * side),
                    _hash01(key, "tree-h", a, b),
                )
            )
    if raw:
        # Sample each wall every metre and keep its longest stretch that stands on no other street.
        p = np.array([r[4] for r in raw])
        q = np.array([r[5] for r in raw])
        own = np.array([r[0] for r in raw])
        length = np.hypot(*(q - p).T)
        k = np.maximum(2, length.astype(np.int64) + 1)
        starts = np.concatenate(([0], np.cumsum(k)[:-1]))
        wall_of = np.repeat(np.arange(len(raw)), k)
        t = (np.arange(int(k.sum())) - starts[wall_of]) / (k[wall_of] - 1)
        pts = p[wall_of] + t[:, None] * (q - p)[wall_of]
        # Exact distances only for (wall, street) pairs whose midpoints are close enough to matter.
        seg_len = np.hypot(*(seg_b - seg_a).T)
        mid_d = np.hypot(*(((p + q) / 2)[:, None, :] - ((seg_a + seg_b) / 2)[None, :, :]).transpose(2, 0, 1))
        near = mid_d < (length[:, None] + seg_len[None, :]) / 2 + setback
        near[np.arange(len(raw)), own] = False
        pw, ps = np.nonzero(near)
        ok = np.ones(len(pts), dtype=bool)
        if len(pw):
            # Expand each pair to all samples of its wall.
            reps = k[pw]
            sample = np.repeat(starts[pw], reps) + (
                np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
            )
            seg = np.repeat(ps, reps)
            a_, ab = seg_a[seg], seg_b[seg] - seg_a[seg]
            ap = pts[sample] - a_
            tt = np.clip((ap * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-9), 0.0, 1.0)
            d = np.hypot(*(ap - tt[:, None] * ab).T)
            bad = sample[d < setback - 0.5]
            ok[bad] = False
        ok_l = ok.tolist()
        for w, (_, a, b, side, _, _) in enumerate(raw):
            flags = ok_l[starts[w] : starts[w] + k[w]]
            best, cur, start, best_start = 0, 0, 0, 0
            for j, f in enumerate(flags):
                if f:
                    if cur == 0:
                        start = j
                    cur += 1
                    if cur > best:
                        best, best_start = cur, start
                else:
                    cur = 0
            if best < 4:  # slivers of wall would stand like spikes
                continue
            i0, i1 = int(starts[w]) + best_start, int(starts[w]) + best_start + best - 1
            pa: XY = (float(pts[i0, 0]), float(pts[i0, 1]))
            pb: XY = (float(pts[i1, 0]), float(pts[i1, 1]))
            ux, uy, _ = unit(pa, pb)
            out = (uy * side, -ux * side)
            # Keyed by node ids (edges are (low, high)), so a building looks the same from every node.
            h = _hash01(key, "bldg", a, b, side)
            lo, hi = st.floors
            floors = lo + min(hi - lo, int(_hash01(key, "floors", h) * (hi - lo + 1)))
            colour = st.facades[int(h * len(st.facades)) % len(st.facades)]
            scene.walls.append(
                _Wall(
                    pa,
                    pb,
                    floors * st.floor_m + 0.6,
                    floors,
                    colour,
                    h,
                    (
                        (pa[0] + pb[0]) / 2 + out[0] * BUILDING_DEPTH_M / 2,
                        (pa[1] + pb[1]) / 2 + out[1] * BUILDING_DEPTH_M / 2,
                    ),
                    out,
                    BUILDING_DEPTH_M,
                )
            )
    if candidates:
        pts = np.array([c.at for c in candidates])
        clear = (_seg_dist(pts, seg_a, seg_b).min(1) > hw + 0.3).tolist()
        scene.props = [c for c, ok_ in zip(candidates, clear, strict=True) if ok_]
    scene.ground_xy()  # built now, while the scene is private to this thread
    return scene


# --- the renderer --------------------------------------------------------------------------------------


def _clip_near(poly: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """Sutherland-Hodgman clip of a camera-space polygon (x, z, height) to z >= NEAR_M."""
    out: list[tuple[float, float, float]] = []
    n = len(poly)
    for i in range(n):
        cur, nxt = poly[i], poly[(i + 1) % n]
        cin, nin = cur[1] >= NEAR_M, nxt[1] >= NEAR_M
        if cin:
            out.append(cur)
        if cin != nin:
            t = (NEAR_M - cur[1]) / (nxt[1] - cur[1])
            out.append(
                (cur[0] + t * (nxt[0] - cur[0]), NEAR_M, cur[2] + t * (nxt[2] - cur[2]))  # on the plane
            )
    return out


def _shade(c: RGB, k: float) -> RGB:
    return (
        max(0, min(255, int(c[0] * k))),
        max(0, min(255, int(c[1] * k))),
        max(0, min(255, int(c[2] * k))),
    )


class _Camera:
    """A pinhole camera at (x, y) metres of a scene, looking along ``heading`` (deg clockwise from north)."""

    def __init__(self, x: float, y: float, heading: float, fov: float, w: int, h: int, pitch: float) -> None:
        self.x, self.y = x, y
        r = math.radians(heading)
        self.sin, self.cos = math.sin(r), math.cos(r)
        self.w, self.h = w, h
        self.f = (w / 2) / math.tan(math.radians(fov) / 2)
        # Looking up moves the horizon down; kept inside the frame so sky and street both show.
        self.horizon = min(h * 0.92, max(h * 0.08, h / 2 + self.f * math.tan(math.radians(pitch))))

    def cam(self, p: XY, height: float = 0.0) -> tuple[float, float, float]:
        dx, dy = p[0] - self.x, p[1] - self.y
        return dx * self.cos - dy * self.sin, dx * self.sin + dy * self.cos, height

    def project(self, c: tuple[float, float, float]) -> tuple[float, float]:
        x, z, hgt = c
        return self.w / 2 + self.f * x / z, self.horizon + self.f * (EYE_M - hgt) / z

    def visible_quads(self, quads: np.ndarray) -> list[int]:
        """Indices of the ground quads (N, 4, 2) that may show: not wholly behind the camera, nor wholly
        beyond one side of the field of view."""
        if not len(quads):
            return []
        dx, dy = quads[..., 0] - self.x, quads[..., 1] - self.y
        x, z = dx * self.cos - dy * self.sin, dx * self.sin + dy * self.cos
        lim = (self.w / 2) / self.f
        zc = np.maximum(z, NEAR_M)
        keep = (z >= NEAR_M).any(1) & ~(x > lim * zc).all(1) & ~(x < -lim * zc).all(1)
        return np.flatnonzero(keep).tolist()

    def polygon(self, cam_pts: list[tuple[float, float, float]]) -> list[tuple[float, float]] | None:
        clipped = _clip_near(cam_pts)
        if len(clipped) < 3:
            return None
        pts = [self.project(c) for c in clipped]
        xs = [p[0] for p in pts]
        if max(xs) < 0 or min(xs) > self.w:
            return None
        return pts


class SyntheticProvider:
    """Draws street views from a shipped city bundle: the default, offline street-view provider.

    ``SyntheticProvider(city)`` (what ``make_provider("synthetic", city=...)`` builds) renders the city of
    ``request.city`` when a request names one, else ``city``. Options: ``sign_radius_m`` (POIs drawn as
    signs within this distance), ``max_signs`` (per view, besides the always-drawn near ones) and
    ``style`` (draw every city in one named style, e.g. NYC streets in the Helsinki look).
    """

    name = "synthetic"

    def __init__(
        self,
        city: str = "nyc",
        *,
        sign_radius_m: float = SIGN_RADIUS_M,
        max_signs: int = MAX_SIGNS,
        style: str | None = None,
        scene_cache_size: int = 256,
    ) -> None:
        if style is not None and style not in STYLES:
            raise ValueError(f"unknown style {style!r}; choose one of: {', '.join(STYLES)}")
        if sign_radius_m <= 0 or max_signs < 0:
            raise ValueError("sign_radius_m must be > 0 and max_signs >= 0")
        self.city_name = city.strip().lower()
        self.sign_radius_m = float(sign_radius_m)
        self.max_signs = int(max_signs)
        self.style_override = style
        self._scenes: OrderedDict[tuple[str, int], _Scene] = OrderedDict()
        self._scene_cache_size = scene_cache_size
        self._sky: dict[tuple[str, int, int], Image.Image] = {}
        # Envs may share a provider across threads; the caches are the only shared mutable state.
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for process pools: the lock is rebuilt and the caches refill on the other side.
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_scenes"] = OrderedDict()
        state["_sky"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- public API ------------------------------------------------------------------------------------
    def style_for(self, city: str | None) -> CityStyle:
        """The style a request for ``city`` is drawn in."""
        name = self.style_override or (city or self.city_name).strip().lower()
        return STYLES.get(name, STYLES[DEFAULT_STYLE])

    def cache_key(self, request: ViewRequest) -> str:
        city = (request.city or self.city_name).strip().lower()
        marks = hashlib.sha256(
            ";".join(f"{n}@{la:.6f},{ln:.6f}" for n, la, ln in request.landmarks).encode()
        ).hexdigest()[:12]
        opts = f"r{self.sign_radius_m:g}-n{self.max_signs}-s{self.style_override or city}"
        return (
            f"synthetic/v{STYLE_VERSION}/{city}/{opts}/n{request.node}/{request.lat:.6f},{request.lng:.6f}/"
            f"h{round(request.heading % 360.0, 2) % 360.0:.2f}/f{max(round(request.fov, 2), 0.01):.2f}/"
            f"p{request.pitch:.2f}/"
            f"{request.width}x{request.height}/lm{marks}"
        )

    def get_view(self, request: ViewRequest) -> Image.Image:
        return self.render(request)[0]

    def render(self, request: ViewRequest) -> tuple[Image.Image, list[SignPlacement]]:
        """The view and every sign drawn in it."""
        # Drawn from the same rounded fields cache_key() names, so equal keys mean equal pixels.
        request = request.model_copy(
            update={
                "lat": round(request.lat, 6),
                "lng": round(request.lng, 6),
                "heading": round(request.heading % 360.0, 2) % 360.0,
                "fov": max(round(request.fov, 2), 0.01),
                "pitch": round(request.pitch, 2),
            }
        )
        city_name = (request.city or self.city_name).strip().lower()
        style = self.style_for(city_name)
        city = _try_city(city_name)
        scene = self._scene_for(city, city_name, style, request)
        w, h = request.width, request.height
        mx, my = _m_per_deg(scene.origin[0])
        cam = _Camera(
            (request.lng - scene.origin[1]) * mx,
            (request.lat - scene.origin[0]) * my,
            request.heading % 360.0,
            request.fov,
            w,
            h,
            request.pitch,
        )
        img = Image.new("RGB", (w, h), style.ground)
        img.paste(self._sky_image(style, w, int(cam.horizon)), (0, 0))
        draw = ImageDraw.Draw(img)
        self._draw_skyline(draw, cam, style, city_name, request.heading % 360.0, request.fov)
        for i in cam.visible_quads(scene.ground_xy()):
            colour, poly = scene.ground[i]
            pts = cam.polygon([cam.cam(p) for p in poly])
            if pts is not None:
                draw.polygon(pts, fill=colour)
        self._draw_upright(draw, cam, scene, style)
        signs = self._draw_signs(draw, cam, style, city, request)
        return img, signs

    # -- scene -----------------------------------------------------------------------------------------
    def _scene_for(
        self, city: CityMap | None, city_name: str, style: CityStyle, request: ViewRequest
    ) -> _Scene:
        node = _locate(city, request)
        if city is None or node is None:
            # Anchored at the request itself, so it is not cached under a node.
            return _empty_scene(style, request.lat, request.lng)
        key = (f"{city_name}:{style.name}", node)
        with self._lock:
            scene = self._scenes.get(key)
            if scene is not None:
                self._scenes.move_to_end(key)
                return scene
        scene = _city_scene(city, city_name, style, node)
        with self._lock:
            self._scenes[key] = scene
            if len(self._scenes) > self._scene_cache_size:
                self._scenes.popitem(last=False)
        return scene

    # -- drawing ---------------------------------------------------------------------------------------
    def _sky_image(self, style: CityStyle, w: int, horizon: int) -> Image.Image:
        key = (style.name, w, horizon)
        sky = self._sky.get(key)
        if sky is None:
            (r0, g0, b0), (r1, g1, b1) = style.sky
            n = max(horizon, 1)
            col = Image.new("RGB", (1, n))
            col.putdata(
                [
                    (
                        round(r0 + (r1 - r0) * y / max(n - 1, 1)),
                        round(g0 + (g1 - g0) * y / max(n - 1, 1)),
                        round(b0 + (b1 - b0) * y / max(n - 1, 1)),
                    )
                    for y in range(n)
                ]
            )
            sky = col.resize((w, n), Image.Resampling.NEAREST)
            with self._lock:
                if len(self._sky) > 64:
                    self._sky.clear()
                self._sky[key] = sky
        return sky

    def _draw_skyline(
        self, draw: ImageDraw.ImageDraw, cam: _Camera, style: CityStyle, city: str, heading: float, fov: float
    ) -> None:
        # Distant blocks by absolute bearing (3° each), so neighbouring views continue one another.
        step = 3.0
        first = math.floor((heading - fov / 2 - step) / step)
        last = math.ceil((heading + fov / 2 + step) / step)
        lo, hi = style.skyline_m
        for k in range(first, last + 1):
            b0, b1 = k * step, (k + 1) * step
            d0, d1 = heading_delta(heading, b0), heading_delta(heading, b1)
            if d1 < d0 or abs(d0) >= 89 or abs(d1) >= 89:
                continue
            hgt = lo + (hi - lo) * _hash01(city, "sky", k % 120)
            top = cam.horizon - cam.f * (hgt - EYE_M) / SKYLINE_M
            x0 = cam.w / 2 + cam.f * math.tan(math.radians(d0))
            x1 = cam.w / 2 + cam.f * math.tan(math.radians(d1))
            draw.rectangle([x0, top, x1, cam.horizon], fill=_shade(style.skyline, 0.94 + 0.1 * (k % 2)))

    def _draw_upright(self, draw: ImageDraw.ImageDraw, cam: _Camera, scene: _Scene, style: CityStyle) -> None:
        items: list[tuple[float, _Wall | _Prop]] = []
        for wall in scene.walls:
            ca, cb = cam.cam(wall.a), cam.cam(wall.b)
            if ca[1] < NEAR_M and cb[1] < NEAR_M:
                continue
            # Outside the horizontal field of view entirely (both ends beyond the same edge)?
            if ca[1] > NEAR_M and cb[1] > NEAR_M:
                ua, ub = ca[0] / ca[1], cb[0] / cb[1]
                lim = (cam.w / 2) / cam.f
                if (ua > lim and ub > lim) or (ua < -lim and ub < -lim):
                    continue
            mid = cam.cam(wall.dist_key)
            items.append((mid[0] ** 2 + mid[1] ** 2, wall))
        for prop in scene.props:
            c = cam.cam(prop.at)
            if c[1] < 1.0 or abs(c[0] / c[1]) > (cam.w / 2 + 40) / cam.f:
                continue
            items.append((c[0] ** 2 + c[1] ** 2, prop))
        items.sort(key=lambda it: -it[0])
        for _, item in items:
            if isinstance(item, _Wall):
                self._draw_wall(draw, cam, item, style)
            else:
                self._draw_prop(draw, cam, item, style)

    def _draw_wall(self, draw: ImageDraw.ImageDraw, cam: _Camera, wall: _Wall, style: CityStyle) -> None:
        """A building box: its visible end faces plain, its street (or back) face with windows."""
        a, b, (ox, oy), d = wall.a, wall.b, wall.out, wall.depth
        a2, b2 = (a[0] + ox * d, a[1] + oy * d), (b[0] + ox * d, b[1] + oy * d)
        vx, vy = cam.x - a[0], cam.y - a[1]
        ux, uy = b[0] - a[0], b[1] - a[1]
        n = math.hypot(ux, uy) or 1.0
        ux, uy = ux / n, uy / n
        H = wall.height
        for p, q, nx, ny, visible in (
            (a, a2, -ux, -uy, vx * -ux + vy * -uy > 0),
            (b, b2, ux, uy, (cam.x - b[0]) * ux + (cam.y - b[1]) * uy > 0),
        ):
            if visible:
                cp, cq = cam.cam(p), cam.cam(q)
                poly = cam.polygon(
                    [(cp[0], cp[1], 0.0), (cq[0], cq[1], 0.0), (cq[0], cq[1], H), (cp[0], cp[1], H)]
                )
                if poly is not None:
                    draw.polygon(poly, fill=_shade(wall.colour, 0.8 + 0.2 * (nx * SUN[0] + ny * SUN[1])))
        if vx * ox + vy * oy < 0:
            self._draw_facade(
                draw, cam, wall, style, a, b, _shade(wall.colour, 0.92 - 0.12 * (ox * SUN[0] + oy * SUN[1]))
            )
        elif vx * ox + vy * oy > d:
            self._draw_facade(
                draw, cam, wall, style, a2, b2, _shade(wall.colour, 0.92 + 0.12 * (ox * SUN[0] + oy * SUN[1]))
            )

    def _draw_facade(
        self,
        draw: ImageDraw.ImageDraw,
        cam: _Camera,
        wall: _Wall,
        style: CityStyle,
        a: XY,
        b: XY,
        colour: RGB,
    ) -> None:
        ca, cb = cam.cam(a), cam.cam(b)
        H = wall.height
        body = cam.polygon([(ca[0], ca[1], 0.0), (cb[0], cb[1], 0.0), (cb[0], cb[1], H), (ca[0], ca[1], H)])
        if body is None:
            return
        draw.polygon(body, fill=colour)

        def quad(u0: float, u1: float, v0: float, v1: float) -> list[tuple[float, float]] | None:
            # A rectangle on the wall: u along it (0..1), v up it (metres).
            xa, za = ca[0] + (cb[0] - ca[0]) * u0, ca[1] + (cb[1] - ca[1]) * u0
            xb, zb = ca[0] + (cb[0] - ca[0]) * u1, ca[1] + (cb[1] - ca[1]) * u1
            if za < NEAR_M or zb < NEAR_M:
                return cam.polygon([(xa, za, v0), (xb, zb, v0), (xb, zb, v1), (xa, za, v1)])
            fa, fb = cam.f / za, cam.f / zb
            xa_, xb_ = cam.w / 2 + xa * fa, cam.w / 2 + xb * fb
            if max(xa_, xb_) < 0 or min(xa_, xb_) > cam.w:
                return None
            hz = cam.horizon
            return [
                (xa_, hz + (EYE_M - v0) * fa),
                (xb_, hz + (EYE_M - v0) * fb),
                (xb_, hz + (EYE_M - v1) * fb),
                (xa_, hz + (EYE_M - v1) * fa),
            ]

        # Level of detail: how many pixels one metre of this wall covers at its nearer end.
        near_z = max(min(ca[1], cb[1]), NEAR_M)
        px_per_m = cam.f / near_z
        length = math.hypot(wall.b[0] - wall.a[0], wall.b[1] - wall.a[1])
        fm = style.floor_m
        # Storefront: a dark glazed ground floor, and a cornice/roof band on top.
        shop = quad(0.03, 0.97, 0.2, fm * 0.78)
        if shop:
            draw.polygon(shop, fill=style.storefront)
        top = quad(0.0, 1.0, H - 0.6, H)
        if top:
            draw.polygon(top, fill=style.trim if style.window_kind != "sash" else _shade(colour, 0.6))
        if px_per_m * fm < 4:
            return
        kind = style.window_kind
        if kind == "band":
            for k in range(1, wall.floors):
                q = quad(0.0, 1.0, k * fm + 0.9, k * fm + fm - 0.2)
                if q:
                    draw.polygon(q, fill=_shade(style.window, 0.9 + 0.2 * _hash01(wall.seed, k)))
            return
        bays = max(1, round(length / (3.2 if kind == "sash" else 2.8)))
        win_w = 0.42 if kind == "sash" else 0.5
        v0, v1 = (0.25, 0.8) if kind == "sash" else (0.3, 0.75)
        frame = style.trim if kind == "grid" else None
        for k in range(1, wall.floors):
            for j in range(bays):
                u0 = (j + 0.5 - win_w / 2) / bays
                u1 = (j + 0.5 + win_w / 2) / bays
                if frame is not None and px_per_m > 12:
                    q = quad(u0 - 0.03, u1 + 0.03, k * fm + v0 * fm - 0.12, k * fm + v1 * fm + 0.12)
                    if q:
                        draw.polygon(q, fill=frame)
                q = quad(u0, u1, k * fm + v0 * fm, k * fm + v1 * fm)
                if q:
                    draw.polygon(q, fill=style.window)
                    if kind == "sash" and px_per_m > 10:
                        # Lintel: the light stone strip over a brownstone's window.
                        lq = quad(u0 - 0.02, u1 + 0.02, k * fm + v1 * fm, k * fm + v1 * fm + 0.18)
                        if lq:
                            draw.polygon(lq, fill=_shade(colour, 1.35))

    def _draw_prop(self, draw: ImageDraw.ImageDraw, cam: _Camera, prop: _Prop, style: CityStyle) -> None:
        x, z, _ = cam.cam(prop.at)
        s = cam.f / z
        u = cam.w / 2 + x * s
        ground = cam.horizon + EYE_M * s
        if prop.kind == "light":
            pw = max(1.0, 0.16 * s)
            top = ground - 4.6 * s
            draw.rectangle([u - pw / 2, top, u + pw / 2, ground], fill=(36, 38, 40))
            bw, bh = max(3.0, 0.38 * s), max(6.0, 1.0 * s)
            bx, by = u - bw / 2, top - bh * 0.15
            draw.rectangle([bx, by, bx + bw, by + bh], fill=(22, 22, 22))
            r = bw * 0.32
            for i, col in enumerate(((210, 40, 36), (226, 170, 30), (40, 196, 80))):
                cy = by + bh * (i + 0.5) / 3
                lit = i == int(prop.seed * 3)
                draw.ellipse([u - r, cy - r, u + r, cy + r], fill=col if lit else _shade(col, 0.35))
        else:
            tw = max(1.0, 0.3 * s)
            hgt = 5.0 + 3.0 * prop.seed
            draw.rectangle([u - tw / 2, ground - hgt * 0.5 * s, u + tw / 2, ground], fill=(84, 62, 44))
            rx, ry = (1.8 + prop.seed) * s, hgt * 0.32 * s
            cy = ground - hgt * 0.62 * s
            draw.ellipse([u - rx, cy - ry, u + rx, cy + ry], fill=style.tree)
            draw.ellipse(
                [u - rx * 0.55, cy - ry * 0.9, u + rx * 0.35, cy - ry * 0.1], fill=_shade(style.tree, 1.25)
            )

    # -- signs -----------------------------------------------------------------------------------------
    def _sign_candidates(
        self, city: CityMap | None, request: ViewRequest
    ) -> list[tuple[str, float, float, int]]:
        """(name, lat, lng, kind) of every nameable place within range, one per name; kind 0 = a route
        landmark named in the request, 1 = a landmark POI, 2 = any other POI."""
        out: dict[str, tuple[str, float, float, int]] = {}
        if city is not None and _in_bbox(city, request.lat, request.lng):
            for poi in city.pois_near(request.lat, request.lng, self.sign_radius_m, landmarks_only=False):
                out.setdefault(poi.name.casefold(), (poi.name, poi.lat, poi.lng, 1 if poi.landmark else 2))
        for name, lat, lng in request.landmarks:
            out[name.casefold()] = (name, lat, lng, 0)  # the route's own coordinates win
        return list(out.values())

    def _draw_signs(
        self,
        draw: ImageDraw.ImageDraw,
        cam: _Camera,
        style: CityStyle,
        city: CityMap | None,
        request: ViewRequest,
    ) -> list[SignPlacement]:
        w, h = cam.w, cam.h
        heading = request.heading % 360.0
        # A narrower field of view magnifies: signs grow as if the place were that much closer.
        zoom = 1.0 / math.tan(math.radians(request.fov) / 2)
        cands: list[tuple[int, float, str, float]] = []
        for name, lat, lng, kind in self._sign_candidates(city, request):
            dist = haversine_m(request.lat, request.lng, lat, lng)
            if dist > self.sign_radius_m:
                continue
            delta = heading_delta(heading, bearing_deg(request.lat, request.lng, lat, lng))
            if abs(delta) >= request.fov / 2:
                continue
            # Tiers: near route landmarks, other near places (all always drawn), landmarks, the rest.
            if kind == 0 and dist <= ROUTE_SIGN_M:
                tier = 0
            elif dist <= ALWAYS_SIGN_M:
                tier = 1
            else:
                tier = 2 if kind < 2 else 3
            cands.append((tier, dist, name, delta))
        cands.sort(key=lambda c: (c[0], c[1], c[2]))
        placed: list[_Sign] = []
        margin = max(2, h // 100)
        for tier, dist, name, delta in cands:
            if tier >= 2 and len(placed) >= self.max_signs:
                break
            sign = self._layout(cam, style, name, dist, delta, zoom, tier)
            if sign is None:
                continue
            free = self._find_slot(sign, placed, w, h, margin)
            if free is None and tier <= 1:
                # A near place must show: farther, lower-tier signs in its way give up their spot.
                free = self._find_slot(sign, [p for p in placed if p.tier <= tier], w, h, margin)
                if free is None and tier == 0:
                    free = (sign.left, sign.top)
            if free is None:
                continue
            sign.left, sign.top = free
            foot = sign.footprint(margin)
            placed = [p for p in placed if p.tier <= tier or not _overlap(foot, p.footprint(margin))]
            placed.append(sign)
        # Far signs first, so where two near route landmarks had to overlap the nearer one is on top.
        placed.sort(key=lambda p: (-p.dist, p.name))
        for sign in placed:
            self._draw_sign(draw, style, sign)
        out: list[SignPlacement] = []
        for i, sign in enumerate(placed):
            # Report only signs nothing was drawn over (every sign, unless near landmarks collided).
            if any(_overlap(sign.footprint(0), later.footprint(0)) for later in placed[i + 1 :]):
                continue
            out.append(
                SignPlacement(
                    name=sign.name,
                    text_lines=sign.lines,
                    box=sign.box,
                    font_size=sign.size,
                    text_origins=sign.origins(),
                    distance_m=sign.dist,
                    delta_deg=sign.delta,
                )
            )
        return out

    def _layout(
        self, cam: _Camera, style: CityStyle, name: str, dist: float, delta: float, zoom: float, tier: int
    ) -> _Sign | None:
        """Text, size and natural position of one sign (None if its name has nothing the font can draw)."""
        w, h = cam.w, cam.h
        text = display_text(name, style.uppercase)
        if not text:
            return None
        eff = max(dist / zoom, 1.0)
        near = tier <= 1
        # 7.5 % of the view height up close, 4 % at 60 m; near signs never below 1/16 (20 px at 320,
        # a 14 px capital), so what the rail calls visible is always readable.
        frac = 0.075 - 0.035 * min(1.0, max(0.0, (eff - 8.0) / 52.0))
        min_frac = 0.0625 if near else 0.036
        size0 = max(6, round(h * max(frac, min_frac)))
        lines, size = layout_sign(text, size0, max(6, round(h * min_frac)), int(w * 0.9))
        f = sign_font(size)
        ascent, descent = f.getmetrics()
        line_h = ascent + descent
        gap = max(1, size // 8)
        pad_y = max(2, size // 4)
        pad_x = max(3, size // 3) + (line_h // 2 if style.sign_shape == "pill" else 0)
        text_w = max(math.ceil(f.getlength(line)) for line in lines)
        box_w = min(w, text_w + 2 * pad_x)
        box_h = len(lines) * line_h + (len(lines) - 1) * gap + 2 * pad_y
        extra = int(box_h * 0.35) if style.sign_shape == "awning" else 0  # the awning under the panel
        # Centred on the place's bearing, at storefront height above the street at its distance.
        z = max(dist * math.cos(math.radians(delta)), 4.0)
        cx = w / 2 + cam.f * math.tan(math.radians(delta))
        cy = cam.horizon - cam.f * (SIGN_HEIGHT_M - EYE_M) / z
        left = round(min(max(cx - box_w / 2, 0), w - box_w))
        top = round(min(max(cy - (box_h + extra) / 2, 0), h - box_h - extra))
        bg = style.sign_bg[int(_hash01("sign", name) * len(style.sign_bg)) % len(style.sign_bg)]
        widths = tuple(f.getlength(line) for line in lines)
        return _Sign(
            name,
            tier,
            dist,
            delta,
            lines,
            widths,
            size,
            line_h,
            gap,
            pad_y,
            left,
            top,
            box_w,
            box_h,
            extra,
            bg,
        )

    @staticmethod
    def _find_slot(sign: _Sign, placed: list[_Sign], w: int, h: int, margin: int) -> tuple[int, int] | None:
        """The free spot nearest the sign's own: straight up or down first (the horizontal position is
        the bearing), then half or one sign width aside. Candidate rows are the sign's own and those
        just above or below each sign already placed."""
        tall = sign.box_h + sign.extra
        tops = {sign.top, 0, h - tall}
        for p in placed:
            tops.add(p.top - tall - 2 * margin)
            tops.add(p.top + p.box_h + p.extra + 2 * margin)
        rows = sorted((t for t in tops if 0 <= t <= h - tall), key=lambda t: (abs(t - sign.top), t))
        for dx in (0.0, -0.5, 0.5, -1.0, 1.0):
            left = round(min(max(sign.left + dx * sign.box_w, 0), w - sign.box_w))
            if dx and left == sign.left:
                continue
            for top in rows:
                foot = (left - margin, top - margin, left + sign.box_w + margin, top + tall + margin)
                if not any(_overlap(foot, p.footprint(margin)) for p in placed):
                    return left, top
        return None

    def _draw_sign(self, draw: ImageDraw.ImageDraw, style: CityStyle, sign: _Sign) -> None:
        left, top, right, bottom = sign.box
        bg, size = sign.bg, sign.size
        x1, y1 = right - 1, bottom - 1  # ImageDraw boxes are inclusive
        bw = max(1, size // 12)
        shape = style.sign_shape
        if shape == "awning":
            stripe = max(2, (right - left) // 12)
            dark = _shade(bg, 0.75)
            for i, x in enumerate(range(left, right, stripe)):
                xe = min(x + stripe, right)
                draw.rectangle(
                    [x, bottom, xe - 1, bottom + sign.extra - 1], fill=dark if i % 2 else (236, 232, 222)
                )
            draw.rectangle([left, top, x1, y1], fill=bg, outline=style.sign_border, width=bw)
        elif shape == "rounded":
            draw.rounded_rectangle(
                [left, top, x1, y1], radius=max(2, size // 3), fill=bg, outline=style.sign_border, width=bw
            )
        elif shape == "pill":
            draw.rounded_rectangle([left, top, x1, y1], radius=(bottom - top) // 2, fill=bg)
        else:  # board: a painted panel with a double frame
            draw.rectangle([left, top, x1, y1], fill=bg, outline=style.sign_border, width=bw)
            inset = bw + max(1, size // 10)
            draw.rectangle(
                [left + inset, top + inset, x1 - inset, y1 - inset], outline=style.sign_border, width=1
            )
        f = sign_font(size)
        for line, origin in zip(sign.lines, sign.origins(), strict=True):
            draw.text(origin, line, font=f, fill=style.sign_fg)


@dataclass
class _Sign:
    """A sign being placed: its text layout and (movable) top-left corner."""

    name: str
    tier: int
    dist: float
    delta: float
    lines: tuple[str, ...]
    widths: tuple[float, ...]
    size: int
    line_h: int
    gap: int
    pad_y: int
    left: int
    top: int
    box_w: int
    box_h: int
    extra: int  # pixels drawn under the panel (an awning)
    bg: RGB

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.left + self.box_w, self.top + self.box_h)

    def footprint(self, margin: int) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = self.box
        return (x0 - margin, y0 - margin, x1 + margin, y1 + self.extra + margin)

    def origins(self) -> tuple[tuple[int, int], ...]:
        out = []
        y = self.top + self.pad_y
        for wdt in self.widths:
            out.append((round(self.left + (self.box_w - wdt) / 2), y))
            y += self.line_h + self.gap
        return tuple(out)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@functools.cache
def _try_city(name: str) -> CityMap | None:
    try:
        return load_city(name)
    except LookupError:
        return None


@functools.cache
def _bbox(city: CityMap) -> tuple[float, float, float, float]:
    return float(city.lat.min()), float(city.lat.max()), float(city.lng.min()), float(city.lng.max())


def _in_bbox(city: CityMap, lat: float, lng: float, margin_deg: float = 0.002) -> bool:
    # Checked before any grid lookup: nearest_node from another continent would scan a huge number
    # of empty grid cells.
    la0, la1, ln0, ln1 = _bbox(city)
    return la0 - margin_deg <= lat <= la1 + margin_deg and ln0 - margin_deg <= lng <= ln1 + margin_deg


def _locate(city: CityMap | None, request: ViewRequest) -> int | None:
    """The street node the view is taken at, or None when the request lies outside the city's streets."""
    if city is None:
        return None
    node = request.node
    # The request's node is trusted when it agrees with the coordinates (the camera stands at lat/lng).
    if (
        node is not None
        and 0 <= node < city.num_nodes
        and haversine_m(request.lat, request.lng, *city.latlng(node)) <= SNAP_M
    ):
        return node
    if not _in_bbox(city, request.lat, request.lng):
        return None
    node = city.nearest_node(request.lat, request.lng)
    return node if haversine_m(request.lat, request.lng, *city.latlng(node)) <= SNAP_M else None


def _city_scene(city: CityMap, city_name: str, style: CityStyle, node: int) -> _Scene:
    lat0, lng0 = city.latlng(node)
    mx, my = _m_per_deg(lat0)
    nodes = city.nodes_within(lat0, lng0, VIEW_RANGE_M)
    inside = set(nodes)
    xy: dict[int, XY] = {}
    edges: set[tuple[int, int]] = set()
    nbrs: dict[int, set[int]] = {}
    for i in nodes:
        for j, _ in city.out_edges(i):
            edges.add((min(i, j), max(i, j)))
            nbrs.setdefault(i, set()).add(j)
            nbrs.setdefault(j, set()).add(i)
    for i in inside | {j for e in edges for j in e}:
        la, ln = city.latlng(i)
        xy[i] = ((ln - lng0) * mx, (la - lat0) * my)
    # Nodes just outside the range know only their edges into it: ask the graph for their full degree.
    degree = {i: len(nbrs[i]) if i in inside else len(set(city.neighbors(i))) for i in xy}
    inters = [i for i in nodes if city.is_intersection(i) and i in xy]
    return _build_scene(style, city_name, (lat0, lng0), xy, sorted(edges), degree, inters)


def _empty_scene(style: CityStyle, lat: float, lng: float) -> _Scene:
    """No street data here: one plain north-south street through the camera, so the view is still a street."""
    xy = {k: (0.0, (k - 14) * 10.0) for k in range(29)}
    edges = [(k, k + 1) for k in range(28)]
    key = f"empty:{round(lat, 3)},{round(lng, 3)}"
    return _build_scene(style, key, (lat, lng), xy, edges, dict.fromkeys(xy, 2), [])
