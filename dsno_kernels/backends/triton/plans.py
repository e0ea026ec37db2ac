"""Launch plans: which kernel runs with which grid and configuration, as pure functions of the
problem (sizes, element size, autotuning or not) and a `DeviceLimits` (None: the interpreter's),
cached (dsno_kernels/_cache.py), so that a call only binds its arguments and launches.

    mix_plan        the forward's launch, or time_conv's backward mask pass: one configuration, or an
                    autotuner over mix_variants (one tile per program, then persistent candidates)
    backward_plan   dx and grad_weight's pixel slices in one launch, and with several slices their sum
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from ..._cache import cached
from .configs import (
    PERSISTENT_VARIANTS,
    DeviceLimits,
    cdiv,
    launch_configs,
    register_budgets,
    staged_elements,
    tile_area,
)
from .kernels import _spectral_backward_kernel, _spectral_mix_kernel, _sum_slices_kernel
from .runtime import triton

__all__ = [
    "BLOCK_NAMES",
    "Launch",
    "BoundLaunch",
    "config_meta",
    "mix_meta",
    "mix_grid",
    "mix_variants",
    "resident_programs",
    "mix_plan",
    "grad_weight_slices",
    "BackwardPlan",
    "backward_plan",
]

# The constexpr names of each kernel kind's (block, block, block) configuration entries.
BLOCK_NAMES = {
    "mix": ("BLOCK_OUT", "BLOCK_IN", "BLOCK_P"),
    "grad_weight": ("GRAD_WEIGHT_BLOCK_IN", "GRAD_WEIGHT_BLOCK_OUT", "GRAD_WEIGHT_BLOCK_P"),
}
_MIX_AUTOTUNE_KEY = ["B", "C_IN", "C_OUT", "P", "T", "K", "has_residual", "STORE_MASK"]
_SUM_BLOCK = 1024
# grad_weight's partial sums may take at most this share of x's bytes (else one slice, written
# straight into grad_weight).
_PARTIAL_BUDGET = 0.1
# Programs per SM the interpreter's grids assume (its CPU tensors have no limits).
_INTERPRETER_PROCESSORS = 2


def config_meta(kernel: str, config) -> dict:
    """A configuration tuple as the launch's keyword arguments (constexprs, num_warps, num_stages)."""
    *blocks, warps, stages = config
    return {**dict(zip(BLOCK_NAMES[kernel], blocks)), "num_warps": warps, "num_stages": stages}


def mix_meta(config, persistent: int) -> dict:
    return {**config_meta("mix", config), "PERSISTENT": persistent}


@cached
def _autotuned_mix(variants: tuple):
    """The mix kernel autotuned over `variants` ((configuration, PERSISTENT) pairs; one autotuner per
    distinct list, so that torch.compile, which times an autotuner's whole list, sees only the pruned
    one)."""
    triton_configs = []
    for config, persistent in variants:
        kwargs = mix_meta(config, persistent)
        warps, stages = kwargs.pop("num_warps"), kwargs.pop("num_stages")
        triton_configs.append(triton.Config(kwargs, num_warps=warps, num_stages=stages))
    return triton.autotune(configs=triton_configs, key=_MIX_AUTOTUNE_KEY)(_spectral_mix_kernel)


@dataclasses.dataclass(frozen=True)
class Launch:
    """A kernel (or autotuner), its grid and its configuration's keyword arguments."""

    kernel: object
    grid: object  # a tuple, or a function of the configuration (autotuner)
    meta: dict

    def bind(self, pointers: tuple, args: dict) -> BoundLaunch:
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
        return BoundLaunch(self, pointers, tuple(bound), tuple(values[name] for name in bound), options)


