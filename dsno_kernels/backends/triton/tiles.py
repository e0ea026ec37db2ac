"""What the kernels do with a tile besides the DFT: its T time slices loaded, time_conv's gradient read
through the 1-bit LeakyReLU mask, and the tl.dot operands and products."""

from .dft import transform_row
from .runtime import tl, triton

__all__ = ["load_time_tiles", "dot_operand", "row_operand", "mma", "mask_bits_offsets", "masked_time_tiles"]


@triton.jit
def load_time_tiles(ptr, stride_t, offsets, mask, T: tl.constexpr):
    """The T tiles ptr[t * stride_t + offsets] as a tuple (ptr a scalar, so that no per-t pointer
    tensor is hoisted out of the caller's loop and held in registers)."""
    tiles = ()
    for t in tl.static_range(T):
        tiles = tiles + (tl.load(ptr + t * stride_t + offsets, mask=mask, other=0.0),)
    return tiles


@triton.jit
def dot_operand(tile, DOT_DTYPE: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """tile rounded to the dot dtype; with UPCAST_DOT (interpreter, bf16) carried on in fp32."""
    tile = tile.to(DOT_DTYPE)
    if UPCAST_DOT:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def row_operand(
    tiles,
    k: tl.constexpr,
    T: tl.constexpr,
    IMAG: tl.constexpr,
    SCALED: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """transform_row as a tl.dot operand."""
    return dot_operand(transform_row(tiles, k, T, IMAG, SCALED, ACC_DTYPE), DOT_DTYPE, UPCAST_DOT)


@triton.jit
def mma(a, b, acc, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b on the tensor cores, accumulating in acc's dtype (for fp64 Triton needs out_dtype said)."""
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)


@triton.jit
def mask_bits_offsets(channels, channel_mask, pixels, pixel_mask, num_words, PIXELS_FIRST: tl.constexpr):
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
def masked_time_tiles(tiles, mask_ptr, stride_t, offsets, mask, shifts, negative_slope, T: tl.constexpr,
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
