"""The Google Street View provider against a real HTTP server on 127.0.0.1 standing in for Google."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from PIL import Image

from sftrl.street_view.cache import CachedProvider
from sftrl.street_view.google import GoogleStreetViewProvider, redact, sign_url_path
from sftrl.street_view.provider import ProviderError, ViewRequest, make_provider

FIXTURES = Path(__file__).parent / "fixtures" / "google"
KEY = "AIza.TEST-very-secret-key_0123456789"
SECRET = base64.urlsafe_b64encode(b"a 20-byte hmac key!!").decode()  # urlsafe base64, as Google issues
PANO = json.loads((FIXTURES / "metadata_ok.json").read_text())["pano_id"]
NO_IMAGERY_LAT = 0.0  # the fake answers ZERO_RESULTS here (mid-ocean)


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeGoogle:
    """A real HTTP server speaking the Street View Static API's metadata and image endpoints."""

    key: str = KEY
    secret: str | None = None
    scripted: dict[str, list[Reply]] = field(default_factory=dict)  # path -> replies served first
    log: list[tuple[str, dict[str, str]]] = field(default_factory=list)
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
        if self.scripted.get(parts.path):
            return self.scripted[parts.path].pop(0)
        metadata = parts.path.endswith("/metadata")
        denied = Reply(200, fixture("metadata_request_denied")) if metadata else Reply(403, b"Forbidden")
        if query.get("key") != self.key:
            return denied
        if self.secret is not None:
            # Verify the signature independently of the code under test: HMAC-SHA1 over path+query
            # (everything before "&signature="), keyed by the base64url-decoded secret.
            unsigned, _, sig = raw_path.partition("&signature=")
            want = hmac.new(base64.urlsafe_b64decode(self.secret), unsigned.encode(), hashlib.sha1)
            if sig != base64.urlsafe_b64encode(want.digest()).decode():
                return denied
        if metadata:
            if "pano" in query:
                return Reply(200, fixture("metadata_ok" if query["pano"] == PANO else "metadata_not_found"))
            lat = float(query["location"].split(",")[0])
            return Reply(200, fixture("metadata_zero_results" if lat == NO_IMAGERY_LAT else "metadata_ok"))
        if query.get("pano") != PANO:
            return Reply(404, b"Not Found")
        w, h = (int(v) for v in query["size"].split("x"))
        # The heading becomes the red channel, so tests can see which view came back.
        img = Image.new("RGB", (w, h), (int(float(query["heading"])) % 256, 100, 200))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return Reply(200, buf.getvalue(), {"Content-Type": "image/png"})


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            reply = fake.handle(self.path)
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


def provider(fake: FakeGoogle, delays: list[float] | None = None, **kwargs: Any) -> GoogleStreetViewProvider:
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("backoff", 0.01)
    sleeps = delays if delays is not None else []
    return GoogleStreetViewProvider(base_url=fake.base_url, sleep=sleeps.append, **kwargs)


def req(**kwargs: Any) -> ViewRequest:
    return ViewRequest(
        **{"lat": 40.758, "lng": -73.9855, "heading": 30.0, "width": 64, "height": 48, **kwargs}
    )


def assert_no_secret(text: str) -> None:
    assert (
        KEY not in text and SECRET not in text and "signature=" not in text.replace("signature=REDACTED", "")
    )


def test_snaps_to_a_panorama_then_fetches_the_view(google: FakeGoogle) -> None:
    p = make_provider("google", api_key=KEY, base_url=google.base_url)
    img = p.get_view(req(heading=30.0))
    assert img.mode == "RGB" and img.size == (64, 48)
    assert img.getpixel((10, 10)) == (30, 100, 200)
    (meta,) = google.calls("/maps/api/streetview/metadata")
    assert (
        meta["location"] == "40.758000,-73.985500" and meta["radius"] == "50" and meta["source"] == "outdoor"
    )
    (image,) = google.calls("/maps/api/streetview")
    # The image is asked for by the snapped panorama, not by position.
    assert image["pano"] == PANO and "location" not in image
    assert image["size"] == "64x48" and image["heading"] == "30.00" and image["fov"] == "90"
    assert image["return_error_code"] == "true" and "signature" not in image


def test_grid_of_four_headings_costs_one_metadata_call(google: FakeGoogle) -> None:
    p = provider(google)
    views = [p.get_view(req(heading=h)) for h in (0.0, 90.0, 180.0, 270.0)]
    assert [v.getpixel((0, 0))[0] for v in views] == [0, 90, 180, 270 % 256]
    assert len(google.calls("/maps/api/streetview/metadata")) == 1
    assert len(google.calls("/maps/api/streetview")) == 4


