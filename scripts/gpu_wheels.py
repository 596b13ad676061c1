"""Wheels of sftrl's dependencies that an offline machine lacks (a GPU box without a package index).

Run here, where pip reaches an index and sftrl is installed:
``python scripts/gpu_wheels.py --have PACKAGES.txt [--out .whl] [--python 3.12]``. ``PACKAGES.txt``
names what the target machine already holds: ``pip list`` / ``pip freeze`` output or bare names,
comma- or line-separated. The script walks the dependency closure of the installed ``sftrl`` (no
extras), keeps what the target lacks (never torch or the CUDA libraries: those are the machine's),
pins each to the version installed here (the versions the tests ran with), and downloads its wheel
for CPython ``--python`` on manylinux x86-64; a package published only as an sdist is built into a
wheel here. Then, on the target, in the repository root:
``python3 -m pip install --no-index --find-links .whl --no-build-isolation -e .`` (what
``scripts/gpu_figures.sh`` does). Extra versions for the target's resolver (e.g. an older ``fsspec``
where the target's is too new for ``datasets``) can be added with ``--also NAME==VERSION``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
NEVER = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_have(text: str) -> set[str]:
    """Package names from ``pip list`` / ``pip freeze`` output or a comma/newline-separated list."""
    names = set()
    for token in re.split(r"[,\n]", text):
        token = token.strip()
        if not token or token.startswith(("#", "Package", "---")):
            continue
        names.add(norm(re.split(r"[\s=<>~!@]", token, maxsplit=1)[0]))
    return names


def closure(root: str = "sftrl") -> dict[str, str]:
    """name -> installed version of every distribution ``root`` needs (markers evaluated; no extras of
    ``root``, but the extras its dependencies ask of each other, e.g. ``markdown-it-py[linkify]``)."""
    found: dict[str, str] = {}
    walked: set[tuple[str, str]] = set()
    stack = [(root, "")]
    while stack:
        name, extra = stack.pop()
        name = norm(name)
        if (name, extra) in walked:
            continue
        walked.add((name, extra))
        dist = md.distribution(name)
        found[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                if extra and (req.marker is None or req.marker.evaluate({"extra": ""})):
                    continue  # a base requirement, walked with the base package
                stack += [(req.name, "")] + [(req.name, e) for e in sorted(req.extras)]
    found.pop(norm(root))
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--have", type=Path, required=True, help="packages the target machine holds")
    ap.add_argument("--out", type=Path, default=Path(".whl"))
    ap.add_argument("--python", default="3.12", help="the target's CPython version")
    ap.add_argument("--also", nargs="*", default=[], help="extra NAME==VERSION wheels to carry")
    args = ap.parse_args(argv)
    have = read_have(args.have.read_text())
    want = sorted(
        f"{name}=={version}"
        for name, version in closure().items()
        if name not in have and not NEVER.match(name)
    )
    want += args.also
    args.out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    target = ["--only-binary=:all:", "--python-version", args.python, "--implementation", "cp"]
    for platform in PLATFORMS:
        target += ["--platform", platform]
    for spec in want:
        got = subprocess.run([*pip, "download", "-q", "--no-deps", *target, "-d", str(args.out), spec],
                             capture_output=True, text=True)  # fmt: skip
        if got.returncode != 0:  # sdist only: build the (pure-Python) wheel here
            subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(args.out), spec], check=True)
        print(spec)
    size = sum(f.stat().st_size for f in args.out.glob("*.whl"))
    print(f"{len(want)} packages, {size / 2**20:.1f} MiB of wheels in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
