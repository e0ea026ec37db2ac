"""DSNO's logSNR schedule and output time-point selection (dsno/schedule.py)."""

import math

import pytest
import torch

from dsno.schedule import LogSNRSchedule, alpha_sigma, output_time_points, select_time_indices, time_grid


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


def dsno_get_idx(t_idx, t_dim, num_steps, time_step):
    """DSNO's get_idx (train_cifar.py / generate_imagenet.py): grid indices of data.t_idx."""
    if time_step == "uniform":
        return [num_steps // (t_dim - 1) * i for i in t_idx]
    return [num_steps - 2 * i * i for i in reversed(t_idx)]


@pytest.mark.parametrize(
    "preset, t_idx, t_dim", [("cifar10", [0, 4, 8, 12, 16], 17), ("imagenet64", [0, 2, 4, 6, 8], 9)]
)
def test_presets_use_dsnos_time_points(preset, t_idx, t_dim):
    from dsno.config import load_config

    schedule = load_config(preset)["schedule"]
    # DSNO's configs: data.epsilon 0.0; CIFAR-10 512 quad steps, ImageNet-64 16 uniform steps
    assert schedule["t_min"] == 0.0 and (schedule["logsnr_min"], schedule["logsnr_max"]) == (-20.0, 20.0)
    expected = dsno_get_idx(t_idx, t_dim, schedule["num_steps"], "uniform" if preset == "imagenet64" else "quad")
    indices = select_time_indices(schedule["num_steps"], schedule["num_points"], schedule["spacing"])
    assert indices == expected[-schedule["num_points"] :]  # DSNO drops the noise (index 0)
    points = output_time_points(schedule["num_steps"], schedule["num_points"], schedule["spacing"], schedule["t_min"])
    if preset == "imagenet64":
        assert points.t.tolist() == [0.75, 0.5, 0.25, 0.0]
    assert points.logsnr[-1].item() == pytest.approx(20.0, abs=1e-9)  # epsilon 0: the last point is logsnr_max


def test_grid_runs_from_noise_to_t_min():
    grid = time_grid(8, 1e-3)
    assert grid.dtype == torch.float64 and len(grid) == 9
    assert grid[0].item() == 1.0 and grid[-1].item() == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "call",
    [
        lambda: select_time_indices(4, 8),
        lambda: select_time_indices(512, 4, "cubic"),
        lambda: time_grid(0),
        lambda: LogSNRSchedule(5.0, -5.0),
    ],
)
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
