"""Triton backend ("triton"): fused forward and backward kernels of the temporal spectral convolution.

The maths and its notation are reference.py's (F, M, G, D, the R rows and their order, M* the mix of
the conjugate-transposed weight). With x [B, T, C_in, *S] seen as [B, T, C_in, P] (P pixels):

    forward    y = G M F x                  time_conv: y = x + leaky_relu(s), s = G M F x
    backward   dx = G M* F g                g = dy; time_conv: g = dy * leaky_relu'(s), dx gets + dy
               grad_weight = sum over the pixels of the products of F x and dY = D F g

Launch plan (T <= 32; Coverage below for larger T): the forward is one launch; the backward is
(time_conv) a mask pass that recomputes s and stores s > 0 as 1 bit per element, then one launch whose
first programs compute dx and the others grad_weight's pixel slices, and, when there is more than one
slice, one launch that sums the slices in a fixed order (deterministic). Nothing of forward size is
written but y and dx.

A program's tile is BLOCK_P pixels of one batch item by BLOCK_OUT output channels. It loops over the
input channels in BLOCK_IN steps, reading each [T, BLOCK_P, BLOCK_IN] input tile once, transforming it
along T in registers and accumulating the R rows of Y in R fp32 tiles (fp64 for fp64); then it applies
G and the epilogue and writes every output element once. Tiles are numbered output-channel block
fastest, then pixel tile, then batch item, so the programs that share an input tile run together and
its later reads hit L2; a persistent grid (autotuning candidates) keeps that order. The channel mixing
is per mode and BLOCK_IN step: tl.dots [BLOCK_P x BLOCK_IN] @ [BLOCK_IN x BLOCK_OUT] of (Xr, Xi) with
(Wr, Wi), pixels as the M dimension so that the transformed tile, computed in registers, is the A
operand (a stacked [R * BLOCK_IN] reduction would multiply the block-sparse zeros). The weight is read
through its strides, in its [C_in, C_out, K, 2] layout. The forward's and the mask pass's configurations
(configs.py) are autotuned per problem unless DSNO_KERNELS_TRITON_AUTOTUNE=0 (the first, untimed);
the backward takes the first configuration of each half.

Precision: the dot operands are in the input dtype (the transformed tile rounded to it), accumulating
in fp32 (fp64 for fp64). fp32 goes through tf32 unless DSNO_KERNELS_FP32 is "ieee" (exact) or "tf32x3"
(three tf32 passes); an eager backward uses its forward's setting. In bf16 / fp16 that rounding moves
time_conv's s by about 2^-9 of its scale, so where |s| is that small the LeakyReLU branch (forward and
backward agree) may differ from an fp64 evaluation's.

Coverage: every T, 1 <= K <= T // 2 + 1, any channel counts, trailing dims and strides (masked loads
and stores; blocks are powers of two >= 16, tl.dot's minimum). The kernels above unroll everything over
T, which is what T = 4 wants; from T ~ 10 they spill and compile slowly (tens of seconds at T = 32,
K = 17), so they take T <= MAX_FUSED_TIME_POINTS (32) and larger T (the FNO-1D layers) takes the
DFT-as-GEMM path (gemm_kernels.py, gemm.py): the same maths as tl.dot loops over blocks of T, modes and
channels, three launches forward and five or six backward, the spectra [B * P, K, 2, C] in between.

Host path: what a call needs but its tensors is planned once per (shapes, strides, dtype, device
limits, settings) and cached; a call allocates its outputs and launches with the pointers. Nothing
depends on the data (no host sync, no data-dependent allocation): the ops can be captured in CUDA
graphs. Under TRITON_INTERPRET=1 (set before importing dsno_kernels) the kernels run in Triton's
interpreter on CPU tensors, with bf16 dot operands upcast to fp32 after rounding (its bf16 tl.dot is
wrong, triton-lang/triton#11584), so it computes what the GPU computes.

    runtime.py        Triton or stand-ins, INTERPRETING, MAX_FUSED_TIME_POINTS
    dft.py            the DFT entries as compile-time constants, the transforms along T
    tiles.py          a tile's loads, the LeakyReLU bit mask, the tl.dot operands
    kernels.py        the fused kernels (T <= 32)
    gemm_kernels.py   the DFT-as-GEMM kernels (T > 32)
    gemm.py           their configurations, launch plans and per-call records
    configs.py        DeviceLimits, candidate configurations, register budgets, launch_configs
    plans.py          launch plans: pure functions of the problem and DeviceLimits
    calls.py          per-call records: the plans with a call's arguments bound
    ops.py            running a call, the torch.library ops, the backend's registration
    introspection.py  the launches recorded with the launcher stubbed, and the kernels compiled for
                      sm_80 / sm_90 without a GPU (tests, benchmarks/kernel_report.py)
"""

from .calls import BackwardCall, ForwardCall, backward_call, check_32_bit_offsets, forward_call
from .configs import (
    A100,
    GRAD_WEIGHT_CANDIDATES,
    H100,
    MAX_TIMED_CONFIGS,
    MIX_CANDIDATES,
    DeviceLimits,
    device_limits,
    launch_configs,
    register_budgets,
)
from .dft import basis, is_real_mode, num_rows
from .ops import OPS, autotuning, fp32_precision, launch_backward, launch_forward, stand_in
from .plans import BackwardPlan, BoundLaunch, Launch, backward_plan, mix_grid, mix_meta, mix_plan, mix_variants
from .runtime import INTERPRETING, MAX_FUSED_TIME_POINTS, TRITON_IMPORT_ERROR

__all__ = [
    "MAX_FUSED_TIME_POINTS",
    "INTERPRETING",
    "TRITON_IMPORT_ERROR",
    "DeviceLimits",
    "A100",
    "H100",
    "device_limits",
    "MIX_CANDIDATES",
    "GRAD_WEIGHT_CANDIDATES",
    "MAX_TIMED_CONFIGS",
    "register_budgets",
    "launch_configs",
    "is_real_mode",
    "num_rows",
    "basis",
    "Launch",
    "BoundLaunch",
    "BackwardPlan",
    "mix_meta",
    "mix_grid",
    "mix_variants",
    "mix_plan",
    "backward_plan",
    "ForwardCall",
    "BackwardCall",
    "forward_call",
    "backward_call",
    "check_32_bit_offsets",
    "launch_forward",
    "launch_backward",
    "fp32_precision",
    "autotuning",
    "OPS",
    "stand_in",
]
