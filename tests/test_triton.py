"""The Triton backend (dsno_kernels/backends/triton/) beyond tests/test_ops.py's generic checks:
several channel and pixel blocks with masked edges, the largest T, the LeakyReLU mask in low precision,
the weight-gradient reduction (slices, atomics), layouts the kernels write through, the compile-time
DFT constants, the launch configurations, and a compile of every kernel for sm_80 and sm_90 that needs
no GPU.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1), about 500x slower than native code, so the shapes stay small; with a GPU the same
tests run on CUDA tensors, plus the CIFAR-10 layer shape.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from common import DTYPE_IDS, TOLERANCE, assert_close_to_reference, tolerance

import dsno_kernels
from dsno_kernels import settings
from dsno_kernels.api import resolve_backend
from dsno_kernels.backends import triton as triton_backend
from dsno_kernels.backends.reference import spectral_bases, spectral_time_conv_reference
from dsno_kernels.backends.triton import introspection
from dsno_kernels.shapes import OpShape

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = dsno_kernels.get_backend("triton")
pytestmark = pytest.mark.skipif(
    "triton" not in dsno_kernels.available_backends(DEVICE),
    reason=f"the triton backend cannot run on {DEVICE}: {TRITON.unavailable_reason()}",
)
LOW_PRECISION = (torch.bfloat16, torch.float16)
ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(autouse=True)
def _untimed_configurations(monkeypatch):
    """One launch configuration per problem: on a GPU every distinct shape would otherwise compile
    and time up to four. The tests of autotuning set the variable back."""
    monkeypatch.setenv(settings.TRITON_AUTOTUNE, "0")


def _random(*shape, dtype, seed, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(device=DEVICE, dtype=dtype)


def _pixels_strided(x: torch.Tensor) -> torch.Tensor:
    """x's values with the channels innermost in memory (stride 1 on C, the pixels strided)."""
    return x.movedim(2, -1).contiguous().movedim(-1, 2)


def _reference_grads(op, x, w, grad_out, slope, mask_source=None):
    """fp64 autograd through the reference. For time_conv, `mask_source` (when given) decides the
    LeakyReLU branch instead of the fp64 pre-activation: a backend that rounds its GEMM operands to
    bf16 / fp16 legitimately takes the other branch where the pre-activation is within rounding of 0,
    and there the two gradients differ by (1 - slope) * grad_out, far beyond any rounding tolerance."""
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    s = spectral_time_conv_reference(x64, w64)
    if op == "spectral_time_conv":
        out = s
    else:
        positive = (s if mask_source is None else mask_source.double()) > 0
        out = x64 + torch.where(positive, s, slope * s)
    return torch.autograd.grad(out, (x64, w64), grad_out.double())


def _public_call(op, slope):
    """run(x, w, grad_out) -> (out, grad_x, grad_weight) through the public function and autograd."""
    kwargs = {} if op == "spectral_time_conv" else {"negative_slope": slope}

    def run(x, w, grad_out):
        x = x.detach().requires_grad_()
        w = w.detach().requires_grad_()
        out = getattr(dsno_kernels, op)(x, w, backend="triton", **kwargs)
        return (out, *torch.autograd.grad(out, (x, w), grad_out))

    return run


def _check_op(op, x, w, dtype, slope=0.2, what="", run=None):
    """Forward and both gradients of the triton backend (through the public function, or `run` as
    _public_call's) against the fp64 reference."""
    kwargs = {} if op == "spectral_time_conv" else {"negative_slope": slope}
    grad_out = _random(x.shape[0], x.shape[1], w.shape[1], *x.shape[3:], dtype=dtype, seed=7)
    out, grad_x, grad_weight = (run or _public_call(op, slope))(x, w, grad_out)
    tol = tolerance(dtype, "triton", DEVICE)
    assert out.dtype == dtype and out.shape == (x.shape[0], x.shape[1], w.shape[1], *x.shape[3:])
    x64, w64 = x.detach().double(), w.detach().double()
    expected = getattr(dsno_kernels, op + "_reference")(x64, w64, **kwargs)
    assert_close_to_reference(out, expected, tol, f"{what} forward")

    mask_source = None
    if op == "time_conv" and (dtype in LOW_PRECISION or tol != TOLERANCE[dtype]):
        mask_source = dsno_kernels.spectral_time_conv(x.detach(), w.detach(), backend="triton")
    ref_gx, ref_gw = _reference_grads(op, x, w, grad_out, slope, mask_source)
    assert grad_x.dtype == dtype and grad_x.shape == x.shape and grad_weight.shape == w.shape
    # The weight gradient sums B * P * T products per entry: its tolerance grows with their sqrt.
    terms = max(1, x.shape[0] * x.shape[1] * x[0, 0, 0].numel()) ** 0.5
    assert_close_to_reference(grad_x, ref_gx, tol, f"{what} grad_x")
    assert_close_to_reference(grad_weight, ref_gw, tol * terms, f"{what} grad_weight")


