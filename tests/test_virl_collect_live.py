"""Route collection with the live Google APIs, against a real HTTP server on 127.0.0.1 standing in for
Google: it serves hand-written answers in Google's documented formats (``tests/fixtures/google_maps``)
for Geocoding, Places Nearby Search and Directions, and checks the key (and signature) itself."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

import sftrl.environments  # noqa: F401 - registers the envs
from sftrl.agents.baselines import ExpertPolicy
from sftrl.agents.loop import run_episode
from sftrl.environments import make_env
from sftrl.environments.virl.collect_live import (
    PLACE_TYPES_20,
    collect_live_routes,
    parse_center,
)
from sftrl.environments.virl.official import load_routes
from sftrl.street_view.google_maps import GoogleMapsClient, MapsError

FIXTURES = Path(__file__).parent / "fixtures" / "google_maps"
KEY = "AIza.TEST-maps-secret-key_0123456789"
SECRET = base64.urlsafe_b64encode(b"a 20-byte hmac key!!").decode()
PLACES: list[dict[str, Any]] = json.loads((FIXTURES / "places.json").read_text())
DIRECTIONS_INDEX: dict[str, str] = json.loads((FIXTURES / "directions" / "index.json").read_text())
GEOCODE_PATH = "/maps/api/geocode/json"
NEARBY_PATH = "/maps/api/place/nearbysearch/json"
DIRECTIONS_PATH = "/maps/api/directions/json"
# V-IRL's own route_info keys (data/tourist/route_infos_*.json), which every collected route must carry.
VIRL_KEYS = {"dest_place", "start_place", "route_results", "init_heading", "instruction", "milestone_info"}
VIRL_RESULT_KEYS = {
    "geocode_list",
    "polyline",
    "instructions",
    "distance_list",
    "time_list",
    "time",
    "distance",
    "n_landmarks",
    "landmark_list",
}
VIRL_PLACE_KEYS = {"name", "geocode", "rating", "place_id", "distance", "n_reviews", "heading", "place_types"}


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def dist_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    # Equirectangular: plenty for the fake's few hundred metres (independent of sftrl's haversine).
    dy = math.radians(b[0] - a[0])
    dx = math.radians(b[1] - a[1]) * math.cos(math.radians((a[0] + b[0]) / 2))
    return 6_371_008.8 * math.hypot(dx, dy)


def where(place: dict[str, Any]) -> tuple[float, float]:
    loc = place["geometry"]["location"]
    return loc["lat"], loc["lng"]


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait this long before answering (a slow server, for timeouts)


@dataclass
class FakeMaps:
    """Google's Geocoding, Nearby Search and Directions web services over a small made-up town."""

    key: str = KEY
    secret: str | None = None
    scripted: dict[str, list[Reply]] = field(default_factory=dict)  # path -> replies served first
    log: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def calls(self, path: str) -> list[dict[str, str]]:
        return [q for p, q in self.log if p == path]

    def handle(self, raw_path: str) -> Reply:
        parts = urlsplit(raw_path)
        query = dict(parse_qsl(parts.query))
        self.log.append((parts.path, query))
        self.raw.append(raw_path)
        if self.scripted.get(parts.path):
            return self.scripted[parts.path].pop(0)
        if query.get("key") != self.key:
            return Reply(200, fixture("request_denied"))
        if self.secret is not None:
            # Google's URL signing, checked independently: HMAC-SHA1 over path+query before "&signature=".
            unsigned, _, sig = raw_path.partition("&signature=")
            want = hmac.new(base64.urlsafe_b64decode(self.secret), unsigned.encode(), hashlib.sha1)
            if sig != base64.urlsafe_b64encode(want.digest()).decode():
                return Reply(200, fixture("request_denied"))
        if parts.path == GEOCODE_PATH:
            return Reply(
                200, fixture("geocode_ok" if query.get("address") == "Testville" else "zero_results")
            )
        if parts.path == NEARBY_PATH:
            return self.nearby(query)
        if parts.path == DIRECTIONS_PATH:
            return self.directions(query)
        return Reply(404, b"Not Found")

    def nearby(self, query: dict[str, str]) -> Reply:
        lat, lng = (float(v) for v in query["location"].split(","))
        radius = float(query["radius"])
        found = [
            p
            for p in PLACES
            if dist_m((lat, lng), where(p)) <= radius and query.get("type", p["types"][0]) in p["types"]
        ]
        # Nearest first (Google orders by prominence): the collector must not rely on the order.
        found.sort(key=lambda p: (dist_m((lat, lng), where(p)), p["name"]))
        if not found:
            return Reply(200, fixture("zero_results"))
        return Reply(200, json.dumps({"html_attributions": [], "results": found, "status": "OK"}).encode())

    def directions(self, query: dict[str, str]) -> Reply:
        assert query["mode"] == "walking" and query["avoid"] == "indoor"

        def place_at(text: str) -> str:
            lat, lng = (float(v) for v in text.split(","))
            return min(PLACES, key=lambda p: dist_m((lat, lng), where(p)))["place_id"]

        name = DIRECTIONS_INDEX.get(f"{place_at(query['origin'])} {place_at(query['destination'])}")
        return Reply(200, fixture(f"directions/{name}" if name else "directions/zero_results"))


