"""Teachers and probability-flow ODE solvers (dsno/teachers.py)."""

import math

import pytest
import torch

from dsno.schedule import LogSNRSchedule, alpha_sigma, time_grid
from dsno.teachers import (
    GaussianMixtureTeacher,
    KernelDensityTeacher,
    NetworkTeacher,
    as_teacher,
    build_teacher,
    solve,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


def logsnr_grid(num_steps):
    return LogSNRSchedule().logsnr(time_grid(num_steps))


def brute_force_posterior_mean(teacher, x_t, logsnr):
    """E[x0 | x_t] from the textbook formulas, with dense solves instead of eigenbases."""
    alpha, sigma = (float(v) for v in alpha_sigma(torch.tensor(logsnr, dtype=torch.float64)))
    eye = torch.eye(teacher.dim, dtype=torch.float64)
    logits, means = [], []
    for weight, mean, cov in zip(teacher.weights, teacher.means, teacher.covariances):
        marginal = torch.distributions.MultivariateNormal(alpha * mean, alpha**2 * cov + sigma**2 * eye)
        logits.append(weight.log() + marginal.log_prob(x_t))
        gain = alpha * cov @ torch.linalg.inv(alpha**2 * cov + sigma**2 * eye)
        means.append(mean + (x_t - alpha * mean) @ gain.T)
    responsibilities = torch.softmax(torch.stack(logits, -1), -1)
    return (responsibilities[..., None] * torch.stack(means, 1)).sum(1)


@pytest.mark.parametrize("logsnr", [-6.0, 0.0, 3.0, 12.0])
def test_gmm_posterior_mean_matches_dense_formula(logsnr):
    teacher = GaussianMixtureTeacher.random((3,), 3, seed=4, noise_scale=0.1)
    x_t = torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        teacher.predict_x0(x_t, torch.full((32,), logsnr, dtype=torch.float64)),
        brute_force_posterior_mean(teacher, x_t, logsnr),
        rtol=1e-9,
        atol=1e-9,
    )


def test_gmm_posterior_mean_matches_monte_carlo():
    # E[x0 | x_t] = E_x0[x0 N(x_t; alpha x0, sigma^2)] / E_x0[N(x_t; alpha x0, sigma^2)] over data draws
    teacher = GaussianMixtureTeacher.random((2,), 3, seed=7, noise_scale=0.3)
    generator = torch.Generator().manual_seed(0)
    x0 = teacher.sample(400_000, generator)
    logsnr = 0.5
    alpha, sigma = (float(v) for v in alpha_sigma(torch.tensor(logsnr)))
    x_t = alpha * teacher.sample(4, generator) + sigma * torch.randn(4, 2, generator=generator, dtype=torch.float64)
    log_w = -0.5 * ((x_t[:, None] - alpha * x0[None]) ** 2).sum(-1) / sigma**2
    w = torch.softmax(log_w, dim=1)
    monte_carlo = (w[..., None] * x0[None]).sum(1)
    exact = teacher.predict_x0(x_t, torch.full((4,), logsnr, dtype=torch.float64))
    torch.testing.assert_close(exact, monte_carlo, rtol=0, atol=0.02)


def test_gmm_samples_have_the_mixture_moments():
    teacher = GaussianMixtureTeacher.random((3,), 2, seed=3)
    x = teacher.sample(200_000, torch.Generator().manual_seed(0))
    mean = (teacher.weights[:, None] * teacher.means).sum(0)
    second = sum(w * (c + torch.outer(m, m)) for w, m, c in zip(teacher.weights, teacher.means, teacher.covariances))
    torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=0.01)
    torch.testing.assert_close(x.T @ x / len(x), second, rtol=0, atol=0.01)


