"""Sample-quality metrics and timing: Frechet distance in pixel space, per-noise MSE, wall time.

Frechet distance between the Gaussians fitted to two sample sets (the FID formula, here on raw pixels
rather than Inception features):

    FD = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))

S_1 S_2 is not symmetric, and a general matrix square root of it (scipy.linalg.sqrtm, which FID code
uses) can return complex values or lose accuracy when the covariances are near singular. Here
tr((S_1 S_2)^(1/2)) is computed as tr((R S_2 R)^(1/2)) with R = S_1^(1/2): R S_2 R is similar to
S_1 S_2 (R S_2 R = R (S_1 S_2) R^-1 where R is invertible, and by continuity otherwise), so it has the
same eigenvalues, and it is symmetric positive semi-definite, so `eigvalsh` gives them accurately.
Rounding can leave eigenvalues a hair below zero; those are clamped to zero before the square root.
Everything is float64.

`dsno eval` applies these to .npy sample files (see `add_arguments`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_flat_float64",
    "gaussian_statistics",
    "frechet_distance_from_statistics",
    "frechet_distance",
    "per_sample_mse",
    "time_call",
    "add_arguments",
    "main",
]


def as_flat_float64(samples: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[N, ...] samples as a float64 tensor [N, D] (one row per sample)."""
    samples = torch.as_tensor(np.asarray(samples) if not torch.is_tensor(samples) else samples)
    if samples.ndim < 2:
        raise ValueError(
            f"samples must be [N, ...] with at least one value per sample, got shape {tuple(samples.shape)}"
        )
    return samples.detach().to("cpu", torch.float64).reshape(samples.shape[0], -1)


def gaussian_statistics(samples: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], unbiased covariance [D, D]) of samples [N, ...], N >= 2, in float64."""
    flat = as_flat_float64(samples)
    if flat.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {flat.shape[0]}")
    return flat.mean(0), torch.cov(flat.T).reshape(flat.shape[1], flat.shape[1])


def _symmetric_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Principal square root of a symmetric PSD matrix via eigh (negative rounding noise clamped to 0)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp_min(0.0).sqrt()) @ eigenvectors.T


def frechet_distance_from_statistics(mean_1, covariance_1, mean_2, covariance_2) -> float:
    """Frechet distance between N(mean_1, covariance_1) and N(mean_2, covariance_2) (covariances PSD)."""
    mean_1, covariance_1, mean_2, covariance_2 = (
        (v if torch.is_tensor(v) else torch.as_tensor(np.asarray(v))).to("cpu", torch.float64)
        for v in (mean_1, covariance_1, mean_2, covariance_2)
    )
    dim = mean_1.shape[0]
    if mean_1.shape != (dim,) or mean_2.shape != (dim,):
        raise ValueError(f"means must both be [D], got {tuple(mean_1.shape)} and {tuple(mean_2.shape)}")
    if covariance_1.shape != (dim, dim) or covariance_2.shape != (dim, dim):
        raise ValueError(
            f"covariances must both be [{dim}, {dim}], got {tuple(covariance_1.shape)} and {tuple(covariance_2.shape)}"
        )
    covariance_1 = 0.5 * (covariance_1 + covariance_1.T)
    covariance_2 = 0.5 * (covariance_2 + covariance_2.T)
    root_1 = _symmetric_sqrt(covariance_1)
    middle = root_1 @ covariance_2 @ root_1
    cross_trace = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp_min(0.0).sqrt().sum()
    distance = (mean_1 - mean_2).square().sum() + covariance_1.trace() + covariance_2.trace() - 2.0 * cross_trace
    return float(distance.clamp_min(0.0))


def frechet_distance(samples_1: np.ndarray | torch.Tensor, samples_2: np.ndarray | torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two sample sets [N1, ...] and [N2, ...] (same D)."""
    statistics_1, statistics_2 = gaussian_statistics(samples_1), gaussian_statistics(samples_2)
    if statistics_1[0].shape != statistics_2[0].shape:
        raise ValueError(
            f"samples hold {statistics_1[0].shape[0]} and {statistics_2[0].shape[0]} values each; they must match"
        )
    return frechet_distance_from_statistics(*statistics_1, *statistics_2)


