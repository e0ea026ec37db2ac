"""Shapes, byte floors, clocks and the timing loops shared by the benchmark suites.

Two times per case, reported side by side:
  host-inclusive  wall clock per call, Python and dispatch included: pytest-benchmark's rounds with
                  the clock `clock_for(device)` (time.perf_counter, on a GPU after a synchronize, so
                  a round ends when its last kernel does). Calls run back to back; when the host is
                  slower than the kernels, this is the host's time per call.
  kernel-only     device time per call with the host off the critical path (`kernel_seconds`): a
                  sleep kernel holds the stream while the host queues the calls, and CUDA events
                  around the queued calls time the kernels back to back. GPU only: on the CPU the
                  kernel runs in the calling thread, so the two coincide (None is recorded).
Every call takes the next of several input sets whose total size is at least twice the L2 cache, so no
call finds its input in L2 from an earlier one. On the CPU sets rotate over 32 MiB (larger than the
per-core L2; the L3 is too large to defeat, so CPU numbers may be partly L3-resident).

Bytes: the byte floor of docs/design.md, in the benchmark's dtype (the dtype every fused backend works in), whatever
a baseline does internally. Forward: read x and the weight, write y: 2|x| + |w|. Forward+backward with
a single-pass backward (read x and dy, write dx and grad_weight): 5|x| + 2|w|, the weights a rounding error
at DSNO's shapes. A time's fraction of the floor is floor bytes / time / copy bandwidth.

`python -m benchmarks.harness` compares two providers call by call (see `main`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import platform
import sys
import time
from collections.abc import Callable

import torch

import dsno_kernels
from benchmarks import baselines
from dsno_kernels.backends.reference import mode_is_real
from dsno_kernels.shapes import GPU_SHAPES, OpShape  # DSNO's shapes; the GPU set

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DIRECTIONS = ("fwd", "fwd+bwd")
CPU_ROTATION_BYTES = 32 * 2**20
GPU_MIN_ROUND_SECONDS = 2e-3  # launch/sync gaps of a round stay under ~1% of it
CPU_MIN_ROUND_SECONDS = 2e-4


def _shapes(*shapes: OpShape) -> dict[str, OpShape]:
    return {s.name: s for s in shapes}


# Sized for a 2-core machine: the CPU targets' shape (docs/design.md), a wide-image and a channel-heavy one
# (the CIFAR-10 32x32 and 8x8 levels scaled down), and FNO-1D layers from T = 64 to 1024, K = 8 to 64,
# C = 32 to 128, powers of two and not ("fno1d-t256": the FNO-1D layer B16 C64 T256 K16).
CPU_SHAPES = _shapes(
    OpShape("cpu-c128-16", 8, 4, 2, 128, (16, 16)),
    OpShape("cpu-c64-32", 4, 4, 2, 64, (32, 32)),
    OpShape("cpu-c256-8", 8, 4, 2, 256, (8, 8)),
    OpShape("cpu-fno1d", 16, 64, 8, 32),
    OpShape("cpu-fno1d-t256", 16, 256, 16, 64),
    OpShape("cpu-fno1d-t200", 16, 200, 24, 48),
    OpShape("cpu-fno1d-t1000", 8, 1000, 40, 96),
    OpShape("cpu-fno1d-t1024", 4, 1024, 64, 128),
)
# For CI (`pytest benchmarks/ --benchmark-disable`): every code path, in milliseconds.
SMOKE_SHAPES = _shapes(
    OpShape("smoke-2d", 2, 4, 2, 8, (4, 4)),
    OpShape("smoke-1d", 3, 8, 3, 6),
)
SHAPE_SETS = {"gpu": GPU_SHAPES, "cpu": CPU_SHAPES, "smoke": SMOKE_SHAPES}


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """A DSNO preset at a batch size; `name` is the benchmark's shape ("<preset>-b<batch>")."""

    preset: str
    batch: int
    dtype: str  # "bf16": under bf16 autocast; "fp32": no autocast

    @property
    def name(self) -> str:
        return f"{self.preset}-b{self.batch}"


MODEL_CASES = {
    "gpu": ModelCase("cifar10", 32, "bf16"),
    "cpu": ModelCase("tiny", 8, "fp32"),
    "smoke": ModelCase("tiny", 2, "fp32"),
}


