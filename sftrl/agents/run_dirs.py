"""Run directories: a fresh ``runs/<date>-<time>-<env>-<policy>`` per run and ``runs/latest`` at the newest.

``runs/latest`` is a relative symlink where the filesystem has them, else a one-line pointer file
holding the directory's name; :func:`resolve_run_dir` follows either, so ``agent replay`` and
``agent eval`` open the newest run when given no directory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

RUNS_ROOT = Path("runs")
LATEST = "latest"


class RunDirError(ValueError):
    """No run directory to open (nothing ran yet, or the pointer names a missing directory)."""


def new_run_dir(env: str, policy: str, root: Path = RUNS_ROOT, now: float | None = None) -> Path:
    """Create and return a new, empty ``root/<YYYYmmdd>-<HHMMSS>-<env>-<policy>[-N]`` directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = f"{stamp}-{_safe(env)}-{_safe(policy)}"
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()  # exclusive: two runs started in the same second get different directories
        except FileExistsError:
            continue
        return path
    raise RunDirError(f"cannot find a free run directory name under {root} for {base}")


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in part).strip("-") or "run"


def point_latest(run_dir: Path, root: Path = RUNS_ROOT) -> None:
    """Make ``root/latest`` point at ``run_dir`` when it lies directly under ``root`` (else do nothing).

    A ``latest`` that is a real directory (written by an older sftrl) is left alone.
    """
    if run_dir.name == LATEST or run_dir.resolve().parent != root.resolve():
        return
    link = root / LATEST
    if link.is_dir() and not link.is_symlink():
        return
    tmp = root / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(run_dir.name, target_is_directory=True)
    except OSError:  # no symlinks here (some Windows set-ups): a pointer file instead
        tmp.write_text(run_dir.name + "\n", encoding="utf-8")
    os.replace(tmp, link)  # atomic: readers see the old or the new pointer, never none


def resolve_run_dir(path: Path | None = None, root: Path = RUNS_ROOT) -> Path:
    """The run directory ``path`` names (``root/latest`` when None), following a pointer file."""
    target = path if path is not None else root / LATEST
    if target.is_symlink() and target.name == LATEST:  # show the run's own name, not "latest"
        target = target.parent / os.readlink(target)
    elif target.is_file() and target.name == LATEST:
        name = target.read_text(encoding="utf-8").strip()
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise RunDirError(f"{target} is not a run pointer (it should hold one directory name)")
        target = target.parent / name
    if path is None and not target.is_dir():
        raise RunDirError(
            f"no run to open: {root / LATEST} does not exist yet "
            "(run `agent run` first, or pass a run directory)"
        )
    return target


def discard_if_empty(run_dir: Path, ours: tuple[str, ...]) -> None:
    """Remove a run directory made for a run that failed before it started (it holds no episodes).

    Only the files named in ``ours`` (and an empty ``images/``) are removed; anything else keeps it.
    """
    if not run_dir.is_dir():
        return
    logs = [run_dir / n for n in ours if n.endswith(".jsonl")]
    if any(log.is_file() and log.stat().st_size > 0 for log in logs):
        return  # episodes were written after all: never delete them
    for name in ours:
        (run_dir / name).unlink(missing_ok=True)
    images = run_dir / "images"
    if images.is_dir() and not any(images.iterdir()):
        images.rmdir()
    if not any(run_dir.iterdir()):
        run_dir.rmdir()
