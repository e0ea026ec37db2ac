"""The DSNO network (dsno/model.py): preset sizes, shapes, the temporal layers' dispatch through
dsno_kernels, agreement across backends, and loading a backbone's weights."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import dsno_kernels
from dsno.model import (
    DSNO,
    PRESETS,
    DSNOConfig,
    UNet,
    build_backbone,
    build_model,
    count_parameters,
    load_backbone_weights,
    make_config,
    set_temporal_backend,
    set_temporal_precision,
    sinusoidal_embedding,
    temporal_layers,
)
from dsno_kernels import api as kernels_api

CPU_BACKENDS = dsno_kernels.available_backends("cpu")
FAST_BACKENDS = [name for name in CPU_BACKENDS if name != "reference"]


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere: at initialisation the output convolutions are zero and the temporal
    weights tiny, which would hide most of the network from any comparison."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.copy_(noise * scale)
    return model


def tiny_inputs(config: DSNOConfig, batch: int = 2, time_points: int = 4, dtype=torch.float32, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.image_size, config.image_size, generator=generator, dtype=dtype)
    logsnr = torch.linspace(-12.0, 9.0, time_points, dtype=dtype)
    labels = torch.randint(0, max(config.num_classes, 1), (batch,), generator=generator)
    return x, logsnr, labels


# ---------------------------------------------------------------------------------------------------
# Preset sizes: DSNO's published configurations, counted on the meta device (no memory, no init cost).


@pytest.mark.parametrize(
    "name, parameters, num_temporal",
    [("cifar10", 65_771_267, 22), ("imagenet64", 329_225_091, 29)],
)
def test_preset_parameter_and_temporal_layer_counts(name, parameters, num_temporal):
    with torch.device("meta"):
        model = build_model(name)
        backbone = build_backbone(name)
    layers = temporal_layers(model)
    assert count_parameters(model) == parameters
    assert len(layers) == num_temporal
    config = PRESETS[name]
    assert all(layer.modes == config.num_modes for layer in layers)
    # The DSNO model is its backbone plus the temporal layers, nothing else.
    assert count_parameters(backbone) + sum(layer.weight.numel() for layer in layers) == parameters
    assert temporal_layers(backbone) == []


def test_tiny_preset_layout():
    model = build_model("tiny")
    config = model.config
    levels = len(config.ch_mult)
    # encoder: num_res_blocks per level; middle: 1; decoder: num_res_blocks + 1 per level.
    expected = levels * config.num_res_blocks + 1 + levels * (config.num_res_blocks + 1)
    assert len(temporal_layers(model)) == expected == 7


# ---------------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_classes": 10},
        {"image_size": 32, "in_channels": 1, "attn_resolutions": (16,)},
        {"out_channels": 6, "num_classes": 3},
    ],
    ids=["unconditional", "class-conditional", "32x32-grey", "6-channel-output"],
)
def test_tiny_output_shape(overrides):
    model = build_model("tiny", **overrides).eval()
    config = model.config
    x, logsnr, labels = tiny_inputs(config, batch=3, time_points=4)
    y = labels if config.num_classes else None
    out = model(x, logsnr, y)
    assert out.shape == (3, 4, config.output_channels, config.image_size, config.image_size)
    assert out.dtype == x.dtype


@pytest.mark.parametrize("time_points", [1, 2, 3, 5])
def test_any_number_of_time_points(time_points):
    """K = 2 modes need M >= 2; for M = 1 the temporal layers use the DC mode alone."""
    model = randomize_(build_model("tiny")).eval()
    x, logsnr, _ = tiny_inputs(model.config, time_points=time_points)
    out = model(x, logsnr)
    assert out.shape == (2, time_points, 3, 8, 8)
    assert torch.isfinite(out).all()


def test_backbone_output_shape():
    backbone = build_backbone("tiny", num_classes=4).eval()
    x, _, labels = tiny_inputs(backbone.config, batch=5)
    logsnr = torch.linspace(-5.0, 5.0, 5)
    assert backbone(x, logsnr, labels).shape == x.shape
    assert backbone(x, logsnr).shape == x.shape


# ---------------------------------------------------------------------------------------------------
# The temporal layers go through dsno_kernels, and every backend gives the same network output.


def test_temporal_layers_dispatch_through_dsno_kernels(request):
    calls = []
    reference = kernels_api.get_backend("reference")

    def recording_time_conv(x, weight, negative_slope):
        calls.append((tuple(x.shape), tuple(weight.shape), negative_slope))
        return reference.time_conv(x, weight, negative_slope)

    recorder = dataclasses.replace(reference, name="recording", time_conv=recording_time_conv)
    kernels_api.register_backend(recorder)
    request.addfinalizer(lambda: kernels_api.unregister_backend("recording"))

    model = randomize_(build_model("tiny")).eval()
    x, logsnr, _ = tiny_inputs(model.config, batch=2, time_points=4)
    set_temporal_backend(model, "reference")
    expected = model(x, logsnr)
    set_temporal_backend(model, "recording")
    out = model(x, logsnr)

    layers = temporal_layers(model)
    assert len(calls) == len(layers)
    for (x_shape, weight_shape, slope), layer in zip(calls, layers):
        assert x_shape[:3] == (2, 4, layer.in_channels)  # [B, M, C, H, W]
        assert weight_shape == (layer.in_channels, layer.in_channels, 2, 2)
        assert slope == layer.negative_slope
    torch.testing.assert_close(out, expected, rtol=0, atol=0)

    set_temporal_backend(model, "no-such-backend")
    with pytest.raises(ValueError, match="backend must be one of"):
        model(x, logsnr)


@pytest.mark.skipif(not FAST_BACKENDS, reason=f"only the reference backend runs here (available: {CPU_BACKENDS})")
@pytest.mark.parametrize("backend", FAST_BACKENDS or ["none"])
@pytest.mark.parametrize("time_points", [1, 4])
@pytest.mark.parametrize(
    # fp32: "cpu" vs "reference" measured 1.2e-6 on outputs of size 2 (the network in fp32 vs fp64: 1.2e-5).
    "dtype, rtol, atol",
    [(torch.float64, 1e-10, 1e-10), (torch.float32, 1e-5, 1e-5)],
    ids=["fp64", "fp32"],
)
def test_backends_give_the_same_model_output(backend, time_points, dtype, rtol, atol):
    model = randomize_(build_model("tiny", num_classes=3)).eval().to(dtype)
    x, logsnr, labels = tiny_inputs(model.config, batch=2, time_points=time_points, dtype=dtype)
    with torch.no_grad():
        set_temporal_backend(model, "reference")
        expected = model(x, logsnr, labels)
        set_temporal_backend(model, backend)
        out = model(x, logsnr, labels)
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_training_step_reaches_every_parameter(backend):
    model = randomize_(build_model("tiny", backend=backend, dropout=0.1)).train()
    assert {layer.backend for layer in temporal_layers(model)} == {backend}
    x, logsnr, _ = tiny_inputs(model.config, batch=4, time_points=4)
    loss = model(x, logsnr).square().mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_bf16_autocast_forward():
    model = randomize_(build_model("tiny")).eval()
    x, logsnr, _ = tiny_inputs(model.config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, logsnr)
    assert out.shape == (2, 4, 3, 8, 8)
    assert torch.isfinite(out).all()


def test_temporal_precision_fp32_runs_the_temporal_layers_as_dsno():
    torch.manual_seed(0)
    layer = build_model("tiny").encoder[0].temporal
    layer.weight.data.normal_(0, 0.1)
    h = torch.randn(2 * 4, 32, 8, 8)
    with torch.no_grad():
        exact = layer.forward_time_points(h, 4)  # fp32, no autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fp32 = layer.forward_time_points(h.bfloat16(), 4)
            layer.precision = "autocast"
            fast = layer.forward_time_points(h.bfloat16(), 4)
    # fp32: DSNO's SpectralConv1d (x.float(), autocast off) returns fp32; only the bf16 input is rounded
    assert fp32.dtype == torch.float32 and fast.dtype == torch.bfloat16
    with torch.no_grad():
        layer.precision = "fp32"
        torch.testing.assert_close(fp32, layer.forward_time_points(h.bfloat16().float(), 4), rtol=0, atol=0)
    assert (fast.float() - exact).abs().max() > (fp32 - exact).abs().max()
    model = build_model("tiny")
    set_temporal_precision(model, "autocast")
    assert {layer.precision for layer in temporal_layers(model)} == {"autocast"}
    with pytest.raises(ValueError, match="temporal_precision"):
        set_temporal_precision(model, "bf16")


def test_time_embedding_frequencies_are_float32_as_dsno():
    # DSNO's get_timestep_embedding: exp(-arange(half, dtype=float32) * (log(10000) / (half - 1))) in
    # float32, even for fp64 times; the angles are (1000 t) * frequency in t's dtype
    t = torch.tensor([0.0, 0.3, 0.999], dtype=torch.float64)
    frequencies = torch.exp(-torch.arange(64, dtype=torch.float32) * (math.log(10000) / 63))
    angles = (t * 1000.0)[:, None] * frequencies[None, :]
    expected = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    assert torch.equal(sinusoidal_embedding(t, 128), expected)
    angles = (t.float() * 1000.0)[:, None] * frequencies[None, :]
    assert torch.equal(sinusoidal_embedding(t.float(), 128), torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1))


# ---------------------------------------------------------------------------------------------------
# Time mixing and the backbone


def test_only_the_temporal_layers_mix_time_points():
    """Each time point's output depends on the other time points' logSNR only through the temporal
    layers: with their weights at zero (the identity), DSNO is the backbone run per time point."""
    model = randomize_(build_model("tiny")).eval().double()
    x, logsnr, _ = tiny_inputs(model.config, time_points=4, dtype=torch.float64)
    changed = logsnr.clone()
    changed[3] += 1.0
    with torch.no_grad():
        difference = (model(x, changed) - model(x, logsnr))[:, 0].abs().max()
        assert difference > 1e-6
        for layer in temporal_layers(model):
            layer.weight.zero_()
        torch.testing.assert_close(model(x, changed)[:, :3], model(x, logsnr)[:, :3], rtol=0, atol=0)


@pytest.mark.parametrize("num_classes", [0, 3])
def test_load_backbone_weights_round_trip(num_classes):
    """A teacher backbone's weights loaded into DSNO: every backbone tensor copied, temporal layers
    kept; with the temporal layers at zero DSNO reproduces the backbone at every time point."""
    backbone = randomize_(build_backbone("tiny", num_classes=num_classes), seed=3).eval().double()
    model = build_model("tiny", num_classes=num_classes).eval().double()
    temporal_before = [layer.weight.detach().clone() for layer in temporal_layers(model)]

    copied = load_backbone_weights(model, backbone.state_dict())

    assert set(copied) == set(backbone.state_dict())
    model_state = model.state_dict()
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(model_state[name], tensor), name
    for before, layer in zip(temporal_before, temporal_layers(model)):
        assert torch.equal(layer.weight, before)

    x, logsnr, labels = tiny_inputs(model.config, batch=2, time_points=3, dtype=torch.float64)
    y = labels if num_classes else None
    with torch.no_grad():
        for layer in temporal_layers(model):
            layer.weight.zero_()
        trajectory = model(x, logsnr, y)
        for m in range(3):
            expected = backbone(x, logsnr[m].expand(2), y)
            torch.testing.assert_close(trajectory[:, m], expected, rtol=1e-12, atol=1e-12)


def test_load_backbone_weights_accepts_a_module():
    backbone = randomize_(build_backbone("tiny"))
    model = build_model("tiny")
    load_backbone_weights(model, backbone)
    assert torch.equal(model.conv_out.weight, backbone.conv_out.weight)


def test_load_backbone_weights_errors():
    model = build_model("tiny")
    with pytest.raises(ValueError, match=r"wrong shape.*conv_in\.weight"):
        load_backbone_weights(model, build_backbone("tiny", nf=64).state_dict())
    state = build_backbone("tiny").state_dict()
    del state["conv_out.bias"]
    with pytest.raises(KeyError, match="lacks 1 tensors.*conv_out.bias"):
        load_backbone_weights(model, state)
    with pytest.raises(KeyError, match="DSNO checkpoint"):
        load_backbone_weights(model, build_model("tiny").state_dict())


# ---------------------------------------------------------------------------------------------------
# Configuration


def test_config_from_dict_and_overrides():
    from_yaml_like = make_config({**PRESETS["cifar10"].to_dict(), "ch_mult": [1, 1, 1], "attn_resolutions": [16, 8]})
    assert from_yaml_like == PRESETS["cifar10"]
    assert make_config("cifar10", dropout=0.0).dropout == 0.0
    assert make_config(PRESETS["tiny"], image_size=32, attn_resolutions=[16]).resolutions == (32, 16)
    assert isinstance(build_model({"image_size": 8, "nf": 32, "ch_mult": [1], "attn_resolutions": [8]}), DSNO)
    assert type(build_backbone("tiny")) is UNet


@pytest.mark.parametrize(
    "source, overrides, error, match",
    [
        ("cifar100", {}, ValueError, "unknown model preset"),
        ("tiny", {"width": 3}, ValueError, "unknown DSNOConfig fields"),
        ("tiny", {"attn_resolutions": (5,)}, ValueError, "not one of the U-Net's resolutions"),
        ("tiny", {"num_heads": 3}, ValueError, "does not divide"),
        ("tiny", {"head_dim": 8}, ValueError, "exactly one of num_heads and head_dim"),
        ("tiny", {"image_size": 9}, ValueError, "divisible by"),
        ("tiny", {"num_modes": 0}, ValueError, "num_modes must be a positive int"),
        (42, {}, TypeError, "preset name, a dict or a DSNOConfig"),
    ],
)
def test_config_errors(source, overrides, error, match):
    with pytest.raises(error, match=match):
        make_config(source, **overrides)


def test_input_errors():
    model = build_model("tiny")
    x, logsnr, labels = tiny_inputs(model.config)
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[:, :1], logsnr)
    with pytest.raises(ValueError, match="logsnr must have shape"):
        model(x, logsnr[:, None])
    with pytest.raises(ValueError, match="unconditional"):
        model(x, logsnr, labels)
    conditional = build_model("tiny", num_classes=3)
    with pytest.raises(ValueError, match="integer class labels"):
        conditional(x, logsnr, labels.float())
    with pytest.raises(ValueError, match="one per image"):
        build_backbone("tiny")(x, logsnr)
