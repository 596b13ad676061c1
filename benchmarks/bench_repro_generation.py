"""Framework rollouts vs bare ``model.generate`` on the experiment's model, batch 64 (issue: one stack).

The framework side is what ``agent train rl`` and every evaluation run: GP-L episodes in the compact
style with sequential revision (up to 3 attempts), through the runner, the agent loop, the env and
the ``hf`` policy (dynamic batching, per-row seeded sampling, log-probs). The bare side replays the
exact prompts the framework sent, in batches of the same composition, through ``model.generate``
with plain sampling and nothing around it. Same model, same prompts, same reply budget, one torch
thread. The framework runs three ways: with transformers' ``generate`` (the path kept for multimodal-RoPE
models), with the hf backend's KV-cached loop alone, and as it runs by default (the loop plus prefix
reuse across revision turns); the ratio to the bare loop is the framework's overhead (or gain).

    python benchmarks/bench_repro_generation.py [--model DIR] [--episodes 256] [--batch 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")


MODES = {
    "generate": "framework, transformers generate",
    "loop": "framework, KV loop, no prefix reuse",
    "default": "framework (default: KV loop + prefix reuse)",
}


def framework(
    model: str, episodes: int, batch: int, max_new: int, out: Path, mode: str = "default"
) -> dict[str, Any]:
    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.agents.policy import SamplingParams
    from sftrl.agents.runner import RunConfig, run_async, split_config

    policy = HFPolicy(model, max_batch_size=batch, prefix_cache_mb=0 if mode != "default" else 256)
    policy.fast_decode = mode != "generate"
    values = {"env": "gp", "prompt_style": "compact", "verify_iter": 3, "episodes": episodes}
    run, env_cfg = split_config({**values, "concurrency": batch, "out": out, "seed": 7})
    run = RunConfig.model_validate(
        {
            **run.model_dump(),
            "policy": "hf",
            "sampling": SamplingParams(temperature=1.0, max_new_tokens=max_new, logprobs=True, seed=1),
        }
    )
    t0 = time.perf_counter()
    summary = asyncio.run(run_async(run, env_cfg, policy=policy))
    wall = time.perf_counter() - t0
    from sftrl.agents.trajectory import read_episodes

    records = read_episodes(out)
    tokens = sum(len(t.reply.token_ids) for r in records for t in r.turns)
    calls = sum(len(r.turns) for r in records)
    return {
        "wall_s": wall,
        "tokens": tokens,
        "calls": calls,
        "episodes": summary["episodes"],
        "batches": len(policy.batches),
        "mean_batch": sum(policy.batches) / max(len(policy.batches), 1),
        "policy": policy,
        "records": records,
    }


def bare(policy: Any, records: list, batch_sizes: list[int], max_new: int) -> dict[str, float]:
    """The framework's prompts, in its batch sizes, through plain ``model.generate`` sampling."""
    import torch

    from sftrl.agents.hf_policy import to_chat
    from sftrl.agents.messages import record_to_message

    model, tok = policy.model, policy.tokenizer  # type: ignore[attr-defined]
    prompts = []
    for r in sorted(records, key=lambda r: r.episode_index):
        for t in r.turns:
            chat, _ = to_chat([record_to_message(m) for m in t.prompt], False)
            text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            prompts.append(tok(text, add_special_tokens=False)["input_ids"])
    torch.manual_seed(0)
    tokens, k = 0, 0
    t0 = time.perf_counter()
    for size in batch_sizes:
        chunk = prompts[k : k + size]
        k += size
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), policy.pad_token_id, dtype=torch.long)  # type: ignore[attr-defined]
        attn = torch.zeros_like(ids)
        for i, p in enumerate(chunk):
            ids[i, width - len(p) :] = torch.tensor(p)
            attn[i, width - len(p) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=attn,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=max_new,
                pad_token_id=policy.pad_token_id,  # type: ignore[attr-defined]
                eos_token_id=sorted(policy.eos_ids),  # type: ignore[attr-defined]
            )
        new = out[:, width:]
        for row in new.tolist():
            n = len(row)
            for j, tok_id in enumerate(row):
                if tok_id in policy.eos_ids:  # type: ignore[attr-defined]
                    n = j + 1
                    break
            tokens += n
    return {"wall_s": time.perf_counter() - t0, "tokens": tokens, "calls": len(prompts)}


def main() -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: the shipped stage-0 model)")
    ap.add_argument("--episodes", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ns = ap.parse_args()
    model = ns.model
    if model is None:
        from sftrl.repro.pipeline import SHIPPED_STAGE0

        model = SHIPPED_STAGE0
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            runs[mode] = framework(
                str(model), ns.episodes, ns.batch, ns.max_new_tokens, Path(tmp) / mode, mode
            )
        fw = runs["default"]
        b = bare(
            fw["policy"],
            runs["generate"]["records"],
            list(runs["generate"]["policy"].batches),
            ns.max_new_tokens,
        )
    table = Table(title=f"GP-L compact, revision <= 3 attempts, batch {ns.batch}, {model}")
    for col in ("path", "wall s", "model calls", "tokens", "tokens/s", "episodes/s", "time ratio"):
        table.add_column(col, justify="right")
    table.add_row(
        "bare model.generate",
        f"{b['wall_s']:.2f}",
        str(b["calls"]),
        str(b["tokens"]),
        f"{b['tokens'] / b['wall_s']:.0f}",
        "-",
        "1.00",
    )
    for mode, label in MODES.items():
        r = runs[mode]
        table.add_row(
            label,
            f"{r['wall_s']:.2f}",
            str(r["calls"]),
            str(r["tokens"]),
            f"{r['tokens'] / r['wall_s']:.0f}",
            f"{r['episodes'] / r['wall_s']:.1f}",
            f"{r['wall_s'] / b['wall_s']:.2f}",
        )
    Console(width=150).print(table)
    store = fw["policy"].prefix_store
    print(
        f"framework batches: {fw['batches']} calls, mean size {fw['mean_batch']:.1f}; prefix reuse: "
        f"{store.hits} hits, {store.reused_tokens} prompt tokens not recomputed"
    )
    same = [
        [t.reply.token_ids for t in r.turns] for r in sorted(fw["records"], key=lambda r: r.episode_index)
    ]
    ref = [
        [t.reply.token_ids for t in r.turns]
        for r in sorted(runs["generate"]["records"], key=lambda r: r.episode_index)
    ]
    print(f"replies identical to the generate path: {same == ref}")


if __name__ == "__main__":
    main()
