"""Triton backend ("triton"): fused forward and backward kernels of the temporal spectral convolution.

    The maths and its notation (F, M, G, D, the R rows and their order, the transposed chain of the
    backward with the conjugate-transposed weights M*) are reference.py's. Here x [B, T, C_in, *S] is
    [B, T, C_in, P] with the trailing dims flattened to P pixels, and the kernels compute

        forward:   y = G M F x                    time_conv: y = x + leaky_relu(G M F x)
        backward:  g = dy                         time_conv: g = dy * leaky_relu'(s), s = G M F x recomputed
                   dx = G M* F g                  time_conv: + dy
                   grad_weight from the products of F x and dY = D F g, summed over the pixels

Kernels (launch plan: forward one launch; backward at most two plus one deterministic reduction)

    _spectral_mix_kernel    out = epilogue(residual, G M F in): y and time_conv's y (residual x), or
                            with STORE_MASK the backward's mask pass: s > 0 as 1 bit per element
                            ([B, T, C, cdiv(P, 32)] int32 words), where g = dy * leaky_relu'(s) would
                            be a tensor of forward size. The epilogue's factors are runtime scalars.
                            A tile (a program's work) is BLOCK_P pixels of one batch item and
                            BLOCK_OUT output channels; the program loops over the input channels
                            in BLOCK_IN steps: it reads
                            the [T, BLOCK_P, BLOCK_IN] input tile once, transforms it along T in
                            registers, and accumulates the R rows of Y in R fp32 tiles; after the
                            loop it applies G and the epilogue and writes every output element once.
                            Nothing intermediate touches global memory. Tiles are numbered output-
                            channel block fastest, then pixel tile, then batch item: the programs
                            that share a pixel tile are adjacent in launch order, so for C_out >
                            BLOCK_OUT the tile's later reads hit L2. The weight is read through its
                            strides ([C_in, C_out, K, 2] as given: no per-call copy).
                            Persistent mode (PERSISTENT > 0; autotuning candidates only): a grid of
                            at most SMs x resident programs, program i taking tiles i, i + grid,
                            i + 2 grid, ... in that numbering. The programs resident at one time
                            hold consecutive tiles, so a pixel tile's output-channel blocks still
                            run together and read its x tile from L2 while it is hot, and the grid
                            has no tail wave of partly filled SMs.
    _spectral_backward_kernel
                            both halves of the backward in one launch: the first programs compute
                            dx = G M* F g (the mix program with the weight's channel strides swapped
                            and the imaginary part negated; + dy for time_conv), the others the
                            weight gradient's pixel slices. For time_conv both read g as dy times the
                            mask's bit (1 or the slope). Weight-gradient program (in block, out block,
                            pixel slice) accumulates the R [BLOCK_IN, BLOCK_OUT] products of F x and
                            D F g over its slice of the B * P pixels and stores them in the weight's
                            layout: straight into grad_weight when there is one slice, else into its
                            slot of a partial buffer of at most 10% of |x| bytes.
    _sum_slices_kernel      the partial buffer's slices summed in a fixed order (deterministic).

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
to fp32); it is read on every call (an eager backward uses its forward's). In bf16 / fp16 that
rounding moves time_conv's pre-activation s by about 2^-9 of its scale, so where |s| is that small the
LeakyReLU branch (forward and backward, which agree with each other) may differ from an fp64
evaluation's.

Coverage: any T <= MAX_TIME_POINTS (32), 1 <= K <= T // 2 + 1, any channel counts, trailing dims and
strides (loads and stores are masked; blocks are powers of two >= 16, the tl.dot minimum, padded with
zeros). Larger T is handed to the next backend (Backend.max_time_points). Everything is unrolled over
T and the R accumulators live in registers, which is what T = 4 wants; from T ~ 10 the kernels spill
registers and compile for longer (tens of seconds at T = 32, K = 17).

Launch configurations come from `launch_configs(kernel, T, K, C_in, C_out, pixels, ...)`, pruned for
the device's shared memory and a register estimate against a budget per architecture and kernel
(_REGISTER_BUDGETS: sm_80's MMAs hold more registers than sm_90's, and the budgets are set so that no
configuration the launcher picks at the benchmark shapes spills on either; sm_8x takes sm_80's, newer
GPUs sm_90's). The device's limits (shared memory, SM count, compute capability) are queried once per
device and the plans cached per shape and device. The forward's and the mask pass's candidates (one
tile per program, then up to two in the persistent mode, chosen under a lower register budget: the
tile loop keeps more registers live) are autotuned per (B, T, K, C_in, C_out, pixels, dtype) unless
DSNO_KERNELS_TRITON_AUTOTUNE=0, which runs the first one, one tile per program, untimed; the backward
launch takes the first configuration of each half. benchmarks/kernel_report.py plans with the same functions for
an A100's and an H100's limits (it replaces _device_limits).

Host path: everything about a call that depends only on the shapes, strides, dtype, device and
settings (configurations, grids, scalar arguments, the 32-bit offset check) is computed once and
cached (`_forward_calls`, `_backward_calls`); a call allocates its outputs and launches with the
pointers and the cached arguments passed positionally. Nothing depends on the data (no host sync, no
data-dependent allocation), so the ops can be captured in CUDA graphs. Eager calls on plain tensors
launch the kernels directly, with a torch.autograd.Function for autograd whose backward finds its
plan through the forward's (keyed on grad_out's strides alone) and runs with the forward's settings;
under torch.compile, a dispatch mode or a functorch transform the calls go through the registered ops
below. benchmarks/test_host_overhead.py times the host work per call (python -m
benchmarks.kernel_report prints the same measurement).

Registration: on a GPU the ops dsno_kernels::triton_{spectral_time_conv, time_conv}[_backward] are
torch.library.triton_op (wrap_triton where the tensors are traced), so torch.compile traces into the
kernels. With
TRITON_INTERPRET=1 (set before importing dsno_kernels) the kernels run in Triton's interpreter on CPU
tensors, registered as torch.library.custom_op for the CPU (triton_op fails opcheck and compile
there); the interpreter gets one small configuration, and bf16 dot operands are upcast to fp32 after
being rounded to bf16 (its bf16 tl.dot is wrong, triton-lang/triton#11584), so it computes what the
GPU computes.
"""

import dataclasses
import functools
import math
import os
from typing import NamedTuple, Optional

import torch

from .. import settings
from .._library import register_ops
from ..api import Backend, register_backend

try:
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: ImportError | None = None
except ImportError as error:  # CPU-only torch builds ship without Triton
    _TRITON_IMPORT_ERROR = error

    class _MissingTriton:
        """Keeps the kernel definitions below importable without Triton: decorators become no-ops
        and annotations placeholders. Nothing launches them (the backend reports it unavailable)."""

        def __getattr__(self, name):
            return lambda fn=None, **options: fn if fn is not None else (lambda fn: fn)

    triton = tl = _MissingTriton()

__all__ = ["MAX_TIME_POINTS", "INTERPRETING", "launch_configs", "num_rows", "clear_launch_plans"]

