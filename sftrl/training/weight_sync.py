"""Push the trainer's weights to the vLLM engines that roll out, after each RL update.

Two ways, one interface (:class:`WeightSync`):

* :class:`VLLMServerWeightSync` — vLLM OpenAI servers (replicas, possibly on other GPUs or nodes):
  the model is saved with ``save_pretrained`` to a directory every server can read (``OUT/live-weights``)
  and each replica is asked, through its dev endpoint ``POST /collective_rpc``, to run the workers'
  ``reload_weights(weights_path=...)`` (vLLM's in-place reload), then ``POST /reset_prefix_cache`` so no
  KV block computed with the old weights is reused. The dev endpoints exist only when the server was
  started with ``VLLM_SERVER_DEV_MODE=1``; :meth:`VLLMServerWeightSync.check` says so up front.
* :class:`VLLMServerCollectiveSync` (``--weight-sync collective``) — the same servers, no disk: the
  trainer and every server worker join a process group of their own (a TCPStore rendezvous the trainer
  hosts; gloo for CPU tensors, NCCL for CUDA ones, as TRL's ``vllm-serve`` broadcasts with NCCL) and
  each push broadcasts the state dict from the trainer (rank 0) straight into the workers' in-place
  ``reload_weights(weights_iterator=...)``, through :class:`VLLMWorkerExtension`'s methods.
* :class:`VLLMEngineWeightSync` — the in-process engine of
  :class:`~sftrl.agents.vllm_offline.VLLMOfflinePolicy`: the state dict goes straight to the workers'
  ``reload_weights(weights_iterator=...)`` through ``LLM.collective_rpc`` (no disk), when the engine runs
  in this process; an engine with worker processes reloads from disk like a server.

The weights reach vLLM in checkpoint (transformers) format: vLLM's ``load_weights`` does the renaming,
fusing (qkv, gate/up) and sharding, so any architecture vLLM can load from a checkpoint works.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
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

    # -- in-memory pushes (--weight-sync collective); JSON strings in, as /collective_rpc wants -------
    def sftrl_join_weight_group(self, spec: str) -> dict[str, Any]:
        """Join the trainer's weight group (blocks until every member has joined)."""
        s = json.loads(spec)
        rank = int(s["rank_offset"]) + int(getattr(self, "rank", 0))
        world, timeout = int(s["world_size"]), float(s["timeout_s"])
        store = weight_store(s["host"], int(s["port"]), world, False, timeout)
        self._sftrl_weight_group = (store, weight_group(store, rank, world, s["backend"], timeout))
        self._sftrl_weight_backend = s["backend"]
        return {"rank": rank}

    def sftrl_receive_weights(self, spec: str) -> dict[str, Any]:
        return receive_in_worker(self, json.loads(spec))

    def sftrl_leave_weight_group(self) -> None:
        self.__dict__.pop("_sftrl_weight_group", None)


def weight_store(host: str, port: int, world_size: int, is_host: bool, timeout_s: float) -> Any:
    """The TCPStore rendezvous of a weight group: the trainer hosts it (``port`` 0: a free one), the
    workers connect. The host does not wait here: the workers are asked to join once its port is known."""
    from datetime import timedelta

    import torch.distributed as dist

    return dist.TCPStore(
        host, port, world_size, is_host, timeout=timedelta(seconds=timeout_s), wait_for_workers=False
    )


def weight_group(store: Any, rank: int, world_size: int, backend: str, timeout_s: float) -> Any:
    """The trainer's (rank 0) and the vLLM workers' process group; blocks until all have joined.

    A group of its own, not torch.distributed's default one (vLLM's workers and accelerate's processes
    keep theirs): built from the store directly, so it coexists with both.
    """
    from datetime import timedelta

    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, options)
    raise WeightSyncError(f"unknown weight group backend {backend!r} (gloo or nccl)")


def _tensor_dtype(name: str) -> Any:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise WeightSyncError(f"not a torch dtype: {name!r}")
    return dtype