def test_known_pano_id_is_used_directly_and_unknown_one_fails(google: FakeGoogle) -> None:
    p = provider(google)
    assert p.get_view(req(pano_id=PANO, lat=1.0, lng=2.0)).size == (64, 48)
    assert google.calls("/maps/api/streetview/metadata")[0]["pano"] == PANO
    with pytest.raises(ProviderError, match="no imagery.*NOT_FOUND"):
        p.get_view(req(pano_id="nope"))


def test_large_views_are_fetched_at_640_and_scaled_to_the_requested_size(google: FakeGoogle) -> None:
    img = provider(google).get_view(req(width=800, height=400))
    assert img.size == (800, 400)
    assert google.calls("/maps/api/streetview")[0]["size"] == "640x320"


def test_429_with_retry_after_is_waited_out_then_succeeds(google: FakeGoogle) -> None:
    google.scripted["/maps/api/streetview"] = [Reply(429, b"Too Many Requests", {"Retry-After": "2"})]
    delays: list[float] = []
    img = provider(google, delays).get_view(req(heading=7.0))
    assert img.getpixel((0, 0)) == (7, 100, 200)
    assert len(google.calls("/maps/api/streetview")) == 2
    assert delays == [2.0]


def test_server_errors_exhaust_retries_with_growing_backoff(google: FakeGoogle) -> None:
    google.scripted["/maps/api/streetview/metadata"] = [Reply(500, b"oops") for _ in range(5)]
    delays: list[float] = []
    p = provider(google, delays, max_retries=3, backoff=0.1)
    with pytest.raises(ProviderError) as err:
        p.get_view(req())
    assert "after 4 attempts" in str(err.value) and "HTTP 500" in str(err.value)
    assert_no_secret(str(err.value))
    assert len(google.calls("/maps/api/streetview/metadata")) == 4
    assert google.calls("/maps/api/streetview") == []
    # urllib3's rule: first retry at once, then backoff * 2^n plus up to one backoff of jitter
    assert len(delays) == 3 and delays[0] == 0
    for n, d in enumerate(delays[1:], start=1):
        assert 0.1 * 2**n <= d <= 0.1 * 2**n + 0.1


def test_other_4xx_are_not_retried(google: FakeGoogle) -> None:
    google.scripted["/maps/api/streetview"] = [Reply(400, b"Invalid request. Invalid 'size' parameter.")]
    delays: list[float] = []
    with pytest.raises(ProviderError, match="HTTP 400.*Invalid 'size'"):
        provider(google, delays).get_view(req())
    assert len(google.calls("/maps/api/streetview")) == 1 and delays == []


def test_connection_errors_are_retried_and_reported_without_the_key() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays: list[float] = []
    p = GoogleStreetViewProvider(
        api_key=KEY, base_url=f"http://127.0.0.1:{port}", max_retries=2, sleep=delays.append, timeout=2
    )
    with pytest.raises(ProviderError, match="after 3 attempts.*ConnectionError") as err:
        p.get_view(req())
    assert len(delays) == 2
    assert_no_secret(str(err.value))
    assert err.value.__cause__ is None and err.value.__context__ is None


def test_request_denied_and_quota_are_told_apart(google: FakeGoogle) -> None:
    with pytest.raises(ProviderError, match="REQUEST_DENIED.*key") as denied:
        provider(google, api_key="AIza-wrong-key").get_view(req())
    assert "AIza-wrong-key" not in str(denied.value)
    google.scripted["/maps/api/streetview/metadata"] = [Reply(200, fixture("metadata_over_query_limit"))]
    with pytest.raises(ProviderError, match="quota exceeded.*OVER_QUERY_LIMIT"):
        provider(google).get_view(req())


def test_zero_results_says_no_imagery_within_the_radius(google: FakeGoogle) -> None:
    with pytest.raises(ProviderError, match="no imagery within 25 m.*ZERO_RESULTS"):
        provider(google, radius_m=25).get_view(req(lat=NO_IMAGERY_LAT, lng=-30.0))
    assert google.calls("/maps/api/streetview") == []  # no billed image request for a miss


def test_image_endpoint_403_is_a_clear_error(google: FakeGoogle) -> None:
    google.scripted["/maps/api/streetview"] = [
        Reply(403, b"The Google Maps Platform server rejected your request.")
    ]
    with pytest.raises(ProviderError, match="HTTP 403, request denied") as err:
        provider(google).get_view(req())
    assert_no_secret(str(err.value))
    assert "key=REDACTED" in str(err.value)  # the URL is shown for debugging, with the key scrubbed


