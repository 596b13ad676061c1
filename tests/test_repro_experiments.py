"""`agent repro --experiment`: the V-IRL-L, GP-VL and V-IRL-VL settings (disjoint held-out sets, extra
metrics from the logs, the quick pipeline of each), the GP-L ablation arms, and the CLI's refusals."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from sftrl.repro import experiments


def _episodes(root: Path) -> list[dict]:
    return [
        json.loads(x) for f in sorted(root.rglob("episodes.jsonl")) for x in f.read_text().splitlines() if x
    ]


def _route_ids(root: Path) -> set[str]:
    return {t["info"]["route_id"] for e in _episodes(root) for t in e["turns"]}


def _ids_in(path: Path) -> set[str]:
    return {r["route_id"] for r in json.loads(path.read_text())[0]}


@pytest.mark.parametrize("name", ["virl-l-rule", "virl-vl-visual"])
def test_virl_route_files_are_fixed_disjoint_and_read_back_unchanged(tmp_path: Path, name: str) -> None:
    from sftrl.environments.virl.env import VIRLEnv
    from sftrl.environments.virl.routes import route_fingerprint, split_routes

    exp = experiments.get(name)
    sets, paths = experiments.make_route_sets(exp, 6, 6, 16, tmp_path / "a")
    assert (len(sets.train), len(sets.id_eval), len(sets.ood_eval)) == (10, 6, 6)
    routes = {k: json.loads(p.read_text())[0] for k, p in paths.items()}
    prints = {
        k: {route_fingerprint(VIRLEnv(routes=str(paths[k])).routes[i]) for i in range(len(v))}
        for k, v in routes.items()
    }
    # Disjoint by content, not only by id: no held-out route is a training route.
    assert not prints["train"] & prints["id_eval"] and not prints["train"] & prints["ood_eval"]
    assert len(prints["train"]) == 10 and len(prints["id_eval"]) == 6
    assert experiments.make_route_sets(exp, 6, 6, 16, tmp_path / "b")[0] == sets  # fixed
    # The file is the split's own route: the same prompt as the split env shows for it.
    ood_split = "rule-ood" if name == "virl-l-rule" else "visual-ood"
    modality = {"modality": "vision", "resolution": 32} if exp.modality == "vision" else {}
    split_env = VIRLEnv(split=ood_split, prompt_style="compact", num_routes=6, **modality)
    file_env = VIRLEnv(split=ood_split, prompt_style="compact", routes=str(paths["ood_eval"]), **modality)
    assert [r.route_id for r in split_routes(split_env.config.city or "", ood_split, 0, 6)] == list(
        sets.ood_eval
    )
    for i in range(6):
        a = split_env.reset(seed=i, options={"route_index": i})[0]
        b = file_env.reset(seed=i, options={"route_index": i})[0]
        assert a.text == b.text
    with pytest.raises(ValueError, match="fewer than"):
        experiments.make_route_sets(exp, 16, 6, 16, tmp_path / "c")


def test_gp_vl_pools_keep_training_hands_off_both_eval_sets(tmp_path: Path) -> None:
    pools, paths, sizes = experiments.make_sets(
        experiments.get("gp-vl-visual"), 200, None, 1234, 100, tmp_path
    )
    assert sizes == {"id_eval": 200, "ood_eval": 200}
    assert pools.ood_eval == pools.id_eval and not set(pools.train) & set(pools.id_eval)
    opts = experiments.env_options(experiments.get("gp-vl-visual"), 3, paths["ood_eval"], "visual-ood", True)
    assert opts["modality"] == "vision" and opts["resolution"] == 64 and opts["split"] == "visual-ood"


def test_a_text_stage0_seeds_the_vision_models_decoder(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, LlamaForCausalLM

    from sftrl.agents.tiny import build_char_model

    text = build_char_model(tmp_path / "text", seed=3, hidden=32, layers=1, heads=1)
    exp = experiments.get("gp-vl-visual")
    assert experiments.stage0_problem(exp, text) is None
    assert experiments.stage0_problem(exp, tmp_path) == "not a model directory (no config.json)"
    vlm = experiments.prepare_stage0(exp, text, tmp_path / "out", {"hidden": 32, "layers": 1, "heads": 1})
    assert json.loads((vlm / "config.json").read_text())["model_type"] == "llava"
    assert experiments.stage0_problem(experiments.get("virl-l-rule"), vlm) is not None  # llava for text: no
    a = LlamaForCausalLM.from_pretrained(text).model.layers[0].mlp.up_proj.weight
    b = AutoModelForImageTextToText.from_pretrained(vlm).model.language_model.layers[0].mlp.up_proj.weight
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--experiment", "virl-vl-visual", "--stage0", "."], "not a model directory"),
        (["--modality", "vision", "--stage0", "."], "not a model directory"),
        (["--experiment", "virl-vl-visual", "--stage0-only"], "it needs --from-scratch"),
        (["--experiment", "all", "--stage0", "."], "not a model directory"),  # checked before any run
        (["--experiment", "gp-l"], "unknown; choose from gp-l-rule"),
        (["--modality", "vision", "--experiment", "virl-l-rule"], "means --experiment gp-vl-visual"),
        (["--quick", "--ablations", "rl-verify2"], "--ablations rl-verify2: unknown"),
        (["--quick", "--experiment", "virl-l-rule", "--stage0", "."], "not a model directory"),
    ],
)
def test_repro_refuses_what_it_cannot_run_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from sftrl.cli import main

    assert main(["repro", "--out", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before anything ran


def _rerun(commands: str, job: str, out: Path, again: Path) -> list[dict]:
    """Run a job's command from commands.md by hand into ``again``; return its evaluations."""
    from sftrl.cli import main

    arm = job.rsplit("-", 1)[0]
    block = commands.split(f"## {job}\n\n```bash\n")[1].split("\n```")[0]
    argv = shlex.split(block.replace(str(out / "seed0" / arm), str(again)))
    assert argv[0] == "agent" and main(argv[1:]) == 0
    return [json.loads(x) for x in (again / "eval.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["virl-l-rule", "gp-vl-visual", "virl-vl-visual"])
def test_agent_repro_quick_runs_each_new_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    from sftrl.cli import main

    exp = experiments.get(name)
    out = tmp_path / "repro"
    assert main(["repro", "--quick", "--experiment", name, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["rows"]) == {"stage0", "warmstart", "sft", "ppo", "grpo"}
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"] == name and set(results["paired"]) >= {"ppo-sft/ood", "grpo-sft/ood"}
    (metric,) = exp.extra_metrics
    for arm in ("sft", "ppo", "grpo"):
        curve = results["curves"][arm][0]
        assert curve[0]["flops"] == 0.0 and len(curve) >= 2
        assert results["config"]["stage2_flops"] <= curve[-1]["flops"]
        evals = [json.loads(x) for x in (out / "seed0" / arm / "eval.jsonl").read_text().splitlines()]
        for split in ("id", "ood"):
            # The extra metric is the one `agent eval` recomputes from the evaluation's own log.
            assert main(["eval", evals[-1][split]["out"], "--json"]) == 0
            again = json.loads(capsys.readouterr().out)
            assert again[metric] == pytest.approx(curve[-1][f"{split}_{metric}"])
            assert again["success_rate"] == pytest.approx(curve[-1][split])
            episodes = _episodes(Path(evals[-1][split]["out"]))
            want = "id" if split == "id" else exp.ood_split
            assert {e["env_config"]["split"] for e in episodes} == {want}
            assert {e["env_config"]["modality"] for e in episodes} == {exp.modality}
    assert f"OOD {experiments_metric_label(metric)}" in (out / "results.md").read_text()
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if exp.env == "virl":
        pools = out / "pools"
        train, id_eval, ood = (_ids_in(pools / f) for f in experiments.VIRL_ROUTE_FILES.values())
        # Training (expert data, RL rollouts) saw only training routes; evaluations only held-out ones.
        assert _route_ids(out / "runs" / "expert") <= train
        assert _route_ids(out / "seed0" / "ppo" / "rollouts") <= train
        assert _route_ids(out / "stage0-eval" / "eval") | _route_ids(out / "seed0" / "sft" / "eval") <= (
            id_eval | ood
        )
        assert not train & (id_eval | ood)
    if exp.env == "virl" and exp.modality == "vision":
        _check_evaluations_read_views_through_the_run_cache(out, commands=(out / "commands.md").read_text())
        _check_landmark_recognition_of_every_checkpoint(out, capsys)
    # The job's printed command reproduces its evaluations (pools / route files, split, modality flags).
    commands = (out / "commands.md").read_text()
    mine = _rerun(commands, "grpo-0", out, tmp_path / "again")
    theirs = [json.loads(x) for x in (out / "seed0" / "grpo" / "eval.jsonl").read_text().splitlines()]
    for a, b in zip(mine, theirs, strict=True):
        assert a["flops"] == b["flops"]
        for split in ("id", "ood"):
            assert a[split]["success_rate"] == b[split]["success_rate"]
            assert a[split][metric] == b[split][metric]


def _check_evaluations_read_views_through_the_run_cache(out: Path, commands: str) -> None:
    """V-IRL-VL evaluations read street views through ``out/street-view-cache``: it holds the views
    every evaluation drew, and the sft arm's last evaluation run without the cache (views drawn anew)
    plays the very same episodes."""
    from sftrl.cli import main
    from sftrl.street_view.cache import CachedProvider

    cache = out / "street-view-cache"
    assert len(CachedProvider(inner="synthetic", cache_dir=cache)) > 0
    line = next(x for x in commands.splitlines() if x.startswith("agent run") and "--split visual-ood" in x)
    assert f"--street-view cache --cache-dir {cache}" in line
    uncached = out.parent / "uncached"
    argv = shlex.split(
        line.replace(f" --street-view cache --cache-dir {cache}", "")
        .replace("--model M ", f"--model {out / 'seed0' / 'sft'} ")
        .replace("--out M-eval/ood", f"--out {uncached}")
    )
    assert main(argv[1:]) == 0
    evals = [json.loads(x) for x in (out / "seed0" / "sft" / "eval.jsonl").read_text().splitlines()]
    cached = _episodes(Path(evals[-1]["ood"]["out"]))
    fresh = _episodes(uncached)
    assert {e["env_config"]["street_view"] for e in cached} == {"cache"}
    assert {e["env_config"]["street_view"] for e in fresh} == {"synthetic"}
    replies = [
        [[t["reply"]["text"] for t in e["turns"]] for e in sorted(r, key=lambda e: e["episode_index"])]
        for r in (cached, fresh)
    ]
    assert replies[0] == replies[1] and len(replies[0]) == len(cached)


def _check_landmark_recognition_of_every_checkpoint(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m sftrl.repro.recognition RUN`` reads the street views with every kept checkpoint; its
    numbers are the read runs' own summaries (``agent eval`` recomputes them from the logs)."""
    from sftrl.cli import main
    from sftrl.repro import recognition

    assert recognition.main([str(out)]) == 0
    assert "| ppo − sft | landmark |" in capsys.readouterr().out  # the table it wrote, printed
    result = json.loads((out / "recognition" / "recognition.json").read_text())
    assert list(result["checkpoints"]) == ["stage0", "warmstart", "sft", "ppo", "grpo"]
    assert set(result["paired"]) == {
        f"{a}-{b}/{s}/{k}"
        for a, b in recognition.COMPARISONS
        for s in ("id", "ood")
        for k in ("all", "landmark")
    }
    assert "| ppo − sft |" in (out / "recognition" / "recognition.md").read_text()
    for tag, arm in (("stage0", "stage0"), ("ppo-0", "ppo")):
        for split in ("id", "ood"):
            run_dir = out / "recognition" / tag / "eval" / "step-000000" / split
            assert main(["eval", str(run_dir), "--json"]) == 0
            summary = json.loads(capsys.readouterr().out)
            assert {e["env_config"]["task"] for e in _episodes(run_dir)} == {"read"}
            row = result["checkpoints"][arm]
            assert summary["recognition_accuracy"] == pytest.approx(row[f"{split}_all"])
            marks = summary.get("landmark_recognition_accuracy")
            assert marks is None or marks == pytest.approx(row[f"{split}_landmark"])


def experiments_metric_label(metric: str) -> str:
    from sftrl.repro.pipeline import METRIC_NAMES

    return METRIC_NAMES[metric]


@pytest.mark.slow
def test_agent_repro_quick_gp_l_with_both_ablations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sftrl.cli import main

    out = tmp_path / "repro"
    argv = ["repro", "--quick", "--ablations", "rl-no-sft,rl-verify1", "--out", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["rows"]) == {"stage0", "warmstart", "sft", "ppo", "grpo", "rl-no-sft", "rl-verify1"}
    results = json.loads((out / "results.json").read_text())
    for key in ("rl-no-sft-ppo/ood", "rl-verify1-ppo/ood", "rl-no-sft-ppo/ood_unseen"):
        assert key in results["paired"]
    # rl-no-sft starts from stage 0 (its x = 0 is the stage-0 evaluation), the others from the warm start.
    assert results["curves"]["rl-no-sft"][0][0]["ood"] == results["rows"]["stage0"]["ood"]
    assert results["curves"]["rl-verify1"][0][0]["ood"] == results["rows"]["warmstart"]["ood"]
    commands = (out / "commands.md").read_text()
    no_sft = commands.split("## rl-no-sft-0\n\n```bash\n")[1].split("\n```")[0]
    verify1 = commands.split("## rl-verify1-0\n\n```bash\n")[1].split("\n```")[0]
    ppo = commands.split("## ppo-0\n\n```bash\n")[1].split("\n```")[0]
    assert f"--model {out / 'stage0'} " in no_sft and f"--model {out / 'warmstart'} " in ppo
    # Only the training env changes for rl-verify1: the evaluation specs (3 attempts) are every arm's.
    assert "--verify-iter 1" in verify1 and "--verify-iter 3" in ppo
    evals_of = {c: [p for p in shlex.split(c) if p.startswith("id=gp:")] for c in (ppo, verify1, no_sft)}
    assert len({tuple(v) for v in evals_of.values()}) == 1
    table = (out / "results.md").read_text()
    assert "| ablation: PPO from stage 0 (no SFT) |" in table and "| rl-verify1 − ppo |" in table
    rollouts = _episodes(out / "seed0" / "rl-verify1" / "rollouts")
    assert rollouts and all(len(e["turns"]) == 1 for e in rollouts)  # one attempt per training episode


def test_modality_is_an_alias_and_all_runs_every_setting() -> None:
    from sftrl.repro.command import _experiments

    assert _experiments(None, None) == ["gp-l-rule"] == _experiments(None, "language")
    assert _experiments("gp-vl-visual", "vision") == ["gp-vl-visual"]
    assert _experiments("all", None) == ["gp-l-rule", "virl-l-rule", "gp-vl-visual", "virl-vl-visual"]
