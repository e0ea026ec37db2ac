"""Every backend that runs on this machine, held to the fp64 reference on tests/common.py's samples:
forward in all dtypes, gradients (gradcheck and gradgradcheck in fp64, reference gradients in lower
precision, a gradient penalty), opcheck, torch.compile(fullgraph=True), determinism. A backend plugs
in here by registering itself; its Backend record says how to test it (interpreted, tf32)."""

from __future__ import annotations

import pytest
import torch
from common import (
    DTYPE_IDS,
    DTYPES,
    assert_close_to_reference,
    backends_for,
    reference,
    run,
    sample_inputs,
    tolerance,
)

import dsno_kernels

OPS = ("spectral_time_conv", "time_conv")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKEND_DEVICES = [(b, d) for d in DEVICES for b in backends_for(d)]
COMPILED_BACKEND_DEVICES = [(b, d) for b, d in BACKEND_DEVICES if dsno_kernels.get_backend(b).ops]


def ids(pairs):
    return [f"{b}-{d}" for b, d in pairs]


def interpreted(backend: str) -> bool:
    """Runs in an interpreter here (~500x slower than native code): it gets fewer and smaller samples."""
    return dsno_kernels.get_backend(backend).interpreted


def samples(backend, device, dtype, *, requires_grad=False):
    cases = sample_inputs(device, dtype, requires_grad=requires_grad)
    if interpreted(backend):
        cases = cases[::4]
    return cases


def smallest_samples(backend, device, dtype, *, requires_grad=False, max_numel=40):
    """Non-empty samples with at most max_numel elements of x (the finite-difference checks perturb
    every element), fewer when interpreted."""
    cases = [c for c in sample_inputs(device, dtype, requires_grad=requires_grad) if 0 < c.x.numel() <= max_numel]
    return cases[::4] if interpreted(backend) else cases


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES, ids=ids(BACKEND_DEVICES))
def test_forward_matches_reference(backend, device, dtype, op):
    tol = tolerance(dtype, backend, device)
    for sample in samples(backend, device, dtype):
        out = run(op, sample, backend)
        assert out.dtype == dtype and out.device.type == device, sample.name
        assert_close_to_reference(out, reference(op, sample), tol, f"{backend}/{op}/{sample.name}")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES, ids=ids(BACKEND_DEVICES))
