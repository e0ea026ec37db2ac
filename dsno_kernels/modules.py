"""nn.Modules over the ops: the weight layout and initialisation are DSNO's SpectralConv1d, and its
layer state_dicts load as they are: DSNO's SpectralConv1d stores the weight as `weights1` and its
TimeConv as `t_conv.weights1`; both names are read as `weight`."""

from __future__ import annotations

import torch
from torch import nn

from .api import spectral_time_conv, time_conv

__all__ = ["SpectralTimeConv", "TimeConv"]


def _rename_dsno_key(state_dict, prefix: str, dsno_name: str) -> None:
    """Read DSNO's name for the weight (e.g. `t_conv.weights1`) as `weight`, unless both are given."""
    if prefix + dsno_name in state_dict and prefix + "weight" not in state_dict:
        state_dict[prefix + "weight"] = state_dict.pop(prefix + dsno_name)


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

    _dsno_weight_name = "weights1"  # DSNO's SpectralConv1d

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _rename_dsno_key(state_dict, prefix, self._dsno_weight_name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spectral_time_conv(x, self.weight, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, modes={self.modes}"


class TimeConv(SpectralTimeConv):
    """DSNO's temporal layer: x + leaky_relu(spectral_time_conv(x, weight), negative_slope)."""

    _dsno_weight_name = "t_conv.weights1"  # DSNO's TimeConv (with_nin=False, as in all its configs)

    def __init__(self, channels: int, modes: int, negative_slope: float = 0.01, *, backend: str = "auto"):
        super().__init__(channels, channels, modes, backend=backend)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return time_conv(x, self.weight, negative_slope=self.negative_slope, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, modes={self.modes}, negative_slope={self.negative_slope}"