def floor_bytes(shape: OpShape, direction: str, dtype: str) -> int:
    """docs/design.md's floor: fwd 2|x| + |w| (x, weight, y); fwd+bwd 5|x| + 2|w| (and x, dy, dx, grad_weight:
    reachable only by a single-pass backward)."""
    element = torch.empty((), dtype=DTYPES[dtype]).element_size()
    forward = 2 * shape.x_numel + shape.weight_numel
    backward = 3 * shape.x_numel + shape.weight_numel
    if direction == "fwd":
        return element * forward
    if direction == "fwd+bwd":
        return element * (forward + backward)
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


# ------------------------------------------------------------------------------------------------
# Environment


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def l2_cache_bytes() -> int:
    return getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 50 * 2**20)


def rotation_bytes(device: str) -> int:
    """Total size the rotated input sets must reach."""
    return 2 * l2_cache_bytes() if device == "cuda" else CPU_ROTATION_BYTES


def num_input_sets(set_bytes: int, device: str, *, at_most: int = 64) -> int:
    return max(2, min(at_most, math.ceil(rotation_bytes(device) / max(set_bytes, 1))))


# ------------------------------------------------------------------------------------------------
# Clocks and the timing loop


def _synchronized_perf_counter() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def clock_for(device: str) -> Callable[[], float]:
    """The host-inclusive clock: wall time, and on a GPU only once the queued work has finished."""
    return _synchronized_perf_counter if device == "cuda" else time.perf_counter


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_benchmark(
    benchmark,
    fn: Callable[[], object],
    device: str,
    *,
    seconds: float,
    warmup_calls: int | None = None,
    min_rounds: int = 5,
    max_rounds: int = 1000,
    max_iterations: int = 1000,
    kernel_only: bool = True,
) -> float | None:
    """Warm `fn` up, size rounds and iterations to spend about `seconds` timed, and run it under the
    pytest-benchmark fixture (whose timer must be `clock_for(device)`): the host-inclusive time.
    Returns the kernel-only seconds per call on a GPU (`kernel_seconds`; None on the CPU, with
    kernel_only=False, or when it could not be measured). With --benchmark-disable it calls fn once."""
    if benchmark.disabled:
        benchmark.pedantic(fn)
        synchronize(device)
        return None
    clock = clock_for(device)
    if warmup_calls is None:  # a GPU settles (clocks, caches, autotuning) over a few calls; a CPU after one
        warmup_calls = 3 if device == "cuda" else 1
    fn()  # first call: compilation, autotuning, allocator growth
    start = clock()
    for _ in range(warmup_calls):
        fn()
    per_call = max((clock() - start) / warmup_calls, 1e-7)
    min_round = GPU_MIN_ROUND_SECONDS if device == "cuda" else CPU_MIN_ROUND_SECONDS
    iterations = max(1, min(max_iterations, math.ceil(min_round / per_call)))
    rounds = max(min_rounds, min(max_rounds, round(seconds / (per_call * iterations))))
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
    if device != "cuda" or not kernel_only:
        return None
    return kernel_seconds(fn, calls=min(iterations, MAX_QUEUED_CALLS))


# A call launches up to ~30 kernels (DSNO's fp32 torch.fft layer, forward+backward); CUDA's launch
# queue holds about a thousand, and a full queue would block the host while the sleep runs out.
MAX_QUEUED_CALLS = 10
SLEEP_CYCLES_PER_SECOND = 2e9  # torch.cuda._sleep spins this many clock cycles a second, roughly


