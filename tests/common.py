"""The one list of sample inputs every backend is held to, and the per-dtype tolerances.

sample_inputs covers T = 1..9 with every valid K, C_in != C_out, 0 to 3 trailing dims, batch 0 to 3,
and non-contiguous x and weight, cycling the shape features across the (T, K) pairs so the list stays
short enough for gradcheck. Values are fresh random draws (never zeros), scaled so outputs are O(1).
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

import dsno_kernels
from dsno_kernels import settings
from dsno_kernels.backends.reference import spectral_time_conv_reference, time_conv_reference

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
DTYPE_IDS = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

# Largest |error| allowed, relative to max(1, max |reference|), when the inputs are exactly
# representable in the dtype (the reference runs in fp64 on the same values). bf16/fp16: the output's own
# rounding plus operands rounded to the dtype before the tensor-core GEMMs.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
# fp32 through tf32 tensor cores (Triton / CUDA default on a GPU) rounds operands to 10 mantissa bits.
TF32_TOLERANCE = 4e-3

# P = prod(S) spans both CPU paths (the direct one needs P >= 16)
TRAILING = [(), (17,), (3, 4), (2, 3, 3)]


@dataclasses.dataclass
class SampleInput:
    name: str
    x: torch.Tensor
    weight: torch.Tensor  # [C_in, C_out, K, 2] for spectral_time_conv
    square_weight: torch.Tensor  # [C_in, C_in, K, 2] for time_conv
    negative_slope: float

    def args(self, op: str):
        if op == "spectral_time_conv":
            return (self.x, self.weight), {}
        return (self.x, self.square_weight), {"negative_slope": self.negative_slope}


def _non_contiguous(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The same values laid out with a non-trivial stride (a slice of a bigger tensor along dim)."""
    shape = list(t.shape)
    shape[dim] *= 2
    big = torch.empty(shape, dtype=t.dtype, device=t.device)
    view = big[(slice(None),) * dim + (slice(None, None, 2),)]
    view.copy_(t)
    return view


def sample_inputs(device="cpu", dtype=torch.float64, *, requires_grad=False, seed=0) -> list[SampleInput]:
    generator = torch.Generator().manual_seed(seed)
    cases = []
    pairs = [(T, K) for T in range(1, 10) for K in range(1, T // 2 + 2)]
    features = itertools.cycle(itertools.product(range(len(TRAILING)), (1, 2, 3, 0), (False, True)))
    for index, (T, K) in enumerate(pairs):
        trailing_id, batch, strided = next(features)
        trailing = TRAILING[(trailing_id + index) % len(TRAILING)]
        if index % 13 == 12:
            batch = 0  # a few empty batches beyond the cycle
        C_in, C_out = 3, 2 + index % 3 * 2  # C_out in {2, 4, 6}, never equal to C_in
        x = torch.randn(batch, T, C_in, *trailing, generator=generator, dtype=torch.float64)
        w = torch.randn(C_in, C_out, K, 2, generator=generator, dtype=torch.float64) / (C_in * K) ** 0.5
        w_sq = torch.randn(C_in, C_in, K, 2, generator=generator, dtype=torch.float64) / (C_in * K) ** 0.5
        x, w, w_sq = (t.to(device=device, dtype=dtype) for t in (x, w, w_sq))
        if strided:
            x = _non_contiguous(x, 2)
            w = _non_contiguous(w, 1)
            w_sq = w_sq.transpose(0, 1).contiguous().transpose(0, 1)  # a transposed layout
        for t in (x, w, w_sq):
            t.requires_grad_(requires_grad)
        slope = (0.01, 0.2, 1.5)[index % 3]
        name = f"T{T}-K{K}-B{batch}-C_in{C_in}-C_out{C_out}-S{'x'.join(map(str, trailing)) or 'none'}" + (
            "-strided" if strided else ""
        )
        cases.append(SampleInput(name, x, w, w_sq, slope))
    return cases


def reference(op: str, sample: SampleInput) -> torch.Tensor:
    """The fp64 reference on the sample's exact values."""
    (x, w), kwargs = sample.args(op)
    x64, w64 = x.detach().double(), w.detach().double()
    if op == "spectral_time_conv":
        return spectral_time_conv_reference(x64, w64)
    return time_conv_reference(x64, w64, kwargs["negative_slope"])


def run(op: str, sample: SampleInput, backend: str) -> torch.Tensor:
    (x, w), kwargs = sample.args(op)
    return getattr(dsno_kernels, op)(x, w, backend=backend, **kwargs)


def tolerance(dtype: torch.dtype, backend: str, device_type: str) -> float:
    tf32 = device_type == "cuda" and dsno_kernels.get_backend(backend).fp32_via_tf32_on_cuda and tf32_enabled()
    return TF32_TOLERANCE if dtype == torch.float32 and tf32 else TOLERANCE[dtype]


def tf32_enabled() -> bool:
    """fp32 on the GPU backends goes through tf32 unless DSNO_KERNELS_FP32=ieee."""
    return settings.get(settings.FP32) != "ieee"


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return
    actual64 = actual.detach().double().cpu()
    expected64 = expected.detach().double().cpu()
    assert torch.isfinite(actual64).all(), f"{what}: non-finite values in the output"
    scale = max(1.0, expected64.abs().max().item())
    error = (actual64 - expected64).abs()
    bad = error > tol * scale
    if bad.any():
        first = [tuple(i.tolist()) for i in bad.nonzero()[:5]]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements off by more than {tol:g} x {scale:.3g} "
            f"(max error {error.max().item():.3g}); first at {first}: got "
            f"{[actual64[i].item() for i in first]}, expected {[expected64[i].item() for i in first]}"
        )


def backends_for(device_type: str) -> list[str]:
    return dsno_kernels.available_backends(device_type)
