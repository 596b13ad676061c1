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


COMMANDS = {"run": cmd_run, "eval": cmd_eval}


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