def test_backward_matches_reference(backend, device, dtype, op):
    """Gradients for x and weight against PyTorch's autograd through the fp64 reference."""
    tol = tolerance(dtype, backend, device)
    for sample in samples(backend, device, dtype, requires_grad=True):
        (x, w), kwargs = sample.args(op)
        out = run(op, sample, backend)
        grad_out = torch.randn_like(out)
        grad_x, grad_weight = torch.autograd.grad(out, (x, w), grad_out)
        x64 = x.detach().double().requires_grad_()
        w64 = w.detach().double().requires_grad_()
        ref_out = dsno_kernels.spectral_time_conv_reference(x64, w64)
        if op == "time_conv":
            # The LeakyReLU branch comes from the backend's own pre-activation: where |s| is within the
            # dtype's rounding of 0 (operands rounded to bf16 / fp16 / tf32 for the tensor cores) it may
            # legitimately differ from fp64's, and the gradient there by (1 - slope) * grad_out.
            s = dsno_kernels.spectral_time_conv(x.detach(), w.detach(), backend=backend).double()
            ref_out = x64 + torch.where(s > 0, ref_out, kwargs["negative_slope"] * ref_out)
        ref_grad_x, ref_grad_weight = torch.autograd.grad(ref_out, (x64, w64), grad_out.double())
        assert grad_x.dtype == x.dtype and grad_weight.dtype == w.dtype
        # grad_weight sums over every pixel and time point: scale its tolerance by the sqrt of that count.
        terms = max(1, x.numel() // x.shape[2]) ** 0.5
        assert_close_to_reference(grad_x, ref_grad_x, tol, f"{backend}/{op}/{sample.name}/grad_x")
        assert_close_to_reference(
            grad_weight, ref_grad_weight, tol * terms, f"{backend}/{op}/{sample.name}/grad_weight"
        )


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES, ids=ids(BACKEND_DEVICES))
def test_gradcheck_fp64(backend, device, op):
    cases = samples(backend, device, torch.float64, requires_grad=True)
    fast_mode = False
    if interpreted(backend):
        # A full gradcheck costs two forward calls per input element (20 s for 27 elements in the
        # interpreter): there, the smallest samples in fast mode (a random projection of the Jacobian);
        # test_backward_matches_reference covers the rest against the reference's autograd.
        cases = [c for c in sample_inputs(device, torch.float64, requires_grad=True) if 0 < c.x.numel() <= 40]
        fast_mode = True
    for sample in cases:
        (x, w), kwargs = sample.args(op)
        fn = getattr(dsno_kernels, op)
        assert torch.autograd.gradcheck(
            lambda a, b: fn(a, b, backend=backend, **kwargs),  # noqa: B023 (called at once)
            (x, w),
            fast_mode=fast_mode,
        ), sample.name


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES, ids=ids(BACKEND_DEVICES))
def test_gradgradcheck_fp64(backend, device, op):
    """Second derivatives (the autograd of the backward ops) against finite differences of the first."""
    fn = getattr(dsno_kernels, op)
    cases = smallest_samples(backend, device, torch.float64, requires_grad=True)
    assert cases
    for sample in cases:
        (x, w), kwargs = sample.args(op)
        assert torch.autograd.gradgradcheck(
            lambda a, b: fn(a, b, backend=backend, **kwargs),  # noqa: B023 (called at once)
            (x, w),
            fast_mode=interpreted(backend),
        ), sample.name


