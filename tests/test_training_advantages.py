"""GAE and GRPO advantages: the numbers RL updates are built on."""

from __future__ import annotations

import pytest

from sftrl.training.advantages import gae, group_advantages, normalize


def test_gae_matches_a_hand_computation():
    rewards, values = [-1.0, -1.0, 5.0], [0.5, 0.2, 1.0]
    gamma, lam = 0.9, 0.95
    d2 = 5.0 - 1.0
    d1 = -1.0 + gamma * 1.0 - 0.2
    d0 = -1.0 + gamma * 0.2 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    adv, ret = gae(rewards, values, gamma=gamma, lam=lam)
    assert adv == pytest.approx([a0, a1, a2])
    assert ret == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 1.0])


def test_gae_with_lambda_one_and_zero_values_is_the_discounted_return():
    adv, ret = gae([1.0, 0.0, 2.0], [0.0, 0.0, 0.0], gamma=0.5, lam=1.0)
    assert ret == pytest.approx([1.0 + 0.25 * 2.0, 0.5 * 2.0, 2.0])
    assert adv == ret


def test_gae_bootstraps_truncated_episodes_and_checks_lengths():
    adv, _ = gae([0.0], [0.0], gamma=0.9, last_value=10.0)
    assert adv == pytest.approx([9.0])
    with pytest.raises(ValueError):
        gae([1.0], [])


def test_group_advantages_are_relative_within_groups_only():
    keys = ["a", "a", "b", "b", "c", "c"]
    returns = [5.0, -1.0, 5.0, 5.0, 0.0, 2.0]
    adv = group_advantages(keys, returns)
    assert adv[0] > 0 > adv[1] and adv[0] == pytest.approx(-adv[1])
    assert adv[2] == adv[3] == 0.0  # no signal when a group agrees
    assert adv[4] == pytest.approx(-1.0, abs=1e-4) and adv[5] == pytest.approx(1.0, abs=1e-4)
    assert group_advantages(keys, returns, scale=False)[:2] == pytest.approx([3.0, -3.0])


def test_normalize():
    out = normalize([1.0, 2.0, 3.0])
    assert sum(out) == pytest.approx(0.0) and out[2] > 0
    assert normalize([4.0, 4.0]) == [0.0, 0.0] and normalize([]) == []


def test_normalize_by_the_whole_batch_a_shard_belongs_to():
    """Data-parallel PPO: each process normalizes its share by the moments summed over all shares,
    which gives exactly the values one process normalizing the whole batch gets."""
    whole = [0.5, -1.0, 2.0, 3.5, -0.25, 1.0]
    shards = [whole[:2], whole[2:]]
    n = sum(len(s) for s in shards)
    moments = (n, sum(sum(s) for s in shards), sum(x * x for s in shards for x in s))
    together = [x for s in shards for x in normalize(s, moments=moments)]
    assert together == pytest.approx(normalize(whole), abs=1e-12)
    assert normalize(shards[0]) != pytest.approx(together[:2])  # alone, a shard normalizes differently
