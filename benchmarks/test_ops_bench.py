"""Op-level benchmarks: spectral_time_conv and time_conv, forward and forward+backward, fp32 and bf16,
on every provider of benchmarks/baselines.py that runs on the benchmark device, plus the device's copy
bandwidth. Test ids read <shape>-<dtype>-<op>-<direction>-<provider>.

Cases left out on purpose: torch_fft at fp32 (there it is dsno_fft: the same kernels), neuralop in
bf16 (complex weights: fp32 only; with image dims it pays the layout change, see baselines.py), and
backends of the other device. Skipped with the reason: a provider that is not installed (neuralop) or
cannot run here, and dense_gemm where its folded matrix would exceed baselines.DENSE_GEMM_MAX_BYTES.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import dsno_kernels
from benchmarks import baselines, harness
from benchmarks.conftest import bench_device_name, provider_selected, selected_shapes

PROVIDERS = (*baselines.BASELINE_PROVIDERS, *baselines.KERNEL_PROVIDERS, "neuralop")


@dataclasses.dataclass(frozen=True)
class OpCase:
    shape: harness.OpShape
    dtype: str
    op: str
    direction: str
    provider: str

    @property
    def id(self) -> str:
        return f"{self.shape.name}-{self.dtype}-{self.op}-{self.direction}-{self.provider}"


def op_cases(config) -> list[OpCase]:
    device = bench_device_name(config)
    cases = []
    for shape, dtype, op, direction, provider in itertools.product(
        selected_shapes(config), harness.DTYPES, baselines.OPS, harness.DIRECTIONS, PROVIDERS
    ):
        if not provider_selected(config, provider):
            continue
        if baselines.KERNEL_DEVICE.get(provider, device) != device:
            continue
        if provider == "neuralop" and dtype != "fp32":
            continue
        if provider == "torch_fft" and dtype == "fp32":
            continue
        cases.append(OpCase(shape, dtype, op, direction, provider))
    return cases


def pytest_generate_tests(metafunc):
    if "op_case" in metafunc.fixturenames:
        cases = op_cases(metafunc.config)
        metafunc.parametrize("op_case", cases, ids=[case.id for case in cases])


def test_op(benchmark, op_case, bench_device, bench_seconds, copy_gbps):
    case = op_case
    benchmark.group = f"{case.op} {case.direction} {case.dtype} {case.shape.name}"
    reason = harness.op_case_skip_reason(case.provider, case.shape, case.dtype, bench_device)
    if reason is not None:
        pytest.skip(reason)
    call = harness.make_timed_call(case.provider, case.op, case.shape, case.dtype, case.direction, bench_device)
    kernel_seconds = harness.run_benchmark(benchmark, call, bench_device, seconds=bench_seconds)
    harness.record(
        benchmark,
        provider=case.provider,
        op=case.op,
        direction=case.direction,
        dtype=case.dtype,
        shape=case.shape.name,
        nbytes=harness.floor_bytes(case.shape, case.direction, case.dtype),
        copy_gbps=copy_gbps,
        device=bench_device,
        kernel_seconds=kernel_seconds,
    )


def test_copy(benchmark, bench_device, bench_seconds, copy_gbps):
    """dst.copy_(src) of a buffer well beyond L2: the bandwidth the kernels are held against."""
    nbytes = harness.copy_buffer_bytes(bench_device)
    src = torch.randn(nbytes // 4, device=bench_device)
    dst = torch.empty_like(src)
    benchmark.group = "copy"
    kernel_seconds = harness.run_benchmark(benchmark, lambda: dst.copy_(src), bench_device, seconds=bench_seconds)
    harness.record(
        benchmark,
        provider="torch",
        op="copy",
        direction="fwd",
        dtype="fp32",
        shape=f"copy-{nbytes // 2**20}MiB",
        nbytes=2 * nbytes,
        copy_gbps=copy_gbps,
        device=bench_device,
        kernel_seconds=kernel_seconds,
    )


# ------------------------------------------------------------------------------------------------
# The baselines compute the layer (not benchmarks: they run in smoke mode, and skip under --benchmark-only)


@pytest.mark.parametrize("provider", (*baselines.BASELINE_PROVIDERS, "neuralop"))
@pytest.mark.parametrize("op", baselines.OPS)
@pytest.mark.parametrize("spatial", [(), (3, 2)], ids=["1d", "2d"])
def test_baseline_matches_reference(provider, op, spatial, bench_device):
    """Forward and both gradients of each baseline in fp32 against the fp64 reference (T = 6 with
    K = 4 includes the Nyquist mode); neuralop with its layout change (its own layout without trailing
    dims, [B * prod(S), C, T] and back with them)."""
    reason = baselines.provider_unavailable_reason(provider, bench_device)
    if reason is not None:
        pytest.skip(reason)
    B, T, K, C = 2, 6, 4, 5
    x = torch.randn(B, T, C, *spatial, device=bench_device)
    weight = torch.randn(C, C, K, 2, device=bench_device) / C
    dy = torch.randn(B, T, C, *spatial, device=bench_device, dtype=torch.float64)
    reference = dsno_kernels.backends.reference.spectral_time_conv_reference
    if op == "time_conv":
        reference = dsno_kernels.backends.reference.time_conv_reference
    x64 = x.double().requires_grad_()
    y64 = reference(x64, weight.double())
    (dx64,) = torch.autograd.grad(y64, [x64], dy)

    layer = baselines.make_layer(provider, op, weight, T, torch.float32, requires_grad=True, spatial=bool(spatial))
    x32 = x.clone().requires_grad_()
    x_in = layer.to_layout(x32)
    y = layer.forward(x_in)
    if x_in is not x32:  # neuralop's own layout [B, C, T]: back to [B, T, C] to compare
        y = y.transpose(1, 2)
    dx, dparam = torch.autograd.grad(y, [x32, *layer.params], dy.to(y.dtype))
    if dparam.is_complex():  # neuralop's complex weight: d/dRe + i d/dIm is the real weight's gradient
        dparam = torch.view_as_real(dparam)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx.double(), dx64, rtol=1e-5, atol=1e-5)
    w64 = weight.double().requires_grad_()
    (dw64,) = torch.autograd.grad(reference(x.double(), w64), [w64], dy)
    if provider == "dense_gemm":  # its parameter is the folded matrix A: carry dA back to the weight
        w_fold = weight.double().requires_grad_()
        (dparam,) = torch.autograd.grad(
            dsno_kernels.backends.reference.dense_block_circulant(w_fold, T), [w_fold], dparam.double()
        )
    torch.testing.assert_close(dparam.double(), dw64, rtol=1e-5, atol=1e-5)
