"""nn.Modules over the ops: the weight layout and initialisation are DSNO's SpectralConv1d, so its
checkpoints load unchanged."""

from __future__ import annotations

import torch
from torch import nn

from .api import spectral_time_conv, time_conv

__all__ = ["SpectralTimeConv", "TimeConv"]


class SpectralTimeConv(nn.Module):
    """y = irfft(rfft(x, dim=1)[:, :modes] . W, n=T, dim=1) over x [B, T, C_in, *S].

    weight: [in_channels, out_channels, modes, 2] (real, imag), initialised as DSNO's SpectralConv1d:
    scale * rand(...) with scale = 1 / (in_channels * out_channels)."""

    def __init__(self, in_channels: int, out_channels: int, modes: int, *, backend: str = "auto"):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("modes", modes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels, self.out_channels, self.modes = in_channels, out_channels, modes
        self.backend = backend
        scale = 1.0 / (in_channels * out_channels)
        self.weight = nn.Parameter(scale * torch.rand(in_channels, out_channels, modes, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spectral_time_conv(x, self.weight, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, modes={self.modes}"


class TimeConv(SpectralTimeConv):
    """DSNO's temporal layer: x + leaky_relu(spectral_time_conv(x, weight), negative_slope)."""

    def __init__(self, channels: int, modes: int, negative_slope: float = 0.01, *, backend: str = "auto"):
        super().__init__(channels, channels, modes, backend=backend)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return time_conv(x, self.weight, negative_slope=self.negative_slope, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, modes={self.modes}, negative_slope={self.negative_slope}"
