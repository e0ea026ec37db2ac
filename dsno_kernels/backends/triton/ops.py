"""Running a call (its outputs' allocation and launches), the torch.library ops, and the backend's
registration: triton_op on a GPU (torch.compile traces into the kernels; wrap_triton where the tensors
are traced), a CPU custom_op under the interpreter (where triton_op fails opcheck and compile).

Eager calls on plain tensors take _library's fast path with this backend's direct calls
(`_direct_calls`): the kernels launched without the op layer, the backward found through its forward's
call (keyed on grad_out's strides alone) and run with the forward's settings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from ... import settings
from ..._library import PLAIN_TENSORS, eager_functions, register_ops
from ...api import Backend, register_backend
from .calls import BackwardCall, ForwardCall, backward_call, forward_call
from .configs import DeviceLimits, device_limits
from .runtime import INTERPRETING, TRITON_IMPORT_ERROR

__all__ = ["launch_forward", "launch_backward", "fp32_precision", "autotuning", "OPS", "stand_in"]


def fp32_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: for fp32 from DSNO_KERNELS_FP32 (default tf32, read on every call);
    exact otherwise."""
    if dtype != torch.float32:
        return "ieee"
    return settings.get(settings.FP32)


def autotuning() -> bool:
    """DSNO_KERNELS_TRITON_AUTOTUNE (read on every call); never in the interpreter."""
    return not INTERPRETING and settings.get(settings.TRITON_AUTOTUNE) != "0"


