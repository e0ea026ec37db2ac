"""Static report of the Triton kernels, compiled for sm_90 and sm_80 without a GPU, and the tools behind it.

    python -m benchmarks.kernel_report [--archs 90 80] [--dtypes bf16 fp32] [--output FILE]

For every GPU benchmark shape (harness.GPU_SHAPES the triton backend handles) and dtype, the report
records the launches the triton backend makes for one forward and one backward (with the launcher
stubbed, on meta tensors, planned by the backend's own functions for an H100's or an A100's limits:
`gpu_limits` replaces its _device_limits, so each arch gets the configurations the launcher would
pick on such a device), then the forward's and mask pass's persistent autotuning candidates, compiles
each distinct kernel variant once (triton.compile for GPUTarget("cuda", arch, 32)) and reads the
cubin with cuobjdump:

    registers per thread, shared memory, spill (stack / local) bytes, CTAs per SM (from registers,
    shared memory and threads), SASS instructions and the tensor-core share (HMMA / HGMMA over all),
    64-bit integer divisions (div / rem .s64 / .u64 in the PTX, which ptxas turns into a call), and
    BAR.SYNC / WARPGROUP.DEPBAR counts, and whether the wgmma waits leave groups in flight
    (WARPGROUP.DEPBAR.LE gsb0, N with N > 0: asynchronous MMAs) or wait for all (N = 0).

It then prints the launch plan per call (launches and aten ops, counted on CPU tensors with the
launcher stubbed) and the host time per call (time.thread_time, launcher stubbed).

Run it without TRITON_INTERPRET (under it @triton.jit builds interpreter functions, which cannot be
compiled). The tools (`recorded_launches`, `triton_on_cpu`, `compile_launch`, `aten_ops`,
`host_time`) are what tests/test_triton.py, tests/test_launch_plan.py and
benchmarks/test_host_overhead.py use.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

# Shared memory per block (opt-in maximum), per SM, and multiprocessors of an A100 (sm_80) and H100 (sm_90).
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
SHARED_MEMORY_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
MULTIPROCESSORS = {80: 108, 90: 132}
REGISTERS_PER_SM = 65536
MAX_THREADS_PER_SM = 2048
MAX_CTAS_PER_SM = 32
TRITON_DTYPE = {
    torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64", torch.int32: "i32",
}  # fmt: skip
DTYPE_NAMES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16, "fp64": torch.float64}


# ------------------------------------------------------------------------------------------------
# Launches, recorded with the launcher stubbed


@dataclasses.dataclass
class RecordedLaunch:
    kernel: object  # the JITFunction (or the interpreter's function)
    grid: object
    args: dict  # every argument by name, constexprs included
    options: dict  # num_warps, num_stages

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


def _kernel_classes() -> list:
    from triton.runtime.jit import JITFunction

    classes = [JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:
        pass
    return classes


@contextlib.contextmanager
def _launcher_replaced(run: Callable) -> Iterator[None]:
    """Every Triton kernel launch calls run(kernel, *args, grid=, warmup=, **kwargs) instead."""
    from triton.runtime.autotuner import Autotuner

    classes = _kernel_classes()
    saved = [cls.run for cls in classes], Autotuner._bench
    for cls in classes:
        cls.run = run
    # An autotuner "times" each configuration as 1 ms (no GPU): it then keeps its first one, and
    # later calls take its cached-choice path, as they would on a GPU.
    Autotuner._bench = lambda self, *args, config, **kwargs: 1.0
    try:
        yield
    finally:
        for cls, original in zip(classes, saved[0]):
            cls.run = original
        Autotuner._bench = saved[1]


@contextlib.contextmanager
def recorded_launches() -> Iterator[list[RecordedLaunch]]:
    """Within the block no Triton kernel runs: each launch is appended to the yielded list instead
    (autotuners included: they launch their first configuration)."""
    launches: list[RecordedLaunch] = []

    def run(self, *args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        launches.append(RecordedLaunch(self, grid, {**dict(zip(self.arg_names, args)), **kwargs}, options))

    with _launcher_replaced(run):
        yield launches


@contextlib.contextmanager
def counted_launches() -> Iterator[list[int]]:
    """recorded_launches for timing: a launch only adds 1 to the yielded one-element list (what is timed
    is then everything but the launch itself, and nothing piles up over thousands of calls)."""
    count = [0]

    def run(self, *args, grid, warmup, **kwargs):
        count[0] += 1

    with _launcher_replaced(run):
        yield count


@contextlib.contextmanager
def triton_on_cpu() -> Iterator[None]:
    """The triton backend accepts CPU tensors (its GPU path, kernels not launched: use it inside
    recorded_launches)."""
    from dsno_kernels import api

    original = api.get_backend("triton")
    api.register_backend(dataclasses.replace(original, device_types=("cpu",), unavailable_reason=lambda: None))
    try:
        yield
    finally:
        api.register_backend(original)


def device_limits(arch: int):
    """The triton backend's DeviceLimits of an A100 (80) or H100 (90): what it plans launches with."""
    from dsno_kernels.backends import triton as triton_backend

    limits = SHARED_MEMORY_LIMIT[arch], SHARED_MEMORY_PER_SM[arch], MULTIPROCESSORS[arch], arch
    return triton_backend.DeviceLimits(*limits)


