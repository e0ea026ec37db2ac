"""Checks specific to the CUDA kernels (csrc/cuda/).

test_ops.py runs the shared sample inputs, gradcheck, opcheck and torch.compile on every backend, "cuda"
included. Those samples have few channels and pixel counts that are mostly not multiples of 8, so they
exercise the general path; the tests here force each path on shapes picked for it (ragged channel
tiles, pixel tiles that cross batch items, T = 1 to 16, Q = 1 / 2 / 4 terms), then T up to 1024, the
determinism of grad_weight, and that every launch goes to the current stream (CUDA graph capture fails
otherwise). All but the registration and settings tests need a GPU. The ops are called directly, with
the settings in force handed over first (cuda_kernels), as the public functions do.
"""

from __future__ import annotations

import pytest
import torch
from common import TF32_TOLERANCE, TOLERANCE, assert_close_to_reference

import dsno_kernels
from dsno_kernels import settings
from dsno_kernels.backends import cpp as cpp_backend
from dsno_kernels.backends.reference import spectral_time_conv_reference, time_conv_reference

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CPU_UNAVAILABLE = dsno_kernels.get_backend("cpu").unavailable_reason()

OPS = ("spectral_time_conv", "time_conv", "spectral_time_conv_backward", "time_conv_backward")


def _extension_links_cuda() -> bool:
    """Whether the built extension is the CUDA build (it then links the CUDA side of c10)."""
    from dsno_kernels import _C

    with open(_C.__file__, "rb") as library:
        return b"libc10_cuda.so" in library.read()


@pytest.mark.skipif(CPU_UNAVAILABLE is not None, reason=f"the C++ extension is not built: {CPU_UNAVAILABLE}")
def test_cuda_kernels_registered_when_built_with_cuda():
    if not _extension_links_cuda():
        pytest.skip("the extension was built without CUDA")
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dsno_kernels::{op}", "CUDA"), op
    assert cpp_backend.has_cuda_kernels()


requires_cuda_kernels = pytest.mark.skipif(
    not cpp_backend.has_cuda_kernels(), reason="the extension is not built, or built without CUDA kernels"
)


@requires_cuda_kernels
def test_the_cuda_kernels_take_every_validated_setting_and_nothing_else(monkeypatch):
    """settings.py validates DSNO_KERNELS_FP32 and DSNO_KERNELS_CUDA_PATH and the CUDA kernels receive
    the values: each allowed value is taken, a bad one is a ValueError naming the variable before the
    kernels see it, and the C++ side refuses a value that did not come through settings.py."""
    for name in (settings.FP32, settings.CUDA_PATH):
        for value in settings.VARIABLES[name].choices:
            monkeypatch.setenv(name, value)
            cpp_backend.apply_cuda_settings()
        monkeypatch.setenv(name, "fast")
        with pytest.raises(ValueError, match=name):
            cpp_backend.apply_cuda_settings()
        monkeypatch.delenv(name)
    with pytest.raises(RuntimeError, match="settings.py"):
        torch.ops.dsno_kernels.set_cuda_settings("fast", "auto")
    with pytest.raises(RuntimeError, match="settings.py"):
        torch.ops.dsno_kernels.set_cuda_settings("tf32", "fast")
    cpp_backend.apply_cuda_settings()


class _OpsWithSettings:
    """torch.ops.dsno_kernels, each call preceded by cpp.apply_cuda_settings (as in the public functions)."""

    def __getattr__(self, name):
        op = getattr(torch.ops.dsno_kernels, name)

        def call(*args):
            cpp_backend.apply_cuda_settings()
            return op(*args)

        return call


@pytest.fixture
def cuda_kernels():
    assert cpp_backend.has_cuda_kernels(), "a GPU is present but the extension was built without CUDA kernels"
    return _OpsWithSettings()


