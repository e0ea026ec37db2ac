"""Triton backend ("triton"): fused forward and backward kernels of the temporal spectral convolution.

    The maths and its notation (F, M, G, D, the R rows and their order, the transposed chain of the
    backward with the conjugate-transposed weights M*) are reference.py's. Here x [B, T, C_in, *S] is
    [B, T, C_in, P] with the trailing dims flattened to P pixels, and the kernels compute

        forward:   y = G M F x                    time_conv: y = x + leaky_relu(G M F x)
        backward:  g = dy                         time_conv: g = dy * leaky_relu'(s), s = G M F x recomputed
                   dx = G M* F g                  time_conv: + dy
                   grad_weight from the products of F x and dY = D F g, summed over the pixels

Kernels

    _spectral_mix_kernel    out = epilogue(residual, G M F in): y and time_conv's y (residual x),
                            time_conv's g (mask from s, residual dy), dx (conjugate weights, residual
                            dy for time_conv); the epilogue's factors are runtime scalars, so one
                            compiled kernel per (T, K, dtype) serves all of them. Each program owns
                            BLOCK_P pixels of one batch item and BLOCK_OUT output channels and loops
                            over the input channels in BLOCK_IN steps: it reads the [T, BLOCK_P,
                            BLOCK_IN] input tile once, transforms it along T in registers, and
                            accumulates the R rows of Y in R fp32 tiles; after the loop it applies G
                            and the epilogue and writes every output element once. Nothing
                            intermediate touches global memory. Programs that share a pixel tile are
                            adjacent in launch order, so for C_out > BLOCK_OUT the tile's later reads
                            hit L2.
    _spectral_weight_grad_kernel
                            dweight: program (in block, out block, pixel slice) accumulates the R
                            [BLOCK_IN, BLOCK_OUT] products of F x and D F g over its slice of the
                            B * P pixels and stores them to its own slot of a partial buffer; the
                            slots are then summed in a fixed order (deterministic). With
                            DSNO_KERNELS_TRITON_ATOMICS=1 the slices are atomically added into one
                            buffer instead (less memory, summation order not deterministic).

Channel mixing: per BLOCK_IN step and mode, the tl.dots [BLOCK_P x BLOCK_IN] @ [BLOCK_IN x BLOCK_OUT]
of (Xr, Xi) with (Wr, Wi) into the mode's two accumulators (one dot for DC / Nyquist), rather than
one stacked [R*BLOCK_IN] reduction: the stacked matrix is block-sparse (a mode mixes only its own two
rows), so stacking would multiply zeros (3.2x the tensor-core work at T=4, K=2) and read every weight
tile twice. Pixels are the dots' M dimension: the transformed input, computed in registers, is the A
operand, which the MMA takes from registers (on Hopper without a trip through shared memory, and on
Ampere without a copy per warp); the weight tiles, read from memory (L2 after the first program), are
the B operand. The DFT coefficients are compile-time constants (T and K are constexprs), with exact 0
and +-1 folded away: at T = 4 the transforms are additions only.

Precision: the tl.dot operands are in the input dtype (the transformed tile is rounded to it) and
accumulate in fp32 (fp64 for fp64 inputs). fp32 inputs go through the tensor cores as tf32 unless the
environment variable DSNO_KERNELS_FP32 is "ieee" (exact fp32) or "tf32x3" (three tf32 passes, close
to fp32); it is read on every call. In bf16 / fp16 that rounding moves time_conv's pre-activation s
by about 2^-9 of its scale, so where |s| is that small the LeakyReLU branch (forward and backward,
which agree with each other) may differ from an fp64 evaluation's.

Coverage: any T <= MAX_TIME_POINTS (32), 1 <= K <= T // 2 + 1, any channel counts, trailing dims and
strides (loads and stores are masked; blocks are powers of two >= 16, the tl.dot minimum, padded with
zeros). Larger T is handed to the next backend (Backend.max_time_points). Everything is unrolled over
T and the R accumulators live in registers, which is what T = 4 wants; from T ~ 10 the kernels spill
registers and compile for longer (tens of seconds at T = 32, K = 17).

Launch configurations come from `launch_configs(kernel, T, K, C_in, C_out, pixels, ...)`, pruned for
the device's shared memory and a register estimate; the candidates are autotuned per (T, K, C_in,
C_out, pixels, dtype) unless DSNO_KERNELS_TRITON_AUTOTUNE=0, which runs the first one untimed.

Registration: on a GPU the ops dsno_kernels::triton_{spectral_time_conv, time_conv}[_backward] are
torch.library.triton_op + wrap_triton, so torch.compile traces into the kernels. With
TRITON_INTERPRET=1 (set before importing dsno_kernels) the kernels run in Triton's interpreter on CPU
tensors, registered as torch.library.custom_op for the CPU (triton_op fails opcheck and compile
there); the interpreter gets one small configuration, and bf16 dot operands are upcast to fp32 after
being rounded to bf16 (its bf16 tl.dot is wrong, triton-lang/triton#11584), so it computes what the
GPU computes.
"""

import functools
import math
import os
from typing import Optional

import torch

from . import settings
from ._library import register_ops
from .api import Backend, register_backend
from .reference import mode_is_real

try:
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: Optional[ImportError] = None
except ImportError as error:  # CPU-only torch builds ship without Triton

    _TRITON_IMPORT_ERROR = error

    class _MissingTriton:
        """Keeps the kernel definitions below importable without Triton: decorators become no-ops
        and annotations placeholders. Nothing launches them (the backend reports it unavailable)."""

        def __getattr__(self, name):
            return lambda fn: fn

    triton = tl = _MissingTriton()

