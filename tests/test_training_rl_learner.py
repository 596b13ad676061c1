"""The RL learner on a real (tiny, random) transformers model: consistency checks and learning signal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
import transformers

from sftrl.training.rl import Learner, LogprobMismatchError, RLConfig
from sftrl.training.transitions import EpisodeBatch, Transition

PROMPT = [5, 6, 7, 8]
GOOD, BAD = [10, 11, 12], [20, 21, 22]


@pytest.fixture
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    m = transformers.LlamaForCausalLM(cfg)
    m.eval()
    return m


def encode(t: Transition) -> dict:
    return {"input_ids": list(t.prompt[0]["ids"])}


def make(completion, reward, key, group, learner=None, temperature=1.0) -> Transition:
    t = Transition(
        prompt=[{"role": "user", "content": "x", "ids": PROMPT}],
        completion_ids=list(completion),
        behaviour_logprobs=None,
        reward=reward,
        done=True,
        temperature=temperature,
        run_dir=Path("."),
        episode_key=key,
        group_key=group,
        index=0,
    )
    if learner is not None:
        with torch.no_grad():
            s = learner.score([t], with_values=False)
        t.behaviour_logprobs = s.logprobs[0, : len(completion)].tolist()
    return t


def seq_logprob(learner, completion) -> float:
    with torch.no_grad():
        s = learner.score([make(completion, 0.0, "k", "g")], with_values=False)
    return float(s.logprobs[0].sum())


def batch_of(learner, n=4) -> EpisodeBatch:
    eps = []
    for i in range(n):
        eps.append([make(GOOD, 1.0, f"g{i}", f"s{i}", learner)])
        eps.append([make(BAD, -1.0, f"b{i}", f"s{i}", learner)])
    return EpisodeBatch(
        episodes=eps, returns=[e[0].reward for e in eps], successes=[e[0].reward > 0 for e in eps]
    )


def test_scoring_matches_a_plain_forward_pass(model):
    learner = Learner(model, encode, RLConfig(algo="grpo"))
    t = make(GOOD, 1.0, "k", "g", temperature=0.7)
    with torch.no_grad():
        s = learner.score([t], with_values=False)
        logits = model(torch.tensor([PROMPT + GOOD])).logits[0].float() / 0.7
    lp = torch.log_softmax(logits, -1)
    want = [float(lp[len(PROMPT) - 1 + j, tok]) for j, tok in enumerate(GOOD)]
    assert s.logprobs[0].tolist() == pytest.approx(want, abs=1e-5)


def test_padding_does_not_change_scores(model):
    learner = Learner(model, encode, RLConfig(algo="grpo"))
    short, long_ = make([10], 0.0, "a", "g"), make([10, 11, 12, 13, 14], 0.0, "b", "g")
    with torch.no_grad():
        alone = learner.score([short], with_values=False).logprobs[0, :1]
        batched = learner.score([short, long_], with_values=False)
    assert batched.logprobs[0, :1].tolist() == pytest.approx(alone.tolist(), abs=1e-5)
    assert batched.mask[0].tolist() == [1, 0, 0, 0, 0]


def test_consistency_check_accepts_own_rollouts_and_refuses_others(model):
    learner = Learner(model, encode, RLConfig(algo="grpo", logprob_tolerance=1e-3))
    own = batch_of(learner).transitions
    assert learner.check_consistency(own) < 1e-4
    for t in own:
        t.behaviour_logprobs = [x - 0.5 for x in t.behaviour_logprobs]
    with pytest.raises(LogprobMismatchError, match="nats/token"):
        learner.check_consistency(own)


@pytest.mark.parametrize(
    ("algo", "ratio", "order"),
    [
        ("ppo", "sequence", "random"),
        ("ppo", "token", "random"),
        ("grpo", "sequence", "random"),
        ("grpo-token", "sequence", "random"),
        ("ppo", "sequence", "length"),
        ("grpo", "sequence", "length"),
    ],
)
def test_updates_move_probability_towards_rewarded_replies(model, algo, ratio, order):
    algo, _, loss_agg = algo.partition("-")
    learner = Learner(
        model,
        encode,
        RLConfig(
            algo=algo,
            loss_agg=loss_agg or "reply",
            lr=3e-3,
            ppo_epochs=2,
            minibatch_size=4,
            ent_coef=0.0,
            ratio=ratio,
            minibatch_order=order,
        ),
    )
    before = seq_logprob(learner, GOOD) - seq_logprob(learner, BAD)
    for _ in range(4):
        stats = learner.update(batch_of(learner))
        assert all(v == v and abs(v) < 1e6 for v in stats.values())  # finite
    after = seq_logprob(learner, GOOD) - seq_logprob(learner, BAD)
    assert after > before + 1.0
    assert learner.updates == 4
    if algo == "ppo":
        assert stats["value_loss"] > 0


def test_token_ratios_clip_tokens_where_reply_ratios_clip_whole_replies(model):
    """One reply's log-prob moves by the sum of its tokens' moves: a per-reply ratio leaves the clip
    range long before its tokens' ratios do, so the reply-level clip fraction is the larger one."""
    fractions = {}
    for ratio in ("sequence", "token"):
        m = type(model)(model.config)
        m.load_state_dict(model.state_dict())
        learner = Learner(
            m, encode, RLConfig(algo="ppo", lr=1e-4, ppo_epochs=4, minibatch_size=2, ratio=ratio)
        )
        fractions[ratio] = learner.update(batch_of(learner))["clip_fraction"]
    assert fractions["sequence"] > 1.5 * fractions["token"] > 0


