"""`dsno demo --quick` end to end: its files, that every sampler's row i comes from held-out noise i,
and the claim it makes (DSNO's one pass is closer to the teacher than 1-step DDIM)."""

import json
import struct
import sys

import numpy as np
import pytest
import torch

from dsno import cli
from dsno.demo import QUICK, SAMPLERS, run_demo
from dsno.metrics import frechet_distance, per_sample_mse

pytest.importorskip("sklearn", reason="the demo's data ship with scikit-learn")
pytest.importorskip("matplotlib", reason="the demo draws its figures with matplotlib")

pytestmark = pytest.mark.slow

# rows re-derived independently: the first and the last few noises
CHECKED_ROWS = [0, 1, 2, 3, 4, 5, 6, 7, QUICK.eval_samples - 2, QUICK.eval_samples - 1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    try:
        assert cli.main(["demo", "--quick", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_writes_every_file_with_the_promised_shapes(demo):
    for name in ("metrics.json", "noise.npy", "samples.png", "loss.png", "teacher_gmm.npz"):
        assert (demo / name).is_file(), name
    for png in ("samples.png", "loss.png"):
        data = (demo / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 300 and height >= 200, (png, width, height)
    for name in SAMPLERS:
        samples = np.load(demo / f"samples_{name}.npy")
        assert samples.shape == (QUICK.eval_samples, 1, 8, 8) and samples.dtype == np.float32, name
        assert QUICK.eval_samples >= 512
        assert samples.min() >= -1.0 and samples.max() <= 1.0 and np.isfinite(samples).all(), name
        assert samples.std(0).mean() > 0.05 or name == "ddim1", name   # distinct samples, not one image
    metrics = json.loads((demo / "metrics.json").read_text())
    assert set(metrics["samplers"]) == set(SAMPLERS)
    assert metrics["settings"]["teacher_steps"] >= 256
    assert metrics["noise"]["shape"] == [QUICK.eval_samples, 1, 8, 8]


def test_every_sampler_starts_from_the_recorded_held_out_noises(demo):
    from dsno.sample import load_sampler
    from dsno.schedule import LogSNRSchedule, time_grid
    from dsno.teachers import GaussianMixtureTeacher, solve
    from dsno.trajectories import TrajectoryDataset, sample_noise

    metrics = json.loads((demo / "metrics.json").read_text())
    seed = metrics["noise"]["eval_seed"]
    noise = np.load(demo / "noise.npy")
    rederived, _ = sample_noise(range(QUICK.eval_samples), [1, 8, 8], seed)
    np.testing.assert_array_equal(noise, rederived.numpy())
    dataset = TrajectoryDataset(demo / "traj")
    trained_on = {dataset[i]["noise"].numpy().tobytes() for i in range(len(dataset))}
    assert len(trained_on) == len(dataset) and not trained_on & {row.tobytes() for row in noise}

    rows = torch.from_numpy(noise[CHECKED_ROWS])
    teacher = GaussianMixtureTeacher.load(str(demo / "teacher_gmm.npz"))
    schedule = LogSNRSchedule()
    steps = metrics["settings"]["teacher_steps"]
    expected = {"teacher": solve(teacher, rows, schedule.logsnr(time_grid(steps)), [steps], solver="ddim", record="x0")}
    for name, count in (("ddim1", 1), ("ddim2", 2), ("ddim4", 4)):
        expected[name] = solve(teacher, rows, schedule.logsnr(time_grid(count)), [count], solver="ddim", record="xt")
    model, meta = load_sampler(demo / "train" / "checkpoint.pt")
    with torch.no_grad():
        expected["dsno"] = model(rows, torch.tensor(meta["logsnr"], dtype=torch.float32))[:, -1:]
    for name in SAMPLERS:
        saved = np.load(demo / f"samples_{name}.npy")[CHECKED_ROWS]
        np.testing.assert_allclose(saved, expected[name][:, 0].clamp(-1, 1).numpy(), rtol=0, atol=1e-5, err_msg=name)


def test_dsno_is_closer_to_the_teacher_than_one_step_ddim(demo):
    metrics = json.loads((demo / "metrics.json").read_text())
    teacher = np.load(demo / "samples_teacher.npy")
    measured = {}
    for name in ("dsno", "ddim1", "ddim2"):
        samples = np.load(demo / f"samples_{name}.npy")
        measured[name] = (frechet_distance(samples, teacher), float(per_sample_mse(samples, teacher).mean()))
        reported = metrics["samplers"][name]
        assert reported["fd_to_teacher"] == pytest.approx(measured[name][0], rel=1e-9)
        assert reported["mse_to_teacher"] == pytest.approx(measured[name][1], rel=1e-9)
    assert measured["dsno"][0] < measured["ddim1"][0] and measured["dsno"][1] < measured["ddim1"][1]
    assert metrics["dsno_beats"]["ddim1"] is True
    # DSNO's own outputs are paired with their noises: shuffling the pairing makes the error worse
    dsno = np.load(demo / "samples_dsno.npy")
    assert per_sample_mse(np.roll(dsno, 1, axis=0), teacher).mean() > 2 * measured["dsno"][1]


def test_missing_scikit_learn_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        run_demo(tmp_path, QUICK, progress=False)
    assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit, match="pip install scikit-learn"):
        cli.main(["demo", "--quick", "--out", str(tmp_path)])


def test_digits_and_their_gaussian_mixture():
    from dsno.digits import fit_gaussian_mixture, load_digits

    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.min() == -1.0 and images.max() == 1.0
    teacher = fit_gaussian_mixture(images, labels, shrinkage=0.1, variance_floor=1e-3)
    assert teacher.num_components == 10 and teacher.shape == (1, 8, 8)
    flat = torch.from_numpy(images).double().reshape(1797, 64)
    for digit in (0, 7):
        members = flat[torch.from_numpy(labels) == digit]
        torch.testing.assert_close(teacher.weights[digit], torch.tensor(len(members) / 1797, dtype=torch.float64))
        torch.testing.assert_close(teacher.means[digit], members.mean(0))
        sample_covariance = torch.cov(members.T)
        expected = 0.9 * sample_covariance + 0.1 * torch.diag(sample_covariance.diagonal()) + 1e-3 * torch.eye(64)
        torch.testing.assert_close(teacher.covariances[digit], expected.double())
    assert float(teacher.eigenvalues.min()) >= 1e-3 - 1e-12   # the floor keeps every component well conditioned


def test_a_rerun_reuses_or_replaces_the_trajectories(demo, tmp_path):
    import dataclasses
    import shutil

    from dsno.demo import _pipeline_config, _remove_stale_trajectories

    _remove_stale_trajectories(_pipeline_config(QUICK, demo, "cpu"), log=lambda message: None)
    assert (demo / "traj" / "manifest.json").is_file()      # same settings: kept (generation then finds it done)
    shutil.copytree(demo / "traj", tmp_path / "traj")
    shutil.copy(demo / "teacher_gmm.npz", tmp_path / "teacher_gmm.npz")
    other = dataclasses.replace(QUICK, train_samples=QUICK.train_samples + 1)
    _remove_stale_trajectories(_pipeline_config(other, tmp_path, "cpu"), log=lambda message: None)
    assert not (tmp_path / "traj").exists()
