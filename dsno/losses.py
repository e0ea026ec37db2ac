"""DSNO's training losses over a trajectory: L1, L2 and its `vgg` perceptual loss, weighted per time point.

For pred / target [B, M, C, H, W] and per-time-point weights w [M] (DSNO's utils/loss.py):

    loss_m = mean over batch (and pixels) of  |pred_m - X_m|          L1  (DSNO's ImageNet-64 choice)
                                              (pred_m - X_m)^2        L2
                                              vgg(pred_m, X_m)        vgg (DSNO's CIFAR-10 choice)
    loss   = mean_m  w_m loss_m,   w_m = clamp(sqrt(exp(logsnr_m)), 1, 1e4)   (loss_weight: snr, both presets)

`vgg` is what DSNO trains with: lpips.LPIPS(net="vgg", lpips=False), the uncalibrated LPIPS baseline
(Zhang et al. 2018) with no learned layer weights. On images in [-1, 1]:

    x -> (x - shift) / scale, shift = (-0.030, -0.088, -0.188), scale = (0.458, 0.448, 0.450)
    VGG16 features at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (torchvision's vgg16().features)
    each feature map unit-normalised over channels: f / (||f||_2 + 1e-10)
    vgg(x, y) = sum over the 5 layers of mean over pixels of sum over channels (fx - fy)^2

The VGG16 weights are torchvision's ImageNet ones (VGG16_Weights.IMAGENET1K_V1, 528 MB, downloaded
from download.pytorch.org into $TORCH_HOME/hub/checkpoints on first use, as lpips does); on a machine
without network, download that file elsewhere and pass its path (`train.vgg_weights`).
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["LOSSES", "snr_weights", "trajectory_loss", "VGGPerceptualLoss"]

LOSSES = ("L1", "L2", "vgg")

# torchvision vgg16().features indices where each of LPIPS's five slices ends (after relu1_2 ... relu5_3)
_SLICE_ENDS = (4, 9, 16, 23, 30)


def snr_weights(logsnr: torch.Tensor) -> torch.Tensor:
    """DSNO's per-time-point loss weights clamp(sqrt(exp(logsnr)), 1, 1e4)."""
    return torch.exp(0.5 * logsnr).clamp(1.0, 1e4)


class VGGPerceptualLoss(nn.Module):
    """DSNO's `vgg` loss (LPIPS with net="vgg", lpips=False): x, y [N, 3, H, W] in [-1, 1] -> [N].

    weights: "imagenet" (torchvision's pretrained VGG16, downloaded and cached on first use), a path
    to a saved torchvision vgg16 state_dict (loaded with weights_only=True), or None (random
    initialisation: for tests only). The network is frozen and in eval mode."""

    def __init__(self, weights: str | os.PathLike | None = "imagenet"):
        super().__init__()
        from torchvision.models import VGG16_Weights, vgg16

        if weights == "imagenet":
            network = vgg16(weights=VGG16_Weights.IMAGENET1K_V1)
        else:
            network = vgg16(weights=None)
            if weights is not None:
                network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        features = network.features[: _SLICE_ENDS[-1]]
        for module in features:
            if isinstance(module, nn.ReLU):
                module.inplace = False  # the slices' outputs are kept, so nothing may overwrite them
        self.slices = nn.ModuleList(features[start:end] for start, end in zip((0,) + _SLICE_ENDS[:-1], _SLICE_ENDS))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        return super().train(False)  # no dropout/batch-norm here, but stay in eval like LPIPS

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x and y must both be [N, 3, H, W], got {tuple(x.shape)} and {tuple(y.shape)}")
        if min(x.shape[-2:]) < 16:
            raise ValueError(
                f"the vgg loss needs images of at least 16x16 (VGG16 halves them 4 times), "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )
        hx, hy = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = x.new_zeros(x.shape[0])
        for block in self.slices:
            hx, hy = block(hx), block(hy)
            fx = hx / (hx.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fy = hy / (hy.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + (fx - fy).square().sum(dim=1).mean(dim=(1, 2))
        return total


def trajectory_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    kind: str = "L2",
    perceptual: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted scalar loss, per-time-point loss [M]) for pred/target [B, M, ...]. kind "vgg" needs
    `perceptual` (a VGGPerceptualLoss) and images [B, M, 3, H, W]."""
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    if kind == "vgg":
        if perceptual is None:
            raise ValueError("loss 'vgg' needs the perceptual network (perceptual=VGGPerceptualLoss(...))")
        B, M = pred.shape[:2]
        per_point = perceptual(pred.reshape(B * M, *pred.shape[2:]), target.reshape(B * M, *target.shape[2:]))
        per_point = per_point.reshape(B, M).mean(dim=0)
    else:
        difference = pred - target
        elementwise = difference.abs() if kind == "L1" else difference.square()
        per_point = elementwise.mean(dim=[d for d in range(elementwise.ndim) if d != 1])
    return (per_point * weights).mean(), per_point
