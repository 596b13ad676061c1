"""Environment cost of V-IRL: reset and step of VIRL-L and VIRL-VL (2x2 grid render), and the cache hit path.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_virl.py [--n 100] [--resolution 320]``. Prints a table of
per-call times (median and p90, in ms). VIRL-VL renders four synthetic views per observation; the
"cache (warm)" rows replay the same episodes through the read-through disk cache, so every view is a
cache hit (SQLite lookup + PNG decode) instead of a render; the run checks the hit and miss counts
(all misses cold, all hits warm) and prints the warm-step speed-up over rendering.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from rich.console import Console
from rich.table import Table

from sftrl.environments import make_env
from sftrl.environments.virl.env import VIRLEnv
from sftrl.street_view.provider import make_provider


def row(table: Table, name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    table.add_row(name, str(len(ms)), f"{statistics.median(ms):.3f}", f"{ms[int(0.9 * (len(ms) - 1))]:.3f}")


def measure(env: VIRLEnv, n: int) -> tuple[list[float], list[float]]:
    """Reset times and expert step times over ``n`` episodes (route_index i, seed i)."""
    resets, steps = [], []
    for i in range(n):
        t0 = time.perf_counter()
        obs, _ = env.reset(seed=i, options={"route_index": i % len(env.routes)})
        resets.append((time.perf_counter() - t0) * 1000)
        done = False
        while not done:
            reply = obs.oracle["expert_reply"]
            t0 = time.perf_counter()
            obs, _, terminated, truncated, _ = env.step(reply)
            steps.append((time.perf_counter() - t0) * 1000)
            done = terminated or truncated
    return resets, steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100, help="episodes per configuration")
    ap.add_argument("--resolution", type=int, default=320, help="pixels per view (grid is 2x2)")
    args = ap.parse_args()
    table = Table(title=f"V-IRL env cost (ms per call; views {args.resolution} px, grid 2x2)")
    for col in ("operation", "n", "median ms", "p90 ms"):
        table.add_column(col, justify="right" if col != "operation" else "left")
    make_env("virl").routes  # noqa: B018 - generate the route set before timing
    for tag, kwargs in (
        ("VIRL-L rail", {}),
        ("VIRL-L free", {"mode": "free"}),
        ("VIRL-VL rail (synthetic)", {"modality": "vision"}),
    ):
        env = make_env("virl", resolution=args.resolution, **kwargs)
        assert isinstance(env, VIRLEnv)
        measure(env, 3)  # warm caches (city data, fonts, textures)
        resets, steps = measure(env, args.n)
        row(table, f"{tag} reset", resets)
        row(table, f"{tag} step (expert)", steps)
        if kwargs.get("modality") == "vision":
            rendered_s = steps
    with tempfile.TemporaryDirectory() as tmp:
        provider = make_provider("cache", inner="synthetic", city="nyc", cache_dir=tmp)
        env = VIRLEnv(provider=provider, modality="vision", resolution=args.resolution)
        cold_r, cold_s = measure(env, args.n)
        cold = provider.stats
        warm_r, warm_s = measure(env, args.n)
        warm = {k: v - cold[k] for k, v in provider.stats.items()}
        # The rows are only what they say if the cache served every view of the replay.
        if cold["misses"] == 0 or warm["misses"] != 0 or warm["hits"] != cold["hits"] + cold["misses"]:
            raise SystemExit(f"the cache rows did not measure what they say: cold {cold}, warm {warm}")
        row(table, "VIRL-VL rail via cache (cold: render + store) reset", cold_r)
        row(table, "VIRL-VL rail via cache (cold) step", cold_s)
        row(table, "VIRL-VL rail via cache (warm: all hits) reset", warm_r)
        row(table, "VIRL-VL rail via cache (warm) step", warm_s)
    console = Console()
    console.print(table)
    console.print(
        f"cache: cold pass {cold['misses']} views rendered and stored ({cold['hits']} repeats hit), "
        f"warm pass {warm['hits']} hits, 0 misses; warm step vs synthetic render: "
        f"{statistics.median(rendered_s) / statistics.median(warm_s):.1f}x faster (median)"
    )


if __name__ == "__main__":
    main()