def test_missing_key_names_the_environment_variable(
    google: FakeGoogle, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = make_provider("google", base_url=google.base_url)  # constructing needs no key
    with pytest.raises(ProviderError, match="GOOGLE_MAPS_API_KEY"):
        p.get_view(req())
    with pytest.raises(ProviderError, match="MY_MAPS_KEY"):
        make_provider("google", base_url=google.base_url, api_key_env="MY_MAPS_KEY").get_view(req())
    assert google.log == []
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", KEY)
    assert p.get_view(req()).size == (64, 48)


def test_signed_requests_are_accepted_by_a_verifying_server(
    google: FakeGoogle, monkeypatch: pytest.MonkeyPatch
) -> None:
    google.secret = SECRET
    monkeypatch.setenv("GOOGLE_MAPS_URL_SIGNING_SECRET", SECRET)
    assert provider(google).get_view(req(heading=12.5)).getpixel((0, 0))[0] == 12
    assert all("signature" in q for _, q in google.log)
    wrong = base64.urlsafe_b64encode(b"another 20-byte key!").decode()
    with pytest.raises(ProviderError, match="REQUEST_DENIED"):
        provider(google, signing_secret=wrong).get_view(req(heading=1.0))
    with pytest.raises(ProviderError, match="not valid URL-safe base64") as bad:
        provider(google, signing_secret="not base64!!").get_view(req(heading=2.0))
    assert "not base64!!" not in str(bad.value)


def test_url_signature_matches_googles_documented_example() -> None:
    # The worked example in Google's URL-signing documentation.
    assert (
        sign_url_path(
            "/maps/api/geocode/json?address=New+York&client=clientID", "vNIXE0xscrmjlyV-12Nj_BvUPaw="
        )
        == "chaRF2hTJKOScPr-RQCEhZbSzIE="
    )


def test_key_never_leaks_into_errors_repr_cache_keys_logs_or_the_cache_db(
    google: FakeGoogle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 logs every request line at DEBUG
    p = provider(google, signing_secret=SECRET)
    google.secret = SECRET
    texts = [repr(p), p.cache_key(req()), p.cache_key(req(pano_id=PANO))]
    google.scripted["/maps/api/streetview"] = [
        Reply(429, b"slow down"),
        Reply(418, b"teapot key=" + KEY.encode()),
    ]
    for bad in (req(), req(lat=NO_IMAGERY_LAT)):
        with pytest.raises(ProviderError) as err:
            p.get_view(bad)
        texts.append(str(err.value))
    cache = CachedProvider(p, cache_dir=tmp_path, allow_google=True)
    first = cache.get_view(req(heading=3.0))
    n = len(google.log)
    assert cache.get_view(req(heading=3.0)).tobytes() == first.tobytes()
    assert len(google.log) == n  # served from disk
    texts.append(repr(cache))
    assert "GET /maps/api/streetview" in caplog.text  # the request lines were logged…
    texts.append(caplog.text)  # …with the key scrubbed
    for text in texts:
        assert_no_secret(text)
    assert "key=REDACTED" in caplog.text
    cache.close()
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes() and SECRET.encode() not in f.read_bytes()


def test_redact_scrubs_query_secrets_and_literal_values() -> None:
    url = f"https://maps.googleapis.com/maps/api/streetview?size=1x1&key={KEY}&signature=abc-_=&x=1"
    assert (
        redact(url)
        == "https://maps.googleapis.com/maps/api/streetview?size=1x1&key=REDACTED&signature=REDACTED&x=1"
    )
    assert redact(f"bad token {KEY} here", KEY) == "bad token REDACTED here"


def test_cache_key_depends_on_the_view_not_on_credentials(google: FakeGoogle) -> None:
    a, b = provider(google, api_key="AIza-one"), provider(google, api_key="AIza-two", signing_secret=SECRET)
    assert a.cache_key(req()) == b.cache_key(req())
    assert a.cache_key(req()).startswith("google/")
    assert a.cache_key(req()) != a.cache_key(req(heading=31.0))
    assert a.cache_key(req()) != a.cache_key(req(width=65))
    assert a.cache_key(req(heading=30.0)) == a.cache_key(req(heading=390.0))
    assert a.cache_key(req(pano_id=PANO)) == a.cache_key(req(pano_id=PANO, lat=1.0))
    assert a.cache_key(req()) != provider(google, radius_m=10).cache_key(req())
