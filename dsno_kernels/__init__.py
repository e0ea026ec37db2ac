"""dsno_kernels: fused kernels for DSNO's Fourier temporal convolution, as PyTorch ops.

spectral_time_conv(x, weight, *, backend="auto")
time_conv(x, weight, *, negative_slope=0.01, backend="auto")
available_backends(), registered_backends(), get_backend(name)     (the registered Backend records)
clear_caches()                              (forgets every cached plan, autotuner choice and resolution)
SpectralTimeConv(in_channels, out_channels, modes), TimeConv(channels, modes, negative_slope=0.01)
"""

from ._cache import clear_caches
from .api import (
    Backend,
    available_backends,
    get_backend,
    registered_backends,
    resolve_backend,
    spectral_time_conv,
    time_conv,
)
from .backends import cpp as _cpp_backend  # noqa: F401  "cpu" and "cuda"
from .backends import triton as _triton_backend  # noqa: F401  "triton"

# Each backend module registers its backend(s) when imported; dsno_kernels/backends/__init__.py says how to add one.
from .backends.reference import spectral_time_conv_reference, time_conv_reference  # "reference"
from .modules import SpectralTimeConv, TimeConv

__all__ = [
    "spectral_time_conv",
    "time_conv",
    "available_backends",
    "registered_backends",
    "get_backend",
    "Backend",
    "resolve_backend",
    "clear_caches",
    "SpectralTimeConv",
    "TimeConv",
    "spectral_time_conv_reference",
    "time_conv_reference",
]
__version__ = "0.1.0"