__all__ = ["MAX_TIME_POINTS", "INTERPRETING", "launch_configs", "num_rows"]

MAX_TIME_POINTS = 32
INTERPRETING = _TRITON_IMPORT_ERROR is None and os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")
FP32_PRECISION_ENV_VAR = settings.FP32
AUTOTUNE_ENV_VAR = settings.TRITON_AUTOTUNE
ATOMICS_ENV_VAR = settings.TRITON_ATOMICS


# ------------------------------------------------------------------------------------------------
# Compile-time helpers: the real DFT pieces as constants


# Compile-time functions may call only each other (Triton hashes their source into the kernel's), and
# each must be a `def` of its own name: Inductor re-emits a kernel's helpers by name when it compiles a
# graph around the triton_op (an alias of reference.mode_is_real was missing from its output on an H100).
@triton.constexpr_function
def _is_real_mode(k, T):
    """reference.mode_is_real: DC and, for even T, Nyquist."""
    return k == 0 or 2 * k == T


@triton.constexpr_function
def num_rows(T, K):
    """R: one row for DC / Nyquist, two (real, imag) for every other mode."""
    return sum(1 if _is_real_mode(k, T) else 2 for k in range(K))


@triton.constexpr_function
def _first_row(k):
    """Row index of mode k's real row: DC has one row, the modes after it two (Nyquist is last)."""
    return 0 if k == 0 else 2 * k - 1


@triton.constexpr_function
def _basis(k, t, T, imag, scaled):
    """Entry (mode k, time t) of F (scaled=False: cos(2 pi k t / T), imaginary row -sin) or of G
    (scaled=True: the same times c_k / T, c_k = 1 for DC / Nyquist and 2 otherwise). The angle is
    reduced to 2 pi j / T with integers so that 0 and +-1 come out exact and fold away."""
    j = k * t % T
    if imag:
        if 2 * j % T == 0:
            value = 0.0
        elif 4 * j == T:
            value = -1.0
        elif 4 * j == 3 * T:
            value = 1.0
        else:
            value = -math.sin(2.0 * math.pi * j / T)
    else:
        if j == 0:
            value = 1.0
        elif 2 * j == T:
            value = -1.0
        elif 4 * j == T or 4 * j == 3 * T:
            value = 0.0
        else:
            value = math.cos(2.0 * math.pi * j / T)
    if scaled:
        value *= (1.0 if _is_real_mode(k, T) else 2.0) / T
    return value


@triton.constexpr_function
def _first_time(imag):
    """The first t whose F entry is nonzero: t = 0 for real rows (cos 0 = 1), t = 1 for the
    imaginary rows, which only complex modes have (sin(2 pi k / T) != 0 unless 2k is 0 or T)."""
    return 1 if imag else 0


# ------------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _scaled(tile, COEF: tl.constexpr):
    """COEF * tile, with the products by +-1 resolved at compile time."""
    if COEF == 1.0:
        result = tile
    elif COEF == -1.0:
        result = -tile
    else:
        result = COEF * tile
    return result


@triton.jit
def _accumulate(acc, tile, COEF: tl.constexpr):
    """acc + COEF * tile, with the products by 0 and +-1 resolved at compile time."""
    if COEF == 0.0:
        result = acc
    elif COEF == 1.0:
        result = acc + tile
    elif COEF == -1.0:
        result = acc - tile
    else:
        result = acc + COEF * tile
    return result


@triton.jit
def _transform_row(
    tiles, k: tl.constexpr, T: tl.constexpr, IMAG: tl.constexpr, SCALED: tl.constexpr, ACC_DTYPE: tl.constexpr
):
    """One row of F @ tiles (SCALED=False) or G^T @ tiles (SCALED=True) in ACC_DTYPE, tiles being the
    T time slices (kept in the input dtype: half the registers for bf16 / fp16)."""
    first: tl.constexpr = _first_time(IMAG)
    row = _scaled(tiles[first].to(ACC_DTYPE), _basis(k, first, T, IMAG, SCALED))
    for t in tl.static_range(first + 1, T):
        row = _accumulate(row, tiles[t].to(ACC_DTYPE), _basis(k, t, T, IMAG, SCALED))
    return row


@triton.jit
def _synthesize(rows, t: tl.constexpr, T: tl.constexpr, K: tl.constexpr):
    """Time slice t of G @ rows; DC's entry, 1 / T, is never 0."""
    value = _scaled(rows[0], _basis(0, t, T, False, True))
    for k in tl.static_range(1, K):
        value = _accumulate(value, rows[_first_row(k)], _basis(k, t, T, False, True))
        if not _is_real_mode(k, T):
            value = _accumulate(value, rows[_first_row(k) + 1], _basis(k, t, T, True, True))
    return value


@triton.jit
def _load_time_tiles(ptr, stride_t, offsets, mask, T: tl.constexpr):
    """The T tiles ptr[t * stride_t + offsets] as a tuple (ptr a scalar, so that no per-t pointer
    tensor is hoisted out of the caller's loop and held in registers)."""
    tiles = ()
    for t in tl.static_range(T):
        tiles = tiles + (tl.load(ptr + t * stride_t + offsets, mask=mask, other=0.0),)
    return tiles