MAX_TIME_POINTS = 32
INTERPRETING = _TRITON_IMPORT_ERROR is None and os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")
FP32_PRECISION_ENV_VAR = settings.FP32
AUTOTUNE_ENV_VAR = settings.TRITON_AUTOTUNE


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
def _mask_bits_offsets(channels, channel_mask, pixels, pixel_mask, num_words, PIXELS_FIRST: tl.constexpr):
    """(offsets, mask, shifts) of the bits of a [C, num_words] slice of the bit mask (bit j of word w
    is pixel 32 w + j) for a [pixels, channels] tile (PIXELS_FIRST) or a [channels, pixels] one. Each
    element loads its own word (32 share one, from L1): no reshape of the tile, whose layout then stays
    the dot operand's. (Words, not bytes: with a uint8 load among a dot operand's producers, Triton 3.8
    picks an operand layout for fp64 that its sm_80 MMA lowering rejects.)"""
    word = pixels // 32
    if PIXELS_FIRST:
        offsets = word[:, None] + channels[None, :] * num_words
        mask = pixel_mask[:, None] & channel_mask[None, :]
        shifts = (pixels % 32)[:, None]
    else:
        offsets = channels[:, None] * num_words + word[None, :]
        mask = channel_mask[:, None] & pixel_mask[None, :]
        shifts = (pixels % 32)[None, :]
    return offsets, mask, shifts


@triton.jit
def _masked_time_tiles(tiles, mask_ptr, stride_t, offsets, mask, shifts, negative_slope, T: tl.constexpr,
                       ACC_DTYPE: tl.constexpr):  # fmt: skip
    """The T tiles of dy times leaky_relu'(s) (1 where the mask's bit is set, negative_slope elsewhere),
    rounded back to dy's dtype: time_conv's gradient at the spectral output, g."""
    masked = ()
    for t in tl.static_range(T):
        bits = (tl.load(mask_ptr + t * stride_t + offsets, mask=mask, other=0) >> shifts) & 1
        tile = tiles[t]
        scaled = tile.to(ACC_DTYPE) * tl.full(tile.shape, negative_slope, ACC_DTYPE)
        masked = masked + (tl.where(bits != 0, tile, scaled.to(tile.dtype)),)
    return masked


