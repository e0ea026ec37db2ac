"""The Triton backend (dsno_kernels/backends/triton.py) beyond tests/test_ops.py's generic checks:
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
import functools
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
from benchmarks import kernel_report
from benchmarks.harness import OpShape
from dsno_kernels.api import resolve_backend
from dsno_kernels.backends import triton as triton_backend
from dsno_kernels.backends.reference import spectral_bases, spectral_time_conv_reference

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
    monkeypatch.setenv(triton_backend.AUTOTUNE_ENV_VAR, "0")


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


def _check_op(op, x, w, dtype, slope=0.2, what=""):
    """Forward and both gradients of the triton backend against the fp64 reference."""
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    kwargs = {} if op == "spectral_time_conv" else {"negative_slope": slope}
    out = getattr(dsno_kernels, op)(x, w, backend="triton", **kwargs)
    tol = tolerance(dtype, "triton", DEVICE)
    assert out.dtype == dtype and out.shape == (x.shape[0], x.shape[1], w.shape[1], *x.shape[3:])
    x64, w64 = x.detach().double(), w.detach().double()
    expected = getattr(dsno_kernels, op + "_reference")(x64, w64, **kwargs)
    assert_close_to_reference(out, expected, tol, f"{what} forward")

    grad_out = _random(*out.shape, dtype=dtype, seed=7)
    grad_x, grad_w = torch.autograd.grad(out, (x, w), grad_out)
    mask_source = None
    if op == "time_conv" and (dtype in LOW_PRECISION or tol != TOLERANCE[dtype]):
        mask_source = dsno_kernels.spectral_time_conv(x.detach(), w.detach(), backend="triton")
    ref_gx, ref_gw = _reference_grads(op, x, w, grad_out, slope, mask_source)
    assert grad_x.dtype == dtype and grad_x.shape == x.shape and grad_w.shape == w.shape
    # The weight gradient sums B * P * T products per entry: its tolerance grows with their sqrt.
    terms = max(1, x.shape[0] * x.shape[1] * x[0, 0, 0].numel()) ** 0.5
    assert_close_to_reference(grad_x, ref_gx, tol, f"{what} grad_x")
    assert_close_to_reference(grad_w, ref_gw, tol * terms, f"{what} grad_weight")


# ------------------------------------------------------------------------------------------------
# Numerics


@pytest.mark.parametrize("T", range(1, triton_backend.MAX_TIME_POINTS + 1))
def test_compile_time_dft_constants_match_the_reference_bases(T):
    """The kernels' F and G entries (constexpr, with 0 and +-1 exact) are reference.spectral_bases."""
    K = T // 2 + 1
    F, G = spectral_bases(T, K)
    row = 0
    for k in range(K):
        for imag in (False, True) if not triton_backend._is_real_mode(k, T) else (False,):
            for t in range(T):
                f = triton_backend._basis(k, t, T, imag, False)
                g = triton_backend._basis(k, t, T, imag, True)
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


def test_longer_time_axis_is_handed_to_the_next_backend():
    x = _random(1, triton_backend.MAX_TIME_POINTS + 1, 3, 2, dtype=torch.float32, seed=8)
    assert TRITON.max_time_points == triton_backend.MAX_TIME_POINTS
    assert resolve_backend("triton", x).name != "triton"
    w = _random(3, 3, 2, 2, dtype=torch.float32, seed=9)
    out = dsno_kernels.spectral_time_conv(x, w, backend="triton")
    expected = spectral_time_conv_reference(x.double(), w.double())
    assert_close_to_reference(out, expected, TOLERANCE[torch.float32], "T = 33")


def test_empty_inputs():
    for x, w in [
        (_random(0, 4, 3, 5, dtype=torch.float32, seed=0), _random(3, 2, 2, 2, dtype=torch.float32, seed=0)),
        (_random(2, 4, 3, 0, dtype=torch.float32, seed=0), _random(3, 2, 2, 2, dtype=torch.float32, seed=0)),
    ]:
        x, w = x.requires_grad_(), w.requires_grad_()
        out = dsno_kernels.spectral_time_conv(x, w, backend="triton")
        assert out.shape == (x.shape[0], 4, 2, *x.shape[3:])
        grad_x, grad_w = torch.autograd.grad(out.sum(), (x, w))
        assert grad_x.shape == x.shape and torch.equal(grad_w, torch.zeros_like(grad_w))


