"""Every provider the benchmarks time, in one place: the baselines and the dsno_kernels backends.

    dsno_fft     DSNO's layer exactly as its code runs it (SpectralConv1d + TimeConv of DSNO's model
                 file): autocast off, fp32 whatever the input dtype (x.float()),
                     x_ft = rfftn(x.float(), dim=[1])
                     y    = irfftn(einsum("bmihw,iom->bmohw", x_ft[:, :K], view_as_complex(W)), s=[T], dim=[1])
                 plus x + LeakyReLU(y) for time_conv. Its output is fp32 (DSNO's residual add promotes).
    torch_fft    the same formulation in the input dtype: dsno_kernels.backends.reference (torch.fft has no
                 bf16 transform, so bf16 goes through fp32 inside and is rounded back to bf16).
    dense_gemm   the whole layer folded into one real [T*C_out, T*C_in] matrix A (block circulant in
                 time) applied by one torch.matmul in the input dtype, plus the epilogue. At op level A
                 is folded once outside the timed region (reference.dense_block_circulant) and the
                 backward differentiates A itself (torch.matmul then folds the batch into one GEMM,
                 which copies x into [B*P, T*C] order, as it does whenever A requires grad); at model
                 level A is refolded from the weight in every forward (dense_block_circulant is
                 differentiable), because the weight trains.
    cpu, triton, cuda   the dsno_kernels backends with a `benchmark_device` (KERNEL_PROVIDERS, read from
                 the registry), through the public functions, each on its record's device type.
    neuralop     neuraloperator's 1-D SpectralConv (2.0; optional: skipped with the reason when it is not
                 installed) holding the same weight (`neuralop_spectral_conv`). Without trailing dims it is
                 timed on its own layout [B, C, T] (the transpose is made outside the timed region); with
                 trailing dims [B, T, C, *S] the timed call pays the layout change a user would: x to
                 [B * prod(S), C, T] and the result back. fp32 only: its weights are complex, and there is
                 no complex bf16 FFT on the CPU.

`make_layer` gives one provider's layer as a callable over x, with the tensors its backward
differentiates; `temporal_layers_on` runs a DSNO model's temporal layers on a provider.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

import dsno_kernels
from dsno_kernels import api as kernels_api
from dsno_kernels.backends.reference import dense_block_circulant, spectral_time_conv_reference, time_conv_reference

BASELINE_PROVIDERS = ("dsno_fft", "torch_fft", "dense_gemm")
# dense_gemm's [T*C_out, T*C_in] matrix above this many bytes is not a form anyone would run (at the
# FNO-1D shapes it reaches gigabytes): the case is skipped with the size as its reason.
DENSE_GEMM_MAX_BYTES = 64 * 2**20
# The fused-kernel backends and the device type each is benchmarked on, from their Backend records.
KERNEL_DEVICE = {
    b.name: b.benchmark_device for b in dsno_kernels.registered_backends() if b.benchmark_device is not None
}
KERNEL_PROVIDERS = tuple(KERNEL_DEVICE)
OPS = ("spectral_time_conv", "time_conv")
DSNO_NEGATIVE_SLOPE = 0.01  # nn.LeakyReLU()'s default, which DSNO's TimeConv uses


# ------------------------------------------------------------------------------------------------
# DSNO's formulation


def dsno_spectral_time_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """DSNO's SpectralConv1d.forward. x [B, T, C_in, *S] (DSNO has S = (H, W)), weight [C_in, C_out, K, 2]."""
    T, K = x.shape[1], weight.shape[2]
    # DSNO writes "bmihw,iom->bmohw"; the same contraction for any number of trailing dims.
    equation = "bmihw,iom->bmohw" if x.dim() == 5 else "bmi...,iom->bmo..."
    with torch.autocast(device_type=x.device.type, enabled=False):
        x_ft = torch.fft.rfftn(x.float(), dim=[1])
        out_ft = torch.einsum(equation, x_ft[:, :K], torch.view_as_complex(weight.float()))
        return torch.fft.irfftn(out_ft, s=[T], dim=[1])


def dsno_time_conv(x: torch.Tensor, weight: torch.Tensor, negative_slope: float = DSNO_NEGATIVE_SLOPE) -> torch.Tensor:
    """DSNO's TimeConv.forward (with_nin=False): x + LeakyReLU(SpectralConv1d(x))."""
    return x + F.leaky_relu(dsno_spectral_time_conv(x, weight), negative_slope)


# ------------------------------------------------------------------------------------------------
# The dense block-circulant form (reference.dense_block_circulant folds it)


