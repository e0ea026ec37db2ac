"""YAML configs: presets, inheritance (`base:`), and `section.key=value` overrides.

A config is a two-level mapping (section -> key -> value) whose keys are exactly those of
configs/default.yaml; a config file names its parent with `base:` (a preset name or a path, relative
to the file) and changes what differs. Unknown keys are errors, so a typo never silently does nothing.
Keys whose default is a mapping ({}, e.g. model.overrides) take any sub-keys.
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

__all__ = ["presets", "load_config", "apply_overrides", "set_value", "dump_config"]


# PyYAML reads 1e-4 (no dot) as a string; numbers are what anyone writing it means
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _parse_numbers(value: Any) -> Any:
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_parse_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _parse_numbers(v) for k, v in value.items()}
    return value


def _preset_dir():
    return resources.files("dsno") / "configs"


def presets() -> list[str]:
    """Names of the built-in presets (besides `default`)."""
    return sorted(p.name[:-5] for p in _preset_dir().iterdir() if p.name.endswith(".yaml") and p.name != "default.yaml")


def _read(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = Path(name_or_path)
    # a preset name ("tiny") stays a preset even where a folder of that name sits in the working directory
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"config file {name_or_path} not found")
        text, where, origin = path.read_text(), path.parent, str(path.resolve())
    else:
        preset = _preset_dir() / f"{name_or_path}.yaml"
        if not preset.is_file():
            raise ValueError(f"unknown config {name_or_path!r}: not a file, and the presets are {presets()}")
        text, where, origin = preset.read_text(), None, f"preset:{name_or_path}"
    if origin in seen:
        raise ValueError(f"config inheritance loops through {origin}")
    data = _parse_numbers(yaml.safe_load(text) or {})
    if not isinstance(data, dict):
        raise ValueError(f"{name_or_path}: a config must be a mapping of sections")
    base = data.pop("base", None)
    if base is None:
        return data
    base_ref = str(where / base) if where is not None and (where / base).exists() else base
    merged = _read(base_ref, seen + (origin,))
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ValueError(f"{name_or_path}: section {section!r} must be a mapping")
        merged.setdefault(section, {}).update(values)
    return merged


def _defaults() -> dict[str, Any]:
    return _read("default")


def _validate(config: dict[str, Any], defaults: dict[str, Any]) -> None:
    for section, values in config.items():
        if section not in defaults:
            raise ValueError(f"unknown config section {section!r}; sections: {sorted(defaults)}")
        unknown = sorted(set(values) - set(defaults[section]))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in section {section!r}; keys: {sorted(defaults[section])}")


def load_config(name_or_path: str = "default", overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The resolved config: default.yaml, then the named preset/file chain, then `overrides`."""
    defaults = _defaults()
    config = copy.deepcopy(defaults)
    loaded = _read(name_or_path)
    _validate(loaded, defaults)
    for section, values in loaded.items():
        config[section].update(values)
    return apply_overrides(config, overrides)


def set_value(config: dict[str, Any], key: str, value: Any) -> None:
    """config[section][name] = value for key "section.name" (or "section.name.sub" into a mapping)."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in config:
        raise ValueError(f"config key must be section.name with a section in {sorted(config)}, got {key!r}")
    section = config[parts[0]]
    if parts[1] not in section:
        raise ValueError(f"unknown key {parts[1]!r} in section {parts[0]!r}; keys: {sorted(section)}")
    if len(parts) == 2:
        section[parts[1]] = value
        return
    target = section[parts[1]]
    if not isinstance(target, dict):
        raise ValueError(f"{'.'.join(parts[:2])} is not a mapping, so {key!r} cannot be set")
    for part in parts[2:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply "section.key=value" strings; values are parsed as YAML (1e-4, [1, 2], null, true)."""
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override must look like section.key=value, got {item!r}")
        set_value(config, key.strip(), _parse_numbers(yaml.safe_load(text)) if text.strip() else None)
    return config


def dump_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
