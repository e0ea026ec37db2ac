"""Host overhead per public-API call: the Python + dispatch work of one forward, and of one forward +
backward (torch.autograd.grad for x and the weight), as thread CPU time per call.

    pytest benchmarks/test_host_overhead.py --benchmark-only -s     timed (report it beside GPU numbers)
    pytest benchmarks/ --benchmark-disable                          CI: each case measured once, quickly

One measurement, benchmarks.kernel_report.host_time, serves this suite and the report's host table
(`python -m benchmarks.kernel_report`): the median, fastest and slowest of HOST_ROUNDS rounds of
HOST_CALLS calls, recorded in extra_info (host_us, host_us_min, host_us_max, with the load average
and the launches per call); pytest-benchmark's own statistics time that whole measurement.

triton: its GPU path on CPU tensors with Triton's launcher stubbed, planned for an H100, so what is
timed is everything but the kernel launch itself; docs/design.md's budget is 20 us forward and 60 us
forward+backward. cpu: the C++ backend on tiny tensors (its kernels run, on almost nothing), for
comparison. floor: PyTorch's own cost for such a call, an autograd.Function that only allocates
(kernel_report._Floor). Runs on any machine; times are printed (-s) and never asserted.
"""

from __future__ import annotations

import pytest

import dsno_kernels
from benchmarks import kernel_report
from dsno_kernels.backends import triton as triton_backend

CASES = [
    *((backend, op, direction) for backend in ("triton", "cpu") for op in kernel_report.HOST_OPS
      for direction in kernel_report.HOST_DIRECTIONS),
    *(("floor", "autograd.Function", direction) for direction in kernel_report.HOST_DIRECTIONS),
]  # fmt: skip


@pytest.mark.benchmark(group="host-overhead")
@pytest.mark.parametrize("backend, op, direction", CASES, ids=["-".join(case) for case in CASES])
def test_host_overhead(benchmark, backend, op, direction, single_thread):
    if backend == "triton" and triton_backend.TRITON_IMPORT_ERROR is not None:
        pytest.skip("Triton is not installed")
    if backend == "cpu" and "cpu" not in dsno_kernels.available_backends("cpu"):
        pytest.skip("the cpu backend is not available")
    disabled = benchmark.disabled  # CI's smoke run: a short measurement
    calls, rounds = (10, 3) if disabled else (kernel_report.HOST_CALLS, kernel_report.HOST_ROUNDS)
    result = benchmark.pedantic(kernel_report.host_time, args=(backend, op, direction, calls, rounds), rounds=1)
    benchmark.extra_info.update(
        host_us=result.median_us, host_us_min=result.min_us, host_us_max=result.max_us,
        rounds=result.rounds, calls=result.calls, launches_per_call=result.launches, load=result.load,
        shape=list(kernel_report.HOST_SHAPES[backend]),
    )  # fmt: skip
    if backend == "triton":
        benchmark.extra_info["budget_us"] = kernel_report.HOST_BUDGET_US[direction]
    print(
        f"\n{backend} {op} {direction}: {result.median_us:.1f} us per call "
        f"({result.min_us:.1f}-{result.max_us:.1f}, load {result.load:.2f})"
    )