@triton.jit
def _dot_operand(tile, DOT_DTYPE: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """tile rounded to the dot dtype; with UPCAST_DOT (interpreter, bf16) carried on in fp32."""
    tile = tile.to(DOT_DTYPE)
    if UPCAST_DOT:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _row_operand(
    tiles,
    k: tl.constexpr,
    T: tl.constexpr,
    IMAG: tl.constexpr,
    SCALED: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """_transform_row as a tl.dot operand."""
    return _dot_operand(_transform_row(tiles, k, T, IMAG, SCALED, ACC_DTYPE), DOT_DTYPE, UPCAST_DOT)


@triton.jit
def _mma(a, b, acc, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b on the tensor cores, accumulating in acc's dtype (fp64 too: Triton 3.6 wants it said)."""
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)


@triton.jit
def _spectral_mix_kernel(
    in_ptr,  # [B, T, C_IN, P] strided: x (forward direction) or the time-domain gradient g (transposed)
    mix_ptr,  # [K, 2, C_IN, C_OUT] contiguous, per mode: (Wr, Wi) forward, (Wr^T, -Wi^T) for dx
    res_ptr,  # [B, T, C_OUT, P] strided: x or grad_out for the epilogues that read it, else unused
    out_ptr,  # [B, T, C_OUT, P] strided
    C_IN,
    C_OUT,
    P,
    stride_in_b,
    stride_in_t,
    stride_in_c,
    stride_in_p,
    stride_res_b,
    stride_res_t,
    stride_res_c,
    stride_res_p,
    stride_out_b,
    stride_out_t,
    stride_out_c,
    stride_out_p,
    has_residual,  # 0 or 1: whether res_ptr is read
    # The epilogue: out = where(s > 0, res_if_positive * res + s_if_positive * s,
    #                                  res_if_negative * res + s_if_negative * s)   (fp64: exact factors)
    res_if_positive: tl.float64,
    s_if_positive: tl.float64,
    res_if_negative: tl.float64,
    s_if_negative: tl.float64,
    T: tl.constexpr,
    K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
    BLOCK_IN: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # Tiles are [pixels, channels]: the pixels are the dots' M dimension, so the transformed input
    # (computed in registers) is the A operand, which the MMA takes from registers without copies per
    # warp, and the weight tile (read from memory) is the B operand.
    pid = tl.program_id(0)
    num_out_blocks = tl.cdiv(C_OUT, BLOCK_OUT)
    num_p_blocks = tl.cdiv(P, BLOCK_P)
    out_block = pid % num_out_blocks  # fastest: the programs sharing an input tile run together
    p_block = (pid // num_out_blocks) % num_p_blocks
    batch = (pid // (num_out_blocks * num_p_blocks)).to(tl.int64)

    offs_out = out_block * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    offs_p = p_block * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_out = offs_out < C_OUT
    mask_p = offs_p < P
    in_ptr += batch * stride_in_b

    dot_dtype: tl.constexpr = mix_ptr.dtype.element_ty
    acc_dtype: tl.constexpr = tl.float64 if dot_dtype == tl.float64 else tl.float32
    accs = ()
    for r in tl.static_range(num_rows(T, K)):
        accs = accs + (tl.zeros((BLOCK_P, BLOCK_OUT), dtype=acc_dtype),)

    # Offsets within a block are loop-invariant int32 tiles; the loop advances scalar base pointers.
    arange_in = tl.arange(0, BLOCK_IN)
    in_offsets = offs_p[:, None] * stride_in_p + arange_in[None, :] * stride_in_c
    mix_offsets = arange_in[:, None] * C_OUT + offs_out[None, :]
    matrix_size = C_IN * C_OUT
    for in_start in range(0, C_IN, BLOCK_IN):
        mask_in = in_start + arange_in < C_IN
        tiles = _load_time_tiles(
            in_ptr + in_start * stride_in_c, stride_in_t, in_offsets, mask_p[:, None] & mask_in[None, :], T
        )
        mix_block_ptr = mix_ptr + in_start * C_OUT
        mix_mask = mask_in[:, None] & mask_out[None, :]
        mixed = ()
        for k in tl.static_range(K):
            in_re = _row_operand(tiles, k, T, False, False, acc_dtype, dot_dtype, UPCAST_DOT)
            mix_re = tl.load(mix_block_ptr + (2 * k) * matrix_size + mix_offsets, mask=mix_mask, other=0.0)
            mix_re = _dot_operand(mix_re, dot_dtype, UPCAST_DOT)
            acc_re = _mma(in_re, mix_re, accs[_first_row(k)], INPUT_PRECISION)
            if _is_real_mode(k, T):
                mixed = mixed + (acc_re,)
            else:
                in_im = _row_operand(tiles, k, T, True, False, acc_dtype, dot_dtype, UPCAST_DOT)
                mix_im = tl.load(mix_block_ptr + (2 * k + 1) * matrix_size + mix_offsets, mask=mix_mask, other=0.0)
                mix_im = _dot_operand(mix_im, dot_dtype, UPCAST_DOT)
                # out_re = in_re Wr - in_im Wi ; out_im = in_re Wi + in_im Wr
                acc_re = _mma(-in_im, mix_im, acc_re, INPUT_PRECISION)
                acc_im = _mma(in_re, mix_im, accs[_first_row(k) + 1], INPUT_PRECISION)
                acc_im = _mma(in_im, mix_re, acc_im, INPUT_PRECISION)
                mixed = mixed + (acc_re, acc_im)
        accs = mixed

    # tl.full keeps the fp64 factors exact (the interpreter would round a bare Python float to fp32).
    res_pos = tl.full((BLOCK_P, BLOCK_OUT), res_if_positive, acc_dtype)
    s_pos = tl.full((BLOCK_P, BLOCK_OUT), s_if_positive, acc_dtype)
    res_neg = tl.full((BLOCK_P, BLOCK_OUT), res_if_negative, acc_dtype)
    s_neg = tl.full((BLOCK_P, BLOCK_OUT), s_if_negative, acc_dtype)
    out_mask = mask_p[:, None] & mask_out[None, :]
    out_offsets = offs_p[:, None] * stride_out_p + offs_out[None, :] * stride_out_c
    res_offsets = offs_p[:, None] * stride_res_p + offs_out[None, :] * stride_res_c
    out_ptr += batch * stride_out_b
    res_ptr += batch * stride_res_b
    for t in tl.static_range(T):
        s = _synthesize(accs, t, T, K)
        if has_residual:
            res = tl.load(res_ptr + t * stride_res_t + res_offsets, mask=out_mask, other=0.0).to(acc_dtype)
        else:
            res = tl.zeros((BLOCK_P, BLOCK_OUT), dtype=acc_dtype)
        value = tl.where(s > 0, res_pos * res + s_pos * s, res_neg * res + s_neg * s)
        tl.store(out_ptr + t * stride_out_t + out_offsets, value.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _spectral_weight_grad_kernel(
    x_ptr,  # [B, T, C_IN, P] strided
    grad_ptr,  # [B, T, C_OUT, P] strided: g, the gradient at the spectral output
    partial_ptr,  # [NUM_SLICES, R, C_IN, C_OUT] contiguous, fp32 (fp64 for fp64); one slice with atomics
    B,
    C_IN,
    C_OUT,
    P,
    NUM_SLICES,
    stride_x_b,
    stride_x_t,
    stride_x_c,
    stride_x_p,
    stride_g_b,
    stride_g_t,
    stride_g_c,
    stride_g_p,
    T: tl.constexpr,
    K: tl.constexpr,
    USE_ATOMICS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    BLOCK_IN: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    num_in_blocks = tl.cdiv(C_IN, BLOCK_IN)
    num_out_blocks = tl.cdiv(C_OUT, BLOCK_OUT)
    in_block = pid % num_in_blocks  # fastest: the programs of one slice read the same pixels together
    out_block = (pid // num_in_blocks) % num_out_blocks
    slice_id = pid // (num_in_blocks * num_out_blocks)

    offs_in = in_block * BLOCK_IN + tl.arange(0, BLOCK_IN)
    offs_out = out_block * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    mask_in = offs_in < C_IN
    mask_out = offs_out < C_OUT

    dot_dtype: tl.constexpr = x_ptr.dtype.element_ty
    acc_dtype: tl.constexpr = tl.float64 if dot_dtype == tl.float64 else tl.float32
    accs = ()
    for r in tl.static_range(num_rows(T, K)):
        accs = accs + (tl.zeros((BLOCK_IN, BLOCK_OUT), dtype=acc_dtype),)

    # The slice's share of the B * cdiv(P, BLOCK_P) pixel tiles (tiles never straddle batch items).
    num_p_blocks = tl.cdiv(P, BLOCK_P)
    num_tiles = B * num_p_blocks
    tiles_per_slice = tl.cdiv(num_tiles, NUM_SLICES)
    first_tile = slice_id * tiles_per_slice
    last_tile = tl.minimum(first_tile + tiles_per_slice, num_tiles)
    arange_p = tl.arange(0, BLOCK_P)
    x_offsets = offs_in[:, None] * stride_x_c + arange_p[None, :] * stride_x_p
    g_offsets = offs_out[:, None] * stride_g_c + arange_p[None, :] * stride_g_p
    for tile in range(first_tile, last_tile):
        batch = (tile // num_p_blocks).to(tl.int64)
        p_start = (tile % num_p_blocks) * BLOCK_P
        mask_p = p_start + arange_p < P
        x_tiles = _load_time_tiles(
            x_ptr + batch * stride_x_b + p_start * stride_x_p,
            stride_x_t,
            x_offsets,
            mask_in[:, None] & mask_p[None, :],
            T,
        )
        g_tiles = _load_time_tiles(
            grad_ptr + batch * stride_g_b + p_start * stride_g_p,
            stride_g_t,
            g_offsets,
            mask_out[:, None] & mask_p[None, :],
            T,
        )
        summed = ()
        for k in tl.static_range(K):
            x_re = _row_operand(x_tiles, k, T, False, False, acc_dtype, dot_dtype, UPCAST_DOT)
            g_re = tl.trans(_row_operand(g_tiles, k, T, False, True, acc_dtype, dot_dtype, UPCAST_DOT))
            acc_re = _mma(x_re, g_re, accs[_first_row(k)], INPUT_PRECISION)
            if _is_real_mode(k, T):
                summed = summed + (acc_re,)
            else:
                x_im = _row_operand(x_tiles, k, T, True, False, acc_dtype, dot_dtype, UPCAST_DOT)
                g_im = tl.trans(_row_operand(g_tiles, k, T, True, True, acc_dtype, dot_dtype, UPCAST_DOT))
                # dWr += Xr dYr^T + Xi dYi^T ; dWi += Xr dYi^T - Xi dYr^T
                acc_re = _mma(x_im, g_im, acc_re, INPUT_PRECISION)
                acc_im = _mma(x_re, g_im, accs[_first_row(k) + 1], INPUT_PRECISION)
                acc_im = _mma(-x_im, g_re, acc_im, INPUT_PRECISION)
                summed = summed + (acc_re, acc_im)
        accs = summed

    rows: tl.constexpr = num_rows(T, K)
    matrix_size = C_IN * C_OUT
    if USE_ATOMICS:
        rows_ptr = partial_ptr
    else:
        rows_ptr = partial_ptr + slice_id.to(tl.int64) * rows * matrix_size
    offsets = offs_in[:, None] * C_OUT + offs_out[None, :]
    mask = mask_in[:, None] & mask_out[None, :]
    for r in tl.static_range(rows):
        if USE_ATOMICS:
            tl.atomic_add(rows_ptr + r * matrix_size + offsets, accs[r], mask=mask)
        else:
            tl.store(rows_ptr + r * matrix_size + offsets, accs[r], mask=mask)


# ------------------------------------------------------------------------------------------------
# Launch configurations

# (BLOCK_OUT, BLOCK_IN, BLOCK_P, num_warps, num_stages), best guess first. BLOCK_P is the dots' M:
# 64 rows per warpgroup on Hopper. The first is for the CIFAR-10 shape (T=4, K=2, C=256, bf16): three
# 128 x 64 fp32 accumulators over two warpgroups, 210 registers and no spills on sm_90 (ptxas), three
# stages so that a BLOCK_IN step's loads are in flight during the previous step's MMAs.
_MIX_CANDIDATES = (
    (64, 32, 128, 8, 3),
    (128, 32, 64, 8, 3),
    (64, 32, 128, 8, 4),
    (64, 32, 128, 8, 2),
    (64, 32, 64, 4, 4),
    (64, 32, 64, 4, 3),
    (32, 32, 64, 4, 3),
    (16, 16, 64, 4, 2),
    (16, 16, 16, 4, 1),
)
# (BLOCK_IN, BLOCK_OUT, BLOCK_P, num_warps, num_stages); BLOCK_IN is the dots' M, BLOCK_P their K.
_WEIGHT_GRAD_CANDIDATES = (
    (64, 64, 32, 8, 3),
    (64, 64, 32, 8, 2),
    (128, 64, 32, 8, 2),
    (64, 64, 16, 4, 2),
    (32, 32, 32, 4, 2),
    (16, 16, 16, 4, 1),
)
# The autotuner times at most this many (the first that fit), to keep first calls short.
_MAX_TIMED_CONFIGS = 4
# Registers per thread the live tiles may take; ptxas reports 210 where the estimate below says 196
# (the first mix candidate at T=4, K=2, bf16, sm_90), and spills where it exceeds 255 at larger T.
_REGISTER_BUDGET = 255


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=None)
def _device_limits(device_index: int) -> tuple[int, int]:
    """(shared memory per block, multiprocessor count) of a CUDA device."""
    props = torch.cuda.get_device_properties(device_index)
    shared = getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024
    return shared, props.multi_processor_count


def _tile_area(kernel: str, config) -> int:
    """Output elements per program: BLOCK_OUT * BLOCK_P (mix), BLOCK_IN * BLOCK_OUT (weight grad)."""
    return config[0] * (config[2] if kernel == "mix" else config[1])


def _shared_memory(device: torch.device) -> Optional[int]:
    """Shared memory per block of a CUDA device; None (no limit) for the interpreter's CPU tensors."""
    return _device_limits(_device_index(device))[0] if device.type == "cuda" else None


def launch_configs(
    kernel: str,
    T: int,
    K: int,
    C_in: int,
    C_out: int,
    pixels: int,
    element_size: int,
    shared_memory: Optional[int],
) -> list[tuple[int, int, int, int, int]]:
    """The launch configurations worth timing for one problem, best guess first: the candidates of
    `kernel` ("mix" or "weight_grad") whose live tiles fit the register budget and `shared_memory`
    (bytes per block, None for no limit), with no block more than one power of two beyond its extent
    (C_out, C_in or the pixels per batch item) and no tile under a quarter of the first one's (small
    tiles are for small problems). At most _MAX_TIMED_CONFIGS; one when interpreting or with
    DSNO_KERNELS_TRITON_AUTOTUNE=0; never empty."""
    R = num_rows(T, K)
    acc_size = 8 if element_size == 8 else 4
    out_extent = max(16, _next_power_of_2(C_out))
    in_extent = max(16, _next_power_of_2(C_in))
    pixel_extent = max(16, _next_power_of_2(pixels))
    candidates = _MIX_CANDIDATES if kernel == "mix" else _WEIGHT_GRAD_CANDIDATES
    kept = []
    for config in candidates:
        # Registers (4 bytes) of the live tiles: the accumulators, the T input tiles (converted to
        # the accumulation dtype) and two transformed rows, the weight tile. The weight-gradient
        # kernel's two transformed operands are also copied per warp for the MMA: its input tiles
        # count twice.
        if kernel == "mix":
            block_out, block_in, block_p, warps, stages = config
            live = (R * block_out * block_p + (T + 2) * block_in * block_p) * acc_size / 4
            live += block_out * block_in * element_size / 4
            staged = R * block_in * block_out + T * block_in * block_p
        else:
            block_in, block_out, block_p, warps, stages = config
            live = (R * block_in * block_out + (2 * T + 2) * (block_in + block_out) * block_p) * acc_size / 4
            staged = T * (block_in + block_out) * block_p
        if live > _REGISTER_BUDGET * 32 * warps:
            continue
        if block_out > out_extent or block_in > in_extent or block_p > pixel_extent:
            continue
        if shared_memory is not None and stages * staged * element_size > shared_memory:
            continue
        if kept and 4 * _tile_area(kernel, config) < _tile_area(kernel, kept[0]):
            continue
        kept.append(config)
    if not kept:
        kept = [candidates[-1]]
    if INTERPRETING or settings.get(AUTOTUNE_ENV_VAR) == "0":
        return kept[:1]
    return kept[:_MAX_TIMED_CONFIGS]


_KERNELS = {"mix": _spectral_mix_kernel, "weight_grad": _spectral_weight_grad_kernel}
_BLOCK_NAMES = {"mix": ("BLOCK_OUT", "BLOCK_IN", "BLOCK_P"), "weight_grad": ("BLOCK_IN", "BLOCK_OUT", "BLOCK_P")}
_AUTOTUNE_KEYS = {
    "mix": ["C_IN", "C_OUT", "P", "T", "K", "has_residual"],
    "weight_grad": ["B", "C_IN", "C_OUT", "P", "NUM_SLICES", "T", "K", "USE_ATOMICS"],
}


def _config_kwargs(kernel: str, config) -> dict:
    *blocks, warps, stages = config
    return {**dict(zip(_BLOCK_NAMES[kernel], blocks)), "num_warps": warps, "num_stages": stages}


@functools.lru_cache(maxsize=None)
def _autotuned(kernel: str, configs: tuple):
    """The kernel autotuned over `configs` (one autotuner per distinct candidate list, so that
    torch.compile, which times an autotuner's whole list, sees only the pruned one)."""
    triton_configs = []
    for config in configs:
        kwargs = _config_kwargs(kernel, config)
        warps, stages = kwargs.pop("num_warps"), kwargs.pop("num_stages")
        triton_configs.append(triton.Config(kwargs, num_warps=warps, num_stages=stages))
    # The weight-gradient buffer is accumulated into with atomics: zero it before every timed run.
    reset = ["partial_ptr"] if kernel == "weight_grad" else None
    return triton.autotune(configs=triton_configs, key=_AUTOTUNE_KEYS[kernel], reset_to_zero=reset)(_KERNELS[kernel])


def _launch(kernel: str, args: dict, grid, configs: list) -> None:
    if len(configs) == 1:
        fn, meta = _KERNELS[kernel], _config_kwargs(kernel, configs[0])
    else:
        fn, meta = _autotuned(kernel, tuple(configs)), {}
    if not INTERPRETING:  # lets torch.compile trace into the launch
        fn = torch.library.wrap_triton(fn)
    fn[grid](**args, **meta)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _input_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: for fp32 from DSNO_KERNELS_FP32 (default tf32); exact otherwise."""
    if dtype != torch.float32:
        return "ieee"
    return settings.get(FP32_PRECISION_ENV_VAR)


def _dot_flags(dtype: torch.dtype) -> dict:
    return {"INPUT_PRECISION": _input_precision(dtype), "UPCAST_DOT": INTERPRETING and dtype == torch.bfloat16}


# Epilogues of the mix kernel by name: (reads the residual, its factors (res, s) where s > 0, where s <= 0).
def _epilogue(name: str, negative_slope: float) -> dict:
    reads_residual, positive, negative = {
        "store": (0, (0.0, 1.0), (0.0, 1.0)),  # s
        "leaky_relu_residual": (1, (1.0, 1.0), (1.0, negative_slope)),  # x + leaky_relu(s): time_conv
        "residual": (1, (1.0, 1.0), (1.0, 1.0)),  # dy + s: time_conv's dx
        "leaky_relu_grad": (1, (1.0, 0.0), (negative_slope, 0.0)),  # dy * leaky_relu'(s), torch's convention
    }[name]
    return dict(
        has_residual=reads_residual,
        res_if_positive=positive[0], s_if_positive=positive[1],
        res_if_negative=negative[0], s_if_negative=negative[1],
    )  # fmt: skip


def _mix_launch(inp, mix, residual, out, *, epilogue: str, negative_slope: float = 0.0, shared_memory=None):
    """(kernel arguments, grid, configurations) for out [B, T, C_out, P] = epilogue(residual, s), with
    s = G M F inp; mix [K, 2, C_in, C_out] contiguous (the real and imaginary mixing matrices per
    mode); inp, residual and out of any strides; configurations for `shared_memory` bytes per block."""
    B, T, C_in, P = inp.shape
    C_out, K = out.shape[2], mix.shape[0]
    args = dict(
        in_ptr=inp, mix_ptr=mix, res_ptr=residual, out_ptr=out, C_IN=C_in, C_OUT=C_out, P=P,
        stride_in_b=inp.stride(0), stride_in_t=inp.stride(1), stride_in_c=inp.stride(2), stride_in_p=inp.stride(3),
        stride_res_b=residual.stride(0), stride_res_t=residual.stride(1),
        stride_res_c=residual.stride(2), stride_res_p=residual.stride(3),
        stride_out_b=out.stride(0), stride_out_t=out.stride(1), stride_out_c=out.stride(2), stride_out_p=out.stride(3),
        **_epilogue(epilogue, negative_slope), T=T, K=K, **_dot_flags(inp.dtype),
    )  # fmt: skip

    def grid(meta):
        return (B * _cdiv(P, meta["BLOCK_P"]) * _cdiv(C_out, meta["BLOCK_OUT"]),)

    return args, grid, launch_configs("mix", T, K, C_in, C_out, P, inp.element_size(), shared_memory)


def _launch_mix(inp, mix, residual, out, **epilogue) -> None:
    _launch("mix", *_mix_launch(inp, mix, residual, out, **epilogue, shared_memory=_shared_memory(inp.device)))


def _weight_grad_slices(B: int, P: int, C_in: int, C_out: int, R: int, device: torch.device) -> int:
    """How many pixel slices the weight gradient is split into: about four programs per
    multiprocessor (counting 64 x 64 channel blocks), no more than there are 16-pixel tiles, and a
    partial buffer of at most 2^26 elements."""
    processors = _device_limits(_device_index(device))[1] if device.type == "cuda" else 2
    programs_per_slice = _cdiv(C_in, 64) * _cdiv(C_out, 64)
    slices = min(_cdiv(4 * processors, programs_per_slice), B * _cdiv(P, 16), (1 << 26) // (R * C_in * C_out))
    return max(1, slices)


def _weight_grad_launch(x, grad, partial, *, K: int, slices: int, use_atomics: bool, shared_memory=None):
    """(kernel arguments, grid, configurations) for the weight-gradient partial sums of x [B, T, C_in, P]
    and grad [B, T, C_out, P] (any strides) over K modes into partial [slices or 1, R, C_in, C_out]."""
    B, T, C_in, P = x.shape
    C_out = grad.shape[2]
    args = dict(
        x_ptr=x, grad_ptr=grad, partial_ptr=partial, B=B, C_IN=C_in, C_OUT=C_out, P=P, NUM_SLICES=slices,
        stride_x_b=x.stride(0), stride_x_t=x.stride(1), stride_x_c=x.stride(2), stride_x_p=x.stride(3),
        stride_g_b=grad.stride(0), stride_g_t=grad.stride(1), stride_g_c=grad.stride(2), stride_g_p=grad.stride(3),
        T=T, K=K, USE_ATOMICS=use_atomics, **_dot_flags(x.dtype),
    )  # fmt: skip

    def grid(meta):
        return (slices * _cdiv(C_in, meta["BLOCK_IN"]) * _cdiv(C_out, meta["BLOCK_OUT"]),)

    return args, grid, launch_configs("weight_grad", T, K, C_in, C_out, P, x.element_size(), shared_memory)


def _weight_grad(x, grad, K: int) -> torch.Tensor:
    """sum over pixels of the products of F x and G^T grad: [C_in, C_out, K, 2] in the accumulation
    dtype. x [B, T, C_in, P], grad [B, T, C_out, P], any strides."""
    B, T, C_in, P = x.shape
    C_out = grad.shape[2]
    R = num_rows(T, K)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    use_atomics = settings.get(ATOMICS_ENV_VAR) == "1"
    slices = _weight_grad_slices(B, P, C_in, C_out, R, x.device)
    if use_atomics:
        partial = torch.zeros((1, R, C_in, C_out), dtype=acc_dtype, device=x.device)
    else:
        partial = torch.empty((slices, R, C_in, C_out), dtype=acc_dtype, device=x.device)
    launch = _weight_grad_launch(
        x, grad, partial, K=K, slices=slices, use_atomics=use_atomics, shared_memory=_shared_memory(x.device)
    )
    _launch("weight_grad", *launch)
    rows = partial.sum(dim=0)  # the deterministic second stage: slices summed in a fixed order
    zeros = rows.new_zeros(C_in, C_out)
    modes, row = [], 0
    for k in range(K):
        if mode_is_real(k, T):  # irfft ignores the imaginary part of DC and Nyquist: its gradient is 0
            modes.append(torch.stack([rows[row], zeros]))
            row += 1
        else:
            modes.append(rows[row : row + 2])
            row += 2
    return torch.stack(modes).permute(2, 3, 0, 1)


# ------------------------------------------------------------------------------------------------
# The ops


def _as_pixels(t: torch.Tensor) -> torch.Tensor:
    """[B, T, C, *S] -> [B, T, C, P]: a view when the trailing dims merge, else a copy."""
    return t.reshape(*t.shape[:3], math.prod(t.shape[3:]))


def _pixels_view(t: torch.Tensor) -> Optional[torch.Tensor]:
    """[B, T, C, *S] -> [B, T, C, P] as a view of t's memory, or None when the trailing dims do not merge."""
    try:
        return t.view(*t.shape[:3], math.prod(t.shape[3:]))
    except RuntimeError:
        return None


def _forward_mix(weight: torch.Tensor) -> torch.Tensor:
    """The forward mixing matrices [K, 2, C_in, C_out]: (Wr, Wi) per mode."""
    return weight.permute(2, 3, 0, 1).contiguous()


def _transposed_mix(weight: torch.Tensor) -> torch.Tensor:
    """The transposed chain's [K, 2, C_out, C_in]: (Wr^T, -Wi^T) per mode. With G^T = D F (D the per-mode
    c_k / T, which commutes with the per-mode mixing) the backward F^T M^T G^T = G M* F is the forward
    chain with the conjugate weights, so one kernel serves both."""
    conjugate = torch.stack((weight[..., 0], weight[..., 1].neg()))  # [2, C_in, C_out, K]
    return conjugate.permute(3, 0, 2, 1).contiguous()


def _check_32_bit_offsets(x: torch.Tensor, weight: torch.Tensor) -> None:
    """The kernels index within one batch item, and within the weights, with 32-bit offsets."""
    limit = 2**31
    span = sum((size - 1) * abs(stride) for size, stride in zip(x.shape[1:], x.stride()[1:]))
    per_item = max(span + 1, x.shape[1] * weight.shape[1] * math.prod(x.shape[3:]))
    if per_item >= limit or weight.numel() >= limit:
        raise ValueError(
            f"the triton backend needs each batch item of x and of the output, and the weight, to span "
            f"fewer than 2^31 elements; got x {tuple(x.shape)} (strides {x.stride()}) and weight "
            f"{tuple(weight.shape)}: use another backend"
        )


def _forward(x: torch.Tensor, weight: torch.Tensor, epilogue: str, negative_slope: float) -> torch.Tensor:
    _check_32_bit_offsets(x, weight)
    C_out = weight.shape[1]
    out = x.new_empty((x.shape[0], x.shape[1], C_out, *x.shape[3:]))
    if out.numel() > 0:
        x_pixels = _as_pixels(x)
        mix = _forward_mix(weight)
        _launch_mix(x_pixels, mix, x_pixels, _pixels_view(out), epilogue=epilogue, negative_slope=negative_slope)
    return out


def _backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, negative_slope: Optional[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight); negative_slope None for spectral_time_conv, the slope for time_conv."""
    _check_32_bit_offsets(x, weight)
    K = weight.shape[2]
    is_time_conv = negative_slope is not None
    grad_x, grad_weight = torch.empty_like(x), torch.empty_like(weight)
    x_pixels, dy_pixels = _as_pixels(x), _as_pixels(grad_out)
    if is_time_conv and dy_pixels.numel() > 0:
        # g = dy * leaky_relu'(s), s recomputed by the forward kernel (nothing was saved for it)
        grad = torch.empty(dy_pixels.shape, dtype=grad_out.dtype, device=grad_out.device)
        _launch_mix(
            x_pixels, _forward_mix(weight), dy_pixels, grad, epilogue="leaky_relu_grad", negative_slope=negative_slope
        )
    else:
        grad = dy_pixels
    if grad_x.numel() > 0:
        grad_x_pixels = _pixels_view(grad_x)
        target = grad_x_pixels if grad_x_pixels is not None else torch.empty_like(x_pixels)
        _launch_mix(
            grad, _transposed_mix(weight), dy_pixels, target, epilogue="residual" if is_time_conv else "store"
        )
        if grad_x_pixels is None:
            grad_x.copy_(target.view(x.shape))
    if grad_weight.numel() > 0:
        if x_pixels.shape[0] * x_pixels.shape[3] == 0:
            grad_weight.zero_()
        else:
            grad_weight.copy_(_weight_grad(x_pixels, grad, K))
    return grad_x, grad_weight


def _triton_spectral_time_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _forward(x, weight, "store", 0.0)


def _triton_time_conv(x: torch.Tensor, weight: torch.Tensor, negative_slope: float) -> torch.Tensor:
    return _forward(x, weight, "leaky_relu_residual", negative_slope)


def _triton_spectral_time_conv_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward(grad_out, x, weight, None)


def _triton_time_conv_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, negative_slope: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward(grad_out, x, weight, negative_slope)


# ------------------------------------------------------------------------------------------------
# Registration


def _unavailable_reason() -> Optional[str]:
    if _TRITON_IMPORT_ERROR is not None:
        return f"Triton is not installed ({_TRITON_IMPORT_ERROR})"
    if INTERPRETING:
        return None
    if not torch.cuda.is_available():
        return (
            "no CUDA device is visible to PyTorch (TRITON_INTERPRET=1, set before importing dsno_kernels, "
            "runs the Triton kernels on CPU tensors in Triton's interpreter)"
        )
    if torch.version.hip is None and torch.cuda.get_device_capability() < (8, 0):
        return f"the kernels need an NVIDIA GPU of compute capability 8.0 or newer, got {torch.cuda.get_device_name()}"
    return None


def _define_op(name: str, fn):
    """dsno_kernels::triton_<name>: triton_op on a GPU (torch.compile traces into the kernels), a CPU
    custom_op under the interpreter (where triton_op fails opcheck and compile)."""
    qualified = f"dsno_kernels::triton_{name}"
    if INTERPRETING:
        return torch.library.custom_op(qualified, fn, mutates_args=(), device_types="cpu")
    return torch.library.triton_op(qualified, fn, mutates_args=())


_OPS: dict = {}
if _TRITON_IMPORT_ERROR is None:
    _OPS = {
        "spectral_time_conv": _define_op("spectral_time_conv", _triton_spectral_time_conv),
        "time_conv": _define_op("time_conv", _triton_time_conv),
        "spectral_time_conv_backward": _define_op("spectral_time_conv_backward", _triton_spectral_time_conv_backward),
        "time_conv_backward": _define_op("time_conv_backward", _triton_time_conv_backward),
    }
    _spectral_time_conv, _time_conv = register_ops(_OPS)
else:

    def _spectral_time_conv(*args):
        raise RuntimeError(_unavailable_reason())

    _time_conv = _spectral_time_conv


register_backend(
    Backend(
        name="triton",
        device_types=("cpu",) if INTERPRETING else ("cuda",),
        spectral_time_conv=_spectral_time_conv,
        time_conv=_time_conv,
        unavailable_reason=_unavailable_reason,
        max_time_points=MAX_TIME_POINTS,
        ops=_OPS,
        # Where the extension has no CUDA kernels, Triton runs CUDA tensors; never auto-picked when interpreting.
        auto_priority={} if INTERPRETING else {"cuda": 10},
        benchmark_device="cuda",
        interpreted=INTERPRETING,
        fp32_via_tf32_on_cuda=True,
    )
)
