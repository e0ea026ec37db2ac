"""`dsno sample`: the whole trajectory from noise in one forward pass of a trained DSNO model.

Writes, under sample.out:
    trajectory.npy   [N, M, C, H, W] float32, the model's states at its M time points (the last is the sample)
    noise.npy        [N, C, H, W] the starting noise
    labels.npy       [N] int64, class-conditional models only
    samples.png      figure: the final states (the first 256, enlarged sample.png_scale times), rows and
                     columns numbered by sample, titled with the checkpoint, step and seed
    trajectory.png   figure: one row per sample (up to 8), its noise then its M states, columns labelled
                     with their time points
    images/          sample.images=folder: 000000.png, 000001.png, ... the final states
    images.zip       sample.images=zip: the same PNGs in one zip (EDM's fid.py reads a folder or a zip)
    samples.npz      sample.npz=true: arr_0 [N, H, W, 3] uint8 (the .npz that ADM's evaluator reads)
(sample.save_trajectory=false leaves out trajectory.npy and noise.npy, and keeps only uint8 images in
memory: the setting for 50,000-image FID runs.)

Noise (sample.noise): "seeded" draws sample i from its own generator seeded by SeedSequence([seed, i]),
as gen-traj does, so a sample does not depend on the batch size; "dsno" is DSNO's generator scripts'
stream: a generator seeded with `seed`, then per batch (class-conditional: randint labels first)
randn(batch, C, H, W) on the sampling device. With the same seed, batch size and device type (DSNO's
scripts run on CUDA) the noise is DSNO's.

Images are mapped from [-1, 1] to uint8 by sample.uint8: "truncate" is DSNO's rule
((x + 1) * 127.5, clamped to [0, 255], then truncated), "round" rounds to the nearest level. 1- and
3-channel data are shown as they are, other channel counts by their first channel. The two figures are
drawn with matplotlib; the images for FID tools (images/, images.zip) are PNGs of exactly those uint8
pixels, written with zlib alone.
The files are written all or nothing (temporary files, renamed once all are complete), so a failed
or killed run leaves an earlier run's outputs as they were.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed
from .checkpoint import (
    CHECKPOINT,
    AtomicOutputs,
    atomic_write_bytes,
    check_output_dir,
    checked_checkpoint,
    load_model_state,
    load_tensor_file,
    remove_stale_temporaries,
)
from .config import validate_config
from .model import build_model_from_config, set_temporal_precision
from .trajectories import sample_noise

__all__ = [
    "sample",
    "load_sampler",
    "to_uint8_images",
    "dsno_noise",
    "image_grid",
    "grid_figure",
    "figure_png",
    "png_bytes",
    "write_png",
    "write_png_zip",
    "write_image_folder",
    "UINT8_RULES",
    "NOISE_STREAMS",
]

_OUTPUTS = ("trajectory.npy", "noise.npy", "labels.npy", "samples.png", "trajectory.png", "images.zip", "samples.npz")


def load_sampler(
    checkpoint: str | Path,
    *,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    model_factory: Callable[[], nn.Module] | None = None,
    config: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on device, checkpoint metadata: logsnr, t, noise_shape, num_classes, config).

    A checkpoint of DSNO's own code (dsno.official) is recognised and converted on the fly; its
    architecture and time points then come from `config` (the resolved config of a preset, e.g. cifar10)."""
    from .official import from_official_checkpoint, is_official_checkpoint, official_globals

    with official_globals():  # weights_only, and DSNO's files hold an argparse.Namespace too
        state = load_tensor_file(checkpoint, "checkpoint")
    if is_official_checkpoint(state):
        if config is None:
            raise ValueError(
                f"{checkpoint} is a checkpoint of DSNO's own code: give the config of its preset "
                f"(e.g. -c cifar10) to build the model"
            )
        state = from_official_checkpoint(state, config)
    else:
        state = checked_checkpoint(state, checkpoint)
    model = model_factory() if model_factory is not None else build_model_from_config(state["config"]["model"])
    load_model_state(model, state["ema" if use_ema else "model"], checkpoint, state["config"]["model"])
    model.to(device).eval()
    meta = {key: state[key] for key in ("logsnr", "t", "noise_shape", "num_classes", "config", "step")}
    return model, meta