def _as_pixels(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(*t.shape[:3], math.prod(t.shape[3:]))


def launch_forward(call: ForwardCall, x: torch.Tensor, weight: torch.Tensor, traced: bool = False) -> torch.Tensor:
    """The forward's output, allocated and computed by the call's one launch."""
    out = x.new_empty(call.out_shape)
    if call.launch is not None or call.gemm is not None:
        if call.copy_x:
            x = _as_pixels(x)
        if call.gemm is not None:
            call.gemm(traced, x, weight, out)
        else:
            call.launch(traced, x, weight, x, out, out)  # in, w, res, out, mask (unused)
    return out


def launch_backward(
    call: BackwardCall, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, grad_x: torch.Tensor,
    traced: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(grad_x, grad_weight), grad_x given (torch.empty_like(x): the call was planned for its strides).
    time_conv: one launch recomputes the LeakyReLU mask as 1 bit per element; then one launch computes
    dx and grad_weight's pixel slices, and (several slices) one more sums them in order."""
    grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format)
    if call.launch is None and call.gemm is None:
        return grad_x, grad_weight.zero_()
    x = _as_pixels(x) if call.copy_x else x
    dy = _as_pixels(grad_out) if call.copy_dy else grad_out
    dx = torch.empty(x.shape[:3] + (call.pixels,), dtype=x.dtype, device=x.device) if call.dx_buffer else grad_x
    if call.gemm is not None:
        call.gemm(traced, x, dy, weight, dx, grad_weight)
    else:
        _launch_fused_backward(call, traced, x, dy, weight, dx, grad_weight)
    if call.dx_buffer:
        grad_x.copy_(dx.view(grad_x.shape))
    return grad_x, grad_weight


def _launch_fused_backward(call: BackwardCall, traced: bool, x, dy, weight, dx, grad_weight) -> None:
    """The fused kernels' backward: the mask pass (time_conv), dx and grad_weight's slices, their sum."""
    mask = dy  # read only by time_conv
    if call.mask is not None:
        mask_shape, launch = call.mask
        mask = x.new_empty(mask_shape, dtype=torch.int32)
        launch(traced, x, weight, x, x, mask)  # in, w, res and out (unused), mask
    partial = grad_weight
    if call.reduce is not None:
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        partial = torch.empty((call.slices, *weight.shape), dtype=acc_dtype, device=x.device)
    call.launch(traced, x, dy, weight, mask, dx, partial)
    if call.reduce is not None:
        call.reduce(traced, partial, grad_weight)


def _direct_calls(limits_of: Callable[[torch.device], DeviceLimits | None]) -> tuple[Callable, Callable]:
    """The eager calls on plain tensors (_library.eager_functions' `direct`), planned for
    limits_of(the tensors' device). The forward keeps its call in the eager autograd's context; the
    backward, which runs only there, plans through it, with the forward's settings (so that its
    LeakyReLU mask is the forward's)."""

    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, negative_slope: float | None = None) -> torch.Tensor:
        call = forward_call(
            x.shape, x.stride(), weight.shape, weight.stride(), x.dtype, limits_of(x.device), negative_slope,
            fp32_precision(x.dtype), autotuning(),
        )  # fmt: skip
        if ctx is not None:
            ctx.forward_call = call
        return launch_forward(call, x, weight)

    def backward(ctx, grad_out, x, weight, negative_slope: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        forward = ctx.forward_call
        grad_x = torch.empty_like(x)
        dy_strides = grad_out.stride()
        call = forward.backward_calls.get(dy_strides)
        if call is None:
            call = forward.backward_calls[dy_strides] = backward_call(
                grad_out.shape, dy_strides, x.shape, x.stride(), grad_x.stride(), weight.shape, weight.stride(),
                x.dtype, limits_of(x.device), negative_slope, forward.precision, forward.autotune,
            )  # fmt: skip
        return launch_backward(call, grad_out, x, weight, grad_x)

    return forward, backward


# The ops' bodies: planned for the tensors' device, afresh when traced (the shapes may be symbolic,
# unhashable; a traced call is planned once).


def _op_forward(x: torch.Tensor, weight: torch.Tensor, negative_slope: float | None) -> torch.Tensor:
    traced = type(x) not in PLAIN_TENSORS
    plan = forward_call.__wrapped__ if traced else forward_call
    call = plan(
        x.shape, x.stride(), weight.shape, weight.stride(), x.dtype, device_limits(x.device), negative_slope,
        fp32_precision(x.dtype), autotuning(),
    )  # fmt: skip
    return launch_forward(call, x, weight, traced)


def _op_backward(grad_out, x, weight, negative_slope: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    traced = type(x) not in PLAIN_TENSORS
    plan = backward_call.__wrapped__ if traced else backward_call
    grad_x = torch.empty_like(x)
    call = plan(
        grad_out.shape, grad_out.stride(), x.shape, x.stride(), grad_x.stride(), weight.shape, weight.stride(),
        x.dtype, device_limits(x.device), negative_slope, fp32_precision(x.dtype), autotuning(),
    )  # fmt: skip
    return launch_backward(call, grad_out, x, weight, grad_x, traced)


def _triton_spectral_time_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _op_forward(x, weight, None)


def _triton_time_conv(x: torch.Tensor, weight: torch.Tensor, negative_slope: float) -> torch.Tensor:
    return _op_forward(x, weight, negative_slope)


def _triton_spectral_time_conv_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return _op_backward(grad_out, x, weight, None)


def _triton_time_conv_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, negative_slope: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _op_backward(grad_out, x, weight, negative_slope)


# ------------------------------------------------------------------------------------------------
# Registration


def _unavailable_reason() -> str | None:
    if TRITON_IMPORT_ERROR is not None:
        return f"Triton is not installed ({TRITON_IMPORT_ERROR})"
    if INTERPRETING:
        return None
    if not torch.cuda.is_available():
        return (
            "no CUDA device is visible to PyTorch (TRITON_INTERPRET=1, set before importing dsno_kernels, "
            "runs the Triton kernels on CPU tensors in Triton's interpreter)"
        )
    if torch.version.hip is None and torch.cuda.get_device_capability() < (8, 0):
        return f"the kernels need an NVIDIA GPU of compute capability 8.0 or newer, got {torch.cuda.get_device_name()}"
    return None


def _define_op(name: str, fn):
    """dsno_kernels::triton_<name>: triton_op on a GPU, a CPU custom_op under the interpreter."""
    qualified = f"dsno_kernels::triton_{name}"
    if INTERPRETING:
        return torch.library.custom_op(qualified, fn, mutates_args=(), device_types="cpu")
    return torch.library.triton_op(qualified, fn, mutates_args=())


def _unavailable(*args):
    raise RuntimeError(_unavailable_reason())


OPS: dict = {}
_spectral_time_conv = _time_conv = _unavailable
if TRITON_IMPORT_ERROR is None:
    OPS = {
        "spectral_time_conv": _define_op("spectral_time_conv", _triton_spectral_time_conv),
        "time_conv": _define_op("time_conv", _triton_time_conv),
        "spectral_time_conv_backward": _define_op("spectral_time_conv_backward", _triton_spectral_time_conv_backward),
        "time_conv_backward": _define_op("time_conv_backward", _triton_time_conv_backward),
    }
    _spectral_time_conv, _time_conv = register_ops(OPS, _direct_calls(device_limits))

BACKEND = Backend(
    name="triton",
    device_types=("cpu",) if INTERPRETING else ("cuda",),
    spectral_time_conv=_spectral_time_conv,
    time_conv=_time_conv,
    unavailable_reason=_unavailable_reason,
    ops=OPS,
    # Where the extension has no CUDA kernels, Triton runs CUDA tensors; never auto-picked when interpreting.
    auto_priority={} if INTERPRETING else {"cuda": 10},
    benchmark_device="cuda",
    interpreted=INTERPRETING,
    fp32_via_tf32_on_cuda=True,
)
register_backend(BACKEND)


def stand_in(limits: DeviceLimits | None) -> Backend:
    """This backend's record for CPU tensors standing in for a GPU's, its eager calls planned for
    `limits` whatever the tensors' device: what runs with Triton's launcher stubbed
    (introspection.recorded_launches), never the kernels. introspection.triton_on_cpu registers it."""
    spectral, time_conv = eager_functions(OPS, _direct_calls(lambda device: limits))
    return dataclasses.replace(
        BACKEND,
        device_types=("cpu",),
        spectral_time_conv=spectral,
        time_conv=time_conv,
        unavailable_reason=lambda: None,
    )
