"""Total deadlines and bounded retries of every HTTP client, against hostile servers on 127.0.0.1."""

from __future__ import annotations

import time

import pytest
import requests
from hostile_server import HostileServer

from sftrl.net import DeadlineExceeded, DeadlineSession, retry_after_s
from sftrl.street_view.google import GoogleStreetViewProvider
from sftrl.street_view.google_maps import GoogleMapsClient, MapsError
from sftrl.street_view.provider import ProviderError, ViewRequest

KEY = "AIza.TEST-net-secret-key_0123456789"
VIEW = ViewRequest(lat=40.758, lng=-73.9855, heading=30.0, width=64, height=48)


@pytest.mark.parametrize("mode", ["trickle", "trickle_http10", "trickle_headers"])
def test_a_trickling_server_hits_the_total_deadline(mode: str) -> None:
    # Each byte arrives well within the 0.5 s read timeout, so only a total deadline can end the call.
    with HostileServer(mode, interval=0.1) as server:
        session = DeadlineSession(timeout=0.5, max_retries=1, backoff=0.05, backoff_max=0.1)
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="1 s deadline"):
            session.get(server.base_url + "/x")
        assert time.monotonic() - start < 1.0 + 1.0


def test_resets_are_retried_a_bounded_number_of_times() -> None:
    with HostileServer("reset") as server:
        waits: list[float] = []
        session = DeadlineSession(timeout=1.0, max_retries=2, backoff=0.01, sleep=waits.append)
        with pytest.raises(requests.ConnectionError):
            session.get(server.base_url + "/x")
        assert server.connections == 3 and session.attempts == 3 and len(waits) == 2


def test_retry_after_parsing_is_capped_and_tolerant() -> None:
    assert retry_after_s("2") == 2.0
    assert retry_after_s("100000") == 60.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait


def test_street_view_provider_ends_by_its_deadline_on_a_trickling_server() -> None:
    with HostileServer("trickle", interval=0.1) as server:
        p = GoogleStreetViewProvider(
            api_key=KEY, base_url=server.base_url, timeout=0.5, max_retries=1, backoff=0.01
        )
        start = time.monotonic()
        with pytest.raises(ProviderError, match="DeadlineExceeded") as err:
            p.get_view(VIEW)
        assert time.monotonic() - start < 3.0
        assert KEY not in str(err.value)
        # An unanswered service: the runner counts it towards stopping a run that cannot succeed.
        assert err.value.cause == "timeout" and err.value.infrastructure


@pytest.mark.parametrize(
    ("mode", "body", "match"),
    [
        ("json", b"[1, 2]", "not an object"),
        ("bad_chunk", b"", "ChunkedEncodingError"),
        ("redirect_loop", b"", "TooManyRedirects"),
        ("reset", b"", "ConnectionError"),
    ],
)
def test_street_view_maps_every_transport_fault_to_provider_error(mode: str, body: bytes, match: str) -> None:
    with HostileServer(mode, body=body) as server:
        p = GoogleStreetViewProvider(
            api_key=KEY, base_url=server.base_url, timeout=2, max_retries=1, backoff=0
        )
        with pytest.raises(ProviderError, match=match) as err:
            p.get_view(VIEW)
        assert KEY not in str(err.value) and err.value.__cause__ is None
        assert err.value.infrastructure == (mode != "json")  # a bad body is an answer, not an outage


def test_maps_client_ends_by_its_deadline_on_a_trickling_server() -> None:
    with HostileServer("trickle", interval=0.1) as server:
        c = GoogleMapsClient(KEY, base_url=server.base_url, timeout=0.5, max_retries=1, backoff=0.01)
        start = time.monotonic()
        with pytest.raises(MapsError, match="DeadlineExceeded") as err:
            c.geocode("Testville")
        assert time.monotonic() - start < 3.0
        assert KEY not in str(err.value)


def test_weight_sync_and_the_serve_health_poll_end_by_their_deadlines(tmp_path) -> None:
    import subprocess
    import sys

    from sftrl.agents.serve import ServeError, wait_until_ready
    from sftrl.training.weight_sync import VLLMServerWeightSync, WeightSyncError

    with HostileServer("trickle_headers", interval=0.1) as server:
        sync = VLLMServerWeightSync([server.base_url + "/v1"], tmp_path, timeout=1.0)
        start = time.monotonic()
        with pytest.raises(WeightSyncError, match="cannot reach.*DeadlineExceeded"):
            sync.check()
        assert time.monotonic() - start < 3.0
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            start = time.monotonic()
            with pytest.raises(
                ServeError, match=r"not ready after 1s \(not listening yet \(DeadlineExceeded\)\)"
            ):
                wait_until_ready(server.base_url + "/health", proc, timeout_s=1.0, poll_s=0.5)
            assert time.monotonic() - start < 5.0
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"status": "OK", "results": 5, "routes": 5}',
        b'{"status": "OK", "results": [1], "routes": [1]}',
    ],
)
def test_maps_client_turns_malformed_bodies_into_maps_errors(body: bytes) -> None:
    with HostileServer("json", body=body) as server:
        c = GoogleMapsClient(KEY, base_url=server.base_url, max_retries=0)
        for call in (
            lambda: c.geocode("Testville"),
            lambda: c.places_nearby((47.37, 8.54), 20),
            lambda: c.directions((47.37, 8.539), (47.3705, 8.5401)),
        ):
            with pytest.raises(MapsError) as err:
                call()
            assert KEY not in str(err.value) and err.value.__cause__ is None


def test_a_streamed_body_is_bounded_by_the_same_deadline() -> None:
    with HostileServer("trickle_http10", interval=0.1) as server:
        session = DeadlineSession(timeout=1.0, max_retries=0, deadline=0.5)
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded), session.within_deadline():
            response = session.get(server.base_url + "/x", stream=True)
            for _ in response.iter_content(1 << 16):
                pass
        assert time.monotonic() - start < 2.0