@pytest.mark.parametrize(("loss_agg", "want"), [("reply", 0.0), ("token", 0.5)])
def test_loss_agg_weighs_each_reply_or_each_token_alike(model, loss_agg, want):
    """A rewarded 1-token reply and an unrewarded 3-token one (GRPO advantages +1, -1; ratios 1 at
    the first step): averaged per reply the two cancel, averaged per token the long one counts 3x."""
    learner = Learner(model, encode, RLConfig(algo="grpo", ppo_epochs=1, minibatch_size=8, loss_agg=loss_agg))
    eps = [[make([10], 1.0, "a", "g", learner)], [make([20, 21, 22], 0.0, "b", "g", learner)]]
    batch = EpisodeBatch(episodes=eps, returns=[1.0, 0.0], successes=[True, False])
    assert learner.update(batch)["policy_loss"] == pytest.approx(want, abs=1e-4)


def test_token_loss_agg_needs_token_level_ratios():
    with pytest.raises(ValueError, match="--loss-agg token .* --ratio token"):
        RLConfig(algo="ppo", ratio="sequence", loss_agg="token")
    assert RLConfig(algo="ppo", ratio="token", loss_agg="token").loss_agg == "token"


def test_grpo_kl_to_reference_is_reported(model):
    import copy

    ref = copy.deepcopy(model)
    learner = Learner(model, encode, RLConfig(algo="grpo", lr=3e-3, kl_coef=0.1), ref_model=ref)
    learner.update(batch_of(learner))
    stats = learner.update(batch_of(learner))
    assert stats["kl"] > 0


def test_state_round_trip(model, tmp_path):
    learner = Learner(model, encode, RLConfig(algo="ppo", lr=1e-3))
    learner.update(batch_of(learner, 2))
    learner.save_state(tmp_path / "state.pt")
    other = Learner(model, encode, RLConfig(algo="ppo", lr=1e-3))
    other.load_state(tmp_path / "state.pt")
    assert other.updates == 1
    w1 = learner.value_head.state_dict()["weight"]
    assert torch.equal(other.value_head.state_dict()["weight"], w1)


def test_the_value_head_starts_from_the_seed_not_from_torchs_global_rng(model):
    # `agent repro` workers run several jobs per process: a PPO job must start the same whatever
    # the jobs before it drew from torch's global generator.
    torch.manual_seed(1)
    a = Learner(model, encode, RLConfig(algo="ppo", seed=3)).value_head.weight.detach().clone()
    torch.randn(1000)
    b = Learner(model, encode, RLConfig(algo="ppo", seed=3)).value_head.weight.detach().clone()
    c = Learner(model, encode, RLConfig(algo="ppo", seed=4)).value_head.weight.detach().clone()
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("order", ["random", "length"])
def test_every_transition_is_trained_once_per_epoch_in_either_minibatch_order(model, order):
    learner = Learner(
        model, encode, RLConfig(algo="ppo", lr=1e-3, ppo_epochs=3, minibatch_size=3, minibatch_order=order)
    )
    eps = [[make([10 + j for j in range(n)], float(n % 2), f"e{n}", f"g{n}", learner)] for n in range(1, 12)]
    batch = EpisodeBatch(episodes=eps, returns=[e[0].reward for e in eps], successes=[False] * len(eps))
    stats = learner.update(batch)
    real = sum(len(PROMPT) + len(e[0].completion_ids) for e in eps)
    assert stats["tokens_trained"] == 3 * real  # each transition once per epoch, padding not counted
    assert stats["tokens_scored"] == real  # the value pass (PPO), one forward over each transition