@pytest.fixture
def maps() -> Iterator[FakeMaps]:
    fake = FakeMaps()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            reply = fake.handle(self.path)
            time.sleep(reply.delay_s)
            self.send_response(reply.status)
            headers = {"Content-Type": "application/json; charset=UTF-8", **reply.headers}
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    fake.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_MAPS_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_MAPS_URL_SIGNING_SECRET", raising=False)


def client(fake: FakeMaps, sleeps: list[float] | None = None, **kwargs: Any) -> GoogleMapsClient:
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("backoff", 0.01)
    return GoogleMapsClient(
        base_url=fake.base_url, sleep=(sleeps if sleeps is not None else []).append, **kwargs
    )


def assert_no_secret(text: str) -> None:
    assert KEY not in text and SECRET not in text
    assert "signature=" not in text.replace("signature=REDACTED", "")


# --- collection ---------------------------------------------------------------------------------------


def test_collects_routes_that_follow_the_virl_recipe_and_the_env_runs(maps: FakeMaps, tmp_path: Path) -> None:
    progress: list[tuple[str, int, int]] = []
    result = collect_live_routes(
        "Testville", 2, tmp_path, client=client(maps), route_seed=3, progress=lambda *a: progress.append(a)
    )
    assert len(result.routes) == 2 and progress[-1] == ("routes", 2, 2)
    raw = json.loads(result.routes_file.read_text())
    assert raw[1] == 2 and len(raw[0]) == 2
    by_dest = {info["dest_place"]["name"]: info for info in raw[0]}
    assert set(by_dest) == {"Café Lindenhof", "Buchhandlung Orell"}
    for info in raw[0]:
        assert set(info) >= VIRL_KEYS and set(info["route_results"]) >= VIRL_RESULT_KEYS
        assert set(info["start_place"]) >= VIRL_PLACE_KEYS and "relocated_geocode" in info["dest_place"]
        assert 0 < info["init_heading"] <= 360
        rr = info["route_results"]
        assert rr["n_landmarks"] == len(rr["landmark_list"]) == len(rr["geocode_list"]) - 1
        assert info["dest_place"]["relocated_geocode"] == rr["geocode_list"][-1]
        assert all(
            lm["expression"] == f"{lm['name']} is on your {lm['spatial_relation']}"
            for lm in rr["landmark_list"]
        )
    cafe, books = by_dest["Café Lindenhof"], by_dest["Buchhandlung Orell"]
    # One intersection: east along Seestrasse, left (north) at Apotheke Central, café on the right.
    assert cafe["start_place"]["name"] == "Bäckerei Kern"
    assert [lm["name"] for lm in cafe["route_results"]["landmark_list"]] == ["Apotheke Central"]
    assert cafe["route_results"]["distance_list"] == [70, 60]
    assert cafe["route_results"]["instructions"][1].startswith("Turn <b>left</b> onto <b>Lindenweg</b>")
    assert "The destination Café Lindenhof is on your right" in cafe["milestone_info"]
    assert '"to_next_intersection_heading": "0 (north)"' in cafe["milestone_info"]
    # Two intersections. At the first, Blumen Meier is nearer but Bank Leu has more reviews: V-IRL's choice.
    assert [lm["name"] for lm in books["route_results"]["landmark_list"]] == ["Bank Leu", "Kino Arthouse"]
    # The official loader and the env read the file; the expert walks both routes.
    loaded = load_routes(result.routes_file)
    assert [r.dest_place.name for r in loaded] == [i["dest_place"]["name"] for i in raw[0]]
    assert all(len(r.milestones()) == len(r.route_results.geocode_list) for r in loaded)
    for modality in ("language", "vision"):
        env = make_env("virl", routes=str(result.routes_file), modality=modality, resolution=32)
        for i in range(2):
            rec = asyncio.run(run_episode(env, ExpertPolicy(), seed=i, reset_options={"route_index": i}))
            assert rec.error is None and rec.success, (modality, i)
            # Testville is on no shipped city graph: the rail runs along the milestone geocodes.
            assert env._rail is not None and env._rail.geocode_only
    # V-IRL's calls: walking directions, landmarks searched at the intersections only.
    assert all(q["mode"] == "walking" for q in maps.calls(DIRECTIONS_PATH))
    searched = {
        tuple(round(float(v), 6) for v in q["location"].split(","))
        for q in maps.calls(NEARBY_PATH)
        if q["radius"] == "50"
    }
    assert searched == {
        (round(lat, 6), round(lng, 6)) for i in raw[0] for lat, lng in i["route_results"]["geocode_list"][:-1]
    }
    assert {q["type"] for q in maps.calls(NEARBY_PATH) if "type" in q} == set(PLACE_TYPES_20)
    # Source and terms in the manifest; the key nowhere in what was written.
    m = result.manifest
    assert m["source"]["provider"] == "Google Maps Platform" and m["count"] == 2
    assert m["routes_sha256"] == hashlib.sha256(result.routes_file.read_bytes()).hexdigest()
    assert m["options"]["center"] == pytest.approx([47.3702695, 8.54])
    for path in (result.routes_file, result.manifest_file):
        assert_no_secret(path.read_text())
    assert result.requests_sent == len(maps.log)


