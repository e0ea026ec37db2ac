"""time_conv through the public function, captured in a torch.cuda.CUDAGraph on each GPU backend and
replayed on new inputs: the ops must launch on the capturing stream, never synchronise with the host,
and allocate nothing whose size depends on the data. The replay must equal an eager call bit for bit
(the kernels are deterministic, and warm-up has settled any autotuning before the capture).

The benchmarks rely on this for one-pass sampling under CUDA graphs (benchmarks/test_model_bench.py).
Without a GPU there is no backend to parametrize over and the tests are skipped.
"""

from __future__ import annotations

import pytest
import torch

import dsno_kernels

GPU_BACKENDS = [name for name in dsno_kernels.available_backends("cuda") if name != "reference"]


def _inputs(dtype, seed):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    B, T, K, C, S = 2, 4, 2, 64, (8, 8)  # DSNO's T and K; pixel and channel counts the fused paths take
    x = torch.randn(B, T, C, *S, device="cuda", generator=generator).to(dtype)
    weight = (torch.randn(C, C, K, 2, device="cuda", generator=generator) / C).to(dtype)
    dy = torch.randn(B, T, C, *S, device="cuda", generator=generator).to(dtype)
    return x, weight, dy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_time_conv_replays_from_a_cuda_graph(backend, dtype, direction):
    x, weight, dy = _inputs(dtype, seed=0)
    backward = direction == "fwd+bwd"
    x.requires_grad_(backward)
    weight.requires_grad_(backward)

    def step():
        if not backward:
            with torch.no_grad():
                return (dsno_kernels.time_conv(x, weight, negative_slope=0.2, backend=backend),)
        y = dsno_kernels.time_conv(x, weight, negative_slope=0.2, backend=backend)
        return (y, *torch.autograd.grad(y, (x, weight), dy))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graphs asks
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()

    new_x, _, new_dy = _inputs(dtype, seed=1)
    with torch.no_grad():
        x.copy_(new_x)
        dy.copy_(new_dy)
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    names = ("y", "grad_x", "grad_weight")
    for name, replayed, expected in zip(names, captured, eager):
        assert torch.equal(replayed, expected), f"{backend} {direction}: the replayed {name} differs from eager"
