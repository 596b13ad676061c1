"""Ctrl-C (SIGINT) and SIGTERM stop `agent run` promptly, keep what finished and say how to resume.

A real second process runs many fast expert episodes (a backend that never suspends, the case that
used to run to the end before the interrupt was seen).
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

EPISODES = 100_000


def _default_signals() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "rc", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_stops_the_run_and_keeps_the_finished_episodes(
    tmp_path: Path, sig: signal.Signals, rc: int, word: str
) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sftrl.cli", "run", "--env", "gp", "--policy", "expert"]
    cmd += ["--episodes", str(EPISODES), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        # As from a terminal: an ignored SIGINT is inherited across exec, and the suite's own parent
        # (a background CI job) may ignore it; Python then never raises KeyboardInterrupt.
        preexec_fn=_default_signals,
    )
    log = out / "episodes.jsonl"
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and log.stat().st_size > 0):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        proc.send_signal(sig)
        # Generous for a loaded 2-core CI machine; a run that ignored the signal would play all
        # 100,000 episodes (over a minute even on an idle machine).
        try:
            assert proc.wait(timeout=30) == rc
        except subprocess.TimeoutExpired:
            pytest.fail(f"agent run ignored {sig.name} (this process's handler: {signal.getsignal(sig)})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    assert f"agent: {word}" in err and "--resume" in err
    lines = log.read_text().splitlines()
    assert 0 < len(lines) < EPISODES
    indices = [json.loads(line)["episode_index"] for line in lines]  # every line is whole
    assert sorted(indices) == list(range(len(lines)))
