"""Host time per call of the tree in the current folder: kernel_report.host_time for every case of
benchmarks/test_host_overhead.py, as one JSON line. Run as `cd TREE && PYTHONPATH=TREE python measure.py`."""

import json
import os

import torch

import dsno_kernels
from benchmarks import kernel_report

torch.set_num_threads(1)
assert os.path.dirname(dsno_kernels.__file__).startswith(os.getcwd()), dsno_kernels.__file__
result = {"tree": os.getcwd()}
cases = [
    (backend, op, d)
    for backend in ("triton", "cpu")
    for op in kernel_report.HOST_OPS
    for d in kernel_report.HOST_DIRECTIONS
]
cases += [("floor", "autograd.Function", d) for d in kernel_report.HOST_DIRECTIONS]
for backend, op, direction in cases:
    t = kernel_report.host_time(backend, op, direction)
    result[f"{backend} {op} {direction}"] = [round(t.median_us, 2), round(t.min_us, 2), round(t.max_us, 2), t.launches]
result["load"] = os.getloadavg()[0]
print(json.dumps(result))
