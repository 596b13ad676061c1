"""Landmark recognition of a finished V-IRL-VL ``agent repro`` run: the env's ``read`` task per checkpoint.

The paper reports, beside V-IRL-VL's success, whether the model still recognises landmarks. Here the
env's ``read`` task (:mod:`sftrl.environments.virl.env`, vision + compact + rail) asks at each of the
expert's rail points what the grid shows (``Bon Chon Chicken F``, ``none, intersection``), one attempt
per view, greedy — the stage-0 curriculum's read items, never trained on in stages 1–2. This module
plays it on a run's held-out ID and other-city route files with every checkpoint the run kept (stage 0,
the warm start, each arm's final model per seed), through the trainers' own evaluation
(:func:`sftrl.training.evaluation.evaluate`, the same episode seed as the run's evaluations, so the
views are those its navigation evaluations showed, read from its street-view cache), and reports
recognition over all views and over the views that show a landmark, mean over seeds, with a 95%
bootstrap interval over routes and paired differences between checkpoints (same views)::

    python -m sftrl.repro.recognition runs/repro-virl-vl      # writes recognition/ (json, md) there
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftrl.repro import experiments
from sftrl.repro.pipeline import seed_test

EXPERIMENT = "virl-vl-visual"
EVAL_SEED = 12345
"""The episode seed of the run's own evaluations (:func:`sftrl.repro.pipeline._evaluate_checkpoint`)."""
MAX_NEW_TOKENS = 64
"""A reading is a landmark's name, where it lies and ``, intersection``: up to ~60 characters."""
SPLITS = (("id", "id", "id_eval"), ("ood", "visual-ood", "ood_eval"))
COMPARISONS = (
    ("sft", "warmstart"),
    ("ppo", "warmstart"),
    ("grpo", "warmstart"),
    ("ppo", "sft"),
    ("grpo", "sft"),
)


def checkpoints(run: Path, results: dict[str, Any]) -> list[tuple[str, int | None, Path]]:
    """(arm, seed, model dir) of every checkpoint the run kept, stage 0 and the warm start first."""
    found: list[tuple[str, int | None, Path]] = [("stage0", None, Path(results["stage0_checkpoint"]))]
    if (run / "warmstart" / "config.json").exists():
        found.append(("warmstart", None, run / "warmstart"))
    for seed in results["seeds"]:  # a run without a shared warm start keeps one per seed
        if (run / f"seed{seed}" / "warmstart" / "config.json").exists():
            found.append(("warmstart", seed, run / f"seed{seed}" / "warmstart"))
    arms = [a for a in results["rows"] if a not in ("stage0", "warmstart")]
    for arm in arms:
        for seed in results["seeds"]:
            model = run / f"seed{seed}" / arm
            if (model / "config.json").exists():
                found.append((arm, seed, model))
    return found


def _specs(run: Path, results: dict[str, Any]) -> list[Any]:
    from sftrl.training.evaluation import EvalSpec

    exp = experiments.get(EXPERIMENT)
    cfg = results["config"]
    files = {"id_eval": run / "pools" / experiments.VIRL_ROUTE_FILES["id_eval"]}
    files["ood_eval"] = run / "pools" / experiments.VIRL_ROUTE_FILES["ood_eval"]
    cache = run / "street-view-cache"
    specs = []
    for name, split, pool in SPLITS:
        n = len(json.loads(files[pool].read_text())[0])
        values = {
            "env": exp.env,
            **experiments.env_options(exp, cfg["verify_iter"], files[pool], split, by_index=True),
            "task": "read",
            **({"street_view": "cache", "cache_dir": str(cache)} if cache.exists() else {}),
            "episodes": n,
            "concurrency": n,
        }
        specs.append(EvalSpec(name=name, values={k: str(v) for k, v in values.items()}))
    return specs


