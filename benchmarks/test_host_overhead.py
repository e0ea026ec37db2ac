"""Host overhead per call: the Python + dispatch work of one time_conv forward, and of one forward +
backward (torch.autograd.grad), public API included, timed as thread CPU time.

    pytest benchmarks/test_host_overhead.py --benchmark-only      timed (report it beside GPU numbers)
    pytest benchmarks/ --benchmark-disable                        smoke: each case once (CI)

triton: the GPU path on CPU tensors with Triton's launcher stubbed (benchmarks.kernel_report's
recorded_launches), launches planned for an H100, so what is timed is everything but the kernel launch
itself; DESIGN.md's budget is 20 us forward and 60 us forward+backward. cpu: the C++ backend's op call
on tiny tensors (its kernels run, on almost nothing), for comparison. Runs on any machine.
"""

from __future__ import annotations

import time

import pytest
import torch

import dsno_kernels
from benchmarks import kernel_report

# Tiny tensors: shapes do not change the host path, and the cpu backend's kernels stay negligible.
SHAPES = {"triton": (2, 4, 32, 8, 8), "cpu": (1, 4, 4, 2, 2)}
DIRECTIONS = ("fwd", "fwd+bwd")


def _triton_ready() -> bool:
    from dsno_kernels.backends import triton as triton_backend

    return triton_backend._TRITON_IMPORT_ERROR is None


def _call(backend: str, direction: str):
    shape = SHAPES[backend]
    x = torch.randn(shape, requires_grad=direction == "fwd+bwd")
    w = (torch.randn(shape[2], shape[2], 2, 2) * 0.1).requires_grad_(direction == "fwd+bwd")
    dy = torch.randn(shape)

    def forward():
        return dsno_kernels.time_conv(x, w, backend=backend)

    def forward_backward():
        return torch.autograd.grad(dsno_kernels.time_conv(x, w, backend=backend), (x, w), dy)

    return forward if direction == "fwd" else forward_backward


@pytest.mark.benchmark(group="host-overhead", timer=time.thread_time)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_host_overhead(benchmark, backend, direction, single_thread):
    if backend == "triton" and not _triton_ready():
        pytest.skip("Triton is not installed")
    if backend not in dsno_kernels.available_backends("cpu") and backend != "triton":
        pytest.skip(f"the {backend} backend is not available")
    fn = _call(backend, direction)
    if backend == "triton":
        with kernel_report.triton_on_cpu(), kernel_report.gpu_limits(90), kernel_report.recorded_launches() as launches:
            fn()  # plans the launches
            launches.clear()
            fn()
            benchmark.extra_info["launches_per_call"] = len(launches)
            benchmark(fn)
        benchmark.extra_info["budget_us"] = 20 if direction == "fwd" else 60
    else:
        benchmark(fn)
    benchmark.extra_info["shape"] = list(SHAPES[backend])
