"""Read the official ``gps_pano_mapping.pkl`` (or a JSON equivalent) without running code from the file.

``pickle.load`` on a downloaded file executes whatever callables the file names (``os.system`` …), and
even CPython's restricted unpicklers allocate what the file asks for (a 9-byte "memo bomb" asks for
gigabytes) and raise assorted TypeErrors on malformed input. So this module does not call ``pickle``
at all: :func:`safe_loads` runs the opcodes itself, in a small interpreter over
:func:`pickletools.genops`, with

* an opcode allow-list: the containers, numbers, strings and memo opcodes a mapping of
  ``(lat, lng)`` tuples to panorama-id strings uses, plus ``GLOBAL``/``REDUCE``/``BUILD`` only for the
  numpy constructors a mapping built from numpy floats needs (``numpy…multiarray.scalar``,
  ``numpy.dtype``; and ``_codecs.encode``, with which protocols 0-2 spell ``bytes``). Those resolve to
  our own checking functions (numeric dtypes only, plain Python numbers out), and ``BUILD`` applies
  only to our dtype stand-in, so a file can never reach a real callable or set attributes on one;
* bounds: file size, opcode count, integer size, tuple nesting, and a memo that is a dict (an index
  costs nothing until it holds something);
* one error type: every malformed, truncated or hostile file raises :class:`UnsafePickleError`.

``agent routes import DIR`` converts a mapping once into ``gps_pano_mapping.json``, which
:class:`~sftrl.street_view.panorama_dir.PanoramaDirProvider` then reads instead of the pickle.
"""

from __future__ import annotations

import io
import json
import math
import pickle  # only for its exception type: nothing here calls pickle.load
import pickletools
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

__all__ = [
    "UnsafePickleError",
    "load_pano_mapping",
    "parse_pano_mapping",
    "safe_loads",
    "write_pano_mapping_json",
]

# A mapping of a million panoramas is ~40 MB; larger files are refused before they are read.
MAX_MAPPING_BYTES: Final = 64 * 1024 * 1024
MAX_OPS: Final = 20_000_000
MAX_INT_BYTES: Final = 16
MAX_TUPLE_DEPTH: Final = 16
_repr = reprlib.Repr()  # bounded reprs for messages: a hostile object may be huge or self-nested
_repr.maxstring = _repr.maxother = 60
_repr.maxlevel = 3
_short = _repr.repr


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


_REPLACEMENTS: Final = frozenset(_ALLOWED.values())
_PUSH_CONST: Final = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_VALUE_OPS: Final = {  # opcodes whose decoded argument is the value pushed
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
}  # fmt: skip
_PY2_STRINGS: Final = {"STRING", "BINSTRING", "SHORT_BINSTRING"}
_IGNORED: Final = {"PROTO", "FRAME"}


class _Machine:
    """The pickle virtual machine, for the allow-listed opcodes only (see the module docstring)."""

    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.tuple_depth: dict[int, int] = {}

    def pop(self) -> Any:
        if not self.stack:
            raise UnsafePickleError("malformed pickle: pop from an empty stack")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise UnsafePickleError("malformed pickle: empty stack")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise UnsafePickleError("malformed pickle: no mark")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def tuple_of(self, items: list[Any]) -> tuple[Any, ...]:
        # Tuples become dict keys, and hashing nests in C: keep them shallow.
        depth = 1 + max((self.tuple_depth.get(id(x), 0) for x in items if isinstance(x, tuple)), default=0)
        if depth > MAX_TUPLE_DEPTH:
            raise UnsafePickleError(f"refusing tuples nested deeper than {MAX_TUPLE_DEPTH}")
        out = tuple(items)
        self.tuple_depth[id(out)] = depth
        return out

    def step(self, name: str, arg: Any) -> None:
        stack = self.stack
        if name in _VALUE_OPS:
            if isinstance(arg, int) and arg.bit_length() > 8 * MAX_INT_BYTES:
                raise UnsafePickleError(f"refusing an integer of {arg.bit_length()} bits")
            stack.append(arg)
        elif name in _PUSH_CONST:
            stack.append(_PUSH_CONST[name])
        elif name in _PY2_STRINGS:
            stack.append(arg.decode("ascii") if isinstance(arg, bytes) else arg)
        elif name in _IGNORED:
            pass
        elif name == "MARK":
            self.marks.append(stack)
            self.stack = []
        elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
            stack.append({} if name == "EMPTY_DICT" else [] if name == "EMPTY_LIST" else ())
        elif name == "DICT":
            items = self.pop_mark()
            if len(items) % 2:
                raise UnsafePickleError("malformed pickle: odd number of dict items")
            built: Any = dict(zip(items[::2], items[1::2], strict=True))
            self.stack.append(built)  # self.stack: pop_mark replaced it
        elif name == "LIST":
            built = self.pop_mark()
            self.stack.append(built)
        elif name == "TUPLE":
            built = self.tuple_of(self.pop_mark())
            self.stack.append(built)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(stack) < n:
                raise UnsafePickleError("malformed pickle: too few items for a tuple")
            items = stack[-n:]
            del stack[-n:]
            stack.append(self.tuple_of(items))
        elif name == "SETITEM":
            value, key = self.pop(), self.pop()
            self._dict_top()[key] = value
        elif name == "SETITEMS":
            items = self.pop_mark()
            target = self._dict_top()
            if len(items) % 2:
                raise UnsafePickleError("malformed pickle: odd number of dict items")
            for key, value in zip(items[::2], items[1::2], strict=True):
                target[key] = value
        elif name in ("APPEND", "APPENDS"):
            items = [self.pop()] if name == "APPEND" else self.pop_mark()
            target = self.top()
            if not isinstance(target, list):
                raise UnsafePickleError(f"malformed pickle: append to a {type(target).__name__}")
            target.extend(items)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            self.memo[len(self.memo) if name == "MEMOIZE" else int(arg)] = self.top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in self.memo:
                raise UnsafePickleError(f"malformed pickle: memo entry {arg} was never stored")
            stack.append(self.memo[int(arg)])
        elif name == "POP":
            if stack:
                stack.pop()
            else:
                self.pop_mark()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            stack.append(self.top())
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
            else:
                attr, module = self.pop(), self.pop()
            stack.append(_find_class(str(module), str(attr)))
        elif name == "REDUCE":
            args, func = self.pop(), self.pop()
            if func not in _REPLACEMENTS or not isinstance(args, tuple):
                raise UnsafePickleError(f"refusing to call {_short(func)}")
            try:
                stack.append(func(*args))
            except TypeError as exc:
                raise UnsafePickleError(f"refusing {_short(func)} arguments: {exc}") from None
        elif name == "BUILD":
            state = self.pop()
            target = self.top()
            if type(target) is not _NumericDType:
                raise UnsafePickleError(f"refusing to set the state of {_short(target)}")
            target.__setstate__(state)
        else:
            raise UnsafePickleError(
                f"refusing pickle opcode {name}: a panorama mapping holds only dicts, tuples, lists, "
                "numbers and strings"
            )

    def _dict_top(self) -> dict[Any, Any]:
        target = self.top()
        if not isinstance(target, dict):
            raise UnsafePickleError(f"malformed pickle: set an item on a {type(target).__name__}")
        return target


