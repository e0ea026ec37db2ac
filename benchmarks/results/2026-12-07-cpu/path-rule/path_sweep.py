"""The data behind the cpu backend's path rule for shapes without trailing dims: the `cpu` backend as
built against neuraloperator's SpectralConv, spectral_time_conv fp32, B = 8, C = 64, 1 thread, the two
called in alternation and timed by this thread's CPU time (time.thread_time: on a machine shared with
other jobs it counts only this process's work), 9 rounds, medians. Run from the repository root:

    PAIRS=200x24,512x64 python benchmarks/results/2026-12-07-cpu/path-rule/path_sweep.py OUT.json
"""

import json
import os
import sys
import time

import torch

sys.path.insert(0, ".")
from benchmarks import harness  # noqa: E402

DEFAULT_PAIRS = "64x16,64x33,128x32,200x24,256x16,256x48,512x32,512x64,1000x40,1024x16,1024x64"

torch.set_num_threads(1)
torch.manual_seed(0)
pairs = [tuple(map(int, p.split("x"))) for p in os.environ.get("PAIRS", DEFAULT_PAIRS).split(",")]
out = []
for T, K in pairs:
    shape = harness.OpShape("s", 8, T, K, 64)
    path = torch.ops.dsno_kernels.cpu_path(torch.empty(8, T, 64), torch.empty(64, 64, K, 2))
    for direction in ("fwd", "fwd+bwd"):
        providers = ("cpu", "neuralop")
        calls = {
            p: harness.make_timed_call(p, "spectral_time_conv", shape, "fp32", direction, "cpu") for p in providers
        }
        for call in calls.values():
            for _ in range(2):
                call()
        samples = {p: [] for p in providers}
        for r in range(9):
            for p in providers if r % 2 == 0 else providers[::-1]:
                start = time.thread_time()
                calls[p]()
                samples[p].append(time.thread_time() - start)
        m = {p: sorted(v)[len(v) // 2] for p, v in samples.items()}
        out.append(dict(T=T, K=K, direction=direction, path=path, cpu=m["cpu"], neuralop=m["neuralop"]))
        print(T, K, direction, path, f"cpu {m['cpu'] * 1e3:.3f} ms, neuralop {m['neuralop'] * 1e3:.3f} ms", flush=True)
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