@contextlib.contextmanager
def gpu_limits(arch: int) -> Iterator[None]:
    """The triton backend plans its launches for an sm_`arch` GPU's limits whatever the tensors' device
    (meta or CPU tensors stand in for CUDA ones)."""
    from dsno_kernels.backends import triton as triton_backend

    saved = triton_backend._device_limits, triton_backend._device_key
    triton_backend._device_limits = lambda index: device_limits(arch)
    triton_backend._device_key = lambda device: 0
    triton_backend.clear_launch_plans()
    try:
        yield
    finally:
        triton_backend._device_limits, triton_backend._device_key = saved
        triton_backend.clear_launch_plans()


def aten_ops(fn: Callable[[], object]) -> list[str]:
    """The aten ops fn() calls at top level (ops called inside other aten ops are not counted), from
    the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(
        (e for e in prof.events() if e.name.startswith("aten::")), key=lambda e: (e.time_range.start, -e.time_range.end)
    )
    top, end = [], -math.inf
    for event in events:
        if event.time_range.start >= end:
            top.append(event.name)
            end = event.time_range.end
    return top


# Host time per call: one set of cases and one timing loop for benchmarks/test_host_overhead.py and
# this report's table.

# Shapes do not change the host path; the cpu backend's kernels run, so its input is tiny.
HOST_SHAPES = {"triton": (2, 4, 32, 8, 8), "cpu": (1, 4, 4, 2, 2), "floor": (2, 4, 32, 8, 8)}
HOST_OPS = ("time_conv", "spectral_time_conv")
HOST_DIRECTIONS = ("fwd", "fwd+bwd")
HOST_BUDGET_US = {"fwd": 20.0, "fwd+bwd": 60.0}  # DESIGN.md, for a GPU backend (triton here)
HOST_CALLS, HOST_ROUNDS = 200, 15


@dataclasses.dataclass(frozen=True)
class HostTime:
    """Thread CPU time per call in microseconds: the median, fastest and slowest of `rounds` rounds of
    `calls` back-to-back calls each; `launches` per call (triton); the load average (1 min) when done."""

    median_us: float
    min_us: float
    max_us: float
    rounds: int
    calls: int
    launches: int | None
    load: float


class _Floor(torch.autograd.Function):
    """PyTorch's own floor for an op like ours: an autograd.Function that saves its inputs, allocates
    its output and, backward, its two gradients, and does nothing else."""

    @staticmethod
    def forward(ctx, x, weight, negative_slope):
        ctx.save_for_backward(x, weight)
        ctx.negative_slope = negative_slope
        return x.new_empty(x.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        return torch.empty_like(x), torch.empty_like(weight), None


def _floor(x, weight, backend=None):
    return _Floor.apply(x, weight, 0.01)


def host_call(backend: str, op: str, direction: str) -> Callable[[], object]:
    """One public-API call of `op` on backend's tiny input (HOST_SHAPES): the forward, or the forward
    and torch.autograd.grad for x and the weight. backend "floor": _Floor in place of the op."""
    import dsno_kernels

    shape = HOST_SHAPES[backend]
    grad = direction == "fwd+bwd"
    x = torch.randn(shape, requires_grad=grad)
    w = (torch.randn(shape[2], shape[2], 2, 2) * 0.1).requires_grad_(grad)
    dy = torch.randn(shape)
    function = _floor if backend == "floor" else getattr(dsno_kernels, op)

    def forward():
        return function(x, w, backend=backend)

    def forward_backward():
        return torch.autograd.grad(function(x, w, backend=backend), (x, w), dy)

    return forward_backward if grad else forward


def host_time(backend: str, op: str, direction: str, calls: int = HOST_CALLS, rounds: int = HOST_ROUNDS) -> HostTime:
    """The host time per call of host_call(backend, op, direction), timed with time.thread_time (the
    calling thread only: other jobs on the machine do not count, though they still slow it through the
    caches). triton: its GPU path on CPU tensors with the launcher stubbed (counted_launches), planned
    for an H100: everything but the kernel launch itself."""
    fn = host_call(backend, op, direction)
    with contextlib.ExitStack() as stack:
        launches = None
        if backend == "triton":
            stack.enter_context(triton_on_cpu())
            stack.enter_context(gpu_limits(90))
            launches = stack.enter_context(counted_launches())
        for _ in range(20):  # plans the launches, warms the caches
            fn()
        launched_before = None if launches is None else launches[0]
        times = []
        for _ in range(rounds):
            start = time.thread_time()
            for _ in range(calls):
                fn()
            times.append((time.thread_time() - start) / calls * 1e6)
        per_call = None if launches is None else (launches[0] - launched_before) // (calls * rounds)
    times.sort()
    return HostTime(times[len(times) // 2], times[0], times[-1], rounds, calls, per_call, os.getloadavg()[0])


# ------------------------------------------------------------------------------------------------
# Compiling for real GPUs, without one


def _specialize(kernel, args: dict):
    """The (signature, constexprs, attrs) Triton's launcher derives from these arguments: ints equal
    to 1 become constants, ints and pointers divisible by 16 get the divisibility hint (tensors on the
    meta device have address 0; real allocations are 256-byte aligned), except the ints the kernel
    says not to specialize on."""
    signature, constexprs, attrs = {}, {}, {}
    for index, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        value = args[name]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + TRITON_DTYPE[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = param.annotation_type or "fp32"
        elif param.do_not_specialize:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif value == 1:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def variant_key(launch: RecordedLaunch) -> tuple:
    """What makes two launches compile to the same binary."""
    signature, constexprs, attrs = _specialize(launch.kernel, launch.args)
    return (
        launch.name,
        tuple(signature.items()),
        tuple((k, str(v)) for k, v in constexprs.items()),
        tuple((k, str(v)) for k, v in attrs.items()),
        tuple(sorted(launch.options.items())),
    )


def _cuda_tool(name: str) -> str | None:
    """A CUDA binary tool: Triton's own copy, else the toolkit's."""
    import triton

    for candidate in (
        Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name,
        Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / name,
    ):
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


def _cubin_facts(cubin: bytes) -> dict:
    """Registers, stack / local bytes (spills) and the SASS instruction mix of a cubin (cuobjdump)."""
    tool = _cuda_tool("cuobjdump")
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", file.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "-sass", file.name], capture_output=True, text=True).stdout
    facts = {}
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    if match:
        facts.update(registers=int(match[1]), stack=int(match[2]), local=int(match[4]))
    opcodes = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass)
    facts["sass"] = len(opcodes)
    facts["tensor_core"] = sum(op.startswith(("HMMA", "HGMMA", "DMMA")) for op in opcodes)
    facts["bar_sync"] = sum(op.startswith("BAR.SYNC") for op in opcodes)
    facts["wgmma_waits"] = sum(op.startswith("WARPGROUP.DEPBAR") for op in opcodes)
    # WARPGROUP.DEPBAR.LE gsb0, N waits until at most N wgmma groups are outstanding: N > 0 lets
    # later wgmmas (and the loads around them) overlap the ones in flight; N = 0 waits for all.
    depths = re.findall(r"WARPGROUP\.DEPBAR\.LE\s+gsb0\s*,\s*(0x[0-9a-f]+)", sass)
    facts["wgmma_wait_depths"] = sorted({int(n, 16) for n in depths})
    return facts


def ctas_per_sm(arch: int, registers: int, shared: int, num_warps: int) -> int:
    """Resident CTAs per SM from registers (allocated per warp in 256-register units), shared memory
    (1 KB reserved per CTA) and threads."""
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = REGISTERS_PER_SM // max(1, per_warp * num_warps)
    by_shared = SHARED_MEMORY_PER_SM[arch] // (shared + 1024)
    by_threads = MAX_THREADS_PER_SM // (32 * num_warps)
    return min(by_registers, by_shared, by_threads, MAX_CTAS_PER_SM)


def compile_launch(launch: RecordedLaunch, arch: int) -> dict:
    """Compile one recorded launch's kernel for sm_`arch` and read its static facts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = _specialize(launch.kernel, launch.args)
    source = ASTSource(launch.kernel, signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(launch.options))
    facts = {"shared": compiled.metadata.shared, **_cubin_facts(compiled.asm["cubin"])}
    facts["div64"] = len(re.findall(r"\b(?:div|rem)(?:\.\w+)*\.[su]64\b", compiled.asm["ptx"]))
    warps = launch.options.get("num_warps", 4)
    if "registers" in facts:
        facts["ctas_per_sm"] = ctas_per_sm(arch, facts["registers"], facts["shared"], warps)
    return facts


