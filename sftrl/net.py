"""The one retry and deadline layer for HTTP: urllib3 ``Retry`` on a ``requests`` session, plus deadlines.

``requests`` and ``urllib3`` time out per socket operation only, so a server that trickles one byte a
second never times out. :class:`DeadlineSession` gives every call (all retries and the whole body
included) a total deadline: a timer shuts the call's sockets down when it passes, and the call raises
:class:`DeadlineExceeded`. Retries of connection errors, read errors and 408/409/429/5xx (``Retry-After``
honoured, capped at :data:`MAX_RETRY_AFTER_S`) are urllib3's :class:`~urllib3.util.Retry` mounted on the
session. The async OpenAI-protocol client shares :data:`RETRY_STATUSES` and :func:`retry_after_s` so
both stacks retry the same statuses and read ``Retry-After`` with the same (urllib3's) parser.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

__all__ = [
    "MAX_RETRY_AFTER_S",
    "RETRY_STATUSES",
    "DeadlineExceeded",
    "DeadlineSession",
    "deadline_for",
    "retry_after_s",
]

# Timeouts, conflicts, rate limits, overload and server-side failures: worth another attempt (the
# statuses the official OpenAI client retries; harmless for Google's APIs).
RETRY_STATUSES: Final = frozenset({408, 409, 429, 500, 502, 503, 504})
# One Retry-After header must not stall a run for minutes.
MAX_RETRY_AFTER_S: Final = 60.0
_HEADER_PARSER: Final = Retry(total=0)


class DeadlineExceeded(requests.exceptions.Timeout):
    """A call did not complete (connect, retries and the whole body) within its total deadline."""


class _Expired(Exception):
    # Deliberately not an OSError: urllib3 retries OSErrors, and an expired call must stop at once.
    pass


def retry_after_s(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP date), capped; None if absent/bad."""
    if not value:
        return None
    try:
        seconds = _HEADER_PARSER.parse_retry_after(value)
    except InvalidHeader:
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def deadline_for(timeout: float, max_retries: int, backoff: float, backoff_max: float) -> float:
    """The total deadline of one call: ``timeout`` for every attempt plus the longest backoff waits.

    urllib3 retries the first failure at once and then waits ``backoff`` × 2^n plus up to ``backoff``
    of jitter, capped at ``backoff_max``. A ``Retry-After`` that would end past the deadline ends the
    call at once instead of waiting.
    """
    waits = sum(min(backoff_max, backoff * (2**n + 1)) for n in range(1, max_retries))
    return timeout * (max_retries + 1) + waits


class _Scope:
    """The call in progress on one thread: its connections, and whether its deadline has passed."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self.attempts = 0
        self._conns: list[HTTPConnection] = []
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def track(self, conn: HTTPConnection) -> None:
        if self.expired:
            raise _Expired
        with self._lock:
            if conn not in self._conns:
                self._conns.append(conn)
            # Kept apart from the connection: http.client detaches the socket from a connection whose
            # response will close it (HTTP/1.0, "Connection: close") and hands it to the response.
            sock = getattr(conn, "sock", None)
            if isinstance(sock, socket.socket) and sock not in self._socks:
                self._socks.append(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            socks = list(self._socks)
            socks += [c.sock for c in self._conns if isinstance(getattr(c, "sock", None), socket.socket)]
        for sock in socks:
            # socket.socket.shutdown, not SSLSocket.shutdown: the latter drops the TLS object under
            # the thread still reading from it. Shutting down unblocks that thread's recv().
            with contextlib.suppress(OSError):  # already closed by its owner
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


_local = threading.local()


def _scope() -> _Scope | None:
    return getattr(_local, "scope", None)


class _Tracked:
    """Mixin for urllib3 connections: each connect and request joins the thread's call in progress."""

    def connect(self) -> None:
        scope = _scope()
        if scope is not None:
            scope.track(self)  # type: ignore[arg-type]
        super().connect()  # type: ignore[misc]
        if scope is not None:
            scope.track(self)  # type: ignore[arg-type]  # now with its socket

    def request(self, *args: Any, **kwargs: Any) -> None:
        if (scope := _scope()) is not None:
            scope.track(self)  # type: ignore[arg-type]
            scope.attempts += 1
        super().request(*args, **kwargs)  # type: ignore[misc]


