"""Training batches drawn within groups of rows, or of rows of similar length (pure logic, no torch).

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


def length_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random | None = None
) -> list[list[int]]:
    """Index batches of rows of similar length: as many batches as random ones would be
    (``ceil(n / batch_size)``), sizes differing by at most one, each a run of the rows sorted by length.

    ``rng`` set: ties are broken at random and the batches come in random order (RL mini-batches);
    None: ties by index, batches shortest first (forward-only scoring, where order does not matter).
    Padding a batch to its longest row then wastes little: RL transitions of a multi-turn episode grow
    with every attempt (each carries the previous ones), so random batches pad to ~1.6x their tokens.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    n = len(lengths)
    if n == 0:
        return []
    ties = [rng.random() for _ in range(n)] if rng is not None else list(range(n))
    order = sorted(range(n), key=lambda i: (lengths[i], ties[i]))
    k = -(-n // batch_size)
    base, extra = divmod(n, k)
    batches, start = [], 0
    for j in range(k):
        size = base + (1 if j < extra else 0)
        batches.append(order[start : start + size])
        start += size
    if rng is not None:
        rng.shuffle(batches)
    return batches
