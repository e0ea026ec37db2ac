"""DSNO's network: a DDPM++-style U-Net backbone run on all M time points of a trajectory at once, with
a Fourier temporal layer (`dsno_kernels.TimeConv`) after every residual/attention block.

    model = build_model("cifar10")
    trajectory = model(noise [B, C, H, W], logsnr [M], y=None)      # -> [B, M, C, H, W]

How a forward pass runs (DSNO, Zheng et al. 2023, "Fast Sampling of Diffusion Models via Operator
Learning"; the backbone is the U-Net of progressive distillation, Salimans & Ho 2022):

  * logSNR embedding: logsnr -> arctan(exp(-logsnr / 2)) / (pi / 2) in [0, 1], a sinusoidal embedding
    of 1000 times that with `nf` features, then Linear(nf, temb) -> swish -> Linear(temb, temb). With
    class labels, Linear(num_classes, temb) of the one-hot label is added.
  * The noise goes through conv_in once and is repeated along M, so the backbone sees B * M
    (image, time point) pairs, each with its own logSNR embedding: activations are [B * M, C, H, W],
    b-major, so that viewing them as [B, M, C, H, W] costs nothing.
  * Residual blocks: GroupNorm -> swish -> conv3x3 -> GroupNorm scaled and shifted by the embedding
    (FiLM: h * (1 + scale) + shift) -> swish -> dropout -> conv3x3 (zero-initialised), plus a 1x1
    shortcut when the channel count changes. Down/up-sampling are BigGAN-style residual blocks that
    average-pool / nearest-upsample both paths after the first normalisation.
  * Multi-head self-attention (F.scaled_dot_product_attention) after each residual block at the
    configured resolutions, and in the middle.
  * After every residual(+attention) block of the encoder, the middle (after its attention) and the
    decoder, a temporal layer views the activations as [B, M, C, H, W] and mixes the M axis:
    h + leaky_relu(irfft(rfft(h, dim=1)[:, :K] . W, n=M, dim=1)). Resampling blocks have none.
  * GroupNorm -> swish -> conv3x3 (zero-initialised) gives each time point's state: [B, M, C, H, W].

Without its temporal layers the same network is a diffusion backbone (`UNet`, from `build_backbone`):
x_t [N, C, H, W], logsnr [N] -> [N, C, H, W]. Its parameter names are the DSNO model's minus the
temporal layers, which is how a teacher's weights initialise DSNO (`load_backbone_weights`).

Parameter counts of the presets (the acceptance numbers): "cifar10" 65,771,267 with 22 temporal layers,
"imagenet64" 329,225,091 with 29.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dsno_kernels import TimeConv, time_conv

__all__ = [
    "DSNOConfig",
    "PRESETS",
    "make_config",
    "build_model",
    "build_backbone",
    "import_factory",
    "build_from_spec",
    "build_model_from_config",
    "load_backbone_weights",
    "count_parameters",
    "temporal_layers",
    "set_temporal_backend",
    "set_temporal_precision",
    "TEMPORAL_PRECISIONS",
    "logsnr_embedding_input",
    "sinusoidal_embedding",
    "ResnetBlock",
    "Downsample",
    "Upsample",
    "AttnBlock",
    "TemporalLayer",
    "UNetLayer",
    "UNet",
    "DSNO",
]


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _attention_heads(channels: int, num_heads: int | None, head_dim: int | None) -> int:
    if head_dim is not None:
        if channels % head_dim:
            raise ValueError(f"head_dim={head_dim} does not divide the {channels} channels of an attention block")
        return channels // head_dim
    if channels % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide the {channels} channels of an attention block")
    return num_heads


@dataclasses.dataclass(frozen=True)
class DSNOConfig:
    """Architecture of the DSNO network (and of its backbone, which ignores the temporal fields)."""

    image_size: int = 32  # H = W of the images; attention placement is decided from it
    in_channels: int = 3
    out_channels: int | None = None  # None: same as in_channels
    nf: int = 256  # channels at the first level
    ch_mult: tuple[int, ...] = (1, 1, 1)  # channels per level = nf * ch_mult[level]
    num_res_blocks: int = 3  # residual blocks per level in the encoder (the decoder has one more)
    attn_resolutions: tuple[int, ...] = (16, 8)
    num_heads: int | None = 1  # give exactly one of num_heads and head_dim
    head_dim: int | None = None
    dropout: float = 0.2
    temb_dim: int = 1024  # width of the logSNR (+ class) embedding
    num_classes: int = 0  # 0: unconditional
    num_modes: int = 2  # Fourier modes K of the temporal layers
    negative_slope: float = 0.01  # of the temporal layers' LeakyReLU
    num_time_points: int = 4  # M the model is trained for (the forward pass accepts any M >= 1)
    backend: str = "auto"  # dsno_kernels backend of the temporal layers

    def __post_init__(self):
        # YAML and JSON give lists; the config is hashable and compares equal either way.
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        for name in ("image_size", "in_channels", "nf", "num_res_blocks", "temb_dim", "num_modes", "num_time_points"):
            _check_positive_int(name, getattr(self, name))
        if self.out_channels is not None:
            _check_positive_int("out_channels", self.out_channels)
        if not self.ch_mult:
            raise ValueError("ch_mult must name at least one level, got ()")
        for mult in self.ch_mult:
            _check_positive_int("ch_mult entries", mult)
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {self.num_classes!r}")
        if self.image_size % 2 ** (len(self.ch_mult) - 1):
            raise ValueError(
                f"image_size must be divisible by 2 ** (len(ch_mult) - 1) = {2 ** (len(self.ch_mult) - 1)}, "
                f"got {self.image_size}"
            )
        for name in ("num_heads", "head_dim"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if (self.num_heads is None) == (self.head_dim is None):
            raise ValueError(
                f"give exactly one of num_heads and head_dim, got num_heads={self.num_heads}, head_dim={self.head_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for resolution in self.attn_resolutions:
            if resolution not in self.resolutions:
                raise ValueError(
                    f"attn_resolutions entry {resolution} is not one of the U-Net's resolutions {self.resolutions}"
                )
            channels = self.nf * self.ch_mult[self.resolutions.index(resolution)]
            _attention_heads(channels, self.num_heads, self.head_dim)  # raises when they do not divide

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size at each level."""
        return tuple(self.image_size // 2**level for level in range(len(self.ch_mult)))

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain Python values (tuples as lists), ready for YAML or JSON."""
        fields = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in fields.items()}


PRESETS: dict[str, DSNOConfig] = {
    # DSNO's CIFAR-10 model (backbone: progressive distillation's CIFAR-10 U-Net).
    "cifar10": DSNOConfig(
        image_size=32,
        in_channels=3,
        nf=256,
        ch_mult=(1, 1, 1),
        num_res_blocks=3,
        attn_resolutions=(16, 8),
        num_heads=1,
        dropout=0.2,
        temb_dim=1024,
        num_modes=2,
        num_time_points=4,
    ),
    # DSNO's ImageNet-64 model (class-conditional; attention heads of 64 channels).
    "imagenet64": DSNOConfig(
        image_size=64,
        in_channels=3,
        nf=192,
        ch_mult=(1, 2, 3, 4),
        num_res_blocks=3,
        attn_resolutions=(32, 16, 8),
        num_heads=None,
        head_dim=64,
        dropout=0.1,
        temb_dim=768,
        num_classes=1000,
        num_modes=2,
        num_time_points=4,
    ),
    # CPU-sized, for tests and the demo: a training step on 8 images takes milliseconds.
    "tiny": DSNOConfig(
        image_size=8,
        in_channels=3,
        nf=32,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        num_heads=1,
        dropout=0.0,
        temb_dim=128,
        num_modes=2,
        num_time_points=4,
    ),
}


def make_config(name_or_config: str | Mapping[str, Any] | DSNOConfig, **overrides) -> DSNOConfig:
    """A DSNOConfig from a preset name, a dict of fields (e.g. from YAML) or a config, with overrides."""
    if isinstance(name_or_config, DSNOConfig):
        base = name_or_config
    elif isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise ValueError(f"unknown model preset {name_or_config!r}; presets are {sorted(PRESETS)}")
        base = PRESETS[name_or_config]
    elif isinstance(name_or_config, Mapping):
        overrides = {**name_or_config, **overrides}
        base = DSNOConfig()
    else:
        raise TypeError(f"expected a preset name, a dict or a DSNOConfig, got {type(name_or_config).__name__}")
    known = {field.name for field in dataclasses.fields(DSNOConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown DSNOConfig fields {unknown}; the fields are {sorted(known)}")
    return dataclasses.replace(base, **overrides)


def build_model(name_or_config: str | Mapping[str, Any] | DSNOConfig = "cifar10", **overrides) -> DSNO:
    """The DSNO network of a preset ("cifar10", "imagenet64", "tiny"), a dict or a DSNOConfig."""
    return DSNO(make_config(name_or_config, **overrides))


def build_backbone(name_or_config: str | Mapping[str, Any] | DSNOConfig = "cifar10", **overrides) -> UNet:
    """The same U-Net without temporal layers: a diffusion backbone (x_t, logsnr [N]) -> [N, C, H, W]."""
    return UNet(make_config(name_or_config, **overrides))


def import_factory(spec: str):
    """The callable named by "package.module:function" (how configs name user-defined networks)."""
    import importlib

    module_name, _, attribute = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import {spec!r} (expected 'package.module:function'): {error}") from error


def build_from_spec(name: str, overrides: Mapping[str, Any] | None, preset_builder) -> nn.Module:
    """preset_builder(name, **overrides) for a preset name, or the "package.module:function" it names."""
    overrides = dict(overrides or {})
    if ":" in name:
        return import_factory(name)(**overrides)
    return preset_builder(name, **overrides)


def build_model_from_config(model_config: Mapping[str, Any]) -> nn.Module:
    """The network of a dsno config's `model` section: name (a preset or "package.module:function") and
    overrides (its keyword arguments)."""
    return build_from_spec(model_config["name"], model_config.get("overrides"), build_model)


# ---------------------------------------------------------------------------------------------------
# Initialisation (DDPM's: variance scaling, fan_avg, uniform; zero biases; zero for the last layer of
# each residual branch, so every block starts as the identity).


def _variance_scaling_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    fan_out, fan_in = weight.shape[0], weight.shape[1]
    receptive_field = weight[0, 0].numel()
    fan_avg = (fan_in + fan_out) * receptive_field / 2
    bound = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def _conv(in_ch: int, out_ch: int, kernel_size: int, *, scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
    if scale == 0.0:
        nn.init.zeros_(conv.weight)
    else:
        _variance_scaling_(conv.weight, scale)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(in_features: int, out_features: int) -> nn.Linear:
    linear = nn.Linear(in_features, out_features)
    _variance_scaling_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in DDPM++; narrow layers (the tiny model) keep at least 4 channels per group.
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


# ---------------------------------------------------------------------------------------------------
# Embeddings


def logsnr_embedding_input(logsnr: torch.Tensor) -> torch.Tensor:
    """logSNR -> [0, 1] ("inv_cos"): the time t of the cosine schedule with that logSNR."""
    return torch.atan(torch.exp(-0.5 * logsnr.clamp(-20.0, 20.0))) / (0.5 * math.pi)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_time: float = 1.0) -> torch.Tensor:
    """Transformer-style embedding of t [N] in [0, max_time]: [sin(1000 t / max_time * f), cos(...)],
    f = 10000 ** (-i / (dim / 2 - 1)). Returns [N, dim].

    The frequencies are computed in float32 whatever t's dtype, exactly as DSNO's
    get_timestep_embedding does, so an fp64 model reproduces DSNO's fp64 outputs to rounding."""
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    half = dim // 2
    exponent = math.log(10000) / (half - 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -exponent).to(dtype)
    angles = (t.to(dtype) * (1000.0 / max_time))[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


# ---------------------------------------------------------------------------------------------------
# Building blocks. Images are [N, C, H, W] with N = B * M for DSNO; emb is [N, temb_dim].


class ResnetBlock(nn.Module):
    """DDPM++ residual block with FiLM conditioning:
    h = conv2(dropout(swish(norm2(conv1(swish(norm1(x)))) * (1 + scale) + shift))); return shortcut(x) + h,
    with (scale, shift) = Linear(swish(emb)). `resample` ("down"/"up") average-pools / nearest-upsamples
    both paths after norm1, BigGAN-style (use Downsample / Upsample)."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, resample: str | None = None):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        self.resample = resample
        self.norm1 = _group_norm(in_ch)
        self.conv1 = _conv(in_ch, out_ch, 3)
        self.temb_proj = _linear(temb_dim, 2 * out_ch)
        self.norm2 = _group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(out_ch, out_ch, 3, scale=0.0)
        self.shortcut = _conv(in_ch, out_ch, 1, scale=0.1) if in_ch != out_ch else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x))
        h, x = self._resample(h), self._resample(x)
        h = self.conv1(h)
        scale, shift = self.temb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(self.dropout(h))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return x + h


class Downsample(ResnetBlock):
    """BigGAN-style downsampling: a residual block that halves H and W (2x2 average pooling)."""

    def __init__(self, channels: int, temb_dim: int, dropout: float):
        super().__init__(channels, channels, temb_dim, dropout, resample="down")


class Upsample(ResnetBlock):
    """BigGAN-style upsampling: a residual block that doubles H and W (nearest neighbour)."""

    def __init__(self, channels: int, temb_dim: int, dropout: float):
        super().__init__(channels, channels, temb_dim, dropout, resample="up")


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H * W positions: x + proj_out(attention(qkv(norm(x))))."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = _group_norm(channels)
        self.qkv = _conv(channels, 3 * channels, 1, scale=0.1)  # channel order: (q, k, v), head, head_dim
        self.proj_out = _conv(channels, channels, 1, scale=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(N, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [N, heads, H * W, head_dim]
        h = F.scaled_dot_product_attention(q, k, v)
        # contiguous: with one head the reshape alone is a channels-last view, and the 1x1 conv's weight
        # gradient then comes out channels-last too, which DDP's gradient buckets copy with a warning
        h = h.transpose(-1, -2).contiguous().reshape(N, C, H, W)
        return x + self.proj_out(h)


TEMPORAL_PRECISIONS = ("fp32", "autocast")


class TemporalLayer(TimeConv):
    """DSNO's temporal layer on [B * M, C, H, W] activations: viewed as [B, M, C, H, W], then
    h + leaky_relu(irfft(rfft(h, dim=1)[:, :K] . W, n=M, dim=1)) through dsno_kernels.

    A trajectory of M points has only M // 2 + 1 Fourier modes; for shorter trajectories than the
    K = `modes` the layer was built with, the weights of the modes that do not exist are left out
    (exactly what rfft(h)[:, :K] does). So M = 1 works: the layer then mixes channels only.

    `precision` (set_temporal_precision): "fp32" runs the layer as DSNO does, in fp32 (fp64 stays
    fp64) with autocast off, and returns fp32 like DSNO's layer, so under bf16 autocast only the
    backbone is in bf16; "autocast" runs it in the activations' dtype on the fused low-precision
    kernels (the fast path). Outside autocast on an fp32/fp64 model the two are the same."""

    precision = "fp32"

    def forward_time_points(self, h: torch.Tensor, num_time_points: int) -> torch.Tensor:
        N, C, H, W = h.shape
        usable_modes = min(self.modes, num_time_points // 2 + 1)
        weight = self.weight[:, :, :usable_modes]
        h = h.reshape(N // num_time_points, num_time_points, C, H, W)
        if self.precision == "fp32":
            dtype = torch.promote_types(h.dtype, torch.float32)
            with torch.autocast(h.device.type, enabled=False):
                y = time_conv(h.to(dtype), weight.to(dtype), negative_slope=self.negative_slope, backend=self.backend)
        else:
            y = time_conv(h, weight, negative_slope=self.negative_slope, backend=self.backend)
        return y.reshape(N, C, H, W)


class UNetLayer(nn.Module):
    """One residual block, then attention (at the attention resolutions), then the temporal layer
    (DSNO only). The unit that the encoder, middle and decoder are made of."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        config: DSNOConfig,
        *,
        attention: bool,
        temporal: bool,
    ):
        super().__init__()
        self.res = ResnetBlock(in_ch, out_ch, config.temb_dim, config.dropout)
        self.attn = None
        if attention:
            self.attn = AttnBlock(out_ch, _attention_heads(out_ch, config.num_heads, config.head_dim))
        self.temporal = (
            TemporalLayer(out_ch, config.num_modes, config.negative_slope, backend=config.backend) if temporal else None
        )

    def forward(self, h: torch.Tensor, emb: torch.Tensor, num_time_points: int) -> torch.Tensor:
        h = self.res(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        if self.temporal is not None:
            h = self.temporal.forward_time_points(h, num_time_points)
        return h


# ---------------------------------------------------------------------------------------------------
# The networks


_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class UNet(nn.Module):
    """The diffusion backbone: x_t [N, C, H, W], logsnr [N], optional labels y [N] -> [N, C_out, H, W]
    (DSNO's teachers predict x0 or eps with it). `DSNO` is this network plus temporal layers."""

    def __init__(self, config: DSNOConfig, *, temporal: bool = False):
        super().__init__()
        self.config = config
        nf, temb_dim = config.nf, config.temb_dim

        self.logsnr_embed = nn.Sequential(_linear(nf, temb_dim), nn.SiLU(), _linear(temb_dim, temb_dim))
        self.class_embed = nn.Linear(config.num_classes, temb_dim) if config.num_classes > 0 else None
        self.conv_in = _conv(config.in_channels, nf, 3)

        def layer(in_ch: int, out_ch: int, resolution: int) -> UNetLayer:
            attention = resolution in config.attn_resolutions
            return UNetLayer(in_ch, out_ch, config, attention=attention, temporal=temporal)

        # Encoder: per level, num_res_blocks layers, then (but at the last level) a Downsample block.
        # skip_channels records the channel count of every encoder output the decoder concatenates.
        self.encoder = nn.ModuleList()
        skip_channels = [nf]
        channels = nf
        num_levels = len(config.ch_mult)
        for level, mult in enumerate(config.ch_mult):
            for _ in range(config.num_res_blocks):
                self.encoder.append(layer(channels, nf * mult, config.resolutions[level]))
                channels = nf * mult
                skip_channels.append(channels)
            if level != num_levels - 1:
                self.encoder.append(Downsample(channels, temb_dim, config.dropout))
                skip_channels.append(channels)

        # Middle: residual block + attention (+ temporal layer), then a residual block.
        self.middle = UNetLayer(channels, channels, config, attention=True, temporal=temporal)
        self.middle_out = ResnetBlock(channels, channels, temb_dim, config.dropout)

        # Decoder: per level, num_res_blocks + 1 layers, each on [h, skip] concatenated, then (but at
        # the first level) an Upsample block.
        self.decoder = nn.ModuleList()
        for level in reversed(range(num_levels)):
            out_ch = nf * config.ch_mult[level]
            for _ in range(config.num_res_blocks + 1):
                self.decoder.append(layer(channels + skip_channels.pop(), out_ch, config.resolutions[level]))
                channels = out_ch
            if level != 0:
                self.decoder.append(Upsample(channels, temb_dim, config.dropout))

        self.norm_out = _group_norm(channels)
        self.conv_out = _conv(channels, config.output_channels, 3, scale=0.0)

    def embed(self, logsnr: torch.Tensor) -> torch.Tensor:
        """logsnr [N] -> [N, temb_dim]."""
        features = sinusoidal_embedding(logsnr_embedding_input(logsnr), self.config.nf)
        return self.logsnr_embed(features.to(self.conv_in.weight.dtype))

    def embed_class(self, y: torch.Tensor) -> torch.Tensor:
        """labels [N] -> [N, temb_dim]: Linear(one_hot(y)), as an index into the weight."""
        return self.class_embed.weight.t()[y] + self.class_embed.bias

    def run_layers(self, h: torch.Tensor, emb: torch.Tensor, num_time_points: int) -> torch.Tensor:
        """conv_in output [N, nf, H, W] -> network output [N, C_out, H, W]."""
        skips = [h]
        for block in self.encoder:
            h = block(h, emb) if isinstance(block, Downsample) else block(h, emb, num_time_points)
            skips.append(h)
        h = self.middle(h, emb, num_time_points)
        h = self.middle_out(h, emb)
        for block in self.decoder:
            if isinstance(block, Upsample):
                h = block(h, emb)
            else:
                h = block(torch.cat([h, skips.pop()], dim=1), emb, num_time_points)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        c = self.config
        expected = (c.in_channels, c.image_size, c.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        if y is None:
            return
        if c.num_classes == 0:
            raise ValueError("y was given but the model is unconditional (num_classes = 0)")
        if y.shape != (x.shape[0],) or y.dtype not in _LABEL_DTYPES:
            raise ValueError(f"y must be integer class labels of shape [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}")

    def forward(self, x: torch.Tensor, logsnr: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(x, y)
        if logsnr.shape != (x.shape[0],):
            raise ValueError(f"logsnr must have shape [N] = [{x.shape[0]}] (one per image), got {tuple(logsnr.shape)}")
        emb = self.embed(logsnr)
        if y is not None:
            emb = emb + self.embed_class(y)
        return self.run_layers(self.conv_in(x), emb, num_time_points=1)


class DSNO(UNet):
    """DSNO: noise x [B, C, H, W], logsnr [M] of the M output time points, optional labels y [B] ->
    the trajectory [B, M, C_out, H, W] in one forward pass."""

    def __init__(self, config: DSNOConfig):
        super().__init__(config, temporal=True)

    def forward(self, x: torch.Tensor, logsnr: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(x, y)
        if logsnr.dim() != 1 or logsnr.shape[0] < 1:
            raise ValueError(
                f"logsnr must have shape [M] (one per output time point, M >= 1), got {tuple(logsnr.shape)}"
            )
        B, M = x.shape[0], logsnr.shape[0]
        emb = self.embed(logsnr)  # [M, temb]
        emb = emb[None] + self.embed_class(y)[:, None] if y is not None else emb.expand(B, -1, -1)
        emb = emb.reshape(B * M, -1)
        # conv_in commutes with repeating the noise along M, so it runs on the B images only.
        h = self.conv_in(x).repeat_interleave(M, dim=0)  # [B * M, nf, H, W], b-major
        out = self.run_layers(h, emb, num_time_points=M)
        return out.view(B, M, *out.shape[1:])


# ---------------------------------------------------------------------------------------------------
# Helpers


def temporal_layers(model: nn.Module) -> list[TimeConv]:
    """The temporal (TimeConv) layers of a model, in forward order."""
    return [module for module in model.modules() if isinstance(module, TimeConv)]


def set_temporal_backend(model: nn.Module, backend: str) -> None:
    """Run every temporal layer of `model` through the named dsno_kernels backend ("auto", "reference",
    "cpu", "cuda", "triton")."""
    for layer in temporal_layers(model):
        layer.backend = backend


def set_temporal_precision(model: nn.Module, precision: str) -> None:
    """Run every temporal layer of `model` in "fp32" (DSNO's numerics: fp32 with autocast off) or in
    "autocast" (the autocast dtype on the fused kernels)."""
    if precision not in TEMPORAL_PRECISIONS:
        raise ValueError(f"temporal_precision must be one of {TEMPORAL_PRECISIONS}, got {precision!r}")
    for layer in temporal_layers(model):
        if isinstance(layer, TemporalLayer):
            layer.precision = precision


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _temporal_names(model: nn.Module) -> set[str]:
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, TimeConv):
            names.update(f"{module_name}.{name}" for name, _ in module.named_parameters())
    return names


def load_backbone_weights(model: nn.Module, backbone_state: Mapping[str, torch.Tensor] | nn.Module) -> list[str]:
    """Copy a backbone's weights (a `UNet` state dict, or the module) into a DSNO model, as DSNO
    initialises training from its teacher. Every non-temporal tensor of `model` must be in the state
    dict with the same shape, and the state dict must hold nothing else; the temporal layers keep
    their initialisation. Returns the names copied."""
    if isinstance(backbone_state, nn.Module):
        backbone_state = backbone_state.state_dict()
    target = model.state_dict()
    temporal = _temporal_names(model)
    expected = set(target) - temporal
    given = set(backbone_state)
    missing = sorted(expected - given)
    if missing:
        raise KeyError(f"the backbone state dict lacks {len(missing)} tensors of the model: {missing[:10]}")
    unexpected = sorted(given - expected)
    if unexpected:
        hint = ""
        if given & temporal:
            hint = " (temporal-layer weights: this is a DSNO checkpoint; use model.load_state_dict)"
        raise KeyError(
            f"the backbone state dict has {len(unexpected)} tensors the model does not: {unexpected[:10]}{hint}"
        )
    mismatched = [
        f"{name}: model {tuple(target[name].shape)}, state dict {tuple(backbone_state[name].shape)}"
        for name in sorted(expected)
        if target[name].shape != backbone_state[name].shape
    ]
    if mismatched:
        raise ValueError(
            f"{len(mismatched)} backbone tensors have the wrong shape (is it the same configuration?): "
            + "; ".join(mismatched[:10])
        )
    with torch.no_grad():
        for name in expected:
            target[name].copy_(backbone_state[name])
    return sorted(expected)
