"""Cost of writing one episode line: a normal GP episode, and one whose model sent a huge reply.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_log_writer.py [--reply-mb 50] [--repeat 2000]``.
Printed per case: the time to encode one line (``encode_record``: the writer's whole work before its
``write``), the line's size, and the peak Python memory allocated while encoding it (tracemalloc),
with the default 1 MiB string limit; for contrast, the plain pydantic dump the writer used to do.
The huge case is a 4-attempt GP episode whose first reply is ``--reply-mb`` MB, quoted again in the
three later prompts, as the agent loop logs it.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

from rich.console import Console
from rich.table import Table

from sftrl.agents.trajectory import EpisodeRecord, ReplyRecord, TurnRecord, encode_record
from sftrl.environments.base import Verdict


def episode(reply: str, turns: int = 4) -> EpisodeRecord:
    verdict = Verdict(reward=-1.0, category="illegal_formula", message="You failed this trial", correct=False)
    history: list[dict[str, str]] = [{"role": "user", "content": "Cards: ['K', '3', 'A', '8'] ... " * 20}]
    out = []
    for i in range(turns):
        text = reply if i == 0 else '{"cards": ["K", "3", "A", "8"], "formula": "(10-3+1)*3=24"}'
        out.append(
            TurnRecord(
                index=i,
                step=0,
                attempt=i,
                prompt=list(history),
                reply=ReplyRecord(text=text, token_ids=list(range(64)), logprobs=[-0.1] * 64),
                action=None,
                verdict=verdict,
                reward=-1.0,
            )
        )
        history += [{"role": "assistant", "content": text}, {"role": "user", "content": verdict.message}]
    return EpisodeRecord(
        run_id="r", episode_index=0, seed=1, env_id="gp", env_config={}, policy={}, turns=out
    )


def measure(record: EpisodeRecord, repeat: int, uncapped: bool = False) -> tuple[float, int, float]:
    def encode() -> bytes:
        return record.model_dump_json().encode() if uncapped else encode_record(record)

    t0 = time.perf_counter()
    for _ in range(repeat):
        line = encode()
    per = (time.perf_counter() - t0) / repeat
    tracemalloc.start()
    encode()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return per, len(line), peak / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reply-mb", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=2000)
    ns = parser.parse_args()
    table = Table(title="encode_record: one episodes.jsonl line (limit 1 MiB per string)")
    for col in ("case", "encode", "line", "peak alloc while encoding"):
        table.add_column(col, justify="right")
    normal = episode('{"cards": ["K", "3", "A", "8"], "formula": "(10-3)*3+3=24"}')
    per, size, peak = measure(normal, ns.repeat)
    table.add_row("normal 4-turn GP episode", f"{per * 1e6:.0f} µs", f"{size / 1e3:.1f} kB", f"{peak:.2f} MB")
    huge = episode("x" * int(ns.reply_mb * 1e6))
    for label, uncapped in (("", False), (", uncapped dump (as before)", True)):
        per, size, peak = measure(huge, 3, uncapped)
        cells = (f"{per * 1e3:.0f} ms", f"{size / 1e6:.2f} MB", f"{peak:.1f} MB")
        table.add_row(f"first reply {ns.reply_mb:g} MB{label}", *cells)
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
