"""Push the trainer's weights to the vLLM engines that roll out, after each RL update.

Two ways, one interface (:class:`WeightSync`):

* :class:`VLLMServerWeightSync` — vLLM OpenAI servers (replicas, possibly on other GPUs or nodes):
  the model is saved with ``save_pretrained`` to a directory every server can read (``OUT/live-weights``)
  and each replica is asked, through its dev endpoint ``POST /collective_rpc``, to run the workers'
  ``reload_weights(weights_path=...)`` (vLLM's in-place reload), then ``POST /reset_prefix_cache`` so no
  KV block computed with the old weights is reused. The dev endpoints exist only when the server was
  started with ``VLLM_SERVER_DEV_MODE=1``; :meth:`VLLMServerWeightSync.check` says so up front.
* :class:`VLLMEngineWeightSync` — the in-process engine of
  :class:`~sftrl.agents.vllm_offline.VLLMOfflinePolicy`: the state dict goes straight to the workers'
  ``reload_weights(weights_iterator=...)`` through ``LLM.collective_rpc`` (no disk), when the engine runs
  in this process; an engine with worker processes reloads from disk like a server.

The weights reach vLLM in checkpoint (transformers) format: vLLM's ``load_weights`` does the renaming,
fusing (qkv, gate/up) and sharding, so any architecture vLLM can load from a checkpoint works.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import requests

from sftrl.scrub import scrub

LIVE_WEIGHTS_DIR = "live-weights"
RELOAD_METHOD = "reload_weights"
EXTENSION_RELOAD_METHOD = "sftrl_reload_weights"
WORKER_EXTENSION = "sftrl.training.weight_sync.VLLMWorkerExtension"
# reset_prefix_cache answers success=false while blocks are still held (requests finishing): retry.
_RESET_TRIES = 20


class VLLMWorkerExtension:
    """Mixed into vLLM's workers by ``--worker-extension-cls sftrl.training.weight_sync.VLLMWorkerExtension``.

    ``sftrl_reload_weights`` is vLLM's in-place ``reload_weights`` plus one repair: a layer whose
    weight is TIED to another's (``lm_head`` = ``embed_tokens``, as in Qwen2.5 and Llama-3.2 small
    models) receives no checkpoint tensor of its own, so vLLM only copies the new values into the shared
    storage and skips that layer's post-load processing. On vLLM's CPU backend that processing is where
    the GEMM weights are pre-packed, so ``lm_head`` would go on computing logits with the OLD weights.
    Re-running the processing of every tied layer fixes it (on GPUs it is a no-op). Needs sftrl
    importable in the server's environment; imports nothing heavy here.
    """

    model_runner: Any

    def sftrl_weight_sync_version(self) -> int:
        """Lets a trainer see that the extension is loaded (an unknown method is an error)."""
        return 1

    def sftrl_reload_weights(self, weights_path: str) -> dict[str, Any]:
        return reload_in_worker(self, weights_path=weights_path)


def reload_in_worker(worker: Any, **reload_kwargs: Any) -> dict[str, Any]:
    """On a vLLM worker: ``reload_weights(**reload_kwargs)``, then re-process tied layers (see
    :class:`VLLMWorkerExtension`). Also run directly by ``LLM.collective_rpc`` for in-process engines."""
    worker.reload_weights(**reload_kwargs)
    model = worker.model_runner.get_model()
    owners: dict[int, list[Any]] = {}
    for module in model.modules():
        weight = module._parameters.get("weight")
        if weight is not None and weight.numel() > 0:
            owners.setdefault(weight.untyped_storage().data_ptr(), []).append(module)
    reprocessed = 0
    for modules in owners.values():
        if len(modules) < 2:
            continue
        for module in modules:
            method = getattr(module, "quant_method", None)
            if method is not None and hasattr(method, "process_weights_after_loading"):
                method.process_weights_after_loading(module)
                reprocessed += 1
    return {"reprocessed_tied_layers": reprocessed}


class WeightSyncError(RuntimeError):
    """The rollout engines could not be given the new weights (stale rollouts would follow)."""


class WeightSync(Protocol):
    """Makes the rollout engines serve ``model``'s current weights (called after every update)."""

    def check(self) -> None:
        """Fail fast (before any rollout) if a later :meth:`push` cannot work."""

    def push(self, model: Any, step: int) -> None:
        """Send ``model``'s weights; when it returns, new requests are served with them."""