# ------------------------------------------------------------------------------------------------
# The launches of the benchmark shapes


def shape_launches(
    shape, dtype: torch.dtype, arch: int, negative_slope: float = 0.01, pixels_last: bool = False
) -> dict[str, list]:
    """The launches of one time_conv forward and one backward at `shape` (a harness.OpShape) on meta
    tensors, planned for sm_`arch`, with one configuration (no autotuning); with pixels_last, x has
    its channels innermost in memory."""
    from dsno_kernels.backends import triton as triton_backend

    x = torch.empty(shape.x_shape, dtype=dtype, device="meta")
    if pixels_last:
        x = torch.empty(*shape.x_shape[:2], *shape.x_shape[3:], shape.C, dtype=dtype, device="meta").movedim(-1, 2)
    w = torch.empty(shape.C, shape.C, shape.K, 2, dtype=dtype, device="meta")
    saved = os.environ.get(triton_backend.AUTOTUNE_ENV_VAR)
    os.environ[triton_backend.AUTOTUNE_ENV_VAR] = "0"
    try:
        with gpu_limits(arch), recorded_launches() as forward:
            y = triton_backend._forward(x, w, negative_slope)
        with gpu_limits(arch), recorded_launches() as backward:
            triton_backend._backward(y, x, w, negative_slope)
    finally:
        if saved is None:
            os.environ.pop(triton_backend.AUTOTUNE_ENV_VAR)
        else:
            os.environ[triton_backend.AUTOTUNE_ENV_VAR] = saved
    return {"forward": forward, "backward": backward}


