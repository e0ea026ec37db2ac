"""Launch configurations: the candidate tiles of each kernel, pruned for a device's limits and for
registers (an estimate of the live tiles against a budget per architecture and kernel).

Everything here is a pure function of the problem and a `DeviceLimits` (None: the interpreter's CPU
tensors, with no shared-memory limit and sm_90's budgets). The registers, shared memory and spills
each configuration compiles to are measured, without a GPU, in benchmarks/results/kernel_report.md
(`python -m benchmarks.kernel_report`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from ..._cache import cached
from .dft import num_rows

__all__ = [
    "DeviceLimits",
    "A100",
    "H100",
    "device_limits",
    "MIX_CANDIDATES",
    "MIX_CANDIDATES_FP32",
    "GRAD_WEIGHT_CANDIDATES",
    "MAX_TIMED_CONFIGS",
    "PERSISTENT_VARIANTS",
    "RegisterBudgets",
    "REGISTER_BUDGETS",
    "register_budgets",
    "tile_area",
    "staged_elements",
    "launch_configs",
    "cdiv",
]


@dataclasses.dataclass(frozen=True)
class DeviceLimits:
    """What the launch plans of a CUDA device depend on (frozen and hashable: plans are cached on it)."""

    shared_memory: int  # bytes per block (the opt-in maximum)
    shared_memory_per_sm: int
    processors: int  # streaming multiprocessors
    arch: int  # compute capability as 10 * major + minor: 80, 90, ...
    registers_per_sm: int = 65536


A100 = DeviceLimits(shared_memory=163 * 1024, shared_memory_per_sm=164 * 1024, processors=108, arch=80)
H100 = DeviceLimits(shared_memory=227 * 1024, shared_memory_per_sm=228 * 1024, processors=132, arch=90)


@cached
def device_limits(device: torch.device) -> DeviceLimits | None:
    """The limits of a CUDA device, queried once; None for any other device (the interpreter's CPU
    tensors) and for CUDA tensors faked without a GPU (traced: no device to ask)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device.index if device.index is not None else torch.cuda.current_device())
    shared = getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024
    per_sm = getattr(props, "shared_memory_per_multiprocessor", 0) or shared
    registers = getattr(props, "regs_per_multiprocessor", 0) or 65536
    return DeviceLimits(shared, per_sm, props.multi_processor_count, 10 * props.major + props.minor, registers)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# (BLOCK_OUT, BLOCK_IN, BLOCK_P, num_warps, num_stages), best guess first. BLOCK_P is the dots' M:
