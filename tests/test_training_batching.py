"""Turn-grouped SFT batches (``--batch-groups turns``) and length-grouped RL mini-batches."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from sftrl.cli import main
from sftrl.training.batching import GroupedBatchSampler, grouped_batch_order, length_batches, turn_counts


@pytest.fixture(scope="module")
def char_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sftrl.agents.tiny import build_char_model

    return build_char_model(tmp_path_factory.mktemp("char") / "m", hidden=32, layers=1, heads=1)


def test_every_batch_is_one_group_and_rows_are_used_at_most_once() -> None:
    groups = [i % 3 for i in range(100)]  # 34 / 33 / 33 rows
    order = grouped_batch_order(groups, 8, seed=1)
    batches = [order[k : k + 8] for k in range(0, len(order), 8)]
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    assert len(order) == len(set(order)) == 8 * (4 + 4 + 4)  # each group's partial batch left out
    assert order == grouped_batch_order(groups, 8, seed=1) != grouped_batch_order(groups, 8, seed=2)
    # The groups take turns at random instead of running one after another.
    assert len({groups[b[0]] for b in batches[:6]}) > 1
    with pytest.raises(ValueError, match="every batch would mix groups"):
        GroupedBatchSampler([0, 1, 2], 2, seed=0)


def test_sampler_reshuffles_every_epoch_and_counts_turns() -> None:
    sampler = GroupedBatchSampler([0] * 10 + [1] * 10, 5, seed=0)
    first, second = list(sampler), list(sampler)
    assert len(sampler) == len(first) == 20 and sorted(first) == sorted(second) and first != second
    assert turn_counts([[{"role": "user"}], [{}, {}, {}], "plain text"]) == [1, 3, 1]


def test_train_sft_with_turn_groups_batches_by_depth(
    char_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sftrl.repro.stage0 import build_dataset
    from sftrl.training.config import SFTTrainConfig
    from sftrl.training.sft import build_trainer, inspect_data

    data = build_dataset(tmp_path / "data", 96, seed=0, val_rows=4)
    out = tmp_path / "sft"
    argv = ["train", "sft", "--data", str(data), "--model", str(char_model), "--out", str(out)]
    assert main([*argv, "--max-steps", "3", "--batch-size", "4", "--batch-groups", "turns", "--json"]) == 0
    assert json.loads((out / "sft_metrics.json").read_text())["global_step"] == 3
    # The trainer's batches: consecutive chunks of its sampler, one prompt depth each.
    info = inspect_data(data)
    cfg = SFTTrainConfig(
        data=data, model=str(char_model), out=tmp_path / "t", batch_size=4, batch_groups="turns"
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = build_trainer(
        cfg, info, AutoModelForCausalLM.from_pretrained(char_model), AutoTokenizer.from_pretrained(char_model)
    )
    order = list(trainer._get_train_sampler())
    depths = turn_counts(info.train["prompt"])
    assert all(len({depths[i] for i in order[k : k + 4]}) == 1 for k in range(0, len(order), 4))
    assert len(Counter(depths)) > 1  # the data has several depths, so the grouping was tested
    capsys.readouterr()
    assert main([*argv, "--max-steps", "1", "--batch-groups", "turns", "--group-by-length"]) == 2
    assert "group_by_length and batch_groups both choose the batches" in capsys.readouterr().err


def test_length_batches_use_every_row_once_in_as_many_near_equal_batches_of_similar_length() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(10, 300) for _ in range(182)]
    for gen in (None, random.Random(1)):
        batches = length_batches(lengths, 48, gen)
        assert len(batches) == 4  # ceil(182 / 48), as random mini-batches would be
        assert sorted(i for b in batches for i in b) == list(range(182))
        assert {len(b) for b in batches} <= {45, 46}
        # Each batch is a run of the rows sorted by length: batches do not interleave.
        spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:], strict=False))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in length_batches(lengths, 48))
    order = list(range(182))
    random.Random(2).shuffle(order)
    random_padded = sum(
        len(order[k : k + 48]) * max(lengths[i] for i in order[k : k + 48]) for k in range(0, 182, 48)
    )
    assert padded < 0.8 * random_padded
    assert length_batches([], 8) == []


def test_length_batches_are_shuffled_with_an_rng_and_fixed_without() -> None:
    lengths = [5] * 40 + [9] * 40
    assert length_batches(lengths, 8) == length_batches(lengths, 8)
    assert length_batches(lengths, 8)[0] == list(range(8))  # shortest first, ties by index
    a, b = length_batches(lengths, 8, random.Random(0)), length_batches(lengths, 8, random.Random(1))
    assert a != b and sorted(map(sorted, a)) != sorted(map(sorted, b))  # order and tie-breaks differ
