"""`agent eval A B` pairs only comparable runs: same env, one compared setting (or --force)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftrl.cli import main


def _run(tmp_path: Path, name: str, *args: str) -> str:
    out = str(tmp_path / name)
    assert main(["run", "--quiet", "--episodes", "4", "--out", out, *args]) == 0
    return out


def test_runs_of_different_envs_never_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gp, virl = _run(tmp_path, "gp"), _run(tmp_path, "virl", "--env", "virl")
    capsys.readouterr()
    for extra in ([], ["--force"]):
        assert main(["eval", gp, virl, *extra]) == 2
        err = capsys.readouterr().err
        assert "cannot pair runs of different envs" in err and "sftrl/VIRL-v0" in err


def test_one_compared_setting_pairs_and_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _run(tmp_path, "a", "--policy", "random"), _run(tmp_path, "b")
    capsys.readouterr()
    assert main(["eval", a, b, "--json"]) == 0
    paired = json.loads(capsys.readouterr().out)["paired"]
    assert paired["differs"] == {"policy": ["policy: random -> expert"]}
    assert paired["paired_episodes"] == 4
    assert main(["eval", a, b]) == 0
    assert "compared: policy: random -> expert" in capsys.readouterr().out


def test_more_than_one_difference_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path, "a", "--policy", "random")
    b = _run(tmp_path, "b", "--split", "rule-ood", "--concurrency", "2")  # concurrency changes nothing
    capsys.readouterr()
    assert main(["eval", a, b]) == 2
    err = capsys.readouterr().err
    assert "differ in more than one setting" in err and "--force" in err
    assert "policy: random -> expert" in err and "split: id -> rule-ood" in err and "concurrency" not in err
    assert main(["eval", a, b, "--force", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["paired"]["differs"]) == {"policy", "env options"}


def test_a_split_is_one_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b", "--split", "rule-ood")
    capsys.readouterr()
    assert main(["eval", a, b, "--json"]) == 0
    differs = json.loads(capsys.readouterr().out)["paired"]["differs"]
    assert list(differs) == ["env options"] and "split: id -> rule-ood" in differs["env options"]
