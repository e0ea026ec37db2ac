"""The `tiny` training step of benchmarks/test_model_bench.py with its temporal layers on each provider,
the providers' steps interleaved round by round (so every provider sees the same load), in one process.

    python benchmarks/results/2026-12-07-cpu-baselines/tiny_step.py --threads 2 --rounds 12 [--flush-denormal]

Prints the median, fastest and slowest step per provider, the load average, and the OpenMP wait policy."""

from __future__ import annotations

import argparse
import os
import time

import torch

from benchmarks import baselines, harness
from benchmarks.test_model_bench import ModelOpCase, make_train_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--providers", default="dsno_fft,cpu")
    parser.add_argument("--flush-denormal", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(args.flush_denormal)
    torch.manual_seed(0)
    providers = args.providers.split(",")
    steps = {}
    for provider in providers:
        model, step = make_train_step(ModelOpCase(harness.ModelCase("tiny", 8, "fp32"), "train_step", provider), "cpu")
        baselines.temporal_layers_on(model, provider).__enter__()  # for the life of the process
        steps[provider] = step
    for step in steps.values():  # warm-up: allocator, FFT plans, oneDNN primitives
        for _ in range(3):
            step()
    load_start = os.getloadavg()[0]
    samples = {p: [] for p in providers}
    for r in range(args.rounds):
        for provider in providers if r % 2 == 0 else reversed(providers):
            start = time.perf_counter()
            steps[provider]()
            samples[provider].append(1e3 * (time.perf_counter() - start))
    summary = "  ".join(f"{p} {sorted(s)[len(s) // 2]:.1f} ms ({min(s):.1f}-{max(s):.1f})" for p, s in samples.items())
    print(
        f"threads {args.threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"flush_denormal={args.flush_denormal}, load {load_start:.1f}-{os.getloadavg()[0]:.1f}: {summary}",
        flush=True,
    )


if __name__ == "__main__":
    main()
