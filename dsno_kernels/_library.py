"""The autograd and torch.library plumbing shared by every compiled backend: `register_ops` takes a
backend's four ops and registers their fake (meta) implementations and autograd formulas once, and
returns the two functions the backend's `Backend` record calls.

The ops (C++ TORCH_LIBRARY ops or Python custom/triton ops, with these signatures):

    spectral_time_conv(x, weight) -> y                 time_conv(x, weight, negative_slope) -> y
    spectral_time_conv_backward(grad_out, x, weight) -> (grad_x, grad_weight)
    time_conv_backward(grad_out, x, weight, negative_slope) -> (grad_x, grad_weight)

Every output is a new contiguous tensor, whatever the strides of the inputs. The backward recomputes
what it needs from x and weight, so the forward saves only its inputs.

Double backward. Write S(x, w) for spectral_time_conv and w* for the conjugate-transposed weight
(reference.conjugate_transpose): S is linear in x and in w, and its adjoint in x is S(., w*)
(backends/reference.py derives it). The backward op maps (grad_out, x, w) to (grad_x, grad_weight); given the
gradients grad_grad_x, grad_grad_weight of its outputs, the gradients of its inputs are

    spectral_time_conv_backward:  grad_grad_out = S(grad_grad_x, w) + S(x, grad_grad_weight)
                                  grad_x        = S(g, grad_grad_weight*)
                                  grad_weight   = backward(g, grad_grad_x, w).grad_weight
    time_conv_backward:           the same with g = grad_out * m, where m = 1 where s = S(x, w) > 0 and
                                  negative_slope elsewhere (zero derivative almost everywhere), and
                                  grad_grad_out = grad_grad_x + m * (S(grad_grad_x, w) + S(x, grad_grad_weight))

(g = grad_out for spectral_time_conv): the existing ops again, so the ops are differentiable to any order.

Two call paths, one set of formulas: the torch.library registrations (register_autograd) serve
torch.compile, opcheck and anything else that goes through the dispatcher; eager calls on plain
tensors (`launches_directly`) take the one fast path of every compiled backend, the functions that
`register_ops` returns: the backend's direct calls (by default its ops below the autograd dispatch
key; the triton backend launches its kernels), inside one plain torch.autograd.Function when something
requires grad, which costs a fraction of the dispatcher's Python autograd kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .backends.reference import conjugate_transpose

ROLES = ("spectral_time_conv", "time_conv", "spectral_time_conv_backward", "time_conv_backward")
# Tensor types an eager call may launch on directly; any other (fake, functional, user subclasses) goes
# through the registered ops, which torch.compile traces.
PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


# ------------------------------------------------------------------------------------------------
# Fake (meta) implementations: shapes only


def _fake_forward(x, weight, *slope):
    torch._check(x.dim() >= 3, lambda: "x must be [B, T, C_in, *S]")
    torch._check(weight.dim() == 4 and weight.shape[3] == 2, lambda: "weight must be [C_in, C_out, K, 2]")
    torch._check(weight.shape[0] == x.shape[2], lambda: "weight.shape[0] must equal x.shape[2]")
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[1], *x.shape[3:]))


def _fake_backward(grad_out, x, weight, *slope):
    torch._check(grad_out.shape[:2] == x.shape[:2], lambda: "grad_out must match the forward output")
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


# ------------------------------------------------------------------------------------------------
# The autograd formulas


def _leaky_relu_slopes(spectral_op, x, weight, negative_slope: float, dtype) -> torch.Tensor:
    """m = d leaky_relu(s) / ds at s = S(x, weight): 1 where s > 0, negative_slope elsewhere (torch's
    convention at 0). A constant for autograd: its derivative is zero almost everywhere."""
    s = spectral_op(x.detach(), weight.detach())
    return torch.full_like(s, negative_slope, dtype=dtype).masked_fill(s > 0, 1.0)  # (not where(): fp32 scalars)


def _double_backward(ops, ctx, grad_grad_x, grad_grad_weight):
    """Gradients of backward(grad_out, x, weight[, negative_slope]) -> (grad_x, grad_weight) for its
    inputs, from the gradients grad_grad_x, grad_grad_weight of its outputs (None where none flows)."""
    grad_out, x, weight = ctx.saved_tensors
    spectral = ops["spectral_time_conv"]
    needs_grad_out, needs_x, needs_weight = ctx.needs_input_grad[:3]
    slopes, g = None, grad_out
    if ctx.slope:
        slopes = _leaky_relu_slopes(spectral, x, weight, ctx.slope[0], grad_out.dtype)
        g = grad_out * slopes
    grad_grad_out = grad_x = grad_weight = None
    if needs_grad_out and (grad_grad_x is not None or grad_grad_weight is not None):
        terms = []
        if grad_grad_x is not None:
            terms.append(spectral(grad_grad_x, weight))
        if grad_grad_weight is not None:
            terms.append(spectral(x, grad_grad_weight))
        grad_grad_out = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        if slopes is not None:
            grad_grad_out = grad_grad_out * slopes
            if grad_grad_x is not None:
                grad_grad_out = grad_grad_out + grad_grad_x
    if needs_x and grad_grad_weight is not None:
        grad_x = spectral(g, conjugate_transpose(grad_grad_weight))
    if needs_weight and grad_grad_x is not None:
        grad_weight = ops["spectral_time_conv_backward"](g.contiguous(), grad_grad_x, weight)[1]
    return (grad_grad_out, grad_x, grad_weight) + (None,) * len(ctx.slope)


def _where_needed(ctx, grad_x, grad_weight, slopes: int) -> tuple:
    """A forward's backward result: each gradient where its input needs one, else None; None for each
    of its `slopes` trailing (slope) inputs."""
    needs = ctx.needs_input_grad
    return (grad_x if needs[0] else None, grad_weight if needs[1] else None) + (None,) * slopes


def _register_autograd(ops: dict) -> None:
    def setup_forward(ctx, inputs, output):
        x, weight, *slope = inputs
        ctx.save_for_backward(x, weight)
        ctx.slope = tuple(slope)

    def setup_backward(ctx, inputs, output):
        grad_out, x, weight, *slope = inputs
        ctx.save_for_backward(grad_out, x, weight)
        ctx.slope = tuple(slope)
        ctx.set_materialize_grads(False)  # a penalty on grad_x alone skips the grad_grad_weight terms

    for name in ("spectral_time_conv", "time_conv"):
        backward_op = ops[name + "_backward"]

        def backward(ctx, grad_out, backward_op=backward_op):
            x, weight = ctx.saved_tensors
            grad_x, grad_weight = backward_op(grad_out.contiguous(), x, weight, *ctx.slope)
            return _where_needed(ctx, grad_x, grad_weight, len(ctx.slope))

        torch.library.register_autograd(ops[name], backward, setup_context=setup_forward)
        torch.library.register_autograd(
            backward_op, functools.partial(_double_backward, ops), setup_context=setup_backward
        )


# ------------------------------------------------------------------------------------------------
# The eager path


def launches_directly(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Eager mode on plain tensors: nothing traces this call (no torch.compile, no dispatch mode such
    as FakeTensorMode, no functorch transform), so a backend may run its kernels without the op layer."""
    return (
        not torch.compiler.is_compiling()  # first: torch.compile need not trace what follows
        and type(x) in PLAIN_TENSORS
        and type(weight) in PLAIN_TENSORS
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._are_functorch_transforms_active()
    )