@triton.jit
def _mix_program(
    pid,
    in_ptr,  # [B, T, C_IN, P] strided: x (forward direction) or dy (transposed)
    w_ptr,  # the weight [C, C, K, 2] strided; stride_w_in / stride_w_out say which dim is the mix's input
    res_ptr,  # [B, T, C_OUT, P] strided: x or dy for the epilogues that read it, else unused
    out_ptr,  # [B, T, C_OUT, P] strided (unused with STORE_MASK)
    mask_ptr,  # [B, T, C, cdiv(P, 32)] int32 bit mask of s > 0: read (MASKED_INPUT), written (STORE_MASK)
    C_IN, C_OUT, P,
    stride_in_b, stride_in_t, stride_in_c, stride_in_p,
    stride_w_in, stride_w_out, stride_w_k, stride_w_c,
    stride_res_b, stride_res_t, stride_res_c, stride_res_p,
    stride_out_b, stride_out_t, stride_out_c, stride_out_p,
    has_residual,  # 0 or 1: whether res_ptr is read
    # The epilogue: out = where(s > 0, res_if_positive * res + s_if_positive * s,
    #                                  res_if_negative * res + s_if_negative * s)   (fp64: exact factors)
    res_if_positive: tl.float64, s_if_positive: tl.float64,
    res_if_negative: tl.float64, s_if_negative: tl.float64,
    negative_slope: tl.float64,  # MASKED_INPUT: the input is dy * leaky_relu'(s) from the bit mask
    T: tl.constexpr, K: tl.constexpr,
    CONJUGATE: tl.constexpr,  # mix with (Wr^T, -Wi^T): the transposed chain
    MASKED_INPUT: tl.constexpr, STORE_MASK: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    # Tiles are [pixels, channels]: the pixels are the dots' M dimension, so the transformed input
    # (computed in registers) is the A operand, which the MMA takes from registers without copies per
    # warp, and the weight tile (read from memory) is the B operand.
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
    num_words = tl.cdiv(P, 32)

    dot_dtype: tl.constexpr = w_ptr.dtype.element_ty
    acc_dtype: tl.constexpr = tl.float64 if dot_dtype == tl.float64 else tl.float32
    accs = ()
    for _ in tl.static_range(num_rows(T, K)):
        accs = accs + (tl.zeros((BLOCK_P, BLOCK_OUT), dtype=acc_dtype),)

    # Offsets within a block are loop-invariant int32 tiles; the loop advances scalar base pointers.
    arange_in = tl.arange(0, BLOCK_IN)
    in_offsets = offs_p[:, None] * stride_in_p + arange_in[None, :] * stride_in_c
    w_offsets = arange_in[:, None] * stride_w_in + offs_out[None, :] * stride_w_out
    for in_start in range(0, C_IN, BLOCK_IN):
        mask_in = in_start + arange_in < C_IN
        tiles = _load_time_tiles(
            in_ptr + in_start * stride_in_c, stride_in_t, in_offsets, mask_p[:, None] & mask_in[None, :], T
        )
        if MASKED_INPUT:
            bit_offsets, bit_mask, shifts = _mask_bits_offsets(
                in_start + arange_in, mask_in, offs_p, mask_p, num_words, True
            )
            tiles = _masked_time_tiles(
                tiles,
                mask_ptr + batch * T * C_IN * num_words,
                C_IN * num_words,
                bit_offsets,
                bit_mask,
                shifts,
                negative_slope,
                T,
                acc_dtype,
            )
        w_block_ptr = w_ptr + in_start * stride_w_in
        w_mask = mask_in[:, None] & mask_out[None, :]
        mixed = ()
        for k in tl.static_range(K):
            in_re = _row_operand(tiles, k, T, False, False, acc_dtype, dot_dtype, UPCAST_DOT)
            w_re = tl.load(w_block_ptr + k * stride_w_k + w_offsets, mask=w_mask, other=0.0)
            w_re = _dot_operand(w_re, dot_dtype, UPCAST_DOT)
            acc_re = _mma(in_re, w_re, accs[_first_row(k)], INPUT_PRECISION)
            if _is_real_mode(k, T):
                mixed = mixed + (acc_re,)
            else:
                in_im = _row_operand(tiles, k, T, True, False, acc_dtype, dot_dtype, UPCAST_DOT)
                w_im = tl.load(w_block_ptr + k * stride_w_k + stride_w_c + w_offsets, mask=w_mask, other=0.0)
                w_im = _dot_operand(w_im, dot_dtype, UPCAST_DOT)
                if CONJUGATE:  # after the upcast: the interpreter negates bf16 as raw integers
                    w_im = -w_im
                # out_re = in_re Wr - in_im Wi ; out_im = in_re Wi + in_im Wr
                acc_re = _mma(-in_im, w_im, acc_re, INPUT_PRECISION)
                acc_im = _mma(in_re, w_im, accs[_first_row(k) + 1], INPUT_PRECISION)
                acc_im = _mma(in_im, w_re, acc_im, INPUT_PRECISION)
                mixed = mixed + (acc_re, acc_im)
        accs = mixed

    out_mask = mask_p[:, None] & mask_out[None, :]
    if STORE_MASK:
        # Bit j of word w is s > 0 at pixel 32 w + j: 1 bit per element where g would take 16 or 32.
        # (BLOCK_P is a multiple of 32 here: the launcher sees to it.)
        words = p_block * (BLOCK_P // 32) + tl.arange(0, BLOCK_P // 32)
        word_offsets = words[:, None] + offs_out[None, :] * num_words
        word_mask = (words < num_words)[:, None] & mask_out[None, :]
        weights = (1 << tl.arange(0, 32))[None, :, None]  # bit 31 is the sign bit: the sum wraps to it
        mask_ptr += batch * T * C_OUT * num_words
        for t in tl.static_range(T):
            positive = (_synthesize(accs, t, T, K) > 0).to(tl.int32)
            packed = tl.sum(tl.reshape(positive, (BLOCK_P // 32, 32, BLOCK_OUT)) * weights, axis=1)
            tl.store(mask_ptr + t * C_OUT * num_words + word_offsets, packed.to(tl.int32), mask=word_mask)
    else:
        # tl.full keeps the fp64 factors exact (the interpreter would round a bare Python float to fp32).
        res_pos = tl.full((BLOCK_P, BLOCK_OUT), res_if_positive, acc_dtype)
        s_pos = tl.full((BLOCK_P, BLOCK_OUT), s_if_positive, acc_dtype)
        res_neg = tl.full((BLOCK_P, BLOCK_OUT), res_if_negative, acc_dtype)
        s_neg = tl.full((BLOCK_P, BLOCK_OUT), s_if_negative, acc_dtype)
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
def _weight_grad_program(
    pid,
    x_ptr,  # [B, T, C_IN, P] strided
    grad_ptr,  # [B, T, C_OUT, P] strided: dy
    mask_ptr,  # [B, T, C_OUT, cdiv(P, 32)] bit mask of s > 0 (MASKED_INPUT: the gradient is dy * leaky_relu'(s))
    dw_ptr,  # [NUM_SLICES, C_IN, C_OUT, K, 2] strided: this program's slice of the pixel sums
    B, C_IN, C_OUT, P, NUM_SLICES,
    stride_x_b, stride_x_t, stride_x_c, stride_x_p,
    stride_g_b, stride_g_t, stride_g_c, stride_g_p,
    stride_dw_s, stride_dw_in, stride_dw_out, stride_dw_k, stride_dw_c,
    negative_slope: tl.float64,
    T: tl.constexpr, K: tl.constexpr, MASKED_INPUT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
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
    for _ in tl.static_range(num_rows(T, K)):
        accs = accs + (tl.zeros((BLOCK_IN, BLOCK_OUT), dtype=acc_dtype),)

    # The slice's share of the B * cdiv(P, BLOCK_P) pixel tiles (tiles never straddle batch items).
    num_p_blocks = tl.cdiv(P, BLOCK_P)
    num_tiles = B * num_p_blocks
    tiles_per_slice = tl.cdiv(num_tiles, NUM_SLICES)
    first_tile = slice_id * tiles_per_slice
    last_tile = tl.minimum(first_tile + tiles_per_slice, num_tiles)
    num_words = tl.cdiv(P, 32)
    arange_p = tl.arange(0, BLOCK_P)
    x_offsets = offs_in[:, None] * stride_x_c + arange_p[None, :] * stride_x_p
    g_offsets = offs_out[:, None] * stride_g_c + arange_p[None, :] * stride_g_p
    for tile in range(first_tile, last_tile):
        batch = (tile // num_p_blocks).to(tl.int64)
        p_start = (tile % num_p_blocks) * BLOCK_P
        mask_p = p_start + arange_p < P
        x_tiles = _load_time_tiles(
            x_ptr + batch * stride_x_b + p_start * stride_x_p, stride_x_t, x_offsets,
            mask_in[:, None] & mask_p[None, :], T,
        )  # fmt: skip
        g_tiles = _load_time_tiles(
            grad_ptr + batch * stride_g_b + p_start * stride_g_p, stride_g_t, g_offsets,
            mask_out[:, None] & mask_p[None, :], T,
        )  # fmt: skip
        if MASKED_INPUT:
            bit_offsets, bit_mask, shifts = _mask_bits_offsets(
                offs_out, mask_out, p_start + arange_p, mask_p, num_words, False
            )
            g_tiles = _masked_time_tiles(
                g_tiles,
                mask_ptr + batch * T * C_OUT * num_words,
                C_OUT * num_words,
                bit_offsets,
                bit_mask,
                shifts,
                negative_slope,
                T,
                acc_dtype,
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

    # Stored in the weight's layout: irfft ignores the imaginary part of DC and Nyquist, so its
    # gradient is 0.
    dw_ptr += slice_id.to(tl.int64) * stride_dw_s
    offsets = offs_in[:, None] * stride_dw_in + offs_out[None, :] * stride_dw_out
    mask = mask_in[:, None] & mask_out[None, :]
    out_dtype: tl.constexpr = dw_ptr.dtype.element_ty
    for k in tl.static_range(K):
        k_ptr = dw_ptr + k * stride_dw_k + offsets
        tl.store(k_ptr, accs[_first_row(k)].to(out_dtype), mask=mask)
        if _is_real_mode(k, T):
            tl.store(k_ptr + stride_dw_c, tl.zeros((BLOCK_IN, BLOCK_OUT), dtype=out_dtype), mask=mask)
        else:
            tl.store(k_ptr + stride_dw_c, accs[_first_row(k) + 1].to(out_dtype), mask=mask)


# B only bounds the persistent mode's tile loop: not specialized on (one binary for every batch size).
@triton.jit(do_not_specialize=["B"])
def _spectral_mix_kernel(
    in_ptr, w_ptr, res_ptr, out_ptr, mask_ptr,
    B, C_IN, C_OUT, P,
    stride_in_b, stride_in_t, stride_in_c, stride_in_p,
    stride_w_in, stride_w_out, stride_w_k, stride_w_c,
    stride_res_b, stride_res_t, stride_res_c, stride_res_p,
    stride_out_b, stride_out_t, stride_out_c, stride_out_p,
    has_residual,
    res_if_positive: tl.float64, s_if_positive: tl.float64,
    res_if_negative: tl.float64, s_if_negative: tl.float64,
    negative_slope: tl.float64,
    T: tl.constexpr, K: tl.constexpr,
    CONJUGATE: tl.constexpr, MASKED_INPUT: tl.constexpr, STORE_MASK: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr, BLOCK_P: tl.constexpr,
    PERSISTENT: tl.constexpr,  # 0: one tile per program; n > 0: the grid holds n programs per SM (_mix_grid)
):  # fmt: skip
    """The forward (y), and time_conv's backward mask pass (STORE_MASK): one _mix_program per tile,
    each program taking one tile or (PERSISTENT) every num_programs-th tile from its id on."""
    if PERSISTENT:
        # Tile ids in _mix_program's order (output-channel block fastest): the programs resident at
        # one time take consecutive ids, so a pixel tile's output-channel blocks run together and
        # share its input tile through L2.
        tiles_end = B * tl.cdiv(P, BLOCK_P) * tl.cdiv(C_OUT, BLOCK_OUT)
        tiles_step = tl.num_programs(0)
    else:
        tiles_end = tl.program_id(0) + 1
        tiles_step = 1
    for tile in range(tl.program_id(0), tiles_end, tiles_step):
        _mix_program(
            tile, in_ptr, w_ptr, res_ptr, out_ptr, mask_ptr, C_IN, C_OUT, P,
            stride_in_b, stride_in_t, stride_in_c, stride_in_p,
            stride_w_in, stride_w_out, stride_w_k, stride_w_c,
            stride_res_b, stride_res_t, stride_res_c, stride_res_p,
            stride_out_b, stride_out_t, stride_out_c, stride_out_p,
            has_residual, res_if_positive, s_if_positive, res_if_negative, s_if_negative, negative_slope,
            T, K, CONJUGATE, MASKED_INPUT, STORE_MASK, INPUT_PRECISION, UPCAST_DOT, BLOCK_OUT, BLOCK_IN, BLOCK_P,
        )  # fmt: skip


@triton.jit
def _spectral_backward_kernel(
    x_ptr, dy_ptr, w_ptr, mask_ptr, dx_ptr, dw_ptr,
    B, C_IN, C_OUT, P, NUM_DX_PROGRAMS, NUM_SLICES,
    stride_x_b, stride_x_t, stride_x_c, stride_x_p,
    stride_dy_b, stride_dy_t, stride_dy_c, stride_dy_p,
    stride_w_in, stride_w_out, stride_w_k, stride_w_c,
    stride_dx_b, stride_dx_t, stride_dx_c, stride_dx_p,
    stride_dw_s, stride_dw_in, stride_dw_out, stride_dw_k, stride_dw_c,
    has_residual,
    negative_slope: tl.float64,
    T: tl.constexpr, K: tl.constexpr, MASKED_INPUT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr, BLOCK_P: tl.constexpr,
    DW_BLOCK_IN: tl.constexpr, DW_BLOCK_OUT: tl.constexpr, DW_BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Both halves of the backward in one launch, from dy (and for time_conv the bit mask of s > 0):
    the first NUM_DX_PROGRAMS programs compute dx = G M* F g (+ dy for time_conv, has_residual), the
    others the weight gradient's pixel slices (F x and D F g products). The two halves are
    independent, so they share the GPU without a second launch."""
    pid = tl.program_id(0)
    if pid < NUM_DX_PROGRAMS:
        # The transposed chain maps the forward's output channels (C_OUT) to its input channels (C_IN).
        _mix_program(
            pid, dy_ptr, w_ptr, dy_ptr, dx_ptr, mask_ptr, C_OUT, C_IN, P,
            stride_dy_b, stride_dy_t, stride_dy_c, stride_dy_p,
            stride_w_out, stride_w_in, stride_w_k, stride_w_c,
            stride_dy_b, stride_dy_t, stride_dy_c, stride_dy_p,
            stride_dx_b, stride_dx_t, stride_dx_c, stride_dx_p,
            has_residual, 1.0, 1.0, 1.0, 1.0, negative_slope,
            T, K, True, MASKED_INPUT, False, INPUT_PRECISION, UPCAST_DOT, BLOCK_OUT, BLOCK_IN, BLOCK_P,
        )  # fmt: skip
    else:
        _weight_grad_program(
            pid - NUM_DX_PROGRAMS, x_ptr, dy_ptr, mask_ptr, dw_ptr, B, C_IN, C_OUT, P, NUM_SLICES,
            stride_x_b, stride_x_t, stride_x_c, stride_x_p,
            stride_dy_b, stride_dy_t, stride_dy_c, stride_dy_p,
            stride_dw_s, stride_dw_in, stride_dw_out, stride_dw_k, stride_dw_c,
            negative_slope, T, K, MASKED_INPUT, INPUT_PRECISION, UPCAST_DOT, DW_BLOCK_IN, DW_BLOCK_OUT, DW_BLOCK_P,
        )  # fmt: skip


@triton.jit
def _sum_slices_kernel(partial_ptr, out_ptr, N, NUM_SLICES, BLOCK: tl.constexpr):
    """out = sum over the NUM_SLICES slices of partial [NUM_SLICES, N], in slice order (deterministic)."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < N
    total = tl.load(partial_ptr + offsets, mask=mask, other=0.0)
    for _ in range(1, NUM_SLICES):
        partial_ptr += N  # a 64-bit pointer: no 32-bit slice offset to overflow
        total += tl.load(partial_ptr + offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, total.to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------
# Launch configurations

# (BLOCK_OUT, BLOCK_IN, BLOCK_P, num_warps, num_stages), best guess first. BLOCK_P is the dots' M:
# 64 rows per warpgroup on Hopper. The first is for the CIFAR-10 shape (T=4, K=2, C=256, bf16): three
# 128 x 64 fp32 accumulators over two warpgroups, 232 registers and no spills on sm_90, three stages
# so that a BLOCK_IN step's loads are in flight during the previous step's MMAs. (128, 32, 64, 8, *)
# spills on sm_90 since the weight is read through its strides (benchmarks/results/kernel_report.md).
_MIX_CANDIDATES = (
    (64, 32, 128, 8, 3),
    (64, 32, 128, 8, 4),
    (64, 32, 128, 8, 2),
    (64, 32, 64, 4, 4),
    (64, 32, 64, 4, 3),
    (32, 32, 64, 4, 3),
    (16, 16, 64, 4, 2),
    (16, 16, 16, 4, 1),
)
# fp32 inputs keep their T input tiles in twice the registers: the 8-warp, 128-pixel tiles spill on
# sm_90, the 4-warp 64-pixel ones (252 registers) do not.
_MIX_CANDIDATES_FP32 = tuple(c for c in _MIX_CANDIDATES if c[2] <= 64)
# (BLOCK_IN, BLOCK_OUT, BLOCK_P, num_warps, num_stages); BLOCK_IN is the dots' M, BLOCK_P their K.
_WEIGHT_GRAD_CANDIDATES = (
    (64, 64, 32, 8, 3),
    (64, 64, 32, 8, 2),
    (64, 64, 16, 8, 2),  # sm_80's: half the pixels per step holds fewer operand registers
    (128, 64, 32, 8, 2),
    (64, 64, 16, 4, 2),
    (32, 32, 32, 4, 2),
    (16, 16, 16, 4, 1),
)
# The autotuner times at most this many (the first that fit), to keep first calls short.
_MAX_TIMED_CONFIGS = 4
# ... plus the persistent mode of the mix kernel's first this many (_mix_variants).
_PERSISTENT_VARIANTS = 2
# Warps an SM keeps resident at this file's register use (up to 255 per thread, rounded to 256):
# 65536 registers / (256 * 32).
_RESIDENT_WARPS = 8


class _RegisterBudgets(NamedTuple):
    """Registers per thread the live tiles may take (the estimate in launch_configs), per kernel."""

    mix: int  # the forward and the mask pass, one tile per program
    persistent: int  # the same, persistent (the tile loop keeps its invariants live across tiles)
    persistent_fp32: int  # ... for 4- and 8-byte inputs (the estimate undercounts their loop's registers)
    dx: int  # the backward's dx half, which shares its launch with the weight gradient
    weight_grad: int


# Per architecture. On sm_90 ptxas reports 232 registers where the estimate says 196 (the first mix
# candidate at T=4, K=2, bf16), and spills where it exceeds 255 at larger T; persistent, the (64, 32,
# 64, 4) tile (estimate 200) spills, and in fp32 the (32, 32, 64, 4) one (152). The dx half also holds
# the LeakyReLU mask's words: at 196 the first mix candidate (bf16) compiles to 250 registers without
# spilling, the fp32 one (200) spilled. On sm_80 the MMA operands are held per warp in registers
# (mma.sync): the forward's (64, 32, 64, 4) tile (200) spills there, persistent the (64, 32, 128, 8) one
# (196) too, and the backward's (64, 32, 128) dx tile (196) beside the (64, 64, 32) weight-gradient tile
# (208), and in fp32 the (32, 32, 64) one beside that weight-gradient tile. Every row of
# benchmarks/results/kernel_report.md (python -m benchmarks.kernel_report) is checked for spills.
_REGISTER_BUDGETS = {
    90: _RegisterBudgets(mix=255, persistent=196, persistent_fp32=150, dx=196, weight_grad=255),
    80: _RegisterBudgets(mix=196, persistent=160, persistent_fp32=160, dx=160, weight_grad=200),
}


def _register_budgets(arch: int | None) -> _RegisterBudgets:
    """sm_80's budgets for sm_8x (sm_86 and sm_89 hold the same registers per SM), sm_90's for sm_90
    and newer and for the interpreter (arch None)."""
    return _REGISTER_BUDGETS[80 if arch is not None and arch < 90 else 90]


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@dataclasses.dataclass(frozen=True)
class DeviceLimits:
    """What the launch plans of a CUDA device depend on."""

    shared_memory: int  # bytes per block (the opt-in maximum)
    shared_memory_per_sm: int
    processors: int  # streaming multiprocessors
    arch: int  # compute capability as 10 * major + minor: 80, 90, ...


@functools.cache
def _device_limits(device_index: int) -> DeviceLimits:
    """The limits of CUDA device `device_index`, queried once."""
    props = torch.cuda.get_device_properties(device_index)
    shared = getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024
    per_sm = getattr(props, "shared_memory_per_multiprocessor", 0) or shared
    return DeviceLimits(shared, per_sm, props.multi_processor_count, 10 * props.major + props.minor)


def _tile_area(kernel: str, config) -> int:
    """Output elements per program: BLOCK_OUT * BLOCK_P (mix), BLOCK_IN * BLOCK_OUT (weight grad)."""
    return config[0] * (config[2] if kernel == "mix" else config[1])


def _staged_elements(kernel: str, T: int, K: int, config) -> int:
    """Elements one pipeline stage holds in shared memory: the weight and input tiles of a BLOCK_IN
    step (mix), the x and dy tiles of a pixel tile (weight gradient)."""
    if kernel == "mix":
        block_out, block_in, block_p = config[:3]
        return num_rows(T, K) * block_in * block_out + T * block_in * block_p
    block_in, block_out, block_p = config[:3]
    return T * (block_in + block_out) * block_p


def launch_configs(
    kernel: str,
    T: int,
    K: int,
    C_in: int,
    C_out: int,
    pixels: int,
    element_size: int,
    shared_memory: int | None,
    register_budget: int = _REGISTER_BUDGETS[90].mix,
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
    if kernel == "mix":
        candidates = _MIX_CANDIDATES_FP32 if element_size == 4 else _MIX_CANDIDATES
    else:
        candidates = _WEIGHT_GRAD_CANDIDATES
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
        else:
            block_in, block_out, block_p, warps, stages = config
            live = (R * block_in * block_out + (2 * T + 2) * (block_in + block_out) * block_p) * acc_size / 4
        staged = _staged_elements(kernel, T, K, config)
        if live > register_budget * 32 * warps:
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


# ------------------------------------------------------------------------------------------------
# Launch plans: everything about a launch that depends only on the problem's shape, computed once per
# shape and cached, so that a call only builds the kernel's arguments and launches.

_BLOCK_NAMES = {
    "mix": ("BLOCK_OUT", "BLOCK_IN", "BLOCK_P"),
    "weight_grad": ("DW_BLOCK_IN", "DW_BLOCK_OUT", "DW_BLOCK_P"),
}
_MIX_AUTOTUNE_KEY = ["B", "C_IN", "C_OUT", "P", "T", "K", "has_residual", "STORE_MASK"]
_SUM_BLOCK = 1024
# Tensor types launched on directly; any other (fake, functional, user subclasses) goes through the
# registered ops, whose triton_op bodies torch.compile traces.
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
# The weight gradient's partial sums may take at most this share of x's bytes (else one slice,
# written straight into grad_weight).
_PARTIAL_BUDGET = 0.1
_MIX_POINTERS = ("in_ptr", "w_ptr", "res_ptr", "out_ptr", "mask_ptr")


def _config_kwargs(kernel: str, config) -> dict:
    *blocks, warps, stages = config
    return {**dict(zip(_BLOCK_NAMES[kernel], blocks)), "num_warps": warps, "num_stages": stages}


def _mix_kwargs(config, persistent: int) -> dict:
    return {**_config_kwargs("mix", config), "PERSISTENT": persistent}


@functools.cache
def _autotuned_mix(variants: tuple):
    """The mix kernel autotuned over `variants` ((configuration, PERSISTENT) pairs; one autotuner per
    distinct list, so that torch.compile, which times an autotuner's whole list, sees only the pruned
    one)."""
    triton_configs = []
    for config, persistent in variants:
        kwargs = _mix_kwargs(config, persistent)
        warps, stages = kwargs.pop("num_warps"), kwargs.pop("num_stages")
        triton_configs.append(triton.Config(kwargs, num_warps=warps, num_stages=stages))
    return triton.autotune(configs=triton_configs, key=_MIX_AUTOTUNE_KEY)(_spectral_mix_kernel)


@dataclasses.dataclass(frozen=True)
class _Launch:
    """A kernel (or autotuner), its grid and its configuration's keyword arguments."""

    kernel: object
    grid: object  # a tuple, or a function of the configuration (autotuner)
    meta: dict

    def bind(self, pointers: tuple, args: dict) -> "_BoundLaunch":
        """This launch with every argument but the pointers fixed. The pointers lead each kernel's
        signature, so an eager call passes the pointers and then these values positionally: no dict
        of some forty arguments to build per call."""
        names = self.kernel.arg_names
        values = {**args, **self.meta}
        assert tuple(names[: len(pointers)]) == pointers, (names, pointers)
        bound = []
        for name in names[len(pointers) :]:
            if name not in values:  # the autotuner's constexprs, which it passes itself
                break
            bound.append(name)
        assert not set(names[len(pointers) + len(bound) :]) & set(values), names
        options = {name: value for name, value in self.meta.items() if name not in names}
        return _BoundLaunch(self, pointers, tuple(bound), tuple(values[name] for name in bound), options)


@dataclasses.dataclass
class _BoundLaunch:
    launch: _Launch
    pointer_names: tuple
    names: tuple
    values: tuple  # the arguments after the pointers, in signature order (then the configuration's)
    options: dict  # num_warps, num_stages
    tuned: Optional["_BoundLaunch"] = None  # an autotuner's choice for these arguments, once made

    def __call__(self, traced: bool, *pointers) -> None:
        if traced:
            # wrap_triton only where torch.compile traces (fake or functional tensors in the
            # triton_op bodies); in eager mode the kernel is launched directly.
            args = dict(zip(self.pointer_names, pointers))
            args.update(zip(self.names, self.values))
            torch.library.wrap_triton(self.launch.kernel)[self.launch.grid](**args, **self.options)
            return
        bound = self.tuned or self
        kernel, grid = bound.launch.kernel, bound.launch.grid
        kernel.run(*pointers, *bound.values, grid=grid, warmup=False, **bound.options)  # = kernel[grid](...)
        if bound is self and isinstance(kernel, triton.runtime.Autotuner) and kernel.best_config is not None:
            # These arguments always get this choice (the tuning key is a function of the shapes
            # and dtypes this launch was bound for): launch it directly from now on.
            config = kernel.best_config
            meta = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
            direct = _Launch(kernel.fn, grid(meta), meta)
            self.tuned = direct.bind(self.pointer_names, dict(zip(self.names, self.values)))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _device_key(device: torch.device) -> int | None:
    """The CUDA device index, or None for the interpreter's CPU tensors (no resource limits)."""
    return _device_index(device) if device.type == "cuda" else None


def _mix_grid(B: int, P: int, C_out: int, processors: int, config) -> tuple:
    """One program per tile, or (persistent) at most config["PERSISTENT"] per multiprocessor."""
    tiles = B * _cdiv(P, config["BLOCK_P"]) * _cdiv(C_out, config["BLOCK_OUT"])
    if config.get("PERSISTENT"):
        return (min(tiles, processors * config["PERSISTENT"]),)
    return (tiles,)


def _limits(device) -> DeviceLimits | None:
    """The device's limits; None for the interpreter (no shared-memory limit, sm_90's budgets)."""
    return _device_limits(device) if device is not None else None


def _mix_variants(
    T: int, K: int, C_in: int, C_out: int, P: int, element_size: int, device, autotune: bool, mask_pass: bool = False
) -> list[tuple[tuple, int]]:
    """(configuration, PERSISTENT) pairs of the forward's launch or the backward's mask pass (which
    packs 32 pixels per word: BLOCK_P >= 32), first guess first: launch_configs' candidates for the
    device's shared memory and register budget, one program per tile; with autotuning, then the
    first _PERSISTENT_VARIANTS candidates under the (lower) persistent budget whose tiles are at least
    a quarter of the first guess's, in the persistent mode, with as many programs per SM as stay
    resident by registers and shared memory."""
    limits = _limits(device)
    shared = limits.shared_memory if limits is not None else None
    budgets = _register_budgets(limits.arch if limits is not None else None)

    def candidates(budget: int) -> list:
        configs = launch_configs("mix", T, K, C_in, C_out, P, element_size, shared, budget)
        if mask_pass:
            configs = [c for c in configs if c[2] >= 32] or [(*configs[0][:2], 32, *configs[0][3:])]
        return configs

    configs = candidates(budgets.mix)
    if not autotune:
        return [(configs[0], 0)]
    persistent = candidates(budgets.persistent if element_size == 2 else budgets.persistent_fp32)
    # As in launch_configs: no tile under a quarter of the first guess's.
    persistent = [c for c in persistent if 4 * _tile_area("mix", c) >= _tile_area("mix", configs[0])]
    persistent = persistent[:_PERSISTENT_VARIANTS]
    return [(c, 0) for c in configs] + [(c, _resident_programs(T, K, c, element_size, limits)) for c in persistent]


def _resident_programs(T: int, K: int, config, element_size: int, limits: DeviceLimits | None) -> int:
    """Programs of a mix configuration one SM keeps resident: by registers (_RESIDENT_WARPS) and by
    the shared memory its pipeline stages take (estimated high: an underestimate of the count)."""
    warps, stages = config[3:]
    by_registers = _RESIDENT_WARPS // warps
    if limits is None:
        return max(1, by_registers)
    pipeline = stages * _staged_elements("mix", T, K, config) * element_size + 1024  # 1 KB reserved per CTA
    return max(1, min(by_registers, limits.shared_memory_per_sm // pipeline))


@functools.cache
def _mix_plan(
    B: int, T: int, K: int, C_in: int, C_out: int, P: int, element_size: int, device, autotune: bool,
    mask_pass: bool = False,
):  # fmt: skip
    """The forward's launch, or the backward's mask pass: the first of _mix_variants, or with
    autotuning the autotuner over all of them."""
    variants = _mix_variants(T, K, C_in, C_out, P, element_size, device, autotune, mask_pass)
    limits = _limits(device)
    grid = functools.partial(_mix_grid, B, P, C_out, limits.processors if limits is not None else 2)
    if len(variants) == 1:
        meta = _mix_kwargs(*variants[0])
        return _Launch(_spectral_mix_kernel, grid(meta), meta)
    return _Launch(_autotuned_mix(tuple(variants)), grid, {})


def _weight_grad_slices(
    x_bytes: int, B: int, P: int, C_in: int, C_out: int, K: int, acc_size: int, config: dict, device
) -> int:
    """How many pixel slices the weight gradient is split into: about one program per multiprocessor
    (the dx programs of the same launch fill the rest), no more than there are pixel tiles, and
    partial sums of at most _PARTIAL_BUDGET of x's bytes; 1 means no partial buffer at all."""
    limits = _limits(device)
    processors = limits.processors if limits is not None else 2
    programs_per_slice = _cdiv(C_in, config["DW_BLOCK_IN"]) * _cdiv(C_out, config["DW_BLOCK_OUT"])
    budget = int(_PARTIAL_BUDGET * x_bytes) // (C_in * C_out * K * 2 * acc_size)
    return max(1, min(_cdiv(processors, programs_per_slice), B * _cdiv(P, config["DW_BLOCK_P"]), budget))


@dataclasses.dataclass(frozen=True)
class _BackwardPlan:
    launch: _Launch  # the dx and weight-gradient programs in one launch
    num_dx_programs: int
    slices: int
    reduce: _Launch | None  # the deterministic sum of the slices (None for one slice)


@functools.cache
def _backward_plan(B: int, T: int, K: int, C_in: int, C_out: int, P: int, element_size: int, device) -> _BackwardPlan:
    """The backward's launches: the first configuration of each half (dx: the mix kernel's, with the
    channel roles swapped; dweight: the weight-gradient kernel's), no autotuning."""
    limits = _limits(device)
    shared = limits.shared_memory if limits is not None else None
    budgets = _register_budgets(limits.arch if limits is not None else None)
    dx_config = launch_configs("mix", T, K, C_out, C_in, P, element_size, shared, budgets.dx)[0]
    dw_config = launch_configs("weight_grad", T, K, C_in, C_out, P, element_size, shared, budgets.weight_grad)[0]
    meta = {**_config_kwargs("weight_grad", dw_config), **_config_kwargs("mix", dx_config)}
    # One launch, one warp count: the larger (a half given more warps needs fewer registers per thread).
    meta["num_warps"] = max(dx_config[3], dw_config[3])
    # The two halves' pipelines are allocated side by side: fewer stages until both fit.
    staged = (
        _staged_elements("mix", T, K, dx_config) + _staged_elements("weight_grad", T, K, dw_config)
    ) * element_size
    while shared is not None and meta["num_stages"] > 1 and meta["num_stages"] * staged > shared:
        meta["num_stages"] -= 1
    num_dx = _mix_grid(B, P, C_in, 0, meta)[0]  # one program per tile
    acc_size = 8 if element_size == 8 else 4
    x_bytes = B * T * C_in * P * element_size
    slices = _weight_grad_slices(x_bytes, B, P, C_in, C_out, K, acc_size, meta, device)
    num_dw = slices * _cdiv(C_in, meta["DW_BLOCK_IN"]) * _cdiv(C_out, meta["DW_BLOCK_OUT"])
    reduce = None
    if slices > 1:
        weight_numel = C_in * C_out * K * 2
        reduce = _Launch(_sum_slices_kernel, (_cdiv(weight_numel, _SUM_BLOCK),), {"BLOCK": _SUM_BLOCK, "num_warps": 4})
    return _BackwardPlan(_Launch(_spectral_backward_kernel, (num_dx + num_dw,), meta), num_dx, slices, reduce)


def _autotuning() -> bool:
    return not INTERPRETING and settings.get(AUTOTUNE_ENV_VAR) != "0"


# ------------------------------------------------------------------------------------------------
# The ops


def _pixel_strides(shape, strides) -> tuple[int, int, int, int] | None:
    """The strides of a [B, T, C, *S] tensor seen as [B, T, C, P], or None when the trailing dims do not
    merge into one pixel stride."""
    trailing = [(size, stride) for size, stride in zip(shape[3:], strides[3:]) if size != 1]
    if all(outer == inner * size for (_, outer), (size, inner) in zip(trailing, trailing[1:])):
        return (*strides[:3], trailing[-1][1] if trailing else 1)
    return None


def _pixel_layout(shape, strides) -> tuple[int, tuple[int, int, int, int], bool]:
    """(P, the [B, T, C, P] strides, whether the tensor must first be copied to [B, T, C, P])."""
    pixels = math.prod(shape[3:])
    merged = _pixel_strides(shape, strides)
    if merged is None:
        return pixels, (shape[1] * shape[2] * pixels, shape[2] * pixels, pixels, 1), True
    return pixels, merged, False


def _check_32_bit_offsets(x_shape, x_strides, weight_shape) -> None:
    """The kernels index within one batch item, and within the weights, with 32-bit offsets."""
    limit = 2**31
    span = sum((size - 1) * abs(stride) for size, stride in zip(x_shape[1:], x_strides[1:]))
    per_item = max(span + 1, x_shape[1] * weight_shape[1] * math.prod(x_shape[3:]))
    if per_item >= limit or math.prod(weight_shape) >= limit:
        raise ValueError(
            f"the triton backend needs each batch item of x and of the output, and the weight, to span "
            f"fewer than 2^31 elements; got x {tuple(x_shape)} (strides {tuple(x_strides)}) and weight "
            f"{tuple(weight_shape)}: use another backend"
        )


def _strides(prefix: str, strides, names=("b", "t", "c", "p")) -> dict:
    return {f"stride_{prefix}_{name}": stride for name, stride in zip(names, strides)}


def _dot_flags(dtype: torch.dtype, precision: str) -> dict:
    return {"INPUT_PRECISION": precision, "UPCAST_DOT": INTERPRETING and dtype == torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class _ForwardCall:
    """Everything a forward call needs but its tensors, per (shapes, strides, dtype, device, settings)."""

    out_shape: tuple
    copy_x: bool  # x's trailing dims do not merge: the kernel reads a [B, T, C, P] copy
    launch: Optional["_BoundLaunch"]  # None for an empty output
    precision: str  # the settings it was planned with (DSNO_KERNELS_FP32, DSNO_KERNELS_TRITON_AUTOTUNE)
    autotune: bool
    # The eager autograd path's backward calls for these inputs, by grad_out's strides: the rest of
    # their key is this one's, since grad_out has the output's shape (autograd checks it), grad_x is
    # allocated like x, and the backward runs with its forward's settings (so that its LeakyReLU mask
    # is the forward's).
    backward_calls: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


def _forward_call(x_shape, x_strides, w_shape, w_strides, dtype, device, negative_slope, precision, autotune):
    _check_32_bit_offsets(x_shape, x_strides, w_shape)
    B, T, C_in = x_shape[:3]
    C_out, K = w_shape[1], w_shape[2]
    out_shape = (B, T, C_out, *x_shape[3:])
    if math.prod(out_shape) == 0:
        return _ForwardCall(out_shape, False, None, precision, autotune)
    P, xs, copy_x = _pixel_layout(x_shape, x_strides)
    launch = _mix_plan(B, T, K, C_in, C_out, P, dtype.itemsize, _device_key(device), autotune)
    time_conv = negative_slope is not None
    args = dict(
        B=B, C_IN=C_in, C_OUT=C_out, P=P, **_strides("in", xs), **_strides("res", xs),
        **_strides("w", w_strides, ("in", "out", "k", "c")),
        **_strides("out", (T * C_out * P, C_out * P, P, 1)),  # the output is contiguous
        has_residual=int(time_conv), res_if_positive=float(time_conv), s_if_positive=1.0,
        res_if_negative=float(time_conv), s_if_negative=negative_slope if time_conv else 1.0, negative_slope=0.0,
        T=T, K=K, CONJUGATE=False, MASKED_INPUT=False, STORE_MASK=False, **_dot_flags(dtype, precision),
    )  # fmt: skip
    return _ForwardCall(out_shape, copy_x, launch.bind(_MIX_POINTERS, args), precision, autotune)


@dataclasses.dataclass(frozen=True)
class _BackwardCall:
    """Everything a backward call needs but its tensors."""

    pixels: int
    copy_x: bool
    copy_dy: bool
    dx_buffer: bool  # grad_x's trailing dims do not merge: the kernel writes a [B, T, C, P] buffer
    mask: tuple | None  # time_conv: (the mask's shape, the launch that writes it)
    slices: int  # of the weight gradient's pixel sums (1: written straight into grad_weight)
    launch: Optional["_BoundLaunch"]  # dx and the weight gradient; None when there is nothing to compute
    reduce: Optional["_BoundLaunch"]  # the slices' sum


def _backward_call(
    dy_shape, dy_strides, x_shape, x_strides, dx_strides, w_shape, w_strides, dtype, device, negative_slope,
    precision, autotune,
):  # fmt: skip
    _check_32_bit_offsets(x_shape, x_strides, w_shape)
    B, T, C_in = x_shape[:3]
    C_out, K = w_shape[1], w_shape[2]
    P, xs, copy_x = _pixel_layout(x_shape, x_strides)
    if B * T * C_in * P == 0 or math.prod(dy_shape) == 0:
        return _BackwardCall(P, False, False, False, None, 1, None, None)
    _, dys, copy_dy = _pixel_layout(dy_shape, dy_strides)
    _, dxs, dx_buffer = _pixel_layout(x_shape, dx_strides)
    device_key = _device_key(device)
    flags = _dot_flags(dtype, precision)
    time_conv = negative_slope is not None
    mask = None
    if time_conv:
        mask_args = dict(
            B=B, C_IN=C_in, C_OUT=C_out, P=P, **_strides("in", xs), **_strides("w", w_strides, ("in", "out", "k", "c")),
            **_strides("res", (0, 0, 0, 0)), **_strides("out", (0, 0, 0, 0)),
            has_residual=0, res_if_positive=0.0, s_if_positive=1.0, res_if_negative=0.0, s_if_negative=1.0,
            negative_slope=0.0, T=T, K=K, CONJUGATE=False, MASKED_INPUT=False, STORE_MASK=True, **flags,
        )  # fmt: skip
        launch = _mix_plan(B, T, K, C_in, C_out, P, dtype.itemsize, device_key, autotune, mask_pass=True)
        mask = ((B, T, C_out, _cdiv(P, 32)), launch.bind(_MIX_POINTERS, mask_args))
    plan = _backward_plan(B, T, K, C_in, C_out, P, dtype.itemsize, device_key)
    if plan.reduce is None:  # one slice, written straight into grad_weight (contiguous)
        dws = (0, C_out * K * 2, K * 2, 2, 1)
    else:
        dws = (C_in * C_out * K * 2, C_out * K * 2, K * 2, 2, 1)
    args = dict(
        B=B, C_IN=C_in, C_OUT=C_out, P=P, NUM_DX_PROGRAMS=plan.num_dx_programs, NUM_SLICES=plan.slices,
        **_strides("x", xs), **_strides("dy", dys), **_strides("dx", dxs),
        **_strides("w", w_strides, ("in", "out", "k", "c")), **_strides("dw", dws, ("s", "in", "out", "k", "c")),
        has_residual=int(time_conv), negative_slope=negative_slope if time_conv else 0.0,
        T=T, K=K, MASKED_INPUT=time_conv, **flags,
    )  # fmt: skip
    reduce = None
    if plan.reduce is not None:
        reduce = plan.reduce.bind(("partial_ptr", "out_ptr"), {"N": C_in * C_out * K * 2, "NUM_SLICES": plan.slices})
    launch = plan.launch.bind(("x_ptr", "dy_ptr", "w_ptr", "mask_ptr", "dx_ptr", "dw_ptr"), args)
    return _BackwardCall(P, copy_x, copy_dy, dx_buffer, mask, plan.slices, launch, reduce)


_forward_calls = functools.lru_cache(maxsize=256)(_forward_call)
_backward_calls = functools.lru_cache(maxsize=256)(_backward_call)


def clear_launch_plans() -> None:
    """Forget every cached launch plan (after a change to what plans depend on: the device limits,
    the weight-gradient slicing)."""
    for cache in (_forward_calls, _backward_calls, _mix_plan, _backward_plan):
        cache.cache_clear()


def _fp32_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: for fp32 from DSNO_KERNELS_FP32 (default tf32, read on every call);
    exact otherwise."""
    if dtype != torch.float32:
        return "ieee"
    return settings.get(FP32_PRECISION_ENV_VAR)


def _as_pixels(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(*t.shape[:3], math.prod(t.shape[3:]))


def _forward(x: torch.Tensor, weight: torch.Tensor, negative_slope: float | None, ctx=None) -> torch.Tensor:
    """spectral_time_conv (negative_slope None) or time_conv: the output's allocation and one launch.
    ctx: the eager autograd's context, which keeps the call for the backward (_backward's forward_call)."""
    traced = type(x) not in _PLAIN_TENSORS
    # Traced shapes may be symbolic (unhashable): those calls are planned afresh, and traced once.
    calls = _forward_call if traced else _forward_calls
    call = calls(
        x.shape, x.stride(), weight.shape, weight.stride(), x.dtype, x.device, negative_slope,
        _fp32_precision(x.dtype), _autotuning(),
    )  # fmt: skip
    if ctx is not None:
        ctx.forward_call = call
    out = x.new_empty(call.out_shape)
    if call.launch is not None:
        if call.copy_x:
            x = _as_pixels(x)
        call.launch(traced, x, weight, x, out, out)  # in, w, res, out, mask (unused)
    return out


def _backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    negative_slope: float | None,
    forward_call: _ForwardCall | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight); negative_slope None for spectral_time_conv, the slope for time_conv.
    time_conv: one launch recomputes the LeakyReLU mask as 1 bit per element; then one launch computes
    dx and the weight gradient's pixel slices, and (several slices) one more sums them in order.
    forward_call: the eager autograd's forward call for these inputs, which keeps the backward's."""
    traced = type(x) not in _PLAIN_TENSORS
    grad_x = torch.empty_like(x)
    grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format)
    dy_strides = grad_out.stride()
    call = forward_call.backward_calls.get(dy_strides) if forward_call is not None else None
    if call is None:
        if forward_call is not None:  # the forward's settings, so that the mask is the forward's
            precision, autotune = forward_call.precision, forward_call.autotune
        else:
            precision, autotune = _fp32_precision(x.dtype), _autotuning()
        calls = _backward_call if traced else _backward_calls
        call = calls(
            grad_out.shape, dy_strides, x.shape, x.stride(), grad_x.stride(), weight.shape, weight.stride(),
            x.dtype, x.device, negative_slope, precision, autotune,
        )  # fmt: skip
        if forward_call is not None:
            forward_call.backward_calls[dy_strides] = call
    if call.launch is None:
        return grad_x, grad_weight.zero_()
    x = _as_pixels(x) if call.copy_x else x
    dy = _as_pixels(grad_out) if call.copy_dy else grad_out
    dx = torch.empty(x.shape[:3] + (call.pixels,), dtype=x.dtype, device=x.device) if call.dx_buffer else grad_x
    mask = dy  # read only by time_conv
    if call.mask is not None:
        mask_shape, launch = call.mask
        mask = x.new_empty(mask_shape, dtype=torch.int32)
        launch(traced, x, weight, x, x, mask)  # in, w, res and out (unused), mask
    partial = grad_weight
    if call.reduce is not None:
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        partial = torch.empty((call.slices, *weight.shape), dtype=acc_dtype, device=x.device)
    call.launch(traced, x, dy, weight, mask, dx, partial)
    if call.reduce is not None:
        call.reduce(traced, partial, grad_weight)
    if call.dx_buffer:
        grad_x.copy_(dx.view(grad_x.shape))
    return grad_x, grad_weight


def _triton_spectral_time_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _forward(x, weight, None)


def _triton_time_conv(x: torch.Tensor, weight: torch.Tensor, negative_slope: float) -> torch.Tensor:
    return _forward(x, weight, negative_slope)


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


def _unavailable_reason() -> str | None:
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
    # Fakes and autograd (twice differentiable) for the dispatcher path; the eager calls below
    # launch directly instead of register_ops' generic eager functions (which dispatch to the op).
    register_ops(_OPS)


class _EagerAutograd(torch.autograd.Function):
    """The eager path's autograd: the same formula as the registered ops' (the backward op's), without
    the op dispatch. Under create_graph the backward calls the backward op, which is differentiable."""

    @staticmethod
    def forward(ctx, x, weight, negative_slope):
        ctx.save_for_backward(x, weight)
        ctx.negative_slope = negative_slope
        return _forward(x, weight, negative_slope, ctx)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        slope = ctx.negative_slope
        if torch.is_grad_enabled():
            if slope is None:
                grad_x, grad_weight = _OPS["spectral_time_conv_backward"](grad_out, x, weight)
            else:
                grad_x, grad_weight = _OPS["time_conv_backward"](grad_out, x, weight, slope)
        else:
            grad_x, grad_weight = _backward(grad_out, x, weight, slope, ctx.forward_call)
        return grad_x, grad_weight, None


def _launches_directly(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Eager mode on plain tensors: nothing traces this call (no torch.compile, no dispatch mode such
    as FakeTensorMode, no functorch transform), so the kernels can be launched without the op layer."""
    return (
        not torch.compiler.is_compiling()  # first: torch.compile need not trace what follows
        and type(x) in _PLAIN_TENSORS
        and type(weight) in _PLAIN_TENSORS
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._are_functorch_transforms_active()
    )


def _call(name: str, x: torch.Tensor, weight: torch.Tensor, negative_slope: float | None) -> torch.Tensor:
    if not _launches_directly(x, weight):
        args = (x, weight) if negative_slope is None else (x, weight, negative_slope)
        return _OPS[name](*args)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _EagerAutograd.apply(x, weight, negative_slope)
    return _forward(x, weight, negative_slope)


def _spectral_time_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _call("spectral_time_conv", x, weight, None)


def _time_conv(x: torch.Tensor, weight: torch.Tensor, negative_slope: float) -> torch.Tensor:
    return _call("time_conv", x, weight, negative_slope)


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
