"""The ``agent`` command line: run episodes, evaluate logs (heavier commands import lazily)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from sftrl.config import ConfigError, load_yaml, merge


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line instead of argparse's usage dump.
        self.exit(2, f"agent: error: {message} (see `{self.prog} --help`)\n")


def _env_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per env option, generated from every registered env's pydantic config model."""
    from sftrl.environments.registry import ENTRY_POINTS, env_class

    seen: dict[str, str] = {}
    group = parser.add_argument_group("environment options (validated by the chosen env)")
    for env_id in ENTRY_POINTS:
        model = env_class(env_id).config_model
        for name, field in model.model_fields.items():
            if name in seen:
                continue
            seen[name] = env_id
            flag = "--" + name.replace("_", "-")
            annotation = field.annotation
            args = typing.get_args(annotation)
            is_bool = annotation is bool or (
                isinstance(annotation, types.UnionType) and bool in args and len(args) == 2
            )
            choices = _literal_choices(annotation)
            helptext = field.description or ""
            if choices:
                helptext = f"{helptext} one of: {', '.join(choices)}".strip()
            if field.default is not None:
                helptext += f" (default {field.default})"
            if is_bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
            else:
                group.add_argument(flag, default=argparse.SUPPRESS, metavar=name.upper(), help=helptext)


def _literal_choices(annotation: Any) -> list[str]:
    out: list[str] = []
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is typing.Literal:
            out.extend(str(a) for a in typing.get_args(arg))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agent", description="Run, evaluate and train vision-language agents.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run episodes of an env with a policy and log them")
    run.add_argument("--config", type=Path, help="YAML file whose keys mirror these flags")
    run.add_argument("--env", default=argparse.SUPPRESS, help="env name: gp (default)")
    run.add_argument("--policy", default=argparse.SUPPRESS, help="expert (default) | random")
    run.add_argument("--episodes", type=int, default=argparse.SUPPRESS, help="number of episodes (10)")
    run.add_argument("--seed", type=int, default=argparse.SUPPRESS, help="run seed; fixes every episode (0)")
    run.add_argument("--out", type=Path, default=argparse.SUPPRESS, help="run directory (runs/latest)")
    run.add_argument("--resume", action="store_true", default=argparse.SUPPRESS, help="continue a run")
    run.add_argument("--concurrency", type=int, default=argparse.SUPPRESS, help="episodes in flight (1)")
    run.add_argument(
        "--keep-last-turns", type=int, default=argparse.SUPPRESS, help="history: keep the last N retries"
    )
    run.add_argument("--temperature", type=float, default=argparse.SUPPRESS)
    run.add_argument("--top-p", type=float, default=argparse.SUPPRESS)
    run.add_argument("--max-new-tokens", type=int, default=argparse.SUPPRESS)
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    _env_flags(run)

    ev = sub.add_parser("eval", help="metrics of a logged run; with two runs, their paired difference")
    ev.add_argument("runs", nargs="+", type=Path, metavar="DIR", help="one or two run directories")
    ev.add_argument("--config", type=Path, help="YAML file whose keys mirror these flags")
    ev.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    ev.add_argument("--bootstrap", type=int, default=argparse.SUPPRESS, help="bootstrap resamples (2000)")

    routes = sub.add_parser("routes", help="V-IRL route sets: list a split, collect new routes")
    rsub = routes.add_subparsers(dest="routes_command", required=True, parser_class=_Parser)
    rl_list = rsub.add_parser("list", help="the fixed route set of a split (as in the shipped manifest)")
    rl_list.add_argument("--split", default="id", help="id | rule-ood | visual-ood | nyc-unseen")
    rl_list.add_argument("--city", default=None, help="city bundle(s), default from the split")
    rl_list.add_argument("--num-routes", type=int, default=100)
    rl_list.add_argument("--route-seed", type=int, default=0)
    rl_list.add_argument("--json", action="store_true")

    train = sub.add_parser("train", help="post-train a model: sft | rl")
    tsub = train.add_subparsers(dest="train_command", required=True, parser_class=_Parser)
    trl = tsub.add_parser("rl", help="multi-turn RL with verifier rewards (PPO as the paper, or GRPO)")
    trl.add_argument("--config", type=Path, help="YAML file whose keys mirror these flags")
    trl.add_argument("--env", default=argparse.SUPPRESS, help="env to roll out in: gp (default) | virl")
    trl.add_argument("--model", default=argparse.SUPPRESS, help="model directory or hub id (hf backend)")
    trl.add_argument("--out", type=Path, default=argparse.SUPPRESS, help="checkpoint directory")
    trl.add_argument("--algo", default=argparse.SUPPRESS, help="ppo (default) | grpo")
    trl.add_argument("--max-steps", type=int, default=argparse.SUPPRESS, help="RL updates (10)")
    trl.add_argument(
        "--episodes",
        type=Path,
        nargs="+",
        default=argparse.SUPPRESS,
        metavar="RUN_DIR",
        help="learn from these logged runs (collected with --policy hf) instead of collecting online",
    )
    trl.add_argument("--episodes-per-update", type=int, default=argparse.SUPPRESS, help="(16)")
    trl.add_argument("--group-size", type=int, default=argparse.SUPPRESS, help="GRPO episodes per seed (4)")
    trl.add_argument("--concurrency", type=int, default=argparse.SUPPRESS, help="episodes in flight (8)")
    trl.add_argument(
        "--temperature", type=float, default=argparse.SUPPRESS, help="sampling temperature (1.0)"
    )
    trl.add_argument("--max-new-tokens", type=int, default=argparse.SUPPRESS, help="(128)")
    trl.add_argument("--lr", type=float, default=argparse.SUPPRESS, help="learning rate (1e-5)")
    trl.add_argument("--ppo-epochs", type=int, default=argparse.SUPPRESS, help="(4)")
    trl.add_argument("--minibatch-size", type=int, default=argparse.SUPPRESS, help="(8)")
    trl.add_argument("--kl-coef", type=float, default=argparse.SUPPRESS, help="GRPO KL to the start (0)")
    trl.add_argument("--save-every", type=int, default=argparse.SUPPRESS, help="checkpoint every N updates")
    trl.add_argument("--seed", type=int, default=argparse.SUPPRESS)
    trl.add_argument("--resume", action="store_true", default=argparse.SUPPRESS)
    trl.add_argument("--json", action="store_true", help="print the last update's metrics as JSON")
    _env_flags(trl)
    return parser


