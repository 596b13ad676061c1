"""Read the official ``gps_pano_mapping.pkl`` (or a JSON equivalent) without running code from the file.

``pickle.load`` on a downloaded file executes whatever callables the file names (``os.system`` …). The
official mapping is a plain ``dict`` of ``(lat, lng)`` tuples to panorama-id strings, which pickle
stores with opcodes that never import anything (dict, tuple, float, int, str, bytes, list, bool,
None). :class:`RestrictedUnpickler` therefore refuses every global lookup; the only exception is the
pair of numpy constructors a mapping built from numpy floats needs (``numpy…multiarray.scalar`` and
``numpy.dtype``, plus ``_codecs.encode`` with which protocols 0-2 spell ``bytes``), and those resolve to
our own checking functions (numeric dtypes only, plain Python numbers out), never to the real callables.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

__all__ = [
    "UnsafePickleError",
    "RestrictedUnpickler",
    "load_pano_mapping",
    "parse_pano_mapping",
    "safe_loads",
]

# Larger files are not a mapping of a few thousand routes: refuse before reading them into memory.
MAX_MAPPING_BYTES: Final = 512 * 1024 * 1024


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than plain containers, numbers and strings."""


class _NumericDType:
    """Stand-in for ``numpy.dtype`` during unpickling: remembers a numeric type code, nothing else."""

    def __init__(self, code: str, align: bool = False, copy: bool = True) -> None:
        # Only fixed-size numbers: float16/32/64, signed and unsigned ints, bool.
        if not isinstance(code, str) or code.lstrip("<>=|") not in _NUMERIC_CODES:
            raise UnsafePickleError(f"refusing numpy dtype {code!r} (only numeric dtypes are allowed)")
        self.code = code.lstrip("<>=|")
        self.byteorder = "<"

    def __setstate__(self, state: Any) -> None:
        # numpy pickles dtypes as (version, byteorder, ...); only the byte order matters here.
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.byteorder = ">" if state[1] == ">" else "<"


_NUMERIC_CODES: Final = {
    "f2": "e",
    "f4": "f",
    "f8": "d",
    "i1": "b",
    "i2": "h",
    "i4": "i",
    "i8": "q",
    "u1": "B",
    "u2": "H",
    "u4": "I",
    "u8": "Q",
    "b1": "?",
}


def _numpy_scalar(dtype: Any, data: Any = None) -> float | int | bool:
    """Stand-in for ``numpy.core.multiarray.scalar``: decode the raw bytes into a Python number."""
    import struct

    if not isinstance(dtype, _NumericDType) or not isinstance(data, bytes):
        raise UnsafePickleError("refusing a numpy scalar that is not a plain number")
    fmt = ("<" if dtype.byteorder == "<" else ">") + _NUMERIC_CODES[dtype.code]
    if struct.calcsize(fmt) != len(data):
        raise UnsafePickleError(f"numpy scalar of dtype {dtype.code} has {len(data)} bytes")
    value = struct.unpack(fmt, data)[0]
    return float(value) if dtype.code.startswith("f") else value


def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: protocols 0-2 store ``bytes`` as a latin-1 string plus this call."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("refusing _codecs.encode other than str -> latin-1 bytes")
    return text.encode("latin-1")


# (module, name) -> our replacement. numpy 1.x pickles scalars via numpy.core, numpy 2.x via numpy._core.
_ALLOWED: Final[dict[tuple[str, str], Callable[..., Any]]] = {
    ("numpy", "dtype"): _NumericDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): _latin1_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only builtin containers, numbers and strings (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        replacement = _ALLOWED.get((module, name))
        if replacement is None:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: this file may only hold dicts, tuples, lists, "
                "numbers and strings (a panorama mapping never needs anything else)"
            )
        return replacement

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent references")


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (raises :class:`UnsafePickleError`)."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def _latlng(key: Any) -> tuple[float, float]:
    if isinstance(key, str):
        # JSON objects cannot have tuple keys: "lat,lng" (or "lat_lng", "lat lng") stands in.
        parts = key.replace("_", ",").replace(" ", ",").split(",")
        parts = [p for p in parts if p]
        key = tuple(parts)
    if isinstance(key, (tuple, list)) and len(key) == 2:
        try:
            lat, lng = float(key[0]), float(key[1])
        except (TypeError, ValueError):
            pass
        else:
            if math.isfinite(lat) and math.isfinite(lng) and -90 <= lat <= 90 and -180 <= lng <= 180:
                return lat, lng
    raise ValueError(f"not a (lat, lng) pair: {key!r}")


def parse_pano_mapping(data: Any) -> dict[tuple[float, float], str]:
    """``{(lat, lng): pano_id}`` from a decoded mapping.

    Accepted: a dict keyed by ``(lat, lng)`` tuples (the official pickle) or ``"lat,lng"`` strings (its
    JSON form); a list of ``[lat, lng, pano_id]`` rows; a list of ``{"lat", "lng", "pano_id"}`` objects.
    """
    out: dict[tuple[float, float], str] = {}
    if isinstance(data, dict):
        items: list[tuple[Any, Any]] = list(data.items())
    elif isinstance(data, list):
        items = []
        for row in data:
            if isinstance(row, dict) and {"lat", "lng", "pano_id"} <= row.keys():
                items.append(((row["lat"], row["lng"]), row["pano_id"]))
            elif isinstance(row, (list, tuple)) and len(row) == 3:
                items.append(((row[0], row[1]), row[2]))
            else:
                raise ValueError(f"unrecognised mapping row: {row!r:.80}")
    else:
        raise ValueError(f"a panorama mapping is a dict or a list, not {type(data).__name__}")
    for key, pano in items:
        if not isinstance(pano, str) or not pano:
            raise ValueError(f"panorama id for {key!r} is not a non-empty string: {pano!r:.80}")
        out[_latlng(key)] = pano
    return out


def load_pano_mapping(path: str | Path) -> dict[tuple[float, float], str]:
    """Read a ``gps_pano_mapping`` file (``.pkl`` through the restricted unpickler, or ``.json``).

    Raises FileNotFoundError, :class:`UnsafePickleError` (the pickle wants code) or ValueError (the
    content is not a mapping); every message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"panorama mapping not found: {p}")
    size = p.stat().st_size
    if size > MAX_MAPPING_BYTES:
        raise ValueError(f"{p}: {size} bytes is too large for a panorama mapping")
    raw = p.read_bytes()
    try:
        if p.suffix.lower() == ".json" or raw.lstrip()[:1] in (b"{", b"["):
            data = json.loads(raw.decode("utf-8"))
        else:
            data = safe_loads(raw)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{p}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: not a readable pickle or JSON panorama mapping ({exc})") from None
    try:
        return parse_pano_mapping(data)
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
