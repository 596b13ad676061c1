"""Asynchronous rollouts for ``agent train rl --async-rollouts``: a producer thread keeps collecting
episodes while the learner updates, never more than ``max_staleness`` policy versions behind.

The version of a policy is the number of updates its weights have seen. Batch ``j`` (the episodes
update ``j`` learns from) is started only once version ``j - K`` is published, with the newest
published weights, so its staleness ``j - version`` is at most ``K`` by construction; ``K = 0`` is the
synchronous order (collect with the current weights, then update). The producer never waits for more
than the bound requires and the learner never drops data: both waits are measured and reported.

With the ``hf`` backend the producer samples with its own copy of the model (the learner must not
change weights under a generation in progress); a published version is a state-dict snapshot it
loads between two collections. vLLM backends keep their weight sync: a push waits for the
collection in progress to end, so the engines never change weights in the middle of a batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class VersionedPolicy:
    """A rollout policy whose logged description carries the version of the weights it samples with,
    so every episode record names the policy version that produced it."""

    def __init__(self, inner: Any, version: int) -> None:
        self._inner = inner
        self.version = version

    def describe(self) -> dict[str, Any]:
        return {**self._inner.describe(), "policy_version": self.version}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def hf_rollout_copy(policy: Any, max_batch_size: int, dtype: Any = None) -> Any:
    """A second :class:`~sftrl.agents.hf_policy.HFPolicy` over a deep copy of ``policy``'s model,
    its weights cast to ``dtype`` (a torch dtype) if given."""
    import copy

    from sftrl.agents.hf_policy import HFPolicy

    model = copy.deepcopy(policy.model).eval()
    if dtype is not None:
        model = model.to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)  # the copy only generates: no autograd bookkeeping
    rollout = HFPolicy.from_model(
        model, policy.processor, name=policy.model_name, max_batch_size=max_batch_size
    )
    rollout.autocast_dtype = getattr(policy, "autocast_dtype", None)
    return rollout


def snapshot(model: Any) -> dict[str, Any]:
    """Detached copies of ``model``'s tensors: later optimizer steps leave the published version alone."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class Collected:
    """One batch the producer collected, with how it was made."""

    rollout_dir: Path
    summary: dict[str, Any]
    version: int
    collect_s: float
    wait_s: float
    """Time the producer waited before this batch because of the staleness bound."""


class RolloutProducer:
    """Collects batches ``start .. end-1`` in a background thread, bounded by ``max_staleness``.

    ``collect(policy, update)`` collects batch ``update`` with ``policy`` (the ordinary runner).
    ``push(model, version)`` (vLLM backends) sends weights to the engines; without it the producer
    loads published snapshots into ``rollout`` (the ``hf`` copy) itself.
    """

    def __init__(
        self,
        collect: Callable[[Any, int], tuple[Path, dict[str, Any]]],
        rollout: Any,
        *,
        start: int,
        end: int,
        max_staleness: int,
        push: Callable[[Any, int], None] | None = None,
    ) -> None:
        self._collect = collect
        self._rollout = rollout
        self._end = end
        self._k = max_staleness
        self._push = push
        self._cv = threading.Condition()
        # Held for a whole collection (and while the weights change): lock order weights -> cv.
        self._weights = threading.Lock()
        self._published = start
        self._pending: dict[str, Any] | None = None
        self._results: dict[int, Collected] = {}
        self._error: BaseException | None = None
        self._stop = False
        self._next = start
        self._thread = threading.Thread(target=self._run, name="rollout-producer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for j in range(self._next, self._end):
                t0 = time.perf_counter()
                with self._cv:
                    while self._published < j - self._k and not self._stop:
                        self._cv.wait()
                    if self._stop:
                        return
                wait_s = time.perf_counter() - t0
                with self._weights:
                    with self._cv:
                        pending, version = self._pending, self._published
                        self._pending = None
                    if pending is not None:
                        self._rollout.model.load_state_dict(pending)
                    t1 = time.perf_counter()
                    out, summary = self._collect(VersionedPolicy(self._rollout, version), j)
                    done = Collected(out, summary, version, time.perf_counter() - t1, wait_s)
                with self._cv:
                    self._results[j] = done
                    self._cv.notify_all()
        except BaseException as exc:  # handed to the learner, which raises it in the main thread
            with self._cv:
                self._error = exc
                self._cv.notify_all()

    def get(self, update: int) -> tuple[Collected, float]:
        """Batch ``update`` (waiting for it) and the seconds the learner waited."""
        t0 = time.perf_counter()
        with self._cv:
            while update not in self._results:
                if self._error is not None:
                    raise self._error
                if not self._thread.is_alive():
                    raise RuntimeError(f"the rollout producer stopped before batch {update}")
                self._cv.wait(timeout=1.0)
            return self._results.pop(update), time.perf_counter() - t0

    def publish(self, model: Any, version: int) -> float:
        """Make ``model``'s weights version ``version`` for later batches; returns the seconds spent."""
        t0 = time.perf_counter()
        if self._push is not None:
            with self._weights:  # the engines change weights between collections only
                self._push(model, version)
                with self._cv:
                    self._published = version
                    self._cv.notify_all()
        else:
            weights = snapshot(model)
            with self._cv:
                self._pending = weights
                self._published = version
                self._cv.notify_all()
        return time.perf_counter() - t0

    def close(self) -> None:
        """Stop after the collection in progress (if any) and wait for the thread."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join()


def staleness(batch: Any, version: int) -> dict[str, float]:
    """Staleness (learner version - sampling version) over the batch's episodes."""
    ages = [version - ep[0].policy_version for ep in batch.episodes if ep[0].policy_version is not None]
    if not ages:
        return {}
    return {"staleness_mean": sum(ages) / len(ages), "staleness_max": float(max(ages))}
