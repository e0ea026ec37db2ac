"""`dsno demo`: distil a real teacher into a one-pass DSNO sampler on real data, on a laptop CPU.

    dsno demo                      # about 6 minutes on 2 CPU cores; --quick: about 1
    dsno demo --out my-folder --quick

What it does, end to end, with the package's own gen-traj / train pipeline:

 1. Data: scikit-learn's 1,797 handwritten 8x8 digits, scaled to [-1, 1] (`dsno.digits`).
 2. Teacher: a Gaussian mixture fitted to them, one full-covariance component per class. Its
    posterior mean E[x0 | x_t] is exact, so its probability-flow ODE is the exact ODE of that data
    distribution, with no network to train.
 3. Trajectories (`dsno gen-traj`): DDIM with `teacher_steps` steps from `train_samples` noises
    (noise i from SeedSequence([train_seed, i])); the teacher's x0-predictions at DSNO's 4 quadratic
    output time points are kept.
 4. Training (`dsno train`): the `tiny` DSNO model (1 channel, 8x8, M = 4 output points) learns
    noise -> trajectory with DSNO's snr-weighted loss.
 5. Evaluation on `eval_samples` held-out noises (SeedSequence([eval_seed, i]), never trained on):
      teacher   DDIM with teacher_steps steps: the ODE endpoint (teacher_steps + 1 teacher evaluations;
                at 256 steps it is within 5e-6 MSE of DDIM with 1024, measured on 1024 of these noises)
      dsno      one forward pass of the trained model (EMA weights), the last of its M outputs
      ddim1/2/4 DDIM with 1, 2 and 4 teacher evaluations on the same schedule
    Every sampler starts from the same noises, in the same order. Samples are clipped to [-1, 1], the
    image range, before they are saved and measured. Metrics: Frechet distance in pixel space (64-d)
    to the teacher's samples and to the real digits; the mean over noises of the per-pixel squared
    error to the teacher's endpoint from the same noise; wall time per sample. For scale, the
    Frechet distance between the teacher's samples and its endpoints from the first eval_samples
    *training* noises is reported too: two finite samples of one distribution are never at 0.

Output folder (--out, default ./dsno-demo):
    metrics.json                    settings, seeds, per-sampler metrics, stage wall times
    samples_teacher.npy, samples_dsno.npy, samples_ddim1.npy, samples_ddim2.npy, samples_ddim4.npy
                                    [N, 1, 8, 8] float32 in [-1, 1], row i from noise i
    noise.npy                       [N, 1, 8, 8] the held-out noises (also re-derivable from eval_seed)
    samples.png                     rows: teacher, DSNO (1 pass), DDIM-1, DDIM-2; one column per noise
    loss.png                        training loss per step (weighted total and per time point)
    teacher_gmm.npz, traj/, train/  the fitted teacher, the trajectory dataset and the training run

scikit-learn (the digits) and matplotlib (the PNGs) are needed: `pip install scikit-learn matplotlib`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .metrics import frechet_distance, per_sample_mse, time_call

__all__ = ["DemoSettings", "DEFAULT", "QUICK", "SAMPLERS", "MissingDependency", "run_demo", "add_arguments", "main"]

SAMPLERS = ("teacher", "dsno", "ddim1", "ddim2", "ddim4")
FEW_STEP_DDIM = {"ddim1": 1, "ddim2": 2, "ddim4": 4}
GRID_ROWS = (("teacher", "teacher"), ("dsno", "DSNO (1 pass)"), ("ddim1", "DDIM-1"), ("ddim2", "DDIM-2"))


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Everything that decides the demo's numbers (all seeds fixed)."""

    train_samples: int  # teacher trajectories to train on
    eval_samples: int  # held-out noises every sampler is measured on
    teacher_steps: int  # DDIM steps of the teacher (trajectories and the reference endpoint)
    train_steps: int
    batch_size: int
    lr: float
    warmup: int
    milestones: tuple[int, ...]
    gamma: float
    ema_decay: float
    loss: str  # L1 | L2, weighted per time point by clamp(sqrt(exp(logsnr)), 1, 1e4)
    model: dict[str, Any]  # overrides of the `tiny` preset
    train_seed: int = 0  # noises and training randomness
    eval_seed: int = 1  # held-out noises
    grid_columns: int = 12

    def __post_init__(self):
        if self.teacher_steps < 256:
            raise ValueError(f"teacher_steps must be >= 256 for the teacher to be the ODE solution, "
                             f"got {self.teacher_steps}")
        if self.eval_samples < 2 or self.train_samples < self.eval_samples:
            raise ValueError(f"need 2 <= eval_samples <= train_samples, "
                             f"got {self.eval_samples} and {self.train_samples}")


