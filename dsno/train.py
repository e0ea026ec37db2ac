"""`dsno train`: DSNO's training recipe on a trajectory dataset, on one process or under torchrun.

Per optimizer step, on a batch of (noise z, teacher trajectory X [B, M, C, H, W]):

    pred   = model(z, logsnr)                                   one forward pass, all M time points
    loss_m = mean over batch and pixels of |pred_m - X_m| (L1) or (pred_m - X_m)^2 (L2), or DSNO's
             VGG perceptual distance (vgg); see dsno/losses.py
    loss   = mean_m  w_m loss_m,     w_m = clamp(sqrt(exp(logsnr_m)), 1, 1e4)   (loss_weight: snr)

train.time_points trains on a subset of the dataset's M points ([-1]: the endpoint only, which is
knowledge distillation into a one-step generator).

Adam; lr factor = linear warmup from warmup_start_factor to 1 over `warmup` steps, times gamma for
each milestone passed (DSNO's LinearLR + MultiStepLR chain); optional global-norm gradient clipping;
EMA of the weights after every step (ema = decay * ema + (1 - decay) * param; buffers copied); bf16
autocast optional; DDP with a DistributedSampler under torchrun.

Exact resume: checkpoint.pt holds the model, EMA, optimizer, lr schedule, step, and every rank's
python/numpy/torch/CUDA generator states; the data order is a function of (seed, epoch) and the
position in the epoch is step * grad_accum, so a resumed run draws the same batches and the same
dropout masks as an uninterrupted one. The DataLoader gets its own generator so that creating one
never consumes the global RNG. Metrics lines past the checkpoint are dropped on resume.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import inspect
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from . import distributed
from .checkpoint import (
    CHECKPOINT,
    CHECKPOINT_VERSION,
    METRICS,
    atomic_write_text,
    check_output_dir,
    load_checkpoint,
    load_model_state,
    load_tensor_file,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import dump_config, validate_config
from .losses import VGGPerceptualLoss, snr_weights, trajectory_loss
from .model import build_model_from_config, set_temporal_precision
from .trajectories import TrajectoryDataset

__all__ = [
    "snr_weights",
    "trajectory_loss",
    "WarmupMultiStep",
    "ResumableDistributedSampler",
    "train",
    "resume_note",
]


class WarmupMultiStep:
    """lr factor at scheduler step e: (s + (1 - s) min(e, warmup) / warmup) * gamma^#{milestones <= e}."""

    def __init__(self, warmup: int, start_factor: float, milestones: list[int], gamma: float):
        self.warmup, self.start_factor = int(warmup), float(start_factor)
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)

    def __call__(self, step: int) -> float:
        if self.warmup <= 0:
            ramp = 1.0
        else:
            ramp = self.start_factor + (1 - self.start_factor) * min(step, self.warmup) / self.warmup
        return ramp * self.gamma ** bisect.bisect_right(self.milestones, step)


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start part-way through an epoch (at `start` of this rank's indices)."""

    start = 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return super().__len__() - self.start


class _Batches:
    """Endless batches for one rank, starting at micro-batch `position` of the (seed, epoch) order."""

    def __init__(
        self,
        dataset,
        *,
        batch_size: int,
        info: distributed.DistInfo,
        seed: int,
        num_workers: int,
        pin_memory: bool,
        position: int,
    ):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.sampler = ResumableDistributedSampler(
            dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.per_epoch = DistributedSampler.__len__(self.sampler) // batch_size
        if self.per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} samples cannot fill one batch of {batch_size} on each of {info.world_size} processes"
            )
        self.epoch, self.index = divmod(position, self.per_epoch)

    def __iter__(self):
        while True:
            self.sampler.set_epoch(self.epoch)
            self.sampler.start = self.index * self.batch_size
            loader = DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                sampler=self.sampler,
                drop_last=True,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                generator=torch.Generator().manual_seed(self.seed + self.epoch),
            )
            for batch in loader:
                self.index += 1
                yield batch
            self.epoch, self.index = self.epoch + 1, 0


