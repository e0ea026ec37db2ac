"""`dsno demo`: distil a real teacher into a one-pass DSNO sampler on real data, on a laptop CPU, and
check DSNO's claim against its baselines.

    dsno demo                      # DSNO vs KD vs DDIM (a few minutes on 2 CPU cores); --quick: about 1
    dsno demo --ablation           # DSNO over M = 1, 2, 4 time points and K Fourier modes
    dsno demo --claim              # DSNO vs KD on two exact teachers, 3 seeds, paired statistics (dsno.claim)
    dsno demo --out my-folder --quick

What it does, end to end, with the package's own gen-traj / train pipeline and the `digits` preset
(dsno/configs/digits.yaml; --quick and --train-steps change only its sizes):

 1. Data: scikit-learn's 1,797 handwritten 8x8 digits, scaled to [-1, 1] (`dsno.digits`).
 2. Teacher: a Gaussian mixture fitted to them, one full-covariance component per class. Its
    posterior mean E[x0 | x_t] is exact, so its probability-flow ODE is the exact ODE of that data
    distribution, with no network to train.
 3. Trajectories (`dsno gen-traj`): DDIM with schedule.num_steps steps from traj.num_samples noises
    (noise i from SeedSequence([traj.seed, i])); the teacher's x0-predictions at DSNO's 4 quadratic
    output time points are kept.
 4. Training (`dsno train`), twice on that one dataset, with the same steps, batches and seed:
      dsno  the preset's DSNO (M = 4 output points, K = 2 modes), DSNO's snr-weighted loss over all
            4 points (temporal supervision);
      kd    knowledge distillation into a one-step generator (Luhman & Luhman 2021): the same network
            with M = 1 (its temporal layers then reduce to per-pixel channel mixing; K = 1, the only
            mode of one point) trained only on the teacher's endpoint (train.time_points: [-1]).
 5. Evaluation on `eval_samples` held-out noises (SeedSequence([eval_seed, i]), never trained on):
      teacher   DDIM with num_steps steps: the ODE endpoint (num_steps + 1 teacher evaluations;
                at 256 steps it is within 5e-6 MSE of DDIM with 1024, measured on 1024 of these noises)
      dsno, kd  one forward pass of each trained model (EMA weights), its last output
      ddim1/2/4 DDIM with 1, 2 and 4 teacher evaluations on the same schedule
    Every sampler starts from the same noises, in the same order. Samples are clipped to [-1, 1], the
    image range, before they are saved and measured. Metrics: Frechet distance in pixel space (64-d)
    to the teacher's samples and to the real digits; the mean over noises of the per-pixel squared
    error to the teacher's endpoint from the same noise; wall time per sample. For scale, the
    Frechet distance between the teacher's samples and its endpoints from the first eval_samples
    *training* noises is reported too: two finite samples of one distribution are never at 0.

`--ablation` runs steps 1-3 (reusing --out's trajectories when they match) and then trains the preset's
network for every (M, K) in ABLATION with `ablation_steps` steps each (fewer than the demo, so that it
stays short; the lr milestones scale with them): M = 1 is KD (the 4th point), M = 2 trains on the 2nd
and 4th of the dataset's points and M = 4 on all of them: exactly the quadratic points for that M. Each is
measured at its endpoint on the held-out noises, as above, into ablation.json and ablation.png.

Output folder (--out, default ./dsno-demo):
    metrics.json                    settings, seeds, per-sampler metrics, stage wall times, machine load
    samples_{teacher,dsno,kd,ddim1,ddim2,ddim4}.npy
                                    [N, 1, 8, 8] float32 in [-1, 1], row i from noise i
    noise.npy                       [N, 1, 8, 8] the held-out noises (also re-derivable from eval_seed)
    samples.png                     rows: teacher, DSNO, KD, DDIM-1, DDIM-2, DDIM-4; one column per noise
    loss.png                        training loss per step (DSNO per time point, KD at the endpoint)
    teacher_gmm.npz, traj/, train/, kd/   the teacher, the trajectory dataset and the two training runs
    ablation.json, ablation.png, ablation/   (--ablation) the table, its figure and the training runs

scikit-learn (the digits) and matplotlib (the PNGs) are needed: `pip install scikit-learn matplotlib`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .metrics import frechet_distance, per_sample_mse, time_call

__all__ = [
    "DemoSettings",
    "DEFAULT",
    "QUICK",
    "SAMPLERS",
    "ABLATION",
    "KD_OVERRIDES",
    "MissingDependency",
    "run_demo",
    "run_ablation",
    "add_arguments",
    "main",
]

PRESET = "digits"
SAMPLERS = ("teacher", "dsno", "kd", "ddim1", "ddim2", "ddim4")
BASELINES = ("kd", "ddim1", "ddim2", "ddim4")
FEW_STEP_DDIM = {"ddim1": 1, "ddim2": 2, "ddim4": 4}
GRID_ROWS = (
    ("teacher", "teacher"),
    ("dsno", "DSNO (1 pass)"),
    ("kd", "KD (1 pass)"),
    ("ddim1", "DDIM-1"),
    ("ddim2", "DDIM-2"),
    ("ddim4", "DDIM-4"),
)
# Luhman & Luhman's knowledge distillation: one output point (the endpoint), hence one Fourier mode
KD_OVERRIDES = {"model.overrides.num_time_points": 1, "model.overrides.num_modes": 1, "train.time_points": [-1]}
# (M, K) pairs of the ablation: every K a trajectory of M points has (K <= M // 2 + 1)
ABLATION = ((1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (4, 3))


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What the demo adds to the `digits` preset (all seeds fixed)."""

    overrides: tuple[str, ...] = ()  # "section.key=value" on top of the preset
    eval_samples: int = 1024  # held-out noises every sampler is measured on
    eval_seed: int = 1
    ablation_steps: int = 400  # training steps of each --ablation run
    grid_columns: int = 12

    def __post_init__(self):
        if self.eval_samples < 2:
            raise ValueError(f"eval_samples must be >= 2, got {self.eval_samples}")
        if self.ablation_steps < 1:
            raise ValueError(f"ablation_steps must be >= 1, got {self.ablation_steps}")


