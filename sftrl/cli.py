"""The ``agent`` command line: run episodes, evaluate logs (heavier commands import lazily)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from sftrl.config import ConfigError, load_yaml, validation_message


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line instead of argparse's usage dump.
        self.exit(2, f"agent: error: {message} (see `{self.prog} --help`)\n")


def _env_flags(parser: argparse.ArgumentParser, env: str | None) -> None:
    """One flag per env option, generated from the envs' pydantic config models.

    With ``env`` (the ``--env`` on the command line) only that env's options, with its defaults and
    choices; without, every env's, each default and choice list labelled with the env it belongs to.
    """
    from sftrl.cli_flags import add_field_flag, default_text, literal_choices
    from sftrl.environments.registry import ENTRY_POINTS, ENV_ALIASES, env_class

    def alias(env_id: str) -> str:
        return next((a for a, i in ENV_ALIASES.items() if i == env_id), env_id)

    if env is not None:
        group = parser.add_argument_group(f"{alias(env)} options ({env})")
        for name, field in env_class(env).config_model.model_fields.items():
            add_field_flag(group, name, field)
        return
    envs = ", ".join(alias(e) for e in ENTRY_POINTS)
    group = parser.add_argument_group(
        f"environment options ({envs}; `--env NAME --help` lists one env's options and defaults)"
    )
    fields: dict[str, list[tuple[str, Any]]] = {}
    for env_id in ENTRY_POINTS:
        for name, field in env_class(env_id).config_model.model_fields.items():
            fields.setdefault(name, []).append((alias(env_id), field))
    for name, owners in fields.items():
        field = owners[0][1]
        texts = {" ".join((f.description or "").split()) for _, f in owners} - {""}
        description = texts.pop() if len(texts) == 1 else ""  # env-specific wording: see --env X --help
        choices: list[Any] = []
        for _, f in owners:
            choices += [c for c in literal_choices(f.annotation) if c not in choices]
        parts = [description] if description else []
        if any(literal_choices(f.annotation) != choices for _, f in owners):
            parts.append(
                "; ".join(f"{a}: {', '.join(map(str, literal_choices(f.annotation)))}" for a, f in owners)
            )
        defaults = [(a, default_text(f)) for a, f in owners]
        if len(owners) > 1 and len({d for _, d in defaults}) == 1 and defaults[0][1]:
            parts.append(f"(default: {defaults[0][1]})")
        elif any(d for _, d in defaults):
            parts.append(f"(default: {', '.join(f'{a} {d}' for a, d in defaults if d)})")
        if len(owners) < len(ENTRY_POINTS):
            parts.append(f"[{', '.join(a for a, _ in owners)} only]")
        add_field_flag(
            group, name, field, choices=choices or None, helptext=" ".join(parts).replace("%", "%%")
        )


def _env_in_argv(argv: Sequence[str] | None) -> str | None:
    """The env id an ``--env NAME`` on the command line names (None: not given, or not an env)."""
    from sftrl.environments.registry import UnknownEnvError, resolve_env_id

    args = list(argv or [])
    for i, arg in enumerate(args):
        name = arg.partition("=")[2] if arg.startswith("--env=") else None
        if arg == "--env" and i + 1 < len(args):
            name = args[i + 1]
        if name is not None:
            try:
                return resolve_env_id(name)
            except UnknownEnvError:
                return None  # split_config reports it, with the known names
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``agent`` parser; ``argv`` picks the env whose options ``--env NAME`` commands get."""
    parser = _Parser(prog="agent", description="Run, evaluate and train vision-language agents.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    from sftrl.agents.runner import RunConfig
    from sftrl.cli_flags import PATHS_KEY, add_model_flags

    env = _env_in_argv(argv)
    run = sub.add_parser(
        "run",
        help="run episodes of an env with a policy and log them",
        description="Run episodes of an env with a policy and log them. Every option can also be a key "
        "of a --config YAML file (flags override it).",
    )
    run.add_argument("--config", type=Path, help="YAML file whose keys mirror these flags")
    run.set_defaults(**{PATHS_KEY: add_model_flags(run, RunConfig)})
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--tui", action="store_true", help="watch the run live in a terminal UI (sftrl.tui)")
    _env_flags(run, env)

    replay = sub.add_parser("replay", help="browse a logged run in a terminal UI (episodes, turns, maps)")
    replay.add_argument(
        "run_dir",
        type=Path,
        nargs="?",
        metavar="RUN_DIR",
        help="a directory written by `agent run` (default: the newest, runs/latest)",
    )
    replay.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="write the screen to FILE.svg or FILE.png instead of opening the UI (no terminal needed)",
    )
    replay.add_argument(
        "--episode", type=int, metavar="N", help="--export: episode index (default: the first)"
    )
    replay.add_argument("--call", type=int, metavar="K", help="--export: model call 1, 2, … (default: 1)")
    replay.add_argument(
        "--size",
        default="160x50",
        metavar="COLSxROWS",
        help="--export: screen size in cells (default: 160x50)",
    )

    ev = sub.add_parser("eval", help="metrics of a logged run; with two runs, their paired difference")
    ev.add_argument(
        "runs", nargs="*", type=Path, metavar="DIR", help="one or two run directories (default: runs/latest)"
    )
    ev.add_argument("--config", type=Path, help="YAML file whose keys mirror these flags")
    ev.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    ev.add_argument("--bootstrap", type=int, default=argparse.SUPPRESS, help="bootstrap resamples (2000)")
    ev.add_argument(
        "--force",
        action="store_true",
        help="pair two runs that differ in more than one setting (runs of different envs never pair)",
    )

    srv = sub.add_parser("serve", help="start a vLLM OpenAI-compatible server; prints its base URL")
    srv.add_argument("--model", required=True, help="model directory or hub id")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 for other machines)")
    srv.add_argument("--max-model-len", type=int, default=None)
    srv.add_argument("--dtype", default=None, help="auto | bfloat16 | float16 | float32")
    srv.add_argument("--tensor-parallel-size", type=int, default=None)
    srv.add_argument("--limit-mm-per-prompt", default=None, metavar="image=N", help="e.g. image=4")
    srv.add_argument("--tool-call-parser", default=None, help="enables tool calling, e.g. hermes")
    srv.add_argument("--served-model-name", default=None, help="name clients pass as --model")
    srv.add_argument("--vllm-command", default=None, help='server command (default "vllm serve")')
    srv.add_argument("--ready-timeout", type=float, default=1800.0, help="seconds to wait for /health")
    srv.add_argument("--grace-period", type=float, default=30.0, help="seconds between stop and kill")
    srv.add_argument("extra", nargs=argparse.REMAINDER, help="-- extra arguments passed to vLLM")

    routes = sub.add_parser("routes", help="V-IRL route sets: list a split, collect or import routes")
    rsub = routes.add_subparsers(dest="routes_command", required=True, parser_class=_Parser)
    rl_list = rsub.add_parser("list", help="the fixed route set of a split (as in the shipped manifest)")
    rl_list.add_argument("--split", default="id", help="id | rule-ood | visual-ood | nyc-unseen")
    rl_list.add_argument("--city", default=None, help="city bundle(s), default from the split")
    rl_list.add_argument("--num-routes", type=int, default=100)
    rl_list.add_argument("--route-seed", type=int, default=0)
    rl_list.add_argument("--json", action="store_true")
    rl_imp = rsub.add_parser(
        "import",
        help="convert an SFTvsRL dataset's gps_pano_mapping.pkl once to gps_pano_mapping.json "
        "(read safely, bounded); later runs then read no pickle at all",
    )
    rl_imp.add_argument("root", type=Path, metavar="DIR", help="dataset root (holds gps_pano_mapping.pkl)")
    rl_imp.add_argument("--overwrite", action="store_true", help="replace an existing gps_pano_mapping.json")
    rl_col = rsub.add_parser(
        "collect", help="write routes in the official SFTvsRL format (route_infos.json + manifest)"
    )
    rl_col.add_argument(
        "--city",
        required=True,
        help="bundle source: nyc, helsinki, baltimore, singapore; google source: any place Google geocodes",
    )
    rl_col.add_argument(
        "--source",
        choices=["bundle", "google"],
        default="bundle",
        help="bundle: offline from a shipped city (default); google: live Google Maps Platform APIs "
        "(V-IRL's recipe; key from $GOOGLE_MAPS_API_KEY, billed)",
    )
    rl_col.add_argument("--center", default=None, metavar="LAT,LNG", help="google: search here, not the city")
    rl_col.add_argument(
        "--place-types",
        default=None,
        metavar="T1,T2",
        help="google: destination Places types (default: V-IRL's 20, e.g. bank,cafe,pharmacy)",
    )
    rl_col.add_argument(
        "--maps-base-url",
        default=None,
        metavar="URL",
        help="google: API base URL (default https://maps.googleapis.com; a proxy or a local stand-in)",
    )
    rl_col.add_argument("--n", type=int, required=True, help="number of routes")
    rl_col.add_argument("--out", type=Path, required=True, help="output directory")
    rl_col.add_argument("--route-seed", type=int, default=0, help="seed: same seed, same files (0)")
    rl_col.add_argument("--max-route-m", type=float, default=150.0, help="longest route in metres (150)")
    rl_col.add_argument(
        "--max-start-m", type=float, default=150.0, help="start within this of the goal (150)"
    )
    rl_col.add_argument("--split", default=None, help="take a split's fixed set: id | rule-ood | nyc-unseen")
    rl_col.add_argument("--views", type=Path, default=None, metavar="DIR", help="also render panoramas here")
    rl_col.add_argument("--views-at", choices=["path", "milestones"], default="path")
    rl_col.add_argument("--pano-width", type=int, default=1024, help="panorama width in pixels (1024)")
    rl_col.add_argument("--view-provider", choices=["synthetic"], default="synthetic")
    rl_col.add_argument("--json", action="store_true", help="print the manifest as JSON")
    rl_col.add_argument("--quiet", action="store_true", help="no progress bar")

    tiny = sub.add_parser(
        "tiny-model",
        help="write a tiny model offline: random weights, or the shipped stage-0 model (tests, demos)",
    )
    tiny.add_argument(
        "--kind",
        choices=("text", "vision", "char", "char-vision", *_SHIPPED_KINDS),
        default="text",
        help="text / vision: BPE Llama / Qwen2-VL; char: character-level Llama for compact prompts; "
        "char-vision: the char Llama + a tiny CLIP image encoder (LLaVA); "
        "stage0 / stage0-virl: a copy of the shipped, trained GP-L / V-IRL-L stage-0 char Llama; "
        "stage0-gpvl / stage0-virlvl: the shipped, trained GP-VL / V-IRL-VL stage-0 char LLaVA "
        "(agent repro's foundations)",
    )
    tiny.add_argument("--out", type=Path, required=True, help="directory to write the model to")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--hidden", type=int, default=None, help="char: hidden size (128)")
    tiny.add_argument("--layers", type=int, default=None, help="char: decoder layers (4)")
    tiny.add_argument("--heads", type=int, default=None, help="char: attention heads (4)")
    tiny.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")

    train = sub.add_parser("train", help="post-train a model: sft | rl")
    tsub = train.add_subparsers(dest="train_command", required=True, parser_class=_Parser)
    from sftrl.training.rl_train import RLRunConfig

    trl = tsub.add_parser(
        "rl",
        help="multi-turn RL with verifier rewards (PPO as the paper, or GRPO)",
        description="Multi-turn RL with verifier rewards. Every option can also be a key of a --config "
        "YAML file (RL hyper-parameters flat or under `rl:`; flags override the file).",
    )
    trl.add_argument("--config", type=Path, help="YAML file whose keys mirror these flags")
    paths = add_model_flags(
        trl, RLRunConfig, skip={"env_options"}, aliases={"updates": ["--max-steps", "--updates"]}
    )
    trl.set_defaults(**{PATHS_KEY: paths})
    trl.add_argument(
        "--trainer",
        choices=("sftrl", "trl"),
        default=argparse.SUPPRESS,
        help="sftrl: our learner (PPO/GRPO, default); trl: TRL's GRPOTrainer (GRPO, text models)",
    )
    trl.add_argument("--json", action="store_true", help="print the last update's metrics as JSON")
    _env_flags(trl, env)
    _add_sft_parsers(sub, tsub)

    from sftrl.repro.command import add_arguments as _repro_arguments

    _repro_arguments(
        sub.add_parser("repro", help="reproduce SFT-memorizes/RL-generalizes at small scale (CPU)")
    )
    return parser


