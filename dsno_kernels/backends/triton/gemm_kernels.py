"""The DFT-as-GEMM kernels: T > MAX_FUSED_TIME_POINTS, where the fused kernels (kernels.py), which
unroll everything over T, would not compile well. Each step is a tl.dot loop over blocks, T and K are
runtime values (one binary per configuration for every T and K):

    _spectral_analysis_kernel    X = F u along T, per row (batch item and pixel): [2K, T] @ [T, C];
                                 GATED: u = dy * leaky_relu'(s) with s = G Y recomputed per time block
    _complex_mix_kernel          per mode k, a complex GEMM C_k = op(A_k) @ op(B_k) (op: conjugate or
                                 not) over strided operands: the channel mixing Y = X W (rows as M),
                                 dX = F g conj(W)^T, and grad_weight = conj(X)^T D F g (channels as M)
    _spectral_synthesis_kernel   y = epilogue(G Y) per row and time block: [T, 2K] @ [2K, C]

A spectrum is a contiguous [B * P, K, 2, C] tensor in the input dtype: row r = 2k + part of a row's
[2K, C] block is mode k's real (part 0) or imaginary (part 1) part. DC and (even T) Nyquist have an
imaginary row of exact zeros (_basis), so their weight's imaginary part gets a zero gradient, as in the
fused kernels. The spectra are dot operands only, rounded to the input dtype as
the fused kernels round their transformed tiles. The basis entries are computed in the kernels, in
the accumulation dtype, from the integers k t mod T (_basis).
"""

import math

from .runtime import tl, triton
from .tiles import dot_operand, mma


@triton.constexpr_function
def _series_terms(dtype):
    """Terms of the sin and cos series on [-pi/4, pi/4] for `dtype`: the first left out is below
    2^-60 for fp64 (9 terms) and 2^-33 for the others (6)."""
    return 9 if dtype == tl.float64 else 6


@triton.constexpr_function
def _series_coefficient(i, odd):
    """(-1)^i / (2i + odd)!: the i-th Taylor coefficient of sin (odd) or cos, in powers of r^2."""
    return (-1.0) ** i / math.factorial(2 * i + odd)


@triton.jit
def _series(r2, ODD: tl.constexpr, DTYPE: tl.constexpr):
    """sin(r) / r (ODD) or cos(r) as a polynomial in r2 = r^2, by Horner's rule (tl.full keeps the fp64
    coefficients exact; the interpreter would round a bare Python float to fp32)."""
    n: tl.constexpr = _series_terms(DTYPE)
    value = tl.full(r2.shape, _series_coefficient(n - 1, ODD), DTYPE)
    for i in tl.static_range(1, n):
        value = value * r2 + tl.full(r2.shape, _series_coefficient(n - 1 - i, ODD), DTYPE)
    return value


@triton.jit
def _basis(rows, times, T, K, SCALED: tl.constexpr, DTYPE: tl.constexpr):
    """Entries of F (rows 2k: cos(2 pi k t / T), rows 2k + 1: -sin) or, SCALED, of G^T (the same times
    c_k / T: 1 / T for DC and Nyquist, 2 / T otherwise), for broadcastable int tensors of rows and
    times; 0 for rows at or past 2K.

    No sin / cos call (libdevice's take a stack frame for their large-argument path): with
    j = k t mod T, the angle 2 pi j / T is q pi / 2 + r, q the nearest quarter turn and
    r = (4j - qT) pi / (2T) in [-pi/4, pi/4], both from integers; -sin(a) = cos(a + pi / 2), so an
    entry is +-cos(r) or +-sin(r) by the quarter q + imag: a short series, and exactly 0 or +-1 where
    the angle is a multiple of pi / 2 (r = 0). So the imaginary rows of DC and Nyquist (j = 0 or T / 2)
    are exactly 0."""
    k = rows // 2
    imag = rows % 2
    j = k * times % T
    q = (8 * j + T) // (2 * T)  # round(4j / T), in 0..4 (j >= 0)
    r = (4 * j - q * T).to(DTYPE) * tl.full(j.shape, 1.5707963267948966, DTYPE) / T
    r2 = r * r
    quarter = (q + imag) % 4  # cos(q pi/2 + r): cos r, -sin r, -cos r, sin r for quarters 0..3
    value = tl.where(quarter % 2 == 1, r * _series(r2, 1, DTYPE), _series(r2, 0, DTYPE))
    value = tl.where((quarter == 1) | (quarter == 2), -value, value)
    value = tl.where(rows >= 2 * K, 0.0, value)
    if SCALED:
        real_mode = (k == 0) | (2 * k == T)
        value = value * tl.where(real_mode, 1.0, 2.0).to(DTYPE) / T
    return value


