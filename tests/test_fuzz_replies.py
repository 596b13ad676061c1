"""Fuzzed replies through the whole pipeline: agent loop, verifier, trajectory writer and reader.

Over 10^4 hostile replies (``fuzz_replies``) to GP and V-IRL, in JSON and tool-calling mode: no
episode may crash, nothing a reply says may run, and every reply must read back from the log exactly
as the writer promises (lone surrogates as U+FFFD, long strings cut at the limit with a marker).
``benchmarks/bench_fuzz.py`` runs the same for 10^5 replies and more.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fuzz_replies import FuzzPolicy

from sftrl.agents.runner import run_async, split_config
from sftrl.agents.trajectory import clean_value, read_episodes
from sftrl.cli import main

LIMIT = 50_000  # log string limit: fuzzed replies go up to 300 kB, so cutting is exercised


def fuzz_run(out: Path, env: str, protocol: str, episodes: int, seed: int) -> tuple[FuzzPolicy, dict]:
    options = {"env": env, "protocol": protocol, "episodes": episodes, "out": out, "seed": seed}
    options |= {"verify_iter": 25, "keep_last_turns": 2, "log_max_string_bytes": LIMIT}
    if env == "virl":
        options["num_routes"] = 10  # the route set is built once; fewer routes, faster start
    run, env_cfg = split_config(options)
    policy = FuzzPolicy(seed, out.parent / "sentinel")
    summary = asyncio.run(run_async(run, env_cfg, policy=policy))
    return policy, summary


@pytest.mark.parametrize(
    "env, protocol, episodes",
    [("gp", "json", 110), ("gp", "tools", 110), ("virl", "json", 65), ("virl", "tools", 66)],
)
def test_fuzzed_replies_never_crash_run_code_or_corrupt_the_log(tmp_path, capsys, env, protocol, episodes):
    out = tmp_path / "run"
    policy, summary = fuzz_run(out, env, protocol, episodes, seed=len(env) * 10 + len(protocol))
    records = read_episodes(out)
    crashed = [r.error for r in records if r.error]
    assert not crashed, crashed[0]
    assert summary["episodes"] == episodes and len(records) == episodes
    logged = [t.reply.text for r in records for t in r.turns]
    assert len(logged) == len(policy.sent) >= 2500  # 4 cases: >= 10^4 replies in all
    print(f"{env}/{protocol}: {len(logged)} replies")
    assert logged == [clean_value(text, {}, LIMIT) for text in policy.sent]
    assert not (tmp_path / "sentinel").exists()
    assert any(r.log_notes.get("replaced_surrogates") for r in records)
    assert any(r.log_notes.get("truncated_strings") for r in records)
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == episodes
