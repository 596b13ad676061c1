"""Episode throughput vs concurrency through a real HTTP backend, and the agent+env cost per model call.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_concurrency.py [--episodes 32] [--concurrency 1 4 16]
[--latency-ms 50]``. A stub OpenAI-protocol server (tests/openai_stub_server.py) answers every call
after sleeping ``--latency-ms`` (a stand-in for a model with fixed latency, able to serve any number
of calls at once); GP-L episodes run exactly as ``agent run --policy openai`` does (``run_async``).
The stub's "model" answers each hand's first attempt wrongly, then solves it, so episodes have
feedback turns. Printed per concurrency K: episodes/s, speed-up over K=1 and its ratio to K (1.0 =
perfect scaling), the mean time per call spent outside the policy call (agent loop, env, logging,
event-loop waiting: ``(duration_s - policy_s) / calls``) as a % of the model latency, and the HTTP
client's own cost per call (policy time minus the server's sleep).

Other backends: :func:`sweep` takes any policy factory, so a local-model variant (``--policy hf``)
only needs a factory building that policy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from sftrl.agents.openai_policy import OpenAIPolicy, VLLMPolicy
from sftrl.agents.policy import Policy
from sftrl.agents.runner import run_async, split_config
from sftrl.agents.trajectory import read_episodes

STUB = Path(__file__).resolve().parents[1] / "tests" / "openai_stub_server.py"
PolicyFactory = Callable[[], Policy]


async def measure(
    factory: PolicyFactory,
    *,
    concurrency: int,
    episodes: int,
    env_values: dict[str, Any],
    out: Path,
    run_values: dict[str, Any] | None = None,
) -> dict[str, float]:
    """One ``agent run``-equivalent: wall time, episodes/s and per-call timings from the log."""
    policy = factory()
    run, env_cfg = split_config(
        {"env": "gp", "episodes": episodes, "concurrency": concurrency, "out": out, **(run_values or {})}
    )
    env_cfg.update(env_values)
    t0 = time.perf_counter()
    try:
        summary = await run_async(run, env_cfg, policy=policy)
    finally:
        close = getattr(policy, "aclose", None)
        if close is not None:
            await close()
    wall = time.perf_counter() - t0
    records = read_episodes(out)
    calls = sum(len(r.turns) for r in records)
    outside = sum(r.duration_s - r.policy_s for r in records)
    policy_s = sum(r.policy_s for r in records)
    env_s = sum(r.env_s for r in records)
    return {
        "wall_s": wall,
        "episodes_per_s": episodes / wall,
        "calls": calls,
        "errors": float(summary["errors"]),
        "success_rate": float(summary["success_rate"]),
        "outside_ms_per_call": 1000 * outside / max(calls, 1),
        "policy_ms_per_call": 1000 * policy_s / max(calls, 1),
        "env_ms_per_call": 1000 * env_s / max(calls, 1),
    }


def sweep(
    factory: PolicyFactory,
    *,
    concurrencies: list[int],
    episodes: int,
    model_latency_ms: float,
    title: str,
    env_values: dict[str, Any] | None = None,
    run_values: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Run ``episodes`` GP-L episodes at each concurrency with a fresh policy and print the table."""
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up over the same seeds: solver caches (env and stub "model") are cold only here.
        asyncio.run(
            measure(
                factory,
                concurrency=max(concurrencies),
                episodes=episodes,
                env_values=env_values or {},
                out=Path(tmp) / "warmup",
                run_values=run_values,
            )
        )
        for k in concurrencies:
            out = Path(tmp) / f"k{k}"
            row = asyncio.run(
                measure(
                    factory,
                    concurrency=k,
                    episodes=episodes,
                    env_values=env_values or {},
                    out=out,
                    run_values=run_values,
                )
            )
            row["k"] = k
            rows.append(row)
    base = rows[0]["episodes_per_s"]
    table = Table(title=title)
    cols = ["K", "eps", "calls", "err", "wall s", "eps/s", "speed-up", "/ K"]
    cols += ["outside ms/call", f"% of {model_latency_ms:g}ms", "env ms/call", "policy ms/call"]
    for col in cols:
        table.add_column(col, justify="right")
    for row in rows:
        speedup = row["episodes_per_s"] / base
        table.add_row(
            str(int(row["k"])),
            str(episodes),
            str(int(row["calls"])),
            str(int(row["errors"])),
            f"{row['wall_s']:.2f}",
            f"{row['episodes_per_s']:.1f}",
            f"{speedup:.2f}x",
            f"{speedup / (row['k'] / rows[0]['k']):.2f}",
            f"{row['outside_ms_per_call']:.2f}",
            f"{100 * row['outside_ms_per_call'] / model_latency_ms:.1f}%",
            f"{row['env_ms_per_call']:.2f}",
            f"{row['policy_ms_per_call']:.1f}",
        )
    Console(width=160).print(table)
    return rows