def per_sample_mse(samples: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> np.ndarray:
    """[N] mean squared error of each sample to the reference sample of the same index (same noise)."""
    samples, reference = as_flat_float64(samples), as_flat_float64(reference)
    if samples.shape != reference.shape:
        raise ValueError(
            f"paired samples must have the same shape, got {tuple(samples.shape)} and {tuple(reference.shape)}"
        )
    return (samples - reference).square().mean(1).numpy()


def time_call(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float]:
    """(fn()'s result, the least wall time in seconds over `repeats` calls).

    The minimum is the run least disturbed by other work on the machine; the result is the last call's."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    best = float("inf")
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return result, best


# --------------------------------------------------------------------------------------------------
# dsno eval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Compare sample files with a reference file: Frechet distance (FD) in pixel space, "
        "and the mean per-sample MSE when the files pair up (same N and shape, i.e. the same "
        "noises in the same order). Accepts .npy files of N samples, [N, ...] with N >= 2 "
        "(e.g. [N, C, H, W] images, or `dsno gen-traj`'s shard-*.noise.npy), and [N, M, C, H, W] "
        "trajectories (`dsno sample`'s trajectory.npy, a shard's .traj.npy), which are compared "
        "by their last time point; a folder made by `dsno gen-traj` stands for the last time point of all "
        "its trajectories (the teacher's samples). The FD fits a D-dimensional Gaussian (D values per "
        "sample): it needs N > D samples to be meaningful, and more (10x) to be stable; fewer "
        "gives a warning."
    )
    parser.add_argument("samples", nargs="+", help="sample files to evaluate (.npy, or a `dsno gen-traj` folder)")
    parser.add_argument(
        "--reference", required=True, help="reference samples (.npy, or a `dsno gen-traj` folder: its last time point)"
    )
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write the results as JSON (atomically)")


def _load_samples(path: str) -> np.ndarray:
    """[N, ...] samples from a .npy file (a trajectory's last time point) or a trajectory dataset folder."""
    if Path(path).is_dir():  # the teacher's samples
        from .trajectories import TrajectoryDataset

        array = TrajectoryDataset(path).final_states()
    else:
        array = _read_npy(path)
    if array.shape[0] < 2:
        raise ValueError(f"{path}: {array.shape[0]} sample; a Frechet distance needs at least 2")
    return array


def _read_npy(path: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(
            f"{path}: not a readable .npy array ({' '.join(str(error).split())}); give .npy files of samples "
            f"[N, ...] or a `dsno gen-traj` folder"
        ) from None
    if not isinstance(array, np.ndarray) or array.ndim < 2 or array.dtype.kind not in "fiu":
        raise ValueError(
            f"{path}: holds {getattr(array, 'dtype', type(array))} of shape "
            f"{getattr(array, 'shape', '?')}; expected numbers of shape [N, ...] (N samples)"
        )
    return array[:, -1] if array.ndim == 5 else array


def _warn_if_few(path: str, samples: np.ndarray) -> None:
    count, dim = samples.shape[0], int(np.prod(samples.shape[1:]))
    if count <= dim:
        print(
            f"dsno eval: warning: {path} has N={count} samples of D={dim} values: the covariance of fewer "
            f"than D+1 samples is singular, so its FD is mostly estimation bias; use N > D (10x D for a "
            f"stable value)",
            file=sys.stderr,
        )


def main(args: argparse.Namespace) -> int:
    if args.json_out:
        from .checkpoint import check_output_dir

        check_output_dir(Path(args.json_out).parent, "--json")
    reference = _load_samples(args.reference)
    _warn_if_few(args.reference, reference)
    results: dict[str, dict[str, Any]] = {}
    for path in args.samples:
        samples = _load_samples(path)
        if samples.shape[1:] != reference.shape[1:]:
            raise ValueError(
                f"{path}: samples of shape {list(samples.shape[1:])}, the reference's are "
                f"{list(reference.shape[1:])}; compare files of the same data"
            )
        _warn_if_few(path, samples)
        entry: dict[str, Any] = {
            "num_samples": int(samples.shape[0]),
            "frechet_distance": frechet_distance(samples, reference),
        }
        if samples.shape == reference.shape:
            entry["mse"] = float(per_sample_mse(samples, reference).mean())
        results[path] = entry
    width = max(len(path) for path in results)
    print(f"{'samples':<{width}}  {'N':>6}  {'FD to reference':>15}  {'paired MSE':>10}")
    for path, entry in results.items():
        mse = f"{entry['mse']:.4g}" if "mse" in entry else "-"
        print(f"{path:<{width}}  {entry['num_samples']:>6}  {entry['frechet_distance']:>15.4g}  {mse:>10}")
    if args.json_out:
        from .checkpoint import atomic_write_text, remove_stale_temporaries

        json_out = Path(args.json_out)
        remove_stale_temporaries(json_out.parent, f".{json_out.name}.*.tmp")  # a killed earlier run's
        atomic_write_text(json_out, json.dumps({"reference": args.reference, "results": results}, indent=1))
    return 0