def test_exact_flow_carries_one_marginal_to_the_next():
    # the probability-flow ODE maps the law of x at logsnr a onto the law at logsnr b
    teacher = GaussianMixtureTeacher.random((3,), 1, seed=5, noise_scale=0.2)
    generator = torch.Generator().manual_seed(0)
    a, b = -4.0, 6.0
    (alpha_a, sigma_a), (alpha_b, sigma_b) = (tuple(float(v) for v in alpha_sigma(torch.tensor(l))) for l in (a, b))
    x_a = alpha_a * teacher.sample(100_000, generator) + sigma_a * torch.randn(
        100_000, 3, generator=generator, dtype=torch.float64
    )
    x_b = teacher.exact_flow(x_a, a, b)
    cov_b = alpha_b**2 * teacher.covariances[0] + sigma_b**2 * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(x_b.mean(0), alpha_b * teacher.means[0], rtol=0, atol=0.01)
    torch.testing.assert_close(torch.cov(x_b.T), cov_b, rtol=0, atol=0.01)


def errors_and_ratios(teacher, x, steps, reference, solver):
    errors = []
    for num_steps in steps:
        out = solve(teacher, x, logsnr_grid(num_steps), [num_steps], solver=solver, record="xt")[:, 0]
        errors.append((out - reference).abs().max().item())
    return errors, [a / b for a, b in zip(errors, errors[1:])]


def test_solvers_converge_to_closed_form_gaussian_flow_at_first_and_second_order():
    teacher = GaussianMixtureTeacher.random((6,), 1, seed=1, noise_scale=0.2)
    x = torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = logsnr_grid(8)
    exact = teacher.exact_flow(x, float(grid[0]), float(grid[-1]))  # every grid has the same endpoints
    steps = (64, 128, 256)
    ddim, ddim_ratios = errors_and_ratios(teacher, x, steps, exact, "ddim")
    heun, heun_ratios = errors_and_ratios(teacher, x, steps, exact, "heun")
    assert all(1.8 < r < 2.2 for r in ddim_ratios), (ddim, ddim_ratios)
    assert all(3.5 < r < 4.5 for r in heun_ratios), (heun, heun_ratios)
    assert heun[-1] < 1e-4 and all(h < d for h, d in zip(heun, ddim))


def test_solvers_converge_to_fine_gmm_solution_at_first_and_second_order():
    teacher = GaussianMixtureTeacher.random((6,), 4, seed=2, noise_scale=0.2)
    x = torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference = solve(teacher, x, logsnr_grid(2048), [2048], solver="heun", record="xt")[:, 0]
    steps = (32, 64, 128)
    ddim, ddim_ratios = errors_and_ratios(teacher, x, steps, reference, "ddim")
    heun, heun_ratios = errors_and_ratios(teacher, x, steps, reference, "heun")
    assert all(1.8 < r < 2.2 for r in ddim_ratios), (ddim, ddim_ratios)
    assert all(3.5 < r < 4.5 for r in heun_ratios), (heun, heun_ratios)