def _version() -> str:
    from sftrl import __version__

    return f"sftrl {__version__}"


def _run_values(ns: argparse.Namespace) -> dict[str, Any]:
    from sftrl.cli_flags import model_values

    file_values = load_yaml(ns.config) if ns.config else {}
    return model_values(ns, file_values, exclude={"command", "config", "json", "quiet", "tui"})


def cmd_run(ns: argparse.Namespace) -> int:
    from sftrl.agents.runner import run_async, split_config

    run, env_cfg = split_config(_run_values(ns))
    if getattr(ns, "tui", False):
        return _run_with_tui(run, env_cfg)
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

        terminated: list[bool] = []
        try:
            running = run_async(run, env_cfg, on_progress=on_progress)
            summary = asyncio.run(_until_sigterm(running, terminated))
        except asyncio.CancelledError:
            if not terminated:
                raise
            print("agent: terminated (logged episodes are kept; continue with --resume)", file=sys.stderr)
            return 143
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    else:
        _print_summary(summary)
        _print_next_steps(summary, run)
    return 0


def _print_next_steps(summary: dict[str, Any], run: Any) -> None:
    """Where the run is and what to do with it next (the commands apply to this run as it is)."""
    out = summary.get("out") or str(run.out)
    lines = [f"run directory: {out}", f"  agent replay {out}        # browse it in the terminal UI"]
    lines.append(f"  agent eval {out}          # metrics with 95% intervals, recomputed from the log")
    if summary.get("success_rate", 0) > 0:
        lines.append(f"  agent data sft {out} --out data/sft   # solved episodes -> an SFT dataset")
    if run.policy == "hf" and run.sampling.logprobs and run.model:
        lines.append(
            f"  agent train rl --episodes {out} --model {run.model} --out ckpt/rl   # RL on these episodes"
        )
    print("\n".join(lines))


