"""Live street views from Google's Street View Static API: snap a position to a panorama, fetch the image.

Each view costs two HTTP calls: a metadata request (``/maps/api/streetview/metadata``, free of charge)
that snaps the requested lat/lng to the nearest panorama within ``radius_m`` (or checks
``request.pano_id``), then the billed image request for that panorama with the request's heading, fov
and pitch. Metadata answers are memoised, so a 2x2 grid (four headings at one spot) is one metadata
call and four image calls.

Why plain ``requests`` and not ``googlemaps.Client``: the ``googlemaps`` package (a core dependency)
covers the JSON web services (geocoding, directions, places, static maps…) but has no Street View
call, and its private ``Client._request`` parses JSON, signs only the Premium ``client=`` credentials
(not an API key plus URL-signing secret), does not retry HTTP 429 nor honour ``Retry-After``, and wraps
transport errors with the full URL, key included. We do use its public helpers
:func:`googlemaps.client.urlencode_params` and :func:`googlemaps.client.sign_hmac`, so the query string
we sign is encoded exactly as Google's reference client encodes it, and the HTTP goes through the
``requests`` library that ``googlemaps`` itself depends on.

Secrets: the API key and signing secret only ever appear in the URL actually sent. Every URL or
transport error text that reaches an exception is passed through :func:`redact`; ``cache_key`` hashes
only the view's geometry; ``repr`` says whether a key is set, not what it is; and a logging filter
scrubs ``key=``/``signature=`` from urllib3's debug log of request lines.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import requests
from googlemaps.client import sign_hmac, urlencode_params
from PIL import Image, UnidentifiedImageError

from sftrl.net import RETRY_STATUSES, DeadlineSession
from sftrl.scrub import scrub
from sftrl.street_view.provider import ProviderError, ViewRequest

__all__ = ["GoogleStreetViewProvider", "PanoMetadata", "redact", "sign_url_path"]

DEFAULT_BASE_URL: Final = "https://maps.googleapis.com"
METADATA_PATH: Final = "/maps/api/streetview/metadata"
IMAGE_PATH: Final = "/maps/api/streetview"
# The Static API serves at most 640x640 (without a Premium plan); larger requests are fetched at the
# largest size with the same aspect ratio and scaled up, so callers always get the size they asked for.
MAX_SIDE: Final = 640
CACHE_KEY_VERSION: Final = 1
_SECRET_PARAM = re.compile(r"(?i)\b(key|signature|client)=[^&#\s'\"<>]*")

log = logging.getLogger(__name__)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every ``key=``/``signature=``/``client=`` value and every secret removed.

    Secrets are removed in every form a server may echo them in (literal, URL-encoded, JSON-escaped,
    base64: :func:`sftrl.scrub.scrub`).
    """
    text = scrub(text, *secrets, mask="REDACTED")
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=REDACTED", text)


def sign_url_path(path_and_query: str, secret: str) -> str:
    """The URL signature of ``path_and_query`` (``/maps/api/...?a=b``) under a urlsafe-base64 secret.

    Google's documented algorithm: HMAC-SHA1 of the path and query, keyed by the base64url-decoded
    secret, base64url-encoded.
    """
    try:
        return sign_hmac(secret, path_and_query)
    except (ValueError, UnicodeError) as exc:  # binascii.Error is a ValueError
        # Never echo the secret: say only what is wrong with it.
        raise ProviderError(
            "the Street View URL-signing secret is not valid URL-safe base64 "
            f"(copy it again from the Cloud console): {type(exc).__name__}"
        ) from None


