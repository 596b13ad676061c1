"""Run directories: a new one per run without --out, runs/latest at the newest, next-step hints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftrl.agents.run_dirs import new_run_dir, point_latest, resolve_run_dir
from sftrl.cli import main


@pytest.fixture
def clean_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(*args: str) -> int:
    return main(["run", "--quiet", *args])


def test_runs_without_out_get_new_directories_and_latest_follows(clean_dir: Path, capsys) -> None:
    assert _run("--episodes", "2") == 0
    first = capsys.readouterr().out
    assert _run("--env", "virl", "--episodes", "1", "--json") == 0
    second = json.loads(capsys.readouterr().out)["out"]
    dirs = sorted(p.name for p in (clean_dir / "runs").iterdir() if p.name != "latest")
    assert len(dirs) == 2
    assert dirs[0].endswith("-gp-expert") and dirs[1].endswith("-virl-expert")
    assert second == f"runs/{dirs[1]}"
    assert resolve_run_dir(None) == Path(second)
    # The summary says where the run is and what to run next, with this run's directory.
    gp = f"runs/{dirs[0]}"
    assert f"run directory: {gp}" in first
    for command in (f"agent replay {gp}", f"agent eval {gp}", f"agent data sft {gp} --out"):
        assert command in first
    # eval with no argument reads the newest run.
    assert main(["eval", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == second and result["env_id"] == "sftrl/VIRL-v0"


def test_explicit_out_under_runs_moves_latest_and_resume_defaults_to_it(clean_dir: Path, capsys) -> None:
    assert _run("--episodes", "2", "--out", "runs/mine") == 0
    assert resolve_run_dir(None) == Path("runs/mine")
    assert _run("--episodes", "3", "--resume") == 0
    assert "run directory: runs/mine" in capsys.readouterr().out
    assert len((clean_dir / "runs/mine/episodes.jsonl").read_text().splitlines()) == 3
    # Runs elsewhere leave the pointer alone.
    assert _run("--episodes", "1", "--out", "elsewhere/r") == 0
    assert resolve_run_dir(None) == Path("runs/mine")


def test_a_run_that_fails_before_it_starts_leaves_no_directory(clean_dir: Path, capsys) -> None:
    assert _run("--episodes", "1") == 0
    before = sorted((clean_dir / "runs").iterdir())
    assert _run("--policy", "hf", "--model", "./missing-model") == 2
    assert "no such model directory" in capsys.readouterr().err
    assert sorted((clean_dir / "runs").iterdir()) == before


def test_no_run_yet_is_one_clear_line(clean_dir: Path, capsys) -> None:
    assert main(["eval"]) == 2
    assert "no run to open: runs/latest does not exist yet" in capsys.readouterr().err
    assert main(["replay"]) == 2
    assert _run("--resume") == 2


def test_names_are_unique_and_pointer_files_are_followed(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    a = new_run_dir("gp", "expert", root, now=0)
    b = new_run_dir("gp", "expert", root, now=0)  # same second
    assert a != b and a.is_dir() and b.is_dir() and b.name == f"{a.name}-2"
    odd = new_run_dir("sftrl/VIRL-v0", "vllm offline", root, now=0)
    assert odd.name.endswith("-sftrl-VIRL-v0-vllm-offline")
    point_latest(b, root)
    assert resolve_run_dir(None, root) == root / b.name
    # Where symlinks are unavailable the pointer is a one-line file; it is followed the same way.
    (root / "latest").unlink()
    (root / "latest").write_text(a.name + "\n")
    assert resolve_run_dir(None, root) == root / a.name
    (root / "latest").write_text("../../etc\n")
    with pytest.raises(ValueError, match="not a run pointer"):
        resolve_run_dir(None, root)


def test_a_real_latest_directory_from_older_versions_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    (root / "latest").mkdir(parents=True)
    (root / "latest" / "episodes.jsonl").write_text("")
    point_latest(new_run_dir("gp", "expert", root), root)
    assert (root / "latest").is_dir() and not (root / "latest").is_symlink()
    assert (root / "latest" / "episodes.jsonl").exists()
