"""A thin typed wrapper over ``googlemaps.Client`` for Geocoding, Places nearby and walking Directions.

The route collector (:mod:`sftrl.environments.virl.collect_live`) needs three Google Maps Platform web
services; ``googlemaps`` (a core dependency) already speaks them, so this module only adds what the
project requires around it:

* **Credentials**: the key comes from ``api_key`` or ``$GOOGLE_MAPS_API_KEY`` and is read on the first
  call, never at construction. An optional URL-signing secret (``$GOOGLE_MAPS_URL_SIGNING_SECRET``)
  signs every request with Google's documented HMAC-SHA1 over path and query — ``googlemaps`` signs only
  Premium ``client=`` credentials, so signing happens in the HTTP session handed to the client.
* **Retries**: ``googlemaps`` retries 500/503/504 and ``OVER_QUERY_LIMIT`` bodies, but not HTTP 429,
  502, connection errors or timeouts, and its timeouts are per read. The session is a
  :class:`sftrl.net.DeadlineSession`: urllib3 retries 408/429/5xx, connection and read errors
  ``max_retries`` times (``Retry-After`` honoured) and every call ends by a total deadline; the
  client's own ``OVER_QUERY_LIMIT`` retry (``retry_over_query_limit=True``) stays on and is bounded by
  ``retry_timeout``.
* **Errors**: every failure is a :class:`MapsError` that says what to do (missing key, key rejected
  with ``REQUEST_DENIED``, quota with ``OVER_QUERY_LIMIT``, network), with the API status in ``status``.
  No message ever holds the key or the signature: URLs and transport texts pass through
  :func:`sftrl.street_view.google.redact`, and the original exceptions (whose texts can hold the full
  URL) are not chained.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import googlemaps
import googlemaps.exceptions
import requests

from sftrl.net import RETRY_STATUSES, DeadlineSession
from sftrl.street_view.google import (
    _install_log_filter,
    redact,
    sign_url_path,
)
from sftrl.street_view.provider import ProviderError

__all__ = ["GoogleMapsClient", "LatLng", "MapsError"]

DEFAULT_BASE_URL: Final = "https://maps.googleapis.com"
# API statuses that fail every later request the same way: a collection stops on them.
_FATAL_STATUSES: Final = frozenset({"REQUEST_DENIED", "OVER_QUERY_LIMIT", "OVER_DAILY_LIMIT"})

LatLng = tuple[float, float]
TravelMode = Literal["walking", "driving", "bicycling", "transit"]


class MapsError(ProviderError):
    """A Google Maps Platform request failed; ``status`` is the API status (``REQUEST_DENIED``…) if any."""

    def __init__(self, message: str, *, status: str | None = None, fatal: bool = False) -> None:
        super().__init__(message, fatal=fatal)
        self.status = status


class _GaveUp(Exception):
    """Raised by the session once its retries are spent; ``googlemaps`` wraps it in a TransportError."""


class _MapsSession(DeadlineSession):
    """The session ``googlemaps.Client`` sends through: signs URLs; retries and deadlines are the base's.

    ``googlemaps`` calls ``session.get(base_url + path_and_query, **kwargs)``; the signature is computed
    over the URL's path and query exactly as Google's URL-signing documentation describes.
    """

    def __init__(
        self,
        secret: Callable[[], str | None],
        redactor: Callable[[str], str],
        *,
        timeout: float,
        max_retries: int,
        backoff: float,
        sleep: Callable[[float], None],
    ) -> None:
        super().__init__(timeout=timeout, max_retries=max_retries, backoff=backoff, sleep=sleep)
        self._secret = secret
        self._redact = redactor
        self.last_api_status: str | None = None  # "status" of the last JSON body seen

    @property
    def requests_sent(self) -> int:
        return self.attempts

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        url = url.decode() if isinstance(url, bytes) else url
        secret = self._secret()
        if secret:
            parts = urlsplit(url)
            signature = sign_url_path(f"{parts.path}?{parts.query}", secret)
            url = f"{url}&signature={signature}"
        shown = self._redact(url)
        before = self.attempts
        try:
            response = super().get(url, **kwargs)
        except requests.RequestException as exc:
            # requests puts the full URL (key included) into these texts: keep a redacted copy only.
            last = f"{type(exc).__name__}: {self._redact(str(exc))}"
        else:
            if response.status_code not in RETRY_STATUSES:
                self._note_status(response)
                return response
            last = f"HTTP {response.status_code}"
            response.close()
        # Raised rather than returned so googlemaps does not start a second round of retries on 5xx.
        raise _GaveUp(f"failed after {max(1, self.attempts - before)} attempts ({last}): {shown}")

    def _note_status(self, response: requests.Response) -> None:
        # Remembered so a googlemaps Timeout after OVER_QUERY_LIMIT retries can be reported as a quota
        # problem rather than a bare "timed out".
        try:
            body = response.json()
        except ValueError:
            self.last_api_status = None
            return
        self.last_api_status = body.get("status") if isinstance(body, dict) else None


class GoogleMapsClient:
    """Geocoding, Places nearby search and Directions through ``googlemaps.Client``.

    ``base_url`` points the client elsewhere (tests use a server on 127.0.0.1). ``sleep`` is the wait
    used between the session's own retries (tests pass a recorder); ``retry_timeout`` bounds the
    client's ``OVER_QUERY_LIMIT`` retries. ``requests_sent`` counts HTTP attempts.
    """

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
        retry_over_query_limit: bool = True,
        retry_timeout: float = 60.0,
        language: str = "en",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if timeout <= 0 or max_retries < 0 or backoff < 0 or retry_timeout <= 0:
            raise ValueError("timeout and retry_timeout must be > 0, max_retries and backoff >= 0")
        self._api_key = api_key
        self.api_key_env = api_key_env
        self._signing_secret = signing_secret
        self.signing_secret_env = signing_secret_env
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.retry_over_query_limit = retry_over_query_limit
        self.retry_timeout = float(retry_timeout)
        self.language = language
        self._session = _MapsSession(
            self._resolve_secret,
            self._redact,
            timeout=self.timeout,
            max_retries=max_retries,
            backoff=backoff,
            sleep=sleep,
        )
        self._client: googlemaps.Client | None = None
        _install_log_filter()

    def __repr__(self) -> str:
        key = "set" if self._key(required=False) else f"missing (${self.api_key_env})"
        signing = "on" if self._resolve_secret() else "off"
        return f"GoogleMapsClient(base_url={self.base_url!r}, key={key}, signing={signing})"

    @property
    def requests_sent(self) -> int:
        return self._session.requests_sent

    # -- credentials ---------------------------------------------------------------------------------
    def _key(self, required: bool = True) -> str | None:
        key = self._api_key or os.environ.get(self.api_key_env) or None
        if key is None and required:
            raise MapsError(
                f"the Google Maps Platform APIs need an API key: set the environment variable "
                f"{self.api_key_env} (a key with the Geocoding, Places and Directions APIs enabled), "
                "or collect offline from a city bundle with --source bundle",
                fatal=True,
            )
        return key

    def _resolve_secret(self) -> str | None:
        return self._signing_secret or os.environ.get(self.signing_secret_env) or None

    def _redact(self, text: str) -> str:
        return redact(text, self._api_key, os.environ.get(self.api_key_env), self._resolve_secret())

    def _gmaps(self) -> googlemaps.Client:
        if self._client is None:
            key = self._key()
            try:
                self._client = googlemaps.Client(
                    key=key,
                    base_url=self.base_url,
                    timeout=self.timeout,
                    retry_over_query_limit=self.retry_over_query_limit,
                    retry_timeout=self.retry_timeout,
                    requests_session=self._session,
                )
            except ValueError:
                # googlemaps' own check ("Invalid API key provided."): say what is wrong, never the key.
                raise MapsError(
                    f"${self.api_key_env} does not look like a Google Maps Platform API key (those start "
                    "with 'AIza'): copy it again from the Cloud console's Credentials page",
                    status="INVALID_KEY",
                    fatal=True,
                ) from None
        return self._client

    # -- calls ---------------------------------------------------------------------------------------
    def _call(self, api: str, fn: Callable[[googlemaps.Client], Any]) -> Any:
        client = self._gmaps()
        try:
            return fn(client)
        except googlemaps.exceptions.ApiError as exc:
            raise self._api_error(api, str(exc.status), exc.message) from None
        except googlemaps.exceptions.HTTPError as exc:
            denied = exc.status_code == 403
            hint = " (request denied: check the key and that the API is enabled)" if denied else ""
            raise MapsError(f"{api} request failed with HTTP {exc.status_code}{hint}") from None
        except googlemaps.exceptions.TransportError as exc:
            base = exc.base_exception
            if isinstance(base, ProviderError):  # a malformed signing secret (the text names no secret)
                raise MapsError(f"{api}: {base}".replace("Street View ", ""), fatal=True) from None
            text = str(base) if isinstance(base, _GaveUp) else f"failed: {type(base).__name__}: {base}"
            raise MapsError(f"{api} request {self._redact(text)}") from None
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # googlemaps parses the body itself: a body that is not the API's JSON surfaces here.
            raise MapsError(
                f"{api} answered with a body that is not the API's JSON ({type(exc).__name__})"
            ) from None
        except googlemaps.exceptions.Timeout:
            if self._session.last_api_status == "OVER_QUERY_LIMIT":
                raise self._api_error(api, "OVER_QUERY_LIMIT", None, retried=True) from None
            raise MapsError(f"{api} request timed out after retrying for {self.retry_timeout:g} s") from None

    def _api_error(self, api: str, status: str, message: str | None, *, retried: bool = False) -> MapsError:
        detail = self._redact(message or "").strip()
        if status == "REQUEST_DENIED":
            text = (
                f"{api} request denied (REQUEST_DENIED): the API key was rejected — check that it is valid, "
                f"that the {api} API is enabled for its project with billing attached, and that the "
                "URL-signing secret (if the key requires signatures) matches"
            )
        elif status in ("OVER_QUERY_LIMIT", "OVER_DAILY_LIMIT"):
            waited = f" (still over the limit after retrying for {self.retry_timeout:g} s)" if retried else ""
            text = (
                f"{api} quota exceeded ({status}){waited}: the key's project has used its quota or rate "
                "limit, or has no billing account — wait, or raise the quota in the Cloud console"
            )
        else:
            text = f"{api} request failed ({status})"
        if detail:
            text = f"{text}. Google said: {detail}"
        return MapsError(text, status=status, fatal=status in _FATAL_STATUSES)

    def geocode(self, address: str) -> list[dict[str, Any]]:
        """Geocoding API ``results`` for ``address`` (empty when Google finds nothing)."""
        return _results(
            "Geocoding", self._call("Geocoding", lambda c: c.geocode(address, language=self.language))
        )

    def places_nearby(
        self, location: LatLng, radius: float, type: str | None = None, keyword: str | None = None
    ) -> list[dict[str, Any]]:
        """Places API (legacy) Nearby Search ``results`` within ``radius`` metres of ``location``.

        Only the first page (up to 20 places, Google's prominence order) is returned: a
        ``next_page_token`` is valid only a few seconds after it is issued, and one page per query is
        what the route recipe needs.
        """
        body = self._call(
            "Places",
            lambda c: c.places_nearby(
                location=(location[0], location[1]),
                radius=max(1, round(radius)),
                type=type,
                keyword=keyword,
                language=self.language,
            ),
        )
        return _results("Places", body.get("results", []) if isinstance(body, dict) else body)

    def directions(
        self,
        origin: LatLng,
        destination: LatLng,
        mode: TravelMode = "walking",
        avoid: Sequence[str] = ("indoor",),
    ) -> list[dict[str, Any]]:
        """Directions API ``routes`` from ``origin`` to ``destination`` (V-IRL avoids indoor paths)."""
        return _results(
            "Directions",
            self._call(
                "Directions",
                lambda c: c.directions(
                    (origin[0], origin[1]),
                    (destination[0], destination[1]),
                    mode=mode,
                    avoid=list(avoid) or None,
                    language=self.language,
                ),
            ),
        )


def _results(api: str, value: Any) -> list[dict[str, Any]]:
    """``value`` as the list of result objects the API documents, or the one error type."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise MapsError(f"{api} answered with results that are not a list of objects")
    return value
