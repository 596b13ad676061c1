"""The synthetic street view on the real city bundles: deterministic, sized, city-styled, streets where the
graph has them, and landmark signs that are legible (checked on the pixels) exactly where the rail says."""

from __future__ import annotations

import json
import re
import statistics
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from sftrl.environments import make_env
from sftrl.street_view.city import load_city
from sftrl.street_view.geometry import (
    RELATIVE_PHRASES,
    bearing_deg,
    haversine_m,
    heading_delta,
    relative_name,
)
from sftrl.street_view.provider import ViewRequest, make_provider
from sftrl.street_view.synthetic import STYLES, SignPlacement, SyntheticProvider, display_text, layout_sign

W = 320


def _req(city: str = "nyc", node: int = 100, heading: float = 0.0, size: int = W, **kw) -> ViewRequest:
    lat, lng = load_city(city).latlng(node)
    return ViewRequest(lat=lat, lng=lng, heading=heading, width=size, height=size, city=city, node=node, **kw)


def _luma(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float64)


def _text_template(size: tuple[int, int], placement: SignPlacement, lines: tuple[str, ...]) -> np.ndarray:
    """``lines`` drawn alone, white on black, in Pillow's own default font at the sign's size and origins."""
    tpl = Image.new("L", size, 0)
    font = ImageFont.load_default(size=placement.font_size)
    draw = ImageDraw.Draw(tpl)
    for line, origin in zip(lines, placement.text_origins, strict=False):
        draw.text(origin, line, font=font, fill=255)
    return np.asarray(tpl, dtype=np.float64)


def _text_region(tpl: np.ndarray, box: tuple[int, int, int, int]) -> tuple[slice, slice]:
    ys, xs = np.nonzero(tpl)
    left, top, right, bottom = box
    assert len(xs), "the template has no ink"
    # The lettering must lie inside the sign panel.
    assert left <= xs.min() and xs.max() < right and top <= ys.min() and ys.max() < bottom
    return slice(max(top, ys.min() - 2), min(bottom, ys.max() + 3)), slice(
        max(left, xs.min() - 2), min(right, xs.max() + 3)
    )


def _correlation(view: np.ndarray, tpl: np.ndarray, region: tuple[slice, slice]) -> float:
    a, b = view[region] - view[region].mean(), tpl[region] - tpl[region].mean()
    return float(abs((a * b).sum()) / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-9))


def assert_legible(img: Image.Image, placement: SignPlacement, decoy: str) -> None:
    """The sign's pixels are its text: they match the text re-rendered alone (and not a decoy name's),
    the letters are big enough, and lettering and panel differ strongly in brightness."""
    view = _luma(img)
    tpl = _text_template(img.size, placement, placement.text_lines)
    region = _text_region(tpl, placement.box)
    assert _correlation(view, tpl, region) > 0.9
    decoy_tpl = _text_template(img.size, placement, (decoy,))
    assert _correlation(view, decoy_tpl, region) < 0.6
    cap = ImageFont.load_default(size=placement.font_size).getbbox("H")
    assert cap[3] - cap[1] >= 14, "capital letters under 14 px tall"
    ink, paper = view[region][tpl[region] >= 250], view[region][tpl[region] == 0]
    assert len(ink) > 30 and abs(ink.mean() - paper.mean()) >= 100


def test_deterministic_sized_and_keyed():
    p = make_provider("synthetic", city="nyc")
    a = p.get_view(_req())
    b = SyntheticProvider("nyc").get_view(_req())  # a fresh provider: cold caches, same bytes
    assert a.size == (W, W) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes() == p.get_view(_req()).tobytes()
    assert p.get_view(_req(size=96)).size == (96, 96)
    wide = ViewRequest(lat=40.7484, lng=-73.9857, heading=0, width=200, height=120, fov=70, pitch=5)
    assert p.get_view(wide).size == (200, 120)
    assert p.cache_key(_req()) == SyntheticProvider("nyc").cache_key(_req())
    keys = {
        p.cache_key(r)
        for r in (
            _req(),
            _req(heading=90),
            _req(size=96),
            _req("helsinki"),
            _req(landmarks=(("X", 1.0, 2.0),)),
        )
    }
    assert len(keys) == 5
    assert p.cache_key(_req(heading=370)) == p.cache_key(_req(heading=10))
    assert p.get_view(_req(heading=370)).tobytes() == p.get_view(_req(heading=10.001)).tobytes()


