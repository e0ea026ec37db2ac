"""torch.library plumbing shared by every compiled backend: the fake (meta) implementations and the
autograd formulas, registered once per (forward op, backward op) pair.

Forward ops take (x, weight) or (x, weight, negative_slope) and return y; backward ops take
(grad_out, x, weight[, negative_slope]) and return (grad_x, grad_weight). The backward recomputes
what it needs from x and weight, so the forward saves only its inputs. Every output is a new
contiguous tensor, whatever the strides of the inputs.
"""

from __future__ import annotations

import torch


def _fake_forward(x, weight, *slope):
    torch._check(x.dim() >= 3, lambda: "x must be [B, T, C_in, *S]")
    torch._check(weight.dim() == 4 and weight.shape[3] == 2, lambda: "weight must be [C_in, C_out, K, 2]")
    torch._check(weight.shape[0] == x.shape[2], lambda: "weight.shape[0] must equal x.shape[2]")
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[1], *x.shape[3:]))


def _fake_backward(grad_out, x, weight, *slope):
    torch._check(grad_out.shape[:2] == x.shape[:2], lambda: "grad_out must match the forward output")
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def register_op_pair(forward_op, backward_op) -> None:
    """Fake implementations for both ops and the autograd formula of the forward op.

    `forward_op` / `backward_op` are OpOverloads (torch.ops.ns.op.default) or custom_op objects."""
    torch.library.register_fake(forward_op)(_fake_forward)
    torch.library.register_fake(backward_op)(_fake_backward)

    def setup_context(ctx, inputs, output):
        x, weight, *slope = inputs
        ctx.save_for_backward(x, weight)
        ctx.slope = slope

    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x, grad_weight = backward_op(grad_out.contiguous(), x, weight, *ctx.slope)
        grads = (
            grad_x if ctx.needs_input_grad[0] else None,
            grad_weight if ctx.needs_input_grad[1] else None,
        )
        return grads + (None,) * len(ctx.slope)

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
