"""CLI error wording: one line, no pydantic noise or repetition, exact bounds, no TUI for a bad config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sftrl.agents.metrics import wilson_interval
from sftrl.cli import main


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("agent: error: ") and "\n" not in err
    return err.removeprefix("agent: error: ")


def test_unknown_city_reads_as_a_sentence(capsys, tmp_path: Path):
    err = _error(capsys, "run", "--env", "virl", "--city", "paris", "--out", str(tmp_path / "r"))
    assert err.startswith("unknown city 'paris'; available: ")
    assert "Value error" not in err and "value:" not in err


def test_field_errors_name_the_option(capsys, tmp_path: Path):
    err = _error(capsys, "run", "--env", "virl", "--verify-iter", "0", "--out", str(tmp_path / "r"))
    assert err.startswith("verify-iter: Input should be greater than or equal to 1")


def test_missing_api_key_is_said_once(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    err = _error(
        capsys,
        "run",
        "--policy",
        "openai",
        "--model",
        "gpt-4o-mini",
        "--base-url",
        "https://api.openai.com/v1",
        "--out",
        str(tmp_path / "r"),
    )
    assert err.count("--policy openai") == 1 and "needs an API key" in err


def test_interval_bounds_are_exact_at_zero_and_all(capsys, tmp_path: Path):
    for n in (1, 5, 7, 200):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    # A run nobody solves (these seeds' random formulas all miss): the bound prints as 0.0, not 3.47e-18.
    argv = ["run", "--policy", "random", "--episodes", "3", "--verify-iter", "1", "--json"]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["success_rate"] == 0 and summary["success_ci95"][0] == 0.0


def test_tui_run_with_a_bad_policy_fails_before_the_ui(capsys, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)

    def no_ui(*args, **kwargs):
        raise AssertionError("the TUI started although the policy cannot be built")

    monkeypatch.setattr("sftrl.tui.app.run_tui", no_ui)
    err = _error(capsys, "run", "--policy", "hf", "--model", "./no-such-model", "--tui")
    assert "no such model directory: ./no-such-model" in err
    assert not (tmp_path / "runs").exists()


def test_tui_run_into_a_used_directory_fails_before_the_ui(capsys, tmp_path: Path, monkeypatch):
    out = str(tmp_path / "used")
    assert main(["run", "--episodes", "1", "--out", out, "--quiet"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)

    def no_ui(*args, **kwargs):
        raise AssertionError("the TUI started although the run directory is in use")

    monkeypatch.setattr("sftrl.tui.app.run_tui", no_ui)
    assert "already holds episodes" in _error(capsys, "run", "--episodes", "1", "--out", out, "--tui")