@triton.jit
def _synthesized_tile(
    spec_ptr,  # one row's spectrum [2K, C] (contiguous)
    times, chans, chan_mask, C, T, K,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """s[times, chans] = G @ spectrum, in BLOCK_R steps over the 2K rows."""
    dot_dtype: tl.constexpr = spec_ptr.dtype.element_ty
    s = tl.zeros((BLOCK_T, BLOCK_C), dtype=ACC_DTYPE)
    arange_r = tl.arange(0, BLOCK_R)
    for r_start in range(0, 2 * K, BLOCK_R):
        rows = r_start + arange_r
        mask = (rows < 2 * K)[:, None] & chan_mask[None, :]
        spec = tl.load(spec_ptr + rows[:, None] * C + chans[None, :], mask=mask, other=0.0)
        g = _basis(rows[None, :], times[:, None], T, K, True, ACC_DTYPE)
        g = dot_operand(g, dot_dtype, UPCAST_DOT)
        s = mma(g, dot_operand(spec, dot_dtype, UPCAST_DOT), s, INPUT_PRECISION)
    return s


@triton.jit
def _row_program(N, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's row (batch item, pixel; int64), and its block of an N-long axis (spectrum rows or
    time points) and of the C channels: channel block fastest, then the N block, then the row."""
    pid = tl.program_id(0)
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    num_n_blocks = tl.cdiv(N, BLOCK_N)
    n_block = (pid // num_c_blocks) % num_n_blocks
    row = (pid // (num_c_blocks * num_n_blocks)).to(tl.int64)
    offs_n = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
    return row, offs_n, (pid % num_c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)


@triton.jit(do_not_specialize=["T", "K"])
def _spectral_analysis_kernel(
    in_ptr,  # [B, T, C, P] strided: x, or dy
    spec_ptr,  # GATED: the forward's Y [B * P, K, 2, C], from which s = G Y is recomputed; else unused
    out_ptr,  # [B * P, K, 2, C]: F u
    C, P, T, K,
    stride_in_b, stride_in_t, stride_in_c, stride_in_p,
    negative_slope: tl.float64,  # GATED: u = dy where s > 0, else negative_slope * dy
    GATED: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """One program: BLOCK_R spectrum rows by BLOCK_C channels of one row (batch item, pixel), looping
    over T in BLOCK_T steps."""
    row, rows, chans = _row_program(2 * K, C, BLOCK_R, BLOCK_C)
    chan_mask = chans < C
    in_ptr += (row // P) * stride_in_b + (row % P) * stride_in_p
    spec_ptr += row * (2 * K * C)

    dot_dtype: tl.constexpr = in_ptr.dtype.element_ty
    acc_dtype: tl.constexpr = tl.float64 if dot_dtype == tl.float64 else tl.float32
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=acc_dtype)
    arange_t = tl.arange(0, BLOCK_T)
    for t_start in range(0, T, BLOCK_T):
        times = t_start + arange_t
        mask = (times < T)[:, None] & chan_mask[None, :]
        u = tl.load(in_ptr + times[:, None] * stride_in_t + chans[None, :] * stride_in_c, mask=mask, other=0.0)
        if GATED:
            s = _synthesized_tile(
                spec_ptr, times, chans, chan_mask, C, T, K, acc_dtype, INPUT_PRECISION, UPCAST_DOT,
                BLOCK_T, BLOCK_C, BLOCK_R,
            )  # fmt: skip
            scaled = u.to(acc_dtype) * tl.full(u.shape, negative_slope, acc_dtype)
            u = tl.where(s > 0, u, scaled.to(u.dtype))  # g, rounded to dy's dtype as the fused kernels do
        f = dot_operand(_basis(rows[:, None], times[None, :], T, K, False, acc_dtype), dot_dtype, UPCAST_DOT)
        acc = mma(f, dot_operand(u, dot_dtype, UPCAST_DOT), acc, INPUT_PRECISION)
    out_mask = (rows < 2 * K)[:, None] & chan_mask[None, :]
    out_ptr += row * (2 * K * C)
    tl.store(out_ptr + rows[:, None] * C + chans[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit(do_not_specialize=["T"])
def _complex_mix_kernel(
    a_ptr, b_ptr, c_ptr,  # per mode k: A_k [M, L], B_k [L, N], C_k [M, N], complex, strided
    M, N, L, T,
    stride_a_m, stride_a_l, stride_a_k, stride_a_c,  # _c: from the real to the imaginary part
    stride_b_l, stride_b_n, stride_b_k, stride_b_c,
    stride_c_m, stride_c_n, stride_c_k, stride_c_c,
    CONJUGATE_A: tl.constexpr, CONJUGATE_B: tl.constexpr,
    SCALE_MODES: tl.constexpr,  # C_k times c_k / T (D: grad_weight's factor)
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """One program: a [BLOCK_M, BLOCK_N] tile of one mode's C_k, looping over L in BLOCK_L steps, four
    real dots per step (as the fused kernels' mixing)."""
    pid = tl.program_id(0)
    num_n_blocks = tl.cdiv(N, BLOCK_N)
    num_m_blocks = tl.cdiv(M, BLOCK_M)
    n_block = pid % num_n_blocks
    m_block = (pid // num_n_blocks) % num_m_blocks
    k = pid // (num_n_blocks * num_m_blocks)
    offs_m = (m_block * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (n_block * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptr += k * stride_a_k
    b_ptr += k * stride_b_k

    dot_dtype: tl.constexpr = a_ptr.dtype.element_ty
    acc_dtype: tl.constexpr = tl.float64 if dot_dtype == tl.float64 else tl.float32
    acc_re = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    acc_im = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    arange_l = tl.arange(0, BLOCK_L)
    for l_start in range(0, L, BLOCK_L):
        offs_l = (l_start + arange_l).to(tl.int64)
        mask_l = offs_l < L
        a_offsets = offs_m[:, None] * stride_a_m + offs_l[None, :] * stride_a_l
        a_mask = mask_m[:, None] & mask_l[None, :]
        b_offsets = offs_l[:, None] * stride_b_l + offs_n[None, :] * stride_b_n
        b_mask = mask_l[:, None] & mask_n[None, :]
        a_re = dot_operand(tl.load(a_ptr + a_offsets, mask=a_mask, other=0.0), dot_dtype, UPCAST_DOT)
        a_im = dot_operand(tl.load(a_ptr + stride_a_c + a_offsets, mask=a_mask, other=0.0), dot_dtype, UPCAST_DOT)
        b_re = dot_operand(tl.load(b_ptr + b_offsets, mask=b_mask, other=0.0), dot_dtype, UPCAST_DOT)
        b_im = dot_operand(tl.load(b_ptr + stride_b_c + b_offsets, mask=b_mask, other=0.0), dot_dtype, UPCAST_DOT)
        if CONJUGATE_A:  # after the upcast: the interpreter negates bf16 as raw integers
            a_im = -a_im
        if CONJUGATE_B:
            b_im = -b_im
        # re = a_re b_re - a_im b_im ; im = a_re b_im + a_im b_re
        acc_re = mma(a_re, b_re, acc_re, INPUT_PRECISION)
        acc_re = mma(-a_im, b_im, acc_re, INPUT_PRECISION)
        acc_im = mma(a_re, b_im, acc_im, INPUT_PRECISION)
        acc_im = mma(a_im, b_re, acc_im, INPUT_PRECISION)
    if SCALE_MODES:
        factor = tl.where((k == 0) | (2 * k == T), 1.0, 2.0).to(acc_dtype) / T
        acc_re = acc_re * factor
        acc_im = acc_im * factor
    c_ptr += k * stride_c_k
    c_offsets = offs_m[:, None] * stride_c_m + offs_n[None, :] * stride_c_n
    c_mask = mask_m[:, None] & mask_n[None, :]
    out_dtype: tl.constexpr = c_ptr.dtype.element_ty
    tl.store(c_ptr + c_offsets, acc_re.to(out_dtype), mask=c_mask)
    tl.store(c_ptr + stride_c_c + c_offsets, acc_im.to(out_dtype), mask=c_mask)


@triton.jit(do_not_specialize=["T", "K"])
def _spectral_synthesis_kernel(
    spec_ptr,  # [B * P, K, 2, C]: Y (forward) or dX (backward)
    res_ptr,  # [B, T, C, P] strided: x or dy for the epilogues that read it, else unused
    out_ptr,  # [B, T, C, P] strided
    C, P, T, K,
    stride_res_b, stride_res_t, stride_res_c, stride_res_p,
    stride_out_b, stride_out_t, stride_out_c, stride_out_p,
    has_residual,  # 0 or 1: whether res_ptr is read
    # out = where(s > 0, res_if_positive * res + s_if_positive * s, res_if_negative * res + s_if_negative * s)
    res_if_positive: tl.float64, s_if_positive: tl.float64,
    res_if_negative: tl.float64, s_if_negative: tl.float64,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """One program: BLOCK_T time points by BLOCK_C channels of one row, s = G Y and the epilogue."""
    row, times, chans = _row_program(T, C, BLOCK_T, BLOCK_C)
    chan_mask = chans < C
    acc_dtype: tl.constexpr = tl.float64 if spec_ptr.dtype.element_ty == tl.float64 else tl.float32
    s = _synthesized_tile(
        spec_ptr + row * (2 * K * C), times, chans, chan_mask, C, T, K, acc_dtype, INPUT_PRECISION, UPCAST_DOT,
        BLOCK_T, BLOCK_C, BLOCK_R,
    )  # fmt: skip
    mask = (times < T)[:, None] & chan_mask[None, :]
    if has_residual:
        res_ptr += (row // P) * stride_res_b + (row % P) * stride_res_p
        res = tl.load(res_ptr + times[:, None] * stride_res_t + chans[None, :] * stride_res_c, mask=mask, other=0.0)
        res = res.to(acc_dtype)
    else:
        res = tl.zeros((BLOCK_T, BLOCK_C), dtype=acc_dtype)
    # tl.full keeps the fp64 factors exact (the interpreter would round a bare Python float to fp32).
    value = tl.where(
        s > 0,
        tl.full(s.shape, res_if_positive, acc_dtype) * res + tl.full(s.shape, s_if_positive, acc_dtype) * s,
        tl.full(s.shape, res_if_negative, acc_dtype) * res + tl.full(s.shape, s_if_negative, acc_dtype) * s,
    )
    out_ptr += (row // P) * stride_out_b + (row % P) * stride_out_p
    out_offsets = times[:, None] * stride_out_t + chans[None, :] * stride_out_c
    tl.store(out_ptr + out_offsets, value.to(out_ptr.dtype.element_ty), mask=mask)
