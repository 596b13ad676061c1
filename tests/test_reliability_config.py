"""Hostile ``--config`` files: each is refused in one line, quickly, without building the bomb (issue 13)."""

from __future__ import annotations

import time

import pytest

from sftrl.cli import main

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
MERGES = "m0: &m0 {k: 1}\n" + "".join(
    f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}, *m{i - 1}], x{i}: 1}}\n" for i in range(1, 30)
)


@pytest.mark.parametrize(
    "content, needle",
    [
        pytest.param(LAUGHS.encode(), "more than 32 YAML aliases", id="alias-bomb"),
        pytest.param(MERGES.encode(), "more than 32 YAML aliases", id="merge-key-bomb"),
        pytest.param(b"episodes: " + b"9" * 5000, "Exceeds the limit (4300 digits)", id="huge-int"),
        pytest.param(bytes(range(256)) * 4, "not UTF-8 text", id="binary"),
        pytest.param(b"x: " + b"[" * 50_000 + b"]" * 50_000, "nests deeper than 32 levels", id="deep"),
        pytest.param(b"episodes: 2\n  seed: 1\n - x", "is not valid YAML: ", id="syntax"),
        pytest.param(b"# x\n" * 300_000, "larger than 1048576 bytes", id="huge-file"),
    ],
)
def test_hostile_config_is_refused_in_one_line(tmp_path, capsys, content, needle):
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    t0 = time.perf_counter()
    status = main(["run", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert status == 2 and needle in err and err.count("\n") == 1, err
    assert elapsed < 30  # not a timing claim: a guard that the bomb was never expanded (it took 111 s)


def test_a_config_with_a_few_aliases_still_loads(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("episodes: &n 2\nseed: *n\n")
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet", "--json"]) == 0
    assert '"episodes": 2' in capsys.readouterr().out


def test_policy_option_values_are_bounded_too(tmp_path, capsys):
    status = main(["run", "--policy-option", "x=" + "[" * 100 + "]" * 100, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert status == 2 and "--policy-option: x nests deeper than 32 levels" in err and err.count("\n") == 1