def test_same_seed_and_answers_give_identical_files(maps: FakeMaps, tmp_path: Path) -> None:
    a = collect_live_routes("Testville", 2, tmp_path / "a", client=client(maps), route_seed=5)
    b = collect_live_routes("Testville", 2, tmp_path / "b", client=client(maps), route_seed=5)
    assert a.routes_file.read_bytes() == b.routes_file.read_bytes()
    assert a.manifest_file.read_bytes() == b.manifest_file.read_bytes()
    headings = {
        s: [
            r.init_heading
            for r in collect_live_routes(
                "Testville", 2, tmp_path / f"s{s}", client=client(maps), route_seed=s
            ).routes
        ]
        for s in (6, 7)
    }
    assert headings[6] != headings[7]  # the seed draws the initial headings (and the order)


def test_center_and_place_types_limit_the_search(maps: FakeMaps, tmp_path: Path) -> None:
    result = collect_live_routes(
        "Testville",
        3,
        tmp_path,
        client=client(maps),
        center=parse_center("47.37, 8.54"),
        place_types=["book_store"],
    )
    assert not maps.calls(GEOCODE_PATH)  # --center: no geocoding
    assert {q["type"] for q in maps.calls(NEARBY_PATH) if "type" in q} == {"book_store"}
    assert [r.dest_place.name for r in result.routes] == ["Buchhandlung Orell"]  # 1 of 3: all there is
    with pytest.raises(ValueError, match="LAT,LNG"):
        parse_center("47.37")
    with pytest.raises(ValueError, match="could not geocode"):
        collect_live_routes("Atlantis", 1, tmp_path, client=client(maps))