def receive_in_worker(worker: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """On a vLLM worker: receive the broadcast tensors ``spec`` names (in order) and stream them into
    :func:`reload_in_worker` (checkpoint format, vLLM renames/fuses/shards; no full second copy)."""
    import torch

    store_group = getattr(worker, "_sftrl_weight_group", None)
    if store_group is None:
        raise WeightSyncError("this worker has not joined a weight group (sftrl_join_weight_group)")
    group = store_group[1]
    nccl = getattr(worker, "_sftrl_weight_backend", "gloo") == "nccl"
    device = getattr(worker, "device", None) if nccl else torch.device("cpu")
    received = 0

    def weights() -> Iterator[tuple[str, Any]]:
        nonlocal received
        for name, dtype, shape in zip(spec["names"], spec["dtypes"], spec["shapes"], strict=True):
            tensor = torch.empty(shape, dtype=_tensor_dtype(dtype), device=device)
            group.broadcast(tensor, 0).wait()
            received += 1
            yield name, tensor

    stream = weights()
    result = reload_in_worker(worker, weights_iterator=stream)
    for _ in stream:  # a loader that stopped early still takes every broadcast (the trainer would hang)
        pass
    return {**result, "received": received}


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


def checkpoint_weights(model: Any) -> tuple[Any, dict[str, Any] | None]:
    """(the transformers model to save, its state dict or None for the model's own) in the checkpoint
    format vLLM loads: a LoRA (peft) model gives its base model with the adapters merged in
    (:func:`sftrl.training.lora.merged_state_dict`), so vLLM serves what the learner trains."""
    from sftrl.training.lora import is_lora, merged_state_dict

    if is_lora(model):
        return merged_state_dict(model)
    return model, None


def save_weights(model: Any, directory: Path, processor: Any = None) -> Path:
    """``save_pretrained`` into ``directory`` atomically (a reader never sees a half-written one)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    # safetensors: what vLLM's default loader reads; one file per shard, config alongside.
    model, state = checkpoint_weights(model)
    model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state} if state else {}))
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


class _Calls:
    """``/collective_rpc`` calls in flight, one thread per replica."""

    def __init__(self, n: int) -> None:
        self.threads: list[threading.Thread] = []
        self.results: list[Any] = [None] * n
        self.errors: list[Exception | None] = [None] * n


class VLLMServerCollectiveSync(VLLMServerWeightSync):
    """Weight sync to vLLM server replicas without disk (``--weight-sync collective``).

    The servers need dev mode and sftrl's worker extension (``--worker-extension-cls``
    :data:`WORKER_EXTENSION`). :meth:`check` forms one process group of this trainer (rank 0) and every
    worker of every replica (ranks after it, replica by replica); :meth:`push` sends the state dict's
    names, dtypes and shapes to each replica (``/collective_rpc``, on a thread each: the call returns
    when the workers have reloaded) while broadcasting the tensors, then resets the prefix caches.
    ``host`` is this trainer's address as the servers reach it; ``port`` 0 picks a free one. ``backend``:
    ``gloo`` (tensors on CPU; the servers' workers on CPU too, or copied there) or ``nccl`` (CUDA tensors
    on both sides).
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        backend: str = "gloo",
        api_key_env: str | None = "VLLM_API_KEY",
        timeout: float = 600.0,
    ) -> None:
        super().__init__(base_urls, Path("."), api_key_env=api_key_env, timeout=timeout)
        self.host, self.port, self.backend = host, int(port), backend
        self.workers: list[int] = []
        """Per replica: how many workers joined the group (its tensor/pipeline-parallel size)."""
        self._group: tuple[Any, Any] | None = None

    def _rpc_all(self, method: str, specs: Sequence[dict[str, Any]]) -> _Calls:
        """Start ``method`` on every replica at once (each call blocks in the collective)."""
        calls = _Calls(len(self.roots))

        def call(i: int) -> None:
            body = {"method": method, "kwargs": {"spec": json.dumps(specs[i])}}
            try:
                with _session(self.timeout) as client:
                    calls.results[i] = self._request(client, i, "POST", "/collective_rpc", json=body).json()
            except Exception as exc:  # raised on the caller's thread by _wait()
                calls.errors[i] = exc

        calls.threads = [
            threading.Thread(target=call, args=(i,), daemon=True) for i in range(len(self.roots))
        ]
        for t in calls.threads:
            t.start()
        return calls

    def _wait(self, calls: _Calls) -> list[Any]:
        for t in calls.threads:
            t.join(self.timeout)
        for i, exc in enumerate(calls.errors):
            if isinstance(exc, WeightSyncError):
                raise exc
            if exc is not None:
                raise WeightSyncError(f"vLLM server {self._public[i]}: {type(exc).__name__}: {exc}")
        return calls.results

    def check(self) -> None:
        super().check()
        assert self.methods is not None
        if self.methods != [EXTENSION_RELOAD_METHOD] * len(self.roots):
            missing = [self._public[i] for i, m in enumerate(self.methods) if m != EXTENSION_RELOAD_METHOD]
            raise WeightSyncError(
                f"--weight-sync collective needs sftrl's worker extension on every server: start "
                f"{', '.join(missing)} with --worker-extension-cls {WORKER_EXTENSION}"
            )
        if self._group is not None:
            return
        version = {"method": "sftrl_weight_sync_version"}
        with _session(min(60.0, self.timeout)) as client:
            self.workers = [
                len(self._request(client, i, "POST", "/collective_rpc", json=version).json()["results"])
                for i in range(len(self.roots))
            ]
        world = 1 + sum(self.workers)
        try:
            store = weight_store(self.host, self.port, world, True, self.timeout)
        except (RuntimeError, OSError) as exc:
            raise WeightSyncError(f"cannot host the weight group on {self.host}:{self.port}: {exc}") from None
        offsets = [1 + sum(self.workers[:i]) for i in range(len(self.roots))]
        common = {"host": self.host, "port": store.port, "world_size": world, "backend": self.backend}
        specs = [{**common, "rank_offset": off, "timeout_s": self.timeout} for off in offsets]
        pending = self._rpc_all("sftrl_join_weight_group", specs)
        try:
            group = weight_group(store, 0, world, self.backend, self.timeout)
        except RuntimeError as exc:
            self._wait(pending)  # a server's own error says more than the timeout here
            raise WeightSyncError(f"the weight group did not form: {exc}") from None
        self._wait(pending)
        self._group = (store, group)

    def push(self, model: Any, step: int) -> None:
        t0 = time.perf_counter()
        if self._group is None:
            self.check()
        assert self._group is not None
        group = self._group[1]
        # Checkpoint format, as the disk path saves it: vLLM's load_weights renames, fuses and shards.
        base, merged = checkpoint_weights(model)
        state = [(k, v.detach()) for k, v in (merged or base.state_dict()).items()]
        spec = {
            "names": [k for k, _ in state],
            "dtypes": [str(v.dtype).removeprefix("torch.") for _, v in state],
            "shapes": [list(v.shape) for _, v in state],
        }
        pending = self._rpc_all("sftrl_receive_weights", [spec] * len(self.roots))
        try:
            for _, tensor in state:
                tensor = tensor.contiguous()
                if self.backend == "gloo" and tensor.device.type != "cpu":
                    tensor = tensor.cpu()
                group.broadcast(tensor, 0).wait()
        except RuntimeError as exc:
            self._group = None  # unusable after a failed collective
            raise WeightSyncError(f"weight broadcast to the vLLM servers failed: {exc}") from None
        t1 = time.perf_counter()
        self._wait(pending)
        with _session(self.timeout) as client:
            for i in range(len(self.roots)):
                self._reset_prefix_cache(client, i)
        self.pushes.append({"step": step, "broadcast_s": t1 - t0, "reload_s": time.perf_counter() - t1})

    def close(self) -> None:
        """Leave the group on every server (best effort: a server that is gone has left it)."""
        if self._group is None:
            return
        self._group = None
        with _session(min(60.0, self.timeout)) as client:
            for i in range(len(self.roots)):
                with contextlib.suppress(WeightSyncError):
                    self._request(
                        client, i, "POST", "/collective_rpc", json={"method": "sftrl_leave_weight_group"}
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
            base, merged = checkpoint_weights(model)
            weights: list[tuple[str, Any]] = [
                (k, v.detach()) for k, v in (merged or base.state_dict()).items()
            ]
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


def weight_sync_for(
    rollout: Any,
    trained: Any,
    live_dir: Path,
    *,
    main: bool = True,
    mode: str = "disk",
    host: str | None = None,
    port: int = 0,
) -> WeightSync | None:
    """The :class:`WeightSync` that keeps ``rollout`` (a policy from the factory) serving ``trained``'s
    model: none when it samples from that model itself; vLLM servers are reloaded by the main process
    only (one reload per replica), from disk or (``mode`` collective) by broadcast; an in-process engine
    by every process that holds one."""
    if rollout is trained:
        return None
    from sftrl.agents.openai_policy import VLLMPolicy
    from sftrl.agents.vllm_offline import VLLMOfflinePolicy  # imports vLLM only when loading

    if mode == "collective" and not isinstance(rollout, VLLMPolicy):
        raise WeightSyncError("--weight-sync collective is for vLLM servers (--rollout-policy vllm)")
    if isinstance(rollout, VLLMPolicy):
        if not main:
            return None
        if mode == "collective":
            return VLLMServerCollectiveSync(
                rollout.base_urls,
                host=host or _loopback_host(rollout.base_urls),
                port=port,
                backend="nccl" if _model_device(trained) == "cuda" else "gloo",
                api_key_env=rollout.api_key_env,
            )
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


def _model_device(trained: Any) -> str:
    model = getattr(trained, "model", None)
    try:
        return str(next(model.parameters()).device.type)  # type: ignore[union-attr]
    except (AttributeError, StopIteration, TypeError):
        return "cpu"


def _loopback_host(base_urls: Sequence[str]) -> str:
    """127.0.0.1 when every server runs on this machine; otherwise the trainer's address is needed."""
    from urllib.parse import urlsplit

    hosts = {urlsplit(u).hostname for u in base_urls}
    if hosts <= {"127.0.0.1", "localhost", "::1"}:
        return "127.0.0.1"
    raise WeightSyncError(
        "--weight-sync collective with servers on other hosts needs --weight-sync-host: this trainer's "
        "address as those servers reach it"
    )