def persistent_variants(launch: RecordedLaunch, arch: int) -> list[RecordedLaunch]:
    """The persistent autotuning candidates (triton backend's _mix_variants) of a recorded one-config
    mix launch (forward or mask pass), planned for sm_`arch`, as launches."""
    from dsno_kernels.backends import triton as triton_backend

    a = launch.args
    with gpu_limits(arch):
        variants = triton_backend._mix_variants(
            a["T"], a["K"], a["C_IN"], a["C_OUT"], a["P"], a["in_ptr"].element_size(), 0, True, a["STORE_MASK"]
        )
    launches = []
    for config, persistent in variants:
        if persistent:
            meta = triton_backend._mix_kwargs(config, persistent)
            options = {name: meta.pop(name) for name in ("num_warps", "num_stages")}
            grid = triton_backend._mix_grid(a["B"], a["P"], a["C_OUT"], MULTIPROCESSORS[arch], meta)
            launches.append(RecordedLaunch(launch.kernel, grid, {**a, **meta}, options))
    return launches


def _role(kernel_name: str, args: dict) -> str:
    if kernel_name == "_spectral_mix_kernel":
        return "mask pass" if args["STORE_MASK"] else "forward"
    return {"_spectral_backward_kernel": "dx + dweight", "_sum_slices_kernel": "dweight sum"}.get(
        kernel_name, kernel_name
    )


