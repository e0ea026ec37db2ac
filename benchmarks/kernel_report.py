"""Static report of the Triton kernels, compiled for sm_90 and sm_80 without a GPU, and the host time
per call.

    python -m benchmarks.kernel_report [--archs 90 80] [--dtypes bf16 fp32] [--output FILE]

For every GPU shape (dsno_kernels.shapes.GPU_SHAPES) and FNO-1D corner (FNO_SHAPES) and dtype, the report
records the launches the triton backend makes for one forward and one backward (the launcher stubbed,
on meta tensors, planned for an H100's or an A100's limits: configs.H100 / A100 passed to the planning
functions), then the forward's and mask pass's persistent autotuning candidates, compiles each
distinct kernel variant once (triton.compile for GPUTarget("cuda", arch, 32)) and reads the cubin with
cuobjdump (the tools are dsno_kernels.backends.triton.introspection's):

    registers per thread, shared memory, spill (stack / local) bytes, CTAs per SM (from registers,
    shared memory and threads), SASS instructions and the tensor-core share (HMMA / HGMMA over all),
    64-bit integer divisions (div / rem .s64 / .u64 in the PTX, which ptxas turns into a call), and
    BAR.SYNC / WARPGROUP.DEPBAR counts, and whether the wgmma waits leave groups in flight
    (WARPGROUP.DEPBAR.LE gsb0, N with N > 0: asynchronous MMAs) or wait for all (N = 0).

It then prints the launch plan per call (launches and aten ops, counted on CPU tensors with the
launcher stubbed) and the host time per call (`host_time`, time.thread_time, launcher stubbed), which
benchmarks/test_host_overhead.py records too.

Run it without TRITON_INTERPRET (under it @triton.jit builds interpreter functions, which cannot be
compiled).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dsno_kernels.backends import triton as triton_backend
from dsno_kernels.backends.triton.introspection import (
    RecordedLaunch,
    aten_ops,
    compile_launch,
    counted_launches,
    persistent_variants,
    recorded_launches,
    shape_launches,
    triton_on_cpu,
    variant_key,
)
from dsno_kernels.shapes import GPU_SHAPES, OpShape

GPU_LIMITS = {limits.arch: limits for limits in (triton_backend.A100, triton_backend.H100)}
# FNO-1D layers beyond the GPU suite's fno1d (no trailing dims, T = 64 to 1024, K = 8 to 64, C = 32 to
# 128, sizes that are not powers of two too: the CPU suite's FNO shapes), all on the DFT-as-GEMM path.
FNO_SHAPES = (
    OpShape("fno1d-t64", 16, 64, 8, 32),
    OpShape("fno1d-t256", 16, 256, 16, 64),
    OpShape("fno1d-t200", 16, 200, 24, 48),
    OpShape("fno1d-t1000", 8, 1000, 40, 96),
    OpShape("fno1d-t1024", 4, 1024, 64, 128),
)
DTYPE_NAMES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16, "fp64": torch.float64}


# ------------------------------------------------------------------------------------------------
# Host time per call: one set of cases and one timing loop for benchmarks/test_host_overhead.py and
# this report's table.

# Shapes do not change the host path; the cpu backend's kernels run, so its input is tiny.
HOST_SHAPES = {"triton": (2, 4, 32, 8, 8), "cpu": (1, 4, 4, 2, 2), "floor": (2, 4, 32, 8, 8)}
HOST_OPS = ("time_conv", "spectral_time_conv")
HOST_DIRECTIONS = ("fwd", "fwd+bwd")
HOST_BUDGET_US = {"fwd": 20.0, "fwd+bwd": 60.0}  # docs/design.md, for a GPU backend (triton here)
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
            stack.enter_context(triton_on_cpu(triton_backend.H100))
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


def _role(kernel_name: str, args: dict) -> str:
    if kernel_name == "_spectral_mix_kernel":
        return "mask pass" if args["STORE_MASK"] else "forward"
    if kernel_name == "_spectral_analysis_kernel":  # the DFT-as-GEMM path (T > 32)
        return "gemm: analysis, gated" if args["GATED"] else "gemm: analysis"
    if kernel_name == "_complex_mix_kernel":
        return "gemm: grad_weight" if args["SCALE_MODES"] else "gemm: mix" + (", conj" if args["CONJUGATE_B"] else "")
    return {
        "_spectral_backward_kernel": "dx + grad_weight",
        "_sum_slices_kernel": "grad_weight sum",
        "_spectral_synthesis_kernel": "gemm: synthesis",
    }.get(kernel_name, kernel_name)


def _config(launch: RecordedLaunch) -> str:
    """The blocks, warps and stages, e.g. "OUT=64 IN=32 P=128 / grad_weight IN=64 OUT=64 P=32 w8s3"."""
    parts = []
    for prefix, label in (("BLOCK", ""), ("GRAD_WEIGHT_BLOCK", "/ grad_weight ")):
        names = [n for n in launch.kernel.arg_names if n.startswith(prefix)]
        if names:
            parts.append(label + " ".join(f"{n.removeprefix(prefix + '_')}={launch.args[n]}" for n in names))
    blocks = " ".join(parts)
    persistent = f" persistent {launch.args['PERSISTENT']}/SM" if launch.args.get("PERSISTENT") else ""
    return f"{blocks} w{launch.options.get('num_warps', '')}s{launch.options.get('num_stages', '')}{persistent}"


def static_report(archs=(90, 80), dtypes=("bf16", "fp32"), shapes=None, log=print, persistent=True) -> list[dict]:
    """One row per (arch, dtype, kernel variant) with the shapes that launch it: the launches of one
    configuration, then (persistent) the mix kernel's persistent autotuning candidates."""
    shapes = shapes or [*GPU_SHAPES.values(), *FNO_SHAPES]
    rows = []
    for arch in archs:
        limits = GPU_LIMITS[arch]
        for dtype_name in dtypes:
            for persistent_rows in (False, True) if persistent else (False,):
                variants: dict[tuple, dict] = {}
                for shape in shapes:
                    planned = shape_launches(shape.x_shape, shape.K, DTYPE_NAMES[dtype_name], limits)
                    for launches in planned.values():
                        if persistent_rows:
                            mix = [l for l in launches if l.name == "_spectral_mix_kernel"]
                            launches = [v for l in mix for v in persistent_variants(l, limits)]
                        for launch in launches:
                            key = variant_key(launch)
                            if key not in variants:
                                variants[key] = {"launch": launch, "shapes": []}
                            variants[key]["shapes"].append(shape.name)
                for variant in variants.values():
                    launch = variant["launch"]
                    started = time.perf_counter()
                    facts = compile_launch(launch, limits)
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
            with triton_on_cpu(triton_backend.H100), recorded_launches() as launches:
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
        "Per kernel variant the launcher chooses at the GPU benchmark shapes (benchmarks/harness.py) and the",
        "FNO-1D corners (`FNO_SHAPES`), time_conv, one configuration (DSNO_KERNELS_TRITON_AUTOTUNE=0: the first",
        "the launcher keeps). Rows whose kernel starts with gemm: are the DFT-as-GEMM path of T > 32",
        "(dsno_kernels/backends/triton/gemm.py; T and K are runtime values there, so the binaries depend",
        "on the blocks only).",
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
        "planned for an H100: everything but the kernel launch, against docs/design.md's budget of "
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
    parser.add_argument("--archs", type=int, nargs="+", default=[90, 80], choices=sorted(GPU_LIMITS))
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
