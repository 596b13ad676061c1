"""Fuzzed replies through the whole pipeline: agent loop, verifier, trajectory writer and reader.

Over 10^4 hostile replies (``fuzz_replies``) to GP and V-IRL, in JSON and tool-calling mode: no
episode may crash, nothing a reply says may run, and every reply must read back from the log exactly
as the writer promises (lone surrogates as U+FFFD, long strings cut at the limit with a marker).
``benchmarks/bench_fuzz.py`` runs the same for 10^5 replies and more.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from fuzz_replies import FuzzPolicy
from hypothesis import given, settings
from hypothesis import strategies as st

from sftrl.agents.runner import run_async, split_config
from sftrl.agents.trajectory import (
    EpisodeRecord,
    ReplyRecord,
    TurnRecord,
    clean_value,
    encode_record,
    read_episodes,
)
from sftrl.cli import main
from sftrl.environments.base import Verdict

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


# Any code point, lone surrogates included (hypothesis leaves those out of text() on its own).
_ANY_CHAR = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr))


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(_ANY_CHAR, max_size=300),
    key=st.text(_ANY_CHAR, max_size=5),
    logprobs=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=8),
    limit=st.integers(min_value=256, max_value=400),
)
def test_any_reply_text_and_logprobs_read_back_as_promised(tmp_path_factory, text, key, logprobs, limit):
    """Property: whatever the strings and floats, the written line reads back, cleaned as documented."""
    turn = TurnRecord(
        index=0,
        step=0,
        attempt=0,
        prompt=[{"role": "user", "content": text}],
        reply=ReplyRecord(text=text, logprobs=logprobs, tool_calls=[{"name": key, "args": {key: text}}]),
        action={key: text},
        verdict=Verdict(reward=0.0, category="c", message=text, correct=False),
        reward=0.0,
    )
    record = EpisodeRecord(
        run_id="r", episode_index=0, seed=0, env_id="e", env_config={}, policy={}, turns=[turn]
    )
    log = tmp_path_factory.getbasetemp() / "property.jsonl"  # one file, rewritten per example
    log.write_bytes(encode_record(record, limit))
    (back,) = read_episodes(log)
    got = back.turns[0]
    assert got.reply.text == clean_value(text, {}, limit) == got.verdict.message
    assert got.reply.tool_calls == [clean_value({"name": key, "args": {key: text}}, {}, limit)]
    assert len(got.reply.logprobs) == len(logprobs)
    for a, b in zip(got.reply.logprobs, logprobs, strict=True):
        assert (math.isnan(a) and math.isnan(b)) or a == b
