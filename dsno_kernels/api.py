"""Public functions, input validation and backend dispatch.

Each backend module (dsno_kernels/backends/: reference.py, cpp.py for "cpu" and "cuda", triton.py)
builds its `Backend` record and calls `register_backend` at import; callers only ever go through `spectral_time_conv` /
`time_conv`, and tests and benchmarks read the records through `registered_backends()` / `get_backend(name)`, so
a new backend is one module plus its registration.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable

import torch

from . import settings
from ._cache import memo, remember

__all__ = [
    "Backend",
    "register_backend",
    "unregister_backend",
    "registered_backends",
    "get_backend",
    "available_backends",
    "spectral_time_conv",
    "time_conv",
    "resolve_backend",
    "SUPPORTED_DTYPES",
]

SUPPORTED_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation of both ops. The functions receive validated inputs of one dtype."""

    name: str
    # Device types it runs on in this process (the Triton interpreter runs on CPU tensors).
    device_types: tuple[str, ...]
    spectral_time_conv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    time_conv: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    # Why the backend cannot run in this process (None when it can), e.g. "Triton is not installed".
    unavailable_reason: Callable[[], str | None] = lambda: None
    # Largest T the backend handles; "auto" passes larger inputs on to the next backend.
    max_time_points: int | None = None
    # The torch.library ops behind it, by role: "spectral_time_conv", "time_conv" and their
    # "_backward"s (for opcheck and introspection; empty for the pure-PyTorch reference).
    ops: dict = dataclasses.field(default_factory=dict)
    # "auto" tries the usable backends of x's device type by descending priority; a backend without
    # an entry for a device type runs there only when asked for by name.
    auto_priority: dict = dataclasses.field(default_factory=dict)
    # The device type the benchmark suites time it on; None for backends that are not fused kernels
    # (the reference is benchmarked as the torch_fft baseline).
    benchmark_device: str | None = None
    # Runs in an interpreter here (Triton under TRITON_INTERPRET=1): ~500x slower, tests keep it small.
    interpreted: bool = False
    # fp32 on CUDA tensors goes through tf32 tensor cores unless DSNO_KERNELS_FP32=ieee.
    fp32_via_tf32_on_cuda: bool = False


_BACKENDS: dict[str, Backend] = {}
# Derived from _BACKENDS when it changes, not per call (and never while torch.compile traces a call):
# the "auto" order per device type, and the values DSNO_KERNELS_BACKEND may take.
_AUTO_ORDER: dict[str, tuple[Backend, ...]] = {}
_SETTING_CHOICES: list[tuple[str, ...]] = [("auto",)]
# resolve_backend's answers by (backend name, device type, T): a function of those alone, since a
# backend's unavailable_reason holds for the whole process. Spares every call the availability checks
# (torch.cuda.is_available, the device's capability: microseconds each).
_RESOLVED = memo()


