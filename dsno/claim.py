"""`dsno demo --claim`: is DSNO's single pass closer to its teacher than knowledge distillation's?

DSNO's paper credits its temporal supervision (the loss on all M time points of the teacher's trajectory)
for beating knowledge distillation into a one-step generator (KD, Luhman & Luhman 2021: the endpoint only).
`dsno demo` compares one training run of each on a Gaussian-mixture teacher, where both sit at the
metric's floor. This experiment is built so that a difference could show:

* Two exact teachers of the 1,797 digits: the demo's Gaussian mixture (`mixture`, 10 components) and a
  kernel-density teacher (`kde`: the digits themselves smoothed by an isotropic Gaussian of width
  KDE_WIDTH, one component per image, `dsno.teachers.KernelDensityTeacher`), whose flow map has one basin
  per training image for a one-step generator to carve out. KDE_WIDTH was chosen by WIDTH_RULE from
  WIDTH_CANDIDATES (`python -m dsno.claim sweep`, recorded in docs/demo/claim-width-sweep.json).
* Each teacher's trajectories: Heun with the preset's 256 steps from traj.num_samples noises (within 1e-8
  MSE of a 2048-step solve for both teachers, in that record), states at DSNO's 4 quadratic time points.
* Three models per teacher and seed, all the preset's network, steps, optimiser, lr schedule and EMA:
      dsno      M = 4, K = 2, supervised at all 4 points (the demo's DSNO)
      kd        M = 1, K = 1, supervised at the endpoint only (the demo's KD)
      kd_equal  kd with a batch MODELS_BATCH_FACTOR = 4 times larger: a DSNO step runs the backbone on
                batch x M images, so kd_equal gets the same backbone evaluations in training as dsno
  Seed j (train.seed = j) gives every model of a teacher the same initial-weight seed and the same batches
  (kd_equal: the same shuffle seed, larger batches).
* Each model's EMA weights are measured after 1/4, 2/4, 3/4 and all of its steps (a learning curve, from
  the checkpoints train.keep_every keeps, which are then removed) on eval_samples held-out noises
  (SeedSequence([eval_seed, i]), never trained on), against the teacher's endpoint from the same noise.

Statistics. MSE: the per-pixel squared error of a model's sample to the teacher's endpoint from the same
noise. The paired difference d = MSE(dsno) - MSE(kd) is taken noise by noise for each seed (the same noises
and batches for both). Reported per seed: its mean and standard error over the noises; over seeds: the mean
of the seed means, their standard deviation, and a 95% interval mean +- t * se with
se = sqrt(sd_seeds^2 / seeds + se_noises^2) (se_noises: the standard error over noises of the
seed-averaged d; t: Student's t quantile for seeds - 1 degrees of freedom, 1.96 with one seed). The
difference is resolved when that interval excludes 0; its half-width is the smallest difference this run
could resolve. FD: the Frechet distance (64-d pixels) to the teacher's endpoints, per seed, beside the
floor (the FD between the teacher's endpoints from these noises and from as many training noises: two
finite sample sets of one distribution; paired samples can lie below it).

The jobs (one per teacher to make its trajectories, then one per teacher, model and seed) run in
`workers` processes (default: the cores / --threads). claim.json records every per-seed number, every
job's wall and CPU time, the worker and thread counts and the load average, so that a wall time taken
on a shared machine can be judged.

Output folder (--out): claim.json, claim.png (the learning curves, seed spread shaded), claim-per-noise.npz
(every per-noise MSE), claim/{mixture,kde}/ (teacher, trajectories, endpoints, seed*/MODEL/ training runs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import resource
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import check_output_dir
from .demo import (
    KD_OVERRIDES,
    PRESET,
    _machine,
    _replace_other_dataset,
    _require_optional_packages,
    _variant,
    _with_steps,
    _write_json,
)
from .distributed import resolve_device
from .metrics import frechet_distance, per_sample_mse

__all__ = [
    "ClaimSettings",
    "CLAIM",
    "QUICK_CLAIM",
    "TEACHERS",
    "MODELS",
    "KDE_WIDTH",
    "WIDTH_CANDIDATES",
    "WIDTH_RULE",
    "run_claim",
    "run_width_sweep",
    "claim_table",
    "claim_summary",
    "fd_table",
    "run_line",
    "sweep_table",
    "main",
]

TEACHERS = {"mixture": "Gaussian-mixture teacher", "kde": "kernel-density teacher"}
MODELS_BATCH_FACTOR = 4  # DSNO's M: its step runs the backbone on batch x M images
MODELS = {
    "dsno": "DSNO (M = 4, all 4 points)",
    "kd": "KD (M = 1, endpoint only)",
    "kd_equal": f"KD, equal compute (batch x{MODELS_BATCH_FACTOR})",
}
COMPARISONS = {"dsno_minus_kd": ("dsno", "kd"), "dsno_minus_kd_equal": ("dsno", "kd_equal")}
TEACHER_SOLVER = "heun"
FINE_STEPS = 2048  # the grid the teacher's solver is checked against

# The kernel-density teacher's width, chosen before any claim run by WIDTH_RULE (docs/demo/claim-width-sweep.json)
WIDTH_CANDIDATES = (0.5, 0.35, 0.25, 0.18, 0.125)
WIDTH_RULE = (
    "the largest width s in WIDTH_CANDIDATES for which (a) DDIM-4's FD to the teacher's endpoints is at least "
    "5 times the teacher-vs-teacher floor and (b) both one-pass models (DSNO and KD, training seed 0, the "
    "claim's full training) have an FD to the teacher of at least 2 times the floor; the smallest candidate "
    "if none qualifies"
)
KDE_WIDTH = 0.125


@dataclasses.dataclass(frozen=True)
class ClaimSettings:
    """What the claim adds to the `digits` preset (all seeds fixed)."""

    overrides: tuple[str, ...] = ()  # "section.key=value" on top of the preset
    seeds: int = 3
    eval_samples: int = 1024
    eval_seed: int = 1
    curve_points: int = 4  # measured after 1/curve_points, 2/curve_points, ... of the steps
    accuracy_samples: int = 64  # noises the teacher's solver is checked on against FINE_STEPS
    kde_width: float = KDE_WIDTH

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.eval_samples < 2:
            raise ValueError(f"eval_samples must be >= 2, got {self.eval_samples}")
        if self.curve_points < 1:
            raise ValueError(f"curve_points must be >= 1, got {self.curve_points}")


CLAIM = ClaimSettings()
QUICK_CLAIM = ClaimSettings(
    overrides=(
        "traj.num_samples=256",
        "train.steps=16",
        "train.warmup=4",
        "train.milestones=[12]",
        "train.ema_decay=0.9",
    ),
    eval_samples=128,
    accuracy_samples=4,
)


# ---------------------------------------------------------------------------------------------------
# Configuration: one trajectory dataset per teacher, one training run per (teacher, model, seed)


def _base_config(settings: ClaimSettings, device: str, train_steps: int | None) -> dict[str, Any]:
    from .config import load_config, set_value

    config = load_config(PRESET, settings.overrides)
    for key in ("traj.device", "train.device", "sample.device"):
        set_value(config, key, device)
    set_value(config, "traj.solver", TEACHER_SOLVER)
    if train_steps is not None:
        config = _with_steps(config, train_steps)
    steps = config["train"]["steps"]
    if steps % settings.curve_points:
        raise ValueError(f"train steps must be a multiple of {settings.curve_points} (the learning curve), got {steps}")
    if config["traj"]["num_samples"] < settings.eval_samples:
        raise ValueError(
            f"need eval_samples <= traj.num_samples, got {settings.eval_samples} and {config['traj']['num_samples']}"
        )
    every = steps // settings.curve_points
    set_value(config, "train.save_every", every)
    set_value(config, "train.keep_every", every)
    return config


def _training_configs(
    config: dict[str, Any], settings: ClaimSettings, root: Path
) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(teacher, model, seed) -> the training config, trained into root/teacher/seed{seed}/model."""
    batch = config["train"]["batch_size"]
    overrides = {
        "dsno": {},
        "kd": KD_OVERRIDES,
        "kd_equal": {**KD_OVERRIDES, "train.batch_size": MODELS_BATCH_FACTOR * batch},
    }
    configs = {}
    for teacher in TEACHERS:
        for seed in range(settings.seeds):
            for model, changes in overrides.items():
                configs[teacher, model, seed] = _variant(
                    config,
                    root / teacher / f"seed{seed}" / model,
                    {**changes, "train.seed": seed, "train.data": str(root / teacher / "traj")},
                )
    return configs


