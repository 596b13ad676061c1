"""Environment cost: reset and step of GP-L and GP-VL (1200 px), plus whole expert episodes.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_env.py [--n 300] [--resolution 1200]``. Prints a table
of per-call times (median and p90, in ms). The paper's official env spends ~350-400 ms per reset in a
brute-force ``eval`` solver; that figure is quoted from the issue tracker, not re-measured here.

Resets are reported cold (solver caches cleared, then ``n`` hands never seen before; the first reset
also loads the shipped solution table, shown on its own row), cold with the table switched off (every
dealt hand searched, as before the table existed) and warm (the same seeds again).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from unittest import mock

from rich.console import Console
from rich.table import Table

from sftrl.agents.baselines import ExpertPolicy
from sftrl.agents.loop import run_episode
from sftrl.agents.trajectory import ImageStore
from sftrl.environments import make_env
from sftrl.environments.generalpoints import solver


def timeit(fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def row(table: Table, name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    table.add_row(name, str(len(ms)), f"{statistics.median(ms):.3f}", f"{ms[int(0.9 * (len(ms) - 1))]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--resolution", type=int, default=1200)
    args = ap.parse_args()
    table = Table(title=f"GeneralPoints env cost (ms per call, resolution {args.resolution})")
    for col in ("operation", "n", "median ms", "p90 ms"):
        table.add_column(col, justify="right" if col != "operation" else "left")
    for modality in ("language", "vision"):
        env = make_env("gp", modality=modality, resolution=args.resolution)
        tag = "GP-L" if modality == "language" else "GP-VL"
        solver.clear_caches()
        row(table, f"{tag} first reset (loads the table)", timeit(lambda i, e=env: e.reset(seed=9_999), 1))
        cold = timeit(lambda i, e=env: e.reset(seed=10_000 + i), args.n)
        row(table, f"{tag} reset cold (new hands, table)", cold)
        row(
            table,
            f"{tag} reset warm (same hands again)",
            timeit(lambda i, e=env: e.reset(seed=10_000 + i), args.n),
        )
        solver.clear_caches()
        # What a cold reset cost before the table shipped: every dealt hand searched.
        with mock.patch.object(solver, "_in_table", lambda values, target: False):
            search = timeit(lambda i, e=env: e.reset(seed=20_000 + i), args.n)
        row(table, f"{tag} reset cold (new hands, search only)", search)
        row(table, f"{tag} reset (repeated seed)", timeit(lambda i, e=env: e.reset(seed=1), args.n))

        def step_ok(i: int, e=env) -> None:
            obs, _ = e.reset(seed=i)
            t0 = time.perf_counter()
            e.step(obs.oracle["expert_reply"])
            step_ok.ms.append((time.perf_counter() - t0) * 1000)

        step_ok.ms = []  # type: ignore[attr-defined]
        for i in range(args.n):
            step_ok(i)
        row(table, f"{tag} step (correct answer)", step_ok.ms)  # type: ignore[attr-defined]

        def step_bad(i: int, e=env) -> None:
            e.reset(seed=i)
            t0 = time.perf_counter()
            e.step('{"cards": ["A", "2", "3", "4"], "number": [1, 2, 3, 4], "formula": "(1+2)*3-4=24"}')
            step_bad.ms.append((time.perf_counter() - t0) * 1000)

        step_bad.ms = []  # type: ignore[attr-defined]
        for i in range(args.n):
            step_bad(i)
        row(table, f"{tag} step (wrong answer)", step_bad.ms)  # type: ignore[attr-defined]

        with tempfile.TemporaryDirectory() as tmp:
            store = ImageStore(tmp)
            policy = ExpertPolicy()
            ms = timeit(
                lambda i, e=env, p=policy, st=store: asyncio.run(
                    run_episode(e, p, seed=20_000 + i, images=st)
                ),
                max(20, args.n // 5),
            )
            row(table, f"{tag} expert episode (loop + log images)", ms)
    Console().print(table)


if __name__ == "__main__":
    main()
