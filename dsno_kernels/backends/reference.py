"""The reference forms of the temporal spectral convolution, and the real-arithmetic pieces shared by
every backend.

    x       real [B, T, C_in, *S]
    weight  real [C_in, C_out, K, 2]      (real, imag) of the Fourier weights, 1 <= K <= T // 2 + 1

    spectral_time_conv(x, weight) = irfft(einsum("bki...,iok->bko...", rfft(x, dim=1)[:, :K], W), n=T, dim=1)
    time_conv(x, weight, s)       = x + leaky_relu(spectral_time_conv(x, weight), s)

`spectral_time_conv_reference` is that formula verbatim (autograd by PyTorch); it is the ground truth
the tests hold every backend to (in fp64), the `torch_fft` benchmark baseline, and the "reference"
backend registered at the end of this file (on any device, the fallback of backend="auto").

In real arithmetic, with a[k, t] = 2 pi k t / T, each pixel's [T, C_in] column goes through

    X = F x          F [R, T]: rows cos(a[k, :]) and -sin(a[k, :])       (the truncated rfft)
    Y = M_k X_k      M_k = [[Wr^T, -Wi^T], [Wi^T, Wr^T]] per mode k      (channel mixing, GEMMs)
    y = G Y          G [T, R]: (c_k / T) cos(a[:, k]) and -(c_k / T) sin(a[:, k])   (the irfft)

where c_0 = 1, c_k = 2 for 0 < k < T/2 and c_{T/2} = 1 for even T. The DC bin and, for even T, the
Nyquist bin have sin(a) = 0 for every t: their imaginary rows are identically zero on the way in and
dropped by irfft on the way out, so those modes keep only their real row (and only Wr). R counts the
rows kept. `spectral_bases` builds F and G in that row order; every backend uses the same order. (The
cuda backend, and the cpu one where the GEMMs dominate, use Gauss's form instead, three rows and GEMMs
per complex mode: csrc/cuda's Q "terms", the CPU code's "products"; docs/design.md.)

G = F^T D with D = diag(c_k / T) (one scalar per mode), so the transposed chain of the backward is the
forward chain with other weights: F^T M^T G^T = G D^-1 M^T D F = G M* F, where M* is M of the
conjugate-transposed weight W* = conj(W)^T [C_out, C_in, K, 2] (`conjugate_transpose`; D commutes with
the per-mode mixing). Hence, with g the gradient of y:

    grad_x      = spectral_time_conv(g, W*)
    grad_Wr[k]  = sum_pixels Xr[k] dYr[k]^T + Xi[k] dYi[k]^T      dY = G^T g = D F g
    grad_Wi[k]  = sum_pixels Xr[k] dYi[k]^T - Xi[k] dYr[k]^T      (0 for DC / Nyquist)
    time_conv:  g = grad_y * leaky_relu'(s), s = G M F x;  grad_x gets + grad_y

and the layer is linear in x and in W, which is what makes the backward ops differentiable with the
same ops (_library.py). Folding F, M and G per mode gives the whole layer as one [T*C_out, T*C_in]
block-circulant matrix (`dense_block_circulant`): A[t, o, s, i] = sum_k Pr[t, s, k] Wr[i, o, k] +
Pi[t, s, k] Wi[i, o, k] with Pr = Gr Fr + Gi Fi and Pi = Gi Fr - Gr Fi (Fr, Fi the real and imaginary
rows of F, Gr, Gi the matching columns of G).
"""

from __future__ import annotations

import functools
import math

import torch

from ..api import Backend, register_backend

__all__ = [
    "spectral_time_conv_reference",
    "time_conv_reference",
    "mode_is_real",
    "spectral_bases",
    "conjugate_transpose",
    "dense_block_circulant",
]


