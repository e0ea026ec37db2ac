"""The triton backend seen without a GPU: its launches recorded with Triton's launcher stubbed, planned
for an A100's or H100's limits (configs.A100 / H100), and its kernels compiled for sm_80 / sm_90 with
their static facts read from the cubin. tests/test_launch_plan.py and tests/test_triton.py assert on
them; benchmarks/kernel_report.py tabulates them (benchmarks/results/kernel_report.md).

Compiling needs a process without TRITON_INTERPRET (under it @triton.jit builds interpreter functions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .calls import backward_call, forward_call
from .configs import DeviceLimits
from .ops import fp32_precision, launch_backward, launch_forward, stand_in
from .plans import mix_grid, mix_meta, mix_variants

__all__ = [
    "RecordedLaunch",
    "recorded_launches",
    "counted_launches",
    "triton_on_cpu",
    "aten_ops",
    "shape_launches",
    "persistent_variants",
    "variant_key",
    "compile_launch",
    "ctas_per_sm",
]

MAX_THREADS_PER_SM = 2048
MAX_CTAS_PER_SM = 32
TRITON_DTYPE = {
    torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64", torch.int32: "i32",
}  # fmt: skip


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
def triton_on_cpu(limits: DeviceLimits | None) -> Iterator[None]:
    """The public functions' backend="triton" takes CPU tensors, its launches planned for `limits`
    (ops.stand_in): its GPU path, whose kernels must not run (use it inside recorded_launches)."""
    from ...api import get_backend, register_backend

    original = get_backend("triton")
    register_backend(stand_in(limits))
    try:
        yield
    finally:
        register_backend(original)


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


def shape_launches(
    x_shape: tuple, K: int, dtype: torch.dtype, limits: DeviceLimits | None, negative_slope: float = 0.01,
    pixels_last: bool = False,
) -> dict[str, list[RecordedLaunch]]:  # fmt: skip
    """The launches of one time_conv forward and one backward of x [B, T, C, *S] and a [C, C, K, 2]
    weight, on meta tensors, planned for `limits` with one configuration (no autotuning); with
    pixels_last, x has its channels innermost in memory."""
    B, T, C, *spatial = x_shape
    x = torch.empty(x_shape, dtype=dtype, device="meta")
    if pixels_last:
        x = torch.empty(B, T, *spatial, C, dtype=dtype, device="meta").movedim(-1, 2)
    w = torch.empty(C, C, K, 2, dtype=dtype, device="meta")
    precision = fp32_precision(dtype)
    call = forward_call(x.shape, x.stride(), w.shape, w.stride(), dtype, limits, negative_slope, precision, False)
    with recorded_launches() as forward:
        y = launch_forward(call, x, w)
    grad_x = torch.empty_like(x)
    call = backward_call(
        y.shape, y.stride(), x.shape, x.stride(), grad_x.stride(), w.shape, w.stride(), dtype, limits, negative_slope,
        precision, False,
    )  # fmt: skip
    with recorded_launches() as backward:
        launch_backward(call, y, x, w, grad_x)
    return {"forward": forward, "backward": backward}


def persistent_variants(launch: RecordedLaunch, limits: DeviceLimits) -> list[RecordedLaunch]:
    """The persistent autotuning candidates (plans.mix_variants) of a recorded one-configuration mix
    launch (forward or mask pass), planned for `limits`, as launches."""
    a = launch.args
    element_size = a["in_ptr"].element_size()
    variants = mix_variants(a["T"], a["K"], a["C_IN"], a["C_OUT"], a["P"], element_size, limits, True, a["STORE_MASK"])
    launches = []
    for config, persistent in variants:
        if persistent:
            meta = mix_meta(config, persistent)
            options = {name: meta.pop(name) for name in ("num_warps", "num_stages")}
            grid = mix_grid(a["B"], a["P"], a["C_OUT"], limits.processors, meta)
            launches.append(RecordedLaunch(launch.kernel, grid, {**a, **meta}, options))
    return launches


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


def ctas_per_sm(limits: DeviceLimits, registers: int, shared: int, num_warps: int) -> int:
    """Resident CTAs per SM from registers (allocated per warp in 256-register units), shared memory
    (1 KB reserved per CTA) and threads."""
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = limits.registers_per_sm // max(1, per_warp * num_warps)
    by_shared = limits.shared_memory_per_sm // (shared + 1024)
    by_threads = MAX_THREADS_PER_SM // (32 * num_warps)
    return min(by_registers, by_shared, by_threads, MAX_CTAS_PER_SM)


def compile_launch(launch: RecordedLaunch, limits: DeviceLimits) -> dict:
    """Compile one recorded launch's kernel for sm_{limits.arch} and read its static facts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = _specialize(launch.kernel, launch.args)
    source = ASTSource(launch.kernel, signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", limits.arch, 32), options=dict(launch.options))
    facts = {"shared": compiled.metadata.shared, **_cubin_facts(compiled.asm["cubin"])}
    facts["div64"] = len(re.findall(r"\b(?:div|rem)(?:\.\w+)*\.[su]64\b", compiled.asm["ptx"]))
    warps = launch.options.get("num_warps", 4)
    if "registers" in facts:
        facts["ctas_per_sm"] = ctas_per_sm(limits, facts["registers"], facts["shared"], warps)
    return facts
