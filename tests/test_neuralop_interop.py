"""An FNO user's swap: neuraloperator's 1-D SpectralConv (dense weight, no bias) is spectral_time_conv on
x.transpose(1, 2), with its complex weight [C_in, C_out, K] passed as view_as_real (n_modes = 2 K - 2).
Skipped when neuraloperator is not installed (`pip install neuraloperator --no-deps` plus tensorly,
tensorly-torch, opt-einsum and requests keeps the torch you have)."""

from __future__ import annotations

import pytest
import torch

import dsno_kernels

pytest.importorskip("neuralop", reason="neuraloperator is not installed")
from neuralop.layers.spectral_convolution import SpectralConv  # noqa: E402

BACKENDS = [b for b in ("cpu", "reference") if b in dsno_kernels.available_backends("cpu")]


def spectral_conv(C_in, C_out, K, dtype):
    torch.manual_seed(0)
    conv = SpectralConv(C_in, C_out, n_modes=(2 * (K - 1),), bias=False, factorization=None)
    if dtype == torch.float64:
        conv.weight.tensor.data = conv.weight.tensor.data.to(torch.complex128)
    return conv


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=("fp64", "fp32"))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "B, T, K, C_in, C_out", [(2, 64, 8, 6, 5), (3, 33, 17, 4, 4), (2, 20, 11, 3, 2), (1, 5, 2, 3, 4)]
)
def test_spectral_conv_weight_gives_its_output_and_gradients(monkeypatch, backend, B, T, K, C_in, C_out, dtype):
    """Output, input gradient and weight gradient of neuraloperator's layer, from its own weight."""
    if dtype == torch.float64:  # its spectral buffer is torch.cfloat whatever the input: make it complex128
        monkeypatch.setattr(torch, "cfloat", torch.complex128)
    conv = spectral_conv(C_in, C_out, K, dtype)
    x = torch.randn(B, C_in, T, dtype=dtype, requires_grad=True)  # neuraloperator's layout [B, C, T]
    expected = conv(x)
    grad_out = torch.randn_like(expected)
    expected_grad_x, expected_grad_weight = torch.autograd.grad(expected, (x, conv.weight.tensor), grad_out)

    weight = torch.view_as_real(conv.weight.tensor.detach()).clone().requires_grad_()  # [C_in, C_out, K, 2]
    y = dsno_kernels.spectral_time_conv(x.transpose(1, 2), weight, backend=backend).transpose(1, 2)
    grad_x, grad_weight = torch.autograd.grad(y, (x, weight), grad_out)

    tol = {torch.float64: 1e-12, torch.float32: 2e-5}[dtype]
    scale = expected.abs().max().item()
    torch.testing.assert_close(y, expected, rtol=0, atol=tol * scale)
    torch.testing.assert_close(grad_x, expected_grad_x, rtol=0, atol=tol * expected_grad_x.abs().max().item())
    # a complex parameter's gradient is d/dRe + i d/dIm: view_as_real of it is the real weight's gradient
    expected_grad_weight = torch.view_as_real(expected_grad_weight)
    terms = (B * T) ** 0.5
    torch.testing.assert_close(
        grad_weight, expected_grad_weight, rtol=0, atol=tol * terms * expected_grad_weight.abs().max().item()
    )
