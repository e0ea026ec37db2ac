"""What dsno_kernels can run here, and why not:

    python -m dsno_kernels.info

Versions (dsno_kernels, Python, torch and its CUDA, Triton), the CUDA devices, the compiled extension
and the GPU architectures its CUDA kernels were compiled for, every registered backend with whether it
runs here (and why not), what backend="auto" picks per device type, and the DSNO_KERNELS_* environment
variables (settings.py) with their values in force. Exits 1 when one of those values is invalid.
"""

from __future__ import annotations

import os
import platform
import re
import sys

import torch

import dsno_kernels
from dsno_kernels import api, settings
from dsno_kernels.backends import cpp as cpp_backend


def _triton_version() -> str:
    try:
        import triton
    except ImportError as error:
        return f"not installed ({error})"
    return triton.__version__


def _extension_archs() -> list[str]:
    """The sm_XX the extension's CUDA kernels were compiled for, as nvcc records them in the binary's
    fat binary (`-arch sm_90`); empty when the extension has no CUDA kernels."""
    if not cpp_backend.has_cuda_kernels():
        return []
    with open(cpp_backend._C.__file__, "rb") as f:
        found = set(re.findall(rb"-arch sm_(\d+a?)\b", f.read()))
    return sorted((a.decode() for a in found), key=lambda a: (int(a.rstrip("a")), a))


def _devices() -> list[str]:
    if not torch.cuda.is_available():
        return []
    names = []
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        names.append(f"cuda:{index} {torch.cuda.get_device_name(index)} (sm_{major}{minor})")
    return names


def _extension() -> str:
    reason = cpp_backend._unavailable_cpu()
    if reason is not None:
        return reason
    if not cpp_backend.has_cuda_kernels():
        return f"{cpp_backend._C.__file__} (CPU kernels; built without CUDA kernels)"
    archs = ", ".join(f"sm_{a}" for a in _extension_archs()) or "unknown"
    return f"{cpp_backend._C.__file__} (CPU kernels; CUDA kernels for {archs})"


def _backend_lines() -> list[str]:
    lines = []
    for backend in api.registered_backends():
        reason = backend.unavailable_reason()
        devices = [t for t in backend.device_types if t != "cuda" or torch.cuda.is_available()]
        if reason is None and not devices:
            reason = f"it runs on {'/'.join(backend.device_types)} tensors and no CUDA device is visible"
        traits = [f"devices {'/'.join(backend.device_types)}"]
        if backend.max_time_points is not None:
            traits.append(f"T <= {backend.max_time_points}")
        if backend.interpreted:
            traits.append("interpreted (TRITON_INTERPRET=1)")
        if backend.auto_priority:
            traits.append("auto priority " + ", ".join(f"{d} {p}" for d, p in backend.auto_priority.items()))
        status = "runs here" if reason is None else f"cannot run here: {reason}"
        lines.append(f"  {backend.name:<10} {status}")
        lines.append(f"  {'':<10} ({'; '.join(traits)})")
    return lines


def _auto_lines() -> list[str]:
    lines = []
    for device_type in ("cpu", "cuda"):
        if device_type == "cuda" and not torch.cuda.is_available():
            continue
        x = torch.empty(1, 4, 1, device=device_type)
        try:
            picked = api.resolve_backend("auto", x).name
        except ValueError as error:
            picked = f"error: {error}"
        lines.append(f"  {device_type} tensors: {picked}")
    return lines


def _variable_lines() -> tuple[list[str], bool]:
    lines, valid = [], True
    for name, variable in settings.VARIABLES.items():
        raw = os.environ.get(name)
        try:
            api.backend_setting() if name == settings.BACKEND else settings.get(name)
            problem = ""
        except ValueError as error:
            problem, valid = f"  INVALID: {error}", False
        shown = f"{raw!r}" if raw is not None else f"unset (default {variable.default!r})"
        lines.append(f"  {name:<30} {shown}{problem}")
        lines.append(f"  {'':<30} {variable.used_by}: {variable.meaning}")
    interpret = os.environ.get("TRITON_INTERPRET")
    shown = repr(interpret) if interpret is not None else "unset"
    lines.append(f"  {'TRITON_INTERPRET':<30} {shown}")
    lines.append(f"  {'':<30} Triton's own: 1 runs the triton backend's kernels on CPU tensors in its interpreter")
    return lines, valid


def report() -> tuple[str, bool]:
    """The report's text, and whether every DSNO_KERNELS_* value in force is valid."""
    torch_cuda = torch.version.cuda or ("HIP " + torch.version.hip if torch.version.hip else "none (CPU build)")
    variables, valid = _variable_lines()
    lines = [
        f"dsno_kernels {dsno_kernels.__version__} ({os.path.dirname(dsno_kernels.__file__)})",
        f"python       {platform.python_version()} ({sys.executable})",
        f"torch        {torch.__version__} (CUDA {torch_cuda})",
        f"triton       {_triton_version()}",
        f"devices      {', '.join(_devices()) or 'no CUDA device visible'}",
        f"extension    {_extension()}",
        "",
        "backends:",
        *_backend_lines(),
        "",
        'backend="auto" picks, for',
        *_auto_lines(),
        "",
        "environment variables:",
        *variables,
    ]
    return "\n".join(lines), valid


def main() -> int:
    text, valid = report()
    print(text)
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
