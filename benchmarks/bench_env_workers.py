"""Episode throughput of ``agent run`` with envs in worker processes: ``--env-workers 0`` (in-process) vs N.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_env_workers.py [--episodes 40] [--workers 0 1 2]
[--concurrency 4] [--resolution 320]``. The expert policy (no model cost) plays V-IRL-VL on synthetic
street views (every step renders a 2x2 grid of views) and GP-L (a cheap text env, for contrast), each
through ``run_async`` exactly as ``agent run --env-workers N`` does, at the same ``--concurrency`` for
every N. Printed per env and N: wall time, episodes/s over the whole run (worker start-up included)
and after the first finished episode (start-up excluded: the steady rate), each with its ratio to N=0.
The runs' logs are checked to hold the same episodes whatever N (timings aside).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sftrl.agents.runner import run_async, split_config
from sftrl.agents.trajectory import EpisodeRecord, read_episodes

ENVS: dict[str, dict[str, Any]] = {
    "V-IRL-VL": {"env": "virl", "modality": "vision"},
    "GP-L": {"env": "gp"},
}


def _stable(record: EpisodeRecord) -> str:
    return record.model_dump_json(
        exclude={"started_at": True, "duration_s": True, "policy_s": True, "env_s": True, "turns": True}
    ) + "".join(t.model_dump_json(exclude={"reply": {"latency_s"}}) for t in record.turns)


def measure(values: dict[str, Any], out: Path) -> dict[str, Any]:
    run, env_cfg = split_config({**values, "policy": "expert", "out": out})
    t0 = time.perf_counter()
    summary = asyncio.run(run_async(run, env_cfg))
    wall = time.perf_counter() - t0
    records = sorted(read_episodes(out), key=lambda r: r.episode_index)
    assert summary["errors"] == 0 and summary["success_rate"] == 1.0, summary
    finishes = sorted(r.started_at + r.duration_s for r in records)
    steady = (len(finishes) - 1) / (finishes[-1] - finishes[0]) if len(finishes) > 1 else float("nan")
    return {"wall_s": wall, "eps_s": len(records) / wall, "steady_eps_s": steady, "log": records}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=40, help="V-IRL-VL episodes per setting (GP-L: 5x)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="--env-workers values")
    ap.add_argument("--concurrency", type=int, default=4, help="episodes in flight (same for every N)")
    ap.add_argument("--resolution", type=int, default=320, help="V-IRL view size in pixels (grid is 2x2)")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = Table(
        title=f"agent run --policy expert --concurrency {args.concurrency}: episodes/s by --env-workers "
        f"({os.cpu_count()} CPUs, load average {load:.2f} at start)"
    )
    for col in ("env", "N", "episodes", "wall s", "eps/s", "vs N=0", "eps/s after 1st", "vs N=0 "):
        table.add_column(col, justify="left" if col == "env" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for name, env_values in ENVS.items():
            episodes = args.episodes * (5 if name == "GP-L" else 1)
            values = {**env_values, "episodes": episodes, "concurrency": args.concurrency, "seed": 1}
            if name == "V-IRL-VL":
                values["resolution"] = args.resolution
            measure({**values, "episodes": 2}, Path(tmp) / f"{name}-warm")  # route set, fonts, textures
            rows = {n: measure({**values, "env_workers": n}, Path(tmp) / f"{name}-{n}") for n in args.workers}
            base = rows[args.workers[0]]
            for n, row in rows.items():
                same = [_stable(r) for r in row["log"]] == [_stable(r) for r in base["log"]]
                assert same, f"{name}: --env-workers {n} logged other episodes than {args.workers[0]}"
                table.add_row(
                    name,
                    str(n),
                    str(episodes),
                    f"{row['wall_s']:.2f}",
                    f"{row['eps_s']:.2f}",
                    f"{row['eps_s'] / base['eps_s']:.2f}x",
                    f"{row['steady_eps_s']:.2f}",
                    f"{row['steady_eps_s'] / base['steady_eps_s']:.2f}x",
                )
    Console().print(table)


if __name__ == "__main__":
    main()
