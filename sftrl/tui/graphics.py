"""How the TUI draws images: a terminal graphics protocol where the terminal has one, else half blocks.

Sixel and Kitty's graphics protocol (``tgp``) show street views at the terminal's pixel resolution,
so shop signs stay readable; they come from the optional ``textual-image`` package
(``pip install 'sftrl[graphics]'``), which asks the terminal what it supports. Without it, without a
terminal, or with ``SFTRL_TUI_GRAPHICS=halfblock``, images are drawn with Unicode half blocks.
"""

from __future__ import annotations

import os
from typing import Any

from textual.widget import Widget

from sftrl.config import ConfigError
from sftrl.tui.widgets import HalfBlockImage

MODES = ("auto", "sixel", "tgp", "halfblock")
ENV_VAR = "SFTRL_TUI_GRAPHICS"


def detect(mode: str | None = None) -> str:
    """``sixel``, ``tgp`` or ``halfblock`` for ``mode`` (default ``$SFTRL_TUI_GRAPHICS`` or ``auto``).

    Call it before the app starts: ``textual-image`` queries the terminal once, on import, and cannot
    while Textual owns it.
    """
    mode = (mode or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if mode not in MODES:
        raise ConfigError(f"{ENV_VAR} must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "halfblock":
        return mode
    try:
        import textual_image.renderable as renderable
        import textual_image.widget  # noqa: F401 - measures the terminal's cell size while it can
    except ImportError:
        return "halfblock"
    if mode != "auto":
        return mode
    if renderable.Image is renderable.SixelImage:
        return "sixel"
    if renderable.Image is renderable.TGPImage:
        return "tgp"
    return "halfblock"  # a terminal without a protocol, or no terminal at all


def image_widget(mode: str, *, id: str | None = None) -> Widget:
    """A widget with ``set_image(image, key)`` and ``has_image`` that draws the way ``mode`` says."""
    if mode == "halfblock":
        return HalfBlockImage(id=id)
    from textual_image.widget import SixelImage, TGPImage

    base: Any = SixelImage if mode == "sixel" else TGPImage

    class ProtocolImage(base, Renderable=base._Renderable):  # type: ignore[misc, valid-type]
        DEFAULT_CSS = "ProtocolImage { height: 1fr; width: 1fr; }"

        def __init__(self, widget_id: str | None) -> None:
            super().__init__(None, id=widget_id)
            self._sftrl_image: Any = None
            self._sftrl_key: object = None

        def set_image(self, image: Any, key: object = None) -> None:
            key = key if key is not None else _identity(image)
            if key == self._sftrl_key:
                return
            self._sftrl_image, self._sftrl_key = image, key
            self.image = image

        @property
        def has_image(self) -> bool:
            return self._sftrl_image is not None

    return ProtocolImage(id)


def _identity(obj: object) -> int:
    return id(obj)