def _backbone_evaluations_per_step(config: dict[str, Any]) -> int:
    """Images the backbone runs on per training step (forward, and as many backward): batch x M."""
    return config["train"]["batch_size"] * config["model"]["overrides"]["num_time_points"]


# ---------------------------------------------------------------------------------------------------
# Jobs: each runs in a worker process and returns plain data


def _build_teacher(name: str, width: float):
    from .digits import fit_gaussian_mixture, load_digits
    from .teachers import KernelDensityTeacher

    digits, labels = load_digits()
    if name == "mixture":
        return fit_gaussian_mixture(digits, labels), {"kind": "gmm", "data": "sklearn digits", "components": 10}
    return (
        KernelDensityTeacher(torch.from_numpy(digits), width),
        {"kind": "kde", "data": "sklearn digits", "components": len(digits), "width": width},
    )


def _teacher_job(
    name: str, width: float, config: dict[str, Any], settings: ClaimSettings, folder: str, threads: int
) -> dict[str, Any]:
    """The teacher's trajectories, its endpoints from the held-out noises, DDIM-4 and the FD floor there, and
    the solver's error against a FINE_STEPS solve on the first accuracy_samples of those noises."""
    from .schedule import LogSNRSchedule, time_grid
    from .teachers import solve
    from .trajectories import TrajectoryDataset, generate, sample_noise, spec_from_config

    torch.set_num_threads(threads)
    began, cpu = time.perf_counter(), time.process_time()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    teacher, info = _build_teacher(name, width)
    spec = spec_from_config(config, info)
    _replace_other_dataset(folder / "traj", spec, log=print)
    generate(teacher, spec, folder / "traj", batch_size=config["traj"]["batch_size"], progress=False)
    noise, _ = sample_noise(range(settings.eval_samples), config["data"]["shape"], settings.eval_seed)
    steps = config["schedule"]["num_steps"]

    def solved(x, count, solver):
        return solve(teacher, x, LogSNRSchedule().logsnr(time_grid(count)), [count], solver=solver, record="x0")[:, 0]

    endpoint = solved(noise, steps, TEACHER_SOLVER).clamp(-1, 1).numpy()
    ddim4 = solve(teacher, noise, LogSNRSchedule().logsnr(time_grid(4)), [4], solver="ddim", record="xt")
    ddim4 = ddim4[:, 0].clamp(-1, 1).numpy()
    checked = noise[: settings.accuracy_samples].double()
    fine_error = (solved(checked, steps, TEACHER_SOLVER) - solved(checked, FINE_STEPS, TEACHER_SOLVER)).square()
    dataset = TrajectoryDataset(folder / "traj")
    trained = np.stack([dataset[i]["trajectory"][-1].clamp(-1, 1).numpy() for i in range(settings.eval_samples)])
    np.save(folder / "noise.npy", noise.numpy())
    np.save(folder / "teacher_endpoints.npy", endpoint)
    (folder / "teacher.json").write_text(json.dumps(info, indent=1))
    return {
        "teacher": name,
        "description": info,
        "solver": f"{TEACHER_SOLVER}, {steps} steps",
        "fd_floor": frechet_distance(trained, endpoint),
        "endpoint_mse_vs_fine_grid": float(fine_error.mean()),
        "endpoint_max_error_vs_fine_grid": float(fine_error.max().sqrt()),
        "ddim4": {
            "fd_to_teacher": frechet_distance(ddim4, endpoint),
            "mse_to_teacher": float(per_sample_mse(ddim4, endpoint).mean()),
        },
        "wall_seconds": time.perf_counter() - began,
        "cpu_seconds": time.process_time() - cpu,
    }


