"""The triton backend's launch plan (docs/design.md), asserted on the CPU with Triton's launcher stubbed:

    forward   one kernel launch, no aten op but the output's allocation;
    backward  at most two kernels plus one deterministic reduction, no aten op but allocations,
              nothing of forward size written besides dx (time_conv's LeakyReLU mask is recomputed
              and kept as 1 bit per element), weight-gradient partial sums of at most 10% of x's
              bytes at the GPU benchmark shapes;

T > 32 (the FNO-1D layers) takes the DFT-as-GEMM path: the forward three launches (analysis, mix,
synthesis), the backward five (spectral_time_conv) or six (time_conv), no aten op but allocations,
nothing of forward size written but y and dx, the spectra [B * P, K, 2, C] in between;

and the host path that makes it cheap: launches planned once per shape, kernels launched directly in
eager mode, allocations that depend on shapes only (CUDA-graph safe: no host sync either, which would
show up as an aten op such as _local_scalar_dense).
"""

from __future__ import annotations

import pytest
import torch

import dsno_kernels
from dsno_kernels.backends import triton as triton_backend
from dsno_kernels.backends.triton import introspection
from dsno_kernels.shapes import GPU_SHAPES, OpShape

pytestmark = pytest.mark.skipif(triton_backend.TRITON_IMPORT_ERROR is not None, reason="Triton is not installed")
ALLOCATIONS = {"aten::empty", "aten::new_empty", "aten::empty_like", "aten::empty_strided"}
OPS = ["spectral_time_conv", "time_conv"]


@pytest.fixture(autouse=True)
def _planned_for_an_h100():
    """The triton backend on CPU tensors, planning for an H100's limits, its kernels never run."""
    with introspection.triton_on_cpu(triton_backend.H100):
        yield


def _inputs(requires_grad: bool, B=2, T=4, C=32, spatial=(8, 8), K=2):
    x = torch.randn(B, T, C, *spatial, requires_grad=requires_grad)
    w = (torch.randn(C, C, K, 2) * 0.1).requires_grad_(requires_grad)
    return x, w


def _call(op, x, w):
    kwargs = {"negative_slope": 0.1} if op == "time_conv" else {}
    return getattr(dsno_kernels, op)(x, w, backend="triton", **kwargs)


@pytest.mark.parametrize("op", OPS)
def test_forward_is_one_launch_and_one_allocation(op):
    x, w = _inputs(requires_grad=False)
    with introspection.recorded_launches() as launches:
        ops = introspection.aten_ops(lambda: _call(op, x, w))
    assert [launch.name for launch in launches] == ["_spectral_mix_kernel"]
    assert len(ops) == 1 and set(ops) <= ALLOCATIONS, ops


