"""The README's set-up run and quick tour, executed in order in a clean directory (sizes scaled down).

Every ``agent …`` (and ``python -m sftrl.…``) line of the quick-tour block runs as written, except
that episode counts (flags and ``episodes=`` of evaluation specs) and training steps are capped and
small-size flags the README does not show are appended (the commands keep their meaning: same env,
policy, model and outputs). Lines that need a terminal (``agent replay``) or GPU servers (``--policy
vllm``) are checked to parse, not run.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from sftrl.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
CAPS = {"--episodes": 4, "--max-steps": 2, "--eval-episodes": 2}
# Flags appended per command (the README's defaults are sized for a real run, not for CI).
SMALL = {
    ("run", "hf"): ["--max-new-tokens", "8", "--episodes", "4"],
    ("train", "sft"): ["--batch-size", "2", "--no-evaluate"],
    ("train", "rl"): ["--episodes-per-update", "2", "--group-size", "2", "--max-new-tokens", "8"]
    + ["--ppo-epochs", "1", "--minibatch-size", "2"],
}


def quick_tour_commands() -> list[list[str]]:
    """The set-up command's `agent run …` and every `agent …` line of the quick-tour block."""
    text = README.read_text(encoding="utf-8")
    setup = re.search(r"&& (agent run [^\n]+)", text)
    assert setup, "README lost its set-up command"
    block = text.split("## Quick tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [setup.group(1)] + [
        ln for ln in block.splitlines() if ln.strip().startswith(("agent ", "python -m sftrl."))
    ]
    return [shlex.split(ln, comments=True) for ln in lines]


def scaled(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in CAPS and out[i + 1].isdigit():
            out[i + 1] = str(min(int(out[i + 1]), CAPS[arg]))
    out = [re.sub(r"\bepisodes=(\d+)", lambda m: f"episodes={min(int(m.group(1)), 3)}", a) for a in out]
    sub = out[1]
    key = (sub, "hf") if sub == "run" and "hf" in out else (sub, out[2]) if sub == "train" else None
    extra = SMALL.get(key, []) if key else []
    if key == ("train", "rl") and "--episodes" in out:  # offline: learns from the logged runs
        extra = extra[2:]  # no --episodes-per-update
    return [*out, *extra]


def test_readme_quick_tour_runs_in_order_on_a_clean_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # a fresh clone's working directory: no runs/, models/, data/, ckpt/
    for argv in quick_tour_commands():
        if argv[:2] == ["python", "-m"]:
            importlib.import_module(argv[2]).main(argv[3:])  # the module's own command line
            capsys.readouterr()
            continue
        assert argv[0] == "agent"
        args = scaled(argv)[1:]
        if args[0] == "replay" or "vllm" in args:
            # Needs a terminal / GPU servers here: it must at least parse, and name real directories.
            build_parser(args).parse_args(args)
            assert all(Path(a).exists() for a in args[1:] if a.startswith("runs/"))
            continue
        rc = main(args)
        out = capsys.readouterr()
        assert rc == 0, f"`agent {' '.join(argv[1:])}` failed:\n{out.err[-3000:]}"
        if args[0] in ("run", "data", "train") and "--json" not in args:
            # Every step says what to do next, naming its own output.
            said = out.out + out.err
            assert "run directory:" in said or "next:" in said, f"`agent {' '.join(args)}` gave no next step"
            target = args[args.index("--out") + 1] if "--out" in args else None
            if target and args[0] != "run":
                assert f"--model {target}" in said or f"--data {target}" in said
    assert (tmp_path / "runs" / "latest").exists()
    assert (tmp_path / "ckpt" / "rl-offline").is_dir() and (tmp_path / "ckpt" / "sft").is_dir()