def overhead_floor(episodes: int, model_latency_ms: float) -> float:
    """Agent loop + env + logging per model call with a zero-latency policy (the expert), in ms."""
    from sftrl.agents.baselines import RandomPolicy

    with tempfile.TemporaryDirectory() as tmp:
        values = {"env": "gp", "episodes": episodes, "out": Path(tmp) / "warm"}
        run, env_cfg = split_config(values)
        asyncio.run(run_async(run, env_cfg, policy=RandomPolicy()))  # warm the solver caches
        run, env_cfg = split_config({**values, "out": Path(tmp) / "timed"})
        t0 = time.perf_counter()
        summary = asyncio.run(run_async(run, env_cfg, policy=RandomPolicy()))
        per_call = 1000 * (time.perf_counter() - t0) / summary["attempts"]
    Console().print(
        f"agent + env + log cost per model call, zero-latency random policy ({summary['attempts']} "
        f"calls): {per_call:.3f} ms = {100 * per_call / model_latency_ms:.2f}% of a "
        f"{model_latency_ms:g} ms model call"
    )
    return per_call


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def stub_process(latency_ms: float) -> Iterator[str]:
    """The stub server in its own process (its threads must not share this process's GIL) → base URL."""
    port = _free_port()
    argv = [sys.executable, str(STUB), "--port", str(port), "--latency-ms", str(latency_ms)]
    proc = subprocess.Popen([*argv, "--reply", "gp-wrong-first"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=1, trust_env=False).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the stub server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--latency-ms", type=float, default=50.0, help="stub server sleep per call")
    ap.add_argument("--replicas", type=int, default=1, help="stub server processes (vllm policy if > 1)")
    ap.add_argument(
        "--hf",
        nargs="?",
        const="tiny",
        metavar="MODEL_DIR",
        help="benchmark the in-process hf backend instead (default: a freshly built tiny text model)",
    )
    ap.add_argument("--max-new-tokens", type=int, default=32, help="hf: reply length budget")
    args = ap.parse_args()
    overhead_floor(max(args.episodes, 200), args.latency_ms)
    if args.hf:
        _hf_sweep(args)
        return
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(stub_process(args.latency_ms)) for _ in range(args.replicas)]

        def factory() -> Policy:
            if len(urls) > 1:
                return VLLMPolicy("stub-model", urls, api_key_env=None)
            return OpenAIPolicy("stub-model", urls[0], api_key_env=None)

        sweep(
            factory,
            concurrencies=args.concurrency,
            episodes=args.episodes,
            model_latency_ms=args.latency_ms,
            title=f"GP-L, OpenAI protocol: {args.replicas} stub server(s), {args.latency_ms:g} ms per call",
        )


def _hf_sweep(args: argparse.Namespace) -> None:
    """Dynamic batching: K episodes in flight share one ``generate`` call per round."""
    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.agents.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model("text", Path(tmp) / "tiny") if args.hf == "tiny" else Path(args.hf)

        def factory() -> Policy:
            return HFPolicy(model, max_batch_size=max(args.concurrency))

        # The sampled replies are the model's own: fixed seeds make every K see the same replies.
        sampling = {"max_new_tokens": args.max_new_tokens, "seed": 0}
        sweep(
            factory,
            concurrencies=args.concurrency,
            episodes=args.episodes,
            model_latency_ms=args.latency_ms,
            title=f"GP-L, hf backend (in process, dynamic batching): {model}",
            run_values={"sampling": sampling},
        )


if __name__ == "__main__":
    main()
