"""The DFT-as-GEMM path (gemm_kernels.py) for T > MAX_FUSED_TIME_POINTS: its configurations, launch plans
and per-call records, pure functions of the problem and a `DeviceLimits` (None: the interpreter's),
cached like the fused path's (calls.py binds them into ForwardCall / BackwardCall).

    forward    X = F x (analysis), Y = X W per mode (mix), y = epilogue(G Y) (synthesis): 3 launches
    backward   X = F x; time_conv: Y = X W; F g (g = dy, time_conv: dy * leaky_relu'(G Y) recomputed);
               dX = F g conj(W)^T; grad_weight = conj(X)^T D F g per mode; dx = G dX (+ dy for
               time_conv): 5 launches (spectral_time_conv), 6 (time_conv)

Every launch is a tl.dot loop; the only tensors besides the op's are the spectra, [B * P, K, 2, C] in
the input dtype (2K / T of the size of x or y each; two in the forward, three or four in the backward).
grad_weight is one deterministic pass over the rows (no slices, no atomics). Each launch runs one
configuration per problem (its blocks fitted to the extents); DSNO_KERNELS_TRITON_AUTOTUNE does not
apply here yet.
"""

from __future__ import annotations

import dataclasses

import torch

from ..._cache import cached
from .configs import DeviceLimits, cdiv
from .gemm_kernels import _complex_mix_kernel, _spectral_analysis_kernel, _spectral_synthesis_kernel
from .plans import BoundLaunch, Launch

__all__ = [
    "TRANSFORM_CONFIGS",
    "MIX_CONFIGS",
    "transform_config",
    "mix_config",
    "GemmForward",
    "GemmBackward",
    "gemm_forward",
    "gemm_backward",
]

ANALYSIS_POINTERS = ("in_ptr", "spec_ptr", "out_ptr")
MIX_POINTERS = ("a_ptr", "b_ptr", "c_ptr")
SYNTHESIS_POINTERS = ("spec_ptr", "res_ptr", "out_ptr")

# The largest blocks on a GPU, shrunk to each problem's extents: (BLOCK_T, BLOCK_C, BLOCK_R, num_warps,
# num_stages) of the analysis and synthesis kernels, (BLOCK_M, BLOCK_N, BLOCK_L, num_warps, num_stages)
# of the mix kernel, by the input's element size: wider elements take more registers per tile (with
# the bf16 blocks the fp32 mix spills on sm_80 and the gated analysis takes all 255 registers; with
# the fp32 blocks the fp64 mix spills). Their registers, shared memory and spills (none) at the FNO-1D
# shapes are in benchmarks/results/kernel_report.md (bf16, fp32).
TRANSFORM_CONFIGS = {2: (32, 64, 64, 4, 2), 4: (32, 64, 32, 4, 2), 8: (32, 32, 32, 4, 2)}
MIX_CONFIGS = {2: (64, 64, 32, 4, 2), 4: (64, 64, 16, 4, 2), 8: (32, 32, 16, 4, 2)}
# The interpreter's blocks: tl.dot's minimum, so that small test shapes span several blocks.
_INTERPRETER_BLOCK = 16


def _block(extent: int, largest: int) -> int:
    """The smallest power of two >= extent (at least 16, tl.dot's minimum), at most `largest`."""
    return min(largest, max(16, 1 << max(0, extent - 1).bit_length()))


def _fitted(config: tuple, extents: tuple, limits: DeviceLimits | None) -> tuple:
    *blocks, warps, stages = config
    if limits is None:
        blocks, stages = [_INTERPRETER_BLOCK] * len(blocks), 1
    return (*(_block(e, b) for e, b in zip(extents, blocks)), warps, stages)


def transform_config(T: int, K: int, C: int, element_size: int, limits: DeviceLimits | None) -> tuple:
    """(BLOCK_T, BLOCK_C, BLOCK_R, num_warps, num_stages) of the analysis and synthesis of C channels.
    The synthesis and time_conv's gated analysis of the same C_out get the same blocks, so that the
    backward recomputes the forward's s bit for bit (its LeakyReLU branch is the forward's)."""
    return _fitted(TRANSFORM_CONFIGS[element_size], (T, C, 2 * K), limits)


def mix_config(M: int, N: int, L: int, element_size: int, limits: DeviceLimits | None) -> tuple:
    """(BLOCK_M, BLOCK_N, BLOCK_L, num_warps, num_stages) of one mode's [M, L] @ [L, N] mix."""
    return _fitted(MIX_CONFIGS[element_size], (M, N, L), limits)


def _meta(names: tuple, config: tuple) -> dict:
    *blocks, warps, stages = config
    return {**dict(zip(names, blocks)), "num_warps": warps, "num_stages": stages}


def _transform_meta(config: tuple) -> dict:
    return _meta(("BLOCK_T", "BLOCK_C", "BLOCK_R"), config)