def _training_job(config: dict[str, Any], teacher_folder: str, threads: int) -> dict[str, Any]:
    """Train one model; measure its EMA weights at every kept checkpoint on the held-out noises."""
    from .sample import load_sampler
    from .train import train

    torch.set_num_threads(threads)
    began, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):  # train's one-line banner, from many processes at once
        train(config, progress=False)
    out, every = Path(config["train"]["out"]), config["train"]["keep_every"]
    noise = torch.from_numpy(np.load(Path(teacher_folder) / "noise.npy"))
    endpoint = np.load(Path(teacher_folder) / "teacher_endpoints.npy")
    steps, mse, fd = [], [], []
    for step in range(every, config["train"]["steps"] + 1, every):
        checkpoint = out / f"checkpoint-{step:08d}.pt"
        model, meta = load_sampler(checkpoint)
        with torch.no_grad():
            samples = model(noise, torch.tensor(meta["logsnr"]))[:, -1].clamp(-1, 1).numpy()
        steps.append(step)
        mse.append(per_sample_mse(samples, endpoint))
        fd.append(frechet_distance(samples, endpoint))
        checkpoint.unlink()  # measured; checkpoint.pt keeps the last one
    return {
        "steps": steps,
        "mse_per_noise": np.stack(mse),
        "fd_to_teacher": fd,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_on_time_points": config["train"]["time_points"],
        "logsnr": meta["logsnr"],
        "wall_seconds": time.perf_counter() - began,
        "cpu_seconds": time.process_time() - cpu,
    }