@dataclasses.dataclass
class BoundLaunch:
    """A Launch with its call's arguments; called with the tensors' pointers, it launches."""

    launch: Launch
    pointer_names: tuple
    names: tuple
    values: tuple  # the arguments after the pointers, in signature order (then the configuration's)
    options: dict  # num_warps, num_stages
    tuned: BoundLaunch | None = None  # an autotuner's choice for these arguments, once made

    def rebound(self, launch: Launch) -> BoundLaunch:
        """The same arguments bound to another launch of the same kernel (its configuration wins)."""
        return launch.bind(self.pointer_names, dict(zip(self.names, self.values)))

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
            self.tuned = self.rebound(Launch(kernel.fn, grid(meta), meta))


def _processors(limits: DeviceLimits | None) -> int:
    return limits.processors if limits is not None else _INTERPRETER_PROCESSORS


def mix_grid(B: int, P: int, C_out: int, processors: int, meta: dict) -> tuple:
    """One program per tile, or (persistent) at most meta["PERSISTENT"] per multiprocessor."""
    tiles = B * cdiv(P, meta["BLOCK_P"]) * cdiv(C_out, meta["BLOCK_OUT"])
    if meta.get("PERSISTENT"):
        return (min(tiles, processors * meta["PERSISTENT"]),)
    return (tiles,)


def mix_variants(
    T: int, K: int, C_in: int, C_out: int, P: int, element_size: int, limits: DeviceLimits | None, autotune: bool,
    mask_pass: bool = False,
) -> list[tuple[tuple, int]]:  # fmt: skip
    """(configuration, PERSISTENT) pairs of the forward's launch or the backward's mask pass (which
    packs 32 pixels per word: BLOCK_P >= 32), first guess first: launch_configs' candidates for the
    device's shared memory and register budget, one program per tile (only the first without
    autotuning); with autotuning, then the first PERSISTENT_VARIANTS candidates under the (lower)
    persistent budget whose tiles are at least a quarter of the first guess's, in the persistent mode,
    with as many programs per SM as stay resident by registers and shared memory."""
    shared = limits.shared_memory if limits is not None else None
    budgets = register_budgets(limits)

    def candidates(budget: int) -> list:
        configs = launch_configs("mix", T, K, C_in, C_out, P, element_size, shared, budget)
        if not autotune:
            configs = configs[:1]
        if mask_pass:
            configs = [c for c in configs if c[2] >= 32] or [(*configs[0][:2], 32, *configs[0][3:])]
        return configs

    configs = candidates(budgets.mix)
    if not autotune:
        return [(configs[0], 0)]
    persistent = candidates(budgets.persistent if element_size == 2 else budgets.persistent_fp32)
    # As in launch_configs: no tile under a quarter of the first guess's.
    persistent = [c for c in persistent if 4 * tile_area("mix", c) >= tile_area("mix", configs[0])]
    persistent = persistent[:PERSISTENT_VARIANTS]
    return [(c, 0) for c in configs] + [(c, resident_programs(T, K, c, element_size, limits)) for c in persistent]


