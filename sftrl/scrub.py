"""Masking secrets in text a server or model sends back, in the forms they are echoed in.

A server may echo an API key literally, URL-encoded (``quote``/``quote_plus``), JSON-escaped, or
base64-encoded (std or URL-safe alphabet, with or without padding, e.g. inside a ``Basic`` auth
string). :func:`secret_forms` lists those forms; base64 is listed at all three byte alignments, with
the characters that depend on neighbouring bytes dropped, so the key is found inside a longer encoded
string too. :func:`scrub` masks every form. Only secrets of 4+ characters are masked (shorter ones
would mask ordinary text).
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "scrub", "scrub_json", "secret_forms"]

MASK = "***"
_MIN_LEN = 4
_MIN_BASE64 = 8


@functools.lru_cache(maxsize=64)
def secret_forms(secret: str) -> tuple[str, ...]:
    """Every form of ``secret`` to mask, longest first (so a longer form is never half-masked)."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    raw = secret.encode("utf-8")
    for shift in range(3):
        # Encode behind `shift` filler bytes, then keep only characters fixed by the secret alone.
        encoded = base64.b64encode(b"\0" * shift + raw).decode().rstrip("=")
        # Character i holds bits 6i..6i+5: keep those lying wholly within the secret's bytes.
        core = encoded[(shift * 4 + 2) // 3 : (shift + len(raw)) * 4 // 3]
        if len(core) >= _MIN_BASE64:  # shorter runs would match ordinary text
            forms.add(core)
            forms.add(core.replace("+", "-").replace("/", "_"))
    return tuple(sorted((f for f in forms if len(f) >= _MIN_LEN), key=len, reverse=True))


def scrub(text: str, *secrets: str | None, mask: str = MASK) -> str:
    """``text`` with every form of every given secret replaced by ``mask``."""
    for secret in secrets:
        if secret and len(secret) >= _MIN_LEN:
            for form in secret_forms(secret):
                if form in text:
                    text = text.replace(form, mask)
    return text


def scrub_json(value: Any, *secrets: str | None, mask: str = MASK) -> Any:
    """A copy of parsed JSON with every string (keys included) scrubbed of ``secrets``."""
    if isinstance(value, str):
        return scrub(value, *secrets, mask=mask)
    if isinstance(value, dict):
        return {
            scrub_json(k, *secrets, mask=mask): scrub_json(v, *secrets, mask=mask) for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub_json(v, *secrets, mask=mask) for v in value]
    return value