# (B, T, K, C_in, C_out, trailing): every pixel count is a multiple of 8, so each qualifies for the fused path.
FUSED_SHAPES = [
    (2, 4, 2, 40, 72, (4, 4)),  # ragged channel tiles on both sides
    (1, 6, 2, 24, 130, (8,)),  # two output-channel tiles, the second nearly empty
    (3, 1, 1, 17, 136, (8,)),  # T = 1, one term
    (2, 2, 2, 33, 65, (2, 4)),  # DC and Nyquist only: two real terms
    (5, 8, 2, 8, 8, (8,)),  # 64-pixel tiles span 8 batch items; grad_weight with a one-stage pipeline on an A100
    (3, 5, 1, 300, 20, (24,)),  # C_in over several pipeline stages, pixel tiles across batch items
    (2, 4, 2, 256, 256, (16, 16)),  # DSNO's CIFAR-10 layer
]
SHAPE_IDS = [f"B{b}-T{t}-K{k}-Cin{ci}-Cout{co}-S{'x'.join(map(str, s))}" for b, t, k, ci, co, s in FUSED_SHAPES]

# (dtype, DSNO_KERNELS_FP32, tolerance)
FUSED_MODES = [
    (torch.bfloat16, None, TOLERANCE[torch.bfloat16]),
    (torch.float16, None, TOLERANCE[torch.float16]),
    (torch.float32, "tf32", TF32_TOLERANCE),
    (torch.float32, "ieee", TOLERANCE[torch.float32]),
    (torch.float32, "tf32x3", TOLERANCE[torch.float32]),  # no three-pass path in CUDA: runs as ieee
]
MODE_IDS = ["bf16", "fp16", "fp32-tf32", "fp32-ieee", "fp32-tf32x3"]


def _inputs(shape, dtype, *, square, seed=0):
    B, T, K, C_in, C_out, trailing = shape
    C_out = C_in if square else C_out
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C_in, *trailing, generator=generator, dtype=torch.float64)
    w = torch.randn(C_in, C_out, K, 2, generator=generator, dtype=torch.float64) / (C_in * K) ** 0.5
    dy = torch.randn(B, T, C_out, *trailing, generator=generator, dtype=torch.float64)
    return tuple(t.to(device="cuda", dtype=dtype) for t in (x, w, dy))


def _reference_grads(forward, x, w, dy):
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    return torch.autograd.grad(forward(x64, w64), (x64, w64), dy.double())


def _check_all_ops(ops, x, w, dy, w_sq, dy_sq, tol, slope=0.2):
    """Both forwards and both backwards against the fp64 reference on the same (rounded) values."""
    what = f"{x.dtype} {tuple(x.shape)}"
    y = ops.spectral_time_conv(x, w)
    assert_close_to_reference(y, spectral_time_conv_reference(x.double(), w.double()), tol, f"forward {what}")
    grad_x, grad_weight = ops.spectral_time_conv_backward(dy, x, w)
    ref_grad_x, ref_grad_weight = _reference_grads(spectral_time_conv_reference, x, w, dy)
    assert_close_to_reference(grad_x, ref_grad_x, tol, f"grad_x {what}")
    assert_close_to_reference(grad_weight, ref_grad_weight, tol, f"grad_weight {what}")

    y = ops.time_conv(x, w_sq, slope)
    assert_close_to_reference(y, time_conv_reference(x.double(), w_sq.double(), slope), tol, f"time_conv {what}")
    # Where s is within rounding of 0 the LeakyReLU mask is a coin toss in low precision: no gradient there.
    s = spectral_time_conv_reference(x.double(), w_sq.double())
    ambiguous = s.abs() <= 4 * tol * max(1.0, s.abs().max().item())
    dy_sq = dy_sq.masked_fill(ambiguous, 0)
    grad_x, grad_weight = ops.time_conv_backward(dy_sq, x, w_sq, slope)
    ref_grad_x, ref_grad_weight = _reference_grads(lambda a, b: time_conv_reference(a, b, slope), x, w_sq, dy_sq)
    assert_close_to_reference(grad_x, ref_grad_x, tol, f"time_conv grad_x {what}")
    assert_close_to_reference(grad_weight, ref_grad_weight, tol, f"time_conv grad_weight {what}")


