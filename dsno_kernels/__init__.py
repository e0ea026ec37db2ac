"""dsno_kernels: fused kernels for DSNO's Fourier temporal convolution, as PyTorch ops.

    spectral_time_conv(x, weight, *, backend="auto")
    time_conv(x, weight, *, negative_slope=0.01, backend="auto")
    available_backends(), backends(), get_backend(name)     (the registered Backend records)
    SpectralTimeConv(in_channels, out_channels, modes), TimeConv(channels, modes, negative_slope=0.01)
"""

from .api import Backend, available_backends, backends, get_backend, resolve_backend, spectral_time_conv, time_conv
from .modules import SpectralTimeConv, TimeConv
from .reference import spectral_time_conv_reference, time_conv_reference  # registers the "reference" backend
from . import cpp_ops  # noqa: F401  registers the "cpu" and "cuda" backends
from . import triton_spectral  # noqa: F401  registers the "triton" backend

__all__ = [
    "spectral_time_conv",
    "time_conv",
    "available_backends",
    "backends",
    "get_backend",
    "Backend",
    "resolve_backend",
    "SpectralTimeConv",
    "TimeConv",
    "spectral_time_conv_reference",
    "time_conv_reference",
]
__version__ = "0.1.0"
