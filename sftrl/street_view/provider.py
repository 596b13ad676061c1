"""The street-view provider interface: one request type, one ``get_view`` call, four implementations.

Implementations: ``synthetic`` (offline renderer from city data, the default), ``google`` (live Street
View Static API), ``cache`` (read-through disk cache around another provider) and ``panorama-dir``
(the official SFTvsRL offline panoramas). Envs ask for views only through :func:`make_provider`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field


class ViewRequest(BaseModel):
    """One perspective view: where, which way, how wide, how large (and the panorama id if known)."""

    model_config = ConfigDict(frozen=True)

    lat: float
    lng: float
    heading: float = Field(ge=-360.0, le=720.0)
    """Degrees clockwise from north; providers normalise it to [0, 360)."""
    fov: float = Field(default=90.0, gt=0.0, le=120.0)
    pitch: float = Field(default=0.0, ge=-90.0, le=90.0)
    width: int = Field(default=320, ge=16, le=2048)
    height: int = Field(default=320, ge=16, le=2048)
    pano_id: str | None = None
    city: str | None = None
    """City bundle name (the synthetic provider draws from it)."""
    node: int | None = None
    """Street-graph node index the view is taken at, when known."""
    landmarks: tuple[tuple[str, float, float], ...] = ()
    """Named places (name, lat, lng) the synthetic renderer must show when in view (route landmarks)."""


class ProviderError(RuntimeError):
    """A view could not be produced (missing key, quota, cache miss in offline mode…): says why.

    ``fatal`` errors (no key, key rejected) would fail every episode the same way: runs stop on them
    instead of logging one error episode after another. ``cause`` (``connect``, ``connection``,
    ``timeout``, ``server``) marks a service that did not answer after its retries: ``infrastructure`` errors,
    on which a run whose episodes all fail so stops early.
    """

    def __init__(self, message: str, *, fatal: bool = False, cause: str | None = None) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.cause = cause
        self.infrastructure = cause is not None


@runtime_checkable
class StreetViewProvider(Protocol):
    name: str

    def get_view(self, request: ViewRequest) -> Image.Image:
        """An RGB image of ``request.width`` × ``request.height`` pixels."""
        ...

    def cache_key(self, request: ViewRequest) -> str:
        """A stable key identifying the image this provider returns for ``request`` (no secrets)."""
        ...


# provider name -> "module:Class"; imported on first use so optional dependencies stay optional.
PROVIDERS: dict[str, str] = {
    "synthetic": "sftrl.street_view.synthetic:SyntheticProvider",
    "google": "sftrl.street_view.google:GoogleStreetViewProvider",
    "cache": "sftrl.street_view.cache:CachedProvider",
    "panorama-dir": "sftrl.street_view.panorama_dir:PanoramaDirProvider",
}


def make_provider(name: str, **kwargs: Any) -> StreetViewProvider:
    """Build a provider by name (``synthetic``, ``google``, ``cache``, ``panorama-dir``)."""
    if name not in PROVIDERS:
        raise ValueError(f"unknown street-view provider {name!r}; choose one of: {', '.join(PROVIDERS)}")
    module_name, _, attr = PROVIDERS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)(**kwargs)


# The paper's prompt describes the 2x2 grid as [front, right / back, left]: relative headings below.
GRID_LAYOUT: tuple[tuple[str, float], ...] = (
    ("front", 0.0),
    ("right", 90.0),
    ("back", 180.0),
    ("left", 270.0),
)


def grid_2x2(views: Sequence[Image.Image], gap: int = 4, background: str = "#000000") -> Image.Image:
    """Tile four equally sized views as [front, right / back, left] with a thin separating gap."""
    if len(views) != 4:
        raise ValueError(f"a 2x2 grid needs 4 views, got {len(views)}")
    w, h = views[0].size
    canvas = Image.new("RGB", (2 * w + gap, 2 * h + gap), background)
    for i, view in enumerate(views):
        if view.size != (w, h):
            view = view.resize((w, h))
        canvas.paste(view.convert("RGB"), ((i % 2) * (w + gap), (i // 2) * (h + gap)))
    return canvas
