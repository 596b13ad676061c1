"""Events a rollout publishes while it runs (the TUI and progress bars subscribe; the run never waits).

Listeners are plain callables. :class:`EventQueue` is a bounded, non-blocking buffer for slow readers
such as a UI: when it is full the oldest events are dropped, so publishing never blocks a rollout.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sftrl.agents.trajectory import EpisodeRecord, TurnRecord
from sftrl.environments.base import Observation


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    env_id: str
    total: int
    already_done: int
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EpisodeStarted:
    episode_index: int
    seed: int
    observation: Observation


@dataclass(frozen=True)
class TurnFinished:
    episode_index: int
    turn: TurnRecord
    next_observation: Observation | None


@dataclass(frozen=True)
class EpisodeFinished:
    record: EpisodeRecord


@dataclass(frozen=True)
class RunFinished:
    summary: dict[str, Any]


@dataclass(frozen=True)
class RunFailed:
    error: str


Event = RunStarted | EpisodeStarted | TurnFinished | EpisodeFinished | RunFinished | RunFailed
Listener = Callable[[Event], None]


class EventQueue:
    """A bounded, thread-safe event buffer that drops the oldest events instead of blocking."""

    def __init__(self, maxlen: int = 1024) -> None:
        self._events: collections.deque[Event] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.dropped = 0

    def __call__(self, event: Event) -> None:
        with self._lock:
            if len(self._events) == self._events.maxlen:
                self.dropped += 1
            self._events.append(event)

    def drain(self) -> list[Event]:
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events


def publish(listeners: list[Listener], event: Event) -> None:
    """Send ``event`` to every listener; a failing listener must never break a rollout."""
    for listener in listeners:
        # A UI bug must not lose a training run's episodes.
        with contextlib.suppress(Exception):
            listener(event)
