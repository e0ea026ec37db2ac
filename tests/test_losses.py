"""DSNO's training losses (dsno/losses.py): snr weights, L1/L2 per time point, and the `vgg` perceptual
loss (LPIPS with net="vgg", lpips=False), tested offline with randomly initialised VGG16 weights."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from dsno.losses import VGGPerceptualLoss, snr_weights, trajectory_loss

# torchvision is optional (the [vgg] extra; the CPU-only install has none: PyPI's does not fit its torch)
requires_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed (the vgg loss needs it)"
)


def test_snr_weights_are_dsnos():
    logsnr = torch.tensor([-20.0, -1.0, 0.0, 3.0, 19.41, 20.0], dtype=torch.float64)
    # DSNO's train scripts: torch.sqrt(torch.exp(logsnr)).clamp(1.0, 10000.0)
    torch.testing.assert_close(snr_weights(logsnr), torch.sqrt(torch.exp(logsnr)).clamp(1.0, 10000.0))
    assert snr_weights(logsnr)[:3].tolist() == [1.0, 1.0, 1.0] and snr_weights(logsnr)[-1] == 10000.0


@pytest.mark.parametrize("kind", ["L1", "L2"])
def test_l1_l2_per_time_point(kind):
    pred, target = torch.randn(4, 3, 2, 5, 5), torch.randn(4, 3, 2, 5, 5)
    weights = torch.tensor([1.0, 2.0, 5.0])
    loss, per_point = trajectory_loss(pred, target, weights, kind)
    difference = (pred - target).abs() if kind == "L1" else (pred - target) ** 2
    expected = difference.mean(dim=[0, 2, 3, 4])  # DSNO's weightedL1 / weightedL2
    torch.testing.assert_close(per_point, expected)
    torch.testing.assert_close(loss, (expected * weights).mean())
    with pytest.raises(ValueError, match="vgg"):
        trajectory_loss(pred, target, weights, "L3")


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return VGGPerceptualLoss(weights=None).double()


def lpips_baseline(x, y, features):
    """The uncalibrated LPIPS distance as lpips computes it, from the list of VGG16 feature layers."""
    # lpips keeps these as float32 buffers (torch.Tensor([...])), so in fp64 they are the float32 values
    shift = torch.tensor([-0.030, -0.088, -0.188]).to(x.dtype).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).to(x.dtype).view(1, 3, 1, 1)
    hx, hy = (x - shift) / scale, (y - shift) / scale
    total = 0
    for index, layer in enumerate(features[:30]):
        hx, hy = layer(hx), layer(hy)
        if index in (3, 8, 15, 22, 29):  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
            nx = hx / (torch.sqrt(torch.sum(hx**2, dim=1, keepdim=True)) + 1e-10)
            ny = hy / (torch.sqrt(torch.sum(hy**2, dim=1, keepdim=True)) + 1e-10)
            total = total + ((nx - ny) ** 2).sum(dim=1, keepdim=True).mean(dim=[2, 3], keepdim=True)
    return total.flatten()


@requires_torchvision
def test_vgg_loss_is_the_lpips_baseline(vgg):
    features = [layer for block in vgg.slices for layer in block]
    assert len(features) == 30 and [type(f).__name__ for f in features[-2:]] == ["Conv2d", "ReLU"]
    assert [block[-1].__class__.__name__ for block in vgg.slices] == ["ReLU"] * 5
    assert [block[-2].out_channels for block in vgg.slices] == [64, 128, 256, 512, 512]
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64) * 2 - 1
    y = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    distance = vgg(x, y)
    assert distance.shape == (3,) and (distance > 0).all()
    torch.testing.assert_close(distance, lpips_baseline(x, y, features), rtol=1e-12, atol=1e-12)
    assert torch.equal(vgg(x, x), torch.zeros(3, dtype=torch.float64))
    assert not any(p.requires_grad for p in vgg.parameters()) and not vgg.train().training


@requires_torchvision
def test_vgg_trajectory_loss_averages_over_the_batch_then_weights(vgg):
    pred = torch.rand(2, 3, 3, 16, 16, dtype=torch.float64) * 2 - 1
    target = torch.rand(2, 3, 3, 16, 16, dtype=torch.float64) * 2 - 1
    weights = torch.tensor([1.0, 3.0, 10.0], dtype=torch.float64)
    loss, per_point = trajectory_loss(pred, target, weights, "vgg", vgg)
    # DSNO's percepLoss: loss_fn(pred.reshape(-1, C, H, W), ...).reshape(N, T).mean(0); mean(loss_ts * weight)
    expected = vgg(pred.reshape(6, 3, 16, 16), target.reshape(6, 3, 16, 16)).reshape(2, 3).mean(dim=0)
    torch.testing.assert_close(per_point, expected)
    torch.testing.assert_close(loss, (expected * weights).mean())
    pred.requires_grad_(True)
    trajectory_loss(pred, target, weights, "vgg", vgg)[0].backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="perceptual"):
        trajectory_loss(pred, target, weights, "vgg")


@requires_torchvision
def test_vgg_weights_load_from_torchvision_or_a_file(tmp_path, monkeypatch):
    import torchvision.models

    torch.manual_seed(1)
    network = torchvision.models.vgg16(weights=None)
    torch.save(network.state_dict(), tmp_path / "vgg16.pth")
    loaded = VGGPerceptualLoss(weights=tmp_path / "vgg16.pth")
    assert torch.equal(loaded.slices[4][-2].weight, network.features[28].weight)

    # "imagenet" asks torchvision for its ImageNet VGG16 weights (downloaded and cached by torchvision)
    requested = []

    def fake_vgg16(*, weights=None):
        requested.append(weights)
        return torchvision.models.vgg.VGG(torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"]))

    monkeypatch.setattr(torchvision.models, "vgg16", fake_vgg16)
    VGGPerceptualLoss()
    assert requested == [torchvision.models.VGG16_Weights.IMAGENET1K_V1]
    assert "download.pytorch.org" in torchvision.models.VGG16_Weights.IMAGENET1K_V1.url


@requires_torchvision
def test_vgg_loss_checks_its_inputs(vgg):
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        vgg(torch.zeros(2, 1, 16, 16, dtype=torch.float64), torch.zeros(2, 1, 16, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="16x16"):
        vgg(torch.zeros(2, 3, 8, 8, dtype=torch.float64), torch.zeros(2, 3, 8, 8, dtype=torch.float64))


@requires_torchvision
def test_train_with_the_vgg_loss(tmp_path):
    import json

    import torchvision.models

    from dsno.config import load_config
    from dsno.teachers import GaussianMixtureTeacher
    from dsno.train import train
    from dsno.trajectories import TrajectorySpec, generate

    shape = [3, 16, 16]  # VGG16 needs 16x16 at least
    spec = TrajectorySpec(
        shape=shape,
        num_samples=8,
        shard_size=8,
        seed=0,
        solver="ddim",
        num_steps=4,
        num_points=2,
        teacher={"kind": "gmm", "seed": 0},
    )
    generate(GaussianMixtureTeacher.random(shape, 2, seed=0), spec, tmp_path / "traj", batch_size=8, progress=False)
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), tmp_path / "vgg16.pth")
    settings = dict(
        data=str(tmp_path / "traj"),
        out=str(tmp_path / "train"),
        steps=2,
        batch_size=4,
        num_workers=0,
        log_every=1,
        save_every=2,
        device="cpu",
        loss="vgg",
        vgg_weights=str(tmp_path / "vgg16.pth"),
    )
    config = load_config(
        "tiny",
        [f"train.{k}={json.dumps(v)}" for k, v in settings.items()]
        + ["model.overrides={image_size: 16, attn_resolutions: [8]}", "data.shape=[3, 16, 16]"],
    )
    result = train(config, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert result["step"] == 2 and len(lines) == 2 and all(line["loss"] > 0 for line in lines)
    with pytest.raises(ValueError, match="train.loss"):
        train(load_config("tiny", [f"train.{k}={json.dumps(v)}" for k, v in dict(settings, loss="lpips").items()]))