def _time_point_indices(selected: list[int] | None, available: int) -> list[int]:
    """train.time_points (indices into the dataset's M time points; null = all) as non-negative indices.
    The config schema has checked that it is a non-empty list of ints; here it meets the dataset."""
    if selected is None:
        return list(range(available))
    if not all(-available <= i < available for i in selected):
        raise ValueError(f"train.time_points must index the dataset's {available} time points, got {selected!r}")
    indices = [i % available for i in selected]
    if indices != sorted(set(indices)):
        raise ValueError(f"train.time_points must be distinct and in time order, got {selected!r}")
    return indices


# Buffers are identical on every rank (same seed, never updated by forward), so DDP need not sync them
# each forward; newer torch spells that forward_sync_buffers and deprecates broadcast_buffers.
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def _mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    values = values.detach().clone()
    if distributed.current().distributed:
        torch.distributed.all_reduce(values)
        values /= distributed.current().world_size
    return values


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drop metrics lines written after the checkpoint being resumed, so none appears twice."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def train(
    config: dict[str, Any], *, model_factory: Callable[[], nn.Module] | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train per `config` (a resolved dsno config); returns {"step", "start_step", "loss", "out"}.

    model_factory replaces building the model from config["model"] (tests and custom code)."""
    from tqdm import tqdm

    config = validate_config(config)
    cfg = config["train"]
    out = Path(cfg["out"])
    check_output_dir(out, "train.out")
    info, device = distributed.setup(cfg["device"])
    data_dir = cfg["data"] or config["traj"]["out"]

    dataset = TrajectoryDataset(data_dir)
    points = _time_point_indices(cfg["time_points"], len(dataset.logsnr))
    data_logsnr, data_t = dataset.logsnr[points], dataset.t[points]
    torch.manual_seed(cfg["seed"])  # identical initial weights on every rank (DDP also broadcasts them)
    model = model_factory() if model_factory is not None else build_model_from_config(config["model"])
    set_temporal_precision(model, config["model"]["temporal_precision"])
    if cfg["init_backbone"]:
        from .model import load_backbone_weights

        try:
            load_backbone_weights(
                model, load_tensor_file(cfg["init_backbone"], "backbone weights (train.init_backbone)")
            )
        except KeyError as error:  # the state dict's tensors are not the model's
            raise ValueError(f"{cfg['init_backbone']}: {error.args[0]}") from error
    model.to(device)
    dtype = next(model.parameters()).dtype
    loss_dtype = torch.promote_types(dtype, torch.float32)  # the loss in fp32 at least, even for a bf16 forward
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    logsnr = data_logsnr.to(device, dtype)
    weights = snr_weights(data_logsnr) if cfg["loss_weight"] == "snr" else torch.ones_like(data_logsnr)
    weights = weights.to(device, loss_dtype)
    perceptual = VGGPerceptualLoss(cfg["vgg_weights"]).to(device) if cfg["loss"] == "vgg" else None

    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"], weight_decay=cfg["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupMultiStep(cfg["warmup"], cfg["warmup_start_factor"], cfg["milestones"], cfg["gamma"])
    )

    start_step, loss_value = 0, math.nan
    total_steps = cfg["steps"]
    checkpoint_path = out / CHECKPOINT
    torch.manual_seed(cfg["seed"] + info.rank)  # per-rank stream for dropout and the like
    if cfg["resume"] and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path, map_location=device)
        if state["step"] > total_steps:
            raise ValueError(
                f"{checkpoint_path} is at step {state['step']}, past train.steps={total_steps} (the "
                f"total to train to, not steps to add): set train.steps >= {state['step']}, or "
                f"another train.out"
            )
        load_model_state(model, state["model"], checkpoint_path, config["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step, loss_value = state["step"], state.get("loss", math.nan)
        if state["world_size"] == info.world_size:
            set_rng_state(state["rng"][info.rank])
        elif info.is_main:
            print(
                f"resuming a {state['world_size']}-process run on {info.world_size}: "
                f"random streams and data order restart (not an exact continuation)"
            )
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        _trim_metrics(out / METRICS, start_step)
        atomic_write_text(out / "config.yaml", dump_config(config))

    ddp_model: nn.Module = model
    if info.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **_NO_BUFFER_SYNC
        )
    grad_accum = cfg["grad_accum"]
    batches = iter(
        _Batches(
            dataset,
            batch_size=cfg["batch_size"],
            info=info,
            seed=cfg["seed"],
            num_workers=cfg["num_workers"],
            pin_memory=device.type == "cuda",
            position=start_step * grad_accum,
        )
    )

    def save(step: int) -> None:
        rng = distributed.all_gather_object(rng_state())
        if not info.is_main:
            return
        state = {
            "version": CHECKPOINT_VERSION,
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "world_size": info.world_size,
            "config": config,
            "logsnr": data_logsnr.tolist(),
            "t": data_t.tolist(),
            "noise_shape": dataset.spec.shape,
            "num_classes": dataset.num_classes,
            "loss": loss_value,
        }
        save_checkpoint(state, checkpoint_path)
        if cfg["keep_every"] and step % cfg["keep_every"] == 0:
            save_checkpoint(state, out / f"checkpoint-{step:08d}.pt")

    if info.is_main:
        parameters = sum(p.numel() for p in model.parameters())
        print(
            f"dsno train: {parameters:,} parameters, {len(dataset):,} trajectories, {info.world_size} process(es), "
            f"global batch {cfg['batch_size'] * info.world_size * grad_accum}, steps {start_step} -> {total_steps}"
        )
    metrics_file = open(out / METRICS, "a") if info.is_main else contextlib.nullcontext()
    model.train()
    with (
        metrics_file as metrics,
        tqdm(
            total=total_steps,
            initial=start_step,
            disable=not progress or not info.is_main,
            desc="train",
            dynamic_ncols=True,
        ) as bar,
    ):
        started = time.perf_counter()
        for step in range(start_step, total_steps):
            optimizer.zero_grad(set_to_none=True)
            point_losses = torch.zeros_like(weights)
            for micro in range(grad_accum):
                batch = next(batches)
                noise = batch["noise"].to(device, dtype, non_blocking=True)
                target = batch["trajectory"][:, points].to(device, loss_dtype, non_blocking=True)
                label = batch["label"].to(device, non_blocking=True) if "label" in batch else None
                sync = micro == grad_accum - 1 or not info.distributed
                with contextlib.nullcontext() if sync else ddp_model.no_sync():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg["bf16"])):
                        pred = ddp_model(noise, logsnr) if label is None else ddp_model(noise, logsnr, label)
                    loss, per_point = trajectory_loss(pred.to(loss_dtype), target, weights, cfg["loss"], perceptual)
                    (loss / grad_accum).backward()
                point_losses += per_point.detach() / grad_accum
            grad_norm = None  # stays a tensor: reading it every step would synchronise the GPU
            if cfg["grad_clip"] and cfg["grad_clip"] > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            _update_ema(ema, model, cfg["ema_decay"])
            done = step + 1
            if done % cfg["log_every"] == 0 or done == total_steps:
                point_losses = _mean_over_ranks(point_losses)
                loss_value = float((point_losses * weights).mean())
                if info.is_main:
                    record = {
                        "step": done,
                        "loss": loss_value,
                        "loss_per_point": point_losses.tolist(),
                        "lr": lr,
                        "grad_norm": None if grad_norm is None else float(grad_norm),
                        "elapsed_seconds": time.perf_counter() - started,
                    }
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    bar.set_postfix(loss=f"{loss_value:.4g}")
            if done % cfg["save_every"] == 0 or done == total_steps:
                save(done)
            bar.update(1)
    distributed.barrier()
    return {"step": total_steps, "start_step": start_step, "loss": loss_value, "out": str(out)}


def resume_note(config: dict[str, Any]) -> str:
    """Where a rerun of train(config) starts: from its checkpoint's step, or from step 0."""
    cfg = config["train"]
    path = Path(cfg["out"]) / CHECKPOINT
    if not cfg["resume"]:
        return "train.resume is false: the same command starts again from step 0"
    if not path.is_file():
        return (
            f"no checkpoint was written yet (one every train.save_every={cfg['save_every']} steps): the same "
            f"command starts again from step 0"
        )
    step = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["step"]  # mmap: reads only what it needs
    return f"the same command resumes from step {step} ({path})"