def _slope_args(negative_slope: float | None) -> tuple:
    """The ops' trailing arguments: none for spectral_time_conv (negative_slope None), the slope for time_conv."""
    return () if negative_slope is None else (negative_slope,)


def _below_autograd(ops: dict) -> tuple[Callable, Callable]:
    """The default direct calls (see eager_functions): the ops below the autograd key, which only the
    dispatcher's kernel for the tensors' device then runs; the backward ops get a contiguous grad_out."""

    spectral, time_conv = ops["spectral_time_conv"], ops["time_conv"]
    spectral_backward, time_conv_backward = ops["spectral_time_conv_backward"], ops["time_conv_backward"]

    def forward(ctx, x, weight, negative_slope):
        with torch._C._AutoDispatchBelowAutograd():
            if negative_slope is None:
                return spectral(x, weight)
            return time_conv(x, weight, negative_slope)

    def backward(ctx, grad_out, x, weight, negative_slope):
        grad_out = grad_out.contiguous()
        with torch._C._AutoDispatchBelowAutograd():
            if negative_slope is None:
                return spectral_backward(grad_out, x, weight)
            return time_conv_backward(grad_out, x, weight, negative_slope)

    return forward, backward


def _eager_function(forward_op, backward_op, direct_forward, direct_backward) -> Callable:
    """forward_op as a function of (x, weight[, negative_slope]): launched directly when
    launches_directly (inside a plain autograd.Function when x or the weight requires grad: the ops'
    dispatcher autograd kernels are Python and cost more than this whole Function), through the
    dispatcher otherwise. Arguments are passed explicitly: a *args call costs ~0.2 us per call."""

    class Function(torch.autograd.Function):
        # The old-style forward(ctx, ...): a setup_context Function binds its arguments with
        # inspect.signature on every call (~25 us).
        @staticmethod
        def forward(ctx, x, weight, negative_slope):
            ctx.save_for_backward(x, weight)
            ctx.negative_slope = negative_slope
            return direct_forward(ctx, x, weight, negative_slope)

        @staticmethod
        def backward(ctx, grad_out):
            x, weight = ctx.saved_tensors
            if torch.is_grad_enabled():  # create_graph=True: the backward op's registered autograd records it
                args = _slope_args(ctx.negative_slope)
                grad_x, grad_weight = backward_op(grad_out.contiguous(), x, weight, *args)
            else:
                grad_x, grad_weight = direct_backward(ctx, grad_out, x, weight, ctx.negative_slope)
            return _where_needed(ctx, grad_x, grad_weight, 1)

    def call(x: torch.Tensor, weight: torch.Tensor, negative_slope: float | None = None) -> torch.Tensor:
        if not launches_directly(x, weight):  # the dispatcher, with the registered fake and autograd
            return forward_op(x, weight, *_slope_args(negative_slope))
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return Function.apply(x, weight, negative_slope)
        return direct_forward(None, x, weight, negative_slope)

    return call