class _RedactingFilter(logging.Filter):
    """Scrubs API keys out of urllib3's ``"GET /path?query"`` debug records before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_FILTER = _RedactingFilter()


def _install_log_filter() -> None:
    for name in ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.poolmanager", "requests"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


@dataclass(frozen=True)
class PanoMetadata:
    """Where a request snapped to: the panorama id, its position and capture date."""

    pano_id: str
    lat: float
    lng: float
    date: str | None = None
    copyright: str | None = None


class GoogleStreetViewProvider:
    """Street views from Google's Street View Static API (billed per image; needs an API key).

    The key comes from ``api_key`` or the environment variable named by ``api_key_env``, and the
    optional URL-signing secret from ``signing_secret`` / ``signing_secret_env``. Both are read when the
    first view is requested, not at construction, so a cache replaying Google views offline never needs
    them. ``source="outdoor"`` keeps indoor panoramas out; ``radius_m`` is how far a position may snap.
    Transient failures (HTTP 408, 409, 429, 5xx, connection and read errors) are retried ``max_retries`` times
    by :class:`sftrl.net.DeadlineSession` (exponential backoff from ``backoff``, ``Retry-After`` honoured),
    and each call, retries included, ends by a total deadline (:func:`sftrl.net.deadline_for`).
    """

    name = "google"

    def __init__(
        self,
        api_key: str | None = None,
        *,
        api_key_env: str = "GOOGLE_MAPS_API_KEY",
        signing_secret: str | None = None,
        signing_secret_env: str = "GOOGLE_MAPS_URL_SIGNING_SECRET",
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        source: Literal["outdoor", "default"] = "outdoor",
        radius_m: float = 50,
        session: requests.Session | None = None,
        city: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        metadata_cache_size: int = 4096,
    ) -> None:
        # ``city`` is accepted (and unused) so callers can pass the same kwargs to every provider.
        if source not in ("outdoor", "default"):
            raise ValueError(f"source must be 'outdoor' or 'default', got {source!r}")
        if timeout <= 0 or max_retries < 0 or backoff < 0 or radius_m <= 0:
            raise ValueError("timeout and radius_m must be > 0, max_retries and backoff >= 0")
        self._api_key = api_key
        self.api_key_env = api_key_env
        self._signing_secret = signing_secret
        self.signing_secret_env = signing_secret_env
        self.base_url = base_url.rstrip("/")
        self._base_path = urlsplit(self.base_url).path.rstrip("/")
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.source = source
        self.radius_m = radius_m
        self.city = city
        self._session = session
        self._sleep = sleep
        self._metadata: OrderedDict[tuple[str, str], PanoMetadata] = OrderedDict()
        self._metadata_cache_size = metadata_cache_size
        self._lock = threading.Lock()
        self._local = threading.local()  # one requests.Session per thread unless one was given
        self.requests_sent = 0  # HTTP attempts, retries included
        _install_log_filter()

    def __repr__(self) -> str:
        key = "set" if self._resolve_key(required=False) else f"missing (${self.api_key_env})"
        signing = "on" if self._resolve_secret() else "off"
        return (
            f"GoogleStreetViewProvider(base_url={self.base_url!r}, source={self.source!r}, "
            f"radius_m={self.radius_m}, key={key}, signing={signing})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for process pools: locks, thread-locals and sessions are rebuilt on the other side.
        state = self.__dict__.copy()
        for name in ("_lock", "_local", "_session"):
            state.pop(name, None)
        state["_metadata"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._session = None

    # -- credentials ---------------------------------------------------------------------------------
    def _resolve_key(self, required: bool = True) -> str | None:
        key = self._api_key or os.environ.get(self.api_key_env) or None
        if key is None and required:
            raise ProviderError(
                f"Google Street View needs an API key: set the environment variable {self.api_key_env} "
                "(a key with the Street View Static API enabled), or work without one: "
                "--street-view synthetic, or replay a filled cache with --street-view cache --offline",
                fatal=True,
            )
        return key

    def _resolve_secret(self) -> str | None:
        return self._signing_secret or os.environ.get(self.signing_secret_env) or None

    # -- public API ----------------------------------------------------------------------------------
    def cache_key(self, request: ViewRequest) -> str:
        """A hash of the view's geometry and snapping options: never the key or signature.

        Keyed on the *requested* position (rounded to 1e-6°, ~0.1 m), not the snapped one, so a cache can
        look a view up without a metadata call — that is what makes offline replay possible.
        """
        payload: dict[str, Any] = {
            "provider": self.name,
            "v": CACHE_KEY_VERSION,
            "heading": round(request.heading % 360.0, 2) % 360.0,
            "fov": round(request.fov, 2),
            "pitch": round(request.pitch, 2),
            "size": [request.width, request.height],
        }
        if request.pano_id:
            payload["pano"] = request.pano_id
        else:
            payload |= {
                "lat": round(request.lat, 6),
                "lng": round(request.lng, 6),
                "source": self.source,
                "radius": self.radius_m,
            }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return f"google/v{CACHE_KEY_VERSION}/{digest}"

    def metadata(self, request: ViewRequest) -> PanoMetadata:
        """The panorama ``request`` snaps to (memoised; metadata calls are free but not instant)."""
        if request.pano_id:
            memo = ("pano", request.pano_id)
            params: list[tuple[str, Any]] = [("pano", request.pano_id)]
        else:
            loc = f"{request.lat:.6f},{request.lng:.6f}"
            memo = ("loc", f"{loc}/{self.source}/{self.radius_m:g}")
            params = [("location", loc), ("radius", f"{self.radius_m:g}"), ("source", self.source)]
        with self._lock:
            if memo in self._metadata:
                self._metadata.move_to_end(memo)
                return self._metadata[memo]
        response = self._get(METADATA_PATH, params, "metadata")
        meta = self._parse_metadata(response, request)
        with self._lock:
            self._metadata[memo] = meta
            while len(self._metadata) > self._metadata_cache_size:
                self._metadata.popitem(last=False)
        return meta

    def get_view(self, request: ViewRequest) -> Image.Image:
        meta = self.metadata(request)
        w, h = request.width, request.height
        scale = min(1.0, MAX_SIDE / max(w, h))
        fw, fh = max(1, round(w * scale)), max(1, round(h * scale))
        params: list[tuple[str, Any]] = [
            ("size", f"{fw}x{fh}"),
            ("pano", meta.pano_id),
            ("heading", f"{round(request.heading % 360.0, 2) % 360.0:.2f}"),
            ("fov", f"{round(request.fov, 2):g}"),
            ("pitch", f"{round(request.pitch, 2):g}"),
            # Without it Google answers a missing panorama with HTTP 200 and a grey placeholder image.
            ("return_error_code", "true"),
        ]
        response = self._get(IMAGE_PATH, params, "image")
        ctype = response.headers.get("Content-Type", "")
        if not ctype.startswith("image/"):
            raise ProviderError(
                f"Street View image request returned {ctype or 'no content type'} instead of an image: "
                f"{self._redact(response.text)[:200]}"
            )
        try:
            img = Image.open(io.BytesIO(response.content))
            img.load()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ProviderError(f"Street View returned an undecodable image: {exc}") from None
        img = img.convert("RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.LANCZOS)
        return img

    # -- HTTP ----------------------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        return redact(text, self._api_key, os.environ.get(self.api_key_env), self._resolve_secret())

    def _url(self, path: str, params: list[tuple[str, Any]]) -> str:
        """The full request URL: params, then ``key``, then ``signature`` over path+query when signing."""
        key = self._resolve_key()
        query = urlencode_params([*params, ("key", key)])
        path_and_query = f"{self._base_path}{path}?{query}"
        secret = self._resolve_secret()
        if secret:
            path_and_query += f"&signature={sign_url_path(path_and_query, secret)}"
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}{path_and_query}"

    def _http(self) -> requests.Session:
        if self._session is not None:
            return self._session
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = DeadlineSession(
                timeout=self.timeout, max_retries=self.max_retries, backoff=self.backoff, sleep=self._sleep
            )
        return session

    def _get(self, path: str, params: list[tuple[str, Any]], what: str) -> requests.Response:
        """GET with retries on 429/5xx/connection errors (the session's); any other non-200 fails at once."""
        url = self._url(path, params)
        shown = self._redact(url)
        session = self._http()
        before = getattr(session, "attempts", 0)
        try:
            response = session.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            # requests puts the full URL (key included) into these messages: keep only a redacted copy
            # and do not chain the original exception.
            last = f"{type(exc).__name__}: {self._redact(str(exc))}"
            if isinstance(exc, requests.Timeout):  # DeadlineExceeded included
                cause = "timeout"
            elif isinstance(exc, requests.ConnectionError):
                cause = "connect"
            else:  # broken bodies, redirect loops, ...
                cause = "connection"
        else:
            status = response.status_code
            if status == 200:
                self._count(session, before)
                return response
            if status not in RETRY_STATUSES:
                self._count(session, before)
                raise self._http_error(response, what, shown)
            last = f"HTTP {status}"
            cause = "server"
            response.close()
        attempts = self._count(session, before)
        raise ProviderError(
            f"Street View {what} request failed after {attempts} attempts ({last}): {shown}", cause=cause
        )

    def _count(self, session: requests.Session, before: int) -> int:
        attempts = max(1, getattr(session, "attempts", before + 1) - before)
        with self._lock:
            self.requests_sent += attempts
        return attempts

    def _http_error(self, response: requests.Response, what: str, shown: str) -> ProviderError:
        status = response.status_code
        body = self._redact(response.text).strip()[:300]
        if status == 403:
            hint = (
                "request denied: check that the key is valid, has the Street View Static API enabled "
                "and billing set up, and that the URL signature (if the key requires one) is correct"
            )
        elif status == 404:
            hint = "no imagery for this panorama / view"
        else:
            hint = "the request was rejected"
        return ProviderError(f"Street View {what} HTTP {status}, {hint}: {body} [{shown}]")

    def _parse_metadata(self, response: requests.Response, request: ViewRequest) -> PanoMetadata:
        try:
            body = response.json()
        except ValueError:
            raise ProviderError(
                f"Street View metadata was not JSON: {self._redact(response.text)[:200]}"
            ) from None
        if not isinstance(body, dict):
            raise ProviderError(f"Street View metadata was JSON but not an object: {type(body).__name__}")
        status = body.get("status", "")
        where = f"pano {request.pano_id!r}" if request.pano_id else f"({request.lat:.6f}, {request.lng:.6f})"
        detail = self._redact(str(body.get("error_message", "")))
        if status == "OK":
            try:
                return PanoMetadata(
                    pano_id=str(body["pano_id"]),
                    lat=float(body["location"]["lat"]),
                    lng=float(body["location"]["lng"]),
                    date=body.get("date"),
                    copyright=body.get("copyright"),
                )
            except (KeyError, TypeError, ValueError):
                raise ProviderError(f"Street View metadata for {where} is missing pano_id/location") from None
        if status in ("ZERO_RESULTS", "NOT_FOUND"):
            scope = "" if request.pano_id else f" within {self.radius_m:g} m ({self.source} panoramas)"
            raise ProviderError(f"Street View has no imagery{scope} for {where} ({status})")
        if status == "REQUEST_DENIED":
            raise ProviderError(
                f"Street View request denied (REQUEST_DENIED): the API key was rejected — check that it is "
                f"valid, has the Street View Static API enabled and billing attached, and that the "
                f"signature secret matches. {detail}".strip(),
                fatal=True,
            )
        if status == "OVER_QUERY_LIMIT":
            raise ProviderError(
                "Street View quota exceeded (OVER_QUERY_LIMIT): the key is valid but its project has used "
                f"its quota or rate limit — wait, or raise the quota in the Cloud console. {detail}".strip()
            )
        failure = f"Street View metadata for {where} failed: {status or 'no status'} {detail}"
        raise ProviderError(failure.strip())