class _Jobs:
    """Runs jobs in `workers` processes (spawned: each its own torch), logging each one as it ends, and
    recording its wall and CPU time and the load average then."""

    def __init__(self, workers: int, log: Callable[[str], None]):
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        self.log, self.pending, self.records, self.done = log, {}, [], 0

    def submit(self, key, function, *args) -> None:
        self.pending[self.pool.submit(function, *args)] = key

    def finished(self):
        """(key, result) of the next job to end."""
        ended, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
        future: Future = next(iter(ended))
        key, result = self.pending.pop(future), future.result()
        self.done += 1
        self.records.append(
            {
                "job": list(key) if isinstance(key, tuple) else key,
                "wall_seconds": result["wall_seconds"],
                "cpu_seconds": result["cpu_seconds"],
                "loadavg_1_5_15_min_at_end": list(os.getloadavg()),
            }
        )
        name = " ".join(
            f"seed {k}" if isinstance(k, int) else str(k) for k in (key if isinstance(key, tuple) else (key,))
        )
        self.log(
            f"    done: {name} ({result['wall_seconds']:.0f} s, {result['cpu_seconds']:.0f} s CPU); "
            f"{len(self.pending)} job(s) waiting or running"
        )
        return key, result

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _run(
    settings: ClaimSettings,
    config: dict[str, Any],
    trainings: dict[tuple[str, str, int], dict[str, Any]],
    root: Path,
    workers: int,
    threads: int,
    log: Callable[[str], None],
) -> tuple[dict[str, dict], dict[tuple, dict], list[dict]]:
    """Every teacher job, then (as each teacher is ready) its training jobs, longest first."""
    jobs = _Jobs(workers, log)
    teachers, results = {}, {}
    order = {"dsno": 0, "kd_equal": 1, "kd": 2}
    try:
        for name in sorted(TEACHERS, key=lambda n: n != "kde"):  # the slower teacher first
            folder = str(root / name)
            jobs.submit(
                name,
                _teacher_job,
                name,
                settings.kde_width,
                config,
                settings,
                folder,
                threads,
            )
        while jobs.pending:
            key, result = jobs.finished()
            if isinstance(key, str):
                teachers[key] = result
                for job in sorted((k for k in trainings if k[0] == key), key=lambda k: (order[k[1]], k[2])):
                    jobs.submit(job, _training_job, trainings[job], str(root / key), threads)
            else:
                results[key] = result
    finally:
        jobs.close()
    return teachers, results, jobs.records


# ---------------------------------------------------------------------------------------------------
# Statistics


def _t_quantile(degrees_of_freedom: int) -> float:
    if degrees_of_freedom < 1:
        return 1.959963984540054  # one seed: the normal quantile, the noises' spread only
    from scipy.stats import t

    return float(t.ppf(0.975, degrees_of_freedom))


def _paired(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> dict[str, Any]:
    """The per-noise difference a - b ([seeds, noises] MSEs of the models `names`), per seed and over seeds."""
    difference = a - b
    seeds, noises = difference.shape
    per_seed = difference.mean(1)
    per_seed_se = difference.std(1, ddof=1) / math.sqrt(noises)
    seed_sd = float(per_seed.std(ddof=1)) if seeds > 1 else None
    noise_se = float(difference.mean(0).std(ddof=1) / math.sqrt(noises))
    se = math.sqrt((seed_sd**2 / seeds if seed_sd is not None else 0.0) + noise_se**2)
    mean, half_width = float(per_seed.mean()), _t_quantile(seeds - 1) * se
    resolved = abs(mean) > half_width
    reference = float(b.mean())
    return {
        "per_seed": [{"mean": float(m), "standard_error": float(s)} for m, s in zip(per_seed, per_seed_se)],
        "mean": mean,
        "seed_sd": seed_sd,
        "noise_standard_error": noise_se,
        "standard_error": se,
        "interval_95": [mean - half_width, mean + half_width],
        "resolvable": half_width,
        "relative": mean / reference,
        "relative_resolvable": half_width / reference,
        "resolved": resolved,
        "lower": (names[0] if mean < 0 else names[1]) if resolved else None,
    }


def _spread(values: list[float]) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64)
    return {
        "per_seed": [float(v) for v in array],
        "mean": float(array.mean()),
        "sd": float(array.std(ddof=1)) if len(array) > 1 else None,
        "min": float(array.min()),
        "max": float(array.max()),
    }


