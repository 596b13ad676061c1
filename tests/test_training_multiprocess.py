"""Data-parallel ``agent train sft|rl`` under ``accelerate launch`` on CPU (gloo), against one process.

Two processes with half the per-device batch see the same global batches as one process (RL: each
rank plays its share of the same episodes), and DDP all-reduces their gradients, so the loss curve
and the trained weights must match the single-process run (to float tolerance) while training moved
the weights by far more than that tolerance.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sftrl.cli import main

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _launch(n: int, mixed_precision: str = "no") -> list[str]:
    # accelerate's own CPU launcher: `--multi_gpu` selects its torchrun path, which on a machine
    # without GPUs runs MULTI_CPU with gloo (`--cpu --num_processes 2` starts ONE process).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n)]
    launch += ["--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]
    return [*launch, "--main_process_port", str(_free_port()), "-m", "sftrl"]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_train_like_one_with_the_same_global_batch(
    tiny_text_model: Path, tmp_path: Path
) -> None:
    runs, data = tmp_path / "expert", tmp_path / "data"
    assert main(["run", "--episodes", "16", "--out", str(runs), "--quiet"]) == 0
    assert main(["data", "sft", str(runs), "--out", str(data), "--val-fraction", "0"]) == 0
    common = ["train", "sft", "--data", str(data), "--model", str(tiny_text_model), "--max-steps", "4"]
    common += ["--lr", "1e-3", "--seed", "0", "--json"]
    one = subprocess.run(
        [sys.executable, "-m", "sftrl", *common, "--out", str(tmp_path / "one"), "--batch-size", "4"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [*_launch(2), *common, "--out", str(tmp_path / "two"), "--batch-size", "2"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    reports = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1 and reports[0]["processes"] == 2  # one rank reports (and writes)
    single = json.loads(one.stdout.strip().splitlines()[-1])
    assert single["processes"] == 1 and reports[0]["tokens"] == single["tokens"]  # same data seen

    curves = [json.loads((tmp_path / d / "loss_curve.json").read_text())["train"] for d in ("one", "two")]
    assert [p["step"] for p in curves[0]] == [p["step"] for p in curves[1]] == [1, 2, 3, 4]
    assert [p["loss"] for p in curves[1]] == pytest.approx([p["loss"] for p in curves[0]], abs=1e-3)
    assert curves[0][-1]["loss"] < curves[0][0]["loss"] - 0.1  # it did learn

    start, w1, w2 = _weights(tiny_text_model), _weights(tmp_path / "one"), _weights(tmp_path / "two")
    moved = max((w1[k] - start[k]).abs().max().item() for k in w1 if k in start)
    apart = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved > 1e-3 and apart < 1e-4, (moved, apart)
    # The gathered state dict (accelerator.get_state_dict) made a complete from_pretrained checkpoint.
    from transformers import AutoModelForCausalLM

    loaded, info = AutoModelForCausalLM.from_pretrained(str(tmp_path / "two"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    params = dict(loaded.named_parameters())
    assert all(params[k].detach().equal(w2[k]) for k in w2 if k in params)


def test_rl_on_two_processes_plays_the_same_episodes_and_trains_like_one(
    tiny_text_model: Path, tmp_path: Path
) -> None:
    # With a KL penalty: the reference model is the initial one, also after the resume.
    common = ["train", "rl", "--model", str(tiny_text_model), "--algo", "grpo", "--kl-coef", "0.5"]
    common += ["--episodes-per-update", "4", "--group-size", "2", "--verify-iter", "1", "--concurrency", "1"]
    common += ["--max-new-tokens", "8", "--ppo-epochs", "1", "--lr", "1e-3", "--json"]
    one_args = [*common, "--out", str(tmp_path / "one"), "--minibatch-size", "4", "--max-steps", "2"]
    one = _run([sys.executable, "-m", "sftrl", *one_args])
    # Two processes, stopped after update 1 and resumed from its checkpoint for update 2.
    two_args = [*common, "--out", str(tmp_path / "two"), "--minibatch-size", "2", "--save-every", "1"]
    _run([*_launch(2), *two_args, "--max-steps", "1"])
    two = _run([*_launch(2), *two_args, "--max-steps", "2", "--resume"])
    assert len([line for line in two.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 reports
    assert json.loads(one.stdout.strip().splitlines()[-1])["update"] == 2

    from sftrl.agents.trajectory import read_episodes

    def seeds(path: Path) -> list[tuple[int, int]]:
        return sorted((r.episode_index, r.seed) for r in read_episodes(path))

    for update in (0, 1):
        solo = seeds(tmp_path / "one" / "rollouts" / f"update-{update:05d}")
        rank0 = seeds(tmp_path / "two" / "rollouts" / f"update-{update:05d}")
        rank1 = seeds(tmp_path / "two" / "rollouts" / f"update-{update:05d}-rank1")
        assert len(rank0) == len(rank1) == 2 and sorted(rank0 + rank1) == solo  # split, not doubled
    rows = [
        [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("one", "two")
    ]
    for key in ("reward", "entropy", "policy_loss", "kl", "transitions", "flops"):
        assert [r[key] for r in rows[1]] == pytest.approx([r[key] for r in rows[0]], rel=1e-4, abs=1e-5), key
    start, w1, w2 = _weights(tiny_text_model), _weights(tmp_path / "one"), _weights(tmp_path / "two")
    moved = max((w1[k] - start[k]).abs().max().item() for k in w1 if k in start)
    apart = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved > 1e-3 and apart < 1e-5, (moved, apart)

    # --fsdp shards the reference model as well; its passes are collectives like the policy's.
    fsdp = [*common, "--out", str(tmp_path / "fsdp"), "--minibatch-size", "2", "--max-steps", "2", "--fsdp"]
    _run([*_launch(2), *fsdp])
    sharded = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert sharded[1]["kl"] > 1e-4
    for key in ("reward", "policy_loss", "kl"):
        assert [r[key] for r in sharded] == pytest.approx([r[key] for r in rows[0]], rel=1e-4, abs=1e-5), key
    w3 = _weights(tmp_path / "fsdp")
    assert max((w1[k] - w3[k]).abs().max().item() for k in w1) < 1e-5


def test_rl_with_fsdp_shards_yet_trains_like_ddp_and_resumes(
    tiny_text_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--fsdp``: torch's FSDP2 over the two gloo processes. PPO (so the value head is sharded too)
    stopped after update 1 and resumed from its gathered checkpoint (full optimizer state, value head)
    matches an uninterrupted DDP run and one process: same losses (PPO's advantages are normalized by
    the whole batch's moments on every rank), same saved weights, a complete checkpoint."""
    common = ["train", "rl", "--model", str(tiny_text_model), "--algo", "ppo"]
    common += ["--episodes-per-update", "4", "--group-size", "2", "--verify-iter", "1", "--concurrency", "1"]
    common += ["--max-new-tokens", "8", "--ppo-epochs", "2", "--lr", "1e-3", "--json"]
    one = [*common, "--out", str(tmp_path / "one"), "--minibatch-size", "4", "--max-steps", "3"]
    _run([sys.executable, "-m", "sftrl", *one])
    common += ["--minibatch-size", "2"]
    _run([*_launch(2), *common, "--out", str(tmp_path / "ddp"), "--max-steps", "3"])
    fsdp = [*common, "--out", str(tmp_path / "fsdp"), "--save-every", "1", "--fsdp"]
    _run([*_launch(2), *fsdp, "--max-steps", "1"])
    proc = _run([*_launch(2), *fsdp, "--max-steps", "3", "--resume"])
    assert "FSDP2-wrapped module" not in proc.stderr  # no output hooks dropped (views)
    rows = {
        d: [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("one", "ddp", "fsdp")
    }
    assert [r["update"] for r in rows["fsdp"]] == [1, 2, 3]
    for run in ("ddp", "fsdp"):
        for key in ("reward", "entropy", "policy_loss", "value_loss", "transitions", "flops"):
            got, want = [r[key] for r in rows[run]], [r[key] for r in rows["one"]]
            assert got == pytest.approx(want, rel=1e-4, abs=1e-5), (run, key)
    start, ddp, sharded = _weights(tiny_text_model), _weights(tmp_path / "ddp"), _weights(tmp_path / "fsdp")
    moved = max((ddp[k] - start[k]).abs().max().item() for k in ddp if k in start)
    apart = max((ddp[k] - sharded[k]).abs().max().item() for k in ddp)
    assert sorted(ddp) == sorted(sharded) and moved > 1e-3 and apart < 1e-4, (moved, apart)
    solo = _weights(tmp_path / "one")
    assert max((solo[k] - sharded[k]).abs().max().item() for k in solo) < 1e-3

    import torch

    # bf16 compute (FSDP2's mixed precision): the learner's bf16-cast weights and the sampling copy's
    # bf16 weights score apart by a bf16-sized gap (fp32: ~1e-7), the masters and what is saved stay
    # fp32 (gathered, not the copy's), and the update goes where fp32's went.
    # With activation checkpointing too (each block recomputed inside FSDP2's gather; exact in fp32:
    # tests/test_training_rl_learner.py).
    bf16 = [
        *common,
        "--out",
        str(tmp_path / "bf16"),
        "--max-steps",
        "3",
        "--fsdp",
        "--gradient-checkpointing",
    ]
    _run([*_launch(2, "bf16"), *bf16])
    bf16_rows = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all(1e-5 < r["logprob_gap"] < 0.05 for r in bf16_rows), bf16_rows
    for key in ("entropy", "value_loss"):  # update 1: the same batch, scored in bf16 vs fp32
        assert bf16_rows[0][key] == pytest.approx(rows["ddp"][0][key], rel=0.01), key
    half = _weights(tmp_path / "bf16")
    assert {v.dtype for v in half.values()} == {torch.float32} and sorted(half) == sorted(ddp)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "float32"
    for rank_dir in ("update-00000", "update-00000-rank1"):  # every process samples with a bf16 copy
        episode = (tmp_path / "bf16" / "rollouts" / rank_dir / "episodes.jsonl").read_text().splitlines()[0]
        assert json.loads(episode)["policy"]["dtype"] == "bfloat16"

    def update(w: dict) -> torch.Tensor:
        return torch.cat([(w[k] - start[k]).flatten() for k in sorted(start) if k in w])

    assert torch.nn.functional.cosine_similarity(update(half), update(ddp), dim=0) > 0.8

    state = torch.load(tmp_path / "fsdp" / "checkpoint-3" / "learner_state.pt", weights_only=True)
    # Gathered in full and keyed by name: the embedding's moments have the embedding's whole shape.
    moments = state["optimizer"]["state"]["policy.model.embed_tokens.weight"]
    assert state["fsdp"] and moments["exp_avg"].shape == start["model.embed_tokens.weight"].shape
    assert state["value_head"]["weight"].abs().sum() > 0
    # Resuming it without --fsdp would mix optimizer formats: refused in one line.
    argv = [a for a in fsdp if a != "--fsdp"]
    assert main([*argv, "--max-steps", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "was saved with --fsdp: resume it with --fsdp" in err and err.count("\n") == 1, err


def test_vlm_rl_on_two_processes_with_ddp_and_with_fsdp(tmp_path: Path) -> None:
    """GP-VL PPO on a tiny LLaVA-style VLM, whose vision tower's final norm no forward reaches: DDP
    runs (it used to stop on the parameter without a gradient), and --fsdp trains exactly like it."""
    vlm = tmp_path / "char-vision"
    assert main(["tiny-model", "--kind", "char-vision", "--out", str(vlm)]) == 0
    common = ["train", "rl", "--env", "gp", "--modality", "vision", "--prompt-style", "compact"]
    common += ["--resolution", "64", "--model", str(vlm), "--max-steps", "2", "--algo", "ppo"]
    common += ["--episodes-per-update", "4", "--concurrency", "2", "--max-new-tokens", "8"]
    common += ["--verify-iter", "1", "--minibatch-size", "2", "--lr", "1e-3", "--no-eval-at-start"]
    for run in ("ddp", "fsdp"):
        _run([*_launch(2), *common, "--out", str(tmp_path / run), *(["--fsdp"] if run == "fsdp" else [])])
    rows = {
        d: [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("ddp", "fsdp")
    }
    for key in ("reward", "entropy", "policy_loss", "value_loss", "logprob_gap"):
        got, want = [r[key] for r in rows["fsdp"]], [r[key] for r in rows["ddp"]]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5), key
    start, ddp, sharded = _weights(vlm), _weights(tmp_path / "ddp"), _weights(tmp_path / "fsdp")
    moved = max((ddp[k] - start[k]).abs().max().item() for k in ddp if k in start)
    apart = max((ddp[k] - sharded[k]).abs().max().item() for k in ddp)
    assert sorted(ddp) == sorted(sharded) and moved > 1e-3 and apart < 1e-4, (moved, apart)


UNEVEN_SCRIPT = """
import json, sys
from pathlib import Path

import torch, transformers
from accelerate import Accelerator

from sftrl.training.rl import Learner, RLConfig
from sftrl.training.transitions import EpisodeBatch, Transition

out, layout, minibatch, agg = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
micro = int(sys.argv[5]) if len(sys.argv) > 5 else None
name = f"{layout}-{minibatch}-{agg}" + (f"-micro{micro}" if micro else "")
acc = Accelerator(cpu=True)
torch.manual_seed(0)
config = transformers.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
model = transformers.LlamaForCausalLM(config)
# --loss-agg token: per-token policy terms weighed by each process's tokens, the value loss by its rows.
rl = RLConfig(algo="ppo", lr=1e-2, minibatch_size=minibatch, ppo_epochs=2, loss_agg=agg,
              ratio="token" if agg == "token" else "sequence", micro_batch_size=micro)
learner = Learner(model, lambda t: {"input_ids": t.prompt[0]["ids"]}, rl, accelerator=acc,
                  fsdp=layout == "fsdp")
# Multi-turn episodes of 3 attempts on even indices, 1 on odd ones: with two processes, rank 0 holds
# 9 transitions and rank 1 holds 3 (and, in mini-batches of 2, 5 steps against 2); replies of 3-6
# tokens give them 30 and 16 tokens, another proportion than their rows'.
episodes, returns = [], []
for e in range(6):
    turns = 3 if e % 2 == 0 else 1
    final = 1.0 if e % 3 == 0 else -1.0
    ep = []
    for k in range(turns):
        prompt = [1 + e, 2, 3] + [4 + k] * (k + 1)
        ep.append(Transition(prompt=[{"role": "user", "content": "x", "ids": prompt}],
                             completion_ids=[5 + e, 6 + k, 7] + [8] * (2 * (e % 2) + e // 4),
                             behaviour_logprobs=None,
                             reward=final if k == turns - 1 else -0.5, done=k == turns - 1,
                             temperature=1.0, run_dir=Path("."), episode_key=f"e{e}",
                             group_key=f"g{e}", index=k))
    episodes.append(ep)
    returns.append(sum(t.reward for t in ep))
rank, world = acc.process_index, acc.num_processes
mine = list(range(rank, 6, world))
batch = EpisodeBatch([episodes[i] for i in mine], [returns[i] for i in mine], [False] * len(mine))
stats = learner.update(batch)
policy = acc.unwrap_model(learner.module).policy
weights = learner.full_policy_state() if layout == "fsdp" else policy.state_dict()
if acc.is_main_process:
    torch.save({k: v.detach().cpu() for k, v in weights.items()}, out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps(stats))
from sftrl.training.tracking import end_processes
end_processes()
"""


def test_rl_ranks_with_different_numbers_of_transitions_train_like_one_process(tmp_path: Path) -> None:
    """Multi-turn episodes give the processes different numbers of transitions (9 and 3 here). Every
    process runs as many passes (idle ones where it has no batch left) and scales its gradient by its
    share of the step's rows, so with one mini-batch per process the update equals one process's on
    all episodes; with uneven mini-batch counts (idle passes) DDP and --fsdp run through alike.
    Under --loss-agg token the policy terms are weighed by tokens instead, which the processes hold
    in another proportion than rows: the update still equals one process's. With --micro-batch-size
    2 the processes run 5 and 2 passes per mini-batch (idle ones on rank 1), accumulate, and still
    take one process's step, under DDP and --fsdp."""
    import torch

    script = tmp_path / "uneven.py"
    script.write_text(UNEVEN_SCRIPT)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    for agg in ("reply", "token"):
        _run([sys.executable, str(script), str(tmp_path), "one", "64", agg])
    runs = [("ddp", "64", "reply"), ("ddp", "64", "token"), ("ddp", "2", "reply"), ("fsdp", "2", "reply")]
    runs += [("ddp", "64", "token", "2"), ("fsdp", "64", "reply", "2")]  # --micro-batch-size 2
    for layout, minibatch, agg, *micro in runs:
        port = ["--main_process_port", str(_free_port())]
        _run([*launch, *port, str(script), str(tmp_path), layout, minibatch, agg, *micro])
    one = torch.load(tmp_path / "one-64-reply.pt")
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    start = transformers.LlamaForCausalLM(config).state_dict()
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    assert moved > 1e-3, moved
    got = torch.load(tmp_path / "ddp-64-reply.pt")
    apart = max((one[k] - got[k]).abs().max().item() for k in one)
    assert apart < 1e-5, (apart, moved)
    one_token, got_token = torch.load(tmp_path / "one-64-token.pt"), torch.load(tmp_path / "ddp-64-token.pt")
    assert max((one_token[k] - one[k]).abs().max().item() for k in one) > 1e-3  # another update
    assert max((one_token[k] - got_token[k]).abs().max().item() for k in one) < 1e-5
    solo, split = (json.loads((tmp_path / f).read_text()) for f in ("one-64-reply.json", "ddp-64-reply.json"))
    for key in ("policy_loss", "value_loss"):  # rank 0's mini-batch, not the whole batch: differs
        assert split[key] != pytest.approx(solo[key], rel=1e-3)
    for layout in ("ddp", "fsdp"):
        uneven = torch.load(tmp_path / f"{layout}-2-reply.pt")
        assert all(torch.isfinite(v).all() for v in uneven.values())
        assert max((uneven[k] - start[k]).abs().max().item() for k in uneven) > 1e-3
        assert json.loads((tmp_path / f"{layout}-2-reply.json").read_text())["transitions"] == 9  # rank 0's
    ddp, fsdp = (torch.load(tmp_path / f"{layout}-2-reply.pt") for layout in ("ddp", "fsdp"))
    assert max((ddp[k] - fsdp[k]).abs().max().item() for k in ddp) < 1e-5  # the same steps, sharded
    # Micro-batches: the same step as one pass per process, whatever the passes each process runs.
    for name, want in (("ddp-64-token-micro2", one_token), ("fsdp-64-reply-micro2", one)):
        micro = torch.load(tmp_path / f"{name}.pt")
        assert max((want[k] - micro[k]).abs().max().item() for k in want) < 1e-5, name


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="on GPUs accelerate really runs FSDP from this config"
)
def test_fsdp_config_on_cpu_is_refused_not_run_as_ddp(tiny_text_model: Path, tmp_path: Path) -> None:
    """accelerate enables FSDP only on GPUs: on CPU the launch is refused in one line per process.

    When the first rank exits, torchrun stops the other, which may not have printed its line yet
    (CI saw one line, not two), so one or two lines are both right."""
    runs, data = tmp_path / "expert", tmp_path / "data"
    assert main(["run", "--episodes", "4", "--out", str(runs), "--quiet"]) == 0
    assert main(["data", "sft", str(runs), "--out", str(data), "--val-fraction", "0"]) == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    launch += [str(REPO / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2"]
    launch += ["--mixed_precision", "no", "--main_process_port", str(_free_port()), "-m", "sftrl"]
    sft = ["train", "sft", "--data", str(data), "--model", str(tiny_text_model), "--max-steps", "1"]
    rl = ["train", "rl", "--model", str(tiny_text_model), "--max-steps", "1", "--episodes-per-update", "2"]
    for name, args in (("sft", sft), ("rl", rl)):
        out = tmp_path / name
        proc = subprocess.run(
            [*launch, *args, "--out", str(out)],
            capture_output=True,
            text=True,
            env=_env(),
            cwd=REPO,
            timeout=300,
        )
        assert proc.returncode != 0, name
        errors = [line for line in proc.stderr.splitlines() if line.startswith("agent: error:")]
        assert 1 <= len(errors) <= 2, proc.stderr[-3000:]  # at most one line from each process
        assert all("asked for FSDP but accelerate runs this process as MULTI_CPU" in e for e in errors)
        assert "sftrl/training/" not in proc.stderr, proc.stderr[-3000:]  # no traceback of ours
        assert not (out / "model.safetensors").exists()


def test_rl_trains_under_accelerates_bf16_mixed_precision(tiny_text_model: Path, tmp_path: Path) -> None:
    # What `accelerate launch --mixed_precision bf16` (and configs/accelerate/*.yaml) sets for every
    # process: rollouts and the learner's scoring both run under bf16 autocast, so the logged and the
    # recomputed log-probs still agree within the tolerance, and the saved weights stay fp32 masters.
    out = tmp_path / "rl"
    cmd = [sys.executable, "-m", "sftrl", "train", "rl", "--model", str(tiny_text_model), "--out", str(out)]
    cmd += ["--algo", "ppo", "--max-steps", "2", "--episodes-per-update", "4", "--group-size", "1"]
    cmd += ["--max-new-tokens", "16", "--lr", "1e-3", "--seed", "0", "--save-every", "2"]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**_env(), "ACCELERATE_MIXED_PRECISION": "bf16"},
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    gaps = [r["logprob_gap"] for r in rows if r["logprob_gap"] is not None]
    # fp32 agrees to ~1e-7: a gap this size shows bf16 ran, and it stays well inside the check
    assert gaps and all(1e-5 < g < 0.05 for g in gaps), gaps
    trained, start = _weights(out), _weights(tiny_text_model)
    assert {t.dtype for t in trained.values()} == {start[next(iter(start))].dtype}
    assert any((trained[k] - start[k]).abs().max() > 1e-4 for k in start if k in trained)
