"""The read-through street-view cache: hits, persistence, offline replay, the Google guard, concurrency."""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest
from PIL import Image

from sftrl.environments.virl.env import VIRLEnv
from sftrl.street_view.cache import CachedProvider, default_cache_dir
from sftrl.street_view.city import load_city
from sftrl.street_view.provider import ProviderError, ViewRequest, make_provider
from sftrl.street_view.synthetic import SyntheticProvider


class CountingProvider(SyntheticProvider):
    """The real synthetic renderer, counting how often it is asked to draw."""

    def __init__(self) -> None:
        super().__init__("nyc")
        self.calls = 0
        self._count_lock = threading.Lock()

    def get_view(self, request: ViewRequest) -> Image.Image:
        with self._count_lock:
            self.calls += 1
        return super().get_view(request)


def requests_at(nodes: range, size: int = 32) -> list[ViewRequest]:
    city = load_city("nyc")
    return [
        ViewRequest(
            lat=float(city.lat[n]),
            lng=float(city.lng[n]),
            heading=h,
            width=size,
            height=size,
            city="nyc",
            node=n,
        )
        for n in nodes
        for h in (0.0, 90.0, 180.0, 270.0)
    ]


def check_index(cache_dir: Path, expected_rows: int) -> None:
    """The index is intact and every row points at a complete file with the recorded hash."""
    with sqlite3.connect(cache_dir / "index.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.execute("SELECT key, sha256, width, height FROM views").fetchall()
    assert len(rows) == expected_rows == len({k for k, *_ in rows})
    for _, sha, w, h in rows:
        data = (cache_dir / sha[:2] / f"{sha}.png").read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
        assert Image.open(cache_dir / sha[:2] / f"{sha}.png").size == (w, h)
    assert not list(cache_dir.rglob(".tmp-*"))  # no temp file left behind


def test_miss_then_hit_returns_identical_pixels_without_calling_inner(tmp_path: Path) -> None:
    inner = CountingProvider()
    cache = CachedProvider(inner, cache_dir=tmp_path)
    (r,) = requests_at(range(5, 6))[:1]
    first = cache.get_view(r)
    second = cache.get_view(r)
    assert inner.calls == 1
    assert first.mode == second.mode == "RGB" and first.size == (32, 32)
    assert first.tobytes() == second.tobytes() == inner.get_view(r).tobytes()
    assert cache.stats == {"hits": 1, "misses": 1, "inner_calls": 1}
    assert cache.cache_key(r) == inner.cache_key(r)
    assert len(cache) == 1
    check_index(tmp_path, 1)


def test_make_provider_builds_the_inner_provider_by_name(tmp_path: Path) -> None:
    cache = make_provider("cache", inner="synthetic", city="nyc", cache_dir=tmp_path)
    assert isinstance(cache, CachedProvider) and isinstance(cache.inner, SyntheticProvider)
    assert cache.get_view(requests_at(range(1, 2))[0]).size == (32, 32)


def test_cache_survives_reopening_and_replays_offline(tmp_path: Path) -> None:
    reqs = requests_at(range(10, 12))
    online = CachedProvider(CountingProvider(), cache_dir=tmp_path)
    pictures = [online.get_view(r).tobytes() for r in reqs]
    online.close()
    inner = CountingProvider()
    offline = CachedProvider(inner, cache_dir=tmp_path, offline=True)
    assert [offline.get_view(r).tobytes() for r in reqs] == pictures
    assert inner.calls == 0 and offline.stats["hits"] == len(reqs)


def test_offline_miss_says_what_to_do(tmp_path: Path) -> None:
    cache = CachedProvider("synthetic", cache_dir=tmp_path, offline=True, city="nyc")
    with pytest.raises(ProviderError, match="not in cache.*run once online.*synthetic provider"):
        cache.get_view(requests_at(range(1, 2))[0])
    assert cache.stats["misses"] == 1 and len(cache) == 0


def test_damaged_or_deleted_files_are_fetched_again(tmp_path: Path) -> None:
    inner = CountingProvider()
    cache = CachedProvider(inner, cache_dir=tmp_path)
    r = requests_at(range(3, 4))[0]
    good = cache.get_view(r).tobytes()
    (png,) = tmp_path.rglob("*.png")
    png.write_bytes(b"not a png")
    assert cache.get_view(r).tobytes() == good and inner.calls == 2
    png.unlink()
    assert cache.get_view(r).tobytes() == good and inner.calls == 3
    check_index(tmp_path, 1)


def test_caching_google_imagery_must_be_opted_into(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="Terms of Service.*cache-google-imagery"):
        make_provider("cache", inner="google", cache_dir=tmp_path)
    google = make_provider("google")
    with pytest.raises(ProviderError, match="cache_google_imagery"):
        CachedProvider(google, cache_dir=tmp_path, offline=True)
    # Opted in: builds without a key (an offline replay never needs one).
    cache = CachedProvider("google", cache_dir=tmp_path, offline=True, allow_google=True)
    assert cache.inner.name == "google"
    with pytest.raises(ProviderError, match="not in cache"):
        cache.get_view(requests_at(range(1, 2))[0])


def test_default_cache_dir_follows_sftrl_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFTRL_CACHE_DIR", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "street_view"
    cache = CachedProvider("synthetic", city="nyc")
    assert cache.cache_dir == tmp_path / "root" / "street_view" and cache.index_path.exists()
    monkeypatch.delenv("SFTRL_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "sftrl" / "street_view"


def test_concurrent_threads_share_one_cache(tmp_path: Path) -> None:
    reqs = requests_at(range(20, 26))  # 24 views; every thread asks for all of them, in its own order
    inner = CountingProvider()
    shared = CachedProvider(inner, cache_dir=tmp_path)
    errors: list[BaseException] = []
    results: dict[int, dict[int, bytes]] = {}

    def work(i: int) -> None:
        try:
            # half the threads share one instance, the others open their own
            cache = shared if i % 2 else CachedProvider(CountingProvider(), cache_dir=tmp_path)
            order = list(range(i, len(reqs))) + list(range(i))
            results[i] = {j: cache.get_view(reqs[j]).tobytes() for j in order}
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(res == results[0] for res in results.values())
    check_index(tmp_path, len(reqs))


def _worker(cache: CachedProvider, reverse: bool, out: multiprocessing.Queue) -> None:
    reqs = requests_at(range(30, 36))
    order = list(reversed(reqs)) if reverse else reqs
    out.put([hashlib.sha256(cache.get_view(r).tobytes()).hexdigest() for r in order][:: -1 if reverse else 1])


def test_two_processes_fill_one_cache(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each, as rollout workers are
    cache = CachedProvider("synthetic", cache_dir=tmp_path, city="nyc")  # pickled into each worker
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(cache, reverse, out)) for reverse in (False, True)]
    for p in procs:
        p.start()
    a, b = out.get(timeout=120), out.get(timeout=120)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert a == b
    check_index(tmp_path, 24)
    replay = CachedProvider(CountingProvider(), cache_dir=tmp_path, offline=True)
    assert [hashlib.sha256(replay.get_view(r).tobytes()).hexdigest() for r in requests_at(range(30, 36))] == a


def test_virl_vision_episode_is_replayed_from_the_cache(tmp_path: Path) -> None:
    def play(**kwargs: object) -> list[bytes]:
        env = VIRLEnv(
            modality="vision", resolution=32, street_view="cache", cache_dir=str(tmp_path), **kwargs
        )
        obs, _ = env.reset(seed=3)
        grids = [obs.images[0].tobytes()]
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(obs.oracle["expert_reply"])
            done = terminated or truncated
            grids += [img.tobytes() for img in obs.images]
        assert info["success"]
        return grids

    first = play()
    rows = len(CachedProvider("synthetic", cache_dir=tmp_path, city="nyc"))
    assert rows >= 4  # at least one 2x2 grid stored
    # Offline: any view not on disk would raise, so success means every view came from the cache.
    assert play(offline=True) == first
    assert len(CachedProvider("synthetic", cache_dir=tmp_path, city="nyc")) == rows


def test_a_cache_passed_to_the_env_serves_its_views_even_while_empty(tmp_path: Path) -> None:
    # An empty cache has len 0: the env must still read through it (it once fell back to its own
    # synthetic provider, so the cache never filled and every "warm" replay rendered again).
    cache = CachedProvider(SyntheticProvider(city="nyc"), cache_dir=tmp_path)
    env = VIRLEnv(provider=cache, modality="vision", resolution=32)
    first, _ = env.reset(seed=1, options={"route_index": 0})
    assert cache.stats == {"hits": 0, "misses": 4, "inner_calls": 4} and len(cache) == 4
    again, _ = env.reset(seed=1, options={"route_index": 0})
    assert cache.stats["hits"] == 4 and cache.stats["inner_calls"] == 4
    assert again.images[0].tobytes() == first.images[0].tobytes()
