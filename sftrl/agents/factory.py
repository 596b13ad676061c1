"""The one place that builds a policy from a run config: ``agent run``, the TUI and the trainers use it.

A backend is named by ``run.policy`` and built by its class's ``from_run_config(run)``; the classes
are imported only when chosen, so ``agent run --policy expert`` never loads torch or an HTTP client.
Backend-specific knowledge stays with the backend classes (class attributes read here), so callers
never branch on backend names themselves.
"""

from __future__ import annotations

import importlib
from typing import Any

from sftrl.agents.baselines import ExpertPolicy, RandomPolicy
from sftrl.agents.policy import Policy
from sftrl.config import ConfigError

# policy name -> "module:Class" with a ``from_run_config(run)`` classmethod.
POLICY_CLASSES: dict[str, str] = {
    "hf": "sftrl.agents.hf_policy:HFPolicy",
    "openai": "sftrl.agents.openai_policy:OpenAIPolicy",
    "vllm": "sftrl.agents.openai_policy:VLLMPolicy",
    "vllm-offline": "sftrl.agents.vllm_offline:VLLMOfflinePolicy",
}
POLICIES = ("expert", "random", *POLICY_CLASSES)
TRAINABLE_POLICY = "hf"
"""The backend whose model the trainers update in-process (``policy.model`` is a torch module)."""


def policy_class(name: str) -> type[Any]:
    """The class behind a model backend name (imported now), or a one-line :class:`ConfigError`."""
    if name not in POLICY_CLASSES:
        raise ConfigError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
    module_name, _, attr = POLICY_CLASSES[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = " (install the GPU extra: pip install 'sftrl[vllm]')" if "vllm" in name else ""
        raise ConfigError(f"--policy {name} is unavailable: {exc}{hint}") from exc
    return getattr(module, attr)


def make_policy(run: Any, *, plain_sampling: bool = False) -> Policy:
    """The policy ``run.policy`` names (a :class:`~sftrl.agents.runner.RunConfig` or any object with
    its fields), built from the run's backend options.

    ``plain_sampling``: the caller scores the logged log-probs as plain ``log_softmax(logits / T)``
    (RL); a backend that would otherwise apply server-side defaults (top-k, repetition penalty) has
    them switched off through its ``PLAIN_SAMPLING_OPTIONS``, unless the run sets them itself.
    """
    if run.policy == "expert":
        try:
            return ExpertPolicy.from_run_config(run)
        except ValueError as exc:
            raise ConfigError(f"--policy expert: {exc}") from exc
    if run.policy == "random":
        return RandomPolicy(seed=run.seed)
    cls = policy_class(run.policy)
    if run.model is None and not getattr(cls, "MODEL_FROM_SERVER", False):
        raise ConfigError(f"--policy {run.policy} needs --model (a model directory, hub id or served name)")
    if plain_sampling and getattr(cls, "PLAIN_SAMPLING_OPTIONS", None):
        options = {**cls.PLAIN_SAMPLING_OPTIONS, **run.policy_options}
        run = run.model_copy(update={"policy_options": options})
    try:
        return cls.from_run_config(run)
    except ConfigError:
        raise  # already names the flag and the fix
    except ValueError as exc:  # bad options, missing model files: the user's to fix
        raise ConfigError(f"--policy {run.policy}: {exc}") from exc


def make_trainable_policy(model: str, **options: Any) -> Any:
    """The in-process policy whose ``model`` a trainer updates (``hf``), built like any other."""
    from sftrl.agents.runner import RunConfig

    run = RunConfig(policy=TRAINABLE_POLICY, model=str(model), policy_options=options)
    return make_policy(run)


async def close_policy(policy: Policy) -> None:
    """Release a backend's resources (HTTP clients, engines) if it holds any."""
    close = getattr(policy, "aclose", None)
    if close is not None:
        await close()
