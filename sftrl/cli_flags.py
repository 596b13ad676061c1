"""Command-line flags generated from pydantic config models, so config files, flags and help agree.

Each model field becomes ``--field-name`` (type, choices, default and description from the field);
a nested model's fields are flattened (``sampling.temperature`` -> ``--temperature``; a name the outer
model already uses gets the nested field's prefix: ``sampling.seed`` -> ``--sampling-seed``); a
``*_options`` dict becomes a repeatable ``--*-option KEY=VALUE``. Flags default to "not given", so a
YAML config's keys (the same names) apply unless a flag overrides them; :func:`model_values` merges
both and nests the flattened keys back into the shape the model validates.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

PATHS_KEY = "_config_paths"
"""Namespace attribute holding {key: path in the model input} for every generated flag and alias."""


def _unwrap_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if is_union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def literal_choices(annotation: Any) -> list[Any]:
    """The values of a ``Literal`` (also inside ``Optional``); empty when the type is not one."""
    annotation = _unwrap_optional(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return []


def is_model(annotation: Any) -> bool:
    annotation = _unwrap_optional(annotation)
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with the value parsed as YAML (``8`` -> 8, ``true`` -> True, ``a`` -> "a")."""
    from sftrl.config import ConfigError, YAMLSyntaxError, loads_yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expects KEY=VALUE, got {text!r}")
    try:
        value = loads_yaml(raw, key.strip()) if raw.strip() else ""
    except YAMLSyntaxError:
        value = raw  # not YAML: the text itself
    except ConfigError as exc:  # YAML, but too large or deep, or an absurd number
        raise argparse.ArgumentTypeError(str(exc)) from None
    return key.strip().replace("-", "_"), value


def default_text(field: FieldInfo) -> str:
    """How help shows a field's default ("" when there is nothing worth showing)."""
    value = field.get_default(call_default_factory=True)
    if value is None or value == [] or value == {} or isinstance(value, BaseModel):
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def field_help(field: FieldInfo, extra: str = "") -> str:
    text = " ".join((field.description or "").split())
    default = default_text(field)
    parts = [p for p in (text, extra) if p]
    if default:
        parts.append(f"(default: {default})")
    return " ".join(parts).replace("%", "%%")


def add_field_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    dest: str,
    field: FieldInfo,
    *,
    names: list[str] | None = None,
    help_extra: str = "",
    choices: list[Any] | None = None,
    helptext: str | None = None,
) -> bool:
    """Add the flag(s) for one field; returns False for types a flag cannot carry (YAML only)."""
    annotation = _unwrap_optional(field.annotation)
    flags = names or ["--" + dest.replace("_", "-")]
    common: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
    helptext = helptext if helptext is not None else field_help(field, help_extra)
    origin = typing.get_origin(annotation)
    values = choices if choices is not None else literal_choices(annotation)
    if annotation is bool:
        parser.add_argument(*flags, action=argparse.BooleanOptionalAction, help=helptext, **common)
    elif values:
        kind = type(values[0])
        parser.add_argument(*flags, type=kind, choices=values, help=helptext, **common)
    elif annotation in (int, float, str, Path):
        metavar = {int: "N", float: "X", Path: "PATH"}.get(annotation, dest.upper())
        parser.add_argument(*flags, type=annotation, metavar=metavar, help=helptext, **common)
    elif origin is list:
        (item,) = typing.get_args(annotation) or (str,)
        item = item if item in (int, float, str, Path) else str
        metavar = {int: "N", float: "X", Path: "PATH"}.get(item, dest.upper().removesuffix("S"))
        parser.add_argument(
            *flags, type=item, nargs="+", action="extend", metavar=metavar, help=helptext, **common
        )
    elif origin is dict and dest.endswith("_options"):
        single = flags[0].removesuffix("s")
        parser.add_argument(
            single,
            type=key_value,
            action="append",
            metavar="KEY=VALUE",
            help=f"{helptext} (repeatable)",
            **common,
        )
    else:
        return False
    return True


def add_model_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    *,
    skip: frozenset[str] | set[str] = frozenset(),
    aliases: dict[str, list[str]] | None = None,
    path: tuple[str, ...] = (),
    taken: set[str] | None = None,
) -> dict[str, tuple[str, ...]]:
    """One flag per field of ``model`` (nested models flattened); returns {dest: path in the input}.

    ``aliases`` maps a field to its flag names (first one shown), e.g. ``{"updates": ["--max-steps"]}``;
    ``skip`` leaves fields out (they stay YAML-only or get a hand-made flag).
    """
    aliases = aliases or {}
    taken = taken if taken is not None else set()
    paths: dict[str, tuple[str, ...]] = {}
    own = set(model.model_fields) - set(skip)
    taken |= own
    nested: list[tuple[str, FieldInfo]] = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        if is_model(field.annotation):
            nested.append((name, field))
            continue
        names = aliases.get(name)
        if add_field_flag(parser, name, field, names=names):
            paths[name] = (*path, name)
            for alias in names or []:
                paths[alias.lstrip("-").replace("-", "_")] = (*path, name)
    for name, field in nested:
        sub = _unwrap_optional(field.annotation)
        clash = {n for n in sub.model_fields if n in taken}
        for sub_name, sub_field in sub.model_fields.items():
            if sub_name in skip or is_model(sub_field.annotation):
                continue
            dest = f"{name}_{sub_name}" if sub_name in clash else sub_name
            if dest in taken and sub_name not in clash:
                continue
            names = aliases.get(dest)
            if add_field_flag(parser, dest, sub_field, names=names):
                paths[dest] = (*path, name, sub_name)
                taken.add(dest)
    return paths


def model_values(
    ns: argparse.Namespace, file_values: dict[str, Any], *, exclude: set[str] | frozenset[str] = frozenset()
) -> dict[str, Any]:
    """File values overridden by the flags given, nested into the shape the config model validates.

    File keys use the flags' names (``temperature``) or the model's own nesting (``sampling:``);
    ``*_options`` pairs from flags update the file's mapping key by key.
    """
    from sftrl.config import normalize_key

    paths: dict[str, tuple[str, ...]] = dict(getattr(ns, PATHS_KEY, None) or {})
    flags = {k: v for k, v in vars(ns).items() if k != PATHS_KEY and k not in exclude}
    merged = {normalize_key(k): v for k, v in file_values.items() if normalize_key(k) not in exclude}
    for key, value in flags.items():
        if key.endswith("_options") and isinstance(value, list):
            options = dict(merged.get(key) or {})
            options.update(dict(value))
            value = options
        merged[key] = value
    out: dict[str, Any] = {}
    for key, value in merged.items():
        where = paths.get(key, (key,))
        node = out
        for part in where[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"config key {part!r} must be a mapping")
        leaf = where[-1]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = {**node[leaf], **value}
        else:  # copied: nesting flag values into it must not change the caller's file values
            node[leaf] = dict(value) if isinstance(value, dict) else value
    return out
