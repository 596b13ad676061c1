"""The experiment's fixed hand pools: training multisets, held-out ID multisets, all rule-OOD multisets.

Every 4-card rank multiset solvable for 24 under J/Q/K = 10 is shuffled with a fixed seed; ``n_id_eval``
of them are held out for in-distribution evaluation and the rest are the only hands post-training
may deal (the GP env's ``hand_pool``). The rule-OOD set is every multiset with at least one face card
that is solvable under J/Q/K = 11/12/13 (796 of them); a rule-OOD multiset is "seen" when the same
ranks are in the training pool (it was trained on under the other rule) and "unseen" otherwise.
A fixed random subset of the rule-OOD set can be written too, for evaluations that run often.

Written as GP ``hand_pool`` files by ``python -m sftrl.repro.hands --out DIR [--ood-subset 200]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path

from sftrl.environments.generalpoints.cards import FACE_RANKS, RANKS, FaceRule, rank_value
from sftrl.environments.generalpoints.solver import is_solvable

TARGET = 24
POOL_FILES = {"train": "train.json", "id_eval": "id_eval.json", "ood_eval": "ood_eval.json"}
OOD_CURVE_FILE = "ood_curve.json"

Multiset = tuple[str, ...]


def multisets() -> list[Multiset]:
    """All 1820 4-card rank multisets, each sorted A..K."""
    return list(itertools.combinations_with_replacement(RANKS, 4))


def solvable(ranks: Multiset, rule: FaceRule, target: int = TARGET) -> bool:
    return is_solvable([rank_value(r, rule) for r in ranks], target)


@dataclass(frozen=True)
class Pools:
    train: tuple[Multiset, ...]
    id_eval: tuple[Multiset, ...]
    ood_eval: tuple[Multiset, ...]

    def ood_seen(self) -> list[bool]:
        """Per rule-OOD multiset (in ``ood_eval`` order): is it in the training pool?"""
        train = set(self.train)
        return [m in train for m in self.ood_eval]

    def ood_subset(self, n: int, seed: int) -> list[Multiset]:
        """A fixed random ``n`` of the rule-OOD multisets, in pool order."""
        pick = sorted(random.Random(seed).sample(range(len(self.ood_eval)), n))
        return [self.ood_eval[i] for i in pick]

    def write_ood_curve(self, directory: Path, n: int, split_seed: int) -> Path:
        """``ood_curve.json``: the fixed subset evaluated often (seeded from the pools' split seed)."""
        path = directory / OOD_CURVE_FILE
        path.write_text(json.dumps([list(m) for m in self.ood_subset(n, split_seed + 1)]) + "\n")
        return path

    def write(self, directory: Path) -> dict[str, Path]:
        """The three pools as GP ``hand_pool`` JSON files; returns their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, file in POOL_FILES.items():
            path = directory / file
            path.write_text(json.dumps([list(m) for m in getattr(self, name)]) + "\n")
            paths[name] = path
        return paths


def make_pools(n_id_eval: int = 200, seed: int = 1234) -> Pools:
    rng = random.Random(seed)
    id_ok = [m for m in multisets() if solvable(m, "10")]
    rng.shuffle(id_ok)
    ood = [m for m in multisets() if FACE_RANKS & set(m) and solvable(m, "11-13")]
    return Pools(
        train=tuple(sorted(id_ok[n_id_eval:])),
        id_eval=tuple(sorted(id_ok[:n_id_eval])),
        ood_eval=tuple(ood),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="Write the GP-L hand pools (train, held-out ID, rule-OOD) as hand_pool files."
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--id-eval", type=int, default=200, help="held-out ID multisets")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--ood-subset", type=int, default=None, help="also ood_curve.json: this many rule-OOD multisets"
    )
    args = ap.parse_args(argv)
    pools = make_pools(args.id_eval, args.seed)
    paths = pools.write(args.out)
    if args.ood_subset is not None:
        paths["ood_curve"] = pools.write_ood_curve(args.out, args.ood_subset, args.seed)
    for name, path in paths.items():
        print(f"{name}: {path} ({len(json.loads(path.read_text()))} multisets)")


if __name__ == "__main__":
    main()
