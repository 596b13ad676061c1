"""Periodic evaluation during training, and the FLOP budget both trainers count the same way.

``--eval-env`` specs name an env and its options (``[NAME=]ENV[:KEY=VALUE,...]``, e.g.
``ood=gp:split=rule-ood,prompt_style=compact,hand_pool=pools/ood.json,pool_draw=by_index,episodes=796``);
run options such as ``episodes``, ``seed`` and ``concurrency`` may be given in the spec too, and
``at=final`` keeps a spec for the run's last evaluation only (e.g. a large held-out set whose subset
is evaluated at every point: the curve stays cheap, the endpoint is measured on everything), and
``temperature=T`` samples at T instead of decoding greedily (e.g. the policy as RL trains it). Each
evaluation plays the specs' episodes with the weights being trained, through the ordinary
runner and agent loop, so every evaluated episode is a normal run directory
(``OUT/eval/step-K/NAME``) that ``agent eval`` reads back; the summary lines go to ``OUT/eval.jsonl``
and a curve to ``OUT/eval_curve.png`` (success vs training FLOPs).

FLOPs: 6·N per token of a forward+backward pass, 2·N per token of a forward-only pass (rollout
generation, scoring), N = the model's parameter count; padding is not counted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EVAL_FILE = "eval.jsonl"
EVAL_DIR = "eval"
EVAL_PNG = "eval_curve.png"


class EvalError(ValueError):
    """An evaluation spec that cannot be used (one line for the CLI)."""


class EvalSpec(BaseModel):
    """One evaluation env: its name in the metrics, and the flat options ``agent run`` would take."""

    model_config = ConfigDict(extra="forbid")

    name: str
    values: dict[str, Any] = Field(default_factory=dict)
    final_only: bool = False
    """``at=final``: evaluated at the run's last evaluation only."""
    temperature: float = 0.0
    """``temperature=T``: sampled at T (default 0: greedy)."""


def parse_eval_env(spec: str) -> EvalSpec:
    """``[NAME=]ENV[:KEY=VALUE,...]`` -> EvalSpec (the name defaults to ENV plus its split)."""
    text = spec.strip()
    name = None
    head, sep, rest = text.partition(":")
    if "=" in head:
        name, _, head = head.partition("=")
        name = name.strip()
    env = head.strip()
    if not env:
        raise EvalError(f"--eval-env {spec!r}: expected [NAME=]ENV[:KEY=VALUE,...]")
    values: dict[str, Any] = {"env": env}
    for item in rest.split(",") if sep and rest.strip() else []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise EvalError(f"--eval-env {spec!r}: {item!r} is not KEY=VALUE")
        values[key.strip().replace("-", "_")] = value.strip()
    at = values.pop("at", "every")
    if at not in ("every", "final"):
        raise EvalError(f"--eval-env {spec!r}: at={at!r}, expected at=every or at=final")
    try:
        temperature = float(values.pop("temperature", 0.0))
    except ValueError:
        temperature = -1.0
    if not 0.0 <= temperature < float("inf"):
        raise EvalError(f"--eval-env {spec!r}: temperature must be a number >= 0")
    if name is None:
        name = env + (f"-{values['split']}" if "split" in values else "")
    if not name or any(c in name for c in "/\\ "):
        raise EvalError(f"--eval-env {spec!r}: the name must be a plain word")
    return EvalSpec(name=name, values=values, final_only=at == "final", temperature=temperature)


def validate_specs(specs: list[EvalSpec]) -> None:
    """Check every spec against the env's and the runner's config models before training starts."""
    from sftrl.agents.runner import split_config
    from sftrl.config import ConfigError

    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise EvalError(f"--eval-env names must differ (got {', '.join(names)}); prefix them with NAME=")
    for s in specs:
        try:
            split_config({**s.values, "out": "unused"})
        except ConfigError as exc:
            raise EvalError(f"--eval-env {s.name}: {exc}") from None