def test_offsets_beyond_32_bits_are_refused():
    x = torch.empty_strided((1, 2, 3, 4), (1, 2**31, 1, 3), device="meta")
    with pytest.raises(ValueError, match="2\\^31"):
        triton_backend._check_32_bit_offsets(x.shape, x.stride(), (3, 3, 2, 2))
    triton_backend._check_32_bit_offsets(x[:, :1].shape, x.stride(), (3, 3, 1, 2))


@pytest.fixture
def fresh_launch_plans():
    """Launch plans are cached per shape: a test that changes what they depend on starts and ends afresh."""
    triton_backend.clear_launch_plans()
    yield
    triton_backend.clear_launch_plans()


@pytest.mark.parametrize("op", ["spectral_time_conv", "time_conv"])
def test_weight_gradient_in_several_slices_matches_one(op, monkeypatch, fresh_launch_plans):
    """Several pixel slices summed in order by the reduction kernel give the one-slice gradient, which
    the kernel writes straight into grad_weight."""
    x = _random(3, 4, 20, 23, dtype=torch.float32, seed=10)
    w = _random(20, 20, 2, 2, dtype=torch.float32, seed=11, scale=0.2)
    grad_out = _random(3, 4, 20, 23, dtype=torch.float32, seed=12)
    args = (grad_out, x, w) if op == "spectral_time_conv" else (grad_out, x, w, 0.1)
    grads = {}
    for slices in (1, 3):
        monkeypatch.setattr(triton_backend, "_weight_grad_slices", lambda *_, n=slices: n)
        triton_backend.clear_launch_plans()
        grads[slices] = triton_backend._OPS[f"{op}_backward"](*args)
        plan = triton_backend._backward_plan(3, 4, 2, 20, 20, 23, 4, None)
        assert plan.slices == slices and (plan.reduce is None) == (slices == 1)
    assert torch.equal(grads[1][0], grads[3][0])
    assert_close_to_reference(grads[3][1], grads[1][1].double(), 1e-5, "slices")