def _strides(prefix: str, strides, names) -> dict:
    return {f"stride_{prefix}_{name}": stride for name, stride in zip(names, strides)}


def _spectrum(rows: int, K: int, C: int) -> tuple:
    """A spectrum's shape and its (row, part-0 channel, mode, part) strides as a mix operand."""
    return (rows, K, 2, C), (2 * K * C, 1, 2 * C, C)


def _analysis(rows, T, K, C, P, strides, gated, negative_slope, flags, element_size, limits):
    config = transform_config(T, K, C, element_size, limits)
    grid = (rows * cdiv(2 * K, config[2]) * cdiv(C, config[1]),)
    return Launch(_spectral_analysis_kernel, grid, _transform_meta(config)), dict(
        C=C, P=P, T=T, K=K, **_strides("in", strides, "btcp"), negative_slope=negative_slope, GATED=gated, **flags
    )


def _synthesis(rows, T, K, C, P, res_strides, out_strides, epilogue, flags, element_size, limits):
    config = transform_config(T, K, C, element_size, limits)
    grid = (rows * cdiv(T, config[0]) * cdiv(C, config[1]),)
    res_pos, s_pos, res_neg, s_neg = epilogue
    args = dict(
        C=C, P=P, T=T, K=K, **_strides("res", res_strides, "btcp"), **_strides("out", out_strides, "btcp"),
        has_residual=int(res_pos != 0.0 or res_neg != 0.0), res_if_positive=res_pos, s_if_positive=s_pos,
        res_if_negative=res_neg, s_if_negative=s_neg, **flags,
    )  # fmt: skip
    return Launch(_spectral_synthesis_kernel, grid, _transform_meta(config)), args


def _mix(K, M, N, L, T, a_strides, b_strides, c_strides, conjugate, scale_modes, flags, element_size, limits):
    """C_k = op(A_k) @ op(B_k) for every mode k; conjugate: (A's, B's)."""
    config = mix_config(M, N, L, element_size, limits)
    grid = (K * cdiv(M, config[0]) * cdiv(N, config[1]),)
    args = dict(
        M=M, N=N, L=L, T=T, **_strides("a", a_strides, "mlkc"), **_strides("b", b_strides, "lnkc"),
        **_strides("c", c_strides, "mnkc"), CONJUGATE_A=conjugate[0], CONJUGATE_B=conjugate[1],
        SCALE_MODES=scale_modes, **flags,
    )  # fmt: skip
    return Launch(_complex_mix_kernel, grid, _meta(("BLOCK_M", "BLOCK_N", "BLOCK_L"), config)), args


def _bound(pointers: tuple, planned) -> BoundLaunch:
    launch, args = planned
    return launch.bind(pointers, args)