def dense_spectral_time_conv(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """y = A x per pixel column, as one torch.matmul (x contiguous, A of x's dtype)."""
    B, T = x.shape[:2]
    spatial = x.shape[3:]
    C_out = A.shape[0] // T
    if not spatial:  # one column per batch element: one GEMM [B, T*C_in] x [T*C_in, T*C_out]
        return torch.matmul(x.reshape(B, -1), A.mT).view(B, T, C_out)
    return torch.matmul(A, x.reshape(B, A.shape[1], -1)).view(B, T, C_out, *spatial)


def dense_time_conv(x: torch.Tensor, A: torch.Tensor, negative_slope: float = DSNO_NEGATIVE_SLOPE) -> torch.Tensor:
    return x + F.leaky_relu(dense_spectral_time_conv(x, A), negative_slope)


# ------------------------------------------------------------------------------------------------
# Providers at op level


@dataclasses.dataclass
class Layer:
    """One provider's layer: `forward(x)` on inputs already passed through `to_layout` (outside the
    timed region), and the tensors besides x that its backward differentiates."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    params: list[torch.Tensor]
    to_layout: Callable[[torch.Tensor], torch.Tensor] = lambda x: x


def neuralop_unavailable_reason() -> str | None:
    try:
        from neuralop.layers.spectral_convolution import SpectralConv  # noqa: F401
    except ImportError as error:
        return f"neuraloperator is not installed ({error})"
    return None


def dense_gemm_too_large_reason(T: int, C_in: int, C_out: int, dtype: torch.dtype) -> str | None:
    nbytes = T * C_in * T * C_out * torch.empty((), dtype=dtype).element_size()
    if nbytes > DENSE_GEMM_MAX_BYTES:
        return f"dense_gemm's [T*C_out, T*C_in] matrix would take {nbytes / 2**20:.0f} MiB"
    return None


def provider_unavailable_reason(provider: str, device: str) -> str | None:
    """Why `provider` cannot run on `device` in this process (None when it can)."""
    if provider in BASELINE_PROVIDERS:
        return None
    if provider == "neuralop":
        return neuralop_unavailable_reason()
    if provider not in dsno_kernels.available_backends():
        registered = provider in {b.name for b in dsno_kernels.registered_backends()}
        reason = dsno_kernels.get_backend(provider).unavailable_reason() if registered else "it is not registered"
        return f"dsno_kernels backend {provider!r} is unavailable: {reason or 'no device for it'}"
    if provider not in dsno_kernels.available_backends(device):
        return f"dsno_kernels backend {provider!r} does not run on {device}"
    return None


def make_layer(
    provider: str,
    op: str,
    weight: torch.Tensor,
    T: int,
    dtype: torch.dtype,
    *,
    requires_grad: bool,
    negative_slope: float = DSNO_NEGATIVE_SLOPE,
    spatial: bool = True,
) -> Layer:
    """`provider`'s layer for `op` with the fp32 master `weight` [C_in, C_out, K, 2], for inputs of
    `dtype` ([B, T, C, *S], `spatial`: with trailing dims). Each provider holds the weight as it would in
    use: DSNO's in fp32, the others in `dtype`."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    spectral = op == "spectral_time_conv"

    def param(t: torch.Tensor) -> torch.Tensor:
        return t.detach().clone().requires_grad_(requires_grad)

    if provider == "dsno_fft":
        w = param(weight.float())
        fn = dsno_spectral_time_conv if spectral else (lambda x, w: dsno_time_conv(x, w, negative_slope))
        return Layer(lambda x: fn(x, w), [w])
    if provider == "torch_fft":
        w = param(weight.to(dtype))
        fn = spectral_time_conv_reference if spectral else (lambda x, w: time_conv_reference(x, w, negative_slope))
        return Layer(lambda x: fn(x, w), [w])
    if provider == "dense_gemm":
        A = param(dense_block_circulant(weight.double(), T).to(dtype))
        fn = dense_spectral_time_conv if spectral else (lambda x, A: dense_time_conv(x, A, negative_slope))
        return Layer(lambda x: fn(x, A), [A])
    if provider in KERNEL_PROVIDERS:
        w = param(weight.to(dtype))
        if spectral:
            return Layer(lambda x: dsno_kernels.spectral_time_conv(x, w, backend=provider), [w])
        return Layer(lambda x: dsno_kernels.time_conv(x, w, negative_slope=negative_slope, backend=provider), [w])
    if provider == "neuralop":
        if dtype != torch.float32:
            raise ValueError(f"neuralop is benchmarked in fp32 only, got {dtype}")
        return _neuralop_layer(op, weight, requires_grad, negative_slope, spatial)
    raise ValueError(f"unknown provider {provider!r}")


def neuralop_spectral_conv(weight: torch.Tensor):
    """neuraloperator's 1-D SpectralConv computing spectral_time_conv with `weight` [C_in, C_out, K, 2]
    on channels-first input [N, C_in, T]: its complex weight [C_in, C_out, K] is view_as_complex(weight),
    and it keeps n_modes // 2 + 1 modes of the real FFT, so n_modes = 2 (K - 1). Its rfft/irfft use
    norm="forward", ours "backward": one 1/T on the path either way."""
    from neuralop.layers.spectral_convolution import SpectralConv

    C_in, C_out, K, _ = weight.shape
    conv = SpectralConv(C_in, C_out, n_modes=(2 * (K - 1),), bias=False, factorization=None).to(weight.device)
    with torch.no_grad():
        conv.weight.tensor.copy_(torch.view_as_complex(weight.detach().float().contiguous()))
    return conv


def _neuralop_layer(op, weight, requires_grad, negative_slope, spatial: bool) -> Layer:
    conv = neuralop_spectral_conv(weight)
    conv.requires_grad_(requires_grad)

    def spectral(x: torch.Tensor) -> torch.Tensor:
        if not spatial:  # already [B, C, T] (to_layout, outside the timed region)
            return conv(x)
        B, T, C = x.shape[:3]  # [B, T, C, *S] -> [B * prod(S), C, T] and back: the user's layout change
        columns = x.reshape(B, T, C, -1).permute(0, 3, 2, 1).reshape(-1, C, T)
        y = conv(columns)
        return y.reshape(B, -1, y.shape[1], T).permute(0, 3, 2, 1).reshape(B, T, y.shape[1], *x.shape[3:])

    forward = spectral if op == "spectral_time_conv" else (lambda x: x + F.leaky_relu(spectral(x), negative_slope))
    if spatial:
        return Layer(forward, list(conv.parameters()))
    return Layer(forward, list(conv.parameters()), lambda x: x.transpose(1, 2).contiguous())


# ------------------------------------------------------------------------------------------------
# Providers at model level


def _model_dsno_fft(x, weight, negative_slope):
    return dsno_time_conv(x, weight, negative_slope)


def _model_dense_gemm(x, weight, negative_slope):
    return dense_time_conv(x, dense_block_circulant(weight, x.shape[1]).to(x.dtype), negative_slope)


def _model_spectral_dsno_fft(x, weight):
    return dsno_spectral_time_conv(x, weight)


def _model_spectral_dense_gemm(x, weight):
    return dense_spectral_time_conv(x, dense_block_circulant(weight, x.shape[1]).to(x.dtype))


_MODEL_BASELINE_BACKENDS = {
    "dsno_fft": (_model_spectral_dsno_fft, _model_dsno_fft),
    "dense_gemm": (_model_spectral_dense_gemm, _model_dense_gemm),
}


@contextlib.contextmanager
def temporal_layers_on(model: torch.nn.Module, provider: str) -> Iterator[int]:
    """Run every dsno_kernels temporal layer (SpectralTimeConv / TimeConv) of `model` on `provider`
    inside the block; yields how many layers there are.

    The layers keep their own code path (the model's reshapes, mode slicing, the public function and
    its autocast policy) and only their `.backend` changes: torch_fft is the "reference" backend, and
    dsno_fft / dense_gemm are registered as dsno_kernels backends for the duration of the block.
    One difference from DSNO's own layer follows: under autocast the public function casts x and the
    weight to the autocast dtype before dsno_fft upcasts them to fp32 again."""
    layers = [m for m in model.modules() if isinstance(m, dsno_kernels.SpectralTimeConv)]
    backend = "reference" if provider == "torch_fft" else provider
    registered = None
    if provider in _MODEL_BASELINE_BACKENDS:
        if provider in {b.name for b in dsno_kernels.registered_backends()}:
            raise RuntimeError(f"a dsno_kernels backend named {provider!r} already exists")
        spectral_fn, time_conv_fn = _MODEL_BASELINE_BACKENDS[provider]
        registered = kernels_api.Backend(provider, ("cpu", "cuda"), spectral_fn, time_conv_fn)
        kernels_api.register_backend(registered)
    saved = [layer.backend for layer in layers]
    try:
        for layer in layers:
            layer.backend = backend
        yield len(layers)
    finally:
        for layer, previous in zip(layers, saved):
            layer.backend = previous
        if registered is not None:
            kernels_api.unregister_backend(provider)
