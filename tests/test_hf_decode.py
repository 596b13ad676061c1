"""The hf policy's KV-cached decoding: prefix reuse across turns gives the replies of a full prefill,
stale states are never read after a weight change, and the store stays inside its byte bound."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from sftrl.agents.hf_decode import PrefixStore, supports_fast_decode
from sftrl.agents.hf_policy import HFPolicy, HFPolicyError
from sftrl.agents.runner import run_async, split_config
from sftrl.agents.trajectory import read_episodes
from sftrl.cli import main
from sftrl.repro.pipeline import SHIPPED_STAGE0
from sftrl.training.rl import Learner, RLConfig
from sftrl.training.transitions import load_episodes


def _episodes(
    out: Path, policy: HFPolicy, n: int = 24, **env: Any
) -> list[list[tuple[list[int], list[float]]]]:
    values = {
        "env": "gp",
        "prompt_style": "compact",
        "verify_iter": 3,
        "episodes": n,
        "concurrency": n,
        "out": out,
        "seed": 3,
        "sampling": {"temperature": 1.0, "max_new_tokens": 40, "logprobs": True, "seed": 11},
        **env,
    }
    run, env_cfg = split_config(values)
    summary = asyncio.run(run_async(run, env_cfg, policy=policy))
    assert summary["errors"] == 0
    records = sorted(read_episodes(out), key=lambda r: r.episode_index)
    return [[(t.reply.token_ids, t.reply.logprobs or []) for t in r.turns] for r in records]


def _same(a: list[Any], b: list[Any], tol: float = 1e-4) -> None:
    assert [[t for t, _ in ep] for ep in a] == [[t for t, _ in ep] for ep in b]
    for ep_a, ep_b in zip(a, b, strict=True):
        for (_, lp_a), (_, lp_b) in zip(ep_a, ep_b, strict=True):
            assert max((abs(x - y) for x, y in zip(lp_a, lp_b, strict=True)), default=0.0) < tol


@pytest.fixture(scope="module")
def stage0() -> HFPolicy:
    return HFPolicy(SHIPPED_STAGE0, max_batch_size=64)


def test_revision_turns_reuse_the_previous_turn_and_reply_exactly_as_a_full_prefill(
    tmp_path: Path, stage0: HFPolicy
) -> None:
    assert stage0.fast_decode and stage0.prefix_store is not None
    cached = _episodes(tmp_path / "cached", stage0)
    assert sum(len(ep) for ep in cached) > len(cached)  # revisions happened ...
    assert stage0.prefix_store.hits > 0 and stage0.prefix_store.reused_tokens > 0  # ... and reused states

    no_store = HFPolicy.from_model(stage0.model, stage0.tokenizer, max_batch_size=64, prefix_cache_mb=0)
    assert no_store.prefix_store is None
    _same(cached, _episodes(tmp_path / "full", no_store))

    # transformers' own generate (the path for models the loop does not serve) agrees too.
    reference = HFPolicy.from_model(stage0.model, stage0.tokenizer, max_batch_size=64)
    reference.fast_decode = False
    _same(cached, _episodes(tmp_path / "generate", reference))

    # ... and the learner recomputes the logged log-probs of the reused-prefix turns.
    batch = load_episodes([tmp_path / "cached"])
    learner = Learner(stage0.model, stage0.encode_transition, RLConfig(algo="grpo"))
    assert learner.check_consistency(batch.transitions) < 1e-3


def test_states_computed_with_old_weights_are_never_reused(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(SHIPPED_STAGE0)
    tok = AutoTokenizer.from_pretrained(SHIPPED_STAGE0)
    live = HFPolicy.from_model(model, tok, max_batch_size=16)
    _episodes(tmp_path / "before", live, n=16)
    assert live.prefix_store is not None and live.prefix_store.entries  # states of these weights kept
    with torch.no_grad():  # what an optimizer step does: parameters change in place
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    after = _episodes(tmp_path / "after", live, n=16)
    fresh = HFPolicy.from_model(copy.deepcopy(model), tok, max_batch_size=16, prefix_cache_mb=0)
    _same(after, _episodes(tmp_path / "fresh", fresh, n=16))


def test_the_store_keeps_the_newest_states_within_its_byte_bound() -> None:
    def states(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(2, n, 4), torch.zeros(2, n, 4))]  # 2 * 2*n*4 floats = 64*n bytes

    store = PrefixStore(max_bytes=64 * 10)
    store.put([1, 2, 3], states(3))
    store.put([1, 2, 3, 4, 5], states(5))
    n, entry = store.longest_prefix([1, 2, 3, 4, 5, 6])
    assert n == 5 and entry is not None
    assert store.longest_prefix([1, 2, 3, 4, 5]) == (3, store.entries[(1, 2, 3)])  # a proper prefix only
    assert store.longest_prefix([9, 2, 3, 4]) == (0, None)
    store.put([7, 8, 9, 10], states(4))  # 12 positions > 10: the least recently used goes
    assert store.bytes <= store.max_bytes
    assert (7, 8, 9, 10) in store.entries and (1, 2, 3, 4, 5) not in store.entries
    store.put(list(range(11)), states(11))  # larger than the whole store: not kept
    assert tuple(range(11)) not in store.entries
    store.check_weights(1)
    assert not store.entries and store.bytes == 0


def test_llava_uses_the_loop_with_images_and_qwen2_vl_keeps_generate(
    tmp_path: Path, tiny_vision_model: Path
) -> None:
    out = tmp_path / "char-vision"
    assert main(["tiny-model", "--kind", "char-vision", "--out", str(out)]) == 0
    vlm = HFPolicy(out, max_batch_size=8)
    assert vlm.fast_decode
    env = {"modality": "vision", "resolution": 64}
    cached = _episodes(tmp_path / "vlm-cached", vlm, n=8, **env)
    reference = HFPolicy.from_model(vlm.model, vlm.processor, max_batch_size=8)
    reference.fast_decode = False
    _same(cached, _episodes(tmp_path / "vlm-generate", reference, n=8, **env))
    assert not supports_fast_decode(HFPolicy(tiny_vision_model).model)  # multimodal RoPE


def test_a_negative_prefix_cache_bound_is_a_clear_error() -> None:
    with pytest.raises(HFPolicyError, match="prefix_cache_mb"):
        HFPolicy(SHIPPED_STAGE0, prefix_cache_mb=-1)
