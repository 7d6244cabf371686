"""The raw side of configuration: an experiment file read into a plain mapping, and
``section.key=value`` overrides parsed and merged into it.

Nothing here knows the typed sections: ``gpt2ft.config`` turns the merged mapping into a
validated ``Config`` and rejects the keys it does not know. Errors a user can cause (a missing
file, bad YAML, a malformed override) are ``ConfigError`` sentences that say what to change.
"""
from __future__ import annotations

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