_MODEL = {"in_channels": 1, "nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4],
          "dropout": 0.0, "num_modes": 2, "num_time_points": 4}

DEFAULT = DemoSettings(train_samples=8192, eval_samples=1024, teacher_steps=256, train_steps=1200, batch_size=64,
                       lr=2e-3, warmup=50, milestones=(800, 1000), gamma=0.3, ema_decay=0.995, loss="L2",
                       model=_MODEL)
QUICK = DemoSettings(train_samples=1024, eval_samples=512, teacher_steps=256, train_steps=200, batch_size=64,
                     lr=2e-3, warmup=20, milestones=(150,), gamma=0.3, ema_decay=0.98, loss="L2", model=_MODEL)


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
        raise MissingDependency(f"dsno demo needs {' and '.join(missing)} (the digits data and the plots): "
                                f"pip install {' '.join(missing)}")


def _pipeline_config(settings: DemoSettings, out: Path, device: str) -> dict[str, Any]:
    """The dsno config (as `dsno gen-traj` / `dsno train` read it) for the demo's teacher, data and model."""
    from .config import load_config, set_value

    config = load_config("tiny")
    values = {
        "model.name": "tiny", "model.overrides": dict(settings.model), "data.shape": [1, 8, 8],
        "data.num_classes": None, "schedule.num_steps": settings.teacher_steps, "schedule.num_points": 4,
        "schedule.spacing": "quadratic", "teacher.kind": "gmm", "teacher.gmm_path": str(out / "teacher_gmm.npz"),
        "traj.out": str(out / "traj"), "traj.num_samples": settings.train_samples,
        "traj.shard_size": settings.train_samples, "traj.batch_size": 1024, "traj.solver": "ddim",
        "traj.record": "x0", "traj.seed": settings.train_seed, "traj.device": device,
        "train.data": str(out / "traj"), "train.out": str(out / "train"), "train.steps": settings.train_steps,
        "train.batch_size": settings.batch_size, "train.lr": settings.lr, "train.warmup": settings.warmup,
        "train.warmup_start_factor": 0.01, "train.milestones": list(settings.milestones),
        "train.gamma": settings.gamma, "train.loss": settings.loss, "train.loss_weight": "snr",
        "train.ema_decay": settings.ema_decay, "train.grad_clip": 1.0, "train.seed": settings.train_seed,
        "train.num_workers": 0, "train.log_every": 10, "train.save_every": settings.train_steps,
        "train.resume": False, "train.device": device,
    }
    for key, value in values.items():
        set_value(config, key, value)
    return config


def _remove_stale_trajectories(config: dict[str, Any], log: Callable[[str], None]) -> None:
    """A rerun with the same settings reuses --out's trajectories; one with other settings (say --quick,
    then the full demo) replaces them, where `dsno gen-traj` itself would refuse to mix two datasets."""
    import shutil

    from .teachers import build_teacher
    from .trajectories import MANIFEST, read_manifest, spec_from_config

    root = Path(config["traj"]["out"])
    if not (root / MANIFEST).is_file():
        return
    _, teacher_info = build_teacher(config)
    wanted = json.loads(json.dumps(dataclasses.asdict(spec_from_config(config, teacher_info))))
    if read_manifest(root)["spec"] != wanted:
        log(f"    replacing {root}: it holds an earlier demo's trajectories, made with other settings")
        shutil.rmtree(root)


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


def _save_grid(path: Path, samples: dict[str, np.ndarray], columns: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(0.75 * columns + 1.4, 0.8 * len(GRID_ROWS) + 0.3), dpi=100)
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
    figure.subplots_adjust(left=1.3 / (0.75 * columns + 1.4), right=0.99, top=0.97, bottom=0.03,
                           wspace=0.08, hspace=0.08)
    figure.savefig(path)