def _persistent(launch, programs: int):
    """A one-configuration mix launch in the persistent mode, with `programs` programs."""
    return dataclasses.replace(launch, grid=(programs,), meta={**launch.meta, "PERSISTENT": 1})


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
def test_persistent_mode(case, fresh_launch_plans, monkeypatch):
    """The mix kernel's persistent mode (the forward's, and time_conv's mask pass's, extra autotuning
    candidates on a GPU), forced with a few programs: the same output as one program per tile, and
    the gradients of the reference."""
    op, dtype, B, T, K, C_in, C_out, trailing, programs, expected_tiles = case
    x = _random(B, T, C_in, *trailing, dtype=dtype, seed=20)
    w = _random(C_in, C_out, K, 2, dtype=dtype, seed=21, scale=(C_in * K) ** -0.5)
    kwargs = {} if op == "spectral_time_conv" else {"negative_slope": 0.2}
    one_per_tile = getattr(dsno_kernels, op)(x, w, backend="triton", **kwargs)
    plan = triton_backend._mix_plan
    meta = plan(B, T, K, C_in, C_out, math.prod(trailing), dtype.itemsize, None, False).meta
    tiles = B * -(-math.prod(trailing) // meta["BLOCK_P"]) * -(-C_out // meta["BLOCK_OUT"])
    assert tiles == expected_tiles, (tiles, meta)
    # lru_cache: clear_launch_plans clears the patched function too
    patched = functools.lru_cache(maxsize=None)(lambda *args, **kw: _persistent(plan(*args, **kw), programs))
    monkeypatch.setattr(triton_backend, "_mix_plan", patched)
    triton_backend.clear_launch_plans()
    with kernel_report.recorded_launches() as launches:
        getattr(dsno_kernels, op)(x, w, backend="triton", **kwargs)
    assert launches[0].grid == (programs,) and launches[0].args["PERSISTENT"] == 1
    persistent = getattr(dsno_kernels, op)(x, w, backend="triton", **kwargs)
    assert torch.equal(persistent, one_per_tile)
    _check_op(op, x, w, dtype, slope=0.2, what=f"persistent {case}")


def test_persistent_candidates_follow_the_first_guess(monkeypatch, fresh_launch_plans):
    """With autotuning, the forward's first candidate is the one-configuration launch's, and the
    persistent ones come last, with grids of at most the resident programs per SM."""
    monkeypatch.setenv(triton_backend.AUTOTUNE_ENV_VAR, "1")
    for arch in (80, 90):
        with kernel_report.gpu_limits(arch):
            for element_size, P in [(2, 1024), (2, 64), (4, 1024)]:
                tuned = triton_backend._mix_variants(4, 2, 256, 256, P, element_size, 0, True)
                untuned = triton_backend._mix_variants(4, 2, 256, 256, P, element_size, 0, False)
                assert tuned[0] == untuned[0] and untuned[0][1] == 0
                flags = [persistent for _, persistent in tuned]
                assert flags == sorted(flags, key=bool) and 0 < sum(map(bool, flags)) <= 2, tuned
                for config, persistent in tuned:
                    if persistent:
                        meta = triton_backend._mix_kwargs(config, persistent)
                        grid = triton_backend._mix_grid(32, P, 256, kernel_report.MULTIPROCESSORS[arch], meta)
                        assert grid[0] <= kernel_report.MULTIPROCESSORS[arch] * persistent


def test_fp32_precision_setting(monkeypatch):
    x = _random(2, 4, 5, 6, dtype=torch.float32, seed=13)
    w = _random(5, 5, 2, 2, dtype=torch.float32, seed=14, scale=0.3)
    monkeypatch.setenv(triton_backend.FP32_PRECISION_ENV_VAR, "fp16")
    with pytest.raises(ValueError, match=triton_backend.FP32_PRECISION_ENV_VAR):
        dsno_kernels.spectral_time_conv(x, w, backend="triton")
    monkeypatch.setenv(triton_backend.FP32_PRECISION_ENV_VAR, "ieee")
    out = dsno_kernels.spectral_time_conv(x, w, backend="triton")
    expected = spectral_time_conv_reference(x.double(), w.double())
    assert_close_to_reference(out, expected, TOLERANCE[torch.float32], "ieee")


@pytest.mark.skipif(DEVICE != "cuda", reason="the layer's real shape needs a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=DTYPE_IDS.get)
def test_cifar10_layer_shape(dtype, monkeypatch):
    """DSNO's CIFAR-10 temporal layer (T=4, K=2, C=256, 32x32), batch 2, through the autotuner."""
    monkeypatch.setenv(triton_backend.AUTOTUNE_ENV_VAR, "1")
    x = _random(2, 4, 256, 32, 32, dtype=dtype, seed=15)
    w = _random(256, 256, 2, 2, dtype=dtype, seed=16, scale=(256 * 2) ** -0.5)
    _check_op("time_conv", x, w, dtype, slope=0.01, what="cifar10")


# ------------------------------------------------------------------------------------------------
# Launch configurations and registration


@pytest.mark.parametrize(
    "kernel,T,K,C_in,C_out,pixels",
    [("mix", 4, 2, 256, 256, 1024), ("mix", 9, 5, 3, 7, 5), ("weight_grad", 4, 2, 192, 384, 64),
     ("mix", 32, 17, 64, 64, 4096), ("weight_grad", 32, 17, 64, 64, 4096)],
)  # fmt: skip
def test_launch_configs(kernel, T, K, C_in, C_out, pixels, monkeypatch):
    monkeypatch.setenv(triton_backend.AUTOTUNE_ENV_VAR, "1")
    configs = triton_backend.launch_configs(kernel, T, K, C_in, C_out, pixels, 2, 227 * 1024)
    assert configs and len(set(configs)) == len(configs)
    if triton_backend.INTERPRETING:
        assert len(configs) == 1
    for config in configs:
        *blocks, warps, stages = config
        assert all(block >= 16 and block & (block - 1) == 0 for block in blocks), config
        assert warps in (1, 2, 4, 8) and stages >= 1
    extents = {"mix": (C_out, C_in, pixels), "weight_grad": (C_in, C_out, pixels)}[kernel]
    smallest = triton_backend._MIX_CANDIDATES[-1] if kernel == "mix" else triton_backend._WEIGHT_GRAD_CANDIDATES[-1]
    for config in configs:
        if config != smallest:
            assert all(block <= max(16, 2 * extent) for block, extent in zip(config, extents)), config
    monkeypatch.setenv(triton_backend.AUTOTUNE_ENV_VAR, "0")
    assert triton_backend.launch_configs(kernel, T, K, C_in, C_out, pixels, 2, 227 * 1024) == configs[:1]


def test_registration():
    ops = TRITON.ops
    assert set(ops) == {"spectral_time_conv", "time_conv", "spectral_time_conv_backward", "time_conv_backward"}
    for role, op in ops.items():
        assert op._qualname == f"dsno_kernels::triton_{role}" and hasattr(torch.ops.dsno_kernels, f"triton_{role}")
    assert TRITON.device_types == (("cpu",) if triton_backend.INTERPRETING else ("cuda",))


# ------------------------------------------------------------------------------------------------
# Compiling for real GPUs, without one


def _compile_cases() -> list:
    """(name, shape, dtype, pixels last) of the launches compiled for real GPUs: the CIFAR-10 layer in
    all four dtypes, and an odd shape (T=7, K=4, C=19, 37 pixels) with the channels innermost."""
    cifar10 = OpShape("cifar10", 32, 4, 2, 256, (32, 32))
    odd = OpShape("odd", 3, 7, 4, 19, (37,))
    return [(cifar10, dtype, False) for dtype in ALL_DTYPES] + [
        (odd, dtype, True) for dtype in LOW_PRECISION[:1] + (torch.float32,)
    ]


def compile_for_gpus(archs=(80, 90)) -> list[dict]:
    """Compile every kernel variant the launcher chooses for _compile_cases for sm_80 and sm_90, and
    the forward's persistent candidates for the CIFAR-10 layer in bf16 and fp32."""
    results, seen = [], set()
    for arch in archs:
        for shape, dtype, pixels_last in _compile_cases():
            for direction, launches in kernel_report.shape_launches(
                shape, dtype, arch, pixels_last=pixels_last
            ).items():
                if direction == "forward" and shape.name == "cifar10" and dtype in (torch.bfloat16, torch.float32):
                    launches = launches + kernel_report.persistent_variants(launches[0], arch)
                for launch in launches:
                    key = (arch, kernel_report.variant_key(launch))
                    if key in seen:
                        continue
                    seen.add(key)
                    facts = kernel_report.compile_launch(launch, arch)
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
    root = str(Path(__file__).resolve().parents[1])  # for benchmarks.kernel_report
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=1200
    )


def trace_triton_ops() -> str:
    """The graph AOTAutograd traces from time_conv and its backward on fake CUDA tensors (a device
    with H100 limits is assumed, so no GPU is needed): the triton_op bodies decompose into
    triton_kernel_wrapper_functional calls, which is what lets Inductor compile the kernels."""
    from torch._functorch.aot_autograd import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    triton_backend._device_limits = lambda index: kernel_report.device_limits(90)
    graphs = []

    def keep_graph(graph_module, example_inputs):
        graphs.append(graph_module.code)
        return graph_module

    def layer_and_backward(x, w):
        y = torch.ops.dsno_kernels.triton_time_conv(x, w, 0.01)
        return y, *torch.ops.dsno_kernels.triton_time_conv_backward(y, x, w, 0.01)

    with FakeTensorMode():
        x = torch.empty(2, 4, 256, 16, 16, device="cuda", dtype=torch.bfloat16)
        w = torch.empty(256, 256, 2, 2, device="cuda", dtype=torch.bfloat16)
        aot_function(layer_and_backward, fw_compiler=keep_graph)(x, w)
    return graphs[0]


def test_triton_ops_trace_into_their_kernels():
    run = _without_interpreter("import test_triton; print(test_triton.trace_triton_ops())")
    assert run.returncode == 0, run.stderr[-4000:]
    graph = run.stdout
    # forward; backward: the LeakyReLU mask pass, then dx and dweight in one launch (one slice here)
    assert graph.count("triton_kernel_wrapper_functional(") == 3, graph
    assert "dsno_kernels.triton_" not in graph, graph


def test_every_kernel_compiles_for_sm80_and_sm90():
    """Catches what only the interpreter accepts."""
    run = _without_interpreter("import json, test_triton; print(json.dumps(test_triton.compile_for_gpus()))")
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    kernels = {r["case"].split("-")[2] for r in results}
    assert kernels == {"_spectral_mix_kernel", "_spectral_backward_kernel", "_sum_slices_kernel"}, kernels
    # A persistent grid holds no more programs per SM than stay resident.
    persistent = [r for r in results if r["persistent"]]
    assert persistent and all(r["persistent"] <= r["ctas_per_sm"] for r in persistent), persistent
    for result in results:
        assert result["shared"] <= kernel_report.SHARED_MEMORY_LIMIT[result["arch"]], result
    # The layer that matters (T=4, K=2, C=256) on an A100 and an H100: the configurations the launcher
    # picks for each, persistent ones included, fit the register file without spilling.
    hot = [r for r in results if r["case"].startswith(("cifar10-bf16", "cifar10-fp16", "cifar10-fp32"))]
    assert {r["arch"] for r in hot} == {80, 90}
    assert all(r["stack"] == 0 and r["local"] == 0 for r in hot), [r for r in hot if r["stack"] or r["local"]]