def _config(launch: RecordedLaunch) -> str:
    names = [n for n in launch.kernel.arg_names if n.startswith(("BLOCK", "DW_BLOCK"))]
    blocks = " ".join(f"{n.replace('BLOCK_', '').replace('DW_', 'dw')}={launch.args[n]}" for n in names)
    persistent = f" persistent {launch.args['PERSISTENT']}/SM" if launch.args.get("PERSISTENT") else ""
    return f"{blocks} w{launch.options.get('num_warps', '')}s{launch.options.get('num_stages', '')}{persistent}"


def static_report(archs=(90, 80), dtypes=("bf16", "fp32"), shapes=None, log=print, persistent=True) -> list[dict]:
    """One row per (arch, dtype, kernel variant) with the shapes that launch it: the launches of one
    configuration, then (persistent) the mix kernel's persistent autotuning candidates."""
    from benchmarks.harness import GPU_SHAPES
    from dsno_kernels.backends import triton as triton_backend

    shapes = shapes or [s for s in GPU_SHAPES.values() if s.T <= triton_backend.MAX_TIME_POINTS]
    rows = []
    for arch in archs:
        for dtype_name in dtypes:
            for persistent_rows in (False, True) if persistent else (False,):
                variants: dict[tuple, dict] = {}
                for shape in shapes:
                    for launches in shape_launches(shape, DTYPE_NAMES[dtype_name], arch).values():
                        if persistent_rows:
                            mix = [l for l in launches if l.name == "_spectral_mix_kernel"]
                            launches = [v for l in mix for v in persistent_variants(l, arch)]
                        for launch in launches:
                            key = variant_key(launch)
                            if key not in variants:
                                variants[key] = {"launch": launch, "shapes": []}
                            variants[key]["shapes"].append(shape.name)
                for variant in variants.values():
                    launch = variant["launch"]
                    started = time.perf_counter()
                    facts = compile_launch(launch, arch)
                    row = {
                        "arch": arch, "dtype": dtype_name, "kernel": _role(launch.name, launch.args),
                        "config": _config(launch), "shapes": sorted(set(variant["shapes"])), **facts,
                    }  # fmt: skip
                    log(f"  compiled sm_{arch} {dtype_name} {row['kernel']} in {time.perf_counter() - started:.0f} s")
                    rows.append(row)
    return rows


def launch_plan_report() -> list[dict]:
    """Per public-API call on tiny CPU tensors: the triton backend's launches and top-level aten ops
    (launcher stubbed), and the host time per call of the triton and cpu backends (host_time)."""
    import dsno_kernels

    rows = []
    for op in HOST_OPS:
        for direction in HOST_DIRECTIONS:
            fn = host_call("triton", op, direction)
            with triton_on_cpu(), gpu_limits(90), recorded_launches() as launches:
                fn()  # plans
                launches.clear()
                ops = aten_ops(fn)
            row = {"call": f"{op} {direction}", "launches": [l.name for l in launches], "aten": ops}
            for backend in ("triton", "cpu"):
                usable = backend == "triton" or backend in dsno_kernels.available_backends("cpu")
                row[backend] = host_time(backend, op, direction) if usable else None
            rows.append(row)
    for direction in HOST_DIRECTIONS:
        rows.append({"call": f"floor {direction}", "floor": host_time("floor", "autograd.Function", direction)})
    return rows


def _host_cell(t: HostTime | None) -> str:
    if t is None:
        return "-"
    return f"{t.median_us:.1f} ({t.min_us:.1f}-{t.max_us:.1f})"


def _async_wgmma(row: dict) -> str:
    depths = row.get("wgmma_wait_depths")
    if depths is None:
        return "?"
    if not depths:
        return "-"
    return f"{'yes' if max(depths) > 0 else 'no'} (N = {', '.join(map(str, depths))})"