@pytest.mark.parametrize(
    ("algo", "ratio", "agg"),
    [
        ("ppo", "sequence", "reply"),
        ("ppo", "token", "token"),
        ("grpo", "sequence", "reply"),
        ("grpo", "sequence", "token"),
    ],
)
def test_micro_batches_bound_each_pass_and_accumulate_the_same_update(model, algo, ratio, agg):
    """``--micro-batch-size 3``: no forward with gradients holds more than 3 transitions, and the
    accumulated mini-batch gradients give the update of whole mini-batches (replies of 1-6 tokens,
    so averaging over replies and over tokens weigh the passes differently)."""
    import copy

    def learner_with(micro):
        rl = RLConfig(algo=algo, ratio=ratio, loss_agg=agg, lr=1e-2, ppo_epochs=2, minibatch_size=8)
        return Learner(copy.deepcopy(model), encode, rl.model_copy(update={"micro_batch_size": micro}))

    whole, micro = learner_with(None), learner_with(3)
    eps = [
        [make([10 + i % 7] * (1 + i % 6), 1.0 if i % 3 == 0 else -1.0, f"e{i}", f"g{i // 2}", whole)]
        for i in range(12)
    ]
    batch = EpisodeBatch(
        episodes=eps, returns=[e[0].reward for e in eps], successes=[e[0].reward > 0 for e in eps]
    )
    rows: dict[str, list[int]] = {"whole": [], "micro": []}  # transitions per forward with gradients
    stats = {}
    for name, learner in (("whole", whole), ("micro", micro)):

        def count(_module, _args, kwargs, _rows=rows[name]):
            if torch.is_grad_enabled():
                _rows.append(kwargs["input_ids"].shape[0])

        learner.model.register_forward_pre_hook(count, with_kwargs=True)
        stats[name] = learner.update(batch)
    assert max(rows["whole"]) == 8 and max(rows["micro"]) == 3
    assert sum(rows["micro"]) == sum(rows["whole"]) == 2 * 12  # every transition, once per epoch
    for key, value in stats["whole"].items():
        assert stats["micro"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    a, b = whole.model.state_dict(), micro.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert max((a[k] - model.state_dict()[k]).abs().max().item() for k in a) > 1e-3  # it trained


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_update_checks_logged_logprobs_before_any_step(model, algo):
    learner = Learner(model, encode, RLConfig(algo=algo, lr=1e-2, logprob_tolerance=1e-3))
    stats = learner.update(batch_of(learner), check=True)
    assert stats["logprob_gap"] < 1e-4
    bad = batch_of(learner)
    for t in bad.transitions:
        t.behaviour_logprobs = [x - 0.5 for x in t.behaviour_logprobs]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LogprobMismatchError, match="nats/token"):
        learner.update(bad, check=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert learner.updates == 1


def test_gradient_checkpointing_recomputes_each_block_and_trains_the_same(
    tiny_text_model: Path, tmp_path: Path
) -> None:
    """``agent train rl --gradient-checkpointing``: every block's forward with gradients runs again in
    backward (its activations were not kept), and the update is the same as without it."""
    from safetensors.torch import load_file

    from sftrl.agents.factory import make_trainable_policy
    from sftrl.training.rl_train import RLRunConfig, read_metrics, train_rl

    runs = {}
    for on in (False, True):
        policy = make_trainable_policy(str(tiny_text_model))
        passes: list[bool] = []  # one entry per forward of the first block's MLP: with gradients or not
        mlp = policy.model.model.layers[0].mlp
        forward = mlp.forward

        def counted(*args, _forward=forward, _passes=passes, **kwargs):
            _passes.append(torch.is_grad_enabled())
            return _forward(*args, **kwargs)

        mlp.forward = counted  # not a hook: the recompute in backward skips module hooks
        out = tmp_path / f"checkpointing-{on}"
        cfg = RLRunConfig(
            model=str(tiny_text_model),
            out=out,
            updates=2,
            episodes_per_update=4,
            group_size=2,
            max_new_tokens=8,
            gradient_checkpointing=on,
            rl=RLConfig(algo="ppo", minibatch_size=2, lr=1e-3),
        )
        train_rl(cfg, policy=policy)
        runs[on] = (passes, read_metrics(out), load_file(str(out / "model.safetensors")))
    (plain, rows, weights), (recomputed, rows_ckpt, weights_ckpt) = runs[False], runs[True]
    assert sum(plain) > 0 and sum(recomputed) == 2 * sum(plain)
    assert len(recomputed) - sum(recomputed) == len(plain) - sum(plain)  # sampling, scoring: no grad
    for key in ("reward", "policy_loss", "value_loss", "entropy"):
        assert [r[key] for r in rows_ckpt] == pytest.approx([r[key] for r in rows], abs=1e-6), key
    assert max((weights[k] - weights_ckpt[k]).abs().max().item() for k in weights) < 1e-6


def test_lora_grpo_scores_its_kl_against_the_base_model_without_a_copy(model):
    """GRPO's KL reference for a LoRA policy is the base model: the learner turns the adapters off
    instead of holding a frozen copy, and the update is the one a copy of the base would give."""
    import copy

    from peft import get_peft_model

    from sftrl.training.lora import lora_config

    base = copy.deepcopy(model)

    def lora_learner(ref_model):
        torch.manual_seed(0)  # peft draws lora_A from torch's global generator
        peft_model = get_peft_model(copy.deepcopy(model), lora_config(4, None, ["all-linear"]))
        gen = torch.Generator().manual_seed(0)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # adapters that already moved the policy away from the base
                torch.nn.init.normal_(p, std=0.5, generator=gen)
        rl = RLConfig(algo="grpo", kl_coef=0.5, lr=1e-2, minibatch_size=4)
        return Learner(peft_model, encode, rl, ref_model=ref_model)

    without_copy, with_copy = lora_learner(None), lora_learner(base)
    for _ in range(2):
        got, want = without_copy.update(batch_of(without_copy)), with_copy.update(batch_of(with_copy))
        assert got["kl"] > 1e-4 and got["kl"] == pytest.approx(want["kl"], abs=1e-7)
    trained = dict(without_copy.model.named_parameters())
    for name, p in with_copy.model.named_parameters():
        assert torch.equal(trained[name], p), name
