"""Input validation, backend dispatch and the registry, the environment variables, the info report
and the nn.Modules."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dsno_kernels
from dsno_kernels import SpectralTimeConv, TimeConv, api, resolve_backend, settings, spectral_time_conv, time_conv

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
    with pytest.raises(ValueError, match="DSNO_KERNELS_BACKEND.*nonsense"):
        spectral_time_conv(X, W)


def test_auto_picks_the_compiled_cpu_backend():
    assert "cpu" in dsno_kernels.available_backends("cpu"), "the C++ extension is not built"
    assert resolve_backend("auto", X).name == "cpu"


@pytest.fixture
def registered():
    """Registers Backend records for one test, and removes them afterwards."""
    names = []

    def register(backend):
        api.register_backend(backend)
        names.append(backend.name)
        return backend

    yield register
    for name in names:
        api.unregister_backend(name)


def test_shape_limit_passes_input_to_next_backend(registered):
    registered(
        dataclasses.replace(dsno_kernels.get_backend("cpu"), name="limited", max_time_points=2, auto_priority={})
    )
    assert resolve_backend("limited", torch.randn(1, 2, 3)).name == "limited"
    assert resolve_backend("limited", torch.randn(1, 3, 3)).name == "cpu"


def test_registry_accessors(registered):
    records = dsno_kernels.registered_backends()
    assert [b.name for b in records][:2] == ["reference", "cpu"] and {"cuda", "triton"} <= {b.name for b in records}
    assert all(isinstance(b, dsno_kernels.Backend) for b in records)
    assert dsno_kernels.get_backend("cpu") is records[1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        records[1].name = "renamed"
    with pytest.raises(ValueError, match="backend must be one of"):
        dsno_kernels.get_backend("fftw")
    # Traits that tests and benchmarks read instead of lists of names.
    assert dsno_kernels.get_backend("cpu").benchmark_device == "cpu"
    assert {dsno_kernels.get_backend(n).benchmark_device for n in ("cuda", "triton")} == {"cuda"}
    assert dsno_kernels.get_backend("reference").benchmark_device is None
    assert (
        dsno_kernels.get_backend("triton").fp32_via_tf32_on_cuda
        and not dsno_kernels.get_backend("cpu").fp32_via_tf32_on_cuda
    )
    # A new backend with a higher priority is what "auto" picks; removing it restores the old choice.
    fast = registered(dataclasses.replace(dsno_kernels.get_backend("cpu"), name="faster", auto_priority={"cpu": 99}))
    assert resolve_backend("auto", X) is fast
    api.unregister_backend("faster")
    assert resolve_backend("auto", X).name == "cpu"
    api.register_backend(fast)  # (the fixture unregisters it again)


@pytest.mark.parametrize("name", sorted(settings.VARIABLES))
def test_every_environment_variable_is_validated_naming_it(name, monkeypatch):
    read = api.backend_setting if name == settings.BACKEND else lambda: settings.get(name)
    monkeypatch.setenv(name, "bogus")
    with pytest.raises(ValueError, match=name):
        read()
    monkeypatch.setenv(name, "")
    assert read() == settings.VARIABLES[name].default


def test_fp32_setting_is_one_value_set_for_both_gpu_backends(monkeypatch):
    for value in ("tf32", "tf32x3", "ieee"):
        monkeypatch.setenv(settings.FP32, value)
        assert settings.get(settings.FP32) == value
    monkeypatch.setenv(settings.FP32, "fp16")
    with pytest.raises(ValueError, match="DSNO_KERNELS_FP32"):
        dsno_kernels.get_backend("cuda").spectral_time_conv(X, W)  # validated before any kernel runs


def test_cuda_archs_setting(monkeypatch):
    monkeypatch.setenv(settings.BUILD_CUDA_ARCHS, "80; 90a,")
    assert settings.cuda_archs() == ["80", "90a"]
    monkeypatch.setenv(settings.BUILD_CUDA_ARCHS, "sm_90")
    with pytest.raises(ValueError, match=settings.BUILD_CUDA_ARCHS):
        settings.cuda_archs()


def test_readme_lists_every_environment_variable():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in settings.VARIABLES:
        assert f"| `{name}`" in readme, name


def _info(**env):
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "dsno_kernels.info"], capture_output=True, text=True, env=environment, timeout=120
    )


def test_info_reports_backends_versions_and_settings():
    result = _info(DSNO_KERNELS_FP32="ieee")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"torch        {torch.__version__}" in out
    for backend in dsno_kernels.registered_backends():
        assert f"  {backend.name:<10} " in out
    assert "  cpu        runs here" in out
    if not dsno_kernels.backends.cpp.has_cuda_kernels():  # the CPU-only install
        assert "  cuda       cannot run here: the C++ extension was built without CUDA kernels" in out
    elif not torch.cuda.is_available():
        assert "  cuda       cannot run here: no CUDA device is visible" in out
    assert "cpu tensors: cpu" in out
    if dsno_kernels.backends.cpp.has_cuda_kernels():
        assert "CUDA kernels for sm_" in out  # read from the extension's binary
    for name in settings.VARIABLES:
        assert name in out
    assert "DSNO_KERNELS_FP32              'ieee'" in out
    bad = _info(DSNO_KERNELS_BACKEND="bogus")
    assert bad.returncode == 1 and "INVALID: environment variable DSNO_KERNELS_BACKEND" in bad.stdout


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
