"""The raw side of configuration: an experiment file read into a plain mapping, and
``section.key=value`` overrides parsed and merged into it.

Nothing here knows the typed sections: ``gpt2ft.config`` declares them, and ``build`` turns
the merged mapping into one of them (YAML values coerced to the fields' types, unknown keys
refused). Errors a user can cause (a missing file, bad YAML, a malformed override) are
``ConfigError`` sentences that say what to change.

Not pydantic's ``TypeAdapter`` (checked with pydantic 2.14): its lax mode reads ``epochs: true``
as 1 and refuses ``compile: off`` (a YAML boolean), and its errors need translating into these
sentences; a sketch took about 55 lines for the 51 of ``coerce`` and ``build`` and still lost a
range's key (its ``__post_init__`` error reaches pydantic without one).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from gpt2ft.errors import ConfigError


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of sections in the YAML file ``path`` (empty for an empty file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass one of experiments/*.yaml.")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}; fix its syntax.") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections (model, data, train, ...).")
    return loaded


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=3e-5"`` -> ``("train.lr", 3e-05)``; values are read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value.")
    key, _, value = text.partition("=")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw["a"]["b"] = value`` for ``dotted`` "a.b", making the sections on the way."""
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a section.")
        node = child
    node[parts[-1]] = value


def deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge ``new`` into ``base`` in place, section by section (a partial section keeps the rest)."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Turn a YAML value into the field's type, or say which key is wrong."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # every union here is Optional[X]: None or an X
        return None if value is None else coerce(value, typing.get_args(tp)[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}.")
        return build(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list.")
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}.")
    if tp in (int, float):
        try:  # PyYAML reads "3e-5" (no dot) as a string, so a numeric string is a number
            number = float(value)
            if not isinstance(value, bool) and (tp is float or number == int(number)):  # int(): no NaN, inf
                return tp(number)
        except (TypeError, ValueError, OverflowError):
            pass
        raise ConfigError(f"{key} must be {'an integer' if tp is int else 'a number'}, got {value!r}.")
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on (train.compile) as a boolean
            value = "on" if value else "off"
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key} must be a string, got {value!r}.")
        return str(value)
    raise TypeError(f"{key}: no coercion for its type {tp!r}")  # a field type this function does not know


def build(cls: Any, raw: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]}; known keys here: {', '.join(sorted(names))}.")
    kwargs = {k: coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if getattr(cls, "KEYLESS", False):  # a range does not know its own key
            raise ConfigError(f"{prefix}: {exc} Swap or fix the two values.") from None
        raise
    except TypeError as exc:  # a required field (e.g. a range's low) is missing
        raise ConfigError(f"{prefix or 'config'} is incomplete: {exc}.") from None
