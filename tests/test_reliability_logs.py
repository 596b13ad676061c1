"""Run logs survive what a model, a server or a user can throw at them (issue 13: logs and inputs).

NaN/-inf log-probs, lone surrogates and huge replies from a real 127.0.0.1 server; a second writer
in a real second process; duplicated, out-of-range, failed and wrongly-shaped records; corrupt inputs.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from openai_stub_server import StubServer

from sftrl.agents.trajectory import EPISODES_FILE, EpisodeRecord, TrajectoryWriter, read_episodes
from sftrl.cli import main

MODEL = "stub-model"


@pytest.fixture
def stub():
    with StubServer() as server:
        yield server


def _run_openai(stub: StubServer, out: Path, *extra: str) -> int:
    return main(
        ["run", "--policy", "openai", "--base-url", stub.url, "--model", MODEL, "--out", str(out)]
        + ["--max-retries", "0", "--quiet", "--json", "--verify-iter", "2", *extra]
    )


def _eval_json(capsys, run_dir: Path) -> dict:
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_nan_and_inf_logprobs_are_stored_readable_and_counted(stub, tmp_path, capsys):
    stub.config.reply = lambda body: {"content": "one two three", "logprobs": [math.nan, -math.inf, -0.5]}
    out = tmp_path / "run"
    assert _run_openai(stub, out, "--episodes", "2", "--logprobs") == 0
    lps = read_episodes(out)[0].turns[0].reply.logprobs
    assert math.isnan(lps[0]) and lps[1] == -math.inf and lps[2] == -0.5
    summary = _eval_json(capsys, out)
    assert summary["episodes"] == 2 and summary["nonfinite_logprobs"] == 2 * 2 * 2  # 2 eps x 2 tries
    # --resume reads the log back too (it failed with a pydantic ValidationError before).
    assert _run_openai(stub, out, "--episodes", "3", "--logprobs", "--resume") == 0
    assert len(read_episodes(out)) == 3


def test_lone_surrogate_in_a_reply_is_logged_and_noted(stub, tmp_path, capsys):
    stub.config.reply = lambda body: "bad \ud800 text \udfff"
    out = tmp_path / "run"
    assert _run_openai(stub, out, "--episodes", "2") == 0
    records = read_episodes(out)
    assert len(records) == 2 and all(r.error is None for r in records)
    assert records[0].turns[0].reply.text == "bad \ufffd text \ufffd"
    assert records[0].log_notes["replaced_surrogates"] >= 2
    assert _eval_json(capsys, out)["log_notes"]["replaced_surrogates"] >= 8


def test_huge_reply_is_cut_in_the_log_with_a_marker(stub, tmp_path):
    stub.config.reply = lambda body: "x" * 400_000
    out = tmp_path / "run"
    assert _run_openai(stub, out, "--episodes", "1", "--log-max-string-bytes", "2000") == 0
    line = (out / EPISODES_FILE).read_bytes()
    # Two replies, and the first one again in the second prompt: each kept to 2000 bytes + marker.
    assert len(line) < 20_000
    (record,) = read_episodes(out)
    text = record.turns[0].reply.text
    assert text.startswith("x" * 2000) and text.endswith("[sftrl: 398000 more bytes not logged]")
    assert record.log_notes["truncated_strings"] >= 3


_HOLDER = textwrap.dedent(
    """
    import sys
    from sftrl.agents.trajectory import lock_run_dir
    with lock_run_dir(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def test_a_second_writer_on_one_run_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["run", "--episodes", "2", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"being written by another process (pid {holder.pid})" in err and err.count("\n") == 1
        assert not (out / EPISODES_FILE).exists()
    finally:
        holder.communicate("\n", timeout=30)
    # The holder is gone: its lock went with it.
    assert main(["run", "--episodes", "2", "--out", str(out), "--quiet", "--json"]) == 0


def _expert_run(capsys, out: Path, episodes: int = 3) -> None:
    assert main(["run", "--episodes", str(episodes), "--out", str(out), "--quiet", "--json"]) == 0
    capsys.readouterr()


def _rewrite(out: Path, records: list[EpisodeRecord]) -> None:
    (out / EPISODES_FILE).unlink()
    with TrajectoryWriter(out) as w:
        for r in records:
            w.write(r)


def test_eval_counts_each_episode_once_and_ignores_indices_outside_the_plan(tmp_path, capsys):
    out = tmp_path / "run"
    _expert_run(capsys, out)
    records = read_episodes(out)
    stray = records[0].model_copy(update={"episode_index": 7})
    _rewrite(out, records + records[:2] + [stray])  # two duplicates (two writers), one stray index
    summary = _eval_json(capsys, out)
    assert summary["episodes"] == 3 and summary["planned"] == 3
    assert summary["ignored_records"] == {"duplicates": 2, "out_of_range": 1}
    assert main(["eval", str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 duplicate records ignored" in err and "1 records with an index outside the plan" in err


def test_resume_retries_episodes_that_ended_in_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    _expert_run(capsys, out)
    records = read_episodes(out)
    failed = records[1].model_copy(update={"turns": [], "success": False, "error": "httpx.ConnectError"})
    _rewrite(out, [records[0], failed, records[2]])
    summary = _eval_json(capsys, out)
    assert summary["episodes"] == 2 and summary["errors"] == 1
    assert main(["eval", str(out)]) == 0
    assert "1 ended in an error (agent run --resume retries them)" in capsys.readouterr().err
    # --no-retry-errors keeps the error record.
    assert main(["run", "--episodes", "3", "--out", str(out), "--resume", "--no-retry-errors", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["errors"] == 1
    assert main(["run", "--episodes", "3", "--out", str(out), "--resume", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["errors"] == 0 and summary["episodes"] == 3 and summary["success_rate"] == 1.0
    assert [r.episode_index for r in read_episodes(out)] == [0, 1, 2, 1]  # append-only: retry appended
    assert _eval_json(capsys, out)["success_rate"] == 1.0


@pytest.mark.parametrize(
    "line, needle",
    [
        ('{"schema_version": 1, "run_id": 5}', "corrupt episode record (run_id: Input should be a valid"),
        ("[1, 2]", "not an episode record (a JSON list)"),
        ('{"schema_version": 1, "turns": "x"' + "}", "corrupt episode record"),
    ],
)
def test_a_valid_json_line_with_the_wrong_schema_is_one_line(tmp_path, capsys, line, needle):
    out = tmp_path / "run"
    out.mkdir()
    (out / EPISODES_FILE).write_text(line + "\n")
    assert main(["eval", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and f"{EPISODES_FILE}:1" in err and err.count("\n") == 1


@pytest.mark.parametrize("config", [None, ""], ids=["missing", "empty"])
def test_resume_without_a_usable_config_needs_force(tmp_path, capsys, config):
    out = tmp_path / "run"
    _expert_run(capsys, out, episodes=2)
    if config is None:
        (out / "config.yaml").unlink()
    else:
        (out / "config.yaml").write_text(config)
    assert main(["run", "--episodes", "3", "--out", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pass --force" in err and ("missing" if config is None else "empty") in err
    assert main(["run", "--episodes", "3", "--out", str(out), "--resume", "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 3


def test_corrupt_street_view_index_refuses_the_run_before_the_first_episode(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "index.sqlite3").write_bytes(b"this is not a database" * 100)
    out = tmp_path / "run"
    args = ["run", "--env", "virl", "--modality", "vision", "--street-view", "cache"]
    args += ["--cache-dir", str(cache)]
    assert main([*args, "--episodes", "3", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "index.sqlite3 is unreadable" in err and err.count("\n") == 1
    assert not (out / EPISODES_FILE).exists() or not (out / EPISODES_FILE).read_bytes()
    with pytest.raises(sqlite3.DatabaseError):  # the file really is corrupt, not merely locked
        sqlite3.connect(cache / "index.sqlite3").execute("SELECT 1 FROM views")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00binary", b'[{"route_id": 3}]'])
def test_bad_routes_file_refuses_the_run_in_one_line(tmp_path, capsys, content):
    routes = tmp_path / "routes.json"
    routes.write_bytes(content)
    out = tmp_path / "run"
    assert main(["run", "--env", "virl", "--routes", str(routes), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"routes file {routes}" in err and err.count("\n") == 1
