"""The Triton kernels (the maths, the launch plan and the tile order are in __init__.py's docstring).

    _spectral_mix_kernel        the forward (y), and time_conv's backward mask pass (STORE_MASK), one
                                _mix_program per tile: one tile per program, or (PERSISTENT) a grid of
                                at most SMs x resident programs, each taking every grid-th tile
    _spectral_backward_kernel   dx (_mix_program on the transposed chain) and grad_weight's pixel
                                slices (_grad_weight_program) in one launch
    _sum_slices_kernel          grad_weight's slices summed in a fixed order (deterministic)

Arguments follow the Triton tutorials: *_ptr and stride_* for tensors, CAPS for constexprs.
"""

from .dft import first_row, is_real_mode, num_rows, synthesize
from .runtime import tl, triton
from .tiles import dot_operand, load_time_tiles, mask_bits_offsets, masked_time_tiles, mma, row_operand


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
        tiles = load_time_tiles(
            in_ptr + in_start * stride_in_c, stride_in_t, in_offsets, mask_p[:, None] & mask_in[None, :], T
        )
        if MASKED_INPUT:
            bit_offsets, bit_mask, shifts = mask_bits_offsets(
                in_start + arange_in, mask_in, offs_p, mask_p, num_words, True
            )
            tiles = masked_time_tiles(
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
            in_re = row_operand(tiles, k, T, False, False, acc_dtype, dot_dtype, UPCAST_DOT)
            w_re = tl.load(w_block_ptr + k * stride_w_k + w_offsets, mask=w_mask, other=0.0)
            w_re = dot_operand(w_re, dot_dtype, UPCAST_DOT)
            acc_re = mma(in_re, w_re, accs[first_row(k)], INPUT_PRECISION)
            if is_real_mode(k, T):
                mixed = mixed + (acc_re,)
            else:
                in_im = row_operand(tiles, k, T, True, False, acc_dtype, dot_dtype, UPCAST_DOT)
                w_im = tl.load(w_block_ptr + k * stride_w_k + stride_w_c + w_offsets, mask=w_mask, other=0.0)
                w_im = dot_operand(w_im, dot_dtype, UPCAST_DOT)
                if CONJUGATE:  # after the upcast: the interpreter negates bf16 as raw integers
                    w_im = -w_im
                # out_re = in_re Wr - in_im Wi ; out_im = in_re Wi + in_im Wr
                acc_re = mma(-in_im, w_im, acc_re, INPUT_PRECISION)
                acc_im = mma(in_re, w_im, accs[first_row(k) + 1], INPUT_PRECISION)
                acc_im = mma(in_im, w_re, acc_im, INPUT_PRECISION)
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
            positive = (synthesize(accs, t, T, K) > 0).to(tl.int32)
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
            s = synthesize(accs, t, T, K)
            if has_residual:
                res = tl.load(res_ptr + t * stride_res_t + res_offsets, mask=out_mask, other=0.0).to(acc_dtype)
            else:
                res = tl.zeros((BLOCK_P, BLOCK_OUT), dtype=acc_dtype)
            value = tl.where(s > 0, res_pos * res + s_pos * s, res_neg * res + s_neg * s)
            tl.store(out_ptr + t * stride_out_t + out_offsets, value.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _grad_weight_program(
    pid,
    x_ptr,  # [B, T, C_IN, P] strided
    grad_ptr,  # [B, T, C_OUT, P] strided: dy
    mask_ptr,  # [B, T, C_OUT, cdiv(P, 32)] bit mask of s > 0 (MASKED_INPUT: the gradient is dy * leaky_relu'(s))
    grad_weight_ptr,  # [NUM_SLICES, C_IN, C_OUT, K, 2] strided: this program's slice of the pixel sums
    B, C_IN, C_OUT, P, NUM_SLICES,
    stride_x_b, stride_x_t, stride_x_c, stride_x_p,
    stride_g_b, stride_g_t, stride_g_c, stride_g_p,
    stride_grad_weight_s, stride_grad_weight_in, stride_grad_weight_out,
    stride_grad_weight_k, stride_grad_weight_c,
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
        x_tiles = load_time_tiles(
            x_ptr + batch * stride_x_b + p_start * stride_x_p, stride_x_t, x_offsets,
            mask_in[:, None] & mask_p[None, :], T,
        )  # fmt: skip
        g_tiles = load_time_tiles(
            grad_ptr + batch * stride_g_b + p_start * stride_g_p, stride_g_t, g_offsets,
            mask_out[:, None] & mask_p[None, :], T,
        )  # fmt: skip
        if MASKED_INPUT:
            bit_offsets, bit_mask, shifts = mask_bits_offsets(
                offs_out, mask_out, p_start + arange_p, mask_p, num_words, False
            )
            g_tiles = masked_time_tiles(
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
            x_re = row_operand(x_tiles, k, T, False, False, acc_dtype, dot_dtype, UPCAST_DOT)
            g_re = tl.trans(row_operand(g_tiles, k, T, False, True, acc_dtype, dot_dtype, UPCAST_DOT))
            acc_re = mma(x_re, g_re, accs[first_row(k)], INPUT_PRECISION)
            if is_real_mode(k, T):
                summed = summed + (acc_re,)
            else:
                x_im = row_operand(x_tiles, k, T, True, False, acc_dtype, dot_dtype, UPCAST_DOT)
                g_im = tl.trans(row_operand(g_tiles, k, T, True, True, acc_dtype, dot_dtype, UPCAST_DOT))
                # grad_Wr += Xr dYr^T + Xi dYi^T ; grad_Wi += Xr dYi^T - Xi dYr^T
                acc_re = mma(x_im, g_im, acc_re, INPUT_PRECISION)
                acc_im = mma(x_re, g_im, accs[first_row(k) + 1], INPUT_PRECISION)
                acc_im = mma(-x_im, g_re, acc_im, INPUT_PRECISION)
                summed = summed + (acc_re, acc_im)
        accs = summed

    # Stored in the weight's layout: irfft ignores the imaginary part of DC and Nyquist, so its
    # gradient is 0.
    grad_weight_ptr += slice_id.to(tl.int64) * stride_grad_weight_s
    offsets = offs_in[:, None] * stride_grad_weight_in + offs_out[None, :] * stride_grad_weight_out
    mask = mask_in[:, None] & mask_out[None, :]
    out_dtype: tl.constexpr = grad_weight_ptr.dtype.element_ty
    for k in tl.static_range(K):
        k_ptr = grad_weight_ptr + k * stride_grad_weight_k + offsets
        tl.store(k_ptr, accs[first_row(k)].to(out_dtype), mask=mask)
        if is_real_mode(k, T):
            tl.store(k_ptr + stride_grad_weight_c, tl.zeros((BLOCK_IN, BLOCK_OUT), dtype=out_dtype), mask=mask)
        else:
            tl.store(k_ptr + stride_grad_weight_c, accs[first_row(k) + 1].to(out_dtype), mask=mask)


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
    x_ptr, dy_ptr, w_ptr, mask_ptr, dx_ptr, grad_weight_ptr,
    B, C_IN, C_OUT, P, NUM_DX_PROGRAMS, NUM_SLICES,
    stride_x_b, stride_x_t, stride_x_c, stride_x_p,
    stride_dy_b, stride_dy_t, stride_dy_c, stride_dy_p,
    stride_w_in, stride_w_out, stride_w_k, stride_w_c,
    stride_dx_b, stride_dx_t, stride_dx_c, stride_dx_p,
    stride_grad_weight_s, stride_grad_weight_in, stride_grad_weight_out,
    stride_grad_weight_k, stride_grad_weight_c,
    has_residual,
    negative_slope: tl.float64,
    T: tl.constexpr, K: tl.constexpr, MASKED_INPUT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr, BLOCK_P: tl.constexpr,
    GRAD_WEIGHT_BLOCK_IN: tl.constexpr, GRAD_WEIGHT_BLOCK_OUT: tl.constexpr, GRAD_WEIGHT_BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Both halves of the backward in one launch, from dy (and for time_conv the bit mask of s > 0):
    the first NUM_DX_PROGRAMS programs compute dx = G M* F g (+ dy for time_conv, has_residual), the
    others grad_weight's pixel slices (F x and D F g products). The two halves are
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
        _grad_weight_program(
            pid - NUM_DX_PROGRAMS, x_ptr, dy_ptr, mask_ptr, grad_weight_ptr, B, C_IN, C_OUT, P, NUM_SLICES,
            stride_x_b, stride_x_t, stride_x_c, stride_x_p,
            stride_dy_b, stride_dy_t, stride_dy_c, stride_dy_p,
            stride_grad_weight_s, stride_grad_weight_in, stride_grad_weight_out,
            stride_grad_weight_k, stride_grad_weight_c,
            negative_slope, T, K, MASKED_INPUT, INPUT_PRECISION, UPCAST_DOT,
            GRAD_WEIGHT_BLOCK_IN, GRAD_WEIGHT_BLOCK_OUT, GRAD_WEIGHT_BLOCK_P,
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
