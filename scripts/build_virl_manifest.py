"""Write the V-IRL split manifest (``sftrl/environments/virl/data/splits_manifest.json``).

The route sets are generated deterministically from the shipped city bundles; the manifest lists
them so that a change of data or generator shows up as a diff (and a failing test) instead of
silently changing the benchmark. Run from the repository root: ``python scripts/build_virl_manifest.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from sftrl.environments.virl.routes import build_manifest

OUT = Path(__file__).resolve().parents[1] / "sftrl/environments/virl/data/splits_manifest.json"


def main() -> None:
    manifest = build_manifest()
    OUT.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    counts = {k: len(v) for k, v in manifest["splits"].items()}
    print(f"wrote {OUT} {counts}")


if __name__ == "__main__":
    main()