def _unless_too_big_for_the_device(check):
    """Runs check(); a device whose shared memory cannot hold the fused pipeline for this T and dtype (fp32
    with T > 5 on an A100, for one) is a skip. Any other refusal under DSNO_KERNELS_CUDA_PATH=fused fails."""
    try:
        check()
    except RuntimeError as error:
        if "does not fit the device's shared memory" not in str(error):
            raise
        pytest.skip(str(error).splitlines()[0])


@requires_cuda
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype, fp32_mode, tol", FUSED_MODES, ids=MODE_IDS)
def test_fused_path_matches_reference(cuda_kernels, monkeypatch, shape, dtype, fp32_mode, tol):
    monkeypatch.setenv("DSNO_KERNELS_CUDA_PATH", "fused")  # an input the fused kernels refuse is an error
    if fp32_mode is not None:
        monkeypatch.setenv("DSNO_KERNELS_FP32", fp32_mode)
    x, w, dy = _inputs(shape, dtype, square=False)
    _, w_sq, dy_sq = _inputs(shape, dtype, square=True, seed=1)
    _unless_too_big_for_the_device(lambda: _check_all_ops(cuda_kernels, x, w, dy, w_sq, dy_sq, tol))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fused_forward_at_the_largest_T(cuda_kernels, monkeypatch, dtype):
    """T = 16 forward (two pipeline stages of 16 time steps fit an H100; its grad_weight does not)."""
    monkeypatch.setenv("DSNO_KERNELS_CUDA_PATH", "fused")
    x, w, _ = _inputs((3, 16, 2, 40, 24, (8,)), dtype, square=False)
    expected = spectral_time_conv_reference(x.double(), w.double())
    _unless_too_big_for_the_device(
        lambda: assert_close_to_reference(cuda_kernels.spectral_time_conv(x, w), expected, TOLERANCE[dtype], "T=16")
    )