def test_the_node_is_found_from_the_coordinates_when_missing_or_wrong():
    p = SyntheticProvider("nyc")
    at_node = p.get_view(_req(node=100, heading=30)).tobytes()
    assert p.get_view(_req(node=100, heading=30).model_copy(update={"node": None})).tobytes() == at_node
    assert p.get_view(_req(node=100, heading=30).model_copy(update={"node": 5000})).tobytes() == at_node


def test_headings_and_places_differ():
    p = SyntheticProvider("nyc")
    views = [p.get_view(_req(heading=h)).tobytes() for h in (0, 90, 180, 270)]
    assert len(set(views)) == 4
    assert p.get_view(_req(node=100)).tobytes() != p.get_view(_req(node=5000)).tobytes()


def _views(city: str, style: str | None = None) -> np.ndarray:
    p = SyntheticProvider(city, style=style)
    n = load_city(city).num_nodes
    views = [p.get_view(_req(city, node=(k * 997) % n, heading=k * 40, size=96)) for k in range(8)]
    return np.stack([np.asarray(v, dtype=np.float64) for v in views])


def _brick_share(views: np.ndarray) -> float:
    r, g, b = views[..., 0], views[..., 1], views[..., 2]
    return float(((r > 100) & (r > 1.6 * g) & (r > 1.6 * b)).mean())


def test_cities_have_their_own_look():
    views = {c: _views(c) for c in ("nyc", "helsinki", "baltimore", "singapore")}
    means = {c: v.reshape(-1, 3).mean(0) for c, v in views.items()}
    for a in means:
        for b in means:
            if a < b:
                assert np.abs(means[a] - means[b]).sum() > 20, (a, b, means[a], means[b])
    # Helsinki's pale plaster is brighter than NYC brick; Baltimore is red-brick rowhouses, Helsinki none.
    assert means["helsinki"].sum() > means["nyc"].sum() + 30
    assert _brick_share(views["baltimore"]) > 0.1 > 0.01 > _brick_share(views["helsinki"])
    # Singapore: the bluest sky and glass.
    assert max(means, key=lambda c: means[c][2] - means[c][0]) == "singapore"
    # The style option alone moves NYC streets to the Helsinki look.
    restyled = _views("nyc", style="helsinki").reshape(-1, 3).mean(0)
    assert np.abs(restyled - means["helsinki"]).sum() < np.abs(restyled - means["nyc"]).sum()
    assert len({s.facades for s in STYLES.values()}) == len(STYLES)


def _mid_block_node(city: str) -> tuple[int, float]:
    """A node on a straight street with no intersection within 60 m, and that street's bearing."""
    cm = load_city(city)
    for i in range(0, cm.num_nodes, 7):
        edges = cm.out_edges(i)
        if len(edges) == 2 and abs(abs(heading_delta(edges[0][1], edges[1][1])) - 180) < 5:
            lat, lng = cm.latlng(i)
            if not any(cm.is_intersection(j) for j in cm.nodes_within(lat, lng, 60)):
                return i, edges[0][1]
    raise AssertionError("no mid-block node")