def server_root(base_url: str) -> str:
    """``http://host:8000/v1`` → ``http://host:8000``: the dev endpoints are not under ``/v1``."""
    url = base_url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def save_weights(model: Any, directory: Path, processor: Any = None) -> Path:
    """``save_pretrained`` into ``directory`` atomically (a reader never sees a half-written one)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    # safetensors: what vLLM's default loader reads; one file per shard, config alongside.
    model.save_pretrained(tmp, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(tmp)
    old = directory.with_name(directory.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        shutil.rmtree(old)
    return directory


class VLLMServerWeightSync:
    """Weight sync to vLLM server replicas through their dev endpoints (``VLLM_SERVER_DEV_MODE=1``).

    ``weights_dir`` must be readable by every server at the same path (one machine, or a shared
    filesystem). ``api_key_env`` names the variable holding the servers' ``--api-key`` (if any); the key
    only ever goes into the ``Authorization`` header.
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        weights_dir: Path,
        *,
        processor: Any = None,
        api_key_env: str | None = "VLLM_API_KEY",
        timeout: float = 600.0,
    ) -> None:
        from sftrl.agents.openai_policy import public_url

        if not base_urls:
            raise WeightSyncError("weight sync needs at least one vLLM server URL (--base-url)")
        self.roots = [server_root(u) for u in base_urls]
        self._public = [public_url(r) for r in self.roots]
        self.weights_dir = Path(weights_dir).resolve()
        self.processor = processor
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.pushes: list[dict[str, Any]] = []
        """One entry per push: step, seconds to save, seconds to reload all replicas."""
        self.methods: list[str] | None = None
        """Per replica: the worker method that reloads (set by :meth:`check`)."""

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _headers(self) -> dict[str, str]:
        key = self._key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _dev_mode_error(self, index: int, what: str) -> WeightSyncError:
        return WeightSyncError(
            f"vLLM server {self._public[index]} has no {what} endpoint: start it with "
            "VLLM_SERVER_DEV_MODE=1 in its environment so the trainer can reload its weights "
            "(see docs/gpu_recipe.md, 'Rollouts on vLLM with weight sync')"
        )

    def _request(
        self, client: requests.Session, index: int, method: str, path: str, **kw: Any
    ) -> requests.Response:
        url = f"{self.roots[index]}{path}"
        try:
            response = client.request(method, url, headers=self._headers(), **kw)
        except requests.RequestException as exc:
            raise WeightSyncError(
                f"cannot reach vLLM server {self._public[index]} ({path}): {type(exc).__name__}"
            ) from None
        if response.status_code in (404, 405):
            raise self._dev_mode_error(index, path)
        if response.status_code in (401, 403):
            raise WeightSyncError(
                f"vLLM server {self._public[index]} refused {path} ({response.status_code}): "
                f"set ${self.api_key_env or 'VLLM_API_KEY'} to its --api-key"
            )
        if response.status_code != 200:
            # Masked before it is cut: a server may echo the key, and half a key is still a leak.
            detail = scrub(" ".join(response.text.split()), self._key())[:300]
            raise WeightSyncError(
                f"vLLM server {self._public[index]} answered {response.status_code} to {path}: {detail}"
            )
        return response

    def check(self) -> None:
        """Every replica is up and in dev mode (``GET /is_sleeping`` exists only there); picks the
        reload method: :class:`VLLMWorkerExtension`'s where the server loaded it, else vLLM's own."""
        methods = []
        with _session(min(60.0, self.timeout)) as client:
            for i in range(len(self.roots)):
                self._request(client, i, "GET", "/is_sleeping")
                try:
                    self._request(
                        client, i, "POST", "/collective_rpc", json={"method": "sftrl_weight_sync_version"}
                    )
                    methods.append(EXTENSION_RELOAD_METHOD)
                except WeightSyncError as exc:
                    if "has no" in str(exc) or "cannot reach" in str(exc):
                        raise
                    methods.append(RELOAD_METHOD)  # server without the extension: vLLM's reload
        self.methods = methods

    def push(self, model: Any, step: int) -> None:
        t0 = time.perf_counter()
        path = save_weights(model, self.weights_dir, self.processor)
        t1 = time.perf_counter()
        if self.methods is None:
            self.check()
        assert self.methods is not None
        with _session(self.timeout) as client:
            for i, method in enumerate(self.methods):
                body = {"method": method, "kwargs": {"weights_path": str(path)}}
                self._request(client, i, "POST", "/collective_rpc", json=body)
                self._reset_prefix_cache(client, i)
        self.pushes.append({"step": step, "save_s": t1 - t0, "reload_s": time.perf_counter() - t1})

    def _reset_prefix_cache(self, client: requests.Session, index: int) -> None:
        for _ in range(_RESET_TRIES):
            response = self._request(client, index, "POST", "/reset_prefix_cache")
            try:
                ok = bool(response.json().get("success", True))
            except (ValueError, AttributeError):
                ok = True  # older servers answer with an empty body
            if ok:
                return
            time.sleep(0.25)
        raise WeightSyncError(
            f"vLLM server {self._public[index]} kept its prefix cache (blocks still in use): "
            "requests were still running during the weight update"
        )


