"""Shapes, byte floors, clocks and the timing loop shared by the benchmark suites and scripts.

Timing. pytest-benchmark reads a host clock around each round. On a GPU the suites give it
`cuda_event_clock`, which records a CUDA event on the current stream, waits for it, and returns the
device time elapsed since the previous call: a round's duration is then the GPU time between the
event before its first launch and the event after its last, as with CUDA-event timing by hand. Rounds
run several calls back to back (`iterations`) so that the launch of the first call and the wait on the
last are a small part of the round. Every call takes the next of several input sets whose total size
is at least twice the L2 cache, so no call finds its input in L2 from an earlier one.
On the CPU the clock is time.perf_counter and sets rotate over 32 MiB (larger than the per-core L2;
this machine's L3 is too large to defeat, so CPU numbers may be partly L3-resident).

Bytes. The floor of DESIGN.md: forward reads x and the weight and writes y; backward reads x and dy
and writes dx and dweight; fwd+bwd is the sum. Elements count in the benchmark's dtype (the dtype
every fused backend works in), whatever a baseline does internally.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from typing import Callable, Optional

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DIRECTIONS = ("fwd", "fwd+bwd")
CPU_ROTATION_BYTES = 32 * 2**20
GPU_MIN_ROUND_SECONDS = 2e-3  # launch/sync gaps of a round stay under ~1% of it
CPU_MIN_ROUND_SECONDS = 2e-4


@dataclasses.dataclass(frozen=True)
class OpShape:
    """x [B, T, C, *spatial], weight [C, C, K, 2]."""

    name: str
    B: int
    T: int
    K: int
    C: int
    spatial: tuple[int, ...] = ()

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.B, self.T, self.C, *self.spatial)

    @property
    def x_numel(self) -> int:
        return math.prod(self.x_shape)

    @property
    def weight_numel(self) -> int:
        return self.C * self.C * self.K * 2


def _shapes(*shapes: OpShape) -> dict[str, OpShape]:
    return {s.name: s for s in shapes}


# DSNO's configurations (T = 4 time points, K = 2 modes) and an FNO-1D layer.
GPU_SHAPES = _shapes(
    OpShape("cifar10-32", 32, 4, 2, 256, (32, 32)),
    OpShape("cifar10-16", 32, 4, 2, 256, (16, 16)),
    OpShape("cifar10-8", 32, 4, 2, 256, (8, 8)),
    OpShape("imagenet64-64", 8, 4, 2, 192, (64, 64)),
    OpShape("imagenet64-32", 8, 4, 2, 384, (32, 32)),
    OpShape("imagenet64-16", 8, 4, 2, 576, (16, 16)),
    OpShape("imagenet64-8", 8, 4, 2, 768, (8, 8)),
    OpShape("fno1d", 64, 256, 32, 64),
)
# Sized for a 2-core machine: issue 2's measurement shape, a wide-image and a channel-heavy one
# (the CIFAR-10 32x32 and 8x8 levels scaled down), and a small FNO-1D layer.
CPU_SHAPES = _shapes(
    OpShape("cpu-c128-16", 8, 4, 2, 128, (16, 16)),
    OpShape("cpu-c64-32", 4, 4, 2, 64, (32, 32)),
    OpShape("cpu-c256-8", 8, 4, 2, 256, (8, 8)),
    OpShape("cpu-fno1d", 16, 64, 8, 32),
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
    """DESIGN.md's floor: fwd = x + weight + y; bwd = x + dy + dx + dweight; fwd+bwd = both."""
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

_last_event: Optional[torch.cuda.Event] = None
_event_seconds = 0.0


def cuda_event_clock() -> float:
    """Seconds of device time on the current stream, accumulated event to event (each interval is
    short, so cudaEventElapsedTime's float milliseconds stay exact to its ~0.5 us resolution)."""
    global _last_event, _event_seconds
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    event.synchronize()
    if _last_event is not None:
        _event_seconds += _last_event.elapsed_time(event) / 1e3
    _last_event = event
    return _event_seconds


def clock_for(device: str) -> Callable[[], float]:
    return cuda_event_clock if device == "cuda" else time.perf_counter


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_benchmark(
    benchmark,
    fn: Callable[[], object],
    device: str,
    *,
    seconds: float,
    warmup_calls: Optional[int] = None,
    min_rounds: int = 5,
    max_rounds: int = 1000,
    max_iterations: int = 1000,
) -> None:
    """Warm `fn` up, size rounds and iterations to spend about `seconds` timed, and run it under the
    pytest-benchmark fixture (whose timer must be `clock_for(device)`). With --benchmark-disable
    it calls fn once."""
    if benchmark.disabled:
        benchmark.pedantic(fn)
        synchronize(device)
        return
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


def median_seconds(timed: Callable[[], object], device: str, *, repeats: int, calls_per_repeat: int = 1) -> float:
    """Median over `repeats` windows of `calls_per_repeat` calls each, per call (no pytest)."""
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
    """The device's copy bandwidth: bytes read + written by dst.copy_(src) over its median time."""
    n = copy_buffer_bytes(device) // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, repeats=15, calls_per_repeat=5 if device == "cuda" else 1)
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def extra_info(
    *,
    provider: str,
    op: str,
    direction: str,
    dtype: str,
    shape: str,
    nbytes: Optional[int],
    median: Optional[float],
    copy_gbps: float,
    device: str,
) -> dict:
    """The keys every result carries (bytes and gbps are None where no floor is defined: model level)."""
    gbps = nbytes / median / 1e9 if nbytes is not None and median else None
    return {
        "provider": provider,
        "op": op,
        "direction": direction,
        "dtype": dtype,
        "shape": shape,
        "bytes": nbytes,
        "gbps": gbps,
        "copy_gbps": copy_gbps,
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version(),
    }


def record(benchmark, **fields) -> None:
    """Fill benchmark.extra_info from the fields of `extra_info` and the measured median."""
    median = benchmark.stats.stats.median if not benchmark.disabled else None
    benchmark.extra_info.update(extra_info(median=median, **fields))