def spectral_time_conv_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The torch.fft form, computed in x's dtype (fp16/bf16 go through fp32: torch.fft has no
    half-precision CPU path)."""
    T, K = x.shape[1], weight.shape[2]
    if x.numel() == 0:  # torch.fft on CPU raises an MKL error on empty input
        out_shape = (x.shape[0], T, weight.shape[1], *x.shape[3:])
        # zero output, kept on the autograd graph so that its (zero) gradients exist
        return x.new_zeros(out_shape) + 0 * (x.sum() + weight.sum()).to(x.dtype)
    compute_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    xf = torch.fft.rfft(x.to(compute_dtype), dim=1)[:, :K]
    w = torch.view_as_complex(weight.to(compute_dtype).contiguous())
    y = torch.einsum("bki...,iok->bko...", xf, w)
    return torch.fft.irfft(y, n=T, dim=1).to(x.dtype)


def time_conv_reference(x: torch.Tensor, weight: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """DSNO's TimeConv: x + leaky_relu(spectral_time_conv(x, weight))."""
    return x + torch.nn.functional.leaky_relu(spectral_time_conv_reference(x, weight), negative_slope)


def mode_is_real(k: int, T: int) -> bool:
    """True for the DC bin and (even T) the Nyquist bin, whose imaginary parts never matter."""
    return k == 0 or 2 * k == T


def spectral_bases(T: int, K: int, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """F [R, T] (truncated real DFT) and G [T, R] (its irfft), rows ordered mode by mode,
    (real, imag) for complex modes and (real) alone for DC / Nyquist."""
    t = torch.arange(T, dtype=torch.float64)
    f_rows, g_cols = [], []
    for k in range(K):
        angle = 2 * math.pi * k * t / T
        c = 1.0 if mode_is_real(k, T) else 2.0
        f_rows.append(torch.cos(angle))
        g_cols.append(c / T * torch.cos(angle))
        if not mode_is_real(k, T):
            f_rows.append(-torch.sin(angle))
            g_cols.append(-c / T * torch.sin(angle))
    F = torch.stack(f_rows)
    G = torch.stack(g_cols, dim=1)
    return F.to(dtype=dtype, device=device), G.to(dtype=dtype, device=device)


def conjugate_transpose(weight: torch.Tensor) -> torch.Tensor:
    """W* [C_out, C_in, K, 2] of weight [C_in, C_out, K, 2]: the weight whose layer is the adjoint (in x)
    of weight's layer."""
    return torch.stack((weight[..., 0], -weight[..., 1]), dim=-1).transpose(0, 1)


@functools.lru_cache(maxsize=64)
def _folded_bases(T: int, K: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pr, Pi [T, T, K] in fp64 (the module docstring): the DFT pieces of dense_block_circulant, which
    the model-level dense_gemm baseline calls in every forward. Read-only."""
    F, G = spectral_bases(T, K, device=device)
    p_r = torch.zeros(T, T, K, dtype=torch.float64, device=device)  # [t, s, k]
    p_i = torch.zeros_like(p_r)
    row = 0
    for k in range(K):
        if mode_is_real(k, T):
            p_r[:, :, k] = torch.outer(G[:, row], F[row])
            row += 1
        else:
            g_r, g_i, f_r, f_i = G[:, row], G[:, row + 1], F[row], F[row + 1]
            p_r[:, :, k] = torch.outer(g_r, f_r) + torch.outer(g_i, f_i)
            p_i[:, :, k] = torch.outer(g_i, f_r) - torch.outer(g_r, f_i)
            row += 2
    return p_r, p_i


def dense_block_circulant(weight: torch.Tensor, T: int) -> torch.Tensor:
    """The whole layer as one real matrix A [T * C_out, T * C_in]: y[b, :, :, p] = A @ x[b, :, :, p]
    flattened (t-major). Differentiable in the weight; computed in fp32 (fp64 for an fp64 weight) and
    returned in that dtype. The `dense_gemm` benchmark baseline, and an independent check of the maths."""
    C_in, C_out, K, _ = weight.shape
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    p_r, p_i = (p.to(dtype) for p in _folded_bases(T, K, weight.device))
    w = weight.to(dtype)
    A = torch.einsum("tsk,iok->tosi", p_r, w[..., 0]) + torch.einsum("tsk,iok->tosi", p_i, w[..., 1])
    return A.reshape(T * C_out, T * C_in)


register_backend(
    Backend(
        name="reference",
        device_types=("cpu", "cuda"),
        spectral_time_conv=spectral_time_conv_reference,
        time_conv=time_conv_reference,
        auto_priority={"cpu": 0, "cuda": 0},
    )
)