def kernel_seconds(fn: Callable[[], object], *, calls: int, repeats: int = 7, attempts: int = 6) -> float | None:
    """Median device seconds per call of `fn` with the host off the critical path.

    Each repeat queues a sleep kernel, an event, `calls` calls and an event; while the sleep holds the
    stream the host queues everything behind it, so the events time the calls' kernels back to back.
    If the sleep ran out before the host finished queueing (the first event had already completed),
    the host could have left gaps: the sleep is doubled and the repeat redone. None when `attempts`
    doublings do not suffice (the launch queue filled up, or the host is too slow)."""
    calls = max(1, calls)
    torch.cuda.synchronize()
    start_host = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - start_host
    torch.cuda.synchronize()
    cycles = int(2 * host * SLEEP_CYCLES_PER_SECOND) + 100_000
    samples = []
    while len(samples) < repeats:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(cycles)
        begin.record()
        for _ in range(calls):
            fn()
        end.record()
        host_caught_up = begin.query()  # the sleep was over before the last call was queued
        end.synchronize()
        if host_caught_up:
            attempts -= 1
            if attempts == 0:
                return None
            cycles *= 2
            continue
        samples.append(begin.elapsed_time(end) / 1e3 / calls)
    samples.sort()
    return samples[len(samples) // 2]


def median_seconds(timed: Callable[[], object], device: str, *, repeats: int, calls_per_repeat: int = 1) -> float:
    """Median over `repeats` windows of `calls_per_repeat` calls each, per call, host-inclusive (no pytest)."""
    clock = clock_for(device)
    samples = []
    for _ in range(repeats):
        start = clock()
        for _ in range(calls_per_repeat):
            timed()
        synchronize(device)
        samples.append((clock() - start) / calls_per_repeat)
    samples.sort()
    return samples[len(samples) // 2]


def copy_buffer_bytes(device: str) -> int:
    return 512 * 2**20 if device == "cuda" else 64 * 2**20


def measure_copy_gbps(device: str) -> float:
    """The device's copy bandwidth: bytes read + written by dst.copy_(src) over its median time
    (kernel-only on a GPU: the bandwidth the kernels' kernel-only times are held against)."""
    n = copy_buffer_bytes(device) // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    seconds = kernel_seconds(lambda: dst.copy_(src), calls=5) if device == "cuda" else None
    if seconds is None:
        seconds = median_seconds(
            lambda: dst.copy_(src), device, repeats=15, calls_per_repeat=5 if device == "cuda" else 1
        )
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def extra_info(
    *,
    provider: str,
    op: str,
    direction: str,
    dtype: str,
    shape: str,
    nbytes: int | None,
    median: float | None,
    copy_gbps: float,
    device: str,
    kernel_seconds: float | None = None,
) -> dict:
    """The keys every result carries. gbps: floor bytes over the host-inclusive median; kernel_seconds
    and kernel_gbps: the kernel-only time and its GB/s (None on the CPU, where the two coincide).
    Bytes and both GB/s are None where no floor is defined (model level)."""
    gbps = nbytes / median / 1e9 if nbytes is not None and median else None
    kernel_gbps = nbytes / kernel_seconds / 1e9 if nbytes is not None and kernel_seconds else None
    return {
        "provider": provider,
        "op": op,
        "direction": direction,
        "dtype": dtype,
        "shape": shape,
        "bytes": nbytes,
        "gbps": gbps,
        "kernel_seconds": kernel_seconds,
        "kernel_gbps": kernel_gbps,
        "copy_gbps": copy_gbps,
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version(),
    }


def record(benchmark, **fields) -> None:
    """Fill benchmark.extra_info from the fields of `extra_info` and the measured median."""
    median = benchmark.stats.stats.median if not benchmark.disabled else None
    benchmark.extra_info.update(extra_info(median=median, **fields))


# ------------------------------------------------------------------------------------------------
# One provider's timed call, and the interleaved comparison of two


def make_timed_call(
    provider: str, op: str, shape: OpShape, dtype: str, direction: str, device: str
) -> Callable[[], None]:
    """The callable a benchmark times: one forward (no autograd graph) or one forward + backward
    (gradients of x and of the provider's weight, no accumulation) of `provider`'s layer, each call on
    the next of `num_input_sets` input sets."""
    torch_dtype = DTYPES[dtype]
    backward = direction == "fwd+bwd"
    scale = 1.0 / (shape.C * shape.C)  # DSNO's initialisation of the Fourier weights
    weight = scale * torch.rand(shape.C, shape.C, shape.K, 2, device=device)
    layer = baselines.make_layer(
        provider, op, weight, shape.T, torch_dtype, requires_grad=backward, spatial=bool(shape.spatial)
    )
    first_x = layer.to_layout(torch.randn(shape.x_shape, device=device, dtype=torch_dtype))
    with torch.no_grad():
        out = layer.forward(first_x)
    set_bytes = first_x.numel() * first_x.element_size() + (out.numel() * out.element_size() if backward else 0)
    count = num_input_sets(set_bytes, device)
    xs = [first_x] + [
        layer.to_layout(torch.randn(shape.x_shape, device=device, dtype=torch_dtype)) for _ in range(count - 1)
    ]
    order = itertools.cycle(range(count))
    if not backward:

        def forward():
            with torch.no_grad():
                layer.forward(xs[next(order)])

        return forward

    xs = [x.requires_grad_() for x in xs]
    dys = [torch.randn_like(out) for _ in range(count)]

    def forward_backward():
        i = next(order)
        y = layer.forward(xs[i])
        torch.autograd.grad(y, [xs[i], *layer.params], dys[i])

    return forward_backward


def op_case_skip_reason(provider: str, shape: OpShape, dtype: str, device: str) -> str | None:
    """Why `provider` has no op case at `shape` and `dtype` on `device` (None when it has one): torch_fft
    at fp32 is dsno_fft, neuralop is fp32 only, a provider not installed or not runnable here, dense_gemm
    where its matrix is too large, a backend that refuses the shape."""
    if provider == "torch_fft" and dtype == "fp32":
        return "at fp32 torch_fft is dsno_fft (the same kernels)"
    if provider == "neuralop" and dtype != "fp32":
        return "neuralop is fp32 only (complex weights)"
    reason = baselines.provider_unavailable_reason(provider, device)
    if reason is None and provider == "dense_gemm":
        reason = baselines.dense_gemm_too_large_reason(shape.T, shape.C, shape.C, DTYPES[dtype])
    if reason is None and provider in baselines.KERNEL_PROVIDERS:
        probe = torch.empty(shape.x_shape, device=device, dtype=DTYPES[dtype])
        try:
            dsno_kernels.resolve_backend(provider, probe)
        except RuntimeError as error:  # e.g. T above what the backend handles
            reason = str(error)
    return reason


def interleaved_medians(calls: dict[str, Callable[[], object]], device: str, *, repeats: int, warmup: int = 3) -> dict:
    """Host-inclusive median seconds per call of each callable, timed call by call in alternating
    order, so that each starts with the other's data in cache and slow phases of a shared machine
    hit both sides alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    synchronize(device)
    clock = clock_for(device)
    samples = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = clock()
            calls[name]()
            samples[name].append(clock() - start)
    return {name: sorted(s)[len(s) // 2] for name, s in samples.items()}


def layer_gflop(shape: OpShape) -> float:
    """Multiply-adds of the channel mixing (the real work) forward: per pixel, C_in * C_out for each
    real mode and 4 * C_in * C_out for each complex one."""
    gemms = sum(1 if mode_is_real(k, shape.T) else 4 for k in range(shape.K))
    pixels = shape.x_numel // (shape.T * shape.C)
    return 2 * gemms * shape.C * shape.C * pixels / 1e9


def main(argv=None) -> int:
    """time_conv of two providers, interleaved call by call (docs/design.md's CPU targets: DSNO's layer
    against the cpu backend at B=8, T=4, K=2, C=128, 16x16, fp32; >= 5x forward, >= 3x forward+backward)."""
    shapes = {**CPU_SHAPES, **GPU_SHAPES, **SMOKE_SHAPES}
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.harness",
        description="time_conv of a baseline against a provider, interleaved call by call, forward and "
        "forward+backward: medians and the speed-up.",
    )
    parser.add_argument("--shape", default="cpu-c128-16", choices=sorted(shapes))
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--baseline", default="dsno_fft")
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per provider and direction")
    parser.add_argument("--targets", default="5,3", help="speed-ups wanted forward,forward+backward (docs/design.md's)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    try:
        targets = dict(zip(DIRECTIONS, (float(t) for t in args.targets.split(",")), strict=True))
    except ValueError:
        parser.error(f"--targets: two numbers, forward,forward+backward; got {args.targets!r}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    for provider in (args.baseline, args.provider):
        reason = baselines.provider_unavailable_reason(provider, args.device)
        if reason is not None:
            print(f"--baseline/--provider {provider}: {reason}", file=sys.stderr)
            return 2
    shape = shapes[args.shape]
    torch.manual_seed(0)
    print(
        f"{device_name(args.device)}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} "
        "(other work on these cores slows both sides unevenly)"
    )
    print(
        f"time_conv {args.dtype} x {list(shape.x_shape)}, K={shape.K}; channel mixing {layer_gflop(shape):.3f} "
        f"GFLOP forward; host-inclusive medians of {args.repeats} interleaved calls\n"
    )
    pair = (args.baseline, args.provider)
    print(f"{'direction':<10}{pair[0]:>12}{pair[1]:>12}{'speed-up':>10}{'target':>8}{pair[1] + ' GFLOP/s':>16}")
    missed = []
    for direction, target in targets.items():
        calls = {p: make_timed_call(p, "time_conv", shape, args.dtype, direction, args.device) for p in pair}
        medians = interleaved_medians(calls, args.device, repeats=args.repeats)
        ratio = medians[pair[0]] / medians[pair[1]]
        flops = layer_gflop(shape) * (3 if direction == "fwd+bwd" else 1)  # backward: dx and grad_weight GEMMs
        verdict = "met" if ratio >= target else "MISSED"
        if ratio < target:
            missed.append(direction)
        print(
            f"{direction:<10}{medians[pair[0]] * 1e3:>10.2f}ms{medians[pair[1]] * 1e3:>10.2f}ms"
            f"{ratio:>9.2f}x{target:>7g}x{flops / medians[pair[1]]:>16.1f}  {verdict}"
        )
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