@requires_cuda
@pytest.mark.parametrize("shape", FUSED_SHAPES[:4], ids=SHAPE_IDS[:4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_general_path_on_fused_shapes(cuda_kernels, monkeypatch, shape, dtype):
    monkeypatch.setenv("DSNO_KERNELS_CUDA_PATH", "general")
    x, w, dy = _inputs(shape, dtype, square=False)
    _, w_sq, dy_sq = _inputs(shape, dtype, square=True, seed=1)
    _check_all_ops(cuda_kernels, x, w, dy, w_sq, dy_sq, TOLERANCE[dtype])


@requires_cuda
@pytest.mark.parametrize(
    "T, K, C, B",
    [(256, 64, 64, 3), (256, 129, 16, 2), (1024, 64, 32, 2), (37, 19, 5, 3)],
    ids=["T256-K64", "T256-K129-Nyquist", "T1024-K64", "T37-K19"],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_large_T_general_path(cuda_kernels, T, K, C, B, dtype):
    """FNO-1D shapes (no trailing dims): far beyond the fused kernels' T <= 16, Q <= 4."""
    x, w, dy = _inputs((B, T, K, C, C, ()), dtype, square=True)
    _check_all_ops(cuda_kernels, x, w, dy, w, dy, TOLERANCE[dtype])


@requires_cuda
@pytest.mark.parametrize(
    "path, dtype", [("fused", torch.bfloat16), ("fused", torch.float32), ("general", torch.float32)], ids=str
)
def test_grad_weight_is_deterministic(cuda_kernels, monkeypatch, path, dtype):
    """grad_weight sums many per-block partials; a fixed order makes repeated runs bitwise equal."""
    monkeypatch.setenv("DSNO_KERNELS_CUDA_PATH", path)
    x, w, dy = _inputs((8, 4, 2, 256, 256, (32, 32)), dtype, square=True)
    first = cuda_kernels.time_conv_backward(dy, x, w, 0.2)
    for _ in range(3):
        again = cuda_kernels.time_conv_backward(dy, x, w, 0.2)
        assert torch.equal(first[0], again[0])
        assert torch.equal(first[1], again[1])


@requires_cuda
@pytest.mark.parametrize("path", ["fused", "general"])
def test_ops_capture_into_a_cuda_graph(cuda_kernels, monkeypatch, path):
    """Graph capture rejects work on any stream but the capturing one, and host synchronisation."""
    monkeypatch.setenv("DSNO_KERNELS_CUDA_PATH", path)
    x, w, dy = _inputs((2, 4, 2, 64, 64, (8, 8)), torch.bfloat16, square=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graphs recommends
        for _ in range(2):
            cuda_kernels.time_conv(x, w, 0.2)
            cuda_kernels.time_conv_backward(dy, x, w, 0.2)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = cuda_kernels.time_conv(x, w, 0.2)
        grad_x, grad_weight = cuda_kernels.time_conv_backward(dy, x, w, 0.2)
    x_new, _, dy_new = _inputs((2, 4, 2, 64, 64, (8, 8)), torch.bfloat16, square=True, seed=5)
    x.copy_(x_new)
    dy.copy_(dy_new)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, cuda_kernels.time_conv(x, w, 0.2))
    eager_grad_x, eager_grad_weight = cuda_kernels.time_conv_backward(dy, x, w, 0.2)
    assert torch.equal(grad_x, eager_grad_x)
    assert torch.equal(grad_weight, eager_grad_weight)


@requires_cuda
def test_side_stream_result_matches_default_stream(cuda_kernels):
    x, w, dy = _inputs((2, 4, 2, 48, 48, (16,)), torch.float16, square=True)
    expected = cuda_kernels.time_conv(x, w, 0.2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = cuda_kernels.time_conv(x, w, 0.2)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(y, expected)


@requires_cuda
def test_misaligned_input_falls_back_to_the_general_path(cuda_kernels, monkeypatch):
    x, w, _ = _inputs((2, 4, 2, 32, 32, (8,)), torch.bfloat16, square=True)
    storage = torch.empty(x.numel() + 1, dtype=x.dtype, device="cuda")
    shifted = storage[1:].view(x.shape)  # contiguous, but 2 bytes off a 16-byte boundary
    shifted.copy_(x)
    expected = time_conv_reference(x.double(), w.double(), 0.2)
    assert_close_to_reference(cuda_kernels.time_conv(shifted, w, 0.2), expected, TOLERANCE[x.dtype], "auto path")
    monkeypatch.setenv("DSNO_KERNELS_CUDA_PATH", "fused")
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        cuda_kernels.time_conv(shifted, w, 0.2)


@requires_cuda
@pytest.mark.parametrize(
    "shape, dtype, reason",
    [
        ((2, 4, 2, 8, 8, (5,)), torch.bfloat16, "multiple of 8"),
        ((2, 8, 3, 8, 8, (8,)), torch.bfloat16, "Gauss terms"),
        ((2, 17, 1, 8, 8, (8,)), torch.float16, "T = 17"),
        ((2, 4, 2, 8, 8, (8,)), torch.float64, "general"),
    ],
    ids=["pixels", "terms", "T", "fp64"],
)
def test_fused_path_names_why_it_refuses(cuda_kernels, monkeypatch, shape, dtype, reason):
    x, w, _ = _inputs(shape, dtype, square=False)
    expected = spectral_time_conv_reference(x.double(), w.double())
    assert_close_to_reference(cuda_kernels.spectral_time_conv(x, w), expected, TOLERANCE[dtype], "auto path")
    monkeypatch.setenv("DSNO_KERNELS_CUDA_PATH", "fused")
    with pytest.raises(RuntimeError, match=reason):
        cuda_kernels.spectral_time_conv(x, w)


@requires_cuda
@pytest.mark.parametrize("variable", ["DSNO_KERNELS_CUDA_PATH", "DSNO_KERNELS_FP32"])
def test_unknown_switch_values_are_errors(cuda_kernels, monkeypatch, variable):
    x, w, _ = _inputs((1, 4, 2, 8, 8, (8,)), torch.float32, square=False)
    monkeypatch.setenv(variable, "fast")
    with pytest.raises(ValueError, match=variable):
        cuda_kernels.spectral_time_conv(x, w)