class FlopCounter:
    """Training compute as the experiment counts it (see the module docstring)."""

    def __init__(self, n_params: int, total: float = 0.0) -> None:
        self.n_params = n_params
        self.total = total

    def train(self, tokens: float) -> None:
        self.total += 6.0 * self.n_params * tokens

    def forward(self, tokens: float) -> None:
        self.total += 2.0 * self.n_params * tokens


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def evaluate(
    policy: Any,
    specs: list[EvalSpec],
    out: Path,
    *,
    step: int,
    flops: float,
    episodes: int,
    seed: int,
    max_new_tokens: int,
    final: bool = False,
) -> dict[str, Any]:
    """Play every spec with ``policy`` (greedily unless the spec sets a temperature); append one line
    to ``out/eval.jsonl`` and return it.

    A spec's own ``episodes`` / ``seed`` override the defaults given here; ``at=final`` specs are
    played only when ``final`` (the run's last evaluation).
    """
    from sftrl.agents.policy import SamplingParams
    from sftrl.agents.runner import RunConfig, run_async, split_config

    model = getattr(policy, "model", None)
    was_training = bool(getattr(model, "training", False))
    if model is not None:
        model.eval()
    # The logs name the weights evaluated (this run at this step), not the model the run started from.
    base_name = getattr(policy, "model_name", None)
    if base_name is not None:
        policy.model_name = f"{out}@step-{step}"
    row: dict[str, Any] = {"step": step, "flops": flops}
    t0 = time.perf_counter()
    try:
        for spec in specs:
            if spec.final_only and not final:
                continue
            values = {"episodes": episodes, "seed": seed, **spec.values}
            n = int(values["episodes"])
            values["concurrency"] = values.get("concurrency") or min(n, getattr(policy, "max_batch_size", 8))
            # A spec that asks for more episodes at once than the policy batches gets batches that big
            # (greedy replies do not depend on the batch; larger batches decode faster per episode).
            batch_size = getattr(policy, "max_batch_size", None)
            if batch_size is not None:
                policy.max_batch_size = max(batch_size, int(values["concurrency"]))
            values["out"] = out / EVAL_DIR / f"step-{step:06d}" / spec.name
            values["resume"] = values["out"].exists()
            run, env_cfg = split_config(values)
            run = RunConfig.model_validate(
                {
                    **run.model_dump(),
                    "policy": "hf",
                    # Per-call sampling seeds from the run seed (and episode, call): a sampled spec
                    # draws the same numbers at every evaluation, whatever the policy object's own RNG.
                    "sampling": SamplingParams(
                        temperature=spec.temperature, max_new_tokens=max_new_tokens, seed=run.seed
                    ),
                }
            )
            try:
                summary = asyncio.run(run_async(run, env_cfg, policy=policy))
            finally:
                if batch_size is not None:
                    policy.max_batch_size = batch_size
            row[spec.name] = {
                k: summary.get(k)
                for k in (
                    "episodes",
                    "errors",
                    "success_rate",
                    "first_try_success_rate",
                    "mean_reward",
                    "recognition_accuracy",
                    "landmark_recognition_accuracy",
                    "step_accuracy",
                    "first_try_step_accuracy",
                    "verdicts",
                    "out",
                )
                if k in summary
            }
    finally:
        if model is not None and was_training:
            model.train()
        if base_name is not None:
            policy.model_name = base_name
    row["seconds"] = round(time.perf_counter() - t0, 3)
    with (out / EVAL_FILE).open("a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
    return row


def summary_line(row: dict[str, Any]) -> str:
    """``NAME success  NAME success ...`` of one evaluation row (the specs it played), with each
    spec's recognition / per-step accuracy where its env reports one."""
    parts = []
    for k, v in row.items():
        if isinstance(v, dict):
            extra = "".join(
                f" ({label} {v[m]:.3f})"
                for m, label in (("recognition_accuracy", "recognition"), ("step_accuracy", "steps"))
                if v.get(m) is not None
            )
            parts.append(f"{k} {v['success_rate']:.3f}{extra}")
    return "  ".join(parts)


def read_evals(out: Path) -> list[dict[str, Any]]:
    path = out / EVAL_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_evals(out: Path, title: str) -> Path | None:
    """Success rate of each eval env against training FLOPs (the paper's Fig. 5 axes)."""
    rows = read_evals(out)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, dict)))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in names:
        pts = [(r["flops"], r[name]["success_rate"]) for r in rows if isinstance(r.get(name), dict)]
        # A spec evaluated once (at=final) is a point, not a line.
        ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) > 1 else "D", ms=3, label=name
        )
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("success rate")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = out / EVAL_PNG
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def budget_eval_callback(
    cfg: Any,
    specs: list[EvalSpec],
    progress: Callable[[str], None],
    *,
    out: Path,
    model_name: str,
    seed: int,
    flops: Callable[[Any, int], float],
    steps_per_point: int = 1,
    on_eval: Callable[[dict[str, Any], Any], None] | None = None,
) -> Any:
    """A ``transformers.TrainerCallback`` for the TRL trainers (``train sft``, ``train rl --trainer
    trl``) that applies ``cfg``'s :class:`~sftrl.training.config.BudgetEvalOptions`: stop once past
    ``max_flops`` and evaluate ``specs`` at the start, every ``eval_every`` points, each time another
    ``eval_flops`` have passed, and at the end.

    A point is ``steps_per_point`` optimizer steps (1 for SFT; an RL update is ``--ppo-epochs``
    steps): evaluations and the budget check happen only between points, and ``eval.jsonl`` rows are
    labelled with the point. ``flops(state, n_params)`` is the training compute so far. ``on_eval``
    gets each evaluation row and the trainer state (e.g. for trackers). One process evaluates (every
    data-parallel rank has the same weights)."""
    from transformers import TrainerCallback

    class _BudgetEval(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.n = 0
            self.last_eval: int | None = None
            self.next_flops: float | None = None

        def flops(self, state: Any) -> float:
            return flops(state, self.n)

        def _eval(self, state: Any, model: Any, processing_class: Any, final: bool = False) -> None:
            point = state.global_step // steps_per_point
            if not specs or self.last_eval == point or not state.is_world_process_zero:
                return
            from sftrl.agents.hf_policy import HFPolicy

            policy = HFPolicy.from_model(
                model, processing_class, name=model_name, max_batch_size=64, seed=seed
            )
            row = evaluate(
                policy,
                specs,
                out,
                step=point,
                flops=self.flops(state),
                episodes=cfg.eval_episodes,
                seed=cfg.eval_seed,
                max_new_tokens=cfg.eval_max_new_tokens,
                final=final,
            )
            self.last_eval = point
            if on_eval is not None:
                on_eval(row, state)
            label = "step" if steps_per_point == 1 else "update"
            progress(f"eval {label} {point}: {summary_line(row)}")

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self.n = n_params(model)
            self.next_flops = cfg.eval_flops
            if cfg.eval_flops:
                while self.next_flops <= self.flops(state):
                    self.next_flops += cfg.eval_flops
            if state.global_step == 0 and cfg.eval_at_start:
                self._eval(state, model, kw.get("processing_class"))

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if state.global_step % steps_per_point:
                return  # inside a point (an RL update's later epochs): neither stop nor evaluate
            spent = self.flops(state)
            if cfg.max_flops is not None and spent >= cfg.max_flops:
                control.should_training_stop = True  # the final evaluation runs in on_train_end
                return
            due = bool(cfg.eval_every and (state.global_step // steps_per_point) % cfg.eval_every == 0)
            if self.next_flops is not None and spent >= self.next_flops:
                due = True
                while self.next_flops <= spent:
                    self.next_flops += cfg.eval_flops or spent
            if due and state.global_step < state.max_steps:  # the last evaluation runs in on_train_end
                self._eval(state, model, kw.get("processing_class"))

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self._eval(state, model, kw.get("processing_class"), final=True)

    return _BudgetEval()