async def _until_sigterm(coro: Any, terminated: list[bool]) -> Any:
    """Await ``coro``; SIGTERM cancels it the way asyncio cancels a run on Ctrl-C."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None

    def on_term() -> None:
        terminated.append(True)
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_term)
    except (NotImplementedError, RuntimeError, ValueError):  # no signals here (Windows, a thread)
        return await coro
    try:
        return await coro
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _need_terminal(what: str) -> None:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CLIError(f"{what} needs an interactive terminal (stdin and stdout must be a TTY)")


def _run_with_tui(run: Any, env_cfg: dict[str, Any]) -> int:
    _need_terminal("agent run --tui")
    from sftrl.agents.factory import make_policy
    from sftrl.agents.runner import check_run_dir, with_run_dir
    from sftrl.tui.app import EXIT_CANCELLED, run_tui

    # A used run directory, a missing model or API key fail here, in one line, before the UI starts.
    check_run_dir(run, env_cfg)
    policy = make_policy(run)
    run = with_run_dir(run)
    status, live = run_tui(run, env_cfg, policy=policy)
    # The terminal is ours again: repeat the outcome where it stays visible.
    if live.summary is not None:
        _print_summary(live.summary)
        _print_next_steps(live.summary, run)
    elif live.error is not None:
        print(f"agent: error: {live.error}", file=sys.stderr)
    elif status == EXIT_CANCELLED:
        print("agent: run cancelled (logged episodes are kept; continue with --resume)", file=sys.stderr)
    return status


def _run_dir(path: Path | None, check: bool = True) -> Path:
    """A run directory argument; None: the newest run (runs/latest)."""
    from sftrl.agents.run_dirs import RunDirError, resolve_run_dir

    try:
        run_dir = resolve_run_dir(path)
    except RunDirError as exc:
        raise CLIError(str(exc)) from exc
    if check and not run_dir.is_dir():
        raise CLIError(f"{path} is not a run directory")
    return run_dir


def cmd_replay(ns: argparse.Namespace) -> int:
    run_dir = _run_dir(ns.run_dir)
    from sftrl.agents.trajectory import read_episodes

    read_episodes(run_dir)  # a missing or corrupt log fails here, in one line, before the UI starts
    if ns.export is not None:
        from sftrl.tui.export import ExportError, export_replay

        try:
            cols, _, rows = ns.size.lower().partition("x")
            size = (int(cols), int(rows))
        except ValueError:
            raise CLIError(f"--size expects COLSxROWS, e.g. 160x50, got {ns.size!r}") from None
        if not (40 <= size[0] <= 1000 and 12 <= size[1] <= 500):
            raise CLIError("--size must be between 40x12 and 1000x500 cells")
        try:
            out = export_replay(run_dir, ns.export, episode=ns.episode, call=ns.call, size=size)
        except (ExportError, OSError) as exc:
            raise CLIError(str(exc)) from exc
        print(f"wrote {out}")
        return 0
    if ns.episode is not None or ns.call is not None:
        raise CLIError("--episode and --call go with --export")
    _need_terminal("agent replay")
    from sftrl.tui.app import replay_tui

    return replay_tui(run_dir)


def _print_summary(summary: dict[str, Any], title: str = "run summary") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key in (
        "env_id",
        "policy",
        "episodes",
        "errors",
        "error_causes",
        "not_logged",
        "success_rate",
        "success_ci95",
        "mean_reward",
        "mean_turns",
        "recognition_accuracy",
        "step_accuracy",
        "first_try_step_accuracy",
        "verdicts",
        "nonfinite_logprobs",
        "log_notes",
        "out",
    ):
        if key in summary:
            value = summary[key]
            if isinstance(value, float):
                value = f"{value:.4f}"
            elif isinstance(value, list):
                value = "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
            elif key == "error_causes":  # one line per cause: how many, and one example message
                value = "\n".join(f"{c}: {e['count']} (e.g. {e['example']})" for c, e in value.items())
            table.add_row(key, str(value))
    Console().print(table)


def cmd_eval(ns: argparse.Namespace) -> int:
    from sftrl.agents.metrics import paired_difference, summarize
    from sftrl.agents.runner import load_run

    file_values = load_yaml(ns.config) if ns.config else {}
    as_json = bool(getattr(ns, "json", file_values.get("json", False)))
    n_boot = int(getattr(ns, "bootstrap", file_values.get("bootstrap", 2000)))
    if len(ns.runs) > 2:
        raise CLIError("eval takes one run directory, or two to compare")
    ns.runs = [_run_dir(p, check=False) for p in ns.runs] if ns.runs else [_run_dir(None)]
    loaded = [load_run(p) for p in ns.runs]
    runs = [records for records, _ in loaded]
    result: dict[str, Any] = {
        "runs": [
            dict(summarize(r, planned=rep["planned"]), path=str(p), ignored_records=_ignored(rep))
            for (r, rep), p in zip(loaded, ns.runs, strict=True)
        ]
    }
    if len(runs) == 2:
        differs = _pairable(ns.runs, runs, force=bool(ns.force or file_values.get("force")))
        try:
            result["paired"] = paired_difference(runs[0], runs[1], n_boot=n_boot)
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
        result["paired"]["differs"] = differs
    if as_json:
        print(json.dumps(result if len(runs) == 2 else result["runs"][0], sort_keys=True))
        return 0
    for summary in result["runs"]:
        _print_summary(summary, title=summary["path"])
        print(_coverage_line(summary), file=sys.stderr)
    if "paired" in result:
        p = result["paired"]
        lo, hi = p["success_diff_ci95"]
        changes = "; ".join(c for group in p["differs"].values() for c in group) or "nothing (same config)"
        print(f"compared: {changes}")
        print(
            f"paired over {p['paired_episodes']} seeds: success {p['success_rate_a']:.3f} → "
            f"{p['success_rate_b']:.3f}, diff {p['success_diff']:+.3f} (95% CI {lo:+.3f} … {hi:+.3f})"
        )
    return 0


def _pairable(paths: list[Path], runs: list[list[Any]], force: bool) -> dict[str, list[str]]:
    """What differs between two runs; refuses runs of different envs, and (without --force) any pair
    differing in more than one setting, naming every difference."""
    from sftrl.agents.runner import CONFIG_FILE, config_differences

    envs = [next((r.env_id for r in recs), None) for recs in runs]
    if None not in envs and envs[0] != envs[1]:
        raise CLIError(
            f"cannot pair runs of different envs: {paths[0]} is {envs[0]}, {paths[1]} is {envs[1]}"
        )
    configs = []
    for path in paths:
        cfg_path = path / CONFIG_FILE
        if not cfg_path.is_file():
            if force:
                return {}
            raise CLIError(
                f"{cfg_path} is missing: what differs cannot be checked (pass --force to pair anyway)"
            )
        configs.append(load_yaml(cfg_path))
    differs = config_differences(configs[0], configs[1])
    if len(differs) > 1 and not force:
        listed = "; ".join(c for group in differs.values() for c in group)
        raise CLIError(
            f"{paths[0]} and {paths[1]} differ in more than one setting ({listed}); "
            "pass --force to pair them anyway"
        )
    return differs


def _ignored(report: dict[str, Any]) -> dict[str, int]:
    return {k: report[k] for k in ("duplicates", "out_of_range") if report[k]}


def _coverage_line(summary: dict[str, Any]) -> str:
    """Which episodes the success rate covers, and why the others are left out."""
    planned = summary.get("planned")
    line = f"success rate over {summary['episodes']}"
    line += f" of {planned} planned episodes" if planned else " episodes (config.yaml missing: plan unknown)"
    why = []
    if summary["errors"]:
        why.append(f"{summary['errors']} ended in an error (agent run --resume retries them)")
    if summary.get("not_logged"):
        why.append(f"{summary['not_logged']} not logged (agent run --resume runs them)")
    ignored = summary.get("ignored_records", {})
    if ignored.get("duplicates"):
        why.append(f"{ignored['duplicates']} duplicate records ignored (one per episode index counts)")
    if ignored.get("out_of_range"):
        why.append(f"{ignored['out_of_range']} records with an index outside the plan ignored")
    return line + ("; " + "; ".join(why) if why else "")


def cmd_routes(ns: argparse.Namespace) -> int:
    if ns.routes_command == "collect":
        return _cmd_routes_collect(ns)
    if ns.routes_command == "import":
        return _cmd_routes_import(ns)
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


def _cmd_routes_import(ns: argparse.Namespace) -> int:
    """``routes import DIR``: the panorama mapping pickle, read by the bounded reader, as plain JSON."""
    from sftrl.street_view.safe_pickle import UnsafePickleError, load_pano_mapping, write_pano_mapping_json

    source, target = ns.root / "gps_pano_mapping.pkl", ns.root / "gps_pano_mapping.json"
    if target.exists() and not ns.overwrite:
        raise CLIError(f"{target} exists (pass --overwrite to replace it)")
    try:
        mapping = load_pano_mapping(source)
    except (FileNotFoundError, UnsafePickleError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if not mapping:
        raise CLIError(f"{source} holds no panoramas")
    write_pano_mapping_json(mapping, target)
    print(
        f"wrote {len(mapping)} panoramas to {target}; --panorama-dir {ns.root} now reads it, not the pickle"
    )
    return 0


def _collect_google(ns: argparse.Namespace, on_progress: Any) -> Any:
    """``routes collect --source google``: V-IRL's recipe with the live APIs (MapsError -> CLIError)."""
    from sftrl.environments.virl.collect_live import PLACE_TYPES_20, collect_live_routes, parse_center
    from sftrl.street_view.google_maps import GoogleMapsClient, MapsError

    center = parse_center(ns.center) if ns.center else None
    types = PLACE_TYPES_20
    if ns.place_types:
        types = tuple(t.strip() for t in ns.place_types.split(",") if t.strip())
    client = GoogleMapsClient(base_url=ns.maps_base_url) if ns.maps_base_url else GoogleMapsClient()
    try:
        return collect_live_routes(
            ns.city,
            ns.n,
            ns.out,
            client=client,
            center=center,
            place_types=types,
            route_seed=ns.route_seed,
            max_route_m=ns.max_route_m,
            max_start_m=ns.max_start_m,
            progress=on_progress,
        )
    except MapsError as exc:
        raise CLIError(str(exc)) from None


