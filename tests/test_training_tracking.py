"""``--report-to``: what the trainers send to TensorBoard, W&B (offline) and Trackio, read back from disk.

TensorBoard event files are read with TensorBoard's own reader, the W&B offline run from its
transaction log (``run-*.wandb``: LevelDB-style records of W&B's protobuf ``Record``), Trackio from its
SQLite database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sftrl.training.tracking import Tracker, TrackingError, check_installed, parse_report_to

REPO = Path(__file__).resolve().parents[1]


def tb_events(log_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def tb_text(acc: Any, tag: str) -> list[str]:
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(f"{tag}/text_summary")]


def wandb_history(out: Path) -> tuple[list[dict[str, Any]], Path]:
    """Every history row of the one offline W&B run under ``out/wandb`` and that run's directory."""
    from wandb.proto import wandb_internal_pb2 as pb

    (run_dir,) = (out / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    data = log.read_bytes()
    assert data[:4] == b":W&B"
    rows: list[dict[str, Any]] = []
    pos, pending, block = 7, b"", 32 * 1024
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
                )
    return rows, run_dir


def test_report_to_accepts_none_lists_and_commas() -> None:
    assert parse_report_to("none") == [] and parse_report_to(None) == [] and parse_report_to([]) == []
    assert parse_report_to("tensorboard,wandb") == ["tensorboard", "wandb"]
    assert parse_report_to(["wandb", "none", "WandB", "trackio"]) == ["wandb", "trackio"]
    with pytest.raises(ValueError, match="unknown tracker 'mlflow'"):
        parse_report_to("tensorboard,mlflow")
    check_installed(["tensorboard", "wandb", "trackio"])  # the test extra installs all three


def test_a_missing_tracker_package_fails_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(TrackingError, match=r"--report-to wandb needs the `wandb` package"):
        check_installed(["wandb"])


def test_scalars_and_an_episode_table_with_images_reach_tensorboard_and_wandb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    png = tmp_path / "hand.png"
    Image.new("RGB", (8, 6), (200, 10, 10)).save(png)
    out = tmp_path / "run"
    with Tracker(out, ["tensorboard", "wandb"], config={"lr": 0.1, "out": out}) as tracker:
        tracker.log({"reward": 0.5, "verdicts": {"correct": 2}, "note": "text", "bad": float("nan")}, step=1)
        tracker.log({"reward": 0.75, "flag": True}, step=2)
        tracker.log_table("episodes", ["episode", "feedback", "image"], [[0, "wrong | try", png]], step=2)
    acc = tb_events(out / "tensorboard")
    assert [(e.step, e.value) for e in acc.Scalars("reward")] == [(1, 0.5), (2, 0.75)]
    assert acc.Scalars("verdicts/correct")[0].value == 2 and acc.Scalars("flag")[0].value == 1.0
    assert "note" not in acc.Tags()["scalars"] and "bad" not in acc.Tags()["scalars"]
    assert "wrong \\| try" in tb_text(acc, "episodes")[0]
    (image,) = acc.Images("episodes/0")
    assert (image.width, image.height) == (8, 6)
    rows, run_dir = wandb_history(out)
    assert [r["reward"] for r in rows if "reward" in r] == [0.5, 0.75]
    assert any(r.get("verdicts/correct") == 2 for r in rows)
    table_path = next(r["episodes/path"] for r in rows if "episodes/path" in r)
    table = json.loads((run_dir / "files" / table_path).read_text())
    assert table["columns"] == ["episode", "feedback", "image"] and table["data"][0][1] == "wrong | try"
    assert json.loads((out / "tracking.json").read_text())["wandb_id"] == run_dir.name.rsplit("-", 1)[-1]


@pytest.mark.slow
def test_train_rl_reports_to_all_three_trackers_through_python_m_sftrl(
    tiny_text_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rl"
    trackio_dir = tmp_path / "trackio"
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "TRACKIO_DIR": str(trackio_dir),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "sftrl", "train", "rl", "--model", str(tiny_text_model), "--out", str(out)]
    cmd += ["--algo", "grpo", "--max-steps", "2", "--episodes-per-update", "2", "--group-size", "2"]
    cmd += ["--max-new-tokens", "8", "--report-to", "tensorboard,wandb", "--report-to", "trackio"]
    cmd += ["--track-episodes", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    acc = tb_events(out / "tensorboard")
    for key in ("reward", "success_rate", "policy_loss", "entropy", "flops", "tokens_per_s"):
        assert [e.step for e in acc.Scalars(key)] == [1, 2], key
    assert [e.value for e in acc.Scalars("policy_loss")] == pytest.approx([r["policy_loss"] for r in logged])
    assert any(t.startswith("verdicts/") for t in acc.Tags()["scalars"])
    table = tb_text(acc, "episodes")
    assert len(table) == 2 and table[0].startswith("| episode | seed | success")

    rows, _ = wandb_history(out)
    assert [r["reward"] for r in rows if "reward" in r] == pytest.approx([r["reward"] for r in logged])
    assert sum("episodes/path" in r for r in rows) == 2

    (db,) = trackio_dir.glob("*.db")
    with sqlite3.connect(db) as conn:
        found = [(step, json.loads(m)) for step, m in conn.execute("SELECT step, metrics FROM metrics")]
    assert [s for s, m in found if "policy_loss" in m] == [1, 2]
    tables = [m["episodes"] for _, m in found if "episodes" in m]
    assert len(tables) == 2 and tables[0]["_type"] == "trackio.table" and len(tables[0]["_value"]) == 2


@pytest.mark.slow
def test_train_sft_reports_its_loss_and_sample_rows(
    tiny_text_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sftrl.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs, data, out = tmp_path / "expert", tmp_path / "data", tmp_path / "sft"
    assert main(["run", "--episodes", "6", "--out", str(runs), "--quiet"]) == 0
    assert main(["data", "sft", str(runs), "--out", str(data), "--val-fraction", "0"]) == 0
    argv = ["train", "sft", "--data", str(data), "--model", str(tiny_text_model), "--out", str(out)]
    assert main([*argv, "--max-steps", "3", "--batch-size", "2", "--report-to", "tensorboard", "wandb"]) == 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    acc = tb_events(out / "tensorboard")
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx(losses)
    assert "formula" in tb_text(acc, "train_samples")[0]  # the expert's JSON replies are the targets
    rows, _ = wandb_history(out)
    assert [r["loss"] for r in rows if "loss" in r] == pytest.approx(losses)
