"""What the street-view disk cache costs and saves: ms per view for a synthetic render, a miss, a hit.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_street_cache.py [--nodes 50] [--resolution 320]``. Views
are four headings at ``--nodes`` NYC street nodes. "render (no cache)" draws each view with warm scene
caches; "miss" draws it and stores the PNG plus the index row (a fresh temp dir); "hit"
reads the same views back (SQLite lookup, file read, sha256 check, PNG decode). The last column is each
path's median relative to the plain render.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

from PIL import Image
from rich.console import Console
from rich.table import Table

from sftrl.street_view.cache import CachedProvider
from sftrl.street_view.city import load_city
from sftrl.street_view.provider import ViewRequest
from sftrl.street_view.synthetic import SyntheticProvider


def timed(get: Callable[[ViewRequest], Image.Image], reqs: list[ViewRequest]) -> list[float]:
    out = []
    for r in reqs:
        t0 = time.perf_counter()
        get(r)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=50, help="street nodes (4 views each)")
    ap.add_argument("--resolution", type=int, default=320, help="pixels per view side")
    args = ap.parse_args()
    city = load_city("nyc")
    step = max(1, len(city.lat) // args.nodes)
    reqs = [
        ViewRequest(
            lat=float(city.lat[n]),
            lng=float(city.lng[n]),
            heading=h,
            width=args.resolution,
            height=args.resolution,
            city="nyc",
            node=n,
        )
        for n in range(0, step * args.nodes, step)
        for h in (0.0, 90.0, 180.0, 270.0)
    ]
    synthetic = SyntheticProvider("nyc")
    for r in reqs:  # build every scene once, so all three rows draw from warm geometry caches
        synthetic.get_view(r)
    rows = [("render (no cache)", timed(synthetic.get_view, reqs))]
    with tempfile.TemporaryDirectory() as tmp:
        cache = CachedProvider(synthetic, cache_dir=tmp)
        rows.append(("miss: render+store", timed(cache.get_view, reqs)))
        rows.append(("hit: read+decode", timed(cache.get_view, reqs)))
        assert cache.stats == {"hits": len(reqs), "misses": len(reqs), "inner_calls": len(reqs)}
        cache.close()
    base = statistics.median(rows[0][1])
    table = Table(title=f"street-view cache, {args.resolution}x{args.resolution} px views (ms per view)")
    for col in ("path", "views", "median ms", "p90 ms", "mean ms", "vs render"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, ms in rows:
        srt = sorted(ms)
        med = statistics.median(srt)
        table.add_row(
            name,
            str(len(ms)),
            f"{med:.2f}",
            f"{srt[int(0.9 * (len(srt) - 1))]:.2f}",
            f"{statistics.fmean(ms):.2f}",
            f"{med / base:.2f}x",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
