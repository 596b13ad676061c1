"""A read-through disk cache around another street-view provider, safe for many threads and processes.

Layout under ``cache_dir``::

    index.sqlite3          key -> sha256, provider, request JSON, size, created_at (WAL mode)
    ab/abcdef0123….png     content-addressed PNGs, named by the sha256 of their bytes

A view is looked up by the inner provider's ``cache_key(request)`` (which never holds secrets). On a miss
the inner provider draws or fetches it, the PNG is written to a temporary file in its final directory and
``os.replace``d into place (readers never see half a file; two writers of the same content just replace
it with identical bytes), and only then is the index row inserted — so an index row always points at a
complete file. SQLite in WAL mode with a busy timeout lets rollout workers in several processes read
while one writes. ``offline=True`` never calls the inner provider: a miss is an error, which is how runs
are replayed bit-for-bit from a cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

from PIL import Image

from sftrl.street_view.provider import ProviderError, StreetViewProvider, ViewRequest, make_provider

__all__ = ["CachedProvider", "default_cache_dir"]

SCHEMA_VERSION: Final = 1
INDEX_NAME: Final = "index.sqlite3"
BUSY_TIMEOUT_MS: Final = 30_000
# zlib level 1: PNG stays lossless, encoding is several times faster than the default 6 and the files
# are only ~10-20 % larger.
PNG_COMPRESS_LEVEL: Final = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS views (
    key TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    provider TEXT NOT NULL,
    request TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_GOOGLE_TOS = (
    "caching Google Street View imagery may breach the Google Maps Platform Terms of Service, which "
    "restrict storing content outside the service; it is off unless you opt in with "
    "--cache-google-imagery (cache_google_imagery: true, or CachedProvider(..., allow_google=True)) "
    "after checking that your use is permitted"
)


def default_cache_dir() -> Path:
    """``$SFTRL_CACHE_DIR/street_view``, else ``~/.cache/sftrl/street_view``."""
    root = os.environ.get("SFTRL_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "sftrl"
    return base / "street_view"


class CachedProvider:
    """Serve views from a disk cache, asking ``inner`` only on a miss (never, when ``offline``).

    ``inner`` is a provider name (built with ``make_provider(inner, **inner_kwargs)``) or an instance.
    Caching Google imagery must be opted into with ``allow_google=True``. ``hits`` and ``misses`` count
    this instance's lookups; ``inner_calls`` counts views the inner provider produced.
    """

    name = "cache"

    def __init__(
        self,
        inner: str | StreetViewProvider = "synthetic",
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        offline: bool = False,
        allow_google: bool = False,
        **inner_kwargs: Any,
    ) -> None:
        inner_name = inner if isinstance(inner, str) else getattr(inner, "name", type(inner).__name__)
        if inner_name == "cache":
            raise ValueError("a cache cannot wrap another cache")
        if inner_name == "google" and not allow_google:
            raise ProviderError(f"refusing to cache Google Street View images: {_GOOGLE_TOS}")
        # How to rebuild the inner provider in another process (providers hold locks and caches that do not
        # pickle); None when the caller handed us an instance.
        self._inner_spec: tuple[str, dict[str, Any]] | None = None
        if isinstance(inner, str):
            self.inner: StreetViewProvider = make_provider(inner, **inner_kwargs)
            self._inner_spec = (inner, dict(inner_kwargs))
        else:
            if inner_kwargs:
                raise TypeError(f"inner options {sorted(inner_kwargs)} only apply when inner is a name")
            self.inner = inner
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.offline = offline
        self.allow_google = allow_google
        self.hits = 0
        self.misses = 0
        self.inner_calls = 0
        self._init_state()
        self._connect()  # create the directory and schema now, so a bad cache_dir fails at construction

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:
        return (
            f"CachedProvider(inner={self.inner!r}, cache_dir={str(self.cache_dir)!r}, "
            f"offline={self.offline}, hits={self.hits}, misses={self.misses})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for process pools: each process opens its own SQLite connections and, when the inner
        # provider was built by name, builds its own inner provider.
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state.pop("_local", None)
        if self._inner_spec is not None:
            state.pop("inner", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()
        if self._inner_spec is not None:
            name, kwargs = self._inner_spec
            self.inner = make_provider(name, **kwargs)

    # -- index ---------------------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.cache_dir / INDEX_NAME

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections must not cross threads, nor survive a fork)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Autocommit mode (isolation_level=None): every statement is its own short transaction, so no
        # reader ever holds a lock while it decodes a PNG.
        conn = sqlite3.connect(self.index_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes, fast
            conn.executescript(_SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta(name, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )
            (version,) = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ProviderError(
                f"street-view cache index {self.index_path} is unreadable ({exc}): "
                "delete it (the images are re-fetched) or use another --cache-dir"
            ) from None
        if int(version) != SCHEMA_VERSION:
            conn.close()
            raise ProviderError(
                f"street-view cache {self.cache_dir} has schema {version}, this sftrl reads "
                f"{SCHEMA_VERSION}: use another --cache-dir"
            )
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        """Close this thread's index connection (others close when their threads end).

        An inner provider built here by name is ours and is closed too; one passed in stays the caller's.
        """
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        inner_close = getattr(self.inner, "close", None) if self._inner_spec is not None else None
        if inner_close is not None:
            inner_close()

    def __len__(self) -> int:
        return int(self._connect().execute("SELECT COUNT(*) FROM views").fetchone()[0])

    def path_for(self, sha256: str) -> Path:
        return self.cache_dir / sha256[:2] / f"{sha256}.png"

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "inner_calls": self.inner_calls}

    # -- provider API --------------------------------------------------------------------------------
    def cache_key(self, request: ViewRequest) -> str:
        return self.inner.cache_key(request)

    def get_view(self, request: ViewRequest) -> Image.Image:
        key = self.inner.cache_key(request)
        img = self._lookup(key, request)
        if img is not None:
            with self._lock:
                self.hits += 1
            return img
        with self._lock:
            self.misses += 1
        if self.offline:
            raise ProviderError(
                f"street view not in cache (offline mode): {key} under {self.cache_dir} — run once online "
                "(without --offline) to fill the cache, or use the synthetic provider"
            )
        img = self.inner.get_view(request).convert("RGB")
        with self._lock:
            self.inner_calls += 1
        self._store(key, request, img)
        return img

    def _lookup(self, key: str, request: ViewRequest) -> Image.Image | None:
        row = self._connect().execute("SELECT sha256 FROM views WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        (sha,) = row
        try:
            data = self.path_for(sha).read_bytes()
        except FileNotFoundError:
            return None  # the file was deleted by hand: treat as a miss and write it again
        if hashlib.sha256(data).hexdigest() != sha:
            return None  # a damaged file: re-fetch (the store below overwrites it atomically)
        img = Image.open(io.BytesIO(data))
        img.load()
        img = img.convert("RGB")
        if img.size != (request.width, request.height):
            return None
        return img

    def _store(self, key: str, request: ViewRequest, img: Image.Image) -> None:
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha)
        if not (path.exists() and path.stat().st_size == len(data)):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        # ViewRequest holds only geometry and place names; the inner provider's credentials never get here.
        request_json = json.dumps(request.model_dump(mode="json"), sort_keys=True)
        # Upsert: a damaged or missing file found on lookup is replaced by the fresh one.
        self._connect().execute(
            "INSERT INTO views(key, sha256, provider, request, width, height, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET sha256 = excluded.sha256, created_at = excluded.created_at",
            (key, sha, self.inner.name, request_json, img.width, img.height, time.time()),
        )
