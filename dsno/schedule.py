"""DSNO's noise schedule and the choice of output time points.

Variance-preserving forward process, written in terms of the log signal-to-noise ratio lambda:

    x_t = alpha * x0 + sigma * eps,   alpha^2 = sigmoid(lambda),   sigma^2 = sigmoid(-lambda)

so alpha^2 + sigma^2 = 1 and lambda = log(alpha^2 / sigma^2). Time t in [0, 1] maps to lambda by the
cosine schedule DSNO's teachers were trained with (t = 0 clean, t = 1 noise):

    lambda(t) = -2 log tan(a t + b),   b = atan(exp(-lambda_max / 2)),   a = atan(exp(-lambda_min / 2)) - b

which gives lambda(0) = lambda_max = 20 and lambda(1) = lambda_min = -20. Its inverse is
t(lambda) = (atan(exp(-lambda / 2)) - b) / a. Note exp(-lambda / 2) = sigma / alpha = tan(a t + b).

Teacher trajectories are solved on the grid t_i = linspace(1, t_min, num_steps + 1) (index 0 is the
noise, index num_steps the end), and DSNO learns the M states at grid indices chosen by
`select_time_indices`:

    uniform:    i_k = round(num_steps * k / M)                          k = 1..M
    quadratic:  i_k = num_steps - round(num_steps * ((M - k) / M)^2)    k = 1..M

With DSNO's CIFAR-10 setting (512 steps, 4 points, quadratic) this gives indices 224, 384, 480, 512,
i.e. t ~ 0.5625, 0.25, 0.0625, t_min: the points crowd towards the data end, where images change most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "LOGSNR_MIN",
    "LOGSNR_MAX",
    "T_MIN",
    "LogSNRSchedule",
    "alpha_sigma",
    "time_grid",
    "select_time_indices",
    "TimePoints",
    "output_time_points",
]

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0
T_MIN = 1e-5  # the last grid time by default; DSNO's configs set data.epsilon = 0.0 (lambda = lambda_max)
SPACINGS = ("uniform", "quadratic")


@dataclass(frozen=True)
class LogSNRSchedule:
    """lambda(t) = -2 log tan(a t + b), spanning [logsnr_min, logsnr_max] over t in [0, 1]."""

    logsnr_min: float = LOGSNR_MIN
    logsnr_max: float = LOGSNR_MAX

    def __post_init__(self):
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"need logsnr_min < logsnr_max, got {self.logsnr_min}, {self.logsnr_max}")

    @property
    def b(self) -> float:
        return math.atan(math.exp(-0.5 * self.logsnr_max))

    @property
    def a(self) -> float:
        return math.atan(math.exp(-0.5 * self.logsnr_min)) - self.b

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t) else t
        return -2.0 * torch.log(torch.tan(self.a * t + self.b))

    def t_from_logsnr(self, logsnr: torch.Tensor) -> torch.Tensor:
        logsnr = torch.as_tensor(logsnr, dtype=torch.float64) if not torch.is_tensor(logsnr) else logsnr
        return (torch.atan(torch.exp(-0.5 * logsnr)) - self.b) / self.a


def alpha_sigma(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) of the variance-preserving process: alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def time_grid(num_steps: int, t_min: float = T_MIN) -> torch.Tensor:
    """The solver grid t_i = linspace(1, t_min, num_steps + 1) in float64 (index 0 is pure noise)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 <= t_min < 1.0:
        raise ValueError(f"t_min must be in [0, 1), got {t_min}")
    return torch.linspace(1.0, t_min, num_steps + 1, dtype=torch.float64)


def select_time_indices(num_steps: int, num_points: int, spacing: str = "quadratic") -> list[int]:
    """Grid indices (into `time_grid(num_steps)`) of the M output time points; the last is num_steps."""
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if not 1 <= num_points <= num_steps:
        raise ValueError(f"num_points must be in [1, num_steps={num_steps}], got {num_points}")
    if spacing == "uniform":
        indices = [round(num_steps * k / num_points) for k in range(1, num_points + 1)]
    else:
        indices = [
            num_steps - round(num_steps * ((num_points - k) / num_points) ** 2) for k in range(1, num_points + 1)
        ]
    if len(set(indices)) != num_points or min(indices) < 1:
        raise ValueError(f"{num_points} {spacing} points do not fit a {num_steps}-step grid: {indices}")
    return indices


@dataclass(frozen=True)
class TimePoints:
    """The output time points: grid indices, times and logSNRs (float64), all of length M."""

    indices: list[int]
    t: torch.Tensor
    logsnr: torch.Tensor


def output_time_points(
    num_steps: int = 512,
    num_points: int = 4,
    spacing: str = "quadratic",
    t_min: float = T_MIN,
    schedule: LogSNRSchedule | None = None,
) -> TimePoints:
    schedule = schedule or LogSNRSchedule()
    indices = select_time_indices(num_steps, num_points, spacing)
    t = time_grid(num_steps, t_min)[indices]
    return TimePoints(indices=indices, t=t, logsnr=schedule.logsnr(t))
