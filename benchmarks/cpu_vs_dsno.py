"""The cpu backend's time_conv against DSNO's own formulation (issue 2, "Measure").

    python -m benchmarks.cpu_vs_dsno [--repeats 40] [--check]

DSNO's layer (benchmarks/baselines.py, dsno_fft): fp32 rfftn -> einsum("bmihw,iom->bmohw") -> irfftn,
then LeakyReLU + residual; against dsno_kernels.time_conv(..., backend="cpu"), at B=8, T=4, K=2,
C=128, 16x16, fp32, forward and forward+backward (gradients of x and the weight). The two run
interleaved, call by call, in alternating order, over input sets rotated as in the suites, and each
reports its median. Targets: >= 5x forward, >= 3x forward+backward. --check exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import torch

import dsno_kernels
from benchmarks import baselines, harness
from dsno_kernels.reference import mode_is_real

SHAPE = harness.CPU_SHAPES["cpu-c128-16"]
TARGETS = {"fwd": 5.0, "fwd+bwd": 3.0}
PROVIDERS = ("dsno_fft", "cpu")


def layer_gflop(shape: harness.OpShape) -> float:
    """Multiply-adds of the channel mixing (the real work): per pixel, C_in * C_out for each real mode
    and 4 * C_in * C_out for each complex one."""
    gemms = sum(1 if mode_is_real(k, shape.T) else 4 for k in range(shape.K))
    pixels = shape.B * (shape.x_numel // (shape.B * shape.T * shape.C))
    return 2 * gemms * shape.C * shape.C * pixels / 1e9


def make_calls(direction: str) -> dict:
    backward = direction == "fwd+bwd"
    weight = torch.rand(SHAPE.C, SHAPE.C, SHAPE.K, 2) / (SHAPE.C * SHAPE.C)
    set_bytes = SHAPE.x_numel * 4 * (2 if backward else 1)
    count = harness.num_input_sets(set_bytes, "cpu")
    xs = [torch.randn(SHAPE.x_shape).requires_grad_(backward) for _ in range(count)]
    dys = [torch.randn(SHAPE.x_shape) for _ in range(count)]
    calls = {}
    for provider in PROVIDERS:
        layer = baselines.make_layer(provider, "time_conv", weight, SHAPE.T, torch.float32, requires_grad=backward)
        order = itertools.cycle(range(count))

        def call(layer=layer, order=order):
            i = next(order)
            if backward:
                y = layer.forward(xs[i])
                torch.autograd.grad(y, [xs[i], *layer.params], dys[i])
            else:
                with torch.no_grad():
                    layer.forward(xs[i])

        calls[provider] = call
    with torch.no_grad():  # the two compute the same layer before they are timed
        dsno_y, cpu_y = (
            baselines.make_layer(p, "time_conv", weight, SHAPE.T, torch.float32, requires_grad=False).forward(xs[0])
            for p in PROVIDERS
        )
    torch.testing.assert_close(cpu_y, dsno_y, rtol=1e-4, atol=1e-5)
    return calls


def interleaved_medians(calls: dict, repeats: int, warmup: int = 3) -> dict:
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: sorted(s)[len(s) // 2] for name, s in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per provider and direction")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    reason = baselines.provider_unavailable_reason("cpu", "cpu")
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    torch.manual_seed(0)
    print(f"{harness.device_name('cpu')}, torch {torch.__version__}, dsno_kernels {dsno_kernels.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} (other work on these cores slows both sides unevenly)")
    print(f"time_conv fp32 x {list(SHAPE.x_shape)}, K={SHAPE.K}; channel mixing {layer_gflop(SHAPE):.3f} GFLOP "
          f"forward; medians of {args.repeats} interleaved calls\n")
    print(f"{'direction':<10}{'dsno_fft':>12}{'cpu':>12}{'speed-up':>10}{'target':>8}{'cpu GFLOP/s':>13}")
    missed = []
    for direction, target in TARGETS.items():
        medians = interleaved_medians(make_calls(direction), args.repeats)
        ratio = medians["dsno_fft"] / medians["cpu"]
        flops = layer_gflop(SHAPE) * (3 if direction == "fwd+bwd" else 1)  # backward: dx and dweight GEMMs
        verdict = "met" if ratio >= target else "MISSED"
        if ratio < target:
            missed.append(direction)
        print(f"{direction:<10}{medians['dsno_fft'] * 1e3:>10.2f}ms{medians['cpu'] * 1e3:>10.2f}ms"
              f"{ratio:>9.2f}x{target:>7.0f}x{flops / medians['cpu']:>13.1f}  {verdict}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
