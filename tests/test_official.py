"""DSNO's own checkpoints: the state_dict mapping both ways, the layouts it converts, checkpoint files,
`dsno convert` / `dsno sample` on them, and DSNO's sampling semantics (noise stream, uint8 rule,
time points, output files).

The official-format state_dicts are built here from DSNO's documented module order and tensor
names and shapes (models/tddpmm.py, layers.py, layersmt.py of devzhk/DSNO-pytorch), with random
values: the official weights cannot be downloaded in tests."""

from __future__ import annotations

import argparse
import io
import math
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsno import cli
from dsno.config import load_config
from dsno.model import DSNO, DSNOConfig, build_model, make_config
from dsno.official import (
    from_official_state_dict,
    is_official_checkpoint,
    load_official_checkpoint,
    official_time_points,
    to_official_state_dict,
)
from dsno.sample import dsno_noise, to_uint8_images, write_png_zip
from dsno_kernels import SpectralTimeConv, TimeConv

# Small architectures in DSNO's layout; widths of 128 so that every GroupNorm has 32 groups, as DSNO's
# attention and output norms always do.
SMALL = dict(
    image_size=8,
    nf=128,
    ch_mult=(1, 1),
    num_res_blocks=1,
    attn_resolutions=(4,),
    num_heads=1,
    temb_dim=128,
    dropout=0.0,
)
SMALL_CONDITIONAL = dict(SMALL, ch_mult=(1, 2), attn_resolutions=(8, 4), num_heads=None, head_dim=32, num_classes=10)


def official_shapes(config: DSNOConfig) -> dict[str, tuple[int, ...]]:
    """DSNO's TDDPMm state_dict keys and shapes for `config`, following its constructor."""
    c, shapes, index = config, {}, 0

    def add(module: str, tensors: dict[str, tuple[int, ...]]) -> None:
        nonlocal index
        for name, shape in tensors.items():
            shapes[f"all_modules.{index}.{module}{name}"] = shape
        index += 1

    def linear(n_in, n_out):
        add("", {"weight": (n_out, n_in), "bias": (n_out,)})

    def res(n_in, n_out):
        tensors = {
            "GroupNorm_0.weight": (n_in,),
            "GroupNorm_0.bias": (n_in,),
            "Conv_0.weight": (n_out, n_in, 3, 3),
            "Conv_0.bias": (n_out,),
            "Dense_0.weight": (2 * n_out, c.temb_dim),
            "Dense_0.bias": (2 * n_out,),
            "GroupNorm_1.weight": (n_out,),
            "GroupNorm_1.bias": (n_out,),
            "Conv_1.weight": (n_out, n_out, 3, 3),
            "Conv_1.bias": (n_out,),
        }
        if n_in != n_out:
            tensors.update({"NIN_0.W": (n_in, n_out), "NIN_0.b": (n_out,)})
        add("", tensors)

    def attn(ch):
        add(
            "",
            {
                "NINs.W": (ch, 3 * ch),
                "NINs.b": (3 * ch,),
                "NIN_3.W": (ch, ch),
                "NIN_3.b": (ch,),
                "GroupNorm_0.weight": (ch,),
                "GroupNorm_0.bias": (ch,),
            },
        )

    def tconv(ch):
        add("", {"t_conv.weights1": (ch, ch, c.num_modes, 2)})

    linear(c.nf, c.temb_dim)
    linear(c.temb_dim, c.temb_dim)
    if c.num_classes:
        linear(c.num_classes, c.temb_dim)
    add("", {"weight": (c.nf, c.in_channels, 3, 3), "bias": (c.nf,)})
    skips, ch = [c.nf], c.nf
    for level, mult in enumerate(c.ch_mult):
        for _ in range(c.num_res_blocks):
            res(ch, c.nf * mult)
            ch = c.nf * mult
            if c.resolutions[level] in c.attn_resolutions:
                attn(ch)
            tconv(ch)
            skips.append(ch)
        if level != len(c.ch_mult) - 1:
            res(ch, ch)
            skips.append(ch)
    res(ch, ch), attn(ch), tconv(ch), res(ch, ch)
    for level in reversed(range(len(c.ch_mult))):
        for _ in range(c.num_res_blocks + 1):
            res(ch + skips.pop(), c.nf * c.ch_mult[level])
            ch = c.nf * c.ch_mult[level]
            if c.resolutions[level] in c.attn_resolutions:
                attn(ch)
            tconv(ch)
        if level != 0:
            res(ch, ch)
    add("", {"weight": (ch,), "bias": (ch,)})
    add("", {"weight": (c.output_channels, ch, 3, 3), "bias": (c.output_channels,)})
    return shapes


