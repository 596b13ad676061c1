"""Own GRPO learner vs TRL's GRPOTrainer (``agent train rl --trainer trl``) at equal settings.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_rl_vs_trl.py [--updates 3 --episodes 8 --group 4]``
(``--trainers sftrl|trl``: one of the two, e.g. one per core; ``--pair OWN_OUT TRL_OUT``, once per
seed, then pairs such runs at every evaluation point, with seed-level t-intervals, and trains nothing;
either run of a pair may be of either trainer, e.g. two own-learner settings, named by ``--labels``).
Both runs go through ``agent train rl`` (``python -m sftrl``), each in its own process, on the same
model (default: a tiny from-scratch one, ``agent tiny-model``; ``--model DIR``: any local model), the
same GP-L env, group size, episodes per update, sequence length, learning rate, epochs per update
and number of updates; ``--extra "..."`` adds the same ``agent train rl`` options to both (env
options, ``--eval-env`` specs, ``--eval-every``), ``--own-extra "..."`` options of the own learner only
(e.g. ``--micro-batch-size``), ``--trl-minibatch N`` TRL's per-device micro-batch (N episodes a pass,
accumulated into the same step; default the whole update). Reported per trainer: episodes/s and updates/s over
the training loop (the trainers' own clocks: the sum of the own learner's per-update ``seconds``;
TRL's ``train_runtime`` less the evaluations run inside it), the process wall time (imports, model
load and evaluations included), the peak resident memory of the process, the mean reward of the
first and the last update, and each ``--eval-env``'s success rate at the first and the last
evaluation; then the ratio own / TRL (> 1 = the own learner is faster / uses more / scores more).
A tiny random model earns no reward, so its rewards only show that both ran the same task.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ALL_TRANSITIONS = 1_000_000
"""The own learner's --minibatch-size for "every transition of the update in one mini-batch"."""

