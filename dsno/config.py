"""YAML configs: presets, inheritance (`base:`), and `section.key=value` overrides.

A config is a two-level mapping (section -> key -> value) whose keys are exactly those of
configs/default.yaml; a config file names its parent with `base:` (a preset name or a path, relative
to the file) and changes what differs. Unknown keys are errors, so a typo never silently does nothing.
Keys whose default is a mapping ({}, e.g. model.overrides) take any sub-keys.

`Config` below is the one typed schema of every setting: each key's type and allowed range, one line
each. `load_config` (and `validate_config`, which train/sample/gen-traj call on any config they are
given) checks the resolved config against it before anything is computed or written; a bad value is a
`ConfigError` naming the key, the value and what is allowed. To add a setting: one line in
configs/default.yaml (its default and comment) and one line in the section's class here.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "ConfigError",
    "Config",
    "presets",
    "load_config",
    "validate_config",
    "apply_overrides",
    "set_value",
    "dump_config",
]


class ConfigError(ValueError):
    """A config that cannot be used: unknown key, wrong type, value out of range, missing file."""


# --------------------------------------------------------------------------------------------------
# The schema. Strict types (YAML already gives numbers, booleans and lists their types; "abc" is not an
# int and 2.5 is not a step count), no NaN/inf, no extra keys.

Count = Annotated[int, Field(ge=1)]  # steps, sizes, intervals: at least 1
Natural = Annotated[int, Field(ge=0)]  # seeds, warmup, workers: 0 allowed
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Text = Annotated[str, Field(min_length=1)]


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    return value


Device = Annotated[str, AfterValidator(_device)]


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ModelSection(_Section):
    name: Text  # dsno.model preset or "package.module:function"
    overrides: dict[str, Any]
    temporal_precision: Literal["fp32", "autocast"]  # fp32: DSNO's numerics; autocast: the fused fast path


class DataSection(_Section):
    shape: Annotated[list[Count], Field(min_length=1)]
    num_classes: Count | None


class ScheduleSection(_Section):
    logsnr_min: float
    logsnr_max: float
    t_min: Annotated[float, Field(ge=0.0, lt=1.0)]  # DSNO's data.epsilon is 0.0
    num_steps: Count
    num_points: Count
    spacing: Literal["uniform", "quadratic"]

    @model_validator(mode="after")
    def _fits(self):
        from .schedule import select_time_indices

        if self.logsnr_min >= self.logsnr_max:
            raise ValueError(f"logsnr_min ({self.logsnr_min}) must be below logsnr_max ({self.logsnr_max})")
        select_time_indices(self.num_steps, self.num_points, self.spacing)
        return self


class TeacherSection(_Section):
    kind: Literal["gmm", "backbone"]
    backbone: Text | None
    backbone_overrides: dict[str, Any]
    weights: Text | None
    prediction: Literal["x0", "eps", "v"]
    bf16: bool
    gmm_path: Text | None
    gmm_components: Count
    gmm_seed: Natural


class TrajSection(_Section):
    out: Text
    num_samples: Count
    shard_size: Count
    batch_size: Count
    solver: Literal["ddim", "heun"]
    record: Literal["x0", "xt"]
    seed: Natural
    dtype: Literal["float32", "float16"]
    max_new_shards: Count | None
    device: Device


class TrainSection(_Section):
    data: Text | None
    out: Text
    steps: Count
    batch_size: Count
    grad_accum: Count
    lr: Annotated[float, Field(gt=0.0)]
    betas: Annotated[list[Annotated[float, Field(ge=0.0, lt=1.0)]], Field(min_length=2, max_length=2)]
    eps: Annotated[float, Field(gt=0.0)]
    weight_decay: Annotated[float, Field(ge=0.0)]
    warmup: Natural
    warmup_start_factor: Annotated[float, Field(gt=0.0, le=1.0)]
    milestones: list[Natural]
    gamma: Annotated[float, Field(gt=0.0)]
    loss: Literal["L1", "L2", "vgg"]
    vgg_weights: Text  # "imagenet" (torchvision's, downloaded) or a vgg16 state_dict file
    loss_weight: Literal["snr", "none"]
    time_points: Annotated[list[int], Field(min_length=1)] | None  # indices into the dataset's points
    ema_decay: Probability
    grad_clip: Annotated[float, Field(ge=0.0)]  # 0 disables
    bf16: bool
    seed: Natural
    num_workers: Natural
    log_every: Count
    save_every: Count
    keep_every: Natural  # 0 = never
    resume: bool
    init_backbone: Text | None
    device: Device


class SampleSection(_Section):
    checkpoint: Text | None
    out: Text
    num_samples: Count
    batch_size: Count
    seed: Natural
    class_label: Natural | None
    use_ema: bool
    png_scale: Annotated[int, Field(ge=1, le=64)]
    device: Device
    noise: Literal["seeded", "dsno"]
    uint8: Literal["truncate", "round"]
    images: Literal["none", "folder", "zip"]
    npz: bool
    save_trajectory: bool


class Config(_Section):
    model: ModelSection
    data: DataSection
    schedule: ScheduleSection
    teacher: TeacherSection
    traj: TrajSection
    train: TrainSection
    sample: SampleSection


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    message = message.replace("Input should be", "must be").replace("Field required", "missing")
    if error["type"] == "missing":
        return f"{key}: missing"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if isinstance(error["input"], dict):  # a whole-section check (e.g. schedule points vs steps)
        return f"{key}: {message}"
    return f"{key}={error['input']!r}: {message}"


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config checked against `Config` (ints given for floats become floats); ConfigError otherwise."""
    try:
        return Config.model_validate(config).model_dump()
    except ValidationError as error:
        raise ConfigError("; ".join(_describe(e) for e in error.errors())) from None


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
            raise ConfigError(f"config file {name_or_path} not found")
        text, where, origin = path.read_text(), path.parent, str(path.resolve())
    else:
        preset = _preset_dir() / f"{name_or_path}.yaml"
        if not preset.is_file():
            raise ConfigError(f"unknown config {name_or_path!r}: not a file, and the presets are {presets()}")
        text, where, origin = preset.read_text(), None, f"preset:{name_or_path}"
    if origin in seen:
        raise ConfigError(f"config inheritance loops through {origin}")
    try:
        data = _parse_numbers(yaml.safe_load(text) or {})
    except yaml.YAMLError as error:
        raise ConfigError(f"{name_or_path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name_or_path}: a config must be a mapping of sections")
    base = data.pop("base", None)
    if base is None:
        return data
    base_ref = str(where / base) if where is not None and (where / base).exists() else base
    merged = _read(base_ref, seen + (origin,))
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{name_or_path}: section {section!r} must be a mapping")
        merged.setdefault(section, {}).update(values)
    return merged


