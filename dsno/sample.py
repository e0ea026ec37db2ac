"""`dsno sample`: the whole trajectory from noise in one forward pass of a trained DSNO model.

Writes, under sample.out:
    trajectory.npy   [N, M, C, H, W] float32, the model's states at its M time points (the last is the sample)
    noise.npy        [N, C, H, W] the starting noise (sample i seeded by SeedSequence([seed, i]), as gen-traj)
    labels.npy       [N] int64, class-conditional models only
    samples.png      grid of the final states (enlarged sample.png_scale times)
    trajectory.png   one row per sample (up to 8): the noise, then the M states
Images are mapped from [-1, 1] to [0, 255]; 1- and 3-channel data are shown as they are, other channel
counts by their first channel. PNGs are written with zlib alone, so no imaging library is needed.
The files are written all or nothing (temporary files, renamed once all are complete), so a failed
or killed run leaves an earlier run's outputs as they were.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import distributed
from .checkpoint import (CHECKPOINT, AtomicOutputs, atomic_write_bytes, check_output_dir, load_checkpoint,
                         load_model_state, remove_stale_temporaries)
from .config import validate_config
from .model import build_model_from_config
from .trajectories import sample_noise

__all__ = ["sample", "load_sampler", "to_uint8_images", "image_grid", "png_bytes", "write_png"]

_OUTPUTS = ("trajectory.npy", "noise.npy", "labels.npy", "samples.png", "trajectory.png")


def load_sampler(checkpoint: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu",
                 model_factory: Callable[[], nn.Module] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on device, checkpoint metadata: logsnr, t, noise_shape, num_classes, config)."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    model = model_factory() if model_factory is not None else build_model_from_config(state["config"]["model"])
    load_model_state(model, state["ema" if use_ema else "model"], checkpoint, state["config"]["model"])
    model.to(device).eval()
    meta = {key: state[key] for key in ("logsnr", "t", "noise_shape", "num_classes", "config", "step")}
    return model, meta


def to_uint8_images(x: np.ndarray) -> np.ndarray:
    """[..., C, H, W] in [-1, 1] -> [..., H, W, 3] uint8 (first channel repeated unless C == 3)."""
    x = np.asarray(x, dtype=np.float32)
    channels = x[..., :3, :, :] if x.shape[-3] == 3 else np.repeat(x[..., :1, :, :], 3, axis=-3)
    return np.clip(np.round((channels + 1.0) * 127.5), 0, 255).astype(np.uint8).swapaxes(-3, -2).swapaxes(-2, -1)


def image_grid(images: np.ndarray, columns: int, pad: int = 2, scale: int = 1) -> np.ndarray:
    """[N, H, W, 3] uint8 -> one [rows * (sH + pad) + pad, columns * (sW + pad) + pad, 3] image on white,
    each image enlarged `scale` times (nearest neighbour)."""
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    count, height, width, _ = images.shape
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
        grid[top:top + height, left:left + width] = image
    return grid


def png_bytes(image: np.ndarray) -> bytes:
    """An [H, W, 3] uint8 image as an 8-bit RGB PNG file's bytes (no filtering, zlib-compressed)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width, _ = image.shape
    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), image.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def write_png(path: str | Path, image: np.ndarray) -> None:
    """An [H, W, 3] uint8 image as an 8-bit RGB PNG file (written atomically)."""
    atomic_write_bytes(path, png_bytes(image))


@torch.no_grad()
def sample(config: dict[str, Any], *, model_factory: Callable[[], nn.Module] | None = None,
           progress: bool = True) -> dict[str, Any]:
    """Sample per config["sample"]; returns {"trajectory": path, "samples_png": path, ...}."""
    from tqdm import tqdm

    config = validate_config(config)
    cfg = config["sample"]
    out = Path(cfg["out"])
    check_output_dir(out, "sample.out")
    device = distributed.resolve_device(cfg["device"], int(os.environ.get("LOCAL_RANK", 0)))
    checkpoint = cfg["checkpoint"] or str(Path(config["train"]["out"]) / CHECKPOINT)
    model, meta = load_sampler(checkpoint, use_ema=cfg["use_ema"], device=device, model_factory=model_factory)
    dtype = next(model.parameters()).dtype
    logsnr = torch.tensor(meta["logsnr"], dtype=dtype, device=device)
    count, batch_size = cfg["num_samples"], cfg["batch_size"]
    num_classes = meta["num_classes"]
    if cfg["class_label"] is not None and not num_classes:
        raise ValueError(f"sample.class_label={cfg['class_label']} was given but {checkpoint} is not "
                         f"class-conditional; leave it null")
    if cfg["class_label"] is not None and cfg["class_label"] >= num_classes:
        raise ValueError(f"sample.class_label={cfg['class_label']}: {checkpoint} has classes 0..{num_classes - 1}")

    noise, labels = sample_noise(range(count), meta["noise_shape"], cfg["seed"], num_classes)
    if cfg["class_label"] is not None:
        labels.fill_(int(cfg["class_label"]))
    batches = []
    for start in tqdm(range(0, count, batch_size), desc="sample", disable=not progress, dynamic_ncols=True):
        z = noise[start:start + batch_size].to(device, dtype)
        y = None if labels is None else labels[start:start + batch_size].to(device)
        batches.append((model(z, logsnr) if y is None else model(z, logsnr, y)).float().cpu())
    trajectory = torch.cat(batches).numpy()

    finals = to_uint8_images(trajectory[:, -1])
    scale = cfg["png_scale"]
    shown = min(count, 8)
    rows = np.concatenate([noise[:shown, None].numpy(), trajectory[:shown]], axis=1)   # [shown, 1 + M, C, H, W]
    for name in _OUTPUTS:  # temporaries left by a killed earlier run
        remove_stale_temporaries(out, f".{name}.*.tmp")
    with AtomicOutputs(out) as outputs:
        outputs.write("trajectory.npy", lambda handle: np.save(handle, trajectory))
        outputs.write("noise.npy", lambda handle: np.save(handle, noise.numpy()))
        if labels is not None:
            outputs.write("labels.npy", lambda handle: np.save(handle, labels.numpy()))
        samples_png = png_bytes(image_grid(finals, columns=math.ceil(math.sqrt(count)), scale=scale))
        outputs.write("samples.png", lambda handle: handle.write(samples_png))
        trajectory_png = png_bytes(image_grid(to_uint8_images(rows).reshape(-1, *finals.shape[1:]),
                                              columns=rows.shape[1], scale=scale))
        outputs.write("trajectory.png", lambda handle: handle.write(trajectory_png))
    return {"trajectory": str(out / "trajectory.npy"), "samples_png": str(out / "samples.png"),
            "trajectory_png": str(out / "trajectory.png"), "checkpoint": checkpoint, "step": meta["step"]}