def _find_class(module: str, name: str) -> Callable[..., Any]:
    replacement = _ALLOWED.get((module, name))
    if replacement is None:
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: this file may only hold dicts, tuples, lists, "
            "numbers and strings (a panorama mapping never needs anything else)"
        )
    return replacement


def safe_loads(data: bytes) -> Any:
    """The object pickle ``data`` describes, built by :class:`_Machine`; failures: UnsafePickleError."""
    if len(data) > MAX_MAPPING_BYTES:
        raise UnsafePickleError(f"refusing a pickle of {len(data)} bytes (limit {MAX_MAPPING_BYTES})")
    machine = _Machine()
    try:
        for ops, (opcode, arg, _pos) in enumerate(pickletools.genops(io.BytesIO(data)), start=1):
            if ops > MAX_OPS:
                raise UnsafePickleError(f"refusing a pickle of more than {MAX_OPS} opcodes")
            if opcode.name == "STOP":
                result = machine.pop()
                if machine.stack or machine.marks:
                    raise UnsafePickleError("malformed pickle: items left on the stack at STOP")
                return result
            machine.step(opcode.name, arg)
    except UnsafePickleError:
        raise
    except Exception as exc:  # a truncated or mangled file: genops and containers raise anything
        raise UnsafePickleError(f"malformed pickle ({type(exc).__name__}: {_short(str(exc))})") from None
    raise UnsafePickleError("malformed pickle: no STOP opcode")


def _latlng(key: Any) -> tuple[float, float]:
    if isinstance(key, str):
        # JSON objects cannot have tuple keys: "lat,lng" (or "lat_lng", "lat lng") stands in.
        parts = key.replace("_", ",").replace(" ", ",").split(",")
        parts = [p for p in parts if p]
        key = tuple(parts)
    if isinstance(key, (tuple, list)) and len(key) == 2:
        try:
            lat, lng = float(key[0]), float(key[1])
        except (TypeError, ValueError, OverflowError):
            pass
        else:
            if math.isfinite(lat) and math.isfinite(lng) and -90 <= lat <= 90 and -180 <= lng <= 180:
                return lat, lng
    raise ValueError(f"not a (lat, lng) pair: {_short(key)}")


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
                raise ValueError(f"unrecognised mapping row: {_short(row)}")
    else:
        raise ValueError(f"a panorama mapping is a dict or a list, not {type(data).__name__}")
    for key, pano in items:
        if not isinstance(pano, str) or not pano:
            raise ValueError(f"panorama id for {_short(key)} is not a non-empty string: {_short(pano)}")
        out[_latlng(key)] = pano
    return out


def load_pano_mapping(path: str | Path) -> dict[tuple[float, float], str]:
    """Read a ``gps_pano_mapping`` file (``.pkl`` through :func:`safe_loads`, or ``.json``).

    Raises FileNotFoundError, :class:`UnsafePickleError` (the pickle wants code, or is malformed) or
    ValueError (the content is not a mapping); every message names the file.
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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{p}: not a readable pickle or JSON panorama mapping ({exc!s:.120})") from None
    try:
        return parse_pano_mapping(data)
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None


def write_pano_mapping_json(mapping: dict[tuple[float, float], str], path: str | Path) -> Path:
    """Write ``mapping`` as ``[[lat, lng, pano_id], ...]`` JSON (what :func:`load_pano_mapping` reads).

    Written to a temporary file and renamed, so a reader never sees half a mapping.
    """
    p = Path(path)
    rows = [[lat, lng, pano] for (lat, lng), pano in mapping.items()]
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(rows, separators=(",", ":")) + "\n", encoding="utf-8")
    tmp.replace(p)
    return p
