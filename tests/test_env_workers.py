"""`--env-workers N`: envs in worker processes log what an in-process run logs; failures are one line.

Real worker processes throughout: the identical-log checks compare ``--env-workers 0`` with 2 for GP-L,
GP in tool mode (tool specs do not pickle) and V-IRL-VL on synthetic street views (images cross as
PNG); the failure checks start a real ``agent run`` and break its workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftrl.agents.trajectory import read_episodes
from sftrl.cli import main

TIMING_KEYS = {"started_at", "duration_s", "policy_s", "env_s"}
ROOT = Path(__file__).resolve().parents[1]


def stable_log(run_dir: Path) -> list[dict]:
    """The run's records by episode index, without the wall-clock fields (all that may differ)."""
    records = []
    for record in sorted(read_episodes(run_dir), key=lambda r: r.episode_index):
        d = record.model_dump(mode="json", exclude=TIMING_KEYS)
        for turn in d["turns"]:
            turn["reply"].pop("latency_s")
        records.append(d)
    return records


def images(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "images").glob("*.png"))}


CASES = {
    "gp-language": ["--env", "gp", "--episodes", "6"],
    "gp-tools": ["--env", "gp", "--protocol", "tools", "--episodes", "4"],
    "virl-vision": ["--env", "virl", "--modality", "vision", "--resolution", "64", "--episodes", "4"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_env_workers_log_the_same_episodes_as_in_process(case: str, tmp_path: Path, capsys) -> None:
    summaries = {}
    for n in (0, 2):
        out = tmp_path / f"workers-{n}"
        argv = ["run", *CASES[case], "--policy", "expert", "--seed", "7", "--concurrency", "3"]
        assert main([*argv, "--env-workers", str(n), "--out", str(out), "--json"]) == 0
        summaries[n] = json.loads(capsys.readouterr().out)
    a, b = tmp_path / "workers-0", tmp_path / "workers-2"
    assert summaries[0]["errors"] == 0 and summaries[0]["success_rate"] == 1.0
    assert (
        summaries[0]["run_id"] == summaries[2]["run_id"]
    )  # same run: the worker count is not an option of it
    assert stable_log(a) == stable_log(b)
    assert images(a) == images(b)
    if case == "virl-vision":
        assert images(a)  # observations carried images, which crossed from the workers
    if case == "gp-tools":
        assert all(r["tools"] for r in stable_log(b))


def test_env_workers_resume_an_in_process_run(tmp_path: Path, capsys) -> None:
    argv = ["run", "--env", "gp", "--policy", "expert", "--out", str(tmp_path / "r"), "--json"]
    assert main([*argv, "--episodes", "3"]) == 0
    assert main([*argv, "--episodes", "5", "--resume", "--env-workers", "1"]) == 0
    capsys.readouterr()
    assert (
        main(["run", "--env", "gp", "--policy", "expert", "--episodes", "5", "--out", str(tmp_path / "ref")])
        == 0
    )
    assert stable_log(tmp_path / "r") == stable_log(tmp_path / "ref")


def test_an_env_that_cannot_start_in_its_worker_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "routes.json"
    bad.write_text('{"routes": [')
    errors = {}
    for n in (0, 1):
        argv = ["run", "--env", "virl", "--routes", str(bad), "--episodes", "2", "--env-workers", str(n)]
        assert main([*argv, "--out", str(tmp_path / f"out-{n}")]) == 2
        errors[n] = capsys.readouterr().err
    assert errors[1] == errors[0]  # the worker's refusal reads exactly like the in-process one
    assert (
        errors[1].startswith("agent: error: env sftrl/VIRL-v0 cannot start:") and errors[1].count("\n") == 1
    )


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes in /proc")
def test_a_killed_env_worker_stops_the_run_with_one_line_and_the_log_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "sftrl", "run", "--env", "virl", "--modality", "vision"]
    argv += ["--resolution", "64", "--episodes", "2000", "--concurrency", "2", "--env-workers", "2"]
    argv += ["--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = out / "episodes.jsonl"
        deadline = time.monotonic() + 120  # a guard against a broken set-up, not a timing claim
        while (
            not (log.exists() and log.stat().st_size) and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        workers = [pid for pid, cmd in _children(proc.pid) if "spawn_main" in cmd]
        assert proc.poll() is None and len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert err.startswith("agent: error: env worker process") and err.count("\n") == 1
    assert "--resume" in err
    records = read_episodes(out)
    assert records and all(r.error is None for r in records)  # no episode logged as failed by the kill
    resume = ["run", *argv[4:10], "--episodes", str(len(records) + 2), "--out", str(out), "--resume"]
    assert main([*resume, "--env-workers", "1", "--quiet"]) == 0
    assert sorted(r.episode_index for r in read_episodes(out)) == list(range(len(records) + 2))


@pytest.mark.slow
def test_rl_rollouts_with_env_workers_match_in_process(tmp_path: Path, capsys) -> None:
    from sftrl.agents.tiny import build_char_model

    model = build_char_model(tmp_path / "m", hidden=32, layers=1, heads=1)
    argv = ["train", "rl", "--env", "gp", "--prompt-style", "compact", "--verify-iter", "2"]
    argv += ["--model", str(model), "--max-new-tokens", "12", "--concurrency", "2", "--algo", "grpo"]
    argv += ["--episodes-per-update", "4", "--group-size", "2", "--max-steps", "2", "--json"]
    for n in (0, 2):
        assert main([*argv, "--out", str(tmp_path / f"rl-{n}"), "--env-workers", str(n)]) == 0
    capsys.readouterr()
    for update in ("update-00000", "update-00001"):
        a, b = (stable_log(tmp_path / f"rl-{n}" / "rollouts" / update) for n in (0, 2))
        # The hf backend batches the episodes in flight, and which share a batch depends on timing:
        # logprobs may differ in their last float bits. Everything else is the same.
        lp_a, lp_b = (_pop_logprobs(log) for log in (a, b))
        assert len(a) == 4 and a == b
        assert lp_a == pytest.approx(lp_b, abs=1e-5)


def _pop_logprobs(log: list[dict]) -> list[float]:
    return [lp for r in log for t in r["turns"] for lp in (t["reply"].pop("logprobs") or [])]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--trainer", "trl", "--group-size", "2"], "--env-workers needs --trainer sftrl"),
        (["--episodes", "runs/x"], "--episodes collects none"),
    ],
)
def test_rl_refuses_env_workers_where_no_rollout_uses_them(tmp_path: Path, capsys, extra, needle) -> None:
    argv = ["train", "rl", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--env-workers", "2"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
