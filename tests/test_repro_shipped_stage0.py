"""The shipped stage-0 models (GP-L, V-IRL-L, GP-VL): `agent tiny-model --kind stage0|stage0-virl|stage0-gpvl`
copies them,
and they are trained models."""

from __future__ import annotations

import json
from pathlib import Path

from sftrl.agents.metrics import summarize
from sftrl.agents.trajectory import read_episodes
from sftrl.cli import main
from sftrl.repro.pipeline import (
    SHIPPED_STAGE0,
    SHIPPED_STAGE0_GPVL,
    SHIPPED_STAGE0_VIRL,
    SHIPPED_STAGE0_VIRLVL,
)


def test_tiny_model_stage0_copies_the_shipped_model_and_refuses_a_non_empty_dir(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "models" / "stage0"
    assert main(["tiny-model", "--kind", "stage0", "--out", str(out)]) == 0
    shipped = sorted(p.name for p in SHIPPED_STAGE0.iterdir() if p.is_file())
    assert sorted(p.name for p in out.iterdir()) == shipped
    assert (out / "model.safetensors").read_bytes() == (SHIPPED_STAGE0 / "model.safetensors").read_bytes()
    assert "README.md" in shipped  # says how it was built and how to rebuild it
    capsys.readouterr()
    assert main(["tiny-model", "--kind", "stage0", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["tiny-model", "--kind", "stage0", "--out", str(out), "--hidden", "64"]) == 2


def test_the_shipped_stage0_model_solves_held_out_gp_hands_it_never_trained_on(tmp_path: Path) -> None:
    """Greedy, 3 attempts, compact GP-L prompts with target 24 (stage 0 never saw 24): at release it
    solved 17.5% of the 200 held-out ID hands; a broken or untrained copy solves none of these 64."""
    model = tmp_path / "stage0"
    assert main(["tiny-model", "--kind", "stage0", "--out", str(model)]) == 0
    run = tmp_path / "eval"
    argv = ["run", "--env", "gp", "--prompt-style", "compact", "--verify-iter", "3", "--policy", "hf"]
    argv += ["--model", str(model), "--temperature", "0", "--max-new-tokens", "40", "--episodes", "64"]
    argv += ["--seed", "12345", "--concurrency", "64", "--out", str(run), "--quiet"]
    assert main(argv) == 0
    summary = summarize(read_episodes(run))
    assert summary["episodes"] == 64 and summary["errors"] == 0
    assert summary["success_rate"] >= 3 / 64, json.dumps(summary["verdicts"])
    # The answer format is learned: almost no reply is unparseable.
    assert summary["verdicts"].get("illegal_formula", 0) < 0.2 * sum(summary["verdicts"].values())


def test_the_shipped_virl_stage0_model_walks_held_out_routes_it_never_trained_on(tmp_path: Path) -> None:
    """Greedy, 2 attempts per step, compact V-IRL-L prompts with absolute actions, the 30 held-out ID
    routes of `agent repro --experiment virl-l-rule` (the curriculum only used the 70 training routes):
    at release it finished 15 of them; a broken or untrained copy finishes none."""
    from sftrl.repro import experiments

    model = tmp_path / "stage0-virl"
    assert main(["tiny-model", "--kind", "stage0-virl", "--out", str(model)]) == 0
    assert (model / "model.safetensors").read_bytes() == (
        SHIPPED_STAGE0_VIRL / "model.safetensors"
    ).read_bytes()
    exp = experiments.get("virl-l-rule")
    sets, paths, sizes = experiments.make_sets(exp, 30, None, 1234, 100, tmp_path / "pools")
    assert sizes["id_eval"] == 30
    run = tmp_path / "eval"
    argv = ["run", "--env", "virl", "--prompt-style", "compact", "--verify-iter", "2", "--policy", "hf"]
    argv += ["--routes", str(paths["id_eval"]), "--route-draw", "by_index", "--episodes", "30"]
    argv += ["--model", str(model), "--temperature", "0", "--max-new-tokens", "40", "--seed", "12345"]
    argv += ["--concurrency", "30", "--out", str(run), "--quiet"]
    assert main(argv) == 0
    summary = summarize(read_episodes(run))
    assert summary["episodes"] == 30 and summary["errors"] == 0
    assert summary["success_rate"] >= 5 / 30, json.dumps(summary["verdicts"])


def test_the_shipped_gpvl_stage0_model_reads_held_out_red_and_black_hands(tmp_path: Path) -> None:
    """Greedy, 3 attempts, compact GP-VL prompts (card image only) on 40 of `agent repro --experiment
    gp-vl-visual`'s held-out ID multisets, black and red: at release it read 99.6% of the cards in both
    colours and solved 16% / 15% of the 200 hands; an untrained or broken copy reads none."""
    from sftrl.repro import experiments

    model = tmp_path / "stage0-gpvl"
    assert main(["tiny-model", "--kind", "stage0-gpvl", "--out", str(model)]) == 0
    assert (model / "model.safetensors").read_bytes() == (
        SHIPPED_STAGE0_GPVL / "model.safetensors"
    ).read_bytes()
    exp = experiments.get("gp-vl-visual")
    _, paths, _ = experiments.make_sets(exp, 200, None, 1234, 100, tmp_path / "pools")
    for split, pool in (("id", paths["id_eval"]), ("visual-ood", paths["ood_eval"])):
        run = tmp_path / split
        argv = ["run", "--env", "gp", "--modality", "vision", "--resolution", "64", "--split", split]
        argv += ["--prompt-style", "compact", "--verify-iter", "3", "--hand-pool", str(pool)]
        argv += ["--pool-draw", "by_index", "--episodes", "40", "--policy", "hf", "--model", str(model)]
        argv += ["--temperature", "0", "--max-new-tokens", "40", "--seed", "12345", "--concurrency", "40"]
        assert main([*argv, "--out", str(run), "--quiet"]) == 0
        summary = summarize(read_episodes(run))
        assert summary["episodes"] == 40 and summary["errors"] == 0
        assert summary["recognition_accuracy"] >= 0.9, json.dumps(summary["verdicts"])


def test_the_shipped_virlvl_stage0_model_walks_held_out_routes_from_street_views(tmp_path: Path) -> None:
    """Greedy, 2 attempts per step, compact V-IRL-VL prompts (the street-view grid, no observation text),
    the 30 held-out New York routes of `agent repro --experiment virl-vl-visual` (the curriculum only
    used the 70 training routes): at release it finished 15 of them; a third of that is required."""
    from sftrl.repro import experiments

    model = tmp_path / "stage0-virlvl"
    assert main(["tiny-model", "--kind", "stage0-virlvl", "--out", str(model)]) == 0
    assert (model / "model.safetensors").read_bytes() == (
        SHIPPED_STAGE0_VIRLVL / "model.safetensors"
    ).read_bytes()
    exp = experiments.get("virl-vl-visual")
    _, paths = experiments.make_route_sets(exp, 30, 4, 100, tmp_path / "pools")
    run = tmp_path / "eval"
    argv = ["run", "--env", "virl", "--modality", "vision", "--resolution", "32", "--prompt-style"]
    argv += ["compact", "--verify-iter", "2", "--routes", str(paths["id_eval"]), "--route-draw"]
    argv += ["by_index", "--episodes", "30", "--policy", "hf", "--model", str(model), "--temperature"]
    argv += ["0", "--max-new-tokens", "40", "--seed", "12345", "--concurrency", "30"]
    assert main([*argv, "--out", str(run), "--quiet"]) == 0
    summary = summarize(read_episodes(run))
    assert summary["episodes"] == 30 and summary["errors"] == 0
    assert summary["success_rate"] >= 5 / 30, json.dumps(summary["verdicts"])
