"""The real DFT pieces as compile-time constants (T and K are constexprs), and the transforms along T
built from them: F and G^T applied to the T time slices of a tile, G to the R accumulated rows.

Rows are reference.py's: mode by mode, (real, imag) for a complex mode, real alone for DC / Nyquist.
Entries that are exactly 0 or +-1 are folded away at compile time: at T = 4 the transforms are additions.
"""

import math

from .runtime import tl, triton

__all__ = ["is_real_mode", "num_rows", "first_row", "basis", "first_time", "transform_row", "synthesize"]


# Compile-time functions may call only each other (Triton hashes their source into the kernel's), and
# each must be a `def` of its own name: Inductor re-emits a kernel's helpers by name when it compiles a
# graph around the triton_op (an alias of reference.mode_is_real was missing from its output on an H100).
@triton.constexpr_function
def is_real_mode(k, T):
    """reference.mode_is_real: DC and, for even T, Nyquist."""
    return k == 0 or 2 * k == T


@triton.constexpr_function
def num_rows(T, K):
    """R: one row for DC / Nyquist, two (real, imag) for every other mode."""
    return sum(1 if is_real_mode(k, T) else 2 for k in range(K))


@triton.constexpr_function
def first_row(k):
    """Row index of mode k's real row: DC has one row, the modes after it two (Nyquist is last)."""
    return 0 if k == 0 else 2 * k - 1


@triton.constexpr_function
def basis(k, t, T, imag, scaled):
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
        value *= (1.0 if is_real_mode(k, T) else 2.0) / T
    return value


@triton.constexpr_function
def first_time(imag):
    """The first t whose F entry is nonzero: t = 0 for real rows (cos 0 = 1), t = 1 for the
    imaginary rows, which only complex modes have (sin(2 pi k / T) != 0 unless 2k is 0 or T)."""
    return 1 if imag else 0


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
def transform_row(
    tiles, k: tl.constexpr, T: tl.constexpr, IMAG: tl.constexpr, SCALED: tl.constexpr, ACC_DTYPE: tl.constexpr
):
    """One row of F @ tiles (SCALED=False) or G^T @ tiles (SCALED=True) in ACC_DTYPE, tiles being the
    T time slices (kept in the input dtype: half the registers for bf16 / fp16)."""
    first: tl.constexpr = first_time(IMAG)
    row = _scaled(tiles[first].to(ACC_DTYPE), basis(k, first, T, IMAG, SCALED))
    for t in tl.static_range(first + 1, T):
        row = _accumulate(row, tiles[t].to(ACC_DTYPE), basis(k, t, T, IMAG, SCALED))
    return row


@triton.jit
def synthesize(rows, t: tl.constexpr, T: tl.constexpr, K: tl.constexpr):
    """Time slice t of G @ rows; DC's entry, 1 / T, is never 0."""
    value = _scaled(rows[0], basis(0, t, T, False, True))
    for k in tl.static_range(1, K):
        value = _accumulate(value, rows[first_row(k)], basis(k, t, T, False, True))
        if not is_real_mode(k, T):
            value = _accumulate(value, rows[first_row(k) + 1], basis(k, t, T, True, True))
    return value
