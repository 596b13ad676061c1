"""Fuzz the whole pipeline at scale: >= 10^5 hostile replies through agent loop, verifier, log writer, reader.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_fuzz.py [--replies 100000] [--seed 0]``. The replies
(``tests/fuzz_replies.py``) are split evenly over GP and V-IRL, each in JSON and tool-calling mode;
episodes are added until each case has its share. Printed per case: replies, episodes, episodes that
crashed, replies that read back differently from what the writer promises, whether any payload ran
(a sentinel file), replies/s through loop+writer, log size, and the time to read the log back. Any
crash, mismatch or executed payload makes the script exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz_replies import FuzzPolicy

from sftrl.agents.runner import run_async, split_config
from sftrl.agents.trajectory import EPISODES_FILE, clean_value, read_episodes

CASES = [("gp", "json"), ("gp", "tools"), ("virl", "json"), ("virl", "tools")]
LIMIT = 50_000


def fuzz_case(root: Path, env: str, protocol: str, replies: int, seed: int) -> dict[str, object]:
    sentinel = root / "sentinel"
    policy = FuzzPolicy(seed, sentinel)
    crashed = mismatched = episodes = 0
    run_s = read_s = 0.0
    size = 0
    chunk = 0
    while len(policy.sent) < replies:
        out = root / f"{env}-{protocol}-{chunk}"
        options = {"env": env, "protocol": protocol, "episodes": 50, "out": out, "seed": seed + chunk}
        options |= {"verify_iter": 25, "keep_last_turns": 2, "log_max_string_bytes": LIMIT}
        if env == "virl":
            options["num_routes"] = 20
        run, env_cfg = split_config(options)
        before = len(policy.sent)
        t0 = time.perf_counter()
        asyncio.run(run_async(run, env_cfg, policy=policy))
        t1 = time.perf_counter()
        records = read_episodes(out)
        read_s += time.perf_counter() - t1
        run_s += t1 - t0
        size += (out / EPISODES_FILE).stat().st_size
        episodes += len(records)
        crashed += sum(r.error is not None for r in records)
        logged = [t.reply.text for r in records for t in r.turns]
        sent = policy.sent[before:]
        mismatched += abs(len(logged) - len(sent))
        mismatched += sum(a != clean_value(b, {}, LIMIT) for a, b in zip(logged, sent, strict=False))
        chunk += 1
    return {
        "replies": len(policy.sent),
        "episodes": episodes,
        "crashed": crashed,
        "mismatched": mismatched,
        "executed": sentinel.exists(),
        "replies_per_s": len(policy.sent) / run_s,
        "log_mb": size / 1e6,
        "read_s": read_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=100_000, help="replies in all (split over 4 cases)")
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    table = Table(title=f"fuzzed replies through loop + writer + reader (seed {ns.seed})")
    cols = ["case", "replies", "episodes", "crashed", "mismatched", "payload ran", "replies/s", "log MB"]
    for col in [*cols, "read s"]:
        table.add_column(col, justify="right")
    bad = False
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (env, protocol) in enumerate(CASES):
            root = Path(tmp) / f"case{i}"
            root.mkdir()
            r = fuzz_case(root, env, protocol, ns.replies // len(CASES), ns.seed * 100 + i)
            bad |= bool(r["crashed"] or r["mismatched"] or r["executed"])
            total += int(r["replies"])  # type: ignore[call-overload]
            table.add_row(
                f"{env}/{protocol}",
                *(str(r[k]) for k in ("replies", "episodes", "crashed", "mismatched", "executed")),
                f"{r['replies_per_s']:.0f}",
                f"{r['log_mb']:.1f}",
                f"{r['read_s']:.2f}",
            )
    Console(width=140).print(table)
    verdict = "FAILURES (see table)" if bad else "no crash, no mismatch, nothing ran"
    print(f"{total} replies in all: {verdict}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
