"""Teachers (x0-predictors) and the deterministic probability-flow ODE solvers that turn them into
trajectories.

Teacher protocol: `teacher.predict_x0(x_t [N, *shape], logsnr [N], y=None) -> x0_hat [N, *shape]`, the
posterior mean E[x0 | x_t] under the variance-preserving process of `dsno.schedule`
(x_t = alpha x0 + sigma eps, alpha^2 = sigmoid(lambda)). logsnr is per sample.

Solvers. Write alpha = cos(theta), sigma = sin(theta), theta = atan(exp(-lambda / 2)); the cosine
schedule is linear in theta (theta = a t + b), so DSNO's uniform-t grid is uniform in theta. The
probability-flow ODE in theta is the v-prediction:

    dx / dtheta = v_hat(x, theta) = (cos(theta) x - x0_hat) / sin(theta),   x0_hat = D(x, lambda)

and over a grid lambda_0 < ... < lambda_N (step s -> t):

    DDIM (first order, exact when x0_hat is constant over the step):
        eps_s = (x_s - alpha_s x0_s) / sigma_s,   x_t = alpha_t x0_s + sigma_t eps_s
    Heun (second order, the trapezoid rule in theta):
        x' = x_s + (theta_t - theta_s) v_s,   x_t = x_s + (theta_t - theta_s) (v_s + v_hat(x', theta_t)) / 2

Every quantity above is O(1) from lambda = -20 to 20 and nothing is divided by alpha (4.5e-5 at
lambda = -20), which is what lets the solvers run in float32 (within 1e-5 of float64 in the tests).
Heun in EDM's variable rho = sigma / alpha would take a first step from rho = 22026 to about 2N/pi on this
grid and is badly wrong on coarse grids; in theta it is not.
The state recorded at grid index i is x_i itself ("xt") or the teacher's prediction D(x_i, lambda_i)
("x0", what DSNO trains on: its CIFAR-10 data are the DDIM x0-predictions at the chosen steps).

GaussianMixtureTeacher: data x0 ~ sum_k w_k N(mu_k, Sigma_k). Then x_t is a mixture of
N(alpha mu_k, S_k) with S_k = alpha^2 Sigma_k + sigma^2 I, and the posterior mean is exact:

    E[x0 | x_t] = sum_k r_k(x_t) (mu_k + alpha Sigma_k S_k^{-1} (x_t - alpha mu_k)),
    r_k proportional to w_k N(x_t; alpha mu_k, S_k),

computed in each component's eigenbasis Sigma_k = U_k diag(l_k) U_k^T, where S_k is diagonal. For a
single Gaussian the ODE itself has a closed form: in that eigenbasis (x - alpha mu) / sqrt(alpha^2 l + sigma^2)
is constant along the flow (`GaussianMixtureTeacher.exact_flow`).

KernelDensityTeacher: the empirical distribution of n points d_i smoothed by an isotropic Gaussian of
width s, x0 ~ (1/n) sum_i N(d_i, s^2 I). Then x_t | i ~ N(alpha d_i, v I) with v = alpha^2 s^2 + sigma^2,
and the posterior mean is exact:

    E[x0 | x_t] = (sigma^2 / v) sum_i r_i(x_t) d_i + (alpha s^2 / v) x_t,
    r = softmax_i((alpha x_t . d_i - alpha^2 |d_i|^2 / 2) / v)

(the |x_t|^2 of |x_t - alpha d_i|^2 is the same for every i and drops out of the softmax). It is computed
in float64, in batches of rows so that the [rows, n] logits stay small. Its flow map has one basin per
point (for s well below the distances between points): a generator must carve them all out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from .schedule import alpha_sigma

__all__ = [
    "Teacher",
    "GaussianMixtureTeacher",
    "KernelDensityTeacher",
    "NetworkTeacher",
    "as_teacher",
    "build_teacher",
    "SOLVERS",
    "solve",
]

SOLVERS = ("ddim", "heun")
PREDICTIONS = ("x0", "eps", "v")


@runtime_checkable
class Teacher(Protocol):
    def predict_x0(self, x_t: torch.Tensor, logsnr: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor: ...


def _per_sample(logsnr: torch.Tensor | float, n: int, like: torch.Tensor) -> torch.Tensor:
    logsnr = torch.as_tensor(logsnr, dtype=like.dtype, device=like.device)
    if logsnr.ndim == 0:
        logsnr = logsnr.expand(n)
    if logsnr.shape != (n,):
        raise ValueError(f"logsnr must be a scalar or of shape [{n}], got {tuple(logsnr.shape)}")
    return logsnr


class GaussianMixtureTeacher:
    """Exact posterior mean of a Gaussian mixture with full covariances, over samples of `shape`."""

    def __init__(
        self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor, shape: Sequence[int] | None = None
    ):
        weights, means, covariances = (torch.as_tensor(v, dtype=torch.float64) for v in (weights, means, covariances))
        if means.ndim != 2:
            raise ValueError(f"means must be [K, D], got {tuple(means.shape)}")
        num_components, dim = means.shape
        if weights.shape != (num_components,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights must be [K={num_components}] non-negative with a positive sum")
        if covariances.shape != (num_components, dim, dim):
            raise ValueError(f"covariances must be [K={num_components}, D={dim}, D], got {tuple(covariances.shape)}")
        if not torch.allclose(covariances, covariances.transpose(1, 2), atol=1e-10):
            raise ValueError("covariances must be symmetric")
        self.shape = tuple(shape) if shape is not None else (dim,)
        if math.prod(self.shape) != dim:
            raise ValueError(f"shape {self.shape} does not hold D={dim} values")
        eigenvalues, eigenvectors = torch.linalg.eigh(covariances)
        if float(eigenvalues.min()) < -1e-8 * max(1.0, float(eigenvalues.max())):
            raise ValueError("covariances must be positive semi-definite")
        self.weights = weights / weights.sum()
        self.means = means
        self.covariances = covariances
        self.eigenvalues = eigenvalues.clamp_min(0.0)  # [K, D]
        self.eigenvectors = eigenvectors  # [K, D, D], columns are eigenvectors
        self.rotated_means = torch.matmul(means[:, None, :], eigenvectors)[:, 0]  # [K, D]

    def to(self, device: str | torch.device) -> GaussianMixtureTeacher:
        """Move the mixture's tensors (kept in float64) to device, in place; returns self."""
        for name in ("weights", "means", "covariances", "eigenvalues", "eigenvectors", "rotated_means"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def random(
        cls,
        shape: Sequence[int],
        num_components: int = 4,
        *,
        seed: int = 0,
        mean_scale: float = 0.6,
        cov_rank: int = 4,
        cov_scale: float = 0.15,
        noise_scale: float = 0.02,
    ) -> GaussianMixtureTeacher:
        """A reproducible random mixture in [-1, 1]-ish data range: means 0.6 tanh(N(0, 1)), covariances
        low rank (cov_rank directions of scale cov_scale) plus noise_scale^2 I."""
        generator = torch.Generator().manual_seed(seed)
        dim = math.prod(shape)
        means = mean_scale * torch.tanh(torch.randn(num_components, dim, generator=generator, dtype=torch.float64))
        factors = torch.randn(num_components, dim, cov_rank, generator=generator, dtype=torch.float64)
        factors *= cov_scale / math.sqrt(cov_rank)
        covariances = factors @ factors.transpose(1, 2) + noise_scale**2 * torch.eye(dim, dtype=torch.float64)
        weights = torch.rand(num_components, generator=generator, dtype=torch.float64) + 0.5
        return cls(weights, means, covariances, shape)

    @classmethod
    def load(cls, path: str, shape: Sequence[int] | None = None) -> GaussianMixtureTeacher:
        """From an .npz with arrays `weights` [K], `means` [K, D], `covariances` [K, D, D] (and optional `shape`)."""
        import numpy as np

        with np.load(path) as data:
            if shape is None and "shape" in data:
                shape = [int(v) for v in data["shape"]]
            return cls(data["weights"], data["means"], data["covariances"], shape)

    def save(self, path: str) -> None:
        import numpy as np

        np.savez(
            path,
            weights=self.weights.numpy(),
            means=self.means.numpy(),
            covariances=self.covariances.numpy(),
            shape=np.asarray(self.shape),
        )

    def _marginal(self, x_t: torch.Tensor, logsnr: torch.Tensor):
        """Rotated residuals z [N, K, D], per-direction variances of x_t [N, K, D] and alpha [N, 1, 1]."""
        n = x_t.shape[0]
        x = x_t.reshape(n, self.dim).to(torch.float64)
        alpha, sigma = alpha_sigma(_per_sample(logsnr, n, x))
        alpha, sigma = alpha[:, None, None], sigma[:, None, None]
        rotated = torch.matmul(x, self.eigenvectors).transpose(0, 1)  # [N, K, D]
        z = rotated - alpha * self.rotated_means
        variance = alpha**2 * self.eigenvalues + sigma**2
        return z, variance, alpha

    def predict_x0(self, x_t: torch.Tensor, logsnr: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        z, variance, alpha = self._marginal(x_t, logsnr)
        log_likelihood = -0.5 * (z**2 / variance + variance.log()).sum(-1)  # [N, K], up to a constant
        responsibilities = torch.softmax(self.weights.log() + log_likelihood, dim=-1)
        rotated_x0 = self.rotated_means + (alpha * self.eigenvalues / variance) * z
        weighted = (responsibilities[..., None] * rotated_x0).transpose(0, 1)  # [K, N, D]
        x0 = torch.matmul(weighted, self.eigenvectors.transpose(1, 2)).sum(0)
        return x0.reshape(x_t.shape).to(x_t.dtype)

    def exact_flow(self, x: torch.Tensor, logsnr_from: float, logsnr_to: float) -> torch.Tensor:
        """The probability-flow ODE solution from logsnr_from to logsnr_to, for a single Gaussian."""
        if self.num_components != 1:
            raise ValueError("exact_flow has a closed form for one component only")
        z, variance_from, _ = self._marginal(x, torch.tensor(logsnr_from))
        alpha_to, sigma_to = alpha_sigma(torch.tensor(logsnr_to, dtype=torch.float64))
        variance_to = alpha_to**2 * self.eigenvalues + sigma_to**2
        rotated = alpha_to * self.rotated_means + z * (variance_to / variance_from).sqrt()  # [N, 1, D]
        return (rotated[:, 0] @ self.eigenvectors[0].T).reshape(x.shape).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of x0 from the mixture, [n, *shape] float64."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        component, noise = component.to(self.means.device), noise.to(self.means.device)
        x0 = torch.empty(n, self.dim, dtype=torch.float64, device=self.means.device)
        for k in range(self.num_components):
            chosen = component == k
            scaled = noise[chosen] * self.eigenvalues[k].sqrt()
            x0[chosen] = self.means[k] + scaled @ self.eigenvectors[k].T
        return x0.reshape(n, *self.shape)


class KernelDensityTeacher:
    """Exact posterior mean of the points [n, *shape] smoothed by N(0, width^2 I) (see the module docstring)."""

    LOGIT_BUDGET = 1 << 21  # float64 logits per batch of rows (16 MiB)

    def __init__(self, points: torch.Tensor, width: float, shape: Sequence[int] | None = None):
        points = torch.as_tensor(points, dtype=torch.float64)
        if points.ndim < 2 or points.shape[0] < 1:
            raise ValueError(f"points must be [n >= 1, ...], got {tuple(points.shape)}")
        if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
            raise ValueError(f"width must be a positive number, got {width!r}")
        self.shape = tuple(shape) if shape is not None else tuple(points.shape[1:])
        self.points = points.reshape(points.shape[0], -1)
        if math.prod(self.shape) != self.dim:
            raise ValueError(f"shape {self.shape} does not hold D={self.dim} values")
        self.width = float(width)
        # [d_i, |d_i|^2 / 2]: the logits of a batch are then one matrix product with [x alpha / v, -alpha^2 / v]
        self.augmented = torch.cat([self.points, 0.5 * (self.points**2).sum(1, keepdim=True)], dim=1)

    def to(self, device: str | torch.device) -> KernelDensityTeacher:
        """Move the points (kept in float64) to device, in place; returns self."""
        self.points, self.augmented = self.points.to(device), self.augmented.to(device)
        return self

    @property
    def num_components(self) -> int:
        return self.points.shape[0]

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    def predict_x0(self, x_t: torch.Tensor, logsnr: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        n = x_t.shape[0]
        x = x_t.reshape(n, self.dim).to(torch.float64)
        alpha, sigma = alpha_sigma(_per_sample(logsnr, n, x))
        alpha, sigma = alpha[:, None], sigma[:, None]
        variance = alpha**2 * self.width**2 + sigma**2
        queries = torch.cat([x * (alpha / variance), -(alpha**2) / variance], dim=1)
        rows = max(1, self.LOGIT_BUDGET // self.num_components)
        mean_point = torch.cat([torch.softmax(q @ self.augmented.T, dim=1) @ self.points for q in queries.split(rows)])
        x0 = (sigma**2 / variance) * mean_point + (alpha * self.width**2 / variance) * x
        return x0.reshape(x_t.shape).to(x_t.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of x0, [n, *shape] float64."""
        chosen = torch.randint(self.num_components, (n,), generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x0 = self.points[chosen.to(self.points.device)] + self.width * noise.to(self.points.device)
        return x0.reshape(n, *self.shape)


class NetworkTeacher:
    """Wraps a denoising network or any callable `fn(x_t, logsnr[, y])` as a teacher.

    prediction says what fn returns: "x0" (DSNO's teachers), "eps" (x0 = (x - sigma eps) / alpha) or
    "v" (x0 = alpha x - sigma v). fn receives logsnr per sample [N] in x_t's dtype, and y only when
    it is given. `autocast_dtype` (e.g. torch.bfloat16) runs fn under autocast; the solver arithmetic
    stays in x_t's dtype."""

    def __init__(
        self, fn: Callable[..., torch.Tensor], prediction: str = "x0", autocast_dtype: torch.dtype | None = None
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.fn = fn
        self.prediction = prediction
        self.autocast_dtype = autocast_dtype

    def predict_x0(self, x_t: torch.Tensor, logsnr: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        logsnr = _per_sample(logsnr, x_t.shape[0], x_t)
        args = (x_t, logsnr) if y is None else (x_t, logsnr, y)
        with torch.autocast(
            x_t.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=self.autocast_dtype is not None
        ):
            out = self.fn(*args)
        out = out.to(x_t.dtype)
        if self.prediction == "x0":
            return out
        alpha, sigma = (v.view(-1, *([1] * (x_t.ndim - 1))) for v in alpha_sigma(logsnr))
        if self.prediction == "eps":
            return (x_t - sigma * out) / alpha
        return alpha * x_t - sigma * out


def as_teacher(obj, prediction: str = "x0") -> Teacher:
    """obj itself if it already has predict_x0, otherwise a NetworkTeacher around the callable."""
    if isinstance(obj, Teacher):
        return obj
    if not callable(obj):
        raise TypeError(f"a teacher must have predict_x0 or be callable, got {type(obj).__name__}")
    return NetworkTeacher(obj, prediction)


def build_teacher(config: dict[str, Any], device: str | torch.device = "cpu") -> tuple[Teacher, dict[str, Any]]:
    """The teacher a dsno config describes, on device, and a JSON-able description of it (for manifests)."""
    cfg, shape = config["teacher"], [int(v) for v in config["data"]["shape"]]
    if cfg["kind"] == "gmm":
        if cfg["gmm_path"]:
            teacher = GaussianMixtureTeacher.load(cfg["gmm_path"], shape)
            info = {"kind": "gmm", "path": str(cfg["gmm_path"])}
        else:
            teacher = GaussianMixtureTeacher.random(shape, cfg["gmm_components"], seed=cfg["gmm_seed"])
            info = {"kind": "gmm", "components": cfg["gmm_components"], "seed": cfg["gmm_seed"]}
        return teacher.to(device), info
    if cfg["kind"] != "backbone":
        raise ValueError(f"teacher.kind must be 'gmm' or 'backbone', got {cfg['kind']!r}")
    if not cfg["backbone"] or not cfg["weights"]:
        raise ValueError(
            "teacher.kind=backbone needs teacher.backbone (a preset or 'module:function') "
            "and teacher.weights (the teacher's state_dict file)"
        )
    from .checkpoint import load_model_state, load_tensor_file
    from .model import build_backbone, build_from_spec

    overrides = dict(cfg["backbone_overrides"] or {})
    network = build_from_spec(cfg["backbone"], overrides, build_backbone)
    weights = load_tensor_file(cfg["weights"], "teacher weights (teacher.weights)")
    load_model_state(network, weights, cfg["weights"], {"backbone": cfg["backbone"], "overrides": overrides})
    network.to(device).eval().requires_grad_(False)
    teacher = NetworkTeacher(network, cfg["prediction"], torch.bfloat16 if cfg["bf16"] else None)
    info = {
        "kind": "backbone",
        "backbone": cfg["backbone"],
        "overrides": overrides,
        "weights": str(cfg["weights"]),
        "prediction": cfg["prediction"],
        "bf16": bool(cfg["bf16"]),
    }
    return teacher, info


@torch.no_grad()
def solve(
    teacher: Teacher,
    noise: torch.Tensor,
    logsnr_grid: torch.Tensor,
    record_indices: Sequence[int],
    *,
    solver: str = "heun",
    record: str = "x0",
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate the probability-flow ODE from `noise` (the state at logsnr_grid[0]) over the grid and
    return the recorded states [B, len(record_indices), *shape] in noise's dtype.

    record="xt": the ODE state x_i at each recorded grid index i; record="x0": the teacher's prediction
    D(x_i, lambda_i) there. Teacher evaluations: N (ddim) or 2N (heun) for an N-step grid, plus one at
    index N when it is recorded with record="x0"."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if record not in ("x0", "xt"):
        raise ValueError(f"record must be 'x0' or 'xt', got {record!r}")
    grid = [float(v) for v in torch.as_tensor(logsnr_grid, dtype=torch.float64)]
    num_steps = len(grid) - 1
    if num_steps < 1 or any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError("logsnr_grid must hold at least 2 strictly increasing values (noise to data)")
    wanted = sorted(set(int(i) for i in record_indices))
    if not wanted or wanted[0] < 0 or wanted[-1] > num_steps:
        raise ValueError(f"record_indices must lie in [0, {num_steps}], got {list(record_indices)}")
    batch = noise.shape[0]

    def predict(x: torch.Tensor, logsnr: float) -> torch.Tensor:
        return teacher.predict_x0(x, torch.full((batch,), logsnr, dtype=x.dtype, device=x.device), y)

    recorded: dict[int, torch.Tensor] = {}
    x = noise
    for i in range(num_steps):
        theta_s, theta_t = _theta(grid[i]), _theta(grid[i + 1])
        alpha_s, sigma_s, alpha_t, sigma_t = math.cos(theta_s), math.sin(theta_s), math.cos(theta_t), math.sin(theta_t)
        x0_s = predict(x, grid[i])
        if i in wanted:
            recorded[i] = x0_s if record == "x0" else x
        if solver == "ddim":
            x = alpha_t * x0_s + sigma_t * ((x - alpha_s * x0_s) / sigma_s)
        else:
            step = theta_t - theta_s
            v_s = (alpha_s * x - x0_s) / sigma_s
            x_euler = x + step * v_s
            v_t = (alpha_t * x_euler - predict(x_euler, grid[i + 1])) / sigma_t
            x = x + (0.5 * step) * (v_s + v_t)
    if num_steps in wanted:
        recorded[num_steps] = predict(x, grid[num_steps]) if record == "x0" else x
    return torch.stack([recorded[int(i)] for i in record_indices], dim=1)


def _theta(logsnr: float) -> float:
    """theta = atan(exp(-logsnr / 2)) in float64, so that (alpha, sigma) = (cos(theta), sin(theta))."""
    return math.atan(math.exp(-0.5 * logsnr)) if logsnr >= 0 else 0.5 * math.pi - math.atan(math.exp(0.5 * logsnr))
