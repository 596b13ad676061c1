"""Route collection: official-format files that round-trip through the official loader, a manifest,
panoramas the panorama-dir provider serves, the expert solving the collected routes, and the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

import sftrl.environments  # noqa: F401 - registers the envs
from sftrl.agents.baselines import ExpertPolicy
from sftrl.agents.loop import run_episode
from sftrl.environments import make_env
from sftrl.environments.virl.collect import (
    _route_marks,
    collect_routes,
    encode_polyline,
    official_route_info,
    render_panorama,
)
from sftrl.environments.virl.official import load_routes
from sftrl.environments.virl.routes import route_fingerprint, split_routes
from sftrl.street_view.city import load_city
from sftrl.street_view.panorama_dir import PanoramaDirProvider, equirect_to_perspective
from sftrl.street_view.provider import ViewRequest, make_provider

OFFICIAL_KEYS = {
    "start_place",
    "dest_place",
    "route_results",
    "init_heading",
    "instruction",
    "milestone_info",
}


def _decode_polyline(text: str) -> list[tuple[float, float]]:
    """Google's polyline decoding (the inverse of encode_polyline), written out independently."""
    values, cur, shift = [], 0, 0
    for ch in text:
        b = ord(ch) - 63
        cur |= (b & 0x1F) << shift
        shift += 5
        if b < 0x20:
            values.append(~(cur >> 1) if cur & 1 else cur >> 1)
            cur, shift = 0, 0
    lat = lng = 0
    out = []
    for dlat, dlng in zip(values[::2], values[1::2], strict=True):
        lat, lng = lat + dlat, lng + dlng
        out.append((lat / 1e5, lng / 1e5))
    return out


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect")
    result = collect_routes("nyc", 3, out, route_seed=7, views_dir=out / "views", pano_width=256)
    return out, result


def test_routes_round_trip_through_the_official_loader(collected):
    out, result = collected
    raw = json.loads((out / "route_infos.json").read_text())
    assert isinstance(raw, list) and len(raw) == 2 and raw[1] == 3 and len(raw[0]) == 3
    for info in raw[0]:
        assert info.keys() >= OFFICIAL_KEYS
        assert info["start_place"]["relocated_geocode"] and info["route_results"]["geocode_list"]
        assert info["init_heading"] != 0  # SFTvsRL would replace 0 by a random heading
    loaded = load_routes(out / "route_infos.json")
    assert len(loaded) == 3
    for orig, back in zip(result.routes, loaded, strict=True):
        assert back.route_id == orig.route_id and back.city == "nyc" and back.path == orig.path
        assert back.instruction == orig.instruction and back.milestone_info == orig.milestone_info
        assert back.milestones() == orig.milestones()
        assert back.route_results.geocode_list == orig.route_results.geocode_list
        assert back.route_results.landmark_list == orig.route_results.landmark_list
        assert back.init_heading % 360 == orig.init_heading % 360
        assert route_fingerprint(back) == route_fingerprint(orig)


def test_polylines_trace_each_leg(collected):
    out, result = collected
    city = load_city("nyc")
    raw = json.loads((out / "route_infos.json").read_text())[0]
    for info, route in zip(raw, result.routes, strict=True):
        legs = info["route_results"]["polyline"]
        ends = [route.start_place.street_geocode, *route.route_results.geocode_list]
        assert len(legs) == len(ends) - 1 == info["route_results"]["n_landmarks"] + 1
        for leg, a, b in zip(legs, ends, ends[1:], strict=False):
            pts = _decode_polyline(leg)
            assert pts[0] == pytest.approx(a, abs=1e-5) and pts[-1] == pytest.approx(b, abs=1e-5)
        assert sum(len(_decode_polyline(leg)) for leg in legs) == len(route.path) + len(legs) - 1
        assert city.latlng(route.path[0]) == tuple(route.start_place.street_geocode)
    assert (
        encode_polyline([(38.5, -120.2), (40.7, -120.95), (43.252, -126.453)])
        == "_p~iF~ps|U_ulLnnqC_mqNvxq`@"
    )


def test_manifest_names_fingerprints_sources_and_views(collected):
    out, result = collected
    m = json.loads((out / "manifest.json").read_text())
    assert m == result.manifest
    assert m["count"] == 3 and m["options"]["route_seed"] == 7
    assert m["routes_sha256"] == hashlib.sha256((out / "route_infos.json").read_bytes()).hexdigest()
    assert [r["fingerprint"] for r in m["routes"]] == [route_fingerprint(r) for r in result.routes]
    assert "OpenStreetMap" in m["source"]["attribution"] and "ODbL" in m["source"]["licence"]
    assert len(m["source"]["bundle_sha256"]) == 64
    v = m["views"]
    assert v["provider"] == "synthetic" and v["panoramas"] == len({n for r in result.routes for n in r.path})


def test_collection_is_deterministic(collected, tmp_path):
    out, _ = collected
    again = collect_routes("nyc", 3, tmp_path / "a", route_seed=7)
    assert again.routes_file.read_bytes() == (out / "route_infos.json").read_bytes()
    other = collect_routes("nyc", 3, tmp_path / "b", route_seed=8)
    assert [r.path for r in other.routes] != [r.path for r in again.routes]
    split = collect_routes("nyc", 3, tmp_path / "c", split="id")
    assert [route_fingerprint(r) for r in split.routes] == [
        route_fingerprint(r) for r in split_routes("nyc", "id", 0, 3)
    ]