def _version() -> str:
    from sftrl import __version__

    return f"sftrl {__version__}"


_SAMPLING_KEYS = ("temperature", "top_p", "max_new_tokens")


def _run_values(ns: argparse.Namespace) -> dict[str, Any]:
    flags = {k: v for k, v in vars(ns).items() if k not in {"command", "config", "json", "quiet"}}
    file_values = load_yaml(ns.config) if ns.config else {}
    values = merge(file_values, flags)
    sampling = dict(values.pop("sampling", None) or {})
    for key in _SAMPLING_KEYS:
        if key in values:
            sampling[key] = values.pop(key)
    if sampling:
        values["sampling"] = sampling
    return values


def cmd_run(ns: argparse.Namespace) -> int:
    from sftrl.agents.runner import run_async, split_config

    run, env_cfg = split_config(_run_values(ns))
    file_flags = load_yaml(ns.config) if ns.config else {}
    as_json = ns.json or bool(file_flags.get("json"))
    quiet = ns.quiet or as_json or not sys.stderr.isatty()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    err = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("success {task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err,
        disable=quiet,
    )
    state = {"ok": 0, "n": 0}
    with progress:
        task = progress.add_task(f"{run.env} · {run.policy}", total=run.episodes, rate="–")

        def on_progress(done: int, total: int, record: Any) -> None:
            if record is not None and record.error is None:
                state["n"] += 1
                state["ok"] += int(record.success)
            rate = f"{state['ok'] / state['n']:.1%}" if state["n"] else "–"
            progress.update(task, completed=done, rate=rate)

        summary = asyncio.run(run_async(run, env_cfg, on_progress=on_progress))
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    else:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict[str, Any], title: str = "run summary") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key in (
        "env_id",
        "policy",
        "episodes",
        "errors",
        "success_rate",
        "success_ci95",
        "mean_reward",
        "mean_turns",
        "recognition_accuracy",
        "verdicts",
        "out",
    ):
        if key in summary:
            value = summary[key]
            if isinstance(value, float):
                value = f"{value:.4f}"
            elif isinstance(value, list):
                value = "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
            table.add_row(key, str(value))
    Console().print(table)


