"""Input validation, backend dispatch and the nn.Modules."""

from __future__ import annotations

import pytest
import torch

import dsno_kernels
from dsno_kernels import SpectralTimeConv, TimeConv, resolve_backend, spectral_time_conv, time_conv
from dsno_kernels.api import _BACKENDS

X = torch.randn(2, 4, 3, 5)
W = torch.randn(3, 3, 2, 2)

BAD_INPUTS = [
    # (description, x, weight, exception, words the message must contain)
    ("x not a tensor", [[1.0]], W, TypeError, ["x must be a torch.Tensor"]),
    ("weight not a tensor", X, 1.0, TypeError, ["weight must be a torch.Tensor"]),
    ("x integer", X.long(), W, TypeError, ["x", "int64"]),
    ("x complex", X.to(torch.complex64), W, TypeError, ["x", "complex64"]),
    ("weight integer", X, W.int(), TypeError, ["weight", "int32"]),
    ("weight complex", X, torch.view_as_complex(W.contiguous()), TypeError, ["weight", "complex"]),
    ("x rank 2", X[:, :, 0, 0], W, ValueError, ["x must have shape [B, T, C_in, *S]"]),
    ("weight rank 3", X, W[..., 0], ValueError, ["weight must have shape [C_in, C_out, K, 2]"]),
    ("weight last dim 3", X, torch.randn(3, 3, 2, 3), ValueError, ["weight must have shape [C_in, C_out, K, 2]"]),
    ("channel mismatch", X, torch.randn(4, 3, 2, 2), ValueError, ["C_in=3", "x.shape[2]"]),
    ("K = 0", X, torch.randn(3, 3, 0, 2), ValueError, ["K", "[1, 3]"]),
    ("K > T // 2 + 1", X, torch.randn(3, 3, 4, 2), ValueError, ["K", "[1, 3]", "T = 4"]),
    ("T = 0", torch.randn(2, 0, 3, 5), torch.randn(3, 3, 1, 2), ValueError, ["T >= 1"]),
    ("devices differ", X, W.to("meta"), ValueError, ["same device", "meta"]),
]


@pytest.mark.parametrize("op", ["spectral_time_conv", "time_conv"])
@pytest.mark.parametrize("backend", ["auto", "reference", "cpu"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_naming_the_argument(case, backend, op):
    _, x, w, exception, words = case
    with pytest.raises(exception) as info:
        getattr(dsno_kernels, op)(x, w, backend=backend)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_time_conv_needs_square_weight():
    with pytest.raises(ValueError, match=r"C_in == C_out.*\[3, 3, K, 2\]"):
        time_conv(X, torch.randn(3, 4, 2, 2))
    assert spectral_time_conv(X, torch.randn(3, 4, 2, 2)).shape == (2, 4, 4, 5)


@pytest.mark.parametrize("slope", [None, "0.1", float("nan"), float("inf"), True])
def test_bad_negative_slope(slope):
    with pytest.raises(TypeError, match="negative_slope"):
        time_conv(X, W, negative_slope=slope)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        spectral_time_conv(X, W, backend="fftw")
    with pytest.raises(TypeError, match="backend must be a string"):
        spectral_time_conv(X, W, backend=3)


def test_backend_that_cannot_run_here_says_why():
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend 'cuda' cannot run this input"):
            spectral_time_conv(X, W, backend="cuda")


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("DSNO_KERNELS_BACKEND", "reference")
    assert resolve_backend("auto", X).name == "reference"
    assert resolve_backend("cpu", X).name == "cpu"  # an explicit choice wins over the variable
    monkeypatch.setenv("DSNO_KERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        spectral_time_conv(X, W)


def test_auto_picks_the_compiled_cpu_backend():
    assert "cpu" in dsno_kernels.available_backends("cpu"), "the C++ extension is not built"
    assert resolve_backend("auto", X).name == "cpu"


def test_shape_limit_passes_input_to_next_backend(monkeypatch):
    limited = _BACKENDS["cpu"].__class__(**{**_BACKENDS["cpu"].__dict__, "name": "limited", "max_time_points": 2})
    monkeypatch.setitem(_BACKENDS, "limited", limited)
    assert resolve_backend("limited", torch.randn(1, 2, 3)).name == "limited"
    assert resolve_backend("limited", torch.randn(1, 3, 3)).name == "cpu"


def test_empty_batch_and_empty_trailing_dims():
    for x in (torch.randn(0, 4, 3, 5), torch.randn(2, 4, 3, 0)):
        for backend in dsno_kernels.available_backends("cpu"):
            out = time_conv(x, W, backend=backend)
            assert out.shape == x.shape


def test_mixed_dtypes_run_in_x_dtype():
    out = time_conv(X.double(), W)
    assert out.dtype == torch.float64
    w = W.double().requires_grad_()
    out = time_conv(X, w)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert w.grad.dtype == torch.float64


def test_modules_layout_init_and_equivalence():
    layer = SpectralTimeConv(3, 5, 2)
    assert layer.weight.shape == (3, 5, 2, 2)
    scale = 1 / (3 * 5)
    assert 0 <= layer.weight.min() and layer.weight.max() < scale
    assert layer.weight.std() > 0.1 * scale  # drawn, not constant
    torch.testing.assert_close(layer(X), spectral_time_conv(X, layer.weight))

    tc = TimeConv(3, 2, negative_slope=0.2)
    assert tc.weight.shape == (3, 3, 2, 2) and list(tc.state_dict()) == ["weight"]
    torch.testing.assert_close(tc(X), time_conv(X, tc.weight, negative_slope=0.2))
    assert "modes=2" in repr(tc)


@pytest.mark.parametrize("args", [(0, 3, 2), (3, -1, 2), (3, 3, 0), (3.0, 3, 2)])
def test_module_rejects_bad_sizes(args):
    with pytest.raises(ValueError):
        SpectralTimeConv(*args)


def test_dsno_checkpoint_weight_loads_unchanged():
    """DSNO's SpectralConv1d stores weights1 as [in, out, modes, 2]: the same tensor loads as .weight."""
    dsno_weights = torch.rand(4, 4, 2, 2)
    tc = TimeConv(4, 2)
    tc.load_state_dict({"weight": dsno_weights})
    x = torch.randn(2, 4, 4, 3, 3)
    xf = torch.fft.rfftn(x, dim=[1])
    out_ft = torch.zeros(2, 3, 4, 3, 3, dtype=torch.cfloat)
    out_ft[:, :2] = torch.einsum("bmihw,iom->bmohw", xf[:, :2], torch.view_as_complex(dsno_weights))
    expected = x + torch.nn.functional.leaky_relu(torch.fft.irfftn(out_ft, s=[4], dim=[1]), 0.01)
    torch.testing.assert_close(tc(x), expected, rtol=1e-5, atol=1e-6)
