"""The C++ ops (csrc/): backends "cpu" (csrc/spectral_time_conv.cpp) and "cuda" (csrc/cuda/).

Importing the compiled module `dsno_kernels._C` runs its TORCH_LIBRARY blocks, which define

    dsno_kernels::spectral_time_conv(Tensor x, Tensor weight) -> Tensor
    dsno_kernels::time_conv(Tensor x, Tensor weight, float negative_slope) -> Tensor
    dsno_kernels::spectral_time_conv_backward(Tensor grad_out, Tensor x, Tensor weight) -> (Tensor, Tensor)
    dsno_kernels::time_conv_backward(Tensor grad_out, Tensor x, Tensor weight, float negative_slope)
        -> (Tensor, Tensor)

with CPU kernels always and CUDA kernels when the extension was built with them. This module adds the
fake implementations and autograd, and registers the two backends.
"""

from __future__ import annotations

import torch

from ._library import register_op_pair
from .api import Backend, register_backend

try:
    from . import _C  # noqa: F401  (loads the library; its static initialisers register the ops)

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


if _IMPORT_ERROR is None:
    ops = torch.ops.dsno_kernels
    register_op_pair(ops.spectral_time_conv.default, ops.spectral_time_conv_backward.default)
    register_op_pair(ops.time_conv.default, ops.time_conv_backward.default)

    def _spectral_time_conv(x, weight):
        return torch.ops.dsno_kernels.spectral_time_conv(x, weight)

    def _time_conv(x, weight, negative_slope):
        return torch.ops.dsno_kernels.time_conv(x, weight, negative_slope)

else:

    def _spectral_time_conv(*args):
        raise RuntimeError(_unavailable_cpu())

    _time_conv = _spectral_time_conv

_OPS = (
    {
        name: getattr(torch.ops.dsno_kernels, name).default
        for name in ("spectral_time_conv", "time_conv", "spectral_time_conv_backward", "time_conv_backward")
    }
    if _IMPORT_ERROR is None
    else {}
)
register_backend(Backend("cpu", ("cpu",), _spectral_time_conv, _time_conv, _unavailable_cpu, ops=_OPS))
register_backend(Backend("cuda", ("cuda",), _spectral_time_conv, _time_conv, _unavailable_cuda, ops=_OPS))