def resident_programs(T: int, K: int, config, element_size: int, limits: DeviceLimits | None) -> int:
    """Programs of a mix configuration one SM keeps resident: by registers (at up to 255 per thread,
    allocated as 256) and by the shared memory its pipeline stages take (estimated high: an
    underestimate of the count)."""
    warps, stages = config[3:]
    registers = limits.registers_per_sm if limits is not None else DeviceLimits.registers_per_sm
    by_registers = registers // (256 * 32) // warps
    if limits is None:
        return max(1, by_registers)
    pipeline = stages * staged_elements("mix", T, K, config) * element_size + 1024  # 1 KB reserved per CTA
    return max(1, min(by_registers, limits.shared_memory_per_sm // pipeline))


@cached
def mix_plan(
    B: int, T: int, K: int, C_in: int, C_out: int, P: int, element_size: int, limits: DeviceLimits | None,
    autotune: bool, mask_pass: bool = False,
) -> Launch:  # fmt: skip
    """The forward's launch, or the backward's mask pass: the first of mix_variants, or with
    autotuning the autotuner over all of them."""
    variants = mix_variants(T, K, C_in, C_out, P, element_size, limits, autotune, mask_pass)
    grid = functools.partial(mix_grid, B, P, C_out, _processors(limits))
    if len(variants) == 1:
        meta = mix_meta(*variants[0])
        return Launch(_spectral_mix_kernel, grid(meta), meta)
    return Launch(_autotuned_mix(tuple(variants)), grid, {})


def grad_weight_slices(
    x_bytes: int, B: int, P: int, C_in: int, C_out: int, K: int, acc_size: int, meta: dict,
    limits: DeviceLimits | None,
) -> int:  # fmt: skip
    """How many pixel slices grad_weight is split into: about one program per multiprocessor (the dx
    programs of the same launch fill the rest), no more than there are pixel tiles, and partial sums
    of at most _PARTIAL_BUDGET of x's bytes; 1 means no partial buffer at all."""
    programs_per_slice = cdiv(C_in, meta["GRAD_WEIGHT_BLOCK_IN"]) * cdiv(C_out, meta["GRAD_WEIGHT_BLOCK_OUT"])
    budget = int(_PARTIAL_BUDGET * x_bytes) // (C_in * C_out * K * 2 * acc_size)
    tiles = B * cdiv(P, meta["GRAD_WEIGHT_BLOCK_P"])
    return max(1, min(cdiv(_processors(limits), programs_per_slice), tiles, budget))


@dataclasses.dataclass(frozen=True)
class BackwardPlan:
    launch: Launch  # the dx and grad_weight programs in one launch
    num_dx_programs: int
    slices: int
    reduce: Launch | None  # the deterministic sum of the slices (None for one slice)


@cached
def backward_plan(
    B: int, T: int, K: int, C_in: int, C_out: int, P: int, element_size: int, limits: DeviceLimits | None,
    slices: int | None = None,
) -> BackwardPlan:  # fmt: skip
    """The backward's launches: the first configuration of each half (dx: the mix kernel's, with the
    channel roles swapped; grad_weight: its own kernel's), no autotuning. `slices`: grad_weight's pixel
    slices, None for grad_weight_slices' number."""
    shared = limits.shared_memory if limits is not None else None
    budgets = register_budgets(limits)
    dx_config = launch_configs("mix", T, K, C_out, C_in, P, element_size, shared, budgets.dx)[0]
    gw_config = launch_configs("grad_weight", T, K, C_in, C_out, P, element_size, shared, budgets.grad_weight)[0]
    meta = {**config_meta("grad_weight", gw_config), **config_meta("mix", dx_config)}
    # One launch, one warp count: the larger (a half given more warps needs fewer registers per thread).
    meta["num_warps"] = max(dx_config[3], gw_config[3])
    # The two halves' pipelines are allocated side by side: fewer stages until both fit.
    staged = (staged_elements("mix", T, K, dx_config) + staged_elements("grad_weight", T, K, gw_config)) * element_size
    while shared is not None and meta["num_stages"] > 1 and meta["num_stages"] * staged > shared:
        meta["num_stages"] -= 1
    num_dx = mix_grid(B, P, C_in, 0, meta)[0]  # one program per tile
    if slices is None:
        acc_size = 8 if element_size == 8 else 4
        x_bytes = B * T * C_in * P * element_size
        slices = grad_weight_slices(x_bytes, B, P, C_in, C_out, K, acc_size, meta, limits)
    num_gw = slices * cdiv(C_in, meta["GRAD_WEIGHT_BLOCK_IN"]) * cdiv(C_out, meta["GRAD_WEIGHT_BLOCK_OUT"])
    reduce = None
    if slices > 1:
        weight_numel = C_in * C_out * K * 2
        reduce = Launch(_sum_slices_kernel, (cdiv(weight_numel, _SUM_BLOCK),), {"BLOCK": _SUM_BLOCK, "num_warps": 4})
    return BackwardPlan(Launch(_spectral_backward_kernel, (num_dx + num_gw,), meta), num_dx, slices, reduce)
