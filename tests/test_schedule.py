"""DSNO's logSNR schedule and output time-point selection (dsno/schedule.py)."""

import math

import pytest
import torch

from dsno.schedule import (LogSNRSchedule, alpha_sigma, output_time_points, select_time_indices,
                           time_grid)


def test_schedule_spans_the_logsnr_range_and_decreases():
    schedule = LogSNRSchedule(-20.0, 20.0)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    logsnr = schedule.logsnr(t)
    assert logsnr[0].item() == pytest.approx(20.0, abs=1e-9)
    assert logsnr[-1].item() == pytest.approx(-20.0, abs=1e-9)
    assert bool((logsnr[1:] < logsnr[:-1]).all())


def test_schedule_matches_its_formula_and_inverse():
    schedule = LogSNRSchedule(-20.0, 20.0)
    b = math.atan(math.exp(-10.0))
    a = math.atan(math.exp(10.0)) - b
    t = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.9, 1.0], dtype=torch.float64)
    expected = torch.tensor([-2 * math.log(math.tan(a * v + b)) for v in t.tolist()], dtype=torch.float64)
    torch.testing.assert_close(schedule.logsnr(t), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(schedule.t_from_logsnr(schedule.logsnr(t)), t, rtol=0, atol=1e-12)


def test_alpha_sigma_is_variance_preserving():
    logsnr = torch.linspace(-20, 20, 41, dtype=torch.float64)
    alpha, sigma = alpha_sigma(logsnr)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(logsnr), rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), logsnr, rtol=0, atol=1e-9)


def test_dsno_cifar10_quadratic_points():
    # DSNO's CIFAR-10 config: 512-step grid, 4 quadratic points at 512 - 2 i^2 for i = 12, 8, 4, 0
    assert select_time_indices(512, 4, "quadratic") == [512 - 2 * i * i for i in (12, 8, 4, 0)]
    points = output_time_points(512, 4, "quadratic", t_min=1e-5)
    grid = time_grid(512, 1e-5)
    torch.testing.assert_close(points.t, grid[[224, 384, 480, 512]])
    assert points.t[-1].item() == pytest.approx(1e-5)
    assert bool((points.logsnr[1:] > points.logsnr[:-1]).all())


def test_uniform_points_match_dsno_uniform_indices():
    # DSNO's uniform choice: step = num_steps // 16, indices step * i for i = 4, 8, 12, 16
    assert select_time_indices(512, 4, "uniform") == [32 * i for i in (4, 8, 12, 16)]
    assert select_time_indices(10, 3, "uniform") == [3, 7, 10]


def test_grid_runs_from_noise_to_t_min():
    grid = time_grid(8, 1e-3)
    assert grid.dtype == torch.float64 and len(grid) == 9
    assert grid[0].item() == 1.0 and grid[-1].item() == pytest.approx(1e-3)


@pytest.mark.parametrize("call", [lambda: select_time_indices(4, 8), lambda: select_time_indices(512, 4, "cubic"),
                                  lambda: time_grid(0), lambda: LogSNRSchedule(5.0, -5.0)])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
