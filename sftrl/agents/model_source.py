"""Where a model comes from: a local directory, or the Hugging Face hub only when the hub can be reached.

A name that looks like a path and does not exist fails at once with one line, instead of being sent
to the hub as a repo id. When the hub is switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)
or cannot be reached within a short deadline, models load from the local hub cache only
(``local_files_only``), so a machine without network gets an answer in seconds, not after the hub
client's retries.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


class ModelSourceError(ValueError):
    """The model name points nowhere usable (a missing local directory, an unreachable hub)."""


def looks_local(name: str) -> bool:
    """True when ``name`` is meant as a filesystem path rather than a hub repo id (``org/model``)."""
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name in (".", ".."):
        return True
    if "\\" in name or name.endswith("/") or name.count("/") > 1 or Path(name).is_absolute():
        return True
    # `models/tiny` is a path when `models/` is a local directory (as after `agent tiny-model`).
    first = name.split("/", 1)[0]
    return "/" in name and Path(first).is_dir()


def hub_offline() -> bool:
    """The hub is switched off by the environment (huggingface_hub's and transformers' variables)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in names)


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds (DNS included)."""
    url = urlsplit(endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo has no timeout of its own: the thread bounds the whole probe.
    thread = threading.Thread(target=probe, daemon=True, name="sftrl-hub-probe")
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def model_load_kwargs(name: str) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained(name, ...)``; raises :class:`ModelSourceError` at once.

    A local directory loads as is. A local-looking path that does not exist is an error. A hub id
    loads from the local hub cache only when the hub is off or unreachable.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return {}
    if looks_local(name) or path.exists():
        if path.exists():
            raise ModelSourceError(f"{name} is a file, not a model directory")
        raise ModelSourceError(f"no such model directory: {name}")
    if hub_offline() or not hub_reachable():
        return {"local_files_only": True}
    return {}


def load_error(name: str, exc: BaseException, kwargs: dict[str, Any]) -> str:
    """One line saying why ``from_pretrained`` failed, with the fix when the hub was not used."""
    if kwargs.get("local_files_only"):
        why = "the hub is off (HF_HUB_OFFLINE)" if hub_offline() else "the hub cannot be reached"
        return (
            f"cannot load model {name!r}: {why} and the local hub cache has no usable copy; "
            "pass a local model directory (e.g. agent tiny-model --out models/tiny)"
        )
    text = str(exc).strip()
    return f"cannot load model {name!r}: {text.splitlines()[0] if text else type(exc).__name__}"