def _penalty_grad_weight(op, backend, x, w, kwargs):
    """d/dweight of the gradient penalty |d loss / dx|^2, loss = sum(y^2) / 2."""
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    y = getattr(dsno_kernels, op)(x, w, backend=backend, **kwargs)
    (grad_x,) = torch.autograd.grad((y**2).sum() / 2, x, create_graph=True)
    (penalty_grad,) = torch.autograd.grad((grad_x**2).sum(), w)
    return penalty_grad


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES, ids=ids(BACKEND_DEVICES))
def test_gradient_penalty_matches_reference(backend, device, op):
    """A gradient penalty trains the weight through the second derivatives: they must be the
    reference's, never zero (the compiled backends once gave exactly 0 here)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 3, 5, generator=generator, dtype=torch.float64).to(device)
    w = (torch.randn(3, 3, 3, 2, generator=generator, dtype=torch.float64) / 3).to(device)
    kwargs = {} if op == "spectral_time_conv" else {"negative_slope": 0.2}
    got = _penalty_grad_weight(op, backend, x, w, kwargs)
    expected = _penalty_grad_weight(op, "reference", x, w, kwargs)
    assert expected.norm() > 1e-3
    assert_close_to_reference(got, expected, 1e-10, f"{backend}/{op}/penalty d/dweight")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend,device", COMPILED_BACKEND_DEVICES, ids=ids(COMPILED_BACKEND_DEVICES))
def test_compile_fullgraph_double_backward(backend, device, op):
    """The backward op under torch.compile(fullgraph=True), differentiated: its traced autograd is the
    double backward, checked against finite differences in fp64. (A compiled forward's own graph cannot
    be differentiated twice: torch raises for that, it never returns a number.)"""
    backward_op = dsno_kernels.get_backend(backend).ops[op + "_backward"]
    torch._dynamo.reset()
    sample = smallest_samples(backend, device, torch.float64, requires_grad=True, max_numel=30)[0]
    (x, w), kwargs = sample.args(op)
    slope = tuple(kwargs.values())
    grad_out = torch.randn(x.shape[0], x.shape[1], w.shape[1], *x.shape[3:], device=device, dtype=x.dtype)
    compiled = torch.compile(lambda g, a, b: backward_op(g, a, b, *slope), fullgraph=True, backend="aot_eager")
    inputs = (grad_out.requires_grad_(), x, w)
    assert torch.autograd.gradcheck(compiled, inputs, fast_mode=interpreted(backend)), sample.name

    forward = torch.compile(
        lambda a, b: getattr(dsno_kernels, op)(a, b, backend=backend, **kwargs), fullgraph=True, backend="aot_eager"
    )
    (grad_x,) = torch.autograd.grad(forward(x, w).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(grad_x.sum(), w)


@pytest.mark.parametrize("backend,device", COMPILED_BACKEND_DEVICES, ids=ids(COMPILED_BACKEND_DEVICES))
def test_opcheck(backend, device):
    """Both ops and both backward ops (whose autograd is the double backward), with inputs that
    require grad so that opcheck checks the autograd registrations too."""
    ops = dsno_kernels.get_backend(backend).ops
    for sample in samples(backend, device, torch.float32)[::3]:
        for op in OPS:
            (x, w), kwargs = sample.args(op)
            slope = tuple(kwargs.values())
            x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
            torch.library.opcheck(ops[op], (x, w, *slope))
            grad_out = torch.randn(x.shape[0], x.shape[1], w.shape[1], *x.shape[3:], device=device)
            torch.library.opcheck(ops[op + "_backward"], (grad_out.requires_grad_(), x, w, *slope))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend,device", COMPILED_BACKEND_DEVICES, ids=ids(COMPILED_BACKEND_DEVICES))
def test_compile_fullgraph_forward_backward(backend, device, op):
    """torch.compile(fullgraph=True) traces through the op, its fake and its autograd (aot_eager keeps
    this fast on CPU; test_compile_inductor runs the full stack once)."""
    fn = getattr(dsno_kernels, op)
    torch._dynamo.reset()  # each sample below compiles anew; keep clear of the recompile limit
    for sample in samples(backend, device, torch.float32, requires_grad=True)[1::5]:
        (x, w), kwargs = sample.args(op)

        def loss(a, b):
            return (fn(a, b, backend=backend, **kwargs) ** 2).sum()  # noqa: B023 (compiled and run in this iteration)

        compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
        expected = torch.autograd.grad(loss(x, w), (x, w))
        actual = torch.autograd.grad(compiled(x, w), (x, w))
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", COMPILED_BACKEND_DEVICES, ids=ids(COMPILED_BACKEND_DEVICES))
def test_compile_inductor(backend, device):
    torch._dynamo.reset()
    layer = dsno_kernels.TimeConv(6, 2, backend=backend).to(device)
    x = torch.randn(2, 4, 6, 3, 3, device=device, requires_grad=True)

    def step(inp):
        return torch.tanh(layer(inp * 2)).sum()

    compiled = torch.compile(step, fullgraph=True)
    expected = torch.autograd.grad(step(x), (x, layer.weight))
    actual = torch.autograd.grad(compiled(x), (x, layer.weight))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES, ids=ids(BACKEND_DEVICES))
def test_weight_gradient_is_deterministic(backend, device):
    x = torch.randn(3, 6, 8, 7, 9, device=device, requires_grad=True)
    w = torch.randn(8, 8, 3, 2, device=device, requires_grad=True)
    grads = []
    for _ in range(2):
        out = dsno_kernels.time_conv(x, w, backend=backend)
        grads.append(torch.autograd.grad(out, (x, w), torch.ones_like(out)))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES, ids=ids(BACKEND_DEVICES))
def test_autocast_runs_in_autocast_dtype(backend, device):
    x = torch.randn(2, 4, 6, 5, device=device)
    w = torch.randn(6, 6, 2, 2, device=device) / 4
    with torch.autocast(device, dtype=torch.bfloat16):
        out = dsno_kernels.time_conv(x, w, backend=backend)
    assert out.dtype == torch.bfloat16
    expected = dsno_kernels.time_conv_reference(x.bfloat16().double(), w.bfloat16().double())
    assert_close_to_reference(out, expected, tolerance(torch.bfloat16, backend, device), "autocast")


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES, ids=ids(BACKEND_DEVICES))
def test_large_values_and_long_time_axis(backend, device):
    """T beyond the small-sample range (the FNO-1D regime), no trailing dims, C_in != C_out."""
    T = 48 if interpreted(backend) else 96
    x = torch.randn(2, T, 5, device=device, dtype=torch.float64) * 100
    w = torch.randn(5, 7, 12, 2, device=device, dtype=torch.float64)
    out = dsno_kernels.spectral_time_conv(x, w, backend=backend)
    expected = dsno_kernels.spectral_time_conv_reference(x, w)
    assert_close_to_reference(out, expected, 1e-10, "long T")


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=DTYPE_IDS.get)
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES, ids=ids(BACKEND_DEVICES))
def test_wide_images_and_many_tiles(backend, device, dtype):
    """Images wider than the samples': the CPU kernels' pixel runs longer than one block and one run
    (256), full blocks and tails, several tiles and weight-gradient chunks; forward and backward of both
    ops. Few channels (complex modes as one two-row GEMM in the CPU kernels) at T = 4, K = 2 (DSNO's) and
    T = 7, K = 4, and enough channels for Gauss's three-GEMM form at T = 4, K = 3 (a Nyquist mode) and
    T = 5, K = 3."""
    image = (5, 8) if interpreted(backend) else (20, 17)
    cases = [(4, 2, 5, 6), (7, 4, 5, 6)]  # T, K, C_in, C_out of spectral_time_conv (time_conv: C_in)
    if not interpreted(backend):
        cases += [(4, 3, 64, 72), (5, 3, 80, 88)]
    for T, K, C_in, C_out_spectral in cases:
        for op in OPS:
            C_out = C_in if op == "time_conv" else C_out_spectral
            x = torch.randn(2, T, C_in, *image, device=device, dtype=torch.float64)
            w = torch.randn(C_in, C_out, K, 2, device=device, dtype=torch.float64) / (C_in * K) ** 0.5
            x, w = x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
            out = getattr(dsno_kernels, op)(x, w, backend=backend)
            grad_out = torch.randn_like(out)
            grads = torch.autograd.grad(out, (x, w), grad_out)
            x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
            expected = getattr(dsno_kernels, f"{op}_reference")(x64, w64)
            expected_grads = torch.autograd.grad(expected, (x64, w64), grad_out.double())
            tol = tolerance(dtype, backend, device)
            terms = (x.numel() // x.shape[2]) ** 0.5  # grad_weight sums over every pixel and time point
            name = f"{backend}/{op}/T{T}-K{K}-C{C_in}"
            assert_close_to_reference(out, expected, tol, name)
            assert_close_to_reference(grads[0], expected_grads[0], tol, f"{name}/grad_x")
            assert_close_to_reference(grads[1], expected_grads[1], tol * terms, f"{name}/grad_weight")


@pytest.mark.parametrize("T", range(1, 10))
def test_dense_block_circulant_is_the_layer(T):
    """reference.dense_block_circulant (the dense_gemm baseline), and its weight gradient, against the
    torch.fft reference for every K."""
    for K in range(1, T // 2 + 2):
        x = torch.randn(2, T, 3, 4, dtype=torch.float64)
        w = torch.randn(3, 5, K, 2, dtype=torch.float64, requires_grad=True)
        A = dsno_kernels.backends.reference.dense_block_circulant(w, T)
        y = (A @ x.reshape(2, T * 3, 4)).reshape(2, T, 5, 4)
        expected = dsno_kernels.spectral_time_conv_reference(x, w)
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
        grad_out = torch.randn_like(y)
        (got,) = torch.autograd.grad(y, w, grad_out)
        (want,) = torch.autograd.grad(expected, w, grad_out)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert dsno_kernels.backends.reference.dense_block_circulant(w.float(), T).dtype == torch.float32
