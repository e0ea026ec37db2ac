"""The `cpu` backend's paths, each reached on purpose: its C++ kernels choose a path per shape (the
direct transforms for short T over images, the tiled GEMM chain, the batched GEMMs for no trailing
dims and long T: csrc/spectral_time_conv.cpp), and tests/common.py's samples (T <= 9) never reach the
batched one. Every sample here asserts the path it takes (the op `dsno_kernels::cpu_path`), then holds
forward and both gradients to the fp64 reference, with gradcheck and gradgradcheck in fp64."""

from __future__ import annotations

import pytest
import torch
from common import DTYPE_IDS, assert_close_to_reference, tolerance

import dsno_kernels

pytestmark = pytest.mark.skipif(
    "cpu" not in dsno_kernels.available_backends("cpu"), reason="the cpu backend is not built"
)

# path -> (B, T, K, C_in, C_out, trailing dims): odd sizes, C_in != C_out, every K from 1 to T // 2 + 1
# (Nyquist included) across the samples of each path
PATH_SAMPLES = {
    "direct": [(1, 5, 3, 2, 3, (17,)), (1, 16, 9, 2, 1, (4, 4)), (1, 7, 1, 1, 2, (16,))],
    "gemm": [(2, 17, 9, 2, 3, (2,)), (3, 6, 4, 3, 2, (3,)), (1, 20, 2, 2, 3, (3, 1))],
    "batched": [
        (3, 17, 9, 2, 3, ()),
        (2, 18, 10, 2, 1, ()),
        (2, 20, 1, 3, 2, (1,)),
        (1, 33, 5, 3, 2, ()),
        (4, 24, 7, 2, 3, ()),
        (2, 130, 40, 3, 2, ()),  # T K 5200: time_conv's backward takes the folded path
    ],
    # T K >= 16384: odd T (one fold), T % 4 == 2 and 0 (two folds; T / 4 a point of its own), Nyquist
    # an odd and an even mode; K past several vectors of modes; B 9 and 5 and C_in 17: the mixing's
    # blocks of 8, 4 and 1 batch items and its passes of 16 weight rows
    "folded": [
        (1, 183, 90, 2, 3, ()),
        (2, 182, 92, 3, 2, ()),
        (1, 256, 65, 2, 3, ()),
        (9, 200, 101, 17, 2, ()),
        (5, 256, 64, 2, 18, ()),
    ],
}
CASES = [(path, shape) for path, shapes in PATH_SAMPLES.items() for shape in shapes]
OPS = ("spectral_time_conv", "time_conv")


def case_id(case) -> str:
    path, (B, T, K, C_in, C_out, S) = case
    return f"{path}-B{B}-T{T}-K{K}-C{C_in}x{C_out}-S{'x'.join(map(str, S)) or 'none'}"


def make_inputs(shape, op, dtype, *, seed=0):
    B, T, K, C_in, C_out, S = shape
    if op == "time_conv":
        C_out = C_in
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C_in, *S, generator=generator, dtype=torch.float64)
    w = torch.randn(C_in, C_out, K, 2, generator=generator, dtype=torch.float64) / (C_in * K) ** 0.5
    return x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()


def call(op, x, w):
    kwargs = {"negative_slope": 0.2} if op == "time_conv" else {}
    return getattr(dsno_kernels, op)(x, w, backend="cpu", **kwargs)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_sample_takes_its_path(case):
    path, shape = case
    x, w = make_inputs(shape, "spectral_time_conv", torch.float32)
    assert torch.ops.dsno_kernels.cpu_path(x, w) == path


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=DTYPE_IDS.get)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_path_matches_reference(case, op, dtype):
    """Forward and both gradients against autograd through the fp64 reference (time_conv's LeakyReLU
    branch taken from the backend's own pre-activation, as tests/test_ops.py does)."""
    _, shape = case
    x, w = make_inputs(shape, op, dtype)
    out = call(op, x, w)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad_x, grad_weight = torch.autograd.grad(out, (x, w), grad_out.to(dtype))
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = dsno_kernels.spectral_time_conv_reference(x64, w64)
    if op == "time_conv":
        s = dsno_kernels.spectral_time_conv(x.detach(), w.detach(), backend="cpu").double()
        ref = x64 + torch.where(s > 0, ref, 0.2 * ref)
    ref_grad_x, ref_grad_weight = torch.autograd.grad(ref, (x64, w64), grad_out)
    tol = tolerance(dtype, "cpu", "cpu")
    terms = max(1, x.numel() // x.shape[2]) ** 0.5  # grad_weight sums over every pixel and time point
    name = f"{op}/{case_id(case)}/{DTYPE_IDS[dtype]}"
    assert out.dtype == dtype and grad_x.dtype == dtype and grad_weight.dtype == dtype
    assert_close_to_reference(out, ref, tol, name)
    assert_close_to_reference(grad_x, ref_grad_x, tol, f"{name}/grad_x")
    assert_close_to_reference(grad_weight, ref_grad_weight, tol * terms, f"{name}/grad_weight")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_path_gradcheck_and_gradgradcheck_fp64(case, op):
    _, shape = case
    x, w = make_inputs(shape, op, torch.float64)
    # The full Jacobian of the largest samples takes minutes: there, random projections of it (fast mode).
    fast = x.numel() + w.numel() > 1000
    assert torch.autograd.gradcheck(lambda a, b: call(op, a, b), (x, w), fast_mode=fast)
    assert torch.autograd.gradgradcheck(lambda a, b: call(op, a, b), (x, w), fast_mode=fast)
