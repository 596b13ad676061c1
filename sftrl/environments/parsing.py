"""Tolerant extraction of named fields from a model's JSON-like reply; never raises, never evaluates.

Models answer in strict JSON, in Python-ish "loose" JSON (single quotes, trailing commas, bare words
such as ``[A, 10, J]``), inside code fences, after some prose, or cut off mid-answer. The strategy is,
in order: strip code fences; find balanced ``{...}`` candidates; try ``json.loads``; try a small
hand-written loose-JSON parser; finally pull each still-missing ``"key": value`` out with a scanner.
Every stage has size and depth limits, so hostile input costs bounded time and cannot recurse deeply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

MAX_TEXT_CHARS = 100_000
"""Replies are cut to this many characters before anything else (the env allows 65,536)."""
MAX_OBJECT_CHARS = 20_000
"""Largest ``{...}`` candidate handed to the loose parser."""
MAX_DEPTH = 20
"""Deepest nesting the loose parser follows."""
MAX_CANDIDATES = 64
"""Most ``{...}`` candidates tried per reply (the last ones: answers tend to come last)."""
MAX_LOOSE_CHARS = 100_000
"""Most characters the loose parser reads per reply, over all candidates."""
MAX_FALLBACK_VALUE_CHARS = 2_000

_FENCE_RE = re.compile(r"```[ \t]*[A-Za-z0-9_+.-]*")
_SCAN_RE = re.compile(r"[{}\"'\\\n]")
_NUMBER_RE = re.compile(r"-?(?:\d+)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_INT_RE = re.compile(r"-?\d+")
_BARE_END_RE = re.compile(r",\s*[\"']|\n|\}")
_LITERALS: dict[str, Any] = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}


class ParseError(ValueError):
    """The loose parser gave up on its input (internal: :func:`extract_fields` never raises it)."""


def normalize_key(key: Any) -> str:
    """Keys compare case-insensitively, ignoring surrounding and repeated inner whitespace."""
    return " ".join(str(key).split()).lower()


def strip_code_fences(text: str) -> str:
    """Remove markdown fence markers (```json ... ```), keeping what they enclose."""
    return _FENCE_RE.sub("\n", text)


# -- candidate objects --------------------------------------------------------------------------------
def find_objects(text: str, *, respect_quotes: bool = True) -> list[tuple[int, int]]:
    """Spans ``(start, end)`` of the top-level balanced ``{...}`` in ``text``, in order.

    With ``respect_quotes`` braces inside quoted strings do not count; a single-quoted string also ends
    at a newline, so a stray apostrophe ("I'll") cannot swallow the rest of the reply.
    """
    spans: list[tuple[int, int]] = []
    depth = 0
    start = 0
    quote = ""
    escaped = False
    for m in _SCAN_RE.finditer(text):
        ch = m.group()
        i = m.start()
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                # Only specials are ever looked at, so only an adjacent special can be the escaped one.
                escaped = i + 1 < len(text) and text[i + 1] in "\\\"'\n{}"
            elif ch == quote or (ch == "\n" and quote == "'"):
                quote = ""
            continue
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
        elif ch in "\"'" and respect_quotes and depth > 0:
            quote = ch
    return spans


# -- loose JSON ---------------------------------------------------------------------------------------
def _coerce_bare(word: str) -> Any:
    """A bare word as JSON would read it if it could: number, literal, else the (stripped) text."""
    word = word.strip()
    if word in _LITERALS:
        return _LITERALS[word]
    if _NUMBER_RE.fullmatch(word):
        try:
            return int(word) if _INT_RE.fullmatch(word) else float(word)
        except ValueError:  # e.g. more digits than int() accepts
            return word
    return word


class _Loose:
    """Recursive descent over loose JSON, depth-limited; raises only :class:`ParseError`."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def _ws(self) -> None:
        s, i = self.s, self.i
        while i < len(s) and s[i].isspace():
            i += 1
        self.i = i

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def value(self, depth: int, stops: str) -> Any:
        if depth > MAX_DEPTH:
            raise ParseError("nested too deeply")
        self._ws()
        ch = self._peek()
        if ch == "":
            raise ParseError("unexpected end")
        if ch == "{":
            return self._object(depth)
        if ch == "[":
            return self._array(depth)
        if ch in "\"'":
            return self._string()
        return self._bare(stops)

    def _string(self) -> str:
        s = self.s
        quote = s[self.i]
        i = self.i + 1
        out: list[str] = []
        while i < len(s):
            ch = s[i]
            if ch == quote:
                self.i = i + 1
                return "".join(out)
            if ch == "\\" and i + 1 < len(s):
                nxt = s[i + 1]
                if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", s[i + 2 : i + 6]):
                    out.append(chr(int(s[i + 2 : i + 6], 16)))
                    i += 6
                    continue
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
                i += 2
                continue
            out.append(ch)
            i += 1
        raise ParseError("unterminated string")

    def _bare(self, stops: str) -> Any:
        s = self.s
        i = self.i
        while i < len(s) and s[i] not in stops:
            i += 1
        word = s[self.i : i]
        if not word.strip():
            raise ParseError(f"expected a value at {self.i}")
        self.i = i
        return _coerce_bare(word)

    def _array(self, depth: int) -> list[Any]:
        self.i += 1
        out: list[Any] = []
        while True:
            self._ws()
            ch = self._peek()
            if ch == "]":
                self.i += 1
                return out
            if ch == ",":  # tolerate empty slots and trailing commas
                self.i += 1
                continue
            if ch == "":
                raise ParseError("unterminated array")
            out.append(self.value(depth + 1, ",]\n"))

    def _object(self, depth: int) -> dict[str, Any]:
        self.i += 1
        out: dict[str, Any] = {}
        while True:
            self._ws()
            ch = self._peek()
            if ch == "}":
                self.i += 1
                return out
            if ch == ",":
                self.i += 1
                continue
            if ch == "":
                raise ParseError("unterminated object")
            key = self._string() if ch in "\"'" else self._bare_key()
            self._ws()
            if self._peek() != ":":
                raise ParseError(f"expected ':' after key {key!r}")
            self.i += 1
            out[str(key)] = self.value(depth + 1, ",}\n")

    def _bare_key(self) -> str:
        s = self.s
        i = self.i
        while i < len(s) and s[i] not in ":,{}[]\n":
            i += 1
        key = s[self.i : i].strip()
        if not key:
            raise ParseError(f"expected a key at {self.i}")
        self.i = i
        return key


