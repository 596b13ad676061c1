"""Training batches drawn within groups of rows (pure logic, no torch at import).

``agent train sft --batch-groups turns`` puts rows with the same number of conversation turns in the
same batch and mixes everything else at random: rows of one depth pad to similar lengths (a row with
two failed attempts is ~3x a row with none), while item kinds stay mixed in every batch — unlike
length grouping, whose batches are nearly one kind each (which slowed the stage-0 model several-fold,
docs/repro.md).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence


def grouped_batch_order(groups: Sequence[Hashable], batch_size: int, seed: int) -> list[int]:
    """Row indices such that every consecutive ``batch_size`` chunk is one group's rows, at random.

    Rows are shuffled within their group and cut into full batches; the batches of all groups are then
    shuffled together. A group's last partial batch is left out of this order (fewer than
    ``batch_size`` rows per group), so no batch ever mixes two groups.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rng = random.Random(seed)
    rows: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        rows[g].append(i)
    batches: list[list[int]] = []
    for g in sorted(rows, key=repr):
        idx = rows[g]
        rng.shuffle(idx)
        batches += [idx[k : k + batch_size] for k in range(0, len(idx) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return [i for b in batches for i in b]


class GroupedBatchSampler:
    """A torch-compatible index sampler over :func:`grouped_batch_order`, reshuffled every epoch."""

    def __init__(self, groups: Sequence[Hashable], batch_size: int, seed: int) -> None:
        self.groups = list(groups)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self._len = len(grouped_batch_order(self.groups, batch_size, seed))
        if self._len == 0:
            raise ValueError(f"no group has {batch_size} rows: every batch would mix groups")

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        order = grouped_batch_order(self.groups, self.batch_size, self.seed + self.epoch)
        self.epoch += 1
        return iter(order)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def turn_counts(rows: Sequence[object]) -> list[int]:
    """Per row of a ``prompt`` or ``messages`` column, its number of turns (a plain string: 1)."""
    return [len(r) if isinstance(r, list) else 1 for r in rows]