def test_route_info_never_writes_init_heading_zero():
    route = split_routes("nyc", "id", 0, 3)[0].model_copy(update={"init_heading": 0.0})
    assert official_route_info(route, load_city("nyc"))["init_heading"] == 360


def test_expert_solves_the_collected_routes_in_language_and_vision(collected):
    out, result = collected
    for modality in ("language", "vision"):
        env = make_env(
            "virl",
            routes=str(out / "route_infos.json"),
            modality=modality,
            street_view="panorama-dir",
            panorama_dir=str(out / "views"),
            resolution=32,
        )
        for i in range(3):
            rec = asyncio.run(run_episode(env, ExpertPolicy(), seed=i, reset_options={"route_index": i}))
            assert rec.error is None and rec.success, (modality, i)
    obs, _ = env.reset(seed=0, options={"route_index": 0})
    grid = np.asarray(obs.images[0])
    assert grid.shape == (68, 68, 3) and grid.std() > 10  # real pictures, not a blank canvas


class DirectionProvider:
    """Views whose pixels encode the direction of their own pinhole ray: red = heading, green = elevation."""

    name = "direction"

    def get_view(self, request: ViewRequest) -> Image.Image:
        w, h = request.width, request.height
        f = (w / 2) / np.tan(np.radians(request.fov) / 2)
        x = (np.arange(w) + 0.5 - w / 2)[None, :] / f
        y = (h / 2 - (np.arange(h) + 0.5))[:, None] / f
        heading = (request.heading + np.degrees(np.arctan(x))) % 360.0
        elev = np.degrees(np.arctan2(y, np.hypot(x, 1.0)))
        img = np.zeros((h, w, 3), dtype=np.uint8)
        img[..., 0] = np.rint(np.broadcast_to(heading, (h, w)) * 255 / 360)
        img[..., 1] = np.rint((elev + 90) * 255 / 180)
        return Image.fromarray(img, "RGB")

    def cache_key(self, request: ViewRequest) -> str:
        return "direction"


def test_stitched_panorama_columns_and_rows_have_the_right_directions():
    pano = np.asarray(render_panorama(DirectionProvider(), 40.75, -73.99, width=512), dtype=float)
    heading = (np.arange(512) + 0.5) / 512 * 360 - 180  # rotation 0: the centre column faces north
    elev = 90 - (np.arange(256) + 0.5) / 256 * 180
    band = np.abs(elev) < 35  # what a 90° view covers at every heading
    away = np.abs(((heading + 180) % 360) - 180) > 5  # the red code wraps at north
    want_r = (heading % 360)[away] * 255 / 360
    assert np.abs(pano[band][:, away, 0] - want_r).max() <= 2.0
    want_g = (elev[band] + 90) * 255 / 180
    assert np.abs(pano[band][:, :, 1] - want_g[:, None]).max() <= 2.0
    # Cropping it again gives back the provider's own view (headings away from north).
    for h in (60.0, 135.0, 250.0):
        req = ViewRequest(lat=40.75, lng=-73.99, heading=h, fov=60, width=48, height=48)
        cut = equirect_to_perspective(pano.astype(np.uint8), h, 60, 0, 48, 48).astype(float)
        direct = np.asarray(DirectionProvider().get_view(req), dtype=float)
        assert np.abs(cut - direct)[..., :2].max() <= 3.0


def test_collected_panoramas_show_the_synthetic_street(collected):
    out, result = collected
    pano = PanoramaDirProvider(out / "views")
    synth = make_provider("synthetic", city="nyc")
    route = result.routes[0]
    node = route.path[0]
    lat, lng = load_city("nyc").latlng(node)
    marks = tuple(sorted(set().union(*(_route_marks(r) for r in result.routes if node in r.path))))
    for heading in (45.0, 180.0):
        req = ViewRequest(
            lat=lat,
            lng=lng,
            heading=heading,
            fov=90,
            width=64,
            height=64,
            city="nyc",
            node=node,
            landmarks=marks,
        )
        cut = np.asarray(pano.get_view(req), dtype=float)[:, 16:48]  # the middle half: one source view
        direct = np.asarray(synth.get_view(req), dtype=float)[:, 16:48]
        turned = np.asarray(synth.get_view(req.model_copy(update={"heading": heading + 90})), dtype=float)
        same, different = np.abs(cut - direct).mean(), np.abs(cut - turned[:, 16:48]).mean()
        assert different > 2 * same, (heading, same, different)


def test_cli_collect(tmp_path, capsys):
    from sftrl.cli import main

    out = tmp_path / "r"
    assert (
        main(["routes", "collect", "--city", "nyc", "--n", "2", "--out", str(out), "--json", "--quiet"]) == 0
    )
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["count"] == 2 and len(load_routes(out / "route_infos.json")) == 2
    assert main(["routes", "collect", "--city", "atlantis", "--n", "2", "--out", str(out), "--quiet"]) == 2
    assert "unknown city 'atlantis'" in capsys.readouterr().err