DEFAULT = DemoSettings()
QUICK = DemoSettings(
    overrides=(
        "traj.num_samples=1024",
        "train.steps=200",
        "train.warmup=20",
        "train.milestones=[150]",
        "train.ema_decay=0.98",
    ),
    eval_samples=512,
    ablation_steps=60,
)


class MissingDependency(ImportError):
    """An optional package the demo needs is not installed (the message says what to install)."""


def _require_optional_packages() -> None:
    missing = []
    for module, package in (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise MissingDependency(
            f"dsno demo needs {' and '.join(missing)} (the digits data and the plots): pip install {' '.join(missing)}"
        )


def _with_steps(config: dict[str, Any], steps: int) -> dict[str, Any]:
    """`config` trained for `steps` steps instead, its lr milestones scaled alike."""
    config = copy.deepcopy(config)
    scale = steps / config["train"]["steps"]
    config["train"]["milestones"] = [round(m * scale) for m in config["train"]["milestones"]]
    config["train"]["steps"] = config["train"]["save_every"] = steps
    return config


def _pipeline_config(settings: DemoSettings, out: Path, device: str, train_steps: int | None = None) -> dict[str, Any]:
    """The `digits` preset (plus the settings' overrides) with every path under `out` and the device set."""
    from .config import load_config, set_value

    config = load_config(PRESET, settings.overrides)
    for key, value in {
        "teacher.gmm_path": str(out / "teacher_gmm.npz"),
        "traj.out": str(out / "traj"),
        "train.data": str(out / "traj"),
        "train.out": str(out / "train"),
        "sample.checkpoint": str(out / "train" / "checkpoint.pt"),
        "sample.out": str(out / "samples"),
        "traj.device": device,
        "train.device": device,
        "sample.device": device,
    }.items():
        set_value(config, key, value)
    if train_steps is not None:
        config = _with_steps(config, train_steps)
    steps, count = config["schedule"]["num_steps"], config["traj"]["num_samples"]
    if steps < 256:
        raise ValueError(f"schedule.num_steps must be >= 256 for the teacher to be the ODE solution, got {steps}")
    if count < settings.eval_samples:
        raise ValueError(f"need eval_samples <= traj.num_samples, got {settings.eval_samples} and {count}")
    return config


def _variant(config: dict[str, Any], out: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """`config` with `overrides` set, trained into `out`."""
    from .config import set_value

    config = copy.deepcopy(config)
    for key, value in {**overrides, "train.out": str(out)}.items():
        set_value(config, key, value)
    return config


def _time_points_for(config: dict[str, Any], num_points: int) -> list[int] | None:
    """train.time_points that picks, from the dataset's points, the M = num_points quadratic points (which
    are a subset of them: 1 -> [3], 2 -> [1, 3] for 4 points); None for all of them."""
    from .schedule import select_time_indices

    schedule = config["schedule"]
    recorded = select_time_indices(schedule["num_steps"], schedule["num_points"], schedule["spacing"])
    wanted = select_time_indices(schedule["num_steps"], num_points, schedule["spacing"])
    if wanted == recorded:
        return None
    if not set(wanted) <= set(recorded):
        raise ValueError(
            f"the {num_points} {schedule['spacing']} points {wanted} are not among the dataset's {recorded}"
        )
    return [recorded.index(i) for i in wanted]


def _remove_stale_trajectories(config: dict[str, Any], log: Callable[[str], None]) -> None:
    """A rerun with the same settings reuses --out's trajectories; one with other settings (say --quick,
    then the full demo) replaces them, where `dsno gen-traj` itself would refuse to mix two datasets."""
    from .teachers import build_teacher
    from .trajectories import MANIFEST, spec_from_config

    root = Path(config["traj"]["out"])
    if (root / MANIFEST).is_file():
        _replace_other_dataset(root, spec_from_config(config, build_teacher(config)[1]), log)


def _replace_other_dataset(root: Path, spec, log: Callable[[str], None]) -> None:
    """Keep root's trajectories when they were made with `spec`; remove them when made with other settings."""
    import shutil

    from .trajectories import MANIFEST, read_manifest

    if (root / MANIFEST).is_file() and read_manifest(root)["spec"] != json.loads(json.dumps(dataclasses.asdict(spec))):
        log(f"    replacing {root}: it holds an earlier demo's trajectories, made with other settings")
        shutil.rmtree(root)


def _run_facts(stage, started: float, machine_before: dict) -> dict:
    """How long a run took and on what: recorded beside every result so its timings can be judged."""
    return {
        "stage_seconds": stage.seconds,
        "total_seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
        "machine": {"before": machine_before, "after": _machine()},
    }


def _machine() -> dict[str, Any]:
    """What a wall time depends on: the CPU, its cores, torch's threads and the load average now."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg_1_5_15_min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _synchronize(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _timed(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> tuple[np.ndarray, float]:
    sync = _synchronize(device)

    def call():
        result = fn()
        sync()
        return result

    result, seconds = time_call(call, repeats)
    return result.clamp(-1.0, 1.0).float().cpu().numpy(), seconds


class _Stages:
    """Logs numbered stages and records each one's wall time (`with stages(name, message): ...`)."""

    def __init__(self, count: int, log: Callable[[str], None]):
        self.count, self.log, self.seconds, self._number = count, log, {}, 0

    @contextlib.contextmanager
    def __call__(self, name: str, message: str):
        self._number += 1
        self.log(f"{self._number}/{self.count} {message}")
        began = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - began


def _prepare(
    config: dict[str, Any],
    settings: DemoSettings,
    out: Path,
    torch_device: torch.device,
    stage: _Stages,
    progress: bool,
) -> dict[str, Any]:
    """Stages shared by the demo and the ablation: digits, teacher, trajectories, held-out noises and the
    teacher's endpoints from them."""
    from .digits import fit_gaussian_mixture, load_digits
    from .schedule import LogSNRSchedule, time_grid
    from .teachers import solve
    from .trajectories import generate_from_config, sample_noise

    with stage("data_and_teacher", "digits and the Gaussian-mixture teacher"):
        digits, labels = load_digits()
        teacher = fit_gaussian_mixture(digits, labels)
        teacher.save(str(out / "teacher_gmm.npz"))
        teacher.to(torch_device)
    steps, count = config["schedule"]["num_steps"], config["traj"]["num_samples"]
    with stage("trajectories", f"teacher trajectories: DDIM, {steps} steps, {count} noises"):
        _remove_stale_trajectories(config, stage.log)
        manifest = generate_from_config(config, progress=progress)
    with stage("teacher_endpoints", f"the teacher's endpoints from {settings.eval_samples} held-out noises"):
        noise, _ = sample_noise(range(settings.eval_samples), config["data"]["shape"], settings.eval_seed)
        noise = noise.to(torch_device)
        grid = LogSNRSchedule().logsnr(time_grid(steps))
        endpoint, seconds = _timed(
            lambda: solve(teacher, noise, grid, [steps], solver="ddim", record="x0")[:, 0], torch_device, 1
        )
    return {
        "digits": digits,
        "teacher": teacher,
        "manifest": manifest,
        "noise": noise,
        "teacher_samples": endpoint,
        "teacher_seconds": seconds,
    }


def _one_pass(checkpoint: Path, noise: torch.Tensor, torch_device: torch.device) -> tuple[np.ndarray, float, dict]:
    """(the trained model's last output from each noise, seconds for all of them, checkpoint metadata)."""
    from .sample import load_sampler

    model, meta = load_sampler(checkpoint, device=torch_device)
    logsnr = torch.tensor(meta["logsnr"], dtype=torch.float32, device=torch_device)
    with torch.no_grad():
        model(noise[:8], logsnr)  # first call: backend selection and allocations, not timed
        samples, seconds = _timed(lambda: model(noise, logsnr)[:, -1], torch_device, 3)
    meta["parameters"] = sum(p.numel() for p in model.parameters())
    return samples, seconds, meta


def _save_grid(path: Path, samples: dict[str, np.ndarray], columns: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = 0.8 * len(GRID_ROWS) + 0.9
    figure = Figure(figsize=(0.75 * columns + 1.4, height), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(GRID_ROWS), columns, squeeze=False)
    for row, (name, label) in enumerate(GRID_ROWS):
        for column in range(columns):
            axis = axes[row, column]
            axis.imshow(samples[name][column, 0], cmap="gray", vmin=-1.0, vmax=1.0, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
            if row == 0:
                axis.set_title(f"noise {column}", fontsize=8)
    figure.suptitle(
        f"The same {columns} held-out noises (columns) through each sampler (rows): the teacher's ODE endpoint, "
        f"one DSNO or KD pass, DDIM with 1, 2 and 4 steps",
        fontsize=9,
    )
    figure.subplots_adjust(
        left=1.3 / (0.75 * columns + 1.4), right=0.99, top=1 - 0.75 / height, bottom=0.03, wspace=0.08, hspace=0.08
    )
    figure.savefig(path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _save_loss_curve(path: Path, dsno_metrics: Path, kd_metrics: Path, logsnr: list[float]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records, kd_records = _read_jsonl(dsno_metrics), _read_jsonl(kd_metrics)
    steps = [record["step"] for record in records]
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    axis.plot(
        steps,
        [record["loss"] for record in records],
        color="black",
        linewidth=2,
        label="DSNO training loss (snr-weighted)",
    )
    for point, value in enumerate(logsnr):
        axis.plot(
            steps,
            [record["loss_per_point"][point] for record in records],
            linewidth=1,
            label=f"DSNO, time point {point + 1} (logSNR {value:.1f}), unweighted",
        )
    axis.plot(
        [record["step"] for record in kd_records],
        [record["loss_per_point"][0] for record in kd_records],
        color="tab:purple",
        linestyle="--",
        linewidth=1.5,
        label="KD (M = 1), endpoint, unweighted",
    )
    axis.set_yscale("log")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title("DSNO and KD on the digits teacher's trajectories")
    axis.legend(fontsize=7)
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def _metrics(samples: np.ndarray, teacher: np.ndarray, digits: np.ndarray) -> dict[str, float]:
    mse = per_sample_mse(samples, teacher)
    return {
        "fd_to_teacher": frechet_distance(samples, teacher),
        "fd_to_digits": frechet_distance(samples, digits),
        "mse_to_teacher": float(mse.mean()),
        "mse_to_teacher_median": float(np.median(mse)),
    }


def _paired_difference(a: np.ndarray, b: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """Mean and standard error over noises of (MSE of a - MSE of b) to the teacher, noise by noise."""
    difference = per_sample_mse(a, teacher) - per_sample_mse(b, teacher)
    return {
        "mean": float(difference.mean()),
        "standard_error": float(difference.std(ddof=1) / math.sqrt(len(difference))),
    }


def _table(results: dict[str, dict[str, Any]], floor: float) -> str:
    """The results as a Markdown table (readable in a terminal, and pasted as is into the README)."""
    names = {
        "teacher": "teacher: DDIM-{steps} (the ODE endpoint)",
        "dsno": "**DSNO, one pass (M = 4)**",
        "kd": "KD, one pass (M = 1, endpoint only)",
        "ddim1": "DDIM-1",
        "ddim2": "DDIM-2",
        "ddim4": "DDIM-4",
    }
    lines = [
        "| sampler | teacher evaluations | FD to teacher | FD to digits | MSE to teacher | ms / sample |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in SAMPLERS:
        entry = results[name]
        label = names[name].format(steps=entry["teacher_evaluations"] - 1)
        lines.append(
            f"| {label} | {entry['teacher_evaluations']} | {entry['fd_to_teacher']:.4f} | "
            f"{entry['fd_to_digits']:.4f} | {entry['mse_to_teacher']:.5f} | "
            f"{1e3 * entry['seconds_per_sample']:.3f} |"
        )
    lines.append("")
    lines.append(
        f"FD between the teacher's samples from two different sets of noises of this size: {floor:.3f} "
        f"(what sampling noise alone gives)"
    )
    return "\n".join(lines)


def _ablation_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| M (time points trained on) | K (modes) | parameters | FD to teacher | FD to digits | MSE to teacher |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['M']}{' (KD)' if row['M'] == 1 else ''} | {row['K']} | {row['parameters']:,} | "
            f"{row['fd_to_teacher']:.4f} | {row['fd_to_digits']:.4f} | {row['mse_to_teacher']:.5f} |"
        )
    return "\n".join(lines)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from .checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1))


def run_demo(
    out: str | Path,
    settings: DemoSettings = DEFAULT,
    *,
    device: str = "cpu",
    train_steps: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the whole demo into `out`; returns what metrics.json holds."""
    from .distributed import resolve_device
    from .schedule import LogSNRSchedule, time_grid
    from .teachers import solve
    from .train import METRICS, train
    from .trajectories import TrajectoryDataset

    started, machine_before = time.perf_counter(), _machine()
    out = Path(out)
    config = _pipeline_config(settings, out, device, train_steps)  # validates before anything is written
    kd_config = _variant(config, out / "kd", KD_OVERRIDES)
    _require_optional_packages()
    out.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    stage = _Stages(7, log)
    shared = _prepare(config, settings, out, torch_device, stage, progress)
    noise, teacher, digits = shared["noise"], shared["teacher"], shared["digits"]

    steps, batch = config["train"]["steps"], config["train"]["batch_size"]
    with stage("training", f"training DSNO (M = 4): {steps} steps of {batch}"):
        train(config, progress=progress)
    with stage("training_kd", f"training KD (M = 1, endpoint only): the same {steps} steps of {batch}"):
        train(kd_config, progress=progress)

    samples = {"teacher": shared["teacher_samples"]}
    seconds = {"teacher": shared["teacher_seconds"]}
    num_steps = config["schedule"]["num_steps"]
    evaluations = {"teacher": num_steps + 1, "dsno": 0, "kd": 0, **FEW_STEP_DDIM}
    with stage("sampling", "sampling the held-out noises with DSNO, KD and DDIM-1/2/4"):
        samples["dsno"], seconds["dsno"], meta = _one_pass(out / "train" / "checkpoint.pt", noise, torch_device)
        samples["kd"], seconds["kd"], kd_meta = _one_pass(out / "kd" / "checkpoint.pt", noise, torch_device)
        schedule = LogSNRSchedule()
        for name, count in FEW_STEP_DDIM.items():
            grid = schedule.logsnr(time_grid(count))
            samples[name], seconds[name] = _timed(
                lambda: solve(teacher, noise, grid, [count], solver="ddim", record="xt")[:, 0],  # noqa: B023 (called here)
                torch_device,
                3,
            )

    with stage("metrics_and_files", "metrics, files and figures"):
        dataset = TrajectoryDataset(out / "traj")
        other_teacher = np.stack(
            [dataset[i]["trajectory"][-1].clamp(-1.0, 1.0).numpy() for i in range(settings.eval_samples)]
        )
        floor = frechet_distance(other_teacher, samples["teacher"])
        results: dict[str, dict[str, Any]] = {}
        for name in SAMPLERS:
            results[name] = {
                "teacher_evaluations": evaluations[name],
                **_metrics(samples[name], samples["teacher"], digits),
                "seconds_per_sample": seconds[name] / settings.eval_samples,
            }
            np.save(out / f"samples_{name}.npy", samples[name])
        for name, info in (("dsno", meta), ("kd", kd_meta)):
            results[name].update(
                time_points=len(info["logsnr"]),
                logsnr=info["logsnr"],
                parameters=info["parameters"],
                trained_on_time_points=info["config"]["train"]["time_points"],
                train_steps=info["step"],
            )
        np.save(out / "noise.npy", noise.cpu().numpy())
        _save_grid(out / "samples.png", samples, min(settings.grid_columns, settings.eval_samples))
        _save_loss_curve(out / "loss.png", out / "train" / METRICS, out / "kd" / METRICS, meta["logsnr"])

    dsno = results["dsno"]
    summary = {
        "settings": {
            **dataclasses.asdict(settings),
            "preset": PRESET,
            "train_steps": steps,
            "teacher_steps": num_steps,
            "train_samples": config["traj"]["num_samples"],
            "device": str(torch_device),
            "kd_overrides": KD_OVERRIDES,
        },
        "config": config,
        "noise": {
            "eval_seed": settings.eval_seed,
            "train_seed": config["traj"]["seed"],
            "seeding": shared["manifest"]["seeding"],
            "shape": [settings.eval_samples, *config["data"]["shape"]],
        },
        "time_points": {"logsnr": meta["logsnr"], "t": meta["t"]},
        "samplers": results,
        "fd_floor_teacher_vs_teacher": floor,
        "dsno_beats": {
            name: dsno["fd_to_teacher"] < results[name]["fd_to_teacher"]
            and dsno["mse_to_teacher"] < results[name]["mse_to_teacher"]
            for name in BASELINES
        },
        "dsno_vs_kd": {
            key: {"dsno": dsno[key], "kd": results["kd"][key], "dsno_lower": dsno[key] < results["kd"][key]}
            for key in ("fd_to_teacher", "mse_to_teacher", "fd_to_digits")
        },
        # how far apart they are against the spread over these noises (not over training runs)
        "dsno_minus_kd_mse_per_noise": _paired_difference(samples["dsno"], samples["kd"], samples["teacher"]),
        **_run_facts(stage, started, machine_before),
    }
    _write_json(out / "metrics.json", summary)
    log("")
    log(_table(results, floor))
    log(_closing_line(summary, out))
    return summary


def _closing_line(summary: dict[str, Any], out: Path) -> str:
    """The run in one sentence: DSNO vs KD as measured (one training run each), then the DDIM baselines."""
    versus, paired = summary["dsno_vs_kd"], summary["dsno_minus_kd_mse_per_noise"]
    if abs(paired["mean"]) > 2 * paired["standard_error"]:
        verdict = f"{'KD' if paired['mean'] > 0 else 'DSNO'} is closer to the teacher by MSE"
    else:
        verdict = "no MSE difference resolved"
    beaten = [name for name, won in summary["dsno_beats"].items() if won and name != "kd"]
    return (
        f"DSNO vs KD, one training run each: FD to the teacher {versus['fd_to_teacher']['dsno']:.4f} vs "
        f"{versus['fd_to_teacher']['kd']:.4f}, MSE {versus['mse_to_teacher']['dsno']:.5f} vs "
        f"{versus['mse_to_teacher']['kd']:.5f}, DSNO - KD per noise {paired['mean']:+.5f} +- "
        f"{paired['standard_error']:.5f} (standard error over the noises; `dsno demo --claim` measures the spread "
        f"over training seeds): {verdict}. DSNO's single pass is closer to the teacher than "
        f"{', '.join(beaten) or 'none of the DDIM baselines'} (FD and MSE); total {summary['total_seconds']:.0f} s. "
        f"Files in {out}"
    )


def _save_ablation_figure(path: Path, rows: list[dict[str, Any]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 3.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    labels = [f"M={row['M']}\nK={row['K']}" for row in rows]
    colours = ["tab:red" if row["M"] == 1 else "tab:blue" for row in rows]
    for axis, key, title in (
        (axes[0], "fd_to_teacher", "FD to teacher"),
        (axes[1], "mse_to_teacher", "MSE to teacher"),
    ):
        axis.bar(range(len(rows)), [row[key] for row in rows], color=colours)
        axis.set_xticks(range(len(rows)), labels, fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.grid(True, axis="y", alpha=0.3)
    figure.suptitle("one pass, endpoint vs the teacher; M = 1 (red) is KD", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


def run_ablation(
    out: str | Path,
    settings: DemoSettings = DEFAULT,
    *,
    device: str = "cpu",
    train_steps: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the preset's network for every (M, K) in ABLATION, settings.ablation_steps steps each (or
    train_steps), and measure each one-pass endpoint on the held-out noises; returns ablation.json."""
    from .distributed import resolve_device
    from .train import train

    started, machine_before = time.perf_counter(), _machine()
    out = Path(out)
    steps = train_steps if train_steps is not None else settings.ablation_steps
    config = _with_steps(_pipeline_config(settings, out, device), steps)
    variants = {
        (m, k): _variant(
            config,
            out / "ablation" / f"M{m}-K{k}",
            {
                "model.overrides.num_time_points": m,
                "model.overrides.num_modes": k,
                "train.time_points": _time_points_for(config, m),
            },
        )
        for m, k in ABLATION
    }
    _require_optional_packages()
    out.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    stage = _Stages(3 + len(variants), log)
    shared = _prepare(config, settings, out, torch_device, stage, progress)
    rows = []
    for (m, k), variant in variants.items():
        with stage(f"M{m}-K{k}", f"training and sampling M = {m}, K = {k}: {steps} steps"):
            train(variant, progress=progress)
            samples, _, meta = _one_pass(Path(variant["train"]["out"]) / "checkpoint.pt", shared["noise"], torch_device)
        rows.append(
            {
                "M": m,
                "K": k,
                "logsnr": meta["logsnr"],
                "trained_on_time_points": variant["train"]["time_points"],
                "parameters": meta["parameters"],
                "train_steps": meta["step"],
                **_metrics(samples, shared["teacher_samples"], shared["digits"]),
                "seconds": stage.seconds[f"M{m}-K{k}"],
            }
        )
    _save_ablation_figure(out / "ablation.png", rows)
    summary = {
        "settings": {
            **dataclasses.asdict(settings),
            "preset": PRESET,
            "train_steps": steps,
            "teacher_steps": config["schedule"]["num_steps"],
            "train_samples": config["traj"]["num_samples"],
            "device": str(torch_device),
        },
        "rows": rows,
        **_run_facts(stage, started, machine_before),
    }
    _write_json(out / "ablation.json", summary)
    log("")
    log(_ablation_table(rows))
    log(f"total {summary['total_seconds']:.0f} s. Files in {out}")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0] + (
        " Fits an exact Gaussian-mixture teacher to scikit-learn's 8x8 digits, generates its DDIM trajectories, "
        "trains the tiny DSNO on them and, on the same data, the knowledge-distillation baseline (M = 1, endpoint "
        "only), then compares their one-pass samples with the teacher's ODE endpoint and with 1-, 2- and 4-step "
        "DDIM from the same held-out noises. Needs scikit-learn and matplotlib."
    )
    parser.add_argument("--out", default="dsno-demo", help="output folder (default: ./dsno-demo)")
    parser.add_argument(
        "--quick", action="store_true", help="a smaller run (about 1 minute on 2 CPU cores) for CI and a first look"
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help=f"instead of the comparison, train M, K = {', '.join(f'{m}, {k}' for m, k in ABLATION)} "
        f"with {DEFAULT.ablation_steps} steps each ({QUICK.ablation_steps} with --quick) into "
        f"ablation.json",
    )
    parser.add_argument(
        "--claim",
        action="store_true",
        help="instead of the comparison, test DSNO against KD on two exact teachers with several seeds and "
        "paired statistics into claim.json and claim.png (about 25 minutes on 2 idle CPU cores; see dsno.claim)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per model with --claim (default 3)")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="train for this many steps instead (the lr milestones scale with it)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from .checkpoint import check_output_dir
    from .distributed import resolve_device

    if args.claim:
        from .claim import main as claim_main

        return claim_main(args)
    settings = QUICK if args.quick else DEFAULT
    if args.train_steps is not None and args.train_steps < 1:
        raise ValueError(f"--train-steps must be positive, got {args.train_steps}")
    # the settings, the device and the output folder, checked before anything is created (run_* check again)
    _pipeline_config(settings, Path(args.out), args.device, args.train_steps)
    resolve_device(args.device)
    check_output_dir(args.out, "--out")
    run = run_ablation if args.ablation else run_demo
    try:
        summary = run(
            args.out, settings, device=args.device, train_steps=args.train_steps, progress=not args.no_progress
        )
    except MissingDependency as error:
        raise ValueError(str(error)) from None
    values = summary["rows"] if args.ablation else summary["samplers"].values()
    return 0 if all(math.isfinite(v["mse_to_teacher"]) for v in values) else 1
