"""`agent run` / `agent eval` end to end: success rates, determinism, resume, config files, errors."""

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


def run_json(capsys, *args: str) -> dict:
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def stable(record) -> dict:
    """An episode record without wall-clock fields (the only part allowed to differ between runs)."""
    d = record.model_dump(mode="json", exclude=TIMING_KEYS)
    for t in d["turns"]:
        t["reply"].pop("latency_s")
    return d


@pytest.mark.parametrize("split", ["id", "rule-ood", "visual-ood"])
@pytest.mark.parametrize("modality", ["language", "vision"])
def test_expert_solves_every_split_and_modality(capsys, tmp_path, split, modality):
    s = run_json(
        capsys,
        "run",
        "--env",
        "gp",
        "--policy",
        "expert",
        "--episodes",
        "25",
        "--split",
        split,
        "--modality",
        modality,
        "--resolution",
        "96",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert s["episodes"] == 25 and s["errors"] == 0
    assert s["success_rate"] == 1.0 and s["mean_reward"] == 5.0
    if modality == "vision":
        assert s["recognition_accuracy"] == 1.0
    else:
        assert "recognition_accuracy" not in s
    records = read_episodes(tmp_path)
    if split == "rule-ood":
        assert all({"J", "Q", "K"} & set(r.info["ranks"]) for r in records)
        assert all(r.env_config["face_cards"] == "11-13" for r in records)
    suits = {c[-1] for r in records for c in r.info["cards"]}
    assert suits <= ({"♥", "♦"} if split == "visual-ood" else {"♠", "♣"})


def test_random_policy_is_low(capsys, tmp_path):
    s = run_json(capsys, "run", "--policy", "random", "--episodes", "60", "--out", str(tmp_path), "--json")
    assert s["success_rate"] < 0.5
    assert s["mean_reward"] < 0
    assert set(s["verdicts"]) >= {"no_solution"}


def test_same_seed_gives_identical_logs_and_other_seeds_differ(capsys, tmp_path):
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        run_json(
            capsys,
            "run",
            "--policy",
            "random",
            "--episodes",
            "12",
            "--seed",
            seed,
            "--out",
            str(tmp_path / name),
            "--json",
        )
    a, b, c = (read_episodes(tmp_path / n) for n in "abc")
    assert [stable(r) for r in a] == [stable(r) for r in b]
    assert [r.info["cards"] for r in a] != [r.info["cards"] for r in c]


def test_resume_after_a_crash_neither_loses_nor_duplicates(capsys, tmp_path):
    ref = tmp_path / "ref"
    run_json(capsys, "run", "--policy", "random", "--episodes", "10", "--out", str(ref), "--json")
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    lines = (ref / "episodes.jsonl").read_bytes().splitlines(keepends=True)
    (crashed / "episodes.jsonl").write_bytes(b"".join(lines[:6]) + lines[6][:40])  # killed mid-line
    (crashed / "config.yaml").write_bytes((ref / "config.yaml").read_bytes())
    s = run_json(
        capsys, "run", "--policy", "random", "--episodes", "10", "--out", str(crashed), "--resume", "--json"
    )
    assert s["episodes"] == 10
    got = read_episodes(crashed)
    assert sorted(r.episode_index for r in got) == list(range(10))
    assert [stable(r) for r in sorted(got, key=lambda r: r.episode_index)] == [
        stable(r) for r in read_episodes(ref)
    ]


def test_killed_process_resumes_exactly(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "sftrl",
        "run",
        "--modality",
        "vision",
        "--resolution",
        "512",
        "--episodes",
        "100000",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "episodes.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or log.read_bytes().count(b"\n") < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_episodes(out))
    assert done >= 5
    total = done + 4
    rc = subprocess.run(
        [*cmd[:-5], "--episodes", str(total), "--out", str(out), "--resume", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rc.returncode == 0, rc.stderr
    assert json.loads(rc.stdout)["episodes"] == total
    indices = [r.episode_index for r in read_episodes(out)]
    assert len(indices) == len(set(indices))
    assert set(range(total)) <= set(indices)


def test_existing_run_needs_resume_and_resume_needs_same_config(capsys, tmp_path):
    run_json(capsys, "run", "--episodes", "2", "--out", str(tmp_path), "--json")
    assert main(["run", "--episodes", "2", "--out", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["run", "--episodes", "3", "--split", "rule-ood", "--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "face_cards" in err


def test_config_file_mirrors_flags_and_flags_override(capsys, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("env: gp\npolicy: random\nepisodes: 4\nsplit: rule-ood\nverify-iter: 2\nseed: 3\n")
    out = tmp_path / "out"
    s = run_json(capsys, "run", "--config", str(cfg), "--episodes", "3", "--out", str(out), "--json")
    assert s["episodes"] == 3
    saved = (out / "config.yaml").read_text()
    assert "verify_iter: 2" in saved and "face_cards: 11-13" in saved and "policy: random" in saved
    # The saved effective config repeats the run exactly.
    again = tmp_path / "again"
    run_json(capsys, "run", "--config", str(out / "config.yaml"), "--out", str(again), "--json")
    assert [stable(r) for r in read_episodes(again)] == [stable(r) for r in read_episodes(out)]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--env", "chess"], "unknown env 'chess'"),
        (["run", "--split", "weird"], "split"),
        (["run", "--episodes", "0"], "episodes"),
        (["run", "--policy", "oracle"], "unknown policy"),
        (["run", "--out", "/proc/forbidden/run"], "cannot create output directory"),
        (["eval", "/nonexistent/run"], "no trajectory log"),
    ],
)
def test_errors_are_one_clear_line(capsys, args, needle):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("agent: error:") and needle in err


def test_bad_config_file_is_a_clear_error(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "must be a mapping" in capsys.readouterr().err


def test_eval_recomputes_metrics_and_pairs_runs(capsys, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    sa = run_json(capsys, "run", "--policy", "random", "--episodes", "40", "--out", str(a), "--json")
    run_json(capsys, "run", "--policy", "expert", "--episodes", "40", "--out", str(b), "--json")
    single = run_json(capsys, "eval", str(a), "--json")
    for key in ("episodes", "success_rate", "mean_reward", "verdicts"):
        assert single[key] == sa[key]
    lo, hi = single["success_ci95"]
    assert lo <= single["success_rate"] <= hi
    paired = run_json(capsys, "eval", str(a), str(b), "--json")["paired"]
    assert paired["paired_episodes"] == 40
    assert paired["success_diff"] == pytest.approx(1.0 - sa["success_rate"])
    assert paired["success_diff_ci95"][0] > 0


def test_cli_help_lists_env_flags(capsys):
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--modality",
        "--split",
        "--face-cards",
        "--suit-color",
        "--target",
        "--verify-iter",
        "--resolution",
        "--resume",
        "--json",
    ):
        assert flag in out


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "agent"
    assert exe.exists(), "pip install -e . should install the `agent` console script"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("sftrl ")


def test_seed_manifest_lets_any_episode_be_rerun_exactly(capsys, tmp_path):
    full, one = tmp_path / "full", tmp_path / "one"
    assert main(["run", "--policy", "random", "--episodes", "6", "--out", str(full), "--quiet"]) == 0
    manifest = json.loads((full / "seeds.json").read_text())
    assert [e["index"] for e in manifest["episodes"]] == list(range(6))
    assert (
        main(["run", "--policy", "random", "--episodes", "6", "--only", "4", "--out", str(one), "--quiet"])
        == 0
    )
    (again,) = read_episodes(one)
    original = {r.episode_index: r for r in read_episodes(full)}[4]
    assert again.seed == original.seed == manifest["episodes"][4]["seed"]
    assert again.run_id == original.run_id  # paired with the full run
    assert [t.reply.text for t in again.turns] == [t.reply.text for t in original.turns]
    assert main(["run", "--episodes", "6", "--only", "9", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "--only" in capsys.readouterr().err