def _cmd_routes_collect(ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from sftrl.environments.virl.collect import collect_routes
    from sftrl.street_view.city import UnknownCityError

    if ns.n < 1:
        raise CLIError("--n must be at least 1")
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=ns.quiet or ns.json,
    )
    tasks: dict[str, Any] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(f"{stage} · {ns.city}", total=total)
        progress.update(tasks[stage], completed=done, total=total)

    google = ns.source == "google"
    if google and (ns.split or ns.views):
        raise CLIError("--split and --views work with --source bundle only")
    if not google and (ns.center or ns.place_types or ns.maps_base_url):
        raise CLIError("--center, --place-types and --maps-base-url need --source google")
    try:
        with progress:
            if google:
                result: Any = _collect_google(ns, on_progress)
            else:
                result = collect_routes(
                    ns.city,
                    ns.n,
                    ns.out,
                    route_seed=ns.route_seed,
                    max_route_m=ns.max_route_m,
                    max_start_m=ns.max_start_m,
                    split=ns.split,
                    views_dir=ns.views,
                    views_at=ns.views_at,
                    pano_width=ns.pano_width,
                    progress=on_progress,
                )
    except (UnknownCityError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    if ns.json:
        print(json.dumps(result.manifest, ensure_ascii=False))
        return 0
    note = f" ({len(result.routes)} of {ns.n} requested)" if len(result.routes) < ns.n else ""
    out = Console()
    out.print(f"wrote {len(result.routes)} routes{note} to {result.routes_file}")
    if google:
        out.print(f"{result.requests_sent} Google Maps Platform requests (retries included)")
    out.print(f"manifest (fingerprints, sources, licences): {result.manifest_file}")
    if result.manifest["views"]:
        v = result.manifest["views"]
        out.print(f"wrote {v['panoramas']} panoramas to {v['dir']} (use --panorama-dir {v['dir']})")
    return 0


def train_rl_config(ns: argparse.Namespace) -> tuple[str, Any]:
    """(trainer, validated RLRunConfig) from ``agent train rl``'s flags and --config file."""
    from pydantic import ValidationError

    from sftrl.agents.runner import split_config
    from sftrl.cli_flags import model_values
    from sftrl.training.rl_train import RLRunConfig

    file_values = load_yaml(ns.config) if ns.config else {}
    values = model_values(ns, file_values, exclude={"command", "train_command", "config", "json"})
    trainer = values.pop("trainer", "sftrl")
    if trainer not in ("sftrl", "trl"):
        raise CLIError(f"unknown trainer {trainer!r}; choose sftrl or trl")
    rl = dict(values.pop("rl", None) or {})  # RLConfig fields: flat flags/keys, or the YAML's `rl:`
    if "seed" in values:
        rl.setdefault("seed", values["seed"])  # --seed seeds the learner too, unless --rl-seed is given
    if trainer == "trl":
        rl.setdefault("algo", "grpo")  # TRL's trainer is GRPO; an explicit --algo ppo is refused below
    run_values = {k: values.pop(k) for k in list(values) if k in RLRunConfig.model_fields}
    # Whatever is left are env options: validate them with the env's own model.
    _, env_cfg = split_config({"env": run_values.get("env", "gp"), **values})
    explicit = {k: env_cfg[k] for k in values}
    if "model" not in run_values or "out" not in run_values:
        raise CLIError("train rl needs --model PATH and --out DIR")
    try:
        cfg = RLRunConfig.model_validate({**run_values, "env_options": explicit, "rl": rl})
    except ValidationError as exc:
        raise CLIError(validation_message(exc)) from exc
    return trainer, cfg


def cmd_train(ns: argparse.Namespace) -> int:
    if ns.train_command == "sft":
        return _cmd_train_sft(ns)
    if ns.train_command != "rl":  # pragma: no cover - argparse restricts the choices
        raise CLIError(f"unknown train command {ns.train_command!r}")
    from sftrl.training.rl_train import train_rl

    trainer, cfg = train_rl_config(ns)
    from rich.console import Console

    err = Console(stderr=True)
    from sftrl.training.rl import LogprobMismatchError
    from sftrl.training.tracking import DistributedSetupError
    from sftrl.training.transitions import TransitionError
    from sftrl.training.weight_sync import WeightSyncError

    try:
        if trainer == "trl":
            from sftrl.training.trl_grpo import TRLGRPOError, train_rl_trl

            if cfg.rl.algo != "grpo":
                raise CLIError("--trainer trl runs GRPO only (TRL has no PPO trainer); pass --algo grpo")
            if cfg.rollout_policy != "hf":
                raise CLIError("--rollout-policy vllm/vllm-offline is for --trainer sftrl")
            if cfg.async_rollouts:
                raise CLIError("--async-rollouts is for --trainer sftrl (TRL's trainer collects in step)")
            try:
                metrics = train_rl_trl(cfg, progress=lambda msg: err.print(msg))
            except TRLGRPOError as exc:
                raise CLIError(str(exc)) from exc
        else:
            metrics = train_rl(cfg, progress=lambda msg: err.print(msg))
    except TransitionError as exc:
        raise CLIError(str(exc)) from exc
    except (WeightSyncError, LogprobMismatchError, DistributedSetupError) as exc:
        raise CLIError(str(exc)) from exc
    from sftrl.training.tracking import end_processes, leave_helper_process, process_info

    main_process = process_info()[0]
    end_processes()
    if not main_process:
        leave_helper_process()  # under accelerate launch the main process reports for all
    if ns.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        err.print(f"saved to {cfg.out}")
        _next(f"agent run --env {cfg.env} --policy hf --model {cfg.out} --episodes 100   # evaluate it")
    return 0


def cmd_serve(ns: argparse.Namespace) -> int:
    from sftrl.agents.serve import ServeError, serve_from_args

    try:
        return serve_from_args(ns)
    except ServeError as exc:
        raise CLIError(str(exc)) from exc


def cmd_repro(ns: argparse.Namespace) -> int:
    from sftrl.repro.command import run_command

    try:
        return run_command(ns)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def cmd_tiny_model(ns: argparse.Namespace) -> int:
    from sftrl.agents.tiny import TinyModelError, build_tiny_model

    try:
        sizes = {k: getattr(ns, k) for k in ("hidden", "layers", "heads") if getattr(ns, k) is not None}
        if sizes and ns.kind not in ("char", "char-vision"):
            raise CLIError("--hidden/--layers/--heads size the char models only (--kind char, char-vision)")
        if ns.kind in _SHIPPED_KINDS:
            experiment, label, env = _SHIPPED_KINDS[ns.kind]
            out = _copy_stage0(ns.out, experiment, overwrite=ns.overwrite)
            print(f"the shipped {label} stage-0 model copied to {out} (trained; its README.md says how)")
            print(f"  agent run --env {env} --prompt-style compact --policy hf --model {out}")
            return 0
        out = build_tiny_model(ns.kind, ns.out, seed=ns.seed, overwrite=ns.overwrite, **sizes)
    except TinyModelError as exc:
        raise CLIError(str(exc)) from exc
    print(f"tiny {ns.kind} model written to {out} (use: agent run --policy hf --model {out})")
    return 0


_SHIPPED_KINDS = {
    "stage0": ("gp-l-rule", "GP-L", "gp"),
    "stage0-virl": ("virl-l-rule", "V-IRL-L", "virl"),
    "stage0-gpvl": ("gp-vl-visual", "GP-VL", "gp --modality vision --resolution 64"),
    "stage0-virlvl": ("virl-vl-visual", "V-IRL-VL", "virl --modality vision --resolution 32"),
}
"""``agent tiny-model --kind``s that copy a shipped stage-0 model: (experiment, label, env flags)."""


def _copy_stage0(out: Path, experiment: str, *, overwrite: bool) -> Path:
    """Copy an experiment's stage-0 checkpoint shipped in the package (no training, no download)."""
    import shutil

    from sftrl.repro.pipeline import SHIPPED_STAGE0S

    shipped = SHIPPED_STAGE0S[experiment]
    if not (shipped / "config.json").exists():
        raise CLIError(f"this installation has no shipped stage-0 model at {shipped}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CLIError(f"{out} is not empty; pass --overwrite to write into it")
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(shipped.iterdir()):
        if f.is_file():
            shutil.copy2(f, out / f.name)
    return out


def _add_sft_parsers(sub: Any, tsub: Any) -> None:
    """``agent data sft|pairs`` (logged runs -> TRL datasets) and ``agent train sft`` (TRL SFTTrainer)."""
    data = sub.add_parser("data", help="build training datasets from logged runs: sft | pairs")
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    for name, helptext in (
        ("sft", "SFT dataset (TRL conversational format) from logged runs"),
        ("pairs", "DPO preference pairs (failed attempt vs the corrected one) from logged runs"),
    ):
        d = dsub.add_parser(name, help=helptext)
        d.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run dirs (agent run --out)")
        d.add_argument("--out", type=Path, required=True, metavar="DATA_DIR", help="dataset dir to write")
        if name == "sft":
            d.add_argument(
                "--chains",
                choices=("success", "full", "corrected"),
                default="success",
                help="success: solved steps, task prompt -> accepted reply (default); full: with failed "
                "attempts and feedback as context; corrected: only replies correct after feedback",
            )
        d.add_argument("--val-fraction", type=float, default=0.05, help="share of seeds held out (0.05)")
        d.add_argument("--seed", type=int, default=0, help="salt of the seed -> split assignment (0)")
        d.add_argument("--no-dedup", action="store_true", help="keep rows with identical content")
        d.add_argument("--max-episodes", type=int, default=None, help="read at most N episodes in all")
        d.add_argument("--overwrite", action="store_true", help="replace an existing DATA_DIR")
        d.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    from sftrl.cli_flags import PATHS_KEY, add_model_flags
    from sftrl.training.config import SFTTrainConfig

    t = tsub.add_parser(
        "sft",
        help="supervised fine-tuning with TRL's SFTTrainer on an `agent data sft` dir",
        description="Supervised fine-tuning with TRL's SFTTrainer. Every option can also be a key of a "
        "--config YAML file (flags override it).",
    )
    t.add_argument("--config", type=Path, help="YAML file whose keys mirror these flags")
    t.set_defaults(**{PATHS_KEY: add_model_flags(t, SFTTrainConfig)})
    t.add_argument("--json", action="store_true", help="print the final metrics as one JSON object")


def cmd_data(ns: argparse.Namespace) -> int:
    options = {
        "val_fraction": ns.val_fraction,
        "seed": ns.seed,
        "dedup": not ns.no_dedup,
        "max_episodes": ns.max_episodes,
        "overwrite": ns.overwrite,
        "json_output": ns.json,
    }
    if ns.data_command == "sft":
        from sftrl.training.sft_data import data_sft_main

        rc = data_sft_main(ns.runs, ns.out, ns.chains, **options)
        if rc == 0 and not ns.json:
            _next(f"agent train sft --data {ns.out} --model MODEL_DIR --out ckpt/sft   # fine-tune on it")
        return rc
    from sftrl.training.pairs import data_pairs_main

    return data_pairs_main(ns.runs, ns.out, **options)


def _cmd_train_sft(ns: argparse.Namespace) -> int:
    from sftrl.cli_flags import model_values
    from sftrl.training.sft import train_sft_main

    file_values = load_yaml(ns.config) if ns.config else {}
    values = model_values(ns, file_values, exclude={"command", "train_command", "config", "json"})
    missing = [f"--{k}" for k in ("data", "model", "out") if k not in values]
    if missing:
        raise CLIError(f"train sft needs {' '.join(missing)}")
    as_json = ns.json or bool(file_values.get("json", False))
    data, model, out = values.pop("data"), values.pop("model"), values.pop("out")
    rc = train_sft_main(data, model, out, json_output=as_json, **values)
    if rc == 0 and not as_json:
        _next(
            f"agent run --policy hf --model {out} --episodes 100   # evaluate it (with its env's --env)",
            f"agent train rl --model {out} --out ckpt/rl   # RL from it",
        )
    return rc


def _next(*commands: str) -> None:
    """The commands that naturally follow (stderr, with the command's own report)."""
    print("next:\n" + "\n".join(f"  {c}" for c in commands), file=sys.stderr)


COMMANDS = {
    "data": cmd_data,
    "tiny-model": cmd_tiny_model,
    "run": cmd_run,
    "replay": cmd_replay,
    "eval": cmd_eval,
    "routes": cmd_routes,
    "train": cmd_train,
    "serve": cmd_serve,
    "repro": cmd_repro,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args)
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # --help, --version, or a usage error already printed in one line
        return exc.code if isinstance(exc.code, int) else 2
    from sftrl.agents.trajectory import LogError
    from sftrl.environments.registry import UnknownEnvError

    try:
        return COMMANDS[ns.command](ns)
    except (CLIError, ConfigError, LogError, UnknownEnvError) as exc:
        print(f"agent: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not getattr(exc, "fatal", False):
            raise
        # A backend that cannot work at all (bad key, unknown model): one line, logged episodes kept.
        print(f"agent: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("agent: interrupted (logged episodes are kept; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
