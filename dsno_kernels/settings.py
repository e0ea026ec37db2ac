"""Every DSNO_KERNELS_* environment variable, in one place: its allowed values, its default, who uses
it, and the one validator. The README's table lists the same variables.

Run-time variables are read on every call (a change takes effect on the next call) through `get`,
which raises a ValueError naming the variable for any value outside the allowed ones; an unset or
empty variable means its default. No other code reads these variables: the CUDA kernels
receive DSNO_KERNELS_FP32 and DSNO_KERNELS_CUDA_PATH as validated here (backends/cpp.py,
apply_cuda_settings). setup.py loads this file by path (it must not import the package it builds)
for the two build-time variables: keep it stdlib-only.
"""

from __future__ import annotations

import dataclasses
import os
import re

__all__ = ["Variable", "VARIABLES", "get", "in_force", "cuda_archs"]


@dataclasses.dataclass(frozen=True)
class Variable:
    name: str
    default: str
    # The allowed values; None when `pattern` (a regular expression) or a caller checks them instead.
    choices: tuple[str, ...] | None
    used_by: str
    meaning: str
    pattern: str | None = None


BACKEND = "DSNO_KERNELS_BACKEND"
FP32 = "DSNO_KERNELS_FP32"
CUDA_PATH = "DSNO_KERNELS_CUDA_PATH"
TRITON_AUTOTUNE = "DSNO_KERNELS_TRITON_AUTOTUNE"
BUILD_CUDA = "DSNO_KERNELS_CUDA"
BUILD_CUDA_ARCHS = "DSNO_KERNELS_CUDA_ARCHS"

VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        Variable(
            BACKEND, "auto", None, "dispatch (api.py)",
            "backend that backend=\"auto\" runs: a registered backend's name or auto (an explicit "
            "backend= argument wins)",
        ),
        Variable(
            FP32, "tf32", ("tf32", "tf32x3", "ieee"), "triton and cuda backends",
            "fp32 GEMMs on the GPU: tf32 tensor cores, three tf32 passes (close to fp32), or exact fp32 "
            "(the cuda backend computes tf32x3 as ieee)",
        ),
        Variable(
            CUDA_PATH, "auto", ("auto", "fused", "general"), "cuda backend",
            "auto picks the fused kernels where they apply; fused makes an input they refuse an error; "
            "general always takes the general kernels",
        ),
        Variable(
            TRITON_AUTOTUNE, "1", ("0", "1"), "triton backend",
            "1 times up to four launch configurations per problem shape; 0 runs the first, untimed",
        ),
        Variable(
            BUILD_CUDA, "auto", ("0", "1", "auto"), "setup.py (build time)",
            "0 builds the C++ CPU kernels only, 1 requires the CUDA kernels too, auto builds them when a "
            "CUDA toolkit and a CUDA build of torch are present",
        ),
        Variable(
            BUILD_CUDA_ARCHS, "80;90", None, "setup.py (build time)",
            "compute capabilities the CUDA kernels are compiled for, separated by ; or ,",
            pattern=r"\s*\d+a?\s*([;,]\s*\d+a?\s*)*[;,]?\s*",
        ),
    )
}  # fmt: skip


# os.environ.get costs ~0.7 us (its key encoding and value decoding are Python code), and the kernels
# read their variables on every call: on POSIX the raw bytes are looked up in the dict behind
# os.environ, which every change through os.environ (monkeypatch included) updates, and each distinct
# value is validated once.
_ENVIRON_BYTES = getattr(os.environ, "_data", None) if os.name == "posix" else None
if not isinstance(_ENVIRON_BYTES, dict):
    _ENVIRON_BYTES = None
_ENCODED_NAMES = {name: os.fsencode(name) for name in VARIABLES}
_VALIDATED: dict = {}  # (name, raw value, choices) -> the validated value


def get(name: str, choices: tuple[str, ...] | None = None) -> str:
    """The value of the variable `name` (its default when unset or empty), validated: a ValueError
    names the variable, the value and what is allowed. `choices` replaces the declared allowed values
    where they are only known at run time (the registered backends for DSNO_KERNELS_BACKEND)."""
    if _ENVIRON_BYTES is None:
        key = (name, os.environ.get(name), choices)
    else:
        key = (name, _ENVIRON_BYTES.get(_ENCODED_NAMES[name]), choices)
    value = _VALIDATED.get(key)
    if value is None:
        value = _validated(name, os.environ.get(name, ""), choices)
        if len(_VALIDATED) > 1024:  # distinct values seen: a handful in practice (_cache.py's bound)
            _VALIDATED.clear()
        _VALIDATED[key] = value
    return value


def _validated(name: str, raw: str, choices: tuple[str, ...] | None) -> str:
    variable = VARIABLES[name]
    value = raw.strip() or variable.default
    allowed = choices if choices is not None else variable.choices
    if allowed is not None and value not in allowed:
        raise ValueError(f"environment variable {name} must be one of {list(allowed)}, got {value!r}")
    if variable.pattern is not None and not re.fullmatch(variable.pattern, value):
        raise ValueError(f"environment variable {name} must look like {variable.default!r}, got {value!r}")
    return value


def cuda_archs() -> list[str]:
    """DSNO_KERNELS_CUDA_ARCHS as a list, e.g. ["80", "90"]."""
    return [a.strip() for a in re.split(r"[;,]", get(BUILD_CUDA_ARCHS)) if a.strip()]


def in_force() -> dict[str, str]:
    """The variables set in this process's environment, as set (unvalidated)."""
    return {name: os.environ[name] for name in VARIABLES if name in os.environ}