def _derive() -> None:
    _RESOLVED.clear()
    device_types = {t for b in _BACKENDS.values() for t in b.auto_priority}
    _AUTO_ORDER.clear()
    for device_type in device_types:
        ranked = [b for b in _BACKENDS.values() if device_type in b.auto_priority]
        _AUTO_ORDER[device_type] = tuple(sorted(ranked, key=lambda b: -b.auto_priority[device_type]))
    _SETTING_CHOICES[0] = (*_BACKENDS, "auto")


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend under its name."""
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be a dsno_kernels.Backend, got {type(backend).__name__}")
    _BACKENDS[backend.name] = backend
    _derive()


def unregister_backend(name: str) -> None:
    get_backend(name)
    del _BACKENDS[name]
    _derive()


def registered_backends() -> tuple[Backend, ...]:
    """Every registered backend, usable here or not, in registration order."""
    return tuple(_BACKENDS.values())


def get_backend(name: str) -> Backend:
    """The registered backend called `name` (a ValueError lists the names when there is none)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    backend = _BACKENDS.get(name)
    if backend is None:
        raise ValueError(f"backend must be one of {sorted(_BACKENDS) + ['auto']}, got {name!r}")
    return backend


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Backends that can run in this process (on `device`'s type when given)."""
    device_type = None if device is None else torch.device(device).type
    names = []
    for name, backend in _BACKENDS.items():
        if backend.unavailable_reason() is not None:
            continue
        runnable = [t for t in backend.device_types if t != "cuda" or torch.cuda.is_available()]
        if (device_type is None and runnable) or device_type in runnable:
            names.append(name)
    return names


def _why_not(backend: Backend, x: torch.Tensor) -> str | None:
    reason = backend.unavailable_reason()
    if reason is not None:
        return reason
    if x.device.type not in backend.device_types:
        return f"it runs on {'/'.join(backend.device_types)} tensors and x is on {x.device}"
    if backend.max_time_points is not None and x.shape[1] > backend.max_time_points:
        return f"it handles T <= {backend.max_time_points} and x has T = {x.shape[1]}"
    return None


def backend_setting() -> str:
    """DSNO_KERNELS_BACKEND, validated against the registered names: "auto" when unset."""
    return settings.get(settings.BACKEND, choices=_SETTING_CHOICES[0])


def resolve_backend(backend: str, x: torch.Tensor) -> Backend:
    """The backend that will run x: the named one, or for "auto" the environment variable
    DSNO_KERNELS_BACKEND if set, else the usable backend of x's device type with the highest
    auto_priority. A named backend that cannot run on x's device is an error; one that only exceeds
    its max_time_points passes x on to the next usable backend, as "auto" would."""
    return _backend_for(backend, x, x.device.type)


def _backend_for(backend, x: torch.Tensor, device_type: str) -> Backend:
    """resolve_backend, given x's device type (the public functions have it from validation)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        backend = backend_setting()
    if torch.compiler.is_compiling():  # traced: no global state to mutate (and T may be symbolic)
        return _choose_backend(backend, x)
    key = (backend, device_type, x.shape[1])
    resolved = _RESOLVED.get(key)
    if resolved is None:
        resolved = remember(_RESOLVED, key, _choose_backend(backend, x))
    return resolved


def _choose_backend(backend: str, x: torch.Tensor) -> Backend:
    if backend != "auto":
        chosen = get_backend(backend)
        reason = _why_not(chosen, x)
        if reason is None:
            return chosen
        too_long = chosen.max_time_points is not None and x.shape[1] > chosen.max_time_points
        if not too_long or _why_not(dataclasses.replace(chosen, max_time_points=None), x) is not None:
            raise RuntimeError(f"backend {backend!r} cannot run this input: {reason}")
        # A shape limit (not a device one): hand the input to the next backend, as "auto" would.
    for candidate in _AUTO_ORDER.get(x.device.type, ()):
        if _why_not(candidate, x) is None:
            return candidate
    return _BACKENDS["reference"]


def _tensor_error(name: str, t) -> TypeError:
    if not isinstance(t, torch.Tensor):
        return TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return TypeError(f"{name} must be a real floating tensor (float64, float32, bfloat16 or float16), got {t.dtype}")


def _validate(x, weight, *, square: bool) -> str:
    """Raises for any input the ops do not take; returns x's device type. (It runs on every call:
    the checks are inline, the messages built only on failure.)"""
    if not isinstance(x, torch.Tensor) or x.dtype not in SUPPORTED_DTYPES:
        raise _tensor_error("x", x)
    if not isinstance(weight, torch.Tensor) or weight.dtype not in SUPPORTED_DTYPES:
        raise _tensor_error("weight", weight)
    x_shape, w_shape = x.shape, weight.shape
    if len(x_shape) < 3:
        raise ValueError(f"x must have shape [B, T, C_in, *S] (at least 3 dims), got {tuple(x_shape)}")
    if len(w_shape) != 4 or w_shape[3] != 2:
        raise ValueError(f"weight must have shape [C_in, C_out, K, 2], got {tuple(w_shape)}")
    T, C_in = x_shape[1], x_shape[2]
    w_in, w_out, K, _ = w_shape
    if T < 1:
        raise ValueError(f"x must have T >= 1 time points (x.shape[1]), got shape {tuple(x.shape)}")
    if w_in != C_in:
        raise ValueError(
            f"weight must have shape [C_in={C_in}, C_out, K, 2] to match x.shape[2], got {tuple(weight.shape)}"
        )
    if not 1 <= K <= T // 2 + 1:
        raise ValueError(
            f"weight.shape[2] (K, the number of Fourier modes) must be in [1, T // 2 + 1] = [1, {T // 2 + 1}] "
            f"for T = {T}, got K = {K}"
        )
    if square and w_out != C_in:
        raise ValueError(
            f"time_conv needs C_in == C_out (residual connection): weight must have shape "
            f"[{C_in}, {C_in}, K, 2], got {tuple(weight.shape)}"
        )
    device = x.device
    if device != weight.device:
        raise ValueError(f"x and weight must be on the same device, got x on {device} and weight on {weight.device}")
    return device.type


def _prepare(x: torch.Tensor, weight: torch.Tensor, device_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Autocast policy: under autocast the op runs in the autocast dtype (x and weight cast to it),
    accumulating in fp32, like a matmul. Otherwise it runs in x's dtype with weight cast to it."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x = x.to(dtype)
    if weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
    return x, weight


def spectral_time_conv(x: torch.Tensor, weight: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """irfft(einsum("bki...,iok->bko...", rfft(x, dim=1)[:, :K], weight), n=T, dim=1).

    x: [B, T, C_in, *S] real; weight: [C_in, C_out, K, 2] (real, imag), 1 <= K <= T // 2 + 1.
    Returns [B, T, C_out, *S] in x's dtype (the autocast dtype under autocast)."""
    device_type = _validate(x, weight, square=False)
    x, weight = _prepare(x, weight, device_type)
    return _backend_for(backend, x, device_type).spectral_time_conv(x, weight)


def time_conv(
    x: torch.Tensor, weight: torch.Tensor, *, negative_slope: float = 0.01, backend: str = "auto"
) -> torch.Tensor:
    """DSNO's temporal layer: x + leaky_relu(spectral_time_conv(x, weight), negative_slope).
    Needs C_in == C_out."""
    device_type = _validate(x, weight, square=True)
    # (a chained comparison rather than math.isfinite, which torch.compile cannot trace; NaN fails it
    # too; a float skips the slower abstract-class check)
    if (
        type(negative_slope) is not float
        and (isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real))
    ) or not -math.inf < negative_slope < math.inf:
        raise TypeError(f"negative_slope must be a finite real number, got {negative_slope!r}")
    x, weight = _prepare(x, weight, device_type)
    return _backend_for(backend, x, device_type).time_conv(x, weight, float(negative_slope))
