"""Per-call records: everything a forward or backward call needs but its tensors (the launch plans
with the call's scalar arguments bound, the layouts that need a copy, the 32-bit offset check), as a
function of the shapes, strides, dtype, device limits and settings, cached (dsno_kernels/_cache.py).
A call then only allocates its outputs and launches with the tensors' pointers (ops.py).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..._cache import cached
from .configs import DeviceLimits, cdiv
from .gemm import GemmBackward, GemmForward, gemm_backward, gemm_forward
from .plans import BoundLaunch, backward_plan, mix_plan
from .runtime import INTERPRETING, MAX_FUSED_TIME_POINTS

__all__ = ["pixel_layout", "check_32_bit_offsets", "ForwardCall", "BackwardCall", "forward_call", "backward_call"]

MIX_POINTERS = ("in_ptr", "w_ptr", "res_ptr", "out_ptr", "mask_ptr")
BACKWARD_POINTERS = ("x_ptr", "dy_ptr", "w_ptr", "mask_ptr", "dx_ptr", "grad_weight_ptr")
SUM_POINTERS = ("partial_ptr", "out_ptr")


def _pixel_strides(shape, strides) -> tuple[int, int, int, int] | None:
    """The strides of a [B, T, C, *S] tensor seen as [B, T, C, P], or None when the trailing dims do not
    merge into one pixel stride."""
    trailing = [(size, stride) for size, stride in zip(shape[3:], strides[3:]) if size != 1]
    if all(outer == inner * size for (_, outer), (size, inner) in zip(trailing, trailing[1:])):
        return (*strides[:3], trailing[-1][1] if trailing else 1)
    return None


def pixel_layout(shape, strides) -> tuple[int, tuple[int, int, int, int], bool]:
    """(P, the [B, T, C, P] strides, whether the tensor must first be copied to [B, T, C, P])."""
    pixels = math.prod(shape[3:])
    merged = _pixel_strides(shape, strides)
    if merged is None:
        return pixels, (shape[1] * shape[2] * pixels, shape[2] * pixels, pixels, 1), True
    return pixels, merged, False


def check_32_bit_offsets(x_shape, x_strides, weight_shape) -> None:
    """The kernels index within one batch item, and within the weights, with 32-bit offsets."""
    limit = 2**31
    span = sum((size - 1) * abs(stride) for size, stride in zip(x_shape[1:], x_strides[1:]))
    per_item = max(span + 1, x_shape[1] * weight_shape[1] * math.prod(x_shape[3:]))
    if per_item >= limit or math.prod(weight_shape) >= limit:
        raise ValueError(
            f"the triton backend needs each batch item of x and of the output, and the weight, to span "
            f"fewer than 2^31 elements; got x {tuple(x_shape)} (strides {tuple(x_strides)}) and weight "
            f"{tuple(weight_shape)}: use another backend"
        )


def _strides(prefix: str, strides, names=("b", "t", "c", "p")) -> dict:
    return {f"stride_{prefix}_{name}": stride for name, stride in zip(names, strides)}


def _dot_flags(dtype: torch.dtype, precision: str) -> dict:
    return {"INPUT_PRECISION": precision, "UPCAST_DOT": INTERPRETING and dtype == torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class ForwardCall:
    """Everything a forward call needs but its tensors, per (shapes, strides, dtype, limits, settings)."""

    out_shape: tuple
    copy_x: bool  # x's trailing dims do not merge: the kernel reads a [B, T, C, P] copy
    launch: BoundLaunch | None  # None for an empty output or the DFT-as-GEMM path
    precision: str  # the settings it was planned with (DSNO_KERNELS_FP32, DSNO_KERNELS_TRITON_AUTOTUNE)
    autotune: bool
    gemm: GemmForward | None = None  # T > MAX_FUSED_TIME_POINTS: the DFT-as-GEMM path's launches
    # The eager autograd path's backward calls for these inputs, by grad_out's strides: the rest of
    # their key is this one's, since grad_out has the output's shape (autograd checks it), grad_x is
    # allocated like x, and the backward runs with its forward's settings (so that its LeakyReLU mask
    # is the forward's).
    backward_calls: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


@cached
def forward_call(
    x_shape, x_strides, w_shape, w_strides, dtype: torch.dtype, limits: DeviceLimits | None,
    negative_slope: float | None, precision: str, autotune: bool,
) -> ForwardCall:  # fmt: skip
    """spectral_time_conv's (negative_slope None) or time_conv's forward call."""
    check_32_bit_offsets(x_shape, x_strides, w_shape)
    B, T, C_in = x_shape[:3]
    C_out, K = w_shape[1], w_shape[2]
    out_shape = (B, T, C_out, *x_shape[3:])
    if math.prod(out_shape) == 0:
        return ForwardCall(out_shape, False, None, precision, autotune)
    P, xs, copy_x = pixel_layout(x_shape, x_strides)
    if T > MAX_FUSED_TIME_POINTS:
        flags = tuple(_dot_flags(dtype, precision).items())
        gemm = gemm_forward(
            B, T, K, C_in, C_out, P, xs, tuple(w_strides), dtype.itemsize, negative_slope, flags, limits
        )
        return ForwardCall(out_shape, copy_x, None, precision, autotune, gemm)
    launch = mix_plan(B, T, K, C_in, C_out, P, dtype.itemsize, limits, autotune)
    time_conv = negative_slope is not None
    args = dict(
        B=B, C_IN=C_in, C_OUT=C_out, P=P, **_strides("in", xs), **_strides("res", xs),
        **_strides("w", w_strides, ("in", "out", "k", "c")),
        **_strides("out", (T * C_out * P, C_out * P, P, 1)),  # the output is contiguous
        has_residual=int(time_conv), res_if_positive=float(time_conv), s_if_positive=1.0,
        res_if_negative=float(time_conv), s_if_negative=negative_slope if time_conv else 1.0, negative_slope=0.0,
        T=T, K=K, CONJUGATE=False, MASKED_INPUT=False, STORE_MASK=False, **_dot_flags(dtype, precision),
    )  # fmt: skip
    return ForwardCall(out_shape, copy_x, launch.bind(MIX_POINTERS, args), precision, autotune)


@dataclasses.dataclass(frozen=True)
class BackwardCall:
    """Everything a backward call needs but its tensors."""

    pixels: int
    copy_x: bool
    copy_dy: bool
    dx_buffer: bool  # grad_x's trailing dims do not merge: the kernel writes a [B, T, C, P] buffer
    mask: tuple | None  # time_conv: (the mask's shape, the launch that writes it)
    slices: int  # of grad_weight's pixel sums (1: written straight into grad_weight)
    launch: BoundLaunch | None  # dx and grad_weight; None when there is nothing to compute (or gemm)
    reduce: BoundLaunch | None  # the slices' sum
    gemm: GemmBackward | None = None  # T > MAX_FUSED_TIME_POINTS: the DFT-as-GEMM path's launches


@cached
def backward_call(
    dy_shape, dy_strides, x_shape, x_strides, dx_strides, w_shape, w_strides, dtype: torch.dtype,
    limits: DeviceLimits | None, negative_slope: float | None, precision: str, autotune: bool,
    slices: int | None = None,
) -> BackwardCall:  # fmt: skip
    """The backward call of spectral_time_conv (negative_slope None) or time_conv; `slices`: grad_weight's
    pixel slices, None for the plan's."""
    check_32_bit_offsets(x_shape, x_strides, w_shape)
    B, T, C_in = x_shape[:3]
    C_out, K = w_shape[1], w_shape[2]
    P, xs, copy_x = pixel_layout(x_shape, x_strides)
    if B * T * C_in * P == 0 or math.prod(dy_shape) == 0:
        return BackwardCall(P, False, False, False, None, 1, None, None)
    _, dys, copy_dy = pixel_layout(dy_shape, dy_strides)
    _, dxs, dx_buffer = pixel_layout(x_shape, dx_strides)
    flags = _dot_flags(dtype, precision)
    if T > MAX_FUSED_TIME_POINTS:
        gemm = gemm_backward(
            B,
            T,
            K,
            C_in,
            C_out,
            P,
            xs,
            dys,
            dxs,
            tuple(w_strides),
            dtype.itemsize,
            negative_slope,
            tuple(flags.items()),
            limits,
        )
        return BackwardCall(P, copy_x, copy_dy, dx_buffer, None, 1, None, None, gemm)
    time_conv = negative_slope is not None
    mask = None
    if time_conv:
        mask_args = dict(
            B=B, C_IN=C_in, C_OUT=C_out, P=P, **_strides("in", xs), **_strides("w", w_strides, ("in", "out", "k", "c")),
            **_strides("res", (0, 0, 0, 0)), **_strides("out", (0, 0, 0, 0)),
            has_residual=0, res_if_positive=0.0, s_if_positive=1.0, res_if_negative=0.0, s_if_negative=1.0,
            negative_slope=0.0, T=T, K=K, CONJUGATE=False, MASKED_INPUT=False, STORE_MASK=True, **flags,
        )  # fmt: skip
        launch = mix_plan(B, T, K, C_in, C_out, P, dtype.itemsize, limits, autotune, mask_pass=True)
        mask = ((B, T, C_out, cdiv(P, 32)), launch.bind(MIX_POINTERS, mask_args))
    plan = backward_plan(B, T, K, C_in, C_out, P, dtype.itemsize, limits, slices)
    if plan.reduce is None:  # one slice, written straight into grad_weight (contiguous)
        gws = (0, C_out * K * 2, K * 2, 2, 1)
    else:
        gws = (C_in * C_out * K * 2, C_out * K * 2, K * 2, 2, 1)
    args = dict(
        B=B, C_IN=C_in, C_OUT=C_out, P=P, NUM_DX_PROGRAMS=plan.num_dx_programs, NUM_SLICES=plan.slices,
        **_strides("x", xs), **_strides("dy", dys), **_strides("dx", dxs),
        **_strides("w", w_strides, ("in", "out", "k", "c")),
        **_strides("grad_weight", gws, ("s", "in", "out", "k", "c")),
        has_residual=int(time_conv), negative_slope=negative_slope if time_conv else 0.0,
        T=T, K=K, MASKED_INPUT=time_conv, **flags,
    )  # fmt: skip
    reduce = None
    if plan.reduce is not None:
        reduce = plan.reduce.bind(SUM_POINTERS, {"N": C_in * C_out * K * 2, "NUM_SLICES": plan.slices})
    return BackwardCall(
        P, copy_x, copy_dy, dx_buffer, mask, plan.slices, plan.launch.bind(BACKWARD_POINTERS, args), reduce
    )
