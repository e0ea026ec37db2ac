"""The `cpu` backend's kernels before and after a change, called in alternation in one process: the ops of
a build of the older code (its op namespace renamed to dsno_old by ab.sh, so that both libraries load) and
of the installed dsno_kernels, at the FNO-1D shapes of the benchmarks' CPU set, under inference mode: the
kernels alone (dsno_kernels' ops also carry a Python autograd registration, about 6 us a call, which the
renamed library lacks). Prints a table and writes JSON (medians in ms).

    python ab.py OLD_LIBRARY.so --threads 2 --repeats 30 --out ab-2t.json
"""

import argparse
import functools
import json
import statistics
import time

import torch

import dsno_kernels  # noqa: F401  (registers torch.ops.dsno_kernels)

# (name, B, T, K, C): benchmarks/harness.py's cpu-fno1d shapes
SHAPES = [
    ("cpu-fno1d", 16, 64, 8, 32),
    ("cpu-fno1d-t256", 16, 256, 16, 64),
    ("cpu-fno1d-t200", 16, 200, 24, 48),
    ("cpu-fno1d-t1000", 8, 1000, 40, 96),
    ("cpu-fno1d-t1024", 4, 1024, 64, 128),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_library")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.ops.load_library(args.old_library)
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        rows = measure(args.repeats)
    meta = {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__}
    with open(args.out, "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)


def measure(repeats: int) -> list:
    rows = []
    print("| shape | dtype | op | direction | before | after | before / after |\n|---|---|---|---|--:|--:|--:|")
    for dtype_name, dtype in DTYPES.items():
        for name, B, T, K, C in SHAPES:
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(B, T, C, generator=generator).to(dtype)
            w = (torch.randn(C, C, K, 2, generator=generator) / (C * K) ** 0.5).to(dtype)
            dy = torch.randn(B, T, C, generator=generator).to(dtype)
            for op in ("spectral_time_conv", "time_conv"):
                extra = (0.2,) if op == "time_conv" else ()
                calls = {}
                for version, namespace in (("before", torch.ops.dsno_old), ("after", torch.ops.dsno_kernels)):
                    forward, backward = getattr(namespace, op), getattr(namespace, op + "_backward")
                    calls[version, "fwd"] = functools.partial(forward, x, w, *extra)
                    calls[version, "bwd"] = functools.partial(backward, dy, x, w, *extra)
                before, after = calls["before", "fwd"]().float(), calls["after", "fwd"]().float()
                difference = ((before - after).abs().max() / before.abs().max()).item()
                times = {key: [] for key in calls}
                for repeat in range(repeats):  # each round in the other order: no position bias
                    for key, call in list(calls.items())[:: 1 if repeat % 2 == 0 else -1]:
                        start = time.perf_counter()
                        call()
                        times[key].append(time.perf_counter() - start)
                medians = {key: statistics.median(t) * 1e3 for key, t in times.items()}
                for direction in ("fwd", "bwd"):
                    b, a = medians["before", direction], medians["after", direction]
                    rows.append(
                        {"shape": name, "dtype": dtype_name, "op": op, "direction": direction,
                         "before_ms": b, "after_ms": a, "max_rel_difference": difference}
                    )  # fmt: skip
                    print(f"| {name} | {dtype_name} | {op} | {direction} | {b:.3f} ms | {a:.3f} ms | {b / a:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