def test_max_requests_caps_the_bill(maps: FakeMaps, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no route"):
        collect_live_routes("Testville", 2, tmp_path, client=client(maps), max_requests=22)
    assert len(maps.log) <= 22 + 1 + 8  # the cap is checked before each destination and each start


def test_signed_requests(maps: FakeMaps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    maps.secret = SECRET
    monkeypatch.setenv("GOOGLE_MAPS_URL_SIGNING_SECRET", SECRET)
    result = collect_live_routes("Testville", 1, tmp_path, client=client(maps))
    assert len(result.routes) == 1 and all("&signature=" in r for r in maps.raw)
    assert_no_secret(result.routes_file.read_text() + result.manifest_file.read_text())
    monkeypatch.setenv(
        "GOOGLE_MAPS_URL_SIGNING_SECRET", base64.urlsafe_b64encode(b"another secret key!!").decode()
    )
    with pytest.raises(MapsError, match="REQUEST_DENIED"):
        client(maps).geocode("Testville")


# --- errors, retries, secrets -------------------------------------------------------------------------


def test_missing_and_malformed_keys_are_clear_errors(maps: FakeMaps) -> None:
    with pytest.raises(MapsError, match="GOOGLE_MAPS_API_KEY") as exc:
        GoogleMapsClient(base_url=maps.base_url).geocode("Testville")
    assert exc.value.fatal and not maps.log  # nothing sent without a key
    with pytest.raises(MapsError, match="start with 'AIza'") as exc:
        client(maps, api_key="not-a-real-key-123").geocode("Testville")
    assert "not-a-real-key-123" not in str(exc.value) and exc.value.status == "INVALID_KEY"


def test_request_denied_is_fatal_and_never_shows_the_key(maps: FakeMaps, tmp_path: Path) -> None:
    maps.key = "AIza.THE-KEY-GOOGLE-EXPECTS"
    with pytest.raises(MapsError) as exc:
        collect_live_routes("Testville", 2, tmp_path, client=client(maps))
    assert exc.value.status == "REQUEST_DENIED" and exc.value.fatal
    assert "API key was rejected" in str(exc.value) and "The provided API key is invalid" in str(exc.value)
    assert_no_secret(str(exc.value))
    assert exc.value.__cause__ is None and len(maps.log) == 1  # no retry on a rejected key
    assert not (tmp_path / "route_infos.json").exists()


def test_quota_error_without_and_with_retries(maps: FakeMaps) -> None:
    maps.scripted[GEOCODE_PATH] = [Reply(200, fixture("over_query_limit"))]
    with pytest.raises(MapsError, match=r"quota exceeded \(OVER_QUERY_LIMIT\)") as exc:
        client(maps, retry_over_query_limit=False).geocode("Testville")
    assert exc.value.fatal and "billing account" in str(exc.value)
    # googlemaps' own OVER_QUERY_LIMIT retries (its ~0.5 s backoff), until retry_timeout runs out.
    maps.scripted[GEOCODE_PATH] = [Reply(200, fixture("over_query_limit")) for _ in range(10)]
    maps.log.clear()
    with pytest.raises(MapsError, match="still over the limit") as exc:
        client(maps, retry_timeout=0.2).geocode("Testville")
    assert exc.value.status == "OVER_QUERY_LIMIT" and len(maps.calls(GEOCODE_PATH)) == 2
    assert_no_secret(str(exc.value))


def test_429_then_success_honours_retry_after(maps: FakeMaps) -> None:
    maps.scripted[GEOCODE_PATH] = [Reply(429, b"{}", {"Retry-After": "0"})]
    maps.scripted[NEARBY_PATH] = [Reply(503, b""), Reply(502, b"")]
    sleeps: list[float] = []
    c = client(maps, sleeps)
    assert c.geocode("Testville")[0]["formatted_address"] == "Testville, Switzerland"
    assert sleeps == [0.0] and len(maps.calls(GEOCODE_PATH)) == 2
    assert c.places_nearby((47.37, 8.54), 20)  # after a 503 and a 502
    # urllib3 retries the first failure at once, then waits backoff * 2^n plus up to one backoff of jitter
    assert len(sleeps) == 3 and sleeps[1] == 0.0 and 0.02 <= sleeps[2] <= 0.03
    assert c.requests_sent == 5


def test_a_read_timeout_is_retried(maps: FakeMaps) -> None:
    maps.scripted[GEOCODE_PATH] = [Reply(200, fixture("geocode_ok"), delay_s=1.0)]
    sleeps: list[float] = []
    results = client(maps, sleeps, timeout=0.2).geocode("Testville")
    assert results[0]["place_id"] == "ChIJtestville_town"
    assert len(sleeps) == 1 and len(maps.calls(GEOCODE_PATH)) == 2


def test_persistent_5xx_and_dead_server_fail_cleanly(
    maps: FakeMaps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    maps.scripted[DIRECTIONS_PATH] = [Reply(503, b"") for _ in range(3)]
    sleeps: list[float] = []
    with pytest.raises(MapsError, match=r"failed after 3 attempts \(HTTP 503\)") as exc:
        client(maps, sleeps, max_retries=2).directions((47.37, 8.539), (47.3705, 8.5401))
    assert len(sleeps) == 2 and "key=REDACTED" in str(exc.value)
    assert_no_secret(str(exc.value))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = GoogleMapsClient(KEY, base_url=f"http://127.0.0.1:{port}", max_retries=1, sleep=lambda _: None)
    with pytest.raises(MapsError, match="ConnectionError") as exc:
        dead.geocode("Testville")
    assert_no_secret(str(exc.value)) and exc.value.__cause__ is None
    assert_no_secret(repr(dead))
    for record in caplog.records:
        assert_no_secret(record.getMessage())


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_collects_with_google_and_agent_run_replays_it(
    maps: FakeMaps, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sftrl.cli import main

    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", KEY)
    out = tmp_path / "routes"
    args = ["routes", "collect", "--source", "google", "--city", "Testville", "--n", "2", "--out", str(out)]
    assert main([*args, "--maps-base-url", maps.base_url, "--route-seed", "1", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "wrote 2 routes" in printed.out and "Google Maps Platform requests" in printed.out
    assert_no_secret(printed.out + printed.err)
    run_dir = tmp_path / "run"
    run = ["run", "--env", "virl", "--policy", "expert", "--routes", str(out / "route_infos.json")]
    assert main([*run, "--episodes", "2", "--out", str(run_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 2 and summary["success_rate"] == 1.0 and summary["errors"] == 0
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert_no_secret(f.read_text(errors="replace"))
    # Clear one-line errors: a rejected key, and options that belong to the other source.
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", "AIzaSyWRONG-key")
    assert main([*args, "--maps-base-url", maps.base_url, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "REQUEST_DENIED" in err and "AIzaSyWRONG-key" not in err
    assert main(["routes", "collect", "--city", "nyc", "--n", "1", "--out", str(out), "--center", "1,2"]) == 2
    assert "need --source google" in capsys.readouterr().err
    assert main([*args, "--split", "id"]) == 2
    assert "--source bundle only" in capsys.readouterr().err