# Runs `python -m sftrl ...` and reports the process's peak RSS (ru_maxrss, KiB on Linux) on stderr.
_WRAPPER = (
    "import resource, runpy, sys\n"
    "sys.argv = ['sftrl', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('sftrl', run_name='__main__')\n"
    "finally:\n"
    "    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def tiny_model(out: Path) -> Path:
    """A tiny from-scratch model (``agent tiny-model``) at ``out``."""
    cmd = [sys.executable, "-m", "sftrl", "tiny-model", "--out", str(out), "--overwrite"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def run(trainer: str, model: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, "-c", _WRAPPER, "train", "rl", "--model", str(model), "--out", str(out)]
    cmd += ["--trainer", trainer, "--algo", "grpo", "--max-steps", str(args.updates)]
    cmd += ["--episodes-per-update", str(args.episodes), "--group-size", str(args.group)]
    cmd += ["--max-new-tokens", str(args.max_new_tokens), "--ppo-epochs", str(args.epochs)]
    # One optimizer step per epoch over the whole update in both: TRL's micro-batches count episodes
    # (it accumulates them into one step), the own learner's mini-batches count transitions (one per
    # model call: a multi-turn episode is several), so its mini-batch must hold every transition.
    # --trl-minibatch N: TRL's per-device micro-batch of N episodes, accumulated into the same step.
    trl_micro = getattr(args, "trl_minibatch", None) or args.episodes
    minibatch = trl_micro if trainer == "trl" else ALL_TRANSITIONS
    cmd += ["--minibatch-size", str(minibatch), "--lr", str(args.lr), "--concurrency", str(args.episodes)]
    cmd += ["--save-every", str(args.updates), "--seed", str(args.seed), "--json", *shlex.split(args.extra)]
    if trainer == "sftrl":
        cmd += shlex.split(getattr(args, "own_extra", ""))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{trainer} failed:\n{proc.stderr[-3000:]}")
    peak = max(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    eval_file = out / "eval.jsonl"
    evals = [json.loads(line) for line in eval_file.read_text().splitlines()] if eval_file.exists() else []
    if trainer == "sftrl":
        train_s = sum(float(r["seconds"]) for r in rows)  # each update's own time: no evaluation in it
        rewards = [float(r["reward"]) for r in rows]
    else:  # TRL's clock runs through the evaluations its callbacks make: take them out
        train_s = float(last["train_runtime"]) - sum(float(e["seconds"]) for e in evals)
        rewards = [float(r["reward"]) for r in rows if "reward" in r]
    result = {
        "episodes_s": args.updates * args.episodes / train_s,
        "updates_s": args.updates / train_s,
        "train_s": train_s,
        "wall_s": wall,
        "peak_mb": peak / 1024,
        "reward_first": rewards[0],
        "reward": rewards[-1],
    }
    if evals:
        for name in (k for k, v in evals[0].items() if isinstance(v, dict)):
            result[f"eval:{name}:first"] = float(evals[0][name]["success_rate"])
            result[f"eval:{name}:last"] = float(evals[-1][name]["success_rate"])
        result["eval_dirs"] = {
            name: (evals[0][name]["out"], evals[-1][name]["out"])
            for name, v in evals[0].items()
            if isinstance(v, dict)
        }
    return result


def add_run_options(ap: argparse.ArgumentParser) -> None:
    """The options :func:`run` reads (shared with the benchmarks built on it)."""
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=8, help="episodes per update")
    ap.add_argument("--group", type=int, default=4, help="GRPO group size")
    ap.add_argument("--epochs", type=int, default=1, help="optimizer passes per update")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, help="a local model (default: a tiny from-scratch one)")
    ap.add_argument(
        "--extra", default="", help='more `agent train rl` options for every run, e.g. "--verify-iter 3"'
    )
    ap.add_argument("--timeout", type=float, default=3600, help="seconds each training run may take")


def main() -> None:
    ap = argparse.ArgumentParser()
    add_run_options(ap)
    ap.add_argument(
        "--own-extra",
        default="",
        help='`agent train rl` options for the own learner only, e.g. "--micro-batch-size 16"',
    )
    ap.add_argument(
        "--trl-minibatch",
        type=int,
        help="TRL's per-device micro-batch in episodes (its --minibatch-size; default: the whole update), "
        "accumulated into one optimizer step per epoch as before",
    )
    ap.add_argument("--out", type=Path, help="keep both runs (own/, trl/) and results.json here")
    ap.add_argument(
        "--trainers",
        choices=("both", "sftrl", "trl"),
        default="both",
        help="run one trainer only (e.g. one per core); pair the runs later with paired_rows",
    )
    ap.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("OWN_OUT", "TRL_OUT"),
        help="train nothing: pair the --out dirs of earlier runs (one pair per seed) at every "
        "evaluation, with seed-level t-intervals; repeat once per seed",
    )
    ap.add_argument(
        "--labels",
        nargs=2,
        default=("own", "TRL"),
        metavar=("A", "B"),
        help="names of the two sides of --pair in its tables (e.g. token reply for two own runs)",
    )
    args = ap.parse_args()
    if args.pair:
        summarize_pairs([(Path(a), Path(b)) for a, b in args.pair], args.out, labels=tuple(args.labels))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = args.model or tiny_model(work / "tiny")
        console = Console(width=max(120, Console().width))  # the paired table's CIs need the width
        own: dict = {}
        trl: dict = {}
        if args.trainers in ("both", "sftrl"):
            with console.status("own learner (--trainer sftrl)"):
                own = run("sftrl", model, work / "own", args)
        if args.trainers in ("both", "trl"):
            with console.status("TRL GRPOTrainer (--trainer trl)"):
                trl = run("trl", model, work / "trl", args)
        paired = paired_rows(own.get("eval_dirs", {}), trl.get("eval_dirs", {})) if own and trl else {}
        if args.out is not None:
            results = {"args": vars(args), "own": own, "trl": trl, "paired": paired}
            (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    table = Table(
        title=f"GRPO on GP-L, {model.name if args.model else 'tiny model'}: {args.updates} updates x "
        f"{args.episodes} episodes (groups of {args.group}), {args.max_new_tokens} new tokens, "
        f"{args.epochs} epoch(s)/update, lr {args.lr:g}"
        + (f"; own learner: {args.own_extra}" if args.own_extra else "")
        + (f"; TRL micro-batch {args.trl_minibatch} episodes" if args.trl_minibatch else "")
    )
    for col in ("metric", "own (sftrl)", "TRL GRPOTrainer", "own / TRL"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for key, name, fmt in (
        ("episodes_s", "episodes/s (training loop)", "{:.2f}"),
        ("updates_s", "updates/s (training loop)", "{:.3f}"),
        ("train_s", "training loop s", "{:.1f}"),
        ("wall_s", "process wall s (with start-up)", "{:.1f}"),
        ("peak_mb", "peak RSS MB", "{:.0f}"),
        ("reward_first", "mean reward, first update", "{:.3f}"),
        ("reward", "mean reward, last update", "{:.3f}"),
        *(
            (k, f"success {k.split(':')[1]} ({k.split(':')[2]} evaluation)", "{:.3f}")
            for k in own or trl
            if ":" in k
        ),
    ):
        a, b = own.get(key, float("nan")), trl.get(key, float("nan"))
        ratio = a / b if own and trl and b else float("nan")
        table.add_row(name, fmt.format(a), fmt.format(b), f"{ratio:.2f}")
    console.print(table)
    if paired:
        ptable = Table(title="Evaluation success, paired differences (95% bootstrap CI over episodes)")
        for col in ("eval env", "own: last - first", "TRL: last - first", "own - TRL, last"):
            ptable.add_column(col, justify="right" if col != "eval env" else "left")
        for name, diffs in paired.items():
            ptable.add_row(name, *(_diff_text(d) for d in diffs.values()))
        console.print(ptable)


def _diff_text(d: dict) -> str:
    lo, hi = d["success_diff_ci95"]
    return f"{d['success_diff']:+.3f} ({lo:+.3f} .. {hi:+.3f})"


def paired_rows(
    own: dict[str, tuple[str, str]], trl: dict[str, tuple[str, str]]
) -> dict[str, dict[str, dict]]:
    """Success differences over episodes paired by seed (every evaluation plays the same seeds), with
    bootstrap 95% intervals: each trainer's last evaluation vs its first, and own vs TRL at the last."""
    from sftrl.agents.metrics import paired_difference
    from sftrl.agents.trajectory import read_episodes

    def diff(a: str, b: str) -> dict:
        return paired_difference(read_episodes(Path(a)), read_episodes(Path(b)))

    return {
        name: {
            "own_last_minus_first": diff(first, last),
            "trl_last_minus_first": diff(*trl[name]),
            "own_minus_trl_last": diff(trl[name][1], last),
        }
        for name, (first, last) in own.items()
    }


def _evals(out: Path, trainer: str) -> list[dict]:
    """The evaluations of the run in ``out``: its ``trainer`` run (own/ or trl/), else its only one."""
    found = [out / t / "eval.jsonl" for t in (trainer, *({"own", "trl"} - {trainer}))]
    path = next((p for p in found if p.exists()), None)
    if path is None:
        raise SystemExit(f"{out} holds no own/ or trl/eval.jsonl: not the --out of a run with --eval-env")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_pairs(
    pairs: list[tuple[Path, Path]], out: Path | None, labels: tuple[str, str] = ("own", "TRL")
) -> dict:
    """Per seed (one (A, B) pair of runs each, by default (own, TRL)) and evaluation point: both
    sides' success, A - B paired over episodes; each side's change from its first evaluation; then
    the seed level of the last point (mean of per-seed differences, 95% t-interval, sign-flip p).
    The JSON keeps the keys own/trl for A/B and records ``labels``."""
    a, b = labels
    from sftrl.repro.pipeline import seed_test

    per_seed = []
    for own_out, trl_out in pairs:
        own, trl = _evals(own_out, "own"), _evals(trl_out, "trl")
        if len(own) != len(trl):
            raise SystemExit(f"{own_out} has {len(own)} evaluations, {trl_out} {len(trl)}: not a pair")
        names = [k for k, v in own[0].items() if isinstance(v, dict)]
        seed: dict[str, list[dict]] = {}
        for name in names:
            rows = []
            for o, t in zip(own, trl, strict=True):
                dirs = {
                    "own": (own[0][name]["out"], o[name]["out"]),
                    "trl": (trl[0][name]["out"], t[name]["out"]),
                }
                d = paired_rows({name: dirs["own"]}, {name: dirs["trl"]})[name]
                rows.append(
                    {"step": o["step"], "own": o[name]["success_rate"], "trl": t[name]["success_rate"], **d}
                )
            seed[name] = rows
        per_seed.append(seed)
    console = Console(width=max(120, Console().width))
    summary: dict = {
        "pairs": [[str(x), str(y)] for x, y in pairs],
        "labels": [a, b],
        "per_seed": per_seed,
        "seed_level": {},
    }
    what = {
        "own_minus_trl_last": f"{a} - {b}",
        "own_last_minus_first": f"{a}: last - first",
        "trl_last_minus_first": f"{b}: last - first",
    }
    for name in per_seed[0]:
        table = Table(title=f"{name}: success by evaluation point ({a} - {b} and changes: 95% bootstrap CI)")
        for col in ("seed", "step", a, b, f"{a} - {b}", f"{a}: from first", f"{b}: from first"):
            table.add_column(col, justify="right")
        for i, seed in enumerate(per_seed):
            for r in seed[name]:
                table.add_row(
                    str(i), str(r["step"]), f"{r['own']:.3f}", f"{r['trl']:.3f}",
                    _diff_text(r["own_minus_trl_last"]), _diff_text(r["own_last_minus_first"]),
                    _diff_text(r["trl_last_minus_first"]),
                )  # fmt: skip
        console.print(table)
        level = {
            key: seed_test([seed[name][-1][key]["success_diff"] for seed in per_seed])
            for key in ("own_minus_trl_last", "own_last_minus_first", "trl_last_minus_first")
        }
        summary["seed_level"][name] = level
        for key, test in level.items():
            ci = test.get("ci")
            ci_text = f"({ci[0]:+.3f} .. {ci[1]:+.3f})" if ci else "(one seed: no interval)"
            console.print(
                f"{name} {what[key]} ({key}), last point, mean over {test['n_seeds']} seeds: "
                f"{test['mean']:+.3f} {ci_text}"
            )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "paired_seeds.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