def _session(timeout: float) -> requests.Session:
    # A total deadline per call (a stalled or trickling server cannot hold training), no retries:
    # a reload is not idempotent enough to repeat blindly.
    from sftrl.net import DeadlineSession

    return DeadlineSession(timeout=timeout, max_retries=0, deadline=timeout)


class VLLMEngineWeightSync:
    """Weight sync to the in-process engine of a :class:`~sftrl.agents.vllm_offline.VLLMOfflinePolicy`.

    With the uniprocess executor (the policy's default) the trainer's tensors are handed to the
    workers' ``reload_weights`` directly; an engine with worker processes (``in_process=False`` or
    tensor parallelism) reloads from ``weights_dir`` instead, as a server does.
    """

    def __init__(self, policy: Any, weights_dir: Path | None = None) -> None:
        self.policy = policy
        self.weights_dir = Path(weights_dir).resolve() if weights_dir is not None else None
        self.pushes: list[dict[str, Any]] = []

    @property
    def direct(self) -> bool:
        """True when the workers run in this process, so tensors can be passed without copying."""
        import os

        args = self.policy.engine_arguments()
        return (
            args.get("distributed_executor_backend") == "uni"
            and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"
        )

    def check(self) -> None:
        self.policy.preload()  # a model vLLM cannot load fails here, not after the first update
        if not self.direct and self.weights_dir is None:
            raise WeightSyncError("an engine with worker processes reloads from disk: pass weights_dir")

    def push(self, model: Any, step: int) -> None:
        t0 = time.perf_counter()
        if self.direct:
            # detach(): vLLM copies into its own (fused, possibly re-laid-out) parameters.
            weights: list[tuple[str, Any]] = [(k, v.detach()) for k, v in model.state_dict().items()]
            kwargs: dict[str, Any] = {"weights_iterator": weights}
        else:
            assert self.weights_dir is not None
            kwargs = {"weights_path": str(save_weights(model, self.weights_dir))}

        def reload() -> None:
            llm = self.policy.load()
            # A callable runs on every worker (pickled to worker processes, called directly in-process).
            llm.collective_rpc(reload_in_worker, kwargs=kwargs)
            llm.reset_prefix_cache()

        # On the policy's engine thread: vLLM's engine is not thread-safe (see VLLMOfflinePolicy).
        self.policy._executor.submit(reload).result()
        self.pushes.append({"step": step, "reload_s": time.perf_counter() - t0})


def weight_sync_for(rollout: Any, trained: Any, live_dir: Path, *, main: bool = True) -> WeightSync | None:
    """The :class:`WeightSync` that keeps ``rollout`` (a policy from the factory) serving ``trained``'s
    model: none when it samples from that model itself; vLLM servers are reloaded by the main process
    only (one reload per replica), an in-process engine by every process that holds one."""
    if rollout is trained:
        return None
    from sftrl.agents.openai_policy import VLLMPolicy
    from sftrl.agents.vllm_offline import VLLMOfflinePolicy  # imports vLLM only when loading

    if isinstance(rollout, VLLMPolicy):
        if not main:
            return None
        return VLLMServerWeightSync(
            rollout.base_urls,
            live_dir,
            processor=getattr(trained, "processor", None),
            api_key_env=rollout.api_key_env,
        )
    if isinstance(rollout, VLLMOfflinePolicy):
        return VLLMEngineWeightSync(rollout, live_dir)
    raise WeightSyncError(
        f"rollouts by {type(rollout).__name__} cannot be sent the trained weights: "
        "use --rollout-policy hf, vllm or vllm-offline"
    )
