"""Run configuration: YAML files whose keys mirror CLI flags, merged with flags and validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or value that cannot be used (the message names the key and the fix)."""


def load_yaml(path: Path | str) -> dict[str, Any]:
    """Read a YAML config whose top level is a mapping; keys may use ``-`` or ``_``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {p} is not valid YAML: {exc}") from exc
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
