"""Host time per call of the triton backend's two paths: kernel_report.host_time (launcher stubbed, planned
for an H100) at kernel_report's shape (T = 4: the fused kernels) and at an FNO-1D one (T = 64, no trailing
dims: the DFT-as-GEMM kernels), as one JSON line. Run from the repository root as
`PYTHONPATH=. python benchmarks/results/2026-12-08-cpu-host-gemm/measure.py`."""

import json
import os

import torch

from benchmarks import kernel_report

torch.set_num_threads(1)
SHAPES = {"fused": kernel_report.HOST_SHAPES["triton"], "gemm": (2, 64, 32)}
result = {}
for path, shape in SHAPES.items():
    kernel_report.HOST_SHAPES["triton"] = shape  # host_call reads the shape from here
    for op in kernel_report.HOST_OPS:
        for direction in kernel_report.HOST_DIRECTIONS:
            t = kernel_report.host_time("triton", op, direction)
            key = f"{path} {'x'.join(map(str, shape))} {op} {direction}"
            result[key] = [round(t.median_us, 2), round(t.min_us, 2), round(t.max_us, 2), t.launches]
result["load"] = os.getloadavg()[0]
print(json.dumps(result))