@dataclasses.dataclass(frozen=True)
class GemmForward:
    """The forward's three launches and its two spectra's shapes (X: C_in channels, Y: C_out)."""

    x_spectrum: tuple
    y_spectrum: tuple
    analysis: BoundLaunch
    mix: BoundLaunch
    synthesis: BoundLaunch

    def __call__(self, traced: bool, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
        """out = the op of x ([B, T, C_in, P]) and weight; out is contiguous."""
        spectrum_x = x.new_empty(self.x_spectrum)
        spectrum_y = x.new_empty(self.y_spectrum)
        self.analysis(traced, x, spectrum_x, spectrum_x)  # in, spec (unused), out
        self.mix(traced, spectrum_x, weight, spectrum_y)
        self.synthesis(traced, spectrum_y, x, out)  # spec, res, out


def _weight_operand(w_strides, transposed: bool) -> tuple:
    """The weight [C_in, C_out, K, 2] as a mix's B operand: [C_in, C_out] per mode, or transposed."""
    w_in, w_out, w_k, w_c = w_strides
    return (w_out, w_in, w_k, w_c) if transposed else (w_in, w_out, w_k, w_c)


@cached
def gemm_forward(
    B: int, T: int, K: int, C_in: int, C_out: int, P: int, x_strides: tuple, w_strides: tuple,
    element_size: int, negative_slope: float | None, flags: tuple, limits: DeviceLimits | None,
) -> GemmForward:  # fmt: skip
    """spectral_time_conv's (negative_slope None) or time_conv's forward of x [B, T, C_in, P] (strides
    x_strides) into a contiguous output; flags: the dot flags (INPUT_PRECISION, UPCAST_DOT) as items."""
    flags = dict(flags)
    rows = B * P
    x_shape, x_spec = _spectrum(rows, K, C_in)
    y_shape, y_spec = _spectrum(rows, K, C_out)
    time_conv = negative_slope is not None
    epilogue = (1.0, 1.0, 1.0, negative_slope) if time_conv else (0.0, 1.0, 0.0, 1.0)
    out_strides = (T * C_out * P, C_out * P, P, 1)
    weight = _weight_operand(w_strides, False)
    analysis = _analysis(rows, T, K, C_in, P, x_strides, False, 0.0, flags, element_size, limits)
    mix = _mix(K, rows, C_out, C_in, T, x_spec, weight, y_spec, (False, False), False, flags, element_size, limits)
    synthesis = _synthesis(rows, T, K, C_out, P, x_strides, out_strides, epilogue, flags, element_size, limits)
    return GemmForward(
        x_shape,
        y_shape,
        _bound(ANALYSIS_POINTERS, analysis),
        _bound(MIX_POINTERS, mix),
        _bound(SYNTHESIS_POINTERS, synthesis),
    )


@dataclasses.dataclass(frozen=True)
class GemmBackward:
    """The backward's launches (mix_y: time_conv's recomputed Y, else None) and its spectra's shapes."""

    x_spectrum: tuple
    y_spectrum: tuple
    analysis_x: BoundLaunch
    mix_y: BoundLaunch | None
    analysis_dy: BoundLaunch
    mix_dx: BoundLaunch
    grad_weight: BoundLaunch
    synthesis: BoundLaunch

    def __call__(self, traced: bool, x, dy, weight, dx, grad_weight) -> None:
        """dx and grad_weight (contiguous) from x, dy ([B, T, C, P] views) and weight."""
        spectrum_x = x.new_empty(self.x_spectrum)
        self.analysis_x(traced, x, spectrum_x, spectrum_x)
        gate = spectrum_x  # unused by the plain analysis
        if self.mix_y is not None:
            gate = x.new_empty(self.y_spectrum)
            self.mix_y(traced, spectrum_x, weight, gate)
        spectrum_g = x.new_empty(self.y_spectrum)
        self.analysis_dy(traced, dy, gate, spectrum_g)
        spectrum_dx = x.new_empty(self.x_spectrum)
        self.mix_dx(traced, spectrum_g, weight, spectrum_dx)
        self.grad_weight(traced, spectrum_x, spectrum_g, grad_weight)
        self.synthesis(traced, spectrum_dx, dy, dx)


@cached
def gemm_backward(
    B: int, T: int, K: int, C_in: int, C_out: int, P: int, x_strides: tuple, dy_strides: tuple, dx_strides: tuple,
    w_strides: tuple, element_size: int, negative_slope: float | None, flags: tuple, limits: DeviceLimits | None,
) -> GemmBackward:  # fmt: skip
    """The backward of gemm_forward's op: grad_weight written contiguous, dx with dx_strides."""
    flags = dict(flags)
    rows = B * P
    x_shape, x_spec = _spectrum(rows, K, C_in)
    y_shape, y_spec = _spectrum(rows, K, C_out)
    time_conv = negative_slope is not None
    weight, weight_transposed = _weight_operand(w_strides, False), _weight_operand(w_strides, True)
    mix_y = None
    if time_conv:
        mix_y = _mix(
            K, rows, C_out, C_in, T, x_spec, weight, y_spec, (False, False), False, flags, element_size, limits
        )
        mix_y = _bound(MIX_POINTERS, mix_y)
    slope = negative_slope if time_conv else 0.0
    analysis_x = _analysis(rows, T, K, C_in, P, x_strides, False, 0.0, flags, element_size, limits)
    analysis_dy = _analysis(rows, T, K, C_out, P, dy_strides, time_conv, slope, flags, element_size, limits)
    mix_dx = _mix(
        K, rows, C_in, C_out, T, y_spec, weight_transposed, x_spec, (False, True), False, flags, element_size, limits
    )
    # grad_weight [C_in, C_out, K, 2] = conj(X)^T (D F g): the rows are the reduction, A is X transposed.
    x_spec_transposed = (x_spec[1], x_spec[0], x_spec[2], x_spec[3])
    grad_weight_strides = (C_out * K * 2, K * 2, 2, 1)
    grad_weight = _mix(
        K,
        C_in,
        C_out,
        rows,
        T,
        x_spec_transposed,
        y_spec,
        grad_weight_strides,
        (True, False),
        True,
        flags,
        element_size,
        limits,
    )
    dx_epilogue = (float(time_conv), 1.0, float(time_conv), 1.0)  # dx = G dX (+ dy)
    synthesis = _synthesis(rows, T, K, C_in, P, dy_strides, dx_strides, dx_epilogue, flags, element_size, limits)
    return GemmBackward(
        x_shape,
        y_shape,
        _bound(ANALYSIS_POINTERS, analysis_x),
        mix_y,
        _bound(ANALYSIS_POINTERS, analysis_dy),
        _bound(MIX_POINTERS, mix_dx),
        _bound(MIX_POINTERS, grad_weight),
        _bound(SYNTHESIS_POINTERS, synthesis),
    )