@pytest.mark.parametrize("op", OPS)
def test_backward_is_two_kernels_and_allocations(op):
    x, w = _inputs(requires_grad=True)
    dy = torch.randn_like(x)
    y = _call(op, x, w)
    with introspection.recorded_launches() as launches:
        ops = introspection.aten_ops(lambda: torch.autograd.grad(y, (x, w), dy))
    names = [launch.name for launch in launches]
    if op == "time_conv":
        assert names == ["_spectral_mix_kernel", "_spectral_backward_kernel"], names
        assert launches[0].args["STORE_MASK"] and launches[1].args["MASKED_INPUT"]
    else:
        assert names == ["_spectral_backward_kernel"], names
    # grad_x, grad_weight (and the mask): no copies, sums, stacks or host syncs
    assert set(ops) <= ALLOCATIONS and len(ops) == 2 + (op == "time_conv"), ops


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("name", [n for n, s in GPU_SHAPES.items() if s.T <= triton_backend.MAX_FUSED_TIME_POINTS])
def test_backward_writes_nothing_of_forward_size_but_dx(name, dtype):
    """At the GPU benchmark shapes, planned for an H100: the backward's launches write dx, a bit mask,
    and weight-gradient partials of at most 10% of |x| (or, in one slice, grad_weight itself)."""
    shape = GPU_SHAPES[name]
    launches = introspection.shape_launches(shape.x_shape, shape.K, dtype, triton_backend.H100)
    x_bytes = shape.x_numel * dtype.itemsize
    forward = launches["forward"]
    assert [l.name for l in forward] == ["_spectral_mix_kernel"]
    names = [l.name for l in launches["backward"]]
    assert names[:2] == ["_spectral_mix_kernel", "_spectral_backward_kernel"] and len(names) <= 3, names
    mask_pass, main, *reduce = launches["backward"]
    mask = mask_pass.args["mask_ptr"]
    assert mask.dtype == torch.int32 and _bytes(mask) <= 4 * (-(-shape.x_numel // 32) + shape.B * shape.T * shape.C)
    assert mask_pass.args["STORE_MASK"] and main.args["mask_ptr"] is mask
    partial = main.args["grad_weight_ptr"]
    if main.args["NUM_SLICES"] == 1:
        assert not reduce and partial.shape == (shape.C, shape.C, shape.K, 2) and partial.dtype == dtype
    else:
        assert [l.name for l in reduce] == ["_sum_slices_kernel"]
        assert partial.shape[0] == main.args["NUM_SLICES"] and _bytes(partial) <= 0.1 * x_bytes, (
            _bytes(partial),
            x_bytes,
        )
        assert reduce[0].args["partial_ptr"] is partial
    # Forward-size tensors the backward launches touch: x, dy (read) and dx (written) only.
    big = {id(t) for l in launches["backward"] for t in l.args.values() if isinstance(t, torch.Tensor)
           and t.shape[:2] == (shape.B, shape.T) and t.numel() >= shape.x_numel}  # fmt: skip
    assert big == {id(main.args["x_ptr"]), id(main.args["dy_ptr"]), id(main.args["dx_ptr"])}


GEMM_FORWARD = ["_spectral_analysis_kernel", "_complex_mix_kernel", "_spectral_synthesis_kernel"]
GEMM_BACKWARD = {
    "spectral_time_conv": ["_spectral_analysis_kernel", "_spectral_analysis_kernel", "_complex_mix_kernel",
                           "_complex_mix_kernel", "_spectral_synthesis_kernel"],
    "time_conv": ["_spectral_analysis_kernel", "_complex_mix_kernel", "_spectral_analysis_kernel",
                  "_complex_mix_kernel", "_complex_mix_kernel", "_spectral_synthesis_kernel"],
}  # fmt: skip


@pytest.mark.parametrize("op", OPS)
def test_fno1d_calls_are_gemm_launches_and_allocations(op):
    """T > 32, no trailing dims (B16 C64 T256 K16): the DFT-as-GEMM launches, and no aten op but the
    output's, the spectra's and the gradients' allocations."""
    x, w = _inputs(requires_grad=True, B=16, T=256, C=64, spatial=(), K=16)
    x_plain, w_plain = x.detach(), w.detach()
    with introspection.recorded_launches() as launches:
        ops = introspection.aten_ops(lambda: _call(op, x_plain, w_plain))
    assert [launch.name for launch in launches] == GEMM_FORWARD
    assert set(ops) <= ALLOCATIONS and len(ops) == 3, ops  # y, X, Y
    y = _call(op, x, w)
    dy = torch.randn_like(y)
    with introspection.recorded_launches() as launches:
        ops = introspection.aten_ops(lambda: torch.autograd.grad(y, (x, w), dy))
    assert [launch.name for launch in launches] == GEMM_BACKWARD[op]
    # grad_x, grad_weight and the spectra (X, F g, dX; time_conv: Y): no copies, sums or host syncs
    assert set(ops) <= ALLOCATIONS and len(ops) == 5 + (op == "time_conv"), ops


def _fno_shapes():
    return [GPU_SHAPES["fno1d"], OpShape("fno1d-t256", 16, 256, 16, 64), OpShape("fno1d-t200", 16, 200, 24, 48)]


@pytest.mark.parametrize("limits", [triton_backend.H100, triton_backend.A100], ids=["h100", "a100"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("shape", _fno_shapes(), ids=lambda s: s.name)
def test_fno1d_launch_plan(shape, dtype, limits):
    """At the FNO-1D shapes, planned for an H100 and an A100: time_conv's forward and backward launch the
    DFT-as-GEMM kernels in order, grids covering every row, mode and channel block; forward-size
    tensors are only read (x, dy) or written once (y, dx); everything in between is a spectrum
    [B, K, 2, C] (2K / T of x's or y's size) or the weight and its gradient."""
    launches = introspection.shape_launches(shape.x_shape, shape.K, dtype, limits)
    forward, backward = launches["forward"], launches["backward"]
    assert [l.name for l in forward] == GEMM_FORWARD
    assert [l.name for l in backward] == GEMM_BACKWARD["time_conv"]
    analysis, mix, synthesis = forward
    x, w = analysis.args["in_ptr"], mix.args["b_ptr"]
    y = synthesis.args["out_ptr"]
    B, T, K, C = shape.B, shape.T, shape.K, shape.C
    spectrum = (B, K, 2, C)
    assert analysis.args["out_ptr"].shape == spectrum and mix.args["a_ptr"] is analysis.args["out_ptr"]
    assert mix.args["c_ptr"].shape == spectrum and synthesis.args["spec_ptr"] is mix.args["c_ptr"]
    assert synthesis.args["res_ptr"] is x and y.shape == x.shape and w.shape == (C, C, K, 2)

    def blocks(launch, *names):
        return [launch.args[n] for n in names]

    block_t, block_c, block_r = blocks(analysis, "BLOCK_T", "BLOCK_C", "BLOCK_R")
    assert analysis.grid == (B * -(-2 * K // block_r) * -(-C // block_c),)
    block_t, block_c, _ = blocks(synthesis, "BLOCK_T", "BLOCK_C", "BLOCK_R")
    assert synthesis.grid == (B * -(-T // block_t) * -(-C // block_c),)
    block_m, block_n, _ = blocks(mix, "BLOCK_M", "BLOCK_N", "BLOCK_L")
    assert mix.grid == (K * -(-B // block_m) * -(-C // block_n),)

    analysis_x, mix_y, analysis_dy, mix_dx, grad_weight, synthesis = backward
    dy, dx = analysis_dy.args["in_ptr"], synthesis.args["out_ptr"]
    assert analysis_x.args["in_ptr"].shape == dy.shape == dx.shape == x.shape
    assert not analysis_x.args["GATED"] and analysis_dy.args["GATED"]
    assert analysis_dy.args["spec_ptr"] is mix_y.args["c_ptr"]  # s = G Y recomputed from the forward's Y
    # The gated analysis recomputes s with the forward synthesis's blocks (the same LeakyReLU branch).
    assert blocks(analysis_dy, "BLOCK_T", "BLOCK_C", "BLOCK_R") == blocks(synthesis, "BLOCK_T", "BLOCK_C", "BLOCK_R")
    assert mix_dx.args["CONJUGATE_B"] and mix_dx.args["a_ptr"] is analysis_dy.args["out_ptr"]
    assert grad_weight.args["CONJUGATE_A"] and grad_weight.args["SCALE_MODES"]
    assert (
        grad_weight.args["a_ptr"] is analysis_x.args["out_ptr"]
        and grad_weight.args["b_ptr"] is analysis_dy.args["out_ptr"]
    )
    assert grad_weight.args["c_ptr"].shape == (C, C, K, 2) and grad_weight.args["c_ptr"].dtype == dtype
    assert synthesis.args["spec_ptr"] is mix_dx.args["c_ptr"] and synthesis.args["res_ptr"] is dy
    for direction, big_ones in (
        ("forward", {id(x), id(y)}),
        ("backward", {id(analysis_x.args["in_ptr"]), id(dy), id(dx)}),
    ):
        for launch in launches[direction]:
            for t in launch.args.values():
                if isinstance(t, torch.Tensor) and id(t) not in big_ones:
                    assert t.shape in (spectrum, (C, C, K, 2)), (direction, launch.name, t.shape)
                    assert t.numel() <= 2 * K / T * shape.x_numel or t.shape == (C, C, K, 2)


@pytest.mark.parametrize("op", OPS)
def test_launch_plans_are_cached_per_shape(op):
    x, w = _inputs(requires_grad=True)
    dy = torch.randn_like(x)
    dsno_kernels.clear_caches()
    with introspection.recorded_launches():
        for _ in range(3):
            torch.autograd.grad(_call(op, x, w), (x, w), dy)
    assert triton_backend.forward_call.cache_info().misses == 1
    assert triton_backend.backward_call.cache_info().misses == 1
    assert triton_backend.forward_call.cache_info().hits == 2


def test_allocations_and_launches_do_not_depend_on_the_data():
    """What a CUDA graph captures: the same launches (grid, constexprs, scalars) and allocation sizes
    whatever the values, zeros and NaNs included."""
    plans = []
    for fill in (0.0, 1.0, float("nan")):
        x, w = _inputs(requires_grad=True)
        with torch.no_grad():
            x.fill_(fill)
        with introspection.recorded_launches() as launches:
            y = _call("time_conv", x, w)
            torch.autograd.grad(y, (x, w), torch.ones_like(y))
        plans.append(
            [
                (l.name, l.grid, {k: (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else v
                                  for k, v in l.args.items()})
                for l in launches
            ]
        )  # fmt: skip
    assert plans[0] == plans[1] == plans[2]


def _dsno_ops(fn) -> list[str]:
    """The dsno_kernels ops fn() dispatches (the profiler records every dispatcher op)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name.startswith("dsno_kernels::")]


def test_eager_calls_skip_the_op_layer_and_traced_calls_use_it():
    """In eager mode the kernels are launched directly, the backward too; under a dispatch mode (as
    when torch.compile or opcheck trace) the call goes through the registered torch.library op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    x, w = _inputs(requires_grad=False)
    with introspection.recorded_launches() as launches:
        assert _dsno_ops(lambda: _call("time_conv", x, w)) == []
    assert len(launches) == 1
    x, w = _inputs(requires_grad=True)
    with introspection.recorded_launches() as launches:
        assert _dsno_ops(lambda: torch.autograd.grad(_call("time_conv", x, w), (x, w), torch.ones_like(x))) == []
    assert len(launches) == 3  # forward, mask pass, dx + grad_weight
    x, w = _inputs(requires_grad=False)
    with introspection.recorded_launches() as launches, Record():
        _call("time_conv", x, w)
    assert any("dsno_kernels.triton_time_conv" in name for name in seen), seen
    assert len(launches) == 1


def test_an_eager_backward_runs_with_its_forwards_settings(monkeypatch):
    """DSNO_KERNELS_FP32 is read on every call, and a backward belongs to its forward's call: its mask
    pass must recompute the forward's LeakyReLU branch, so it keeps the forward's precision."""
    from dsno_kernels import settings

    x, w = _inputs(requires_grad=True)
    monkeypatch.setenv(settings.FP32, "ieee")
    y = _call("time_conv", x, w)
    monkeypatch.setenv(settings.FP32, "tf32")
    with introspection.recorded_launches() as launches:
        torch.autograd.grad(y, (x, w), torch.ones_like(y))
    assert [l.args["INPUT_PRECISION"] for l in launches] == ["ieee", "ieee"]
    with introspection.recorded_launches() as launches:
        _call("time_conv", x.detach(), w.detach())
    assert launches[0].args["INPUT_PRECISION"] == "tf32"  # the next call reads the variable again


def _call_path_caches() -> dict:
    """Every cache of dsno_kernels' modules: its lru_cache functions and the memo dicts, by name."""
    import functools
    import sys

    from dsno_kernels import _cache, api, settings

    caches = {"api._RESOLVED": lambda: len(api._RESOLVED), "settings._VALIDATED": lambda: len(settings._VALIDATED)}
    for name, module in list(sys.modules.items()):
        if not name.startswith("dsno_kernels"):
            continue
        for attr, value in vars(module).items():
            if isinstance(value, functools._lru_cache_wrapper) and value.__module__ == name:
                caches[f"{name}.{attr}"] = lambda value=value: value.cache_info().currsize
    # not on the call path: the dense_gemm baseline's fp64 bases (benchmarks only)
    caches.pop("dsno_kernels.backends.reference._folded_bases", None)
    assert len(_cache._CLEARS) >= len(caches)  # each registered by _cache (settings' memo included)
    return caches


@pytest.mark.parametrize("T", [4, 40])  # the fused kernels and the DFT-as-GEMM path
def test_clear_caches_empties_every_cache_on_the_call_path(T):
    x, w = _inputs(requires_grad=True, T=T, K=3)
    with introspection.recorded_launches():
        for op in OPS:
            torch.autograd.grad(_call(op, x, w), (x, w), torch.randn_like(x))
    caches = _call_path_caches()
    filled = {name for name, size in caches.items() if size() > 0}
    assert {"api._RESOLVED", "settings._VALIDATED"} <= filled
    assert {
        "dsno_kernels.backends.triton.calls.forward_call",
        "dsno_kernels.backends.triton.calls.backward_call",
    } <= filled
    dsno_kernels.clear_caches()
    assert {name: size() for name, size in caches.items() if size() > 0} == {}
