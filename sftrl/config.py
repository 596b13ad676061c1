"""Run configuration: YAML files whose keys mirror CLI flags, merged with flags and validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or value that cannot be used (the message names the key and the fix)."""


# A run config is a few dozen options: anything near these limits is a mistake or an attack (a YAML
# "billion laughs" of nested aliases or merge keys expands exponentially while it is being built).
MAX_CONFIG_BYTES = 1 << 20
MAX_ALIASES = 32
MAX_DEPTH = 32
MAX_VALUES = 1_000_000


class _TooBig(Exception):
    pass


class YAMLSyntaxError(ConfigError):
    """The text is not YAML at all (as opposed to YAML refused for its size or values)."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses many aliases and deep nesting while composing the document."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _TooBig(f"uses more than {MAX_ALIASES} YAML aliases (*name)")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooBig(f"nests deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _count_values(data: Any) -> None:
    """Refuse a document that expands (aliases count once per use) to more than MAX_VALUES values."""
    budget = MAX_VALUES
    stack = [data]
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            raise _TooBig(f"expands to more than {MAX_VALUES} values")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)


def loads_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text`` safely and within bounds; every failure is one :class:`ConfigError` line."""
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader: builds plain data only
        _count_values(data)
    except _TooBig as exc:
        raise ConfigError(f"{source} {exc}: refusing it") from None
    except yaml.MarkedYAMLError as exc:
        where = (
            f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})"
            if exc.problem_mark
            else ""
        )
        raise YAMLSyntaxError(f"{source} is not valid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError as exc:
        raise YAMLSyntaxError(f"{source} is not valid YAML: {' '.join(str(exc).split())}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. an integer of 5000 digits
        raise ConfigError(f"{source}: {' '.join(str(exc).split())[:200]}") from None
    return data


def load_yaml(path: Path | str) -> dict[str, Any]:
    """Read a YAML config whose top level is a mapping; keys may use ``-`` or ``_``."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {p} is larger than {MAX_CONFIG_BYTES} bytes: not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config {p} is not UTF-8 text (a binary file?)") from None
    data = loads_yaml(text, f"config {p}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {p} must be a mapping of option: value")
    return {normalize_key(k): v for k, v in data.items()}


def validation_message(exc: Any) -> str:
    """A pydantic ``ValidationError`` as one line: ``option-name: what is wrong`` per error.

    A model-level check has no field to name, and pydantic's "Value error, " prefix is noise: both go.
    """
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]).replace("_", "-")
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def normalize_key(key: object) -> str:
    return str(key).strip().replace("-", "_")


def merge(file_values: dict[str, Any], flag_values: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line override the file."""
    merged = dict(file_values)
    merged.update({normalize_key(k): v for k, v in flag_values.items()})
    return merged


def dump_yaml(values: dict[str, Any], path: Path) -> None:
    """Write the effective config next to a run's log so the run can be repeated exactly."""
    path.write_text(yaml.safe_dump(values, sort_keys=True), encoding="utf-8")