def _teacher_summary(
    teacher: str, info: dict, results: dict[tuple, dict], trainings: dict, seeds: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """claim.json's entry for one teacher, and each model's per-noise MSEs [seeds, points, noises]."""
    first = results[teacher, "dsno", 0]
    models, mse = {}, {}
    for model in MODELS:
        runs = [results[teacher, model, seed] for seed in range(seeds)]
        mse[model] = np.stack([run["mse_per_noise"] for run in runs])  # [seeds, points, noises]
        example = trainings[teacher, model, 0]
        models[model] = {
            "label": MODELS[model],
            "parameters": runs[0]["parameters"],
            "batch_size": example["train"]["batch_size"],
            "time_points": len(runs[0]["logsnr"]),
            "trained_on_time_points": runs[0]["trained_on_time_points"],
            "backbone_evaluations_per_step": _backbone_evaluations_per_step(example),
            "curve": [
                {
                    "step": step,
                    "mse_to_teacher": _spread([float(mse[model][s, point].mean()) for s in range(seeds)]),
                    "fd_to_teacher": _spread([run["fd_to_teacher"][point] for run in runs]),
                }
                for point, step in enumerate(first["steps"])
            ],
        }
    comparisons = {}
    for name, (a, b) in COMPARISONS.items():
        comparisons[name] = []
        for point, step in enumerate(first["steps"]):
            fd = [models[m]["curve"][point]["fd_to_teacher"]["per_seed"] for m in (a, b)]
            comparisons[name].append(
                {
                    "step": step,
                    **_paired(mse[a][:, point], mse[b][:, point], (a, b)),
                    "fd_difference": _spread([x - y for x, y in zip(*fd)]),
                }
            )
    return {**info, "models": models, "comparisons": comparisons}, mse


# ---------------------------------------------------------------------------------------------------
# Reporting: the tables and sentences (the README's claim section is these, from docs/demo/claim.json)


def _label(summary: dict[str, Any], teacher: str) -> str:
    if teacher == "kde":
        return f"kernel-density teacher (s = {summary['teachers'][teacher]['description']['width']:g})"
    return "Gaussian-mixture teacher"


def _mse(value: float) -> str:
    return f"{value:.5f}"


def _signed(value: float) -> str:
    return f"{value:+.5f}"


def claim_table(summary: dict[str, Any]) -> str:
    """The learning curves as a Markdown table: MSE to the teacher (mean over seeds, its range) and the paired
    DSNO - KD differences with their 95% intervals, per teacher and point of training."""
    lines = [
        "| teacher | step | DSNO MSE | KD MSE | KD equal-compute MSE | DSNO − KD (95% interval) "
        "| DSNO − KD equal-compute (95% interval) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for teacher, entry in summary["teachers"].items():
        label = "mixture" if teacher == "mixture" else f"kernel density, s = {entry['description']['width']:g}"
        for point, dsno in enumerate(entry["models"]["dsno"]["curve"]):
            cells = [label, f"{dsno['step']:,}"]
            for model in MODELS:
                spread = entry["models"][model]["curve"][point]["mse_to_teacher"]
                cells.append(f"{_mse(spread['mean'])} ({_mse(spread['min'])}–{_mse(spread['max'])})")
            for name in COMPARISONS:
                paired = entry["comparisons"][name][point]
                low, high = paired["interval_95"]
                mark = "**" if paired["resolved"] else ""
                cells.append(f"{mark}{_signed(paired['mean'])}{mark} ({_signed(low)} to {_signed(high)})")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fd_table(summary: dict[str, Any]) -> str:
    """Per teacher: its solver's accuracy, the FD floor, and DDIM-4's and each model's FD to the teacher after
    all steps (mean over seeds and their range)."""
    lines = [
        "| teacher | Heun-256 vs 2048 steps (MSE) | teacher vs teacher (FD floor) | DDIM-4 FD (MSE) "
        "| DSNO FD | KD FD | KD equal-compute FD |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for teacher, entry in summary["teachers"].items():
        ddim4 = entry["ddim4"]
        cells = [
            _label(summary, teacher),
            f"{entry['endpoint_mse_vs_fine_grid']:.1e}",
            f"{entry['fd_floor']:.3f}",
            f"{ddim4['fd_to_teacher']:.3f} ({_mse(ddim4['mse_to_teacher'])})",
        ]
        for model in MODELS:
            fd = entry["models"][model]["curve"][-1]["fd_to_teacher"]
            cells.append(f"{fd['mean']:.3f} ({fd['min']:.3f}–{fd['max']:.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_line(summary: dict[str, Any]) -> str:
    """How long the run took, on what, at what load, with its CPU time (what an idle machine's time is judged by)."""
    run = summary["run"]
    before, after = (run["machine"][when] for when in ("before", "after"))
    cpu = run["cpu_seconds"]
    return (
        f"The run took {run['wall_seconds']:,.0f} s ({run['wall_seconds'] / 60:.0f} minutes) on {before['cpu']} with "
        f"{before['cores']} cores, in {run['workers']} worker processes of {run['threads_per_worker']} thread, at "
        f"1-minute load averages of {before['loadavg_1_5_15_min'][0]:.1f} (start) and "
        f"{after['loadavg_1_5_15_min'][0]:.1f} (end); its {len(run['jobs'])} jobs used {cpu['jobs']:,.0f} s of CPU "
        f"time ({cpu['worker_processes'] + cpu['this_process']:,.0f} s with the processes' start-up), so "
        f"{run['workers']} workers on idle cores need at least {cpu['jobs'] / run['workers']:,.0f} s "
        f"({cpu['jobs'] / run['workers'] / 60:.0f} minutes)."
    )


def sweep_table(sweep: dict[str, Any]) -> str:
    """The width sweep (width-sweep.json) as a Markdown table, the chosen width in bold."""
    lines = [
        "| width s | Heun-256 vs 2048 steps (MSE) | FD floor | DDIM-4 FD (× floor) | DDIM-4 MSE | DSNO FD | KD FD "
        "| one-pass FD, lower (× floor) | rule met |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in sweep["rows"]:
        width = f"**{row['width']:g}**" if row["width"] == sweep["chosen"] else f"{row['width']:g}"
        fd = row["one_pass_fd_to_teacher"]
        lines.append(
            f"| {width} | {row['endpoint_mse_vs_fine_grid']:.1e} | {row['fd_floor']:.3f} | "
            f"{row['ddim4']['fd_to_teacher']:.3f} ({row['ddim4_over_floor']:.1f}) | "
            f"{_mse(row['ddim4']['mse_to_teacher'])} | {fd['dsno']:.3f} | {fd['kd']:.3f} | "
            f"{min(fd.values()):.3f} ({row['one_pass_over_floor']:.1f}) | {'yes' if row['qualifies'] else 'no'} |"
        )
    return "\n".join(lines)


def _verdict(paired: dict[str, Any], other: str) -> str:
    low, high = paired["interval_95"]
    measured = f"DSNO − {other} = {_signed(paired['mean'])} (95% interval {_signed(low)} to {_signed(high)})"
    if paired["resolved"]:
        better = "DSNO" if paired["lower"] == "dsno" else other
        change = f"{abs(100 * paired['relative']):.1f}% {'lower' if paired['mean'] < 0 else 'higher'}"
        return f"{measured}: {better} is closer to the teacher (DSNO's MSE {change} than {other}'s)"
    return (
        f"{measured}: no difference resolved; this run resolves differences above "
        f"{paired['resolvable']:.5f} ({100 * paired['relative_resolvable']:.1f}% of {other}'s MSE)"
    )


def claim_summary(summary: dict[str, Any]) -> list[str]:
    """One sentence per teacher: DSNO vs KD and vs equal-compute KD at the end of training, as measured."""
    settings = summary["settings"]
    lines = []
    for teacher, entry in summary["teachers"].items():
        final = {name: entry["comparisons"][name][-1] for name in COMPARISONS}
        mse = {model: entry["models"][model]["curve"][-1]["mse_to_teacher"]["mean"] for model in MODELS}
        lines.append(
            f"{_label(summary, teacher)}, {settings['train_steps']:,} steps, {settings['seeds']} seed(s): "
            f"MSE to the teacher DSNO {_mse(mse['dsno'])}, KD {_mse(mse['kd'])}, KD equal-compute "
            f"{_mse(mse['kd_equal'])}; {_verdict(final['dsno_minus_kd'], 'KD')}; "
            f"{_verdict(final['dsno_minus_kd_equal'], 'KD equal-compute')}."
        )
    return lines


# ---------------------------------------------------------------------------------------------------
# The figure


def _save_figure(path: Path, summary: dict[str, Any]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    colours = {"dsno": "tab:blue", "kd": "tab:red", "kd_equal": "tab:orange"}
    teachers = list(summary["teachers"])
    figure = Figure(figsize=(4.2 * len(teachers), 6.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(teachers), squeeze=False)
    for column, teacher in enumerate(teachers):
        entry = summary["teachers"][teacher]
        for row, key in enumerate(("mse_to_teacher", "fd_to_teacher")):
            axis = axes[row, column]
            ticks = set()
            for model, info in entry["models"].items():
                x = [point["step"] * info["backbone_evaluations_per_step"] / 1e3 for point in info["curve"]]
                ticks.update(x)
                values = [point[key] for point in info["curve"]]
                axis.plot(x, [v["mean"] for v in values], marker="o", color=colours[model], label=info["label"])
                axis.fill_between(
                    x, [v["min"] for v in values], [v["max"] for v in values], color=colours[model], alpha=0.2
                )
            if key == "fd_to_teacher":
                axis.axhline(entry["fd_floor"], color="black", linestyle="--", linewidth=1, label="teacher vs teacher")
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_xticks(sorted(ticks), [f"{tick:g}" for tick in sorted(ticks)], fontsize=7, rotation=45)
            axis.xaxis.set_minor_formatter(NullFormatter())
            axis.grid(True, which="both", alpha=0.3)
            axis.set_title(f"{_label(summary, teacher)}", fontsize=9)
            axis.set_ylabel("MSE to teacher" if row == 0 else "FD to teacher", fontsize=9)
            if row == 1:
                axis.set_xlabel("backbone evaluations in training (thousands of images)", fontsize=8)
            if column == 0:
                axis.legend(fontsize=6)
    figure.suptitle(
        "one pass vs the teacher's endpoint, held-out noises; "
        f"mean and range over {summary['settings']['seeds']} seed(s)",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path)


# ---------------------------------------------------------------------------------------------------
# Entry points


def _default_workers(threads: int, jobs: int) -> int:
    return max(1, min(jobs, (os.cpu_count() or 1) // max(1, threads)))


def _resources() -> dict[str, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "this_process": own.ru_utime + own.ru_stime,
        "worker_processes": children.ru_utime + children.ru_stime,
    }


def run_claim(
    out: str | Path,
    settings: ClaimSettings = CLAIM,
    *,
    device: str = "cpu",
    train_steps: int | None = None,
    threads: int = 1,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the whole experiment into `out`; returns what claim.json holds."""
    started, machine_before, cpu_before = time.perf_counter(), _machine(), _resources()
    out = Path(out)
    config = _base_config(settings, device, train_steps)  # validates before anything is written
    resolve_device(device)
    root = out / "claim"
    trainings = _training_configs(config, settings, root)
    _require_optional_packages()
    workers = workers or _default_workers(threads, len(trainings))
    steps, batch = config["train"]["steps"], config["train"]["batch_size"]
    log(
        f"dsno demo --claim: 2 teachers x {len(MODELS)} models x {settings.seeds} seed(s), {steps} steps of {batch}, "
        f"in {workers} worker process(es) of {threads} thread(s)"
    )
    out.mkdir(parents=True, exist_ok=True)
    teacher_results, results, jobs = _run(settings, config, trainings, root, workers, threads, log)

    teachers, per_noise = {}, {}
    for name in TEACHERS:
        keys = (
            "description",
            "solver",
            "endpoint_mse_vs_fine_grid",
            "endpoint_max_error_vs_fine_grid",
            "fd_floor",
            "ddim4",
        )
        info = {key: teacher_results[name][key] for key in keys}
        teachers[name], mse = _teacher_summary(name, info, results, trainings, settings.seeds)
        per_noise.update({f"{name}/{model}": values for model, values in mse.items()})
    summary = {
        "settings": {
            **dataclasses.asdict(settings),
            "preset": PRESET,
            "train_steps": steps,
            "batch_size": batch,
            "lr": config["train"]["lr"],
            "teacher_steps": config["schedule"]["num_steps"],
            "teacher_solver": TEACHER_SOLVER,
            "train_samples": config["traj"]["num_samples"],
            "device": device,
            "kd_overrides": KD_OVERRIDES,
            "equal_compute_batch_factor": MODELS_BATCH_FACTOR,
            "width_rule": WIDTH_RULE,
        },
        "teachers": teachers,
        "run": {
            "wall_seconds": time.perf_counter() - started,
            "cpu_seconds": {
                **{k: v - cpu_before[k] for k, v in _resources().items()},
                "jobs": sum(job["cpu_seconds"] for job in jobs),
            },
            "workers": workers,
            "threads_per_worker": threads,
            "jobs": jobs,
            "machine": {"before": machine_before, "after": _machine()},
        },
    }
    summary["summary"] = claim_summary(summary)
    np.savez(out / "claim-per-noise.npz", **per_noise)
    _save_figure(out / "claim.png", summary)
    _write_json(out / "claim.json", summary)
    log("")
    log(claim_table(summary))
    log("")
    log(fd_table(summary))
    log("")
    for line in summary["summary"]:
        log(line)
    log(f"{run_line(summary)} Files in {out}")
    return summary


def run_width_sweep(
    out: str | Path,
    settings: ClaimSettings = CLAIM,
    *,
    widths: tuple[float, ...] = WIDTH_CANDIDATES,
    threads: int = 1,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """For each candidate width: the kernel-density teacher's accuracy, floor and DDIM-4, and DSNO and KD
    trained with seed 0 exactly as the claim trains them; then WIDTH_RULE's choice. Writes width-sweep.json."""
    started, machine_before, cpu_before = time.perf_counter(), _machine(), _resources()
    out = Path(out)
    config = _base_config(settings, "cpu", None)
    one_seed = dataclasses.replace(settings, seeds=1)
    trainings = {
        (width, model): _training_configs(config, one_seed, out / f"s{width:g}")["kde", model, 0]
        for width in widths
        for model in ("dsno", "kd")
    }
    jobs = _Jobs(workers or _default_workers(threads, len(trainings)), log)
    teachers, trained = {}, {}
    try:
        for width in widths:
            folder = str(out / f"s{width:g}" / "kde")
            jobs.submit(width, _teacher_job, "kde", width, config, settings, folder, threads)
        while jobs.pending:
            key, result = jobs.finished()
            if isinstance(key, tuple):
                trained[key] = result
                continue
            teachers[key] = result
            for model in ("dsno", "kd"):
                jobs.submit((key, model), _training_job, trainings[key, model], str(out / f"s{key:g}" / "kde"), threads)
    finally:
        jobs.close()
    rows = []
    for width in widths:
        teacher, floor = teachers[width], teachers[width]["fd_floor"]
        one_pass = {model: trained[width, model]["fd_to_teacher"][-1] for model in ("dsno", "kd")}
        row = {
            "width": width,
            "endpoint_mse_vs_fine_grid": teacher["endpoint_mse_vs_fine_grid"],
            "fd_floor": floor,
            "ddim4": teacher["ddim4"],
            "one_pass_fd_to_teacher": one_pass,
            "one_pass_mse_to_teacher": {m: float(trained[width, m]["mse_per_noise"][-1].mean()) for m in one_pass},
            "ddim4_over_floor": teacher["ddim4"]["fd_to_teacher"] / floor,
            "one_pass_over_floor": min(one_pass.values()) / floor,
        }
        row["qualifies"] = row["ddim4_over_floor"] >= 5 and row["one_pass_over_floor"] >= 2
        rows.append(row)
        log(f"width {width:g}: {json.dumps({k: v for k, v in row.items() if k != 'width'})}")
    qualifying = [row["width"] for row in rows if row["qualifies"]]
    summary = {
        "rule": WIDTH_RULE,
        "candidates": list(widths),
        "chosen": max(qualifying) if qualifying else min(widths),
        "rows": rows,
        "settings": {  # each row has its own width; settings.kde_width is not used
            **{key: value for key, value in dataclasses.asdict(settings).items() if key != "kde_width"},
            "train_steps": config["train"]["steps"],
        },
        "run": {
            "wall_seconds": time.perf_counter() - started,
            "cpu_seconds": {
                **{k: v - cpu_before[k] for k, v in _resources().items()},
                "jobs": sum(job["cpu_seconds"] for job in jobs.records),
            },
            "threads_per_worker": threads,
            "jobs": jobs.records,
            "machine": {"before": machine_before, "after": _machine()},
        },
    }
    _write_json(out / "width-sweep.json", summary)
    log(f"chosen width: {summary['chosen']}")
    return summary


def main(args: argparse.Namespace) -> int:
    """`dsno demo --claim` (called by dsno.demo.main): every setting checked before any work or output."""
    from .demo import MissingDependency

    if args.ablation:
        raise ValueError("--claim and --ablation are two different runs: choose one")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be positive, got {args.seeds}")
    if args.train_steps is not None and args.train_steps < 1:
        raise ValueError(f"--train-steps must be positive, got {args.train_steps}")
    settings = dataclasses.replace(QUICK_CLAIM if args.quick else CLAIM, seeds=args.seeds)
    _base_config(settings, args.device, args.train_steps)
    check_output_dir(args.out, "--out")
    resolve_device(args.device)
    try:
        summary = run_claim(args.out, settings, device=args.device, train_steps=args.train_steps, threads=args.threads)
    except MissingDependency as error:
        raise ValueError(str(error)) from None
    finite = all(
        math.isfinite(point["mse_to_teacher"]["mean"])
        for teacher in summary["teachers"].values()
        for model in teacher["models"].values()
        for point in model["curve"]
    )
    return 0 if finite else 1


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(description="the kernel-density teacher's width sweep (WIDTH_RULE)")
    parser.add_argument("command", choices=["sweep"])
    parser.add_argument("--out", default="dsno-claim-sweep")
    parser.add_argument("--threads", type=int, default=1)
    sweep_args = parser.parse_args()
    torch.set_num_threads(sweep_args.threads)
    run_width_sweep(sweep_args.out, threads=sweep_args.threads)
    sys.exit(0)