# ------------------------------------------------------------------------------------------------
# Numerics


@pytest.mark.parametrize("T", range(1, triton_backend.MAX_FUSED_TIME_POINTS + 1))
def test_compile_time_dft_constants_match_the_reference_bases(T):
    """The kernels' F and G entries (constexpr, with 0 and +-1 exact) are reference.spectral_bases."""
    K = T // 2 + 1
    F, G = spectral_bases(T, K)
    row = 0
    for k in range(K):
        for imag in (False, True) if not triton_backend.is_real_mode(k, T) else (False,):
            for t in range(T):
                f = triton_backend.basis(k, t, T, imag, False)
                g = triton_backend.basis(k, t, T, imag, True)
                # The reference evaluates cos / sin at unreduced angles (up to 2 pi * 16 * 31), the
                # kernels at 2 pi (k t mod T) / T: they agree to the reference's rounding, ~1e-13.
                assert abs(f - F[row, t].item()) < 1e-12 and abs(g - G[t, row].item()) < 1e-12, (k, t, imag)
                if abs(F[row, t].item()) < 1e-12 or abs(abs(F[row, t].item()) - 1) < 1e-12:
                    assert f in (0.0, 1.0, -1.0), f"entry ({k}, {t}, imag={imag}) = {f!r} is not exact"
            row += 1
    assert row == triton_backend.num_rows(T, K)


# (T, K, C_in, C_out, trailing dims): channels and pixels span several blocks of the interpreter's
# 16-wide configuration, none a multiple of 16; K includes the Nyquist mode for even T.
MULTI_BLOCK = [(6, 4, 19, 21, (37,)), (5, 2, 33, 17, (3, 7))]