def random_official(config: DSNOConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(config).items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        state[key] = torch.randn(shape, generator=generator, dtype=torch.float64) / math.sqrt(max(fan_in, 1))
        if "GroupNorm" in key and key.endswith("weight"):
            state[key] += 1.0
    return state


@pytest.mark.parametrize("preset, count", [("cifar10", 416), ("imagenet64", 571)])
def test_presets_have_dsnos_keys_and_shapes(preset, count):
    shapes = official_shapes(make_config(preset))
    assert len(shapes) == count
    with torch.device("meta"):
        model = build_model(preset)
    official = to_official_state_dict(model.state_dict(), model)
    assert {key: tuple(value.shape) for key, value in official.items()} == shapes


@pytest.mark.parametrize("fields", [SMALL, SMALL_CONDITIONAL], ids=["unconditional", "conditional-multihead"])
def test_mapping_round_trips_both_ways(fields):
    config = DSNOConfig(**fields)
    official = random_official(config)
    ours = from_official_state_dict(official, config)
    model = DSNO(config).double()
    model.load_state_dict(ours)  # strict: every tensor of the model, nothing else
    back = to_official_state_dict(model.state_dict(), config)
    assert back.keys() == official.keys()
    assert all(torch.equal(back[key], official[key]) for key in official)
    # and from ours: a model's own weights survive the trip through DSNO's layout
    fresh = DSNO(config).state_dict()
    again = from_official_state_dict(to_official_state_dict(fresh, config), config)
    assert all(torch.equal(again[key], fresh[key]) for key in fresh)


def test_nin_weights_are_transposed_into_1x1_convs():
    config = DSNOConfig(**SMALL_CONDITIONAL)
    official = random_official(config)
    ours = from_official_state_dict(official, config)
    # the first decoder layer concatenates 256 + 256 channels into 256: DSNO's NIN_0 shortcut
    index = [key for key in official if key.endswith("NIN_0.W") and official[key].shape == (512, 256)][0]
    mine = [key for key in ours if key.endswith("shortcut.weight") and ours[key].shape == (256, 512, 1, 1)][0]
    assert torch.equal(ours[mine][:, :, 0, 0], official[index].t())


def dsno_attention(x, official, prefix, heads):
    """DSNO's MultiheadAttnBlock from its tensors: qkv channels ordered (head, q/k/v, d)."""
    N, C, H, W = x.shape
    h = F.group_norm(x, 32, official[f"{prefix}.GroupNorm_0.weight"], official[f"{prefix}.GroupNorm_0.bias"], eps=1e-6)
    h = torch.einsum("nchw,co->nohw", h, official[f"{prefix}.NINs.W"]) + official[f"{prefix}.NINs.b"][:, None, None]
    h = h.reshape(N, heads, 3 * C // heads, H * W).permute(0, 1, 3, 2)
    q, k, v = h.chunk(3, dim=-1)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // heads), dim=-1)
    h = (weights @ v).permute(0, 1, 3, 2).reshape(N, C, H, W)
    return (
        x
        + torch.einsum("nchw,co->nohw", h, official[f"{prefix}.NIN_3.W"])
        + official[f"{prefix}.NIN_3.b"][:, None, None]
    )


def test_multihead_attention_channel_order():
    config = DSNOConfig(**SMALL_CONDITIONAL)
    official = random_official(config)
    model = DSNO(config).double()
    model.load_state_dict(from_official_state_dict(official, config))
    block = model.encoder[0].attn  # 128 channels, head_dim 32: 4 heads
    assert block.num_heads == 4
    prefix = "all_modules.5"  # dense0, dense1, class, conv_in, res block, then this attention
    assert f"{prefix}.NINs.W" in official and official[f"{prefix}.NINs.W"].shape == (128, 384)
    x = torch.randn(3, 128, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(block(x), dsno_attention(x, official, prefix, 4), rtol=1e-12, atol=1e-12)


def test_mapping_refuses_other_architectures():
    official = random_official(DSNOConfig(**SMALL))
    with pytest.raises(KeyError, match="missing"):
        from_official_state_dict(official, DSNOConfig(**SMALL_CONDITIONAL))
    wider = dict(SMALL, temb_dim=256)
    with pytest.raises(ValueError, match="all_modules.0.weight"):
        from_official_state_dict(official, DSNOConfig(**wider))
    with_nin = dict(official, **{"all_modules.6.nin.W": torch.zeros(128, 128)})
    with pytest.raises(KeyError, match="with_nin"):
        from_official_state_dict(with_nin, DSNOConfig(**SMALL))


def test_time_conv_layers_load_dsno_layer_state_dicts():
    weight = torch.randn(6, 6, 2, 2)
    layer = TimeConv(6, 2)
    layer.load_state_dict({"t_conv.weights1": weight})  # DSNO's TimeConv(with_nin=False)
    assert torch.equal(layer.weight, weight)
    spectral = SpectralTimeConv(6, 4, 2)
    spectral.load_state_dict({"weights1": weight[:, :4]})  # DSNO's SpectralConv1d
    assert torch.equal(spectral.weight, weight[:, :4])
    nested = torch.nn.ModuleDict({"temporal": TimeConv(6, 2)})
    nested.load_state_dict({"temporal.t_conv.weights1": weight})
    assert torch.equal(nested["temporal"].weight, weight)
    x = torch.randn(2, 4, 6, 3, dtype=torch.float64)
    reference = x + F.leaky_relu(
        torch.fft.irfft(
            torch.einsum("bki...,iok->bko...", torch.fft.rfft(x, dim=1)[:, :2], torch.view_as_complex(weight.double())),
            n=4,
            dim=1,
        )
    )
    torch.testing.assert_close(layer.double()(x), reference)


def write_official_checkpoint(path, config: DSNOConfig, *, with_scheduler=False):
    ema = {key: value.float() for key, value in random_official(config, seed=1).items()}
    raw = {key: value.float() for key, value in random_official(config, seed=2).items()}
    state = {
        "model": raw,
        "ema": ema,
        "args": argparse.Namespace(
            config="configs/cifar10-dsno-t4.yaml",
            ckpt=None,
            log=False,
            seed=3,
            num_gpus=1,
            port="9037",
            distributed=False,
        ),
    }
    if with_scheduler:
        state["scheduler"] = {"_schedulers": [{"last_epoch": 1234}, {"last_epoch": 1234}]}
    torch.save(state, path)
    return state


def test_official_checkpoint_files_load_weights_only(tmp_path):
    config = DSNOConfig(**SMALL)
    written = write_official_checkpoint(tmp_path / "solver-model_final.pt", config)
    state = load_official_checkpoint(tmp_path / "solver-model_final.pt")
    assert is_official_checkpoint(state) and state["args"].seed == 3
    assert all(torch.equal(state["ema"][key], written["ema"][key]) for key in written["ema"])
    assert not is_official_checkpoint({"ema": {"encoder.0.res.conv1.weight": torch.zeros(1)}, "config": {}})
    # anything beyond tensors, plain data and argparse.Namespace is refused
    torch.save({"ema": {}, "args": torch.nn.Linear(1, 1)}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match="refused"):
        load_official_checkpoint(tmp_path / "code.pt")


def small_preset(tmp_path, base: str, fields: dict) -> str:
    """A config file: the preset `base` with the architecture shrunk to `fields` (8x8 images)."""
    overrides = {key: list(value) if isinstance(value, tuple) else value for key, value in fields.items()}
    text = (
        f"base: {base}\nmodel:\n  overrides: {overrides}\n"
        f"data:\n  shape: [3, 8, 8]\n  num_classes: {fields.get('num_classes') or None}\n"
        f"sample:\n  device: cpu\n  num_samples: 5\n  batch_size: 2\n  out: {tmp_path / 'samples'}\n"
    )
    path = tmp_path / f"{base}-small.yaml"
    path.write_text(text.replace("None", "null"))
    return str(path)


@pytest.mark.parametrize("base, fields", [("cifar10", SMALL), ("imagenet64", SMALL_CONDITIONAL)])
@pytest.mark.usefixtures("single_thread")  # as `dsno sample` runs (its --threads default): the same fp32 rounding
def test_convert_and_sample_official_checkpoints(tmp_path, capsys, base, fields):
    config = DSNOConfig(**fields)
    written = write_official_checkpoint(tmp_path / "official.pt", config, with_scheduler=True)
    preset = small_preset(tmp_path, base, fields)
    assert (
        cli.main(["convert", str(tmp_path / "official.pt"), "--preset", preset, "--out", str(tmp_path / "ours.pt")])
        == 0
    )
    before = (tmp_path / "ours.pt").read_bytes()
    capsys.readouterr()
    assert (
        cli.main(["convert", str(tmp_path / "official.pt"), "--preset", preset, "--out", str(tmp_path / "ours.pt")])
        == 1
    )
    error = capsys.readouterr().err  # never overwrites; one line naming the file
    assert error.count("\n") == 1 and "ours.pt exists" in error and (tmp_path / "ours.pt").read_bytes() == before
    # another architecture: one line naming the checkpoint and the tensors that do not fit
    assert (
        cli.main(["convert", str(tmp_path / "official.pt"), "--preset", "cifar10", "--out", str(tmp_path / "x.pt")])
        == 1
    )
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "official.pt" in error and "all_modules" in error
    assert not (tmp_path / "x.pt").exists()

    outputs = {}
    for name in ("official.pt", "ours.pt"):
        out = tmp_path / name.replace(".pt", "-samples")
        assert (
            cli.main(
                [
                    "sample",
                    "-c",
                    preset,
                    "--checkpoint",
                    str(tmp_path / name),
                    "--out",
                    str(out),
                    "--noise",
                    "dsno",
                    "--npz",
                    "--no-progress",
                ]
            )
            == 0
        )
        outputs[name] = np.load(out / "trajectory.npy")
    np.testing.assert_array_equal(outputs["official.pt"], outputs["ours.pt"])

    # EMA weights by default: the samples are the EMA model's on DSNO's noise
    model = DSNO(config)
    model.load_state_dict(from_official_state_dict(written["ema"], config))
    model.eval()
    cfg = load_config(preset)
    _, logsnr = official_time_points(cfg["schedule"])
    expected = []
    with torch.no_grad():
        for z, y in dsno_noise(5, 2, (3, 8, 8), cfg["sample"]["seed"], fields.get("num_classes", 0) or None):
            expected.append(model(z, logsnr, y))
    torch.testing.assert_close(torch.from_numpy(outputs["ours.pt"]), torch.cat(expected), rtol=1e-5, atol=1e-6)
    from dsno.sample import load_sampler  # use_ema=False: DSNO's raw (non-EMA) weights

    raw_model, _ = load_sampler(tmp_path / "official.pt", use_ema=False, config=cfg)
    raw = from_official_state_dict(written["model"], config)
    assert all(torch.equal(raw_model.state_dict()[key], raw[key]) for key in raw)
    converted = torch.load(tmp_path / "ours.pt", weights_only=True)  # plain data only
    assert converted["step"] == 1234 and converted["config"]["model"]["name"] == base
    assert converted["num_classes"] == fields.get("num_classes", None)


def test_time_points_as_dsno_computes_them():
    for preset, indices, t_expected in (
        ("cifar10", [224, 384, 480, 512], None),
        ("imagenet64", [4, 8, 12, 16], [0.75, 0.5, 0.25, 0.0]),
    ):
        schedule = load_config(preset)["schedule"]
        t, logsnr = official_time_points(schedule)
        # DSNO: timesteps = torch.linspace(1., epsilon, num_steps + 1)[idxs]; get_logsnr_schedule in float32
        grid = torch.linspace(1.0, 0.0, schedule["num_steps"] + 1)
        assert torch.equal(t, grid[indices])
        if t_expected is not None:
            assert t.tolist() == t_expected
        b = np.arctan(np.exp(-0.5 * 20.0))
        a = np.arctan(np.exp(0.5 * 20.0)) - b
        assert logsnr.dtype == torch.float32
        assert torch.equal(logsnr, -2.0 * torch.log(torch.tan(a * grid[indices] + b)))
        assert logsnr[-1].item() == pytest.approx(20.0, abs=1e-4)  # epsilon 0.0: the last point is logsnr_max


def test_dsno_noise_stream():
    # DSNO's generate scripts: torch.manual_seed(seed), then per batch (labels first for ImageNet) randn
    batches = list(dsno_noise(7, 3, (3, 4, 4), seed=11, num_classes=5))
    torch.manual_seed(11)
    for size, (z, y) in zip((3, 3, 1), batches):
        labels = torch.randint(low=0, high=5, size=(size,))
        noise = torch.randn((size, 3, 4, 4))
        assert torch.equal(y, labels) and torch.equal(z, noise)
    torch.manual_seed(11)
    unconditional = list(dsno_noise(4, 4, (3, 4, 4), seed=11))
    assert unconditional[0][1] is None and torch.equal(unconditional[0][0], torch.randn((4, 3, 4, 4)))
    # the batch size is part of the stream (unlike the per-sample "seeded" noise)
    other = torch.cat([z for z, _ in dsno_noise(7, 7, (3, 4, 4), seed=11, num_classes=5)])
    assert not torch.equal(other, torch.cat([z for z, _ in batches]))


def test_uint8_rules():
    levels = torch.tensor([-1.5, -1.0, -0.2, 0.0, 0.5, 0.99, 1.0, 2.0])
    x = levels.view(1, 1, 8).expand(3, 1, 8).clone()  # [C, H, W]
    truncated = to_uint8_images(x)[..., 0].ravel().tolist()
    rounded = to_uint8_images(x, "round")[..., 0].ravel().tolist()
    # DSNO: (x + 1) * 127.5 -> clamp(0, 255) -> .to(uint8), i.e. truncation
    assert truncated == [0, 0, 102, 127, 191, 253, 255, 255]
    assert rounded == [0, 0, 102, 128, 191, 254, 255, 255]
    expected = (x + 1).mul(127.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(to_uint8_images(x), expected)
    with pytest.raises(ValueError, match="truncate"):
        to_uint8_images(x, "floor")


def test_fid_outputs_are_readable(tmp_path):
    from PIL import Image  # what EDM's fid.py, clean-fid and torch-fidelity read images with

    images = np.random.default_rng(0).integers(0, 256, size=(5, 8, 6, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    write_png_zip(buffer, images)
    with zipfile.ZipFile(buffer) as archive:
        names = sorted(archive.namelist())
        assert names == [f"{i:06d}.png" for i in range(5)]
        for i, name in enumerate(names):
            np.testing.assert_array_equal(
                np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")), images[i]
            )


def test_sample_writes_folder_zip_and_npz(tmp_path):
    config = DSNOConfig(**SMALL)
    write_official_checkpoint(tmp_path / "official.pt", config)
    preset = small_preset(tmp_path, "cifar10", dict(SMALL))
    from PIL import Image

    for images in ("folder", "zip"):
        out = tmp_path / images
        assert (
            cli.main(
                [
                    "sample",
                    "-c",
                    preset,
                    "--checkpoint",
                    str(tmp_path / "official.pt"),
                    "--out",
                    str(out),
                    "--images",
                    images,
                    "--npz",
                    "--no-progress",
                    "--set",
                    "sample.save_trajectory=false",
                ]
            )
            == 0
        )
        arr = np.load(out / "samples.npz")["arr_0"]
        assert arr.shape == (5, 8, 8, 3) and arr.dtype == np.uint8
        assert not (out / "trajectory.npy").exists()
        if images == "folder":
            files = sorted((out / "images").iterdir())
            assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
            np.testing.assert_array_equal(np.stack([np.asarray(Image.open(f)) for f in files]), arr)
        else:
            with zipfile.ZipFile(out / "images.zip") as archive:
                assert len(archive.namelist()) == 5
    # the same samples with the trajectory kept: the final states, truncated, are the npz
    out = tmp_path / "full"
    assert (
        cli.main(
            [
                "sample",
                "-c",
                preset,
                "--checkpoint",
                str(tmp_path / "official.pt"),
                "--out",
                str(out),
                "--npz",
                "--no-progress",
            ]
        )
        == 0
    )
    trajectory = np.load(out / "trajectory.npy")
    np.testing.assert_array_equal(np.load(out / "samples.npz")["arr_0"], to_uint8_images(trajectory[:, -1]))
    np.testing.assert_array_equal(np.load(out / "samples.npz")["arr_0"], arr)


@pytest.mark.parametrize(
    "override, key",
    [
        ("sample.noise=numpy", "sample.noise"),
        ("sample.uint8=floor", "sample.uint8"),
        ("sample.images=tar", "sample.images"),
        ("train.loss=lpips", "train.loss"),
        ("model.temporal_precision=bf16", "model.temporal_precision"),
        ("schedule.t_min=-0.1", "schedule.t_min"),
    ],
)
def test_new_settings_are_checked(override, key):
    from dsno.config import ConfigError

    with pytest.raises(ConfigError, match=key.split(".")[1]):
        load_config("cifar10", [override])
    assert (
        load_config("tiny", ["schedule.t_min=0.0", "sample.noise=dsno", "sample.images=zip"])["schedule"]["t_min"]
        == 0.0
    )


def test_convert_refuses_what_is_not_dsnos(tmp_path, capsys):
    torch.save({"ema": {"encoder.0.res.conv1.weight": torch.zeros(1)}, "model": {}}, tmp_path / "ours.pt")
    assert cli.main(["convert", str(tmp_path / "ours.pt"), "--preset", "cifar10", "--out", str(tmp_path / "x.pt")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "not a checkpoint of DSNO's code" in error and not (tmp_path / "x.pt").exists()


def test_presets_follow_dsnos_configs():
    # DSNO's configs/cifar10-dsno-t4.yaml and configs/imagenet64-dsno-t4.yaml (training and optim sections)
    expected = {
        "cifar10": dict(
            loss="vgg",
            loss_weight="snr",
            lr=2e-4,
            warmup=10000,
            milestones=[100000, 200000, 300000],
            ema_decay=0.9999,
            steps=400000,
            batch_size=32,
            grad_accum=1,
            grad_clip=0.0,
            betas=[0.9, 0.999],
            eps=1e-8,
            warmup_start_factor=0.001,
            gamma=0.5,
        ),
        "imagenet64": dict(
            loss="L1",
            loss_weight="snr",
            lr=2e-4,
            warmup=10000,
            milestones=[200000, 400000, 600000, 800000],
            ema_decay=0.9999,
            steps=480000,
            batch_size=8,
            grad_accum=4,
            grad_clip=0.0,
            gamma=0.5,
        ),
    }
    for preset, train in expected.items():
        config = load_config(preset)
        assert {key: config["train"][key] for key in train} == train
        assert config["model"]["temporal_precision"] == "fp32"
        assert make_config(preset).dropout == {"cifar10": 0.2, "imagenet64": 0.1}[preset]
