"""Frechet distance (dsno/metrics.py): zero for identical Gaussians, the closed forms, symmetry, and
the `dsno eval` command."""

import json

import numpy as np
import pytest
import torch

from dsno import cli
from dsno.metrics import (
    frechet_distance,
    frechet_distance_from_statistics,
    gaussian_statistics,
    per_sample_mse,
    time_call,
)


def random_covariance(dim, rank, seed):
    """A random PSD matrix of the given rank (rank < dim: singular, as pixel covariances often are)."""
    factor = torch.randn(dim, rank, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return factor @ factor.T / rank


@pytest.mark.parametrize("rank", [64, 20])
def test_distance_of_a_gaussian_to_itself_is_zero(rank):
    mean = torch.linspace(-1, 1, 64, dtype=torch.float64)
    covariance = random_covariance(64, rank, seed=rank)
    distance = frechet_distance_from_statistics(mean, covariance, mean, covariance)
    assert abs(distance) < 1e-9 * float(covariance.trace())


def test_diagonal_covariances_closed_form():
    # commuting covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    generator = torch.Generator().manual_seed(0)
    a, b, mu1, mu2 = (torch.randn(16, dtype=torch.float64, generator=generator) for _ in range(4))
    a, b = a.square(), b.square()
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    distance = frechet_distance_from_statistics(mu1, torch.diag(a), mu2, torch.diag(b))
    assert distance == pytest.approx(expected, rel=1e-12)


def test_non_commuting_closed_form():
    # S2 = T S1 T with T symmetric PD: S1^(1/2) S2 S1^(1/2) = (S1^(1/2) T S1^(1/2))^2, so
    # tr((S1 S2)^(1/2)) = tr(T S1) and FD = tr(S1) + tr(T S1 T) - 2 tr(T S1) for equal means
    s1 = random_covariance(32, 32, seed=1)
    t = random_covariance(32, 32, seed=2) + 0.1 * torch.eye(32, dtype=torch.float64)
    s2 = t @ s1 @ t
    assert not torch.allclose(s1 @ s2, s2 @ s1)
    expected = float(s1.trace() + s2.trace() - 2 * (t @ s1).trace())
    mean = torch.zeros(32, dtype=torch.float64)
    assert frechet_distance_from_statistics(mean, s1, mean, s2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("rank", [64, 10])
def test_symmetric_in_its_two_arguments(rank):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(300, 64, dtype=torch.float64, generator=generator) @ random_covariance(64, rank, seed=4)
    y = 0.5 * torch.randn(200, 64, dtype=torch.float64, generator=generator) + 0.2
    forward, backward = frechet_distance(x, y), frechet_distance(y, x)
    assert forward > 1.0
    # A covariance of rank < D has D - rank eigenvalues that are rounding noise, of size eps * |S|;
    # their square roots, up to sqrt(eps * |S1| |S2|) each, are what the two orders can differ by.
    norms = float(torch.linalg.matrix_norm(torch.cov(x.T), 2) * torch.linalg.matrix_norm(torch.cov(y.T), 2))
    tolerance = 1e-10 * forward if rank == 64 else 64 * (torch.finfo(torch.float64).eps * norms) ** 0.5
    assert abs(forward - backward) <= tolerance


def test_sample_estimate_approaches_the_exact_distance():
    generator = torch.Generator().manual_seed(5)
    s1, s2 = random_covariance(8, 8, seed=6), random_covariance(8, 8, seed=7)
    mu1, mu2 = torch.zeros(8, dtype=torch.float64), torch.full((8,), 0.3, dtype=torch.float64)
    exact = frechet_distance_from_statistics(mu1, s1, mu2, s2)
    n = 200_000
    x = mu1 + torch.randn(n, 8, dtype=torch.float64, generator=generator) @ torch.linalg.cholesky(s1).T
    y = mu2 + torch.randn(n, 8, dtype=torch.float64, generator=generator) @ torch.linalg.cholesky(s2).T
    assert frechet_distance(x.numpy(), y.numpy().reshape(n, 2, 2, 2)) == pytest.approx(exact, rel=0.02)


def test_statistics_and_validation():
    samples = np.arange(24, dtype=np.float32).reshape(3, 2, 4) ** 2
    mean, covariance = gaussian_statistics(samples)
    flat = samples.reshape(3, 8).astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), flat.mean(0))
    np.testing.assert_allclose(covariance.numpy(), np.cov(flat.T))
    with pytest.raises(ValueError, match="at least 2 samples"):
        gaussian_statistics(samples[:1])
    with pytest.raises(ValueError, match="must match"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 5)))


def test_per_sample_mse_pairs_rows():
    a = np.zeros((3, 1, 2, 2))
    b = np.stack([np.full((1, 2, 2), v) for v in (0.0, 1.0, 2.0)])
    np.testing.assert_allclose(per_sample_mse(a, b), [0.0, 1.0, 4.0])
    with pytest.raises(ValueError, match="same shape"):
        per_sample_mse(a, b[:2])


def test_time_call_returns_the_result_and_the_least_time():
    calls = []
    result, seconds = time_call(lambda: calls.append(1) or len(calls), repeats=3)
    assert result == 3 and len(calls) == 3 and 0.0 <= seconds < 1.0


def test_eval_command(tmp_path, capsys):
    generator = np.random.default_rng(0)
    reference = generator.standard_normal((64, 1, 2, 2)).astype(np.float32)
    shifted = reference + 0.5
    trajectory = np.stack([np.zeros_like(reference), reference], axis=1)  # [N, M, C, H, W]: last point is compared
    for name, array in (("reference", reference), ("shifted", shifted), ("trajectory", trajectory)):
        np.save(tmp_path / f"{name}.npy", array)
    out = tmp_path / "eval.json"
    assert (
        cli.main(
            [
                "eval",
                str(tmp_path / "shifted.npy"),
                str(tmp_path / "trajectory.npy"),
                "--reference",
                str(tmp_path / "reference.npy"),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())["results"]
    shifted_result = results[str(tmp_path / "shifted.npy")]
    trajectory_result = results[str(tmp_path / "trajectory.npy")]
    assert shifted_result["mse"] == pytest.approx(0.25, rel=1e-6)
    assert shifted_result["frechet_distance"] == pytest.approx(4 * 0.25, rel=1e-6)
    assert trajectory_result["mse"] == 0.0 and abs(trajectory_result["frechet_distance"]) < 1e-9
    assert "FD to reference" in capsys.readouterr().out
