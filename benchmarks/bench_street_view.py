"""Cost of the synthetic street view: one view and one 2x2 grid, cold and warm, per city and size.

Run: ``python benchmarks/bench_street_view.py [--n 40] [--sizes 320 640] [--cities nyc helsinki]``.
"Cold" is the first view at a street node the provider has not drawn before (it builds the node's
street geometry: roads, facades, crosswalks within 130 m); "warm" draws the same node again at another
heading (geometry cached, as for the other three views of a grid and for an agent that turns in place).
Loading a city bundle is a one-time cost per process and is reported on its own.
"""

from __future__ import annotations

import argparse
import statistics
import time

from rich.console import Console
from rich.table import Table

from sftrl.street_view.city import load_city
from sftrl.street_view.provider import GRID_LAYOUT, ViewRequest, grid_2x2
from sftrl.street_view.synthetic import SyntheticProvider


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def _stats(ms: list[float]) -> tuple[str, str]:
    ms = sorted(ms)
    return f"{statistics.median(ms):.1f}", f"{ms[int(0.9 * (len(ms) - 1))]:.1f}"


def bench_city(city: str, size: int, n: int) -> dict[str, list[float]]:
    cm = load_city(city)
    nodes = [(k * 7919) % cm.num_nodes for k in range(1, n + 1)]
    out: dict[str, list[float]] = {"view cold": [], "view warm": [], "grid cold": [], "grid warm": []}

    def req(node: int, heading: float) -> ViewRequest:
        lat, lng = cm.latlng(node)
        return ViewRequest(
            lat=lat, lng=lng, heading=heading % 360, width=size, height=size, city=city, node=node
        )

    def grid(p: SyntheticProvider, node: int, heading: float) -> None:
        grid_2x2([p.get_view(req(node, (heading + rel) % 360)) for _, rel in GRID_LAYOUT])

    # Views: a fresh provider per node, so every first view really builds the street.
    for i, node in enumerate(nodes):
        p = SyntheticProvider(city)
        t0 = time.perf_counter()
        p.get_view(req(node, i * 37.0))
        out["view cold"].append(_ms(t0))
        t0 = time.perf_counter()
        p.get_view(req(node, i * 37.0 + 90))
        out["view warm"].append(_ms(t0))
    for i, node in enumerate(nodes):
        p = SyntheticProvider(city)
        t0 = time.perf_counter()
        grid(p, node, i * 37.0)
        out["grid cold"].append(_ms(t0))
        t0 = time.perf_counter()
        grid(p, node, i * 37.0 + 45)
        out["grid warm"].append(_ms(t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="street nodes per city and size")
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--cities", nargs="+", default=["nyc", "helsinki"])
    args = ap.parse_args()
    console = Console()

    loads = Table(title="City bundle load (once per process)")
    loads.add_column("city")
    loads.add_column("ms", justify="right")
    for city in args.cities:
        t0 = time.perf_counter()
        load_city(city)
        loads.add_row(city, f"{_ms(t0):.0f}")
    console.print(loads)
    # Warm the process-wide caches (fonts, sign layouts) so the first row is not charged for them.
    for city in args.cities:
        bench_city(city, min(args.sizes), 2)

    table = Table(title=f"Synthetic street view, ms ({args.n} nodes per row; median and p90)")
    for col in ("city", "px", "what", "median", "p90"):
        table.add_column(col, justify="left" if col in ("city", "what") else "right")
    for city in args.cities:
        for size in args.sizes:
            res = bench_city(city, size, args.n)
            for what, ms in res.items():
                table.add_row(city, str(size), what, *_stats(ms))
        table.add_section()
    console.print(table)


if __name__ == "__main__":
    main()