# 64 rows per warpgroup on Hopper. The first is for the CIFAR-10 shape (T=4, K=2, C=256, bf16): three
# 128 x 64 fp32 accumulators over two warpgroups, without spills on sm_90, and three stages so that a
# BLOCK_IN step's loads are in flight during the previous step's MMAs. (128, 32, 64, 8, *) spills on
# sm_90 since the weight is read through its strides.
MIX_CANDIDATES = (
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
# sm_90, the 4-warp 64-pixel ones do not.
MIX_CANDIDATES_FP32 = tuple(c for c in MIX_CANDIDATES if c[2] <= 64)
# (BLOCK_IN, BLOCK_OUT, BLOCK_P, num_warps, num_stages); BLOCK_IN is the dots' M, BLOCK_P their K.
GRAD_WEIGHT_CANDIDATES = (
    (64, 64, 32, 8, 3),
    (64, 64, 32, 8, 2),
    (64, 64, 16, 8, 2),  # sm_80's: half the pixels per step holds fewer operand registers
    (128, 64, 32, 8, 2),
    (64, 64, 16, 4, 2),
    (32, 32, 32, 4, 2),
    (16, 16, 16, 4, 1),
)
# The autotuner times at most this many (the first that fit), to keep first calls short.
MAX_TIMED_CONFIGS = 4
# ... plus the persistent mode of the mix kernel's first this many (plans.mix_variants).
PERSISTENT_VARIANTS = 2


class RegisterBudgets(NamedTuple):
    """Registers per thread the live tiles may take (the estimate in launch_configs), per kernel."""

    mix: int  # the forward and the mask pass, one tile per program
    persistent: int  # the same, persistent (the tile loop keeps its invariants live across tiles)
    persistent_fp32: int  # ... for 4- and 8-byte inputs (the estimate undercounts their loop's registers)
    dx: int  # the backward's dx half, which shares its launch with grad_weight's and holds the mask's words
    grad_weight: int


# Per architecture, set so that no configuration the launcher picks at the GPU shapes spills on either
# (every row of benchmarks/results/kernel_report.md is checked for spills). The estimate undercounts
# what ptxas allocates, most in the persistent tile loop and in fp32; on sm_80 the MMA operands are held
# per warp in registers (mma.sync), hence its lower budgets.
REGISTER_BUDGETS = {
    90: RegisterBudgets(mix=255, persistent=196, persistent_fp32=150, dx=196, grad_weight=255),
    80: RegisterBudgets(mix=196, persistent=160, persistent_fp32=160, dx=160, grad_weight=200),
}


def register_budgets(limits: DeviceLimits | None) -> RegisterBudgets:
    """sm_80's budgets for sm_8x (sm_86 and sm_89 hold the same registers per SM), sm_90's for sm_90
    and newer and for the interpreter (limits None)."""
    return REGISTER_BUDGETS[80 if limits is not None and limits.arch < 90 else 90]


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def tile_area(kernel: str, config) -> int:
    """Output elements per program: BLOCK_OUT * BLOCK_P (mix), BLOCK_IN * BLOCK_OUT (grad_weight)."""
    return config[0] * (config[2] if kernel == "mix" else config[1])


def staged_elements(kernel: str, T: int, K: int, config) -> int:
    """Elements one pipeline stage holds in shared memory: the weight and input tiles of a BLOCK_IN
    step (mix), the x and dy tiles of a pixel tile (grad_weight)."""
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
    register_budget: int = REGISTER_BUDGETS[90].mix,
) -> list[tuple[int, int, int, int, int]]:
    """The launch configurations worth timing for one problem, best guess first: the candidates of
    `kernel` ("mix" or "grad_weight") whose live tiles fit the register budget and `shared_memory`
    (bytes per block, None for no limit), with no block more than one power of two beyond its extent
    (C_out, C_in or the pixels per batch item) and no tile under a quarter of the first one's (small
    tiles are for small problems). At most MAX_TIMED_CONFIGS; never empty."""
    R = num_rows(T, K)
    acc_size = 8 if element_size == 8 else 4
    out_extent = max(16, _next_power_of_2(C_out))
    in_extent = max(16, _next_power_of_2(C_in))
    pixel_extent = max(16, _next_power_of_2(pixels))
    if kernel == "mix":
        candidates = MIX_CANDIDATES_FP32 if element_size == 4 else MIX_CANDIDATES
    else:
        candidates = GRAD_WEIGHT_CANDIDATES
    kept = []
    for config in candidates:
        # Registers (4 bytes) of the live tiles: the accumulators, the T input tiles (converted to
        # the accumulation dtype) and two transformed rows, the weight tile. grad_weight's two
        # transformed operands are also copied per warp for the MMA: its input tiles count twice.
        if kernel == "mix":
            block_out, block_in, block_p, warps, stages = config
            live = (R * block_out * block_p + (T + 2) * block_in * block_p) * acc_size / 4
            live += block_out * block_in * element_size / 4
        else:
            block_in, block_out, block_p, warps, stages = config
            live = (R * block_in * block_out + (2 * T + 2) * (block_in + block_out) * block_p) * acc_size / 4
        staged = staged_elements(kernel, T, K, config)
        if live > register_budget * 32 * warps:
            continue
        if block_out > out_extent or block_in > in_extent or block_p > pixel_extent:
            continue
        if shared_memory is not None and stages * staged * element_size > shared_memory:
            continue
        if kept and 4 * tile_area(kernel, config) < tile_area(kernel, kept[0]):
            continue
        kept.append(config)
    if not kept:
        kept = [candidates[-1]]
    return kept[:MAX_TIMED_CONFIGS]