def cmd_eval(ns: argparse.Namespace) -> int:
    from sftrl.agents.metrics import paired_difference, summarize
    from sftrl.agents.trajectory import read_episodes

    file_values = load_yaml(ns.config) if ns.config else {}
    as_json = bool(getattr(ns, "json", file_values.get("json", False)))
    n_boot = int(getattr(ns, "bootstrap", file_values.get("bootstrap", 2000)))
    if len(ns.runs) > 2:
        raise CLIError("eval takes one run directory, or two to compare")
    runs = [read_episodes(p) for p in ns.runs]
    result: dict[str, Any] = {
        "runs": [dict(summarize(r), path=str(p)) for r, p in zip(runs, ns.runs, strict=True)]
    }
    if len(runs) == 2:
        try:
            result["paired"] = paired_difference(runs[0], runs[1], n_boot=n_boot)
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
    if as_json:
        print(json.dumps(result if len(runs) == 2 else result["runs"][0], sort_keys=True))
        return 0
    for summary in result["runs"]:
        _print_summary(summary, title=summary["path"])
    if "paired" in result:
        p = result["paired"]
        lo, hi = p["success_diff_ci95"]
        print(
            f"paired over {p['paired_episodes']} seeds: success {p['success_rate_a']:.3f} → "
            f"{p['success_rate_b']:.3f}, diff {p['success_diff']:+.3f} (95% CI {lo:+.3f} … {hi:+.3f})"
        )
    return 0


def cmd_routes(ns: argparse.Namespace) -> int:
    from sftrl.environments.virl.env import VIRLConfig
    from sftrl.environments.virl.routes import route_fingerprint, route_summary, split_routes

    try:
        cfg = VIRLConfig(split=ns.split, city=ns.city, num_routes=ns.num_routes, route_seed=ns.route_seed)
    except ValueError as exc:
        raise CLIError(str(exc).splitlines()[-1] if "validation error" in str(exc) else str(exc)) from exc
    assert cfg.city is not None
    routes = split_routes(
        cfg.city, cfg.split, cfg.route_seed, cfg.num_routes, cfg.max_route_m, cfg.max_start_m
    )
    rows = [dict(route_summary(r), index=i, fingerprint=route_fingerprint(r)) for i, r in enumerate(routes)]
    if ns.json:
        print(json.dumps(rows))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"V-IRL routes: split {cfg.split}, city {cfg.city} ({len(rows)})")
    for col in ("index", "route_id", "start", "destination", "length_m", "milestones"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            *(str(r[c]) for c in ("index", "route_id", "start", "destination", "length_m", "milestones"))
        )
    Console().print(table)
    return 0


_RL_KEYS = {"lr", "ppo_epochs", "minibatch_size", "kl_coef", "algo", "seed"}
_RL_RUN_KEYS = {
    "env",
    "model",
    "out",
    "episodes_per_update",
    "group_size",
    "concurrency",
    "temperature",
    "max_new_tokens",
    "save_every",
    "seed",
    "resume",
    "episodes",
}


def cmd_train(ns: argparse.Namespace) -> int:
    if ns.train_command != "rl":  # pragma: no cover - argparse restricts the choices
        raise CLIError(f"unknown train command {ns.train_command!r}")
    from pydantic import ValidationError

    from sftrl.agents.runner import split_config
    from sftrl.training.rl_train import RLRunConfig, train_rl

    flags = {k: v for k, v in vars(ns).items() if k not in {"command", "train_command", "config", "json"}}
    values = merge(load_yaml(ns.config) if ns.config else {}, flags)
    if "max_steps" in values:
        values["updates"] = values.pop("max_steps")
    rl = dict(values.pop("rl", None) or {})  # the YAML's `rl:` section (every RLConfig field)
    rl.update({k: values.pop(k) for k in list(values) if k in _RL_KEYS - {"seed"}})
    if "seed" in values:
        rl["seed"] = values["seed"]
    run_values = {k: values.pop(k) for k in list(values) if k in _RL_RUN_KEYS | {"updates"}}
    # Whatever is left are env options: validate them with the env's own model.
    _, env_cfg = split_config({"env": run_values.get("env", "gp"), **values})
    explicit = {k: env_cfg[k] for k in values}
    if "model" not in run_values or "out" not in run_values:
        raise CLIError("train rl needs --model PATH and --out DIR")
    try:
        cfg = RLRunConfig.model_validate({**run_values, "env_options": explicit, "rl": rl})
    except ValidationError as exc:
        raise CLIError(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from exc
    from rich.console import Console

    err = Console(stderr=True)
    from sftrl.training.transitions import TransitionError

    try:
        metrics = train_rl(cfg, progress=lambda msg: err.print(msg))
    except TransitionError as exc:
        raise CLIError(str(exc)) from exc
    if ns.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        err.print(f"saved to {cfg.out}")
    return 0


COMMANDS = {"run": cmd_run, "eval": cmd_eval, "routes": cmd_routes, "train": cmd_train}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    from sftrl.agents.trajectory import LogError
    from sftrl.environments.registry import UnknownEnvError

    try:
        return COMMANDS[ns.command](ns)
    except (CLIError, ConfigError, LogError, UnknownEnvError) as exc:
        print(f"agent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agent: interrupted (logged episodes are kept; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