class _TrackedHTTPConnection(_Tracked, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _Retry(Retry):
    """urllib3's Retry with an injectable sleep (tests record the waits) that never outlives the deadline."""

    def __init__(self, *args: Any, sleeper: Callable[[float], None] = time.sleep, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sleeper = sleeper

    def new(self, **kw: Any) -> _Retry:
        kw.setdefault("sleeper", self.sleeper)
        return super().new(**kw)

    def sleep(self, response: Any = None) -> None:
        delay = self.get_retry_after(response) if response is not None else None
        if delay is None or not self.respect_retry_after_header:
            delay = self.get_backoff_time()
        delay = min(delay, MAX_RETRY_AFTER_S)
        scope = _scope()
        if scope is not None and time.monotonic() + delay >= scope.deadline:
            scope.expired = True  # waiting would only end past the deadline: give up now
            raise _Expired
        self.sleeper(max(0.0, delay))


class _RetryAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class DeadlineSession(requests.Session):
    """A ``requests`` session whose calls retry transient failures and end by a total deadline.

    ``timeout`` is the per-operation timeout requests passes to sockets when a call gives none;
    ``deadline`` bounds each call as a whole (default :func:`deadline_for`). ``max_retries`` counts
    retries of connection errors, read errors and :data:`RETRY_STATUSES` (``retry_statuses`` to
    change them); waits grow as ``backoff`` × 2^n (first retry immediate, urllib3's rule) plus up to
    ``backoff`` of jitter, capped at ``backoff_max``, or follow ``Retry-After``. When retries run out on
    a status, the last response is returned (callers report the status); errors raise as usual.
    """

    def __init__(
        self,
        *,
        timeout: float,
        max_retries: int,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        deadline: float | None = None,
        retry_statuses: Iterable[int] = RETRY_STATUSES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        if timeout <= 0 or max_retries < 0 or backoff < 0 or backoff_max < 0:
            raise ValueError("timeout must be > 0; max_retries, backoff and backoff_max >= 0")
        self.timeout = float(timeout)
        self.deadline = (
            float(deadline) if deadline else deadline_for(timeout, max_retries, backoff, backoff_max)
        )
        self.attempts = 0  # HTTP attempts, retries included
        retry = _Retry(
            total=max_retries,
            connect=max_retries,
            read=max_retries,
            status=max_retries,
            other=0,
            redirect=5,
            allowed_methods=None,  # GETs and POSTs alike: the APIs called are idempotent queries
            status_forcelist=frozenset(retry_statuses),
            backoff_factor=backoff,
            backoff_jitter=backoff,
            backoff_max=backoff_max,
            raise_on_status=False,
            respect_retry_after_header=True,
            sleeper=sleep,
        )
        adapter = _RetryAdapter(max_retries=retry)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    @contextlib.contextmanager
    def within_deadline(self) -> Iterator[None]:
        """One deadline over everything inside: a call and the reading of a streamed body.

        ``with session.within_deadline(): r = session.get(url, stream=True); r.iter_content(...)``
        bounds the headers and the body together (calls made inside share this deadline).
        """
        if _scope() is not None:  # nested (a redirect, or a call inside a scope): the outer one holds
            yield
            return
        scope = _Scope(time.monotonic() + self.deadline)
        timer = threading.Timer(self.deadline, scope.expire)
        timer.daemon = True
        _local.scope = scope
        timer.start()
        try:
            yield
            if scope.expired:  # cut off mid-headers, the parser may still have produced a response
                raise _Expired
        except Exception as exc:
            if scope.expired:
                how = "cut off" if isinstance(exc, _Expired) else type(exc).__name__
                raise DeadlineExceeded(
                    f"no complete answer within the {self.deadline:g} s deadline (retries included): {how}"
                ) from None
            raise
        finally:
            timer.cancel()
            _local.scope = None
            self.attempts += scope.attempts

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        with self.within_deadline():
            response = super().send(request, **kwargs)
            scope = _scope()
            if scope is not None and scope.expired:
                response.close()
        return response