def loads_loose(text: str) -> Any:
    """Parse one loose-JSON value filling all of ``text``; :class:`ParseError` on failure or over limits."""
    if len(text) > MAX_OBJECT_CHARS:
        raise ParseError("input too long")
    parser = _Loose(text)
    value = parser.value(0, "")
    parser._ws()
    if parser.i != len(text):
        raise ParseError(f"trailing text at {parser.i}")
    return value


def _loads_prefix(text: str, stops: str) -> Any:
    """Parse the loose-JSON value at the start of ``text`` and ignore what follows."""
    return _Loose(text[:MAX_OBJECT_CHARS]).value(0, stops)


def _parse_object(text: str, loose: bool = True) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    if not loose:
        return None
    try:
        return loads_loose(text)
    except ParseError:
        return None


# -- field lookup -------------------------------------------------------------------------------------
def _lookup(obj: dict[str, Any], wanted: dict[str, str]) -> dict[str, Any]:
    """Values of the wanted keys (normalised -> original spelling) in ``obj`` or its nested dicts."""
    found: dict[str, Any] = {}
    queue: list[tuple[dict[str, Any], int]] = [(obj, 0)]
    while queue:
        current, level = queue.pop(0)
        for k, v in current.items():
            name = wanted.get(normalize_key(k))
            if name is not None and name not in found and v is not None:
                found[name] = v
            if isinstance(v, dict) and level < 3:
                queue.append((v, level + 1))
    return found


def _candidates(text: str) -> list[tuple[int, int]]:
    spans = dict.fromkeys(find_objects(text) + find_objects(text, respect_quotes=False))
    return sorted(spans, key=lambda span: (span[0], -span[1]))[-MAX_CANDIDATES:]