UINT8_RULES = ("truncate", "round")
NOISE_STREAMS = ("seeded", "dsno")


def to_uint8_images(x: np.ndarray | torch.Tensor, rule: str = "truncate") -> np.ndarray:
    """[..., C, H, W] in [-1, 1] -> [..., H, W, 3] uint8 (first channel repeated unless C == 3).

    rule "truncate": DSNO's (x + 1) * 127.5, clamp to [0, 255], truncate (computed in x's float dtype,
    as DSNO does on its fp32 outputs); "round": to the nearest level."""
    if rule not in UINT8_RULES:
        raise ValueError(f"uint8 rule must be one of {UINT8_RULES}, got {rule!r}")
    x = torch.as_tensor(x)
    x = x if x.is_floating_point() else x.float()
    channels = x[..., :3, :, :] if x.shape[-3] == 3 else x[..., :1, :, :].repeat_interleave(3, dim=-3)
    levels = ((channels + 1) * 127.5).clamp(0, 255)
    if rule == "round":
        levels = levels.round()
    return levels.to(torch.uint8).movedim(-3, -1).cpu().numpy()


def dsno_noise(
    count: int, batch_size: int, shape, seed: int, num_classes: int | None = None, device: str | torch.device = "cpu"
):
    """DSNO's sampling noise, batch by batch: yields (noise [b, *shape] float32, labels [b] int64 or
    None) on `device`, from one generator seeded with `seed` (as DSNO's torch.manual_seed(seed)): per
    batch, class labels randint(0, num_classes) first (generate_imagenet.py), then randn (both
    scripts). The last batch holds the remainder, as in generate_cifar.py."""
    generator = torch.Generator(device=device).manual_seed(int(seed))
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        labels = torch.randint(0, num_classes, (size,), generator=generator, device=device) if num_classes else None
        yield torch.randn((size, *shape), generator=generator, device=device), labels


def _seeded_noise(
    count: int, batch_size: int, shape, seed: int, num_classes: int | None = None, device: str | torch.device = "cpu"
):
    noise, labels = sample_noise(range(count), shape, seed, num_classes)
    for start in range(0, count, batch_size):
        yield (
            noise[start : start + batch_size].to(device),
            None if labels is None else labels[start : start + batch_size].to(device),
        )


def write_png_zip(handle, images: np.ndarray) -> None:
    """[N, H, W, 3] uint8 -> a zip of 000000.png, 000001.png, ... into the binary file `handle` (stored:
    PNGs are compressed already)."""
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, image in enumerate(images):
            archive.writestr(f"{index:06d}.png", png_bytes(image))


