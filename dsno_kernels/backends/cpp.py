"""The C++ ops (csrc/): backends "cpu" (csrc/spectral_time_conv.cpp) and "cuda" (csrc/cuda/).

Importing the compiled module `dsno_kernels._C` runs its TORCH_LIBRARY blocks, which define

    dsno_kernels::spectral_time_conv(Tensor x, Tensor weight) -> Tensor
    dsno_kernels::time_conv(Tensor x, Tensor weight, float negative_slope) -> Tensor
    dsno_kernels::spectral_time_conv_backward(Tensor grad_out, Tensor x, Tensor weight) -> (Tensor, Tensor)
    dsno_kernels::time_conv_backward(Tensor grad_out, Tensor x, Tensor weight, float negative_slope)
        -> (Tensor, Tensor)

with CPU kernels always and CUDA kernels when the extension was built with them, and (CPU only)

    dsno_kernels::cpu_path(Tensor x, Tensor weight) -> str

which names the path ("direct", "gemm" or "batched") the CPU kernels take for such inputs
(tests/test_cpu_paths.py holds a sample to each). This module registers their fakes and autograd
(_library.register_ops) and the two backends. The CUDA kernels follow DSNO_KERNELS_FP32 and
DSNO_KERNELS_CUDA_PATH as settings.py validates them (a bad value is a ValueError naming the variable):
the cuda backend hands them over on every call that changes them (apply_cuda_settings), through
dsno_kernels::set_cuda_settings (csrc/cuda/spectral_time_conv_cuda.cu). A direct torch.ops call follows
the values last handed over (the defaults until then).
"""

from __future__ import annotations

import torch

from .. import settings
from .._library import ROLES, register_ops
from ..api import Backend, register_backend

try:
    from .. import _C  # noqa: F401  (loads the library; its static initialisers register the ops)

    _IMPORT_ERROR = None
except ImportError as error:  # not built: the "cpu" / "cuda" backends report why
    _IMPORT_ERROR = error


def _unavailable_cpu():
    if _IMPORT_ERROR is not None:
        return (
            f"the C++ extension dsno_kernels._C is not built ({_IMPORT_ERROR}); "
            "run `pip install -e . --no-build-isolation` in the repository"
        )
    return None


# Looked up once: torch.compile cannot trace the dispatcher query, and the answer never changes.
_HAS_CUDA_KERNELS = _IMPORT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
    "dsno_kernels::spectral_time_conv", "CUDA"
)


def has_cuda_kernels() -> bool:
    """True when the extension was compiled with the CUDA kernels (csrc/cuda/)."""
    return _HAS_CUDA_KERNELS


def _unavailable_cuda():
    reason = _unavailable_cpu()
    if reason is not None:
        return reason
    if not has_cuda_kernels():
        return "the C++ extension was built without CUDA kernels (no CUDA toolkit, or DSNO_KERNELS_CUDA=0)"
    if not torch.cuda.is_available():
        return "no CUDA device is visible to PyTorch"
    return None


_cuda_settings_in_force: tuple[str, str] | None = None  # what the CUDA kernels last received


def apply_cuda_settings() -> None:
    """DSNO_KERNELS_FP32 and DSNO_KERNELS_CUDA_PATH, validated (settings.py), handed to the CUDA kernels
    when they differ from what those last received."""
    global _cuda_settings_in_force
    values = (settings.get(settings.FP32), settings.get(settings.CUDA_PATH))
    if values != _cuda_settings_in_force and _HAS_CUDA_KERNELS:
        torch.ops.dsno_kernels.set_cuda_settings(*values)
        _cuda_settings_in_force = values


if _IMPORT_ERROR is None:
    _OPS = {role: getattr(torch.ops.dsno_kernels, role).default for role in ROLES}
    _spectral_time_conv, _time_conv = register_ops(_OPS)

    def _cuda_spectral_time_conv(x, weight):
        apply_cuda_settings()
        return _spectral_time_conv(x, weight)

    def _cuda_time_conv(x, weight, negative_slope):
        apply_cuda_settings()
        return _time_conv(x, weight, negative_slope)

else:
    _OPS = {}

    def _spectral_time_conv(*args):
        raise RuntimeError(_unavailable_cpu())

    _time_conv = _cuda_spectral_time_conv = _cuda_time_conv = _spectral_time_conv

register_backend(
    Backend(
        "cpu",
        ("cpu",),
        _spectral_time_conv,
        _time_conv,
        _unavailable_cpu,
        ops=_OPS,
        auto_priority={"cpu": 10},
        benchmark_device="cpu",
    )
)
# On an H100 (benchmarks/results/2026-11-26-nvidia-h100-80gb-hbm3) the CUDA kernels beat the Triton
# ones at most DSNO shapes and in every forward+backward but one: "auto" prefers them on CUDA tensors.
register_backend(
    Backend(
        "cuda", ("cuda",), _cuda_spectral_time_conv, _cuda_time_conv, _unavailable_cuda, ops=_OPS,
        auto_priority={"cuda": 20}, benchmark_device="cuda", fp32_via_tf32_on_cuda=True,
    )
)  # fmt: skip
