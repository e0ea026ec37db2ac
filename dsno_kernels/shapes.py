"""The layer shapes that matter: DSNO's configurations (T = 4 time points, K = 2 modes) and an FNO-1D
layer. The GPU benchmarks time them (benchmarks/harness.py), the triton backend's launch configurations
are chosen for them (benchmarks/results/kernel_report.md), and tests/test_launch_plan.py checks its
launch plan at each."""

from __future__ import annotations

import dataclasses
import math

__all__ = ["OpShape", "GPU_SHAPES"]


@dataclasses.dataclass(frozen=True)
class OpShape:
    """x [B, T, C, *spatial], weight [C, C, K, 2]."""

    name: str
    B: int
    T: int
    K: int
    C: int
    spatial: tuple[int, ...] = ()

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.B, self.T, self.C, *self.spatial)

    @property
    def x_numel(self) -> int:
        return math.prod(self.x_shape)

    @property
    def weight_numel(self) -> int:
        return self.C * self.C * self.K * 2


GPU_SHAPES = {
    s.name: s
    for s in (
        OpShape("cifar10-32", 32, 4, 2, 256, (32, 32)),
        OpShape("cifar10-16", 32, 4, 2, 256, (16, 16)),
        OpShape("cifar10-8", 32, 4, 2, 256, (8, 8)),
        OpShape("imagenet64-64", 8, 4, 2, 192, (64, 64)),
        OpShape("imagenet64-32", 8, 4, 2, 384, (32, 32)),
        OpShape("imagenet64-16", 8, 4, 2, 576, (16, 16)),
        OpShape("imagenet64-8", 8, 4, 2, 768, (8, 8)),
        OpShape("fno1d", 64, 256, 32, 64),
    )
}
