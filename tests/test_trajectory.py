"""Trajectory logs: append-only, crash-tolerant reading, repair before resume, image dedup."""

from __future__ import annotations

import json

import pytest

from sftrl.agents.trajectory import (
    EpisodeRecord,
    ImageStore,
    LogError,
    TrajectoryWriter,
    read_episodes,
    repair_log,
)


def _rec(i: int) -> EpisodeRecord:
    return EpisodeRecord(
        run_id="r", episode_index=i, seed=100 + i, env_id="e", env_config={"a": 1}, policy={"name": "p"}
    )


def test_roundtrip_and_partial_last_line_is_skipped(tmp_path):
    with TrajectoryWriter(tmp_path) as w:
        for i in range(3):
            w.write(_rec(i))
    log = tmp_path / "episodes.jsonl"
    # Simulate a crash in the middle of writing a 4th line.
    with open(log, "ab") as fh:
        fh.write(_rec(3).model_dump_json().encode()[:25])
    assert [r.episode_index for r in read_episodes(tmp_path)] == [0, 1, 2]
    removed = repair_log(log)
    assert removed == 25
    assert log.read_bytes().endswith(b"\n")
    # The writer repairs on open, so appending after a crash never glues two records together.
    with open(log, "ab") as fh:
        fh.write(b'{"schema_version": 1, "run_')
    with TrajectoryWriter(tmp_path) as w:
        w.write(_rec(3))
    assert [r.episode_index for r in read_episodes(tmp_path)] == [0, 1, 2, 3]


def test_corrupt_middle_line_is_an_error(tmp_path):
    log = tmp_path / "episodes.jsonl"
    log.write_text(_rec(0).model_dump_json() + "\nnot json\n" + _rec(1).model_dump_json() + "\n")
    with pytest.raises(LogError, match=":2: corrupt line"):
        read_episodes(tmp_path)


def test_schema_version_is_checked(tmp_path):
    obj = json.loads(_rec(0).model_dump_json())
    obj["schema_version"] = 999
    (tmp_path / "episodes.jsonl").write_text(json.dumps(obj) + "\n")
    with pytest.raises(LogError, match="schema_version 999"):
        read_episodes(tmp_path)


def test_missing_log_is_a_clear_error(tmp_path):
    with pytest.raises(LogError, match="no trajectory log"):
        read_episodes(tmp_path / "nope")


def test_image_store_writes_each_image_once(tmp_path):
    store = ImageStore(tmp_path)
    p1 = store.put("abc", b"png-bytes")
    p2 = ImageStore(tmp_path).put("abc", b"other")  # a second store (e.g. after resume) keeps the file
    assert p1 == p2 == "images/abc.png"
    assert (tmp_path / p1).read_bytes() == b"png-bytes"
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["abc.png"]