def eager_functions(ops: dict, direct: tuple[Callable, Callable] | None = None) -> tuple[Callable, Callable]:
    """(spectral_time_conv(x, weight), time_conv(x, weight, negative_slope)) over a backend's ops, for
    its Backend record. `direct`: the backend's own (forward(ctx, x, weight, negative_slope),
    backward(ctx, grad_out, x, weight, negative_slope)), negative_slope None for spectral_time_conv,
    which eager calls on plain tensors run instead of the ops; ctx is the eager autograd's context (None
    when nothing requires grad), where the forward may keep what its backward needs. By default the
    ops below the autograd key."""
    direct = direct or _below_autograd(ops)
    return (
        _eager_function(ops["spectral_time_conv"], ops["spectral_time_conv_backward"], *direct),
        _eager_function(ops["time_conv"], ops["time_conv_backward"], *direct),
    )


def register_ops(ops: dict, direct: tuple[Callable, Callable] | None = None) -> tuple[Callable, Callable]:
    """Register fakes and autograd (twice differentiable) for a backend's four ops, given by role
    (ROLES) as OpOverloads (torch.ops.ns.op.default) or custom_op / triton_op objects. Returns
    eager_functions(ops, direct) for the backend's record."""
    if set(ops) != set(ROLES):
        raise ValueError(f"ops must have the roles {ROLES}, got {sorted(ops)}")
    for name in ("spectral_time_conv", "time_conv"):
        torch.library.register_fake(ops[name])(_fake_forward)
        torch.library.register_fake(ops[name + "_backward"])(_fake_backward)
    _register_autograd(ops)
    return eager_functions(ops, direct)
