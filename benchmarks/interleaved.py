"""Every op case of a shape set with its providers timed call by call in alternation, in one process: the
ratio of two providers then does not depend on when each case ran, which on a machine shared with other
jobs decides more than the code does (the pytest-benchmark suite times its cases one after the other).

    python -m benchmarks.interleaved --set cpu --threads 2 --out results.json [--repeats 15]

For each shape, dtype, op and direction: every provider of benchmarks/test_ops_bench.py that runs here
(the same cases: torch_fft only in bf16, neuralop only in fp32), host-inclusive medians of `--repeats`
alternating calls each, and the `cpu` backend's speed-up over each peer and over the best of them.
Prints a markdown table; --out writes the JSON (machine, torch, threads, load at start and end).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

from benchmarks import baselines, harness

PEERS = ("dsno_fft", "torch_fft", "dense_gemm", "neuralop")


def measure(shapes, *, provider: str, repeats: int, device: str) -> list[dict]:
    rows = []
    for shape, dtype, op, direction in itertools.product(shapes, harness.DTYPES, baselines.OPS, harness.DIRECTIONS):
        providers = [p for p in (provider, *PEERS) if harness.op_case_skip_reason(p, shape, dtype, device) is None]
        calls = {p: harness.make_timed_call(p, op, shape, dtype, direction, device) for p in providers}
        medians = harness.interleaved_medians(calls, device, repeats=repeats)
        peers = {p: s for p, s in medians.items() if p != provider}
        rows.append(
            {
                "shape": shape.name,
                "dtype": dtype,
                "op": op,
                "direction": direction,
                "seconds": medians,
                "speedup": {p: s / medians[provider] for p, s in peers.items()},
                "speedup_vs_best_peer": min(peers.values()) / medians[provider] if peers else None,
            }
        )
        print(markdown_row(rows[-1], provider), flush=True)
    return rows


def markdown_row(row: dict, provider: str) -> str:
    cells = [row["shape"], row["dtype"], row["op"], row["direction"]]
    for p in (provider, *PEERS):
        seconds = row["seconds"].get(p)
        cells.append("-" if seconds is None else f"{seconds * 1e3:.3f} ms")
    best = row["speedup_vs_best_peer"]
    cells.append("-" if best is None else f"{best:.2f}x")
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.interleaved", description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="cpu", choices=sorted(harness.SHAPE_SETS))
    parser.add_argument("--shapes", default="", help="comma-separated shape names (default: the whole set)")
    parser.add_argument("--provider", default="cpu", help="the provider held against the peers")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shapes = harness.SHAPE_SETS[args.set]
    wanted = [s for s in args.shapes.split(",") if s]
    unknown = sorted(set(wanted) - set(shapes))
    if unknown:
        parser.error(f"--shapes: {unknown} not in the {args.set} set {sorted(shapes)}")
    reason = baselines.provider_unavailable_reason(args.provider, args.device)
    if reason is not None:
        print(f"--provider {args.provider}: {reason}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    load_start = os.getloadavg()
    print(f"{harness.device_name(args.device)}, torch {torch.__version__}, load average {load_start[0]:.1f}")
    print(f"| shape | dtype | op | direction | {' | '.join((args.provider, *PEERS))} | vs best peer |")
    print("|---|---|---|---|" + "--:|" * (len(PEERS) + 2))
    rows = measure([shapes[n] for n in wanted] if wanted else list(shapes.values()), provider=args.provider,
                   repeats=args.repeats, device=args.device)  # fmt: skip
    if args.out:
        result = {
            "device": harness.device_name(args.device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "repeats": args.repeats,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "rows": rows,
        }
        with open(args.out + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