def test_recorded_states_and_predictions():
    teacher = GaussianMixtureTeacher.random((2, 2, 2), 3, seed=0)
    x = torch.randn(5, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = logsnr_grid(12)
    states = solve(teacher, x, grid, [0, 5, 12], solver="heun", record="xt")
    predictions = solve(teacher, x, grid, [0, 5, 12], solver="heun", record="x0")
    assert states.shape == predictions.shape == (5, 3, 2, 2, 2)
    assert torch.equal(states[:, 0], x)
    for column, index in enumerate([0, 5, 12]):
        logsnr = torch.full((5,), float(grid[index]), dtype=torch.float64)
        torch.testing.assert_close(predictions[:, column], teacher.predict_x0(states[:, column], logsnr))
    # recording more points does not change the path
    torch.testing.assert_close(
        solve(teacher, x, grid, [12], solver="heun", record="xt")[:, 0], states[:, 2], rtol=0, atol=0
    )


def test_float32_solve_stays_close_to_float64():
    teacher = GaussianMixtureTeacher.random((8,), 4, seed=2)
    x = torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for solver in ("ddim", "heun"):
        high = solve(teacher, x, logsnr_grid(64), [32, 64], solver=solver)
        low = solve(teacher, x.float(), logsnr_grid(64), [32, 64], solver=solver)
        assert low.dtype == torch.float32
        torch.testing.assert_close(low.double(), high, rtol=0, atol=1e-5)


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_network_teacher_converts_predictions(prediction):
    gmm = GaussianMixtureTeacher.random((4,), 2, seed=1)

    def network(x_t, logsnr):
        assert logsnr.shape == (x_t.shape[0],)
        x0 = gmm.predict_x0(x_t, logsnr)
        alpha, sigma = (v[:, None] for v in alpha_sigma(logsnr))
        eps = (x_t - alpha * x0) / sigma
        return {"x0": x0, "eps": eps, "v": alpha * eps - sigma * x0}[prediction]

    teacher = NetworkTeacher(network, prediction)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    logsnr = torch.linspace(-3, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(teacher.predict_x0(x, logsnr), gmm.predict_x0(x, logsnr), rtol=1e-10, atol=1e-10)
    # per-sample logsnr reaches the network, and a solve through the adapter equals the solve of the mixture
    grid = logsnr_grid(16)
    torch.testing.assert_close(solve(teacher, x, grid, [16]), solve(gmm, x, grid, [16]), rtol=1e-8, atol=1e-8)


def test_network_teacher_passes_labels_only_when_given():
    seen = []

    def network(x_t, logsnr, *rest):
        seen.append(len(rest))
        return torch.zeros_like(x_t)

    teacher = as_teacher(network)
    x = torch.randn(3, 2)
    teacher.predict_x0(x, torch.zeros(3))
    teacher.predict_x0(x, torch.zeros(3), torch.tensor([0, 1, 2]))
    assert seen == [0, 1]


def test_as_teacher_keeps_teachers_and_rejects_non_callables():
    gmm = GaussianMixtureTeacher.random((2,), 1)
    assert as_teacher(gmm) is gmm
    with pytest.raises(TypeError):
        as_teacher(3)
    with pytest.raises(ValueError):
        NetworkTeacher(lambda x, l: x, "score")


def test_build_teacher_from_config():
    config = {
        "data": {"shape": [1, 2, 2]},
        "teacher": {"kind": "gmm", "gmm_path": None, "gmm_components": 3, "gmm_seed": 9},
    }
    teacher, info = build_teacher(config)
    assert isinstance(teacher, GaussianMixtureTeacher) and teacher.shape == (1, 2, 2)
    assert info == {"kind": "gmm", "components": 3, "seed": 9}
    again, _ = build_teacher(config)
    assert torch.equal(again.covariances, teacher.covariances)
    config["teacher"] = {"kind": "backbone", "backbone": "cifar10", "weights": None}
    with pytest.raises(ValueError, match="teacher.weights"):
        build_teacher(config)


def test_build_teacher_from_a_backbone_checkpoint(tmp_path):
    from dsno.model import build_backbone

    torch.manual_seed(0)
    network = build_backbone("tiny")
    torch.save(network.state_dict(), tmp_path / "teacher.pt")
    config = {
        "data": {"shape": [3, 8, 8]},
        "teacher": {
            "kind": "backbone",
            "backbone": "tiny",
            "backbone_overrides": {},
            "prediction": "eps",
            "weights": str(tmp_path / "teacher.pt"),
            "bf16": False,
        },
    }
    teacher, info = build_teacher(config)
    assert info["kind"] == "backbone" and info["prediction"] == "eps"
    x = torch.randn(2, 3, 8, 8)
    logsnr = torch.tensor([-1.0, 2.0])
    with torch.no_grad():
        eps = network.eval()(x, logsnr)
    alpha, sigma = (v.view(2, 1, 1, 1) for v in alpha_sigma(logsnr))
    torch.testing.assert_close(teacher.predict_x0(x, logsnr), (x - sigma * eps) / alpha)


def test_gmm_save_load_roundtrip(tmp_path):
    teacher = GaussianMixtureTeacher.random((2, 3), 2, seed=1)
    teacher.save(tmp_path / "gmm.npz")
    loaded = GaussianMixtureTeacher.load(tmp_path / "gmm.npz")
    assert loaded.shape == (2, 3)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(loaded.predict_x0(x, torch.zeros(4)), teacher.predict_x0(x, torch.zeros(4)))


def test_solver_argument_checks():
    gmm = GaussianMixtureTeacher.random((2,), 1)
    x = torch.randn(2, 2)
    with pytest.raises(ValueError):
        solve(gmm, x, logsnr_grid(4), [5])
    with pytest.raises(ValueError):
        solve(gmm, x, logsnr_grid(4).flip(0), [4])
    with pytest.raises(ValueError):
        solve(gmm, x, logsnr_grid(4), [4], solver="euler")


def brute_force_kde_posterior_mean(points, width, x_t, logsnr):
    """E[x0 | x_t] for x0 ~ (1/n) sum_i N(d_i, width^2 I), component by component, in float64."""
    alpha, sigma = (float(v) for v in alpha_sigma(torch.tensor(logsnr, dtype=torch.float64)))
    variance = alpha**2 * width**2 + sigma**2
    log_likelihoods, means = [], []
    for point in points:
        marginal = torch.distributions.Normal(alpha * point, math.sqrt(variance))
        log_likelihoods.append(marginal.log_prob(x_t).sum(-1))
        means.append(point + (alpha * width**2 / variance) * (x_t - alpha * point))
    responsibilities = torch.softmax(torch.stack(log_likelihoods, -1), -1)
    return (responsibilities[..., None] * torch.stack(means, 1)).sum(1)


@pytest.mark.parametrize("logsnr", [-20.0, -4.0, 0.0, 3.0, 9.0, 20.0])
def test_kde_posterior_mean_matches_brute_force_in_batches(logsnr, monkeypatch):
    generator = torch.Generator().manual_seed(3)
    points = torch.rand(37, 5, generator=generator, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(23, 5, generator=generator, dtype=torch.float64) * 1.3
    expected = brute_force_kde_posterior_mean(points, 0.15, x_t, logsnr)
    teacher = KernelDensityTeacher(points, 0.15)
    whole = teacher.predict_x0(x_t, torch.full((23,), logsnr, dtype=torch.float64))
    monkeypatch.setattr(KernelDensityTeacher, "LOGIT_BUDGET", 4 * 37)  # batches of 4 rows, the last of 3
    batched = teacher.predict_x0(x_t, torch.full((23,), logsnr, dtype=torch.float64))
    torch.testing.assert_close(whole, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(batched, whole, rtol=0, atol=1e-15)


def test_kde_is_the_gaussian_mixture_of_its_points_with_per_sample_logsnr():
    generator = torch.Generator().manual_seed(1)
    points = torch.rand(9, 2, 3, generator=generator, dtype=torch.float64) * 2 - 1
    teacher = KernelDensityTeacher(points, 0.3)
    mixture = GaussianMixtureTeacher(
        torch.ones(9), points.reshape(9, 6), 0.09 * torch.eye(6, dtype=torch.float64).expand(9, 6, 6), shape=(2, 3)
    )
    x_t = torch.randn(11, 2, 3, generator=generator, dtype=torch.float64)
    logsnr = torch.linspace(-8, 12, 11, dtype=torch.float64)
    assert teacher.shape == (2, 3) and teacher.num_components == 9 and teacher.dim == 6
    torch.testing.assert_close(teacher.predict_x0(x_t, logsnr), mixture.predict_x0(x_t, logsnr), rtol=1e-9, atol=1e-9)
    assert teacher.predict_x0(x_t.float(), logsnr.float()).dtype == torch.float32


def test_kde_posterior_mean_is_finite_and_right_at_the_ends_for_narrow_kernels():
    # width 0.01 on points ~1 apart: logits of order 1e4 at logsnr = 20, which a naive exp would overflow
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(50, 64, generator=generator, dtype=torch.float64) * 2 - 1
    teacher = KernelDensityTeacher(points, 0.01)
    x = points[:8] + 0.01 * torch.randn(8, 64, generator=generator, dtype=torch.float64)
    sharp = teacher.predict_x0(x, torch.full((8,), 20.0))
    torch.testing.assert_close(sharp, x, rtol=0, atol=1e-3)  # sigma ~ 5e-5: the state is its own x0
    vague = teacher.predict_x0(torch.randn(8, 64, dtype=torch.float64), torch.full((8,), -20.0))
    torch.testing.assert_close(vague, points.mean(0).expand(8, 64), rtol=0, atol=1e-3)  # alpha ~ 5e-5: the mean
    assert torch.isfinite(sharp).all() and torch.isfinite(vague).all()


def test_kde_samples_and_argument_checks():
    points = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    teacher = KernelDensityTeacher(points, 0.05)
    draws = teacher.sample(20_000, torch.Generator().manual_seed(0))
    nearest = torch.cdist(draws, points).argmin(1)
    assert abs(float((nearest == 1).double().mean()) - 0.5) < 0.02
    torch.testing.assert_close(
        (draws - points[nearest]).std(0), torch.full((2,), 0.05, dtype=torch.float64), atol=1e-3, rtol=0
    )
    for width in (0.0, -1.0, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="width"):
            KernelDensityTeacher(points, width)
    with pytest.raises(ValueError, match="points"):
        KernelDensityTeacher(torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="shape"):
        KernelDensityTeacher(points, 0.1, shape=(3,))


def test_kde_heun_converges_at_second_order_to_a_fine_grid_solve():
    generator = torch.Generator().manual_seed(5)
    teacher = KernelDensityTeacher(torch.rand(40, 6, generator=generator, dtype=torch.float64) * 2 - 1, 0.1)
    x = torch.randn(16, 6, dtype=torch.float64, generator=generator)
    reference = solve(teacher, x, logsnr_grid(4096), [4096], solver="heun", record="xt")[:, 0]
    heun, ratios = errors_and_ratios(teacher, x, (128, 256, 512), reference, "heun")
    assert all(3.5 < r < 4.5 for r in ratios), (heun, ratios)


def test_kde_digits_teacher_endpoint_matches_a_fine_grid_solve():
    """The claim's teacher as the claim solves it: Heun on the preset's 256 steps, from held-out noises,
    against 2048 steps. (DDIM needs far more steps on these sharp basins: 256 leave about 1e-3 here.)"""
    pytest.importorskip("sklearn", reason="the digits ship with scikit-learn")
    from dsno.claim import KDE_WIDTH
    from dsno.digits import load_digits
    from dsno.trajectories import sample_noise

    teacher = KernelDensityTeacher(torch.from_numpy(load_digits()[0]), KDE_WIDTH)
    noise = sample_noise(range(16), [1, 8, 8], seed=1)[0].double()
    fine = solve(teacher, noise, logsnr_grid(2048), [2048], solver="heun", record="x0")[:, 0]
    used = solve(teacher, noise.float(), logsnr_grid(256), [256], solver="heun", record="x0")[:, 0].double()
    assert float((used - fine).square().mean()) < 1e-8
    assert float((used - fine).abs().max()) < 1e-3
    # the flow carries N(0, I) to the smoothed digits: every endpoint lies about width * 8 from a digit
    distance = torch.cdist(fine.reshape(16, 64), teacher.points).min(1).values
    assert bool(((distance > 0.6 * 8 * KDE_WIDTH) & (distance < 1.4 * 8 * KDE_WIDTH)).all()), distance