def _defaults() -> dict[str, Any]:
    return _read("default")


def _validate(config: dict[str, Any], defaults: dict[str, Any]) -> None:
    for section, values in config.items():
        if section not in defaults:
            raise ConfigError(f"unknown config section {section!r}; sections: {sorted(defaults)}")
        unknown = sorted(set(values) - set(defaults[section]))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in section {section!r}; keys: {sorted(defaults[section])}")


def load_config(name_or_path: str = "default", overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The resolved config: default.yaml, then the named preset/file chain, then `overrides`."""
    defaults = _defaults()
    config = copy.deepcopy(defaults)
    loaded = _read(name_or_path)
    _validate(loaded, defaults)
    for section, values in loaded.items():
        config[section].update(values)
    return validate_config(apply_overrides(config, overrides))


def set_value(config: dict[str, Any], key: str, value: Any) -> None:
    """config[section][name] = value for key "section.name" (or "section.name.sub" into a mapping)."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in config:
        raise ConfigError(f"config key must be section.name with a section in {sorted(config)}, got {key!r}")
    section = config[parts[0]]
    if parts[1] not in section:
        raise ConfigError(f"unknown key {parts[1]!r} in section {parts[0]!r}; keys: {sorted(section)}")
    if len(parts) == 2:
        section[parts[1]] = value
        return
    target = section[parts[1]]
    if not isinstance(target, dict):
        raise ConfigError(f"{'.'.join(parts[:2])} is not a mapping, so {key!r} cannot be set")
    for part in parts[2:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply "section.key=value" strings; values are parsed as YAML (1e-4, [1, 2], null, true)."""
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override must look like section.key=value, got {item!r}")
        try:
            value = _parse_numbers(yaml.safe_load(text)) if text.strip() else None
        except yaml.YAMLError:
            value = text  # not YAML: kept as the string it is, which the schema then judges
        set_value(config, key.strip(), value)
    return config


def dump_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
