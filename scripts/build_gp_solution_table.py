"""Write the GeneralPoints solution table (``sftrl/environments/generalpoints/data/solutions-24.json.gz``).

Every multiset of 4 values in 1..13 (so every rank multiset under both face rules) is solved for 24
by the exact search of :mod:`sftrl.environments.generalpoints.solver`; the env then looks hands up
instead of searching. The output is byte-for-byte reproducible. Run from the repository root::

    python scripts/build_gp_solution_table.py          # (re)write the table
    python scripts/build_gp_solution_table.py --check  # exit 1 if the shipped table is stale
"""

from __future__ import annotations

import argparse
import sys

from sftrl.environments.generalpoints.solver import TABLE_FILE, build_table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the shipped table, write nothing")
    args = ap.parse_args()
    data = build_table()
    if args.check:
        same = TABLE_FILE.exists() and TABLE_FILE.read_bytes() == data
        print(f"{TABLE_FILE}: {'up to date' if same else 'STALE: rerun without --check'}")
        return 0 if same else 1
    TABLE_FILE.parent.mkdir(parents=True, exist_ok=True)
    TABLE_FILE.write_bytes(data)
    print(f"wrote {TABLE_FILE} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
