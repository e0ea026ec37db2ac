"""Real data for the demo: scikit-learn's handwritten digits, and the analytic teacher fitted to them.

The data are the 1,797 8x8 grey images shipped inside scikit-learn (`sklearn.datasets.load_digits`,
integer intensities 0..16), mapped to [-1, 1] by x / 8 - 1 and shaped [N, 1, 8, 8].

The teacher is a Gaussian mixture with one full-covariance component per digit class: weight = the
class frequency, mean = the class mean, covariance = the class's sample covariance S shrunk towards
its diagonal, plus a small floor on the variance,

    Sigma = (1 - shrinkage) S + shrinkage diag(S) + variance_floor I,

so that every component is well conditioned (about 180 images per class estimate a 64 x 64 matrix,
and border pixels that are always -1 have zero variance). The teacher's posterior mean, and so its
probability-flow ODE, is then exact (`dsno.teachers.GaussianMixtureTeacher`): no network is trained.

scikit-learn is an optional dependency (`pip install scikit-learn`, or the package's [dev] extra); it is
imported only when the digits are loaded.
"""

from __future__ import annotations

import numpy as np
import torch

from .teachers import GaussianMixtureTeacher

__all__ = ["DIGIT_SHAPE", "load_digits", "fit_gaussian_mixture"]

DIGIT_SHAPE = (1, 8, 8)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 1, 8, 8] float32 in [-1, 1], labels [1797] int64) from scikit-learn."""
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as error:
        raise ImportError(
            "the digits demo needs scikit-learn, which ships the digits data: pip install scikit-learn"
        ) from error
    digits = sklearn_load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0).reshape(-1, *DIGIT_SHAPE)
    return images, digits.target.astype(np.int64)


def fit_gaussian_mixture(
    images: np.ndarray, labels: np.ndarray, *, shrinkage: float = 0.1, variance_floor: float = 1e-3
) -> GaussianMixtureTeacher:
    """One full-covariance Gaussian per class of `labels`, fitted in float64 (see the module docstring)."""
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    if variance_floor <= 0.0:
        raise ValueError(f"variance_floor must be positive, got {variance_floor}")
    flat = torch.as_tensor(images, dtype=torch.float64).reshape(len(images), -1)
    labels = torch.as_tensor(labels)
    classes = torch.unique(labels)
    identity = torch.eye(flat.shape[1], dtype=torch.float64)
    weights, means, covariances = [], [], []
    for label in classes:
        members = flat[labels == label]
        if len(members) < 2:
            raise ValueError(f"class {int(label)} has {len(members)} image(s); a covariance needs at least 2")
        sample_covariance = torch.cov(members.T)
        covariances.append(
            (1.0 - shrinkage) * sample_covariance
            + shrinkage * torch.diag(sample_covariance.diagonal())
            + variance_floor * identity
        )
        means.append(members.mean(0))
        weights.append(float(len(members)))
    return GaussianMixtureTeacher(
        torch.tensor(weights), torch.stack(means), torch.stack(covariances), shape=images.shape[1:]
    )