def _format(static_rows: list[dict], plan_rows: list[dict]) -> str:
    lines = [
        "# Triton kernels: static report",
        "",
        "Generated by `python -m benchmarks.kernel_report` (no GPU: triton.compile for GPUTarget('cuda', arch, 32),",
        f"cuobjdump). Triton {__import__('triton').__version__}, torch {torch.__version__}.",
        "Per kernel variant the launcher chooses at the GPU benchmark shapes (benchmarks/harness.py),",
        "time_conv, one configuration (DSNO_KERNELS_TRITON_AUTOTUNE=0: the first the launcher keeps).",
        "regs: registers per thread; smem: shared memory per CTA; spill: stack + local bytes per thread;",
        "CTAs/SM: resident CTAs per SM by registers, shared memory and threads; TC share: HMMA/HGMMA over",
        "all SASS instructions; div64: 64-bit integer divisions in the PTX; DEPBAR: WARPGROUP.DEPBAR (wgmma waits);",
        "async wgmma: whether some wait leaves wgmma groups in flight (DEPBAR.LE gsb0, N > 0: loads and later",
        "MMAs overlap them) or every wait is for all of them (N = 0), with the Ns seen; - without wgmma.",
        "Rows marked persistent are the forward's and mask pass's persistent autotuning candidates (a GPU",
        "times them against the one-tile-per-program ones), with the programs per SM their grid holds.",
        "",
        "| arch | dtype | kernel | config | regs | smem KB | spill B | CTAs/SM | SASS | TC | TC share | div64 "
        "| BAR.SYNC | DEPBAR | async wgmma | shapes |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for r in static_rows:
        spill = r.get("stack", 0) + r.get("local", 0) if "stack" in r else "?"
        share = f"{100 * r['tensor_core'] / r['sass']:.1f}%" if r.get("sass") else "?"
        lines.append(
            f"| sm_{r['arch']} | {r['dtype']} | {r['kernel']} | {r['config']} | {r.get('registers', '?')} "
            f"| {r['shared'] / 1024:.1f} | {spill} | {r.get('ctas_per_sm', '?')} | {r.get('sass', '?')} "
            f"| {r.get('tensor_core', '?')} | {share} | {r['div64']} | {r.get('bar_sync', '?')} "
            f"| {r.get('wgmma_waits', '?')} | {_async_wgmma(r)} | {', '.join(r['shapes'])} |"
        )
    lines += [
        "",
        "## Launch plan and host time per call",
        "",
        "Public-API calls on tiny CPU tensors (`HOST_SHAPES`). launches and aten ops: the triton backend with its",
        "launcher stubbed (`recorded_launches`), aten ops at top level from the profiler. host us: thread CPU time",
        f"per call, the median (fastest-slowest) of {HOST_ROUNDS} rounds of {HOST_CALLS} calls (`host_time`, which",
        "benchmarks/test_host_overhead.py records too); triton with its launcher stubbed (`counted_launches`) and",
        "planned for an H100: everything but the kernel launch, against DESIGN.md's budget of "
        f"{HOST_BUDGET_US['fwd']:.0f} us fwd and {HOST_BUDGET_US['fwd+bwd']:.0f} us",
        "fwd+bwd; cpu: the C++ backend, whose kernels run (on almost nothing), for comparison; floor: PyTorch's",
        "own cost for such a call, an autograd.Function that only allocates (`_Floor`).",
        "",
        "| call | launches | aten ops | triton host us | cpu host us | load |",
        "|---|---|---|--:|--:|--:|",
    ]
    for r in plan_rows:
        if "floor" in r:
            lines.append(f"| {r['call']} | - | - | {_host_cell(r['floor'])} | | {r['floor'].load:.2f} |")
            continue
        launches = ", ".join(n.strip("_").replace("spectral_", "").replace("_kernel", "") for n in r["launches"])
        lines.append(
            f"| {r['call']} | {len(r['launches'])}: {launches} | {', '.join(r['aten']) or '-'} "
            f"| {_host_cell(r['triton'])} | {_host_cell(r['cpu'])} | {r['triton'].load:.2f} |"
        )
    load = os.getloadavg()
    lines += ["", f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", type=int, nargs="+", default=[90, 80], choices=sorted(SHARED_MEMORY_LIMIT))
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPE_NAMES))
    parser.add_argument("--output", type=Path, help="also write the report (markdown) to this file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on"):
        print("kernel_report: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    static_rows = static_report(tuple(args.archs), tuple(args.dtypes), log=lambda m: print(m, file=sys.stderr))
    report = _format(static_rows, launch_plan_report())
    print(report, end="")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        partial = args.output.with_suffix(args.output.suffix + ".partial")
        partial.write_text(report)
        partial.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