@pytest.mark.parametrize("op", ["spectral_time_conv", "time_conv"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case", MULTI_BLOCK, ids=lambda c: "T{}-K{}-Cin{}-Cout{}".format(*c[:4]))
def test_several_blocks_with_masked_edges(case, dtype, op):
    T, K, C_in, C_out, trailing = case
    if op == "time_conv":
        C_out = C_in
    x = _random(2, T, C_in, *trailing, dtype=dtype, seed=1)
    w = _random(C_in, C_out, K, 2, dtype=dtype, seed=2, scale=(C_in * K) ** -0.5)
    _check_op(op, x, w, dtype, what=f"{op}/{case}")


@pytest.mark.parametrize("layout", ["pixels-strided", "trailing-dims-permuted", "batch-and-time-permuted"])
def test_strided_layouts(layout):
    """Inputs whose pixels are not contiguous, whose trailing dims do not merge into one pixel
    stride (x is copied, grad_x is written to a buffer and copied back in x's layout), or whose
    batch and time strides are unusual; grad_x must keep the layout torch.empty_like(x) gives."""
    x = _random(2, 4, 6, 5, 3, dtype=torch.float64, seed=3)
    if layout == "pixels-strided":
        x = _pixels_strided(x)
    elif layout == "trailing-dims-permuted":
        x = x.transpose(3, 4).contiguous().transpose(3, 4)
    else:
        x = x.permute(1, 0, 2, 3, 4).contiguous().permute(1, 0, 2, 3, 4)
    w = _random(6, 6, 3, 2, dtype=torch.float64, seed=4, scale=0.3)
    for op in ("spectral_time_conv", "time_conv"):
        _check_op(op, x, w, torch.float64, what=f"{op}/{layout}")
    x = x.detach().requires_grad_()
    out = dsno_kernels.time_conv(x, w, backend="triton")
    (grad_x,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert grad_x.stride() == torch.empty_like(x).stride()


def _largest_time_cases():
    if DEVICE == "cpu":
        return [(32, 3), (32, 17)]
    return [(32, 2)]  # on a GPU, K = 17 compiles for minutes (the fully unrolled DFT)


@pytest.mark.parametrize("T,K", _largest_time_cases())
def test_largest_time_axis(T, K):
    x = _random(1, T, 3, 5, dtype=torch.float64, seed=5)
    w = _random(3, 2, K, 2, dtype=torch.float64, seed=6, scale=0.3)
    _check_op("spectral_time_conv", x, w, torch.float64, what=f"T{T}-K{K}")


# (B, T, K, C_in, C_out, trailing dims) of the DFT-as-GEMM path (T > MAX_FUSED_TIME_POINTS): odd and even
# T and K, K = 1 and the largest K (with Nyquist for even T), C_in != C_out, rows, modes and channels
# spanning several of the interpreter's 16-wide blocks, and trailing dims (rows are batch x pixel).
GEMM_CASES = [
    (2, 33, 1, 3, 5, ()),
    (2, 34, 18, 4, 3, ()),
    (1, 37, 19, 5, 2, ()),
    (2, 40, 8, 3, 6, (3,)),
    (2, 64, 17, 17, 19, ()),
    (1, 65, 33, 3, 4, (2,)),
    (2, 70, 36, 2, 3, ()),
]
# The cases run in fp32, bf16 and fp16 too (the interpreter is slow; fp64 runs them all).
GEMM_LOW_PRECISION_CASES = GEMM_CASES[1:3] + GEMM_CASES[4:5]


def _gemm_case_id(case):
    B, T, K, C_in, C_out, trailing = case
    return f"B{B}-T{T}-K{K}-Cin{C_in}-Cout{C_out}-S{'x'.join(map(str, trailing)) or 'none'}"


def _gemm_params():
    for dtype in ALL_DTYPES:
        for case in GEMM_CASES if dtype == torch.float64 else GEMM_LOW_PRECISION_CASES:
            yield pytest.param(case, dtype, id=f"{DTYPE_IDS[dtype]}-{_gemm_case_id(case)}")


@pytest.mark.parametrize("op", ["spectral_time_conv", "time_conv"])
@pytest.mark.parametrize("case,dtype", list(_gemm_params()))
def test_dft_as_gemm_path(case, dtype, op):
    """T > 32: forward, grad_x and grad_weight of the DFT-as-GEMM launches against the fp64 reference."""
    B, T, K, C_in, C_out, trailing = case
    if op == "time_conv":
        C_out = C_in
    x = _random(B, T, C_in, *trailing, dtype=dtype, seed=30)
    w = _random(C_in, C_out, K, 2, dtype=dtype, seed=31, scale=(C_in * K) ** -0.5)
    with introspection.recorded_launches() as launches:
        triton_backend.launch_forward(_forward_call(x, w, None if op == "spectral_time_conv" else 0.2), x, w)
    assert [l.name for l in launches] == GEMM_FORWARD, launches
    _check_op(op, x, w, dtype, what=f"{op}/{_gemm_case_id(case)}")
    # The imaginary parts of DC's and Nyquist's weights do not reach the output: exactly zero gradient.
    grad_out = _random(*x.shape[:2], C_out, *trailing, dtype=dtype, seed=7)
    grad_weight = _public_call(op, 0.2)(x, w, grad_out)[2]
    real_modes = [k for k in range(K) if triton_backend.is_real_mode(k, T)]
    assert torch.all(grad_weight[:, :, real_modes, 1] == 0), grad_weight[:, :, real_modes, 1].abs().max()


GEMM_FORWARD = ["_spectral_analysis_kernel", "_complex_mix_kernel", "_spectral_synthesis_kernel"]


def _forward_call(x, w, slope):
    return triton_backend.forward_call(
        x.shape, x.stride(), w.shape, w.stride(), x.dtype, triton_backend.device_limits(x.device), slope,
        triton_backend.fp32_precision(x.dtype), False,
    )  # fmt: skip


def test_dft_as_gemm_path_with_strided_inputs():
    """T > 32 with x's batch and time permuted and its channels innermost, and a transposed weight."""
    x = _random(3, 35, 4, 5, dtype=torch.float64, seed=32)
    x = _pixels_strided(x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3))
    w = _random(4, 4, 6, 2, dtype=torch.float64, seed=33, scale=0.3).transpose(0, 1).contiguous().transpose(0, 1)
    for op in ("spectral_time_conv", "time_conv"):
        _check_op(op, x, w, torch.float64, what=f"{op}/strided")


def test_dft_as_gemm_path_gradcheck_and_gradgradcheck():
    """fp64 gradcheck and gradgradcheck of both ops at T = 33 (the backward ops are differentiable
    through the same ops, on the same path), in fast mode (random projections of the Jacobians: the
    full Jacobians take minutes in the interpreter)."""
    x = _random(1, 33, 2, dtype=torch.float64, seed=34).requires_grad_()
    w = _random(2, 3, 3, 2, dtype=torch.float64, seed=35, scale=0.5).requires_grad_()
    w_square = _random(2, 2, 3, 2, dtype=torch.float64, seed=36, scale=0.5).requires_grad_()

    def spectral(x, w):
        return dsno_kernels.spectral_time_conv(x, w, backend="triton")

    def time_conv(x, w):
        return dsno_kernels.time_conv(x, w, negative_slope=0.2, backend="triton")

    for fn, weight in ((spectral, w), (time_conv, w_square)):
        assert torch.autograd.gradcheck(fn, (x, weight), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x, weight), fast_mode=True)


def test_longer_time_axis_takes_the_dft_as_gemm_path():
    """T > MAX_FUSED_TIME_POINTS stays on the triton backend (no hand-off) and launches the DFT-as-GEMM
    kernels, not the fused ones."""
    x = _random(1, triton_backend.MAX_FUSED_TIME_POINTS + 1, 3, 2, dtype=torch.float32, seed=8)
    assert TRITON.max_time_points is None
    assert resolve_backend("triton", x).name == "triton"
    w = _random(3, 3, 2, 2, dtype=torch.float32, seed=9)
    with introspection.recorded_launches() as launches:
        triton_backend.launch_forward(_forward_call(x, w, None), x, w)
    assert [l.name for l in launches] == GEMM_FORWARD
    x = x[:, :-1]
    with introspection.recorded_launches() as launches:
        triton_backend.launch_forward(_forward_call(x, w, None), x, w)
    assert [l.name for l in launches] == ["_spectral_mix_kernel"]  # T = 32: the fused kernel


def test_empty_inputs():
    for x, w in [
        (_random(0, 4, 3, 5, dtype=torch.float32, seed=0), _random(3, 2, 2, 2, dtype=torch.float32, seed=0)),
        (_random(2, 4, 3, 0, dtype=torch.float32, seed=0), _random(3, 2, 2, 2, dtype=torch.float32, seed=0)),
    ]:
        x, w = x.requires_grad_(), w.requires_grad_()
        out = dsno_kernels.spectral_time_conv(x, w, backend="triton")
        assert out.shape == (x.shape[0], 4, 2, *x.shape[3:])
        grad_x, grad_weight = torch.autograd.grad(out.sum(), (x, w))
        assert grad_x.shape == x.shape and torch.equal(grad_weight, torch.zeros_like(grad_weight))


def test_offsets_beyond_32_bits_are_refused():
    x = torch.empty_strided((1, 2, 3, 4), (1, 2**31, 1, 3), device="meta")
    with pytest.raises(ValueError, match="2\\^31"):
        triton_backend.check_32_bit_offsets(x.shape, x.stride(), (3, 3, 2, 2))
    triton_backend.check_32_bit_offsets(x[:, :1].shape, x.stride(), (3, 3, 1, 2))


@pytest.fixture
def fresh_launch_plans():
    """Launch plans are cached per shape: a test that counts on fresh ones starts and ends afresh."""
    dsno_kernels.clear_caches()
    yield
    dsno_kernels.clear_caches()


def _backward_call(grad_out, x, w, slope, slices=None):
    """The backward call of these tensors as the eager path plans it (slices: forced), and grad_x."""
    grad_x = torch.empty_like(x)
    call = triton_backend.backward_call(
        grad_out.shape, grad_out.stride(), x.shape, x.stride(), grad_x.stride(), w.shape, w.stride(), x.dtype,
        triton_backend.device_limits(x.device), slope, triton_backend.fp32_precision(x.dtype), False, slices,
    )  # fmt: skip
    return call, grad_x


@pytest.mark.parametrize("op", ["spectral_time_conv", "time_conv"])
def test_weight_gradient_in_several_slices_matches_one(op, fresh_launch_plans):
    """Several pixel slices summed in order by the reduction kernel give the one-slice gradient, which
    the kernel writes straight into grad_weight."""
    x = _random(3, 4, 20, 23, dtype=torch.float32, seed=10)
    w = _random(20, 20, 2, 2, dtype=torch.float32, seed=11, scale=0.2)
    grad_out = _random(3, 4, 20, 23, dtype=torch.float32, seed=12)
    slope = None if op == "spectral_time_conv" else 0.1
    grads = {}
    for slices in (1, 3):
        call, grad_x = _backward_call(grad_out, x, w, slope, slices)
        grads[slices] = triton_backend.launch_backward(call, grad_out, x, w, grad_x)
        plan = triton_backend.backward_plan(3, 4, 2, 20, 20, 23, 4, None, slices)
        assert plan.slices == slices and (plan.reduce is None) == (slices == 1)
        assert call.slices == slices and (call.reduce is None) == (slices == 1)
    assert torch.equal(grads[1][0], grads[3][0])
    assert_close_to_reference(grads[3][1], grads[1][1].double(), 1e-5, "slices")


def _persistent(bound, programs: int):
    """A bound one-configuration mix launch in the persistent mode, with `programs` programs."""
    launch = bound.launch
    return bound.rebound(triton_backend.Launch(launch.kernel, (programs,), {**launch.meta, "PERSISTENT": 1}))


# (op, dtype, B, T, K, C_in, C_out, trailing dims, programs, tiles of the interpreter's configuration):
# several output-channel and pixel blocks with masked edges, programs taking unequal numbers of tiles
# (a tail), and more programs than tiles.
PERSISTENT_CASES = [
    ("spectral_time_conv", torch.float32, 2, 5, 2, 19, 70, (150,), 5, 12),  # 3, 3, 2, 2, 2 tiles
    ("time_conv", torch.bfloat16, 3, 4, 2, 21, 21, (9, 11), 4, 6),  # 2, 2, 1, 1; the mask pass too
    ("time_conv", torch.float32, 3, 4, 2, 21, 21, (9, 11), 8, 6),  # 2 programs idle
]


@pytest.mark.parametrize("case", PERSISTENT_CASES, ids=lambda c: "{}-{}-B{}-P{}-programs{}".format(
    c[0], DTYPE_IDS[c[1]], c[2], "x".join(map(str, c[7])), c[8]))  # fmt: skip
def test_persistent_mode(case, fresh_launch_plans):
    """The mix kernel's persistent mode (the forward's, and time_conv's mask pass's, extra autotuning
    candidates on a GPU), forced with a few programs: the same output as one program per tile, and
    the gradients of the reference."""
    op, dtype, B, T, K, C_in, C_out, trailing, programs, expected_tiles = case
    x = _random(B, T, C_in, *trailing, dtype=dtype, seed=20)
    w = _random(C_in, C_out, K, 2, dtype=dtype, seed=21, scale=(C_in * K) ** -0.5)
    slope = None if op == "spectral_time_conv" else 0.2
    one_per_tile = getattr(dsno_kernels, op)(
        x, w, backend="triton", **({} if slope is None else {"negative_slope": slope})
    )
    meta = triton_backend.mix_plan(B, T, K, C_in, C_out, math.prod(trailing), dtype.itemsize, None, False).meta
    tiles = B * -(-math.prod(trailing) // meta["BLOCK_P"]) * -(-C_out // meta["BLOCK_OUT"])
    assert tiles == expected_tiles, (tiles, meta)

    def forward(x):
        call = triton_backend.forward_call(
            x.shape, x.stride(), w.shape, w.stride(), dtype, triton_backend.device_limits(x.device), slope,
            triton_backend.fp32_precision(dtype), False,
        )  # fmt: skip
        return dataclasses.replace(call, launch=_persistent(call.launch, programs))

    with introspection.recorded_launches() as launches:
        triton_backend.launch_forward(forward(x), x, w)
    assert launches[0].grid == (programs,) and launches[0].args["PERSISTENT"] == 1
    persistent = triton_backend.launch_forward(forward(x), x, w)
    assert torch.equal(persistent, one_per_tile)

    def run(x, w, grad_out):  # the backward with its mask pass (time_conv) persistent too
        call, grad_x = _backward_call(grad_out, x, w, slope)
        if call.mask is not None:
            mask_shape, mask_pass = call.mask
            call = dataclasses.replace(call, mask=(mask_shape, _persistent(mask_pass, programs)))
        return (persistent, *triton_backend.launch_backward(call, grad_out, x, w, grad_x))

    _check_op(op, x, w, dtype, slope=0.2, what=f"persistent {case}", run=run)


def test_persistent_candidates_follow_the_first_guess():
    """With autotuning, the forward's first candidate is the one-configuration launch's, and the
    persistent ones come last, with grids of at most the resident programs per SM."""
    for limits in (triton_backend.A100, triton_backend.H100):
        for element_size, P in [(2, 1024), (2, 64), (4, 1024)]:
            tuned = triton_backend.mix_variants(4, 2, 256, 256, P, element_size, limits, True)
            untuned = triton_backend.mix_variants(4, 2, 256, 256, P, element_size, limits, False)
            assert tuned[0] == untuned[0] and untuned[0][1] == 0 and len(untuned) == 1
            flags = [persistent for _, persistent in tuned]
            assert flags == sorted(flags, key=bool) and 0 < sum(map(bool, flags)) <= 2, tuned
            for config, persistent in tuned:
                if persistent:
                    grid = triton_backend.mix_grid(
                        32, P, 256, limits.processors, triton_backend.mix_meta(config, persistent)
                    )
                    assert grid[0] <= limits.processors * persistent


def test_fp32_precision_setting(monkeypatch):
    x = _random(2, 4, 5, 6, dtype=torch.float32, seed=13)
    w = _random(5, 5, 2, 2, dtype=torch.float32, seed=14, scale=0.3)
    monkeypatch.setenv(settings.FP32, "fp16")
    with pytest.raises(ValueError, match=settings.FP32):
        dsno_kernels.spectral_time_conv(x, w, backend="triton")
    monkeypatch.setenv(settings.FP32, "ieee")
    out = dsno_kernels.spectral_time_conv(x, w, backend="triton")
    expected = spectral_time_conv_reference(x.double(), w.double())
    assert_close_to_reference(out, expected, TOLERANCE[torch.float32], "ieee")


@pytest.mark.skipif(DEVICE != "cuda", reason="the layer's real shape needs a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=DTYPE_IDS.get)
def test_cifar10_layer_shape(dtype, monkeypatch):
    """DSNO's CIFAR-10 temporal layer (T=4, K=2, C=256, 32x32), batch 2, through the autotuner."""
    monkeypatch.setenv(settings.TRITON_AUTOTUNE, "1")
    x = _random(2, 4, 256, 32, 32, dtype=dtype, seed=15)
    w = _random(256, 256, 2, 2, dtype=dtype, seed=16, scale=(256 * 2) ** -0.5)
    _check_op("time_conv", x, w, dtype, slope=0.01, what="cifar10")


# ------------------------------------------------------------------------------------------------
# Launch configurations and registration


@pytest.mark.parametrize(
    "kernel,T,K,C_in,C_out,pixels",
    [("mix", 4, 2, 256, 256, 1024), ("mix", 9, 5, 3, 7, 5), ("grad_weight", 4, 2, 192, 384, 64),
     ("mix", 32, 17, 64, 64, 4096), ("grad_weight", 32, 17, 64, 64, 4096)],
)  # fmt: skip
def test_launch_configs(kernel, T, K, C_in, C_out, pixels, monkeypatch):
    limits = triton_backend.H100
    configs = triton_backend.launch_configs(kernel, T, K, C_in, C_out, pixels, 2, limits.shared_memory)
    assert configs and len(set(configs)) == len(configs) and len(configs) <= triton_backend.MAX_TIMED_CONFIGS
    for config in configs:
        *blocks, warps, stages = config
        assert all(block >= 16 and block & (block - 1) == 0 for block in blocks), config
        assert warps in (1, 2, 4, 8) and stages >= 1
    extents = {"mix": (C_out, C_in, pixels), "grad_weight": (C_in, C_out, pixels)}[kernel]
    candidates = triton_backend.MIX_CANDIDATES if kernel == "mix" else triton_backend.GRAD_WEIGHT_CANDIDATES
    for config in configs:
        if config != candidates[-1]:
            assert all(block <= max(16, 2 * extent) for block, extent in zip(config, extents)), config
    # Without autotuning (DSNO_KERNELS_TRITON_AUTOTUNE=0, and always in the interpreter) the first runs.
    monkeypatch.setenv(settings.TRITON_AUTOTUNE, "1")
    assert triton_backend.autotuning() == (not triton_backend.INTERPRETING)
    monkeypatch.setenv(settings.TRITON_AUTOTUNE, "0")
    assert not triton_backend.autotuning()
    if kernel == "mix":
        assert triton_backend.mix_variants(T, K, C_in, C_out, pixels, 2, limits, False) == [(configs[0], 0)]
    else:
        meta = triton_backend.backward_plan(1, T, K, C_in, C_out, pixels, 2, limits).launch.meta
        assert tuple(meta[f"GRAD_WEIGHT_BLOCK_{n}"] for n in ("IN", "OUT", "P")) == configs[0][:3]


def test_registration():
    ops = TRITON.ops
    assert set(ops) == {"spectral_time_conv", "time_conv", "spectral_time_conv_backward", "time_conv_backward"}
    for role, op in ops.items():
        assert op._qualname == f"dsno_kernels::triton_{role}" and hasattr(torch.ops.dsno_kernels, f"triton_{role}")
    assert TRITON.device_types == (("cpu",) if triton_backend.INTERPRETING else ("cuda",))


# ------------------------------------------------------------------------------------------------
# Compiling for real GPUs, without one


def _compile_cases() -> list:
    """(name, shape, dtype, pixels last) of the launches compiled for real GPUs: the CIFAR-10 layer and
    the FNO-1D one (the DFT-as-GEMM path) in all four dtypes, and odd shapes (T=7, K=4, C=19, 37
    pixels; T=45, K=7, C=19, 5 pixels) with the channels innermost."""
    cifar10 = OpShape("cifar10", 32, 4, 2, 256, (32, 32))
    fno1d = OpShape("fno1d", 64, 256, 32, 64)
    odd = OpShape("odd", 3, 7, 4, 19, (37,))
    odd_long = OpShape("oddlong", 3, 45, 7, 19, (5,))
    return [(shape, dtype, False) for shape in (cifar10, fno1d) for dtype in ALL_DTYPES] + [
        (shape, dtype, True) for shape in (odd, odd_long) for dtype in LOW_PRECISION[:1] + (torch.float32,)
    ]


def compile_for_gpus(gpus=(triton_backend.A100, triton_backend.H100)) -> list[dict]:
    """Compile every kernel variant the launcher chooses for _compile_cases for an A100 (sm_80) and an
    H100 (sm_90), and the forward's persistent candidates for the CIFAR-10 layer in bf16 and fp32."""
    results, seen = [], set()
    for limits in gpus:
        arch = limits.arch
        for shape, dtype, pixels_last in _compile_cases():
            planned = introspection.shape_launches(shape.x_shape, shape.K, dtype, limits, pixels_last=pixels_last)
            for direction, launches in planned.items():
                if direction == "forward" and shape.name == "cifar10" and dtype in (torch.bfloat16, torch.float32):
                    launches = launches + introspection.persistent_variants(launches[0], limits)
                for launch in launches:
                    key = (arch, introspection.variant_key(launch))
                    if key in seen:
                        continue
                    seen.add(key)
                    facts = introspection.compile_launch(launch, limits)
                    name = launch.name + ("-persistent" if launch.args.get("PERSISTENT") else "")
                    case = f"{shape.name}-{DTYPE_IDS[dtype]}-{name}"
                    results.append(
                        {"case": case, "arch": arch, "persistent": launch.args.get("PERSISTENT", 0), **facts}
                    )
    return results


def _without_interpreter(script: str) -> subprocess.CompletedProcess:
    """Run `script` in a fresh Python in this directory without TRITON_INTERPRET (under it,
    @triton.jit builds interpreter functions, which can be neither compiled nor traced)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=1200
    )


def trace_triton_ops(T: int = 4, K: int = 2, C: int = 256, spatial: tuple = (16, 16)) -> str:
    """The graph AOTAutograd traces from time_conv and its backward on fake CUDA tensors (planned for
    the GPU's limits, or without a GPU with none): the triton_op bodies decompose into
    triton_kernel_wrapper_functional calls, which is what lets Inductor compile the kernels."""
    from torch._functorch.aot_autograd import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    graphs = []

    def keep_graph(graph_module, example_inputs):
        graphs.append(graph_module.code)
        return graph_module

    def layer_and_backward(x, w):
        y = torch.ops.dsno_kernels.triton_time_conv(x, w, 0.01)
        return y, *torch.ops.dsno_kernels.triton_time_conv_backward(y, x, w, 0.01)

    with FakeTensorMode():
        x = torch.empty(2, T, C, *spatial, device="cuda", dtype=torch.bfloat16)
        w = torch.empty(C, C, K, 2, device="cuda", dtype=torch.bfloat16)
        aot_function(layer_and_backward, fw_compiler=keep_graph)(x, w)
    return graphs[0]


# (trace_triton_ops' arguments, the kernel launches traced): the fused path's forward, mask pass and
# dx + grad_weight (one slice here); the DFT-as-GEMM path's forward (analysis, mix, synthesis) and
# backward (analysis, mix, gated analysis, two mixes, synthesis).
TRACE_CASES = {"fused": ("", 3), "dft-as-gemm": ("64, 8, 32, ()", 9)}


@pytest.mark.parametrize("path", TRACE_CASES)
def test_triton_ops_trace_into_their_kernels(path):
    args, launches = TRACE_CASES[path]
    run = _without_interpreter(f"import test_triton; print(test_triton.trace_triton_ops({args}))")
    assert run.returncode == 0, run.stderr[-4000:]
    graph = run.stdout
    assert graph.count("triton_kernel_wrapper_functional(") == launches, graph
    assert "dsno_kernels.triton_" not in graph, graph


def test_every_kernel_compiles_for_sm80_and_sm90():
    """Catches what only the interpreter accepts."""
    run = _without_interpreter("import json, test_triton; print(json.dumps(test_triton.compile_for_gpus()))")
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    kernels = {r["case"].split("-")[2] for r in results}
    assert kernels == {
        "_spectral_mix_kernel", "_spectral_backward_kernel", "_sum_slices_kernel",
        "_spectral_analysis_kernel", "_complex_mix_kernel", "_spectral_synthesis_kernel",
    }, kernels  # fmt: skip
    # A persistent grid holds no more programs per SM than stay resident.
    persistent = [r for r in results if r["persistent"]]
    assert persistent and all(r["persistent"] <= r["ctas_per_sm"] for r in persistent), persistent
    for result in results:
        assert result["shared"] <= {80: triton_backend.A100, 90: triton_backend.H100}[result["arch"]].shared_memory, (
            result
        )
    # The layer that matters (T=4, K=2, C=256) on an A100 and an H100: the configurations the launcher
    # picks for each, persistent ones included, fit the register file without spilling.
    hot = [r for r in results if r["case"].startswith(("cifar10-bf16", "cifar10-fp16", "cifar10-fp32"))]
    # ... and so do the DFT-as-GEMM kernels, in every dtype and at the odd shape.
    hot += [r for r in results if r["case"].startswith(("fno1d-", "oddlong-"))]
    assert {r["arch"] for r in hot} == {80, 90}
    assert all(r["stack"] == 0 and r["local"] == 0 for r in hot), [r for r in hot if r["stack"] or r["local"]]