def write_image_folder(folder: str | Path, images: np.ndarray) -> None:
    """[N, H, W, 3] uint8 as folder/000000.png, ...: written into a temporary folder beside it that then
    takes its place, so a failed run leaves an earlier folder as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # left by a killed earlier run
        if stale.is_dir():
            shutil.rmtree(stale)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for index, image in enumerate(images):
            (temporary / f"{index:06d}.png").write_bytes(png_bytes(image))
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", suffix=".tmp", dir=folder.parent))
            os.replace(folder, old / folder.name)
        os.replace(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)


def image_grid(images: np.ndarray, columns: int, pad: int = 2, scale: int = 1) -> np.ndarray:
    """[N, H, W, 3] uint8 -> one [rows * (sH + pad) + pad, columns * (sW + pad) + pad, 3] image on white,
    each image enlarged `scale` times (nearest neighbour)."""
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    count, height, width, _ = images.shape
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
        grid[top : top + height, left : left + width] = image
    return grid


def grid_figure(
    images: np.ndarray,
    title: str,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    *,
    row_title: str = "",
    column_title: str = "",
    scale: int = 1,
):
    """A matplotlib Figure of images [R, C, H, W, 3] uint8: R rows and C columns of images (enlarged `scale`
    times), each row and column labelled, axis titles and a title above."""
    from matplotlib.figure import Figure

    rows, columns, height, width, _ = images.shape
    pad = 2
    grid = image_grid(images.reshape(rows * columns, height, width, 3), columns, pad=pad, scale=scale)
    cell = max(64, height * scale)  # pixels each image is shown at (at least: room for the labels)
    size = (max(480, columns * (cell + pad) + 160) / 100, (rows * (cell + pad) + 130) / 100)
    figure = Figure(figsize=size, dpi=100, layout="constrained")
    axis = figure.subplots()
    axis.imshow(grid, interpolation="nearest")
    step_y, step_x = height * scale + pad, width * scale + pad
    axis.set_xticks([pad + step_x * c + (step_x - pad) / 2 for c in range(columns)], list(column_labels), fontsize=8)
    axis.set_yticks([pad + step_y * r + (step_y - pad) / 2 for r in range(rows)], list(row_labels), fontsize=8)
    axis.tick_params(length=0)
    for side in axis.spines.values():
        side.set_visible(False)
    axis.set_xlabel(column_title, fontsize=9)
    axis.set_ylabel(row_title, fontsize=9)
    axis.set_title(title, fontsize=9)
    return figure


def figure_png(figure) -> bytes:
    """A matplotlib Figure as PNG bytes (its title in the file's Title field)."""
    buffer = io.BytesIO()
    title = figure.axes[0].get_title() if figure.axes else ""
    figure.savefig(buffer, format="png", metadata={"Title": title})
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """An [H, W, 3] uint8 image as an 8-bit RGB PNG file's bytes (no filtering, zlib-compressed)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width, _ = image.shape
    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), image.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def write_png(path: str | Path, image: np.ndarray) -> None:
    """An [H, W, 3] uint8 image as an 8-bit RGB PNG file (written atomically)."""
    atomic_write_bytes(path, png_bytes(image))


@torch.no_grad()
def sample(
    config: dict[str, Any], *, model_factory: Callable[[], nn.Module] | None = None, progress: bool = True
) -> dict[str, Any]:
    """Sample per config["sample"]; returns {"trajectory": path, "samples_png": path, ...}."""
    from tqdm import tqdm

    config = validate_config(config)
    cfg = config["sample"]
    out = Path(cfg["out"])
    check_output_dir(out, "sample.out")
    device = distributed.resolve_device(cfg["device"], int(os.environ.get("LOCAL_RANK", 0)))
    checkpoint = cfg["checkpoint"] or str(Path(config["train"]["out"]) / CHECKPOINT)
    model, meta = load_sampler(
        checkpoint, use_ema=cfg["use_ema"], device=device, model_factory=model_factory, config=config
    )
    set_temporal_precision(model, config["model"]["temporal_precision"])
    dtype = next(model.parameters()).dtype
    logsnr = torch.as_tensor(meta["logsnr"]).to(device, dtype)
    count, batch_size = cfg["num_samples"], cfg["batch_size"]
    num_classes = meta["num_classes"]
    if cfg["class_label"] is not None and not num_classes:
        raise ValueError(
            f"sample.class_label={cfg['class_label']} was given but {checkpoint} is not "
            f"class-conditional; leave it null"
        )
    if cfg["class_label"] is not None and cfg["class_label"] >= num_classes:
        raise ValueError(f"sample.class_label={cfg['class_label']}: {checkpoint} has classes 0..{num_classes - 1}")

    stream = dsno_noise if cfg["noise"] == "dsno" else _seeded_noise
    batches = stream(count, batch_size, meta["noise_shape"], cfg["seed"], num_classes, device)
    keep = bool(cfg["save_trajectory"])
    trajectories, noises, labels, finals, shown = [], [], [], [], []
    for z, y in tqdm(
        batches, total=math.ceil(count / batch_size), desc="sample", disable=not progress, dynamic_ncols=True
    ):
        if y is not None and cfg["class_label"] is not None:
            y = torch.full_like(y, int(cfg["class_label"]))  # the noise stays that of random labels
        states = model(z.to(dtype), logsnr) if y is None else model(z.to(dtype), logsnr, y)
        finals.append(to_uint8_images(states[:, -1], cfg["uint8"]))
        if keep:
            trajectories.append(states.float().cpu())
            noises.append(z.float().cpu())
        elif sum(len(rows) for _, rows in shown) < 8:
            shown.append((z.float().cpu(), states.float().cpu()))
        if y is not None:
            labels.append(y.cpu())
    finals = np.concatenate(finals)
    if keep:
        trajectory, noise = torch.cat(trajectories).numpy(), torch.cat(noises).numpy()
        shown_noise, shown_trajectory = noise[:8], trajectory[:8]
    else:
        shown_noise = torch.cat([z for z, _ in shown])[:8].numpy()
        shown_trajectory = torch.cat([rows for _, rows in shown])[:8].numpy()
    labels = torch.cat(labels).numpy() if labels else None

    scale = cfg["png_scale"]
    grid = finals[:256]
    rows = np.concatenate([shown_noise[:, None], shown_trajectory], axis=1)  # [shown, 1 + M, C, H, W]
    columns = math.ceil(math.sqrt(len(grid)))
    blank = np.full((columns * math.ceil(len(grid) / columns) - len(grid), *grid.shape[1:]), 255, np.uint8)
    samples_figure = grid_figure(
        np.concatenate([grid, blank]).reshape(-1, columns, *grid.shape[1:]),
        f"{len(grid)}{f' of {count}' if count > len(grid) else ''} samples (the last time point, "
        f"t = {meta['t'][-1]:.3g})\n{Path(checkpoint).name}, step {meta['step']}, seed {cfg['seed']}",
        [str(start) for start in range(0, len(grid), columns)],
        [f"+{column}" for column in range(columns)],
        row_title="sample (row start)",
        column_title="sample (+ column)",
        scale=scale,
    )
    trajectory_figure = grid_figure(
        to_uint8_images(rows, cfg["uint8"]),
        f"One forward pass from noise to all M = {len(meta['t'])} time points\n"
        f"{Path(checkpoint).name}, step {meta['step']}",
        [str(index) for index in range(len(rows))],
        ["noise\n(t = 1)"] + [f"t =\n{t:.3g}" for t in meta["t"]],
        row_title="sample",
        column_title="time point",
        scale=scale,
    )
    for name in _OUTPUTS:  # temporaries left by a killed earlier run
        remove_stale_temporaries(out, f".{name}.*.tmp")
    written = {}
    with AtomicOutputs(out) as outputs:
        if keep:
            written["trajectory"] = outputs.write("trajectory.npy", lambda handle: np.save(handle, trajectory))
            outputs.write("noise.npy", lambda handle: np.save(handle, noise))
        if labels is not None:
            outputs.write("labels.npy", lambda handle: np.save(handle, labels))
        outputs.write("samples.png", lambda handle: handle.write(figure_png(samples_figure)))
        outputs.write("trajectory.png", lambda handle: handle.write(figure_png(trajectory_figure)))
        if cfg["images"] == "zip":
            written["images"] = outputs.write("images.zip", lambda handle: write_png_zip(handle, finals))
        if cfg["npz"]:
            written["npz"] = outputs.write("samples.npz", lambda handle: np.savez(handle, arr_0=finals))
        if cfg["images"] == "folder":  # last: if it fails, none of the files above replaces its old version
            write_image_folder(out / "images", finals)
            written["images"] = out / "images"
    written = {key: str(path) for key, path in written.items()}
    return {
        **written,
        "samples_png": str(out / "samples.png"),
        "trajectory_png": str(out / "trajectory.png"),
        "checkpoint": checkpoint,
        "step": meta["step"],
    }
