"""Model names: a missing local directory fails at once; an unreachable or disabled hub is not retried."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sftrl.agents.model_source import hub_reachable, looks_local, model_load_kwargs
from sftrl.cli import main


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("./models/x", True),
        ("../x", True),
        ("/abs/model", True),
        ("~/m", True),
        ("a/b/c", True),
        ("models/", True),
        ("Qwen/Qwen2.5-VL-3B-Instruct", False),
        ("gpt2", False),
    ],
)
def test_what_looks_like_a_path(name: str, local: bool) -> None:
    assert looks_local(name) is local


@pytest.mark.parametrize("model", ["models/nonexistent", "./models/nonexistent", "./nope"])
def test_cli_missing_model_directory_is_one_line(
    model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # as after `agent tiny-model --out models/tiny`
    rc = main(["run", "--policy", "hf", "--model", model, "--episodes", "1", "--out", "runs/x"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == f"agent: error: --policy hf: no such model directory: {model}"


def test_a_file_is_not_a_model_directory(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file, not a model directory"):
        model_load_kwargs(str(tmp_path / "weights.bin"))


def test_local_directory_loads_as_is(tiny_text_model: Path) -> None:
    assert model_load_kwargs(str(tiny_text_model)) == {}


def test_offline_hub_uses_the_local_cache_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_load_kwargs("someorg/some-model") == {"local_files_only": True}


def test_unreachable_hub_is_probed_once_then_cache_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    assert model_load_kwargs("someorg/some-model") == {"local_files_only": True}
    rc = main(["run", "--policy", "hf", "--model", "someorg/some-model", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "the hub cannot be reached" in err and "local model directory" in err


def test_hub_probe_sees_a_listening_server() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub_reachable(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=2.0)
    assert not hub_reachable(f"http://127.0.0.1:{_closed_port()}", timeout=2.0)