def _from_objects(text: str, wanted: dict[str, str]) -> dict[str, Any]:
    """The parsed object holding the most wanted keys (the later one on ties)."""
    best: dict[str, Any] = {}
    budget = MAX_CANDIDATES
    loose_chars = rescan_chars = MAX_LOOSE_CHARS
    pending = _candidates(text)
    while pending and budget > 0:
        start, end = pending.pop(0)
        budget -= 1
        loose = end - start <= min(MAX_OBJECT_CHARS, loose_chars)
        if loose:
            loose_chars -= end - start
        obj = _parse_object(text[start:end], loose)
        if isinstance(obj, dict):
            found = _lookup(obj, wanted)
            if found and len(found) >= len(best):
                best = found
        elif 2 < end - start <= rescan_chars + 2:
            # Unparseable as a whole: the answer may be an inner object (e.g. after broken prose).
            rescan_chars -= end - start - 2
            inner = text[start + 1 : end - 1]
            pending.extend((start + 1 + s, start + 1 + e) for s, e in find_objects(inner))
    return best


def _key_pattern(key: str) -> re.Pattern[str]:
    words = r"\s+".join(re.escape(w) for w in key.split())
    return re.compile(rf"(?:([\"'])\s*{words}\s*\1|(?<![\w\"']){words})\s*:", re.IGNORECASE)


def _scan_value(text: str, pos: int) -> Any:
    """The value after ``"key":`` at ``pos``: a (loose) JSON value, else the raw text to the line's end."""
    rest = text[pos : pos + MAX_FALLBACK_VALUE_CHARS].lstrip(" \t")
    if not rest or rest[0] == "\n":
        return None
    first = rest[0]
    if first in "[{\"'":
        try:
            return _loads_prefix(rest, ",}\n")
        except ParseError:
            pass
        line = rest.split("\n", 1)[0].strip().rstrip(",").strip()
        if first in "\"'":
            # A string cut off before its closing quote (a truncated reply): keep what is there.
            line = line[1:]
            if line.endswith(first):
                line = line[:-1]
        return line.strip() or None
    m = _BARE_END_RE.search(rest)
    end = m.start() if m else len(rest)
    return _coerce_bare(rest[:end].rstrip().rstrip(","))


def _from_regex(text: str, names: Sequence[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in names:
        matches = list(_key_pattern(name).finditer(text))
        # Quoted keys are the better evidence; among them the last one is most likely the answer.
        quoted = [m for m in matches if m.group(1)]
        for m in reversed(quoted or matches):
            value = _scan_value(text, m.end())
            if value is not None and value != "":
                found[name] = value
                break
    return found


def extract_fields(text: str, keys: Sequence[str]) -> dict[str, Any]:
    """Values of ``keys`` found in a reply (absent keys are left out, never None); never raises.

    Result keys are spelled as in ``keys``; they match reply keys case-insensitively, ignoring
    surrounding whitespace.
    """
    if not isinstance(text, str):
        text = str(text)
    text = strip_code_fences(text[:MAX_TEXT_CHARS])
    wanted: dict[str, str] = {}
    for key in keys:
        wanted.setdefault(normalize_key(key), str(key))
    found = _from_objects(text, wanted)
    missing = [name for name in wanted.values() if name not in found]
    if missing:
        found.update(_from_regex(text, missing))
    return {name: found[name] for name in wanted.values() if name in found}


def _item_text(item: Any) -> str:
    if isinstance(item, float) and item.is_integer():
        return str(int(item))
    if isinstance(item, str):
        return item.strip().strip("\"'").strip()
    return str(item)


def as_list(value: Any) -> list[str] | None:
    """A list value as strings: a real list, or text such as ``"['A', '3', 'K']"`` / ``"A, 3, K"``.

    None for anything that does not read as a list (numbers, dicts, None, empty text).
    """
    if isinstance(value, list | tuple):
        return [_item_text(v) for v in value if v is not None]
    if not isinstance(value, str):
        return None
    text = value.strip()[:MAX_OBJECT_CHARS]
    if not text:
        return None
    if text[0] in "[(":
        # "(1, 2)" reads like a Python tuple; a missing closing bracket is a truncated reply.
        inner = text[1:-1] if text[-1] in "])" else text[1:]
        try:
            parsed = loads_loose("[" + inner + "]")
        except ParseError:
            parsed = None
        if isinstance(parsed, list):
            return as_list(parsed)
        text = inner
    parts = text.split(",") if "," in text else text.split()
    items = [_item_text(p) for p in parts]
    return [p for p in items if p]