def test_road_runs_along_the_graph_edges():
    style = STYLES["nyc"]
    p = SyntheticProvider("nyc", sign_radius_m=1e-3)  # no signs in the way
    node, bearing = _mid_block_node("nyc")
    along = np.asarray(p.get_view(_req(node=node, heading=bearing)))
    across = np.asarray(p.get_view(_req(node=node, heading=bearing + 90)))

    def street(row: np.ndarray) -> np.ndarray:
        return (row == style.road).all(1) | (row == style.road_line).all(1)

    road_along, road_across = street(along[W // 2 + 4]), street(across[W // 2 + 4])
    # Just below the horizon: ahead, the street recedes into the middle of the view; sideways, the
    # street ends at the kerb well before that (sidewalk and facades).
    assert road_along[W // 2 - 3 : W // 2 + 4].all() and not road_along[:20].any()
    assert not road_across.any()


def test_intersections_show_crosswalks_and_traffic_lights():
    cm = load_city("nyc")
    p = SyntheticProvider("nyc")
    crosswalk = np.array((236, 236, 232))

    def stripes(img: Image.Image) -> int:
        lower = np.asarray(img)[int(W * 0.62) :]  # the street within ~8 m of the camera
        return int((lower == crosswalk).all(2).sum())

    inter = next(i for i in range(0, cm.num_nodes, 11) if cm.is_intersection(i))
    views = [
        p.get_view(_req(node=inter, heading=h + rel))
        for h in [cm.out_edges(inter)[0][1]]
        for rel in (0, 90, 180, 270)
    ]
    assert max(stripes(v) for v in views) > 200
    lamps = [(210, 40, 36), (226, 170, 30), (40, 196, 80)]
    assert any((np.asarray(v) == lamp).all(2).any() for v in views for lamp in lamps)
    node, bearing = _mid_block_node("nyc")
    assert all(stripes(p.get_view(_req(node=node, heading=bearing + rel))) == 0 for rel in (0, 90, 180, 270))


def test_outside_any_city_and_unknown_cities_still_render():
    p = SyntheticProvider("nyc")
    t0 = time.perf_counter()
    img, signs = p.render(ViewRequest(lat=0.0, lng=0.0, heading=10, width=64, height=64))
    assert img.size == (64, 64) and signs == []
    assert time.perf_counter() - t0 < 2.0  # no grid search from the other side of the planet
    # A city without a bundle: an empty street, but the route's own landmarks still get signs.
    sf = SyntheticProvider("sf")
    img, signs = sf.render(
        ViewRequest(
            lat=37.78,
            lng=-122.4,
            heading=0,
            city="sf",
            landmarks=(("Blue Bottle", 37.7801, -122.4), ("Far", 38.0, -122.4)),
        )
    )
    assert [s.name for s in signs] == ["Blue Bottle"]
    assert_legible(img, signs[0], decoy="Peet's Coffee & Tea")


def test_sign_text_is_folded_wrapped_and_truncated_to_fit():
    assert display_text("Pääposti") == "Paaposti"
    assert display_text("Café Ørsted – Straße", uppercase=True) == "CAFE ORSTED - STRASSE"
    font = ImageFont.load_default(size=20)
    lines, size = layout_sign("Bank of America Financial Center Plaza", 24, 20, 288)
    assert len(lines) == 2 and 20 <= size <= 24 and all(font.getlength(x) <= 288 for x in lines)
    long = (
        "Melankolikko, sangviinikko, flegmaatikko ja koleerikko - Uuden ylioppilastalon julkisivuveistokset"
    )
    lines, size = layout_sign(long, 24, 20, 288)
    assert size == 20 and len(lines) == 2 and lines[-1].endswith("...")
    assert all(ImageFont.load_default(size=20).getlength(x) <= 288 for x in lines)
    # Every POI name in the shipped cities leaves something the font can draw.
    for city in ("nyc", "helsinki", "baltimore", "singapore"):
        assert all(display_text(poi.name) for poi in load_city(city).pois)


def _geocode(marks: tuple[tuple[str, float, float], ...], name: str) -> tuple[float, float]:
    return next((lat, lng) for n, lat, lng in marks if n == name)


def _seen_here(obs, marks) -> tuple[str, str] | None:
    """(landmark, relation) when the expert's observation says "{landmark} is {relation's phrase}"."""
    said = json.loads(obs.oracle["expert_reply"])["current observation"]
    info = obs.info
    for name, lat, lng in sorted(marks, key=lambda m: -len(m[0])):
        m = re.match(re.escape(name) + r" is ([a-z ]+?)(\.|$)", said)
        relation = {p: r for r, p in RELATIVE_PHRASES.items()}.get(m.group(1)) if m else None
        if m and relation:
            # Milestone observations are the route generator's text, worked out at its own arrival
            # heading, which can differ from the rail's heading here: keep what geometry agrees with.
            delta = heading_delta(info["heading"], bearing_deg(info["lat"], info["lng"], lat, lng))
            return (name, relation) if relative_name(delta) == relation else None
    return None


def _walk(env, route_index: int):
    """(observation, route landmarks) at every rail point of a route, following the expert."""
    obs, _ = env.reset(seed=0, options={"route_index": route_index})
    route = env.routes[route_index]
    marks = tuple((lm.name, *lm.geocode) for lm in route.route_results.landmark_list)
    marks += ((route.dest_place.name, *route.dest_place.geocode),)
    marks += ((route.start_place.name, *route.start_place.geocode),)
    while True:
        yield obs, marks, route.city
        obs, _, term, trunc, _ = env.step(obs.oracle["expert_reply"])
        if term or trunc:
            return


def _seen_landmarks(split: str, max_routes: int, want: int):
    """(grid image, request the env made for its front view, landmark, relation) at rail points whose
    expert observation names a route landmark, walking the real env with the expert's replies."""
    # Find the routes cheaply in language mode (same rails, no rendering), then replay them in vision.
    text_env = make_env("virl", split=split)
    routes, n, fronts = [], 0, 0
    for i in range(max_routes):
        seen = [x for obs, marks, _ in _walk(text_env, i) if (x := _seen_here(obs, marks))]
        front = sum(x[1] == "front" for x in seen)
        if (front and fronts < 2) or (seen and n < want):
            routes.append(i)
            n += len(seen)
            fronts += front
        if n >= want and fronts >= 2:
            break
    env = make_env("virl", split=split, modality="vision", resolution=W)
    found = []
    for i in routes:
        for obs, marks, city in _walk(env, i):
            hit = _seen_here(obs, marks)
            if hit:
                info = obs.info
                req = ViewRequest(
                    lat=info["lat"], lng=info["lng"], heading=info["heading"], width=W, height=W,
                    city=city, node=info["node"], landmarks=marks,
                )  # fmt: skip
                found.append((obs.images[0], req, *hit))
    return found


@pytest.mark.parametrize("split", ["id", "visual-ood"])
def test_landmarks_the_rail_sees_are_legible_signs_in_the_right_view(split):
    cases = _seen_landmarks(split, max_routes=60, want=12)
    assert len(cases) >= 12 and sum(rel == "front" for *_, rel in cases) >= 2
    for grid, req, name, rel in cases:
        delta = heading_delta(req.heading, bearing_deg(req.lat, req.lng, *_geocode(req.landmarks, name)))
        # The grid is [front, right / back, left]: views at +0/+90/+180/+270, each 90° wide.
        k = round(delta / 90) % 4
        tile = grid.crop(
            ((k % 2) * (W + 4), (k // 2) * (W + 4), (k % 2) * (W + 4) + W, (k // 2) * (W + 4) + W)
        )
        view_req = req.model_copy(update={"heading": (req.heading + 90 * k) % 360})
        provider = SyntheticProvider(req.city or "nyc")
        img, signs = provider.render(view_req)
        assert tile.tobytes() == img.tobytes(), "the env's grid tile is this provider's render"
        placement = next(s for s in signs if s.name == name)
        shown = " ".join(placement.text_lines).removesuffix("...")
        assert display_text(name, provider.style_for(req.city).uppercase).startswith(shown)
        assert_legible(tile, placement, decoy="Zyx Qwv Laundromat")
        # The sign stands at the landmark's bearing in this view (within a sign width: crowded views
        # move signs aside); "front" lands in the middle of the front view.
        view_delta = heading_delta(view_req.heading, req.heading + delta)
        centre = (placement.box[0] + placement.box[2]) / 2
        expected = W / 2 + W / 2 * np.tan(np.radians(view_delta))
        assert abs(centre - expected) <= placement.box[2] - placement.box[0]
        if rel == "front":
            assert k == 0 and W / 2 - 70 - (placement.box[2] - placement.box[0]) / 2 < centre
        # Nothing outside this view's 90° (e.g. behind the camera) has a sign in it.
        assert all(abs(s.delta_deg) < 45 for s in signs)
        assert all(
            abs(
                heading_delta(
                    view_req.heading, bearing_deg(req.lat, req.lng, *_geocode(req.landmarks, s.name))
                )
            )
            < 45
            for s in signs
            if s.name in {m[0] for m in req.landmarks}
        )


def test_places_behind_the_camera_are_signed_only_in_the_back_view():
    cm = load_city("nyc")
    p = SyntheticProvider("nyc")
    checked = 0
    for node in range(0, cm.num_nodes, 101):
        lat, lng = cm.latlng(node)
        near = [poi for poi in cm.pois_near(lat, lng, 25, landmarks_only=False) if display_text(poi.name)]
        if not near:
            continue
        poi = near[0]
        behind = bearing_deg(lat, lng, poi.lat, poi.lng)  # look straight away from it
        front_img, front = p.render(_req(node=node, heading=(behind + 180) % 360))
        back_img, back = p.render(_req(node=node, heading=behind))
        assert poi.name not in {s.name for s in front}
        assert all(
            abs(heading_delta((behind + 180) % 360, bearing_deg(lat, lng, *_where(cm, s.name)))) < 45
            for s in front
        )
        sign = next(s for s in back if s.name == poi.name)
        assert_legible(back_img, sign, decoy="Zyx Qwv Laundromat")
        # Its text is nowhere on the front view's signs either (by pixels, at every sign drawn there).
        for s in front:
            tpl = _text_template(front_img.size, s, (display_text(poi.name, True),))
            if tpl.any():
                assert (
                    _correlation(
                        _luma(front_img), tpl, (slice(s.box[1], s.box[3]), slice(s.box[0], s.box[2]))
                    )
                    < 0.9
                )
        checked += 1
        if checked >= 4:
            break
    assert checked >= 4


def _where(cm, name: str) -> tuple[float, float]:
    poi = next(p for p in cm.pois if p.name == name)
    return poi.lat, poi.lng


def test_near_signs_are_big_and_far_ones_smaller():
    cm = load_city("nyc")
    p = SyntheticProvider("nyc")
    sizes = []
    for node in range(0, cm.num_nodes, 37):
        lat, lng = cm.latlng(node)
        pois = cm.pois_near(lat, lng, 60, landmarks_only=False)
        if len(pois) < 2:
            continue
        for poi in (pois[0], pois[-1]):
            heading = bearing_deg(lat, lng, poi.lat, poi.lng)
            _, signs = p.render(_req(node=node, heading=heading))
            s = next((s for s in signs if s.name == poi.name), None)
            if s is not None:
                sizes.append((haversine_m(lat, lng, poi.lat, poi.lng), s.font_size))
        if len(sizes) > 40:
            break
    near = [size for d, size in sizes if d <= 20]
    far = [size for d, size in sizes if d >= 45]
    assert near and far and min(near) >= 20 and statistics.median(far) < statistics.median(near)


def test_views_are_fast_once_the_street_is_built():
    p = SyntheticProvider("nyc")
    p.get_view(_req())
    times = []
    for h in range(0, 360, 30):
        t0 = time.perf_counter()
        p.get_view(_req(heading=h))
        times.append(time.perf_counter() - t0)
    assert statistics.median(times) < 0.05  # ~5 ms on a 2-core VM; generous for loaded CI machines