def read_checkpoint(model: Path, specs: list[Any], out: Path) -> None:
    """Play the read task on every spec with ``model`` (greedy), logs under ``out``."""
    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.training.evaluation import evaluate

    policy = HFPolicy(model, max_batch_size=max(int(s.values["episodes"]) for s in specs))
    out.mkdir(parents=True, exist_ok=True)
    evaluate(policy, specs, out, step=0, flops=0.0, episodes=1, seed=EVAL_SEED, max_new_tokens=MAX_NEW_TOKENS)


def per_route(run_dir: Path) -> list[tuple[int, int, int, int]]:
    """Per route, in route order: (views read right, views, landmark views read right, landmark views)."""
    from sftrl.agents.metrics import select_episodes
    from sftrl.agents.trajectory import read_episodes

    records, _ = select_episodes(read_episodes(run_dir))
    rows = []
    for r in records:
        details = [t.verdict.details for t in r.turns]
        marks = [d for d in details if d.get("landmark_in_view")]
        rows.append(
            (
                sum(bool(d["landmark_correct"]) for d in details),
                len(details),
                sum(bool(d["landmark_correct"]) for d in marks),
                len(marks),
            )
        )
    return rows


def _ratio_ci(
    right: Sequence[float], total: Sequence[float], n_boot: int = 4000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of sum(right) / sum(total), routes resampled with replacement."""
    import numpy as np

    r, t = np.asarray(right, dtype=float), np.asarray(total, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(r), size=(n_boot, len(r)))
    ratios = r[idx].sum(axis=1) / np.maximum(t[idx].sum(axis=1), 1e-12)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def summarize(run: Path, kept: list[tuple[str, int | None, Path]], out: Path) -> dict[str, Any]:
    """Recognition per checkpoint (mean over seeds, per seed, route-bootstrap interval) and paired
    differences; views are the same for every checkpoint, so differences are paired view by view."""
    per: dict[str, dict[str, list[list[tuple[int, int, int, int]]]]] = {}
    seeds_of: dict[str, list[int | None]] = {}
    for arm, seed, _ in kept:
        tag = arm if seed is None else f"{arm}-{seed}"
        seeds_of.setdefault(arm, []).append(seed)
        for name, *_ in SPLITS:
            per.setdefault(arm, {}).setdefault(name, []).append(
                per_route(out / tag / "eval" / "step-000000" / name)
            )
    result: dict[str, Any] = {"checkpoints": {}, "paired": {}}
    for arm, splits in per.items():
        row: dict[str, Any] = {"seeds": seeds_of[arm]}
        for name, runs in splits.items():
            for key, (a, b) in (("all", (0, 1)), ("landmark", (2, 3))):
                # Seed-summed counts per route: the seed mean of a ratio with equal denominators.
                right = [sum(run[i][a] for run in runs) for i in range(len(runs[0]))]
                total = [sum(run[i][b] for run in runs) for i in range(len(runs[0]))]
                row[f"{name}_{key}"] = sum(right) / max(sum(total), 1)
                row[f"{name}_{key}_ci"] = _ratio_ci(right, total)
                row[f"{name}_{key}_per_seed"] = [
                    sum(x[a] for x in run) / max(sum(x[b] for x in run), 1) for run in runs
                ]
        result["checkpoints"][arm] = row
    for a, b in COMPARISONS:
        if a not in per or b not in per:
            continue
        for name, *_ in SPLITS:
            for key, (r, v) in (("all", (0, 1)), ("landmark", (2, 3))):
                result["paired"][f"{a}-{b}/{name}/{key}"] = _paired(per[a][name], per[b][name], r, v)
    return result


def _paired(
    ra: list[list[tuple[int, int, int, int]]], rb: list[list[tuple[int, int, int, int]]], r: int, v: int
) -> dict[str, Any]:
    """Checkpoint a − b on the views counted at ``v`` (read right at ``r``): per route the seed-mean
    right of a minus that of b over the route's views (the same views for both), routes resampled."""
    routes = range(len(ra[0]))
    views = [ra[0][i][v] for i in routes]
    if views != [rb[0][i][v] for i in routes]:
        raise ValueError("the two checkpoints read different views: not comparable")
    diff = [sum(run[i][r] for run in ra) / len(ra) - sum(run[i][r] for run in rb) / len(rb) for i in routes]
    entry: dict[str, Any] = {"mean": sum(diff) / max(sum(views), 1), "ci": _ratio_ci(diff, views)}
    if len(ra) == len(rb) > 1:
        entry["seeds"] = seed_test(
            [
                sum(x[r] for x in sa) / max(sum(x[v] for x in sa), 1)
                - sum(x[r] for x in sb) / max(sum(x[v] for x in sb), 1)
                for sa, sb in zip(ra, rb, strict=True)
            ]
        )
    return entry


def markdown(result: dict[str, Any]) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    lines = [
        "Landmark recognition (the env's read task, greedy, one attempt per view), %: all views / views "
        "showing a landmark; mean over seeds, 95% bootstrap interval over routes.",
        "",
        "| checkpoint | ID all | ID landmark | other-city all | other-city landmark"
        " | per-seed other-city landmark |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for arm, row in result["checkpoints"].items():
        cells = [
            f"{pct(row[f'{s}_{k}'])} [{pct(row[f'{s}_{k}_ci'][0])}, {pct(row[f'{s}_{k}_ci'][1])}]"
            for s in ("id", "ood")
            for k in ("all", "landmark")
        ]
        seeds = ", ".join(pct(x) for x in row["ood_landmark_per_seed"])
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {seeds} |")
    lines += [
        "",
        "Paired differences, points (routes resampled; seeds: mean, t-interval, sign-flip p).",
        "",
        "| comparison | views | ID | other-city | other-city (seeds) |",
        "| --- | --- | --- | --- | --- |",
    ]
    pairs = list(dict.fromkeys(k.split("/")[0] for k in result["paired"]))
    for pair in pairs:
        for key in ("all", "landmark"):
            cells = []
            for s in ("id", "ood"):
                e = result["paired"][f"{pair}/{s}/{key}"]
                cells.append(f"{100 * e['mean']:+.1f} [{100 * e['ci'][0]:+.1f}, {100 * e['ci'][1]:+.1f}]")
            seeds = result["paired"][f"{pair}/ood/{key}"].get("seeds")
            cells.append(
                "—"
                if seeds is None or "ci" not in seeds
                else f"{100 * seeds['mean']:+.1f} [{100 * seeds['ci'][0]:+.1f}, "
                f"{100 * seeds['ci'][1]:+.1f}], p = {seeds['p_sign_flip']:.3f}"
            )
            lines.append(f"| {pair.replace('-', ' − ')} | {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sftrl.repro.recognition",
        description="Landmark recognition of a V-IRL-VL agent repro run's checkpoints.",
    )
    ap.add_argument("run", type=Path, help="the output directory of agent repro --experiment virl-vl-visual")
    ap.add_argument("--out", type=Path, default=None, help="where logs and results go (RUN/recognition)")
    ns = ap.parse_args(argv)
    path = ns.run / "results.json"
    if not path.exists():
        ap.error(f"{ns.run}: no results.json (not a finished agent repro run)")
    results = json.loads(path.read_text())
    if results.get("experiment") != EXPERIMENT:
        ap.error(f"{ns.run}: a {results.get('experiment')!r} run; this measures {EXPERIMENT} runs")
    out = ns.out or ns.run / "recognition"
    kept = checkpoints(ns.run, results)
    missing = [str(model) for *_, model in kept if not (model / "config.json").exists()]
    if missing:
        ap.error(f"checkpoint gone: {missing[0]} (pass the run's stage-0 model back at that path)")
    specs = _specs(ns.run, results)
    from rich.progress import Progress

    with Progress() as progress:
        task = progress.add_task("reading street views", total=len(kept))
        for arm, seed, model in kept:
            tag = arm if seed is None else f"{arm}-{seed}"
            if not (out / tag / "eval.jsonl").exists():
                read_checkpoint(model, specs, out / tag)
            progress.advance(task)
    result = summarize(ns.run, kept, out)
    result["command"] = f"python -m sftrl.repro.recognition {ns.run}"
    (out / "recognition.json").write_text(json.dumps(result, indent=1))
    (out / "recognition.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