def _save_loss_curve(path: Path, metrics_path: Path, logsnr: list[float]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    steps = [record["step"] for record in records]
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    axis.plot(steps, [record["loss"] for record in records], color="black", linewidth=2,
              label="training loss (snr-weighted)")
    for point, value in enumerate(logsnr):
        axis.plot(steps, [record["loss_per_point"][point] for record in records], linewidth=1,
                  label=f"time point {point + 1} (logSNR {value:.1f}), unweighted")
    axis.set_yscale("log")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title("DSNO on the digits teacher's trajectories")
    axis.legend(fontsize=7)
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def _table(results: dict[str, dict[str, Any]], floor: float) -> str:
    """The results as a Markdown table (readable in a terminal, and pasted as is into the README)."""
    names = {"teacher": "teacher: DDIM-{steps} (the ODE endpoint)", "dsno": "**DSNO, one pass**", "ddim1": "DDIM-1",
             "ddim2": "DDIM-2", "ddim4": "DDIM-4"}
    lines = ["| sampler | teacher evaluations | FD to teacher | FD to digits | MSE to teacher | ms / sample |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in SAMPLERS:
        entry = results[name]
        label = names[name].format(steps=entry["teacher_evaluations"] - 1)
        lines.append(f"| {label} | {entry['teacher_evaluations']} | {entry['fd_to_teacher']:.3f} | "
                     f"{entry['fd_to_digits']:.3f} | {entry['mse_to_teacher']:.4f} | "
                     f"{1e3 * entry['seconds_per_sample']:.3f} |")
    lines.append("")
    lines.append(f"FD between the teacher's samples from two different sets of noises of this size: {floor:.3f} "
                 f"(what sampling noise alone gives)")
    return "\n".join(lines)


def run_demo(out: str | Path, settings: DemoSettings = DEFAULT, *, device: str = "cpu",
             progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole demo into `out`; returns what metrics.json holds."""
    _require_optional_packages()
    from tqdm import tqdm

    from .digits import fit_gaussian_mixture, load_digits
    from .distributed import resolve_device
    from .sample import load_sampler
    from .schedule import LogSNRSchedule, time_grid
    from .teachers import solve
    from .train import METRICS, train
    from .trajectories import TrajectoryDataset, generate_from_config, sample_noise

    started = time.perf_counter()
    stage_seconds: dict[str, float] = {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = _pipeline_config(settings, out, device)
    torch_device = resolve_device(device)

    def stage(name: str, began: float) -> None:
        stage_seconds[name] = time.perf_counter() - began

    log("1/5 digits and the Gaussian-mixture teacher")
    began = time.perf_counter()
    digits, labels = load_digits()
    teacher = fit_gaussian_mixture(digits, labels)
    teacher.save(str(out / "teacher_gmm.npz"))
    teacher.to(torch_device)
    stage("data_and_teacher", began)

    log(f"2/5 teacher trajectories: DDIM, {settings.teacher_steps} steps, {settings.train_samples} noises")
    began = time.perf_counter()
    _remove_stale_trajectories(config, log)
    manifest = generate_from_config(config, progress=progress)
    stage("trajectories", began)

    log(f"3/5 training DSNO: {settings.train_steps} steps of {settings.batch_size}")
    began = time.perf_counter()
    train(config, progress=progress)
    stage("training", began)
    model, meta = load_sampler(out / "train" / "checkpoint.pt", device=torch_device)
    model_logsnr = torch.tensor(meta["logsnr"], dtype=torch.float32, device=torch_device)

    log(f"4/5 sampling {settings.eval_samples} held-out noises with every sampler")
    began = time.perf_counter()
    noise, _ = sample_noise(range(settings.eval_samples), [1, 8, 8], settings.eval_seed)
    noise = noise.to(torch_device)
    schedule = LogSNRSchedule()
    samples: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    evaluations: dict[str, int] = {}
    with tqdm(total=len(SAMPLERS), desc="samplers", disable=not progress, dynamic_ncols=True) as bar:
        steps = settings.teacher_steps
        teacher_grid = schedule.logsnr(time_grid(steps))
        samples["teacher"], seconds["teacher"] = _timed(
            lambda: solve(teacher, noise, teacher_grid, [steps], solver="ddim", record="x0")[:, 0], torch_device, 1)
        evaluations["teacher"] = steps + 1
        bar.update(1)
        with torch.no_grad():
            model(noise[:8], model_logsnr)  # first call: backend selection and allocations, not timed
            samples["dsno"], seconds["dsno"] = _timed(lambda: model(noise, model_logsnr)[:, -1], torch_device, 3)
        evaluations["dsno"] = 0
        bar.update(1)
        for name, count in FEW_STEP_DDIM.items():
            grid = schedule.logsnr(time_grid(count))
            samples[name], seconds[name] = _timed(
                lambda: solve(teacher, noise, grid, [count], solver="ddim", record="xt")[:, 0], torch_device, 3)
            evaluations[name] = count
            bar.update(1)
    stage("sampling", began)

    log("5/5 metrics, files and figures")
    began = time.perf_counter()
    dataset = TrajectoryDataset(out / "traj")
    other_teacher = np.stack([dataset[i]["trajectory"][-1].clamp(-1.0, 1.0).numpy()
                              for i in range(settings.eval_samples)])
    floor = frechet_distance(other_teacher, samples["teacher"])
    results: dict[str, dict[str, Any]] = {}
    for name in SAMPLERS:
        mse = per_sample_mse(samples[name], samples["teacher"])
        results[name] = {
            "teacher_evaluations": evaluations[name],
            "fd_to_teacher": frechet_distance(samples[name], samples["teacher"]),
            "fd_to_digits": frechet_distance(samples[name], digits),
            "mse_to_teacher": float(mse.mean()),
            "mse_to_teacher_median": float(np.median(mse)),
            "seconds_per_sample": seconds[name] / settings.eval_samples,
        }
        np.save(out / f"samples_{name}.npy", samples[name])
    np.save(out / "noise.npy", noise.cpu().numpy())
    _save_grid(out / "samples.png", samples, min(settings.grid_columns, settings.eval_samples))
    _save_loss_curve(out / "loss.png", out / "train" / METRICS, meta["logsnr"])
    stage("metrics_and_files", began)

    dsno = results["dsno"]
    summary = {
        "settings": {**dataclasses.asdict(settings), "device": str(torch_device)},
        "noise": {"eval_seed": settings.eval_seed, "train_seed": settings.train_seed,
                  "seeding": manifest["seeding"], "shape": [settings.eval_samples, 1, 8, 8]},
        "time_points": {"logsnr": meta["logsnr"], "t": meta["t"]},
        "samplers": results,
        "fd_floor_teacher_vs_teacher": floor,
        "dsno_beats": {name: dsno["fd_to_teacher"] < results[name]["fd_to_teacher"]
                       and dsno["mse_to_teacher"] < results[name]["mse_to_teacher"] for name in FEW_STEP_DDIM},
        "stage_seconds": stage_seconds,
        "total_seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    log("")
    log(_table(results, floor))
    beaten = [name for name, won in summary["dsno_beats"].items() if won]
    log(f"DSNO's single pass is closer to the teacher than {', '.join(beaten) or 'none of the DDIM baselines'} "
        f"(Frechet distance and MSE); total {summary['total_seconds']:.0f} s. Files in {out}")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0] + (
        " Fits an exact Gaussian-mixture teacher to scikit-learn's 8x8 digits, generates its DDIM trajectories, "
        "trains the tiny DSNO on them, then compares DSNO's one-pass samples with the teacher's ODE endpoint "
        "and with 1-, 2- and 4-step DDIM from the same held-out noises. Needs scikit-learn and matplotlib.")
    parser.add_argument("--out", default="dsno-demo", help="output folder (default: ./dsno-demo)")
    parser.add_argument("--quick", action="store_true",
                        help="a smaller run (about 1 minute on 2 CPU cores) for CI and a first look")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="train for this many steps instead (the lr milestones scale with it)")
    parser.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1). More help on an idle machine with cores to spare; on a "
                             "busy one the tiny model's many small ops get many times slower with more threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    settings = QUICK if args.quick else DEFAULT
    if args.train_steps is not None:
        if args.train_steps < 1:
            raise SystemExit(f"--train-steps must be positive, got {args.train_steps}")
        scale = args.train_steps / settings.train_steps
        settings = dataclasses.replace(settings, train_steps=args.train_steps,
                                       milestones=tuple(round(m * scale) for m in settings.milestones))
    torch.set_num_threads(args.threads)
    try:
        summary = run_demo(args.out, settings, device=args.device, progress=not args.no_progress)
    except MissingDependency as error:
        raise SystemExit(str(error)) from None
    return 0 if all(math.isfinite(v["mse_to_teacher"]) for v in summary["samplers"].values()) else 1
