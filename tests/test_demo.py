"""`dsno demo --quick` end to end: its files, that every sampler's row i comes from held-out noise i,
the knowledge-distillation baseline (M = 1, trained on the teacher's endpoint only), that DSNO vs KD is
reported (not which wins: that is a measurement), the ablation over M and K, and the `digits` preset."""

import json
import struct
import sys

import numpy as np
import pytest
import torch

from dsno import cli
from dsno.config import load_config
from dsno.demo import ABLATION, KD_OVERRIDES, QUICK, SAMPLERS, run_demo
from dsno.metrics import frechet_distance, per_sample_mse

pytest.importorskip("sklearn", reason="the demo's data ship with scikit-learn")
pytest.importorskip("matplotlib", reason="the demo draws its figures with matplotlib")

pytestmark = pytest.mark.slow

# rows re-derived independently: the first and the last few noises
CHECKED_ROWS = [0, 1, 2, 3, 4, 5, 6, 7, QUICK.eval_samples - 2, QUICK.eval_samples - 1]
QUICK_STEPS = load_config("digits", QUICK.overrides)["train"]["steps"]


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
    for name in (
        "metrics.json",
        "noise.npy",
        "samples.png",
        "loss.png",
        "teacher_gmm.npz",
        "train/checkpoint.pt",
        "kd/checkpoint.pt",
    ):
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
        assert samples.std(0).mean() > 0.05 or name == "ddim1", name  # distinct samples, not one image
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
    for name, folder in (("dsno", "train"), ("kd", "kd")):
        model, meta = load_sampler(demo / folder / "checkpoint.pt")
        with torch.no_grad():
            expected[name] = model(rows, torch.tensor(meta["logsnr"], dtype=torch.float32))[:, -1:]
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


def test_missing_scikit_learn_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        run_demo(tmp_path, QUICK, progress=False)
    assert not any(tmp_path.iterdir())
    assert cli.main(["demo", "--quick", "--out", str(tmp_path)]) == 1
    assert "pip install scikit-learn" in capsys.readouterr().err


def test_the_samples_figure_shows_every_sampler_of_the_table():
    from dsno.demo import GRID_ROWS

    assert [name for name, _ in GRID_ROWS] == list(SAMPLERS)


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
    assert float(teacher.eigenvalues.min()) >= 1e-3 - 1e-12  # the floor keeps every component well conditioned


def test_a_rerun_reuses_or_replaces_the_trajectories(demo, tmp_path):
    import dataclasses
    import shutil

    from dsno.demo import _pipeline_config, _remove_stale_trajectories

    _remove_stale_trajectories(_pipeline_config(QUICK, demo, "cpu"), log=lambda message: None)
    assert (demo / "traj" / "manifest.json").is_file()  # same settings: kept (generation then finds it done)
    shutil.copytree(demo / "traj", tmp_path / "traj")
    shutil.copy(demo / "teacher_gmm.npz", tmp_path / "teacher_gmm.npz")
    other = dataclasses.replace(QUICK, overrides=QUICK.overrides + ("traj.num_samples=1025",))
    _remove_stale_trajectories(_pipeline_config(other, tmp_path, "cpu"), log=lambda message: None)
    assert not (tmp_path / "traj").exists()


def test_kd_is_one_output_point_trained_on_the_endpoint_only_with_dsno_s_data_and_steps(demo):
    from dsno.checkpoint import load_checkpoint
    from dsno.trajectories import TrajectoryDataset

    dataset = TrajectoryDataset(demo / "traj")
    kd, dsno = load_checkpoint(demo / "kd" / "checkpoint.pt"), load_checkpoint(demo / "train" / "checkpoint.pt")
    assert kd["config"]["model"]["overrides"]["num_time_points"] == 1
    assert kd["config"]["train"]["time_points"] == [-1]
    assert kd["logsnr"] == [dataset.logsnr[-1].item()] and kd["t"] == [dataset.t[-1].item()]
    assert dsno["logsnr"] == dataset.logsnr.tolist() and dsno["config"]["train"]["time_points"] is None
    # the same data, batches, steps, seed and optimiser: only the KD overrides and the folder differ
    assert kd["step"] == dsno["step"] == QUICK_STEPS
    assert kd["config"]["train"]["data"] == dsno["config"]["train"]["data"]
    for section in ("train", "traj", "schedule", "teacher", "data"):
        differ = {key for key in dsno["config"][section] if kd["config"][section][key] != dsno["config"][section][key]}
        assert differ <= {"out", "time_points"}, (section, differ)
    assert set(KD_OVERRIDES) == {"model.overrides.num_time_points", "model.overrides.num_modes", "train.time_points"}
    # its loss was computed on the endpoint alone, every logged step
    records = [json.loads(line) for line in (demo / "kd" / "metrics.jsonl").read_text().splitlines()]
    assert records and all(len(record["loss_per_point"]) == 1 for record in records)
    model_weights = kd["ema"]
    temporal = [key for key in model_weights if key.endswith("temporal.weight")]
    assert temporal and all(model_weights[key].shape[2] == 1 for key in temporal)  # K = 1


def test_dsno_versus_kd_and_the_machine_load_are_reported(demo):
    metrics = json.loads((demo / "metrics.json").read_text())
    for name in SAMPLERS:
        for key in ("fd_to_teacher", "fd_to_digits", "mse_to_teacher", "seconds_per_sample"):
            assert np.isfinite(metrics["samplers"][name][key]), (name, key)
    assert set(metrics["dsno_beats"]) == {"kd", "ddim1", "ddim2", "ddim4"}
    for key, entry in metrics["dsno_vs_kd"].items():
        assert entry["dsno"] == metrics["samplers"]["dsno"][key] and entry["kd"] == metrics["samplers"]["kd"][key]
        assert entry["dsno_lower"] == (entry["dsno"] < entry["kd"])
    paired = metrics["dsno_minus_kd_mse_per_noise"]
    dsno, kd = np.load(demo / "samples_dsno.npy"), np.load(demo / "samples_kd.npy")
    teacher = np.load(demo / "samples_teacher.npy")
    assert paired["mean"] == pytest.approx(float((per_sample_mse(dsno, teacher) - per_sample_mse(kd, teacher)).mean()))
    assert np.isfinite(paired["standard_error"]) and paired["standard_error"] > 0
    assert metrics["samplers"]["kd"]["time_points"] == 1 and metrics["samplers"]["dsno"]["time_points"] == 4
    assert metrics["samplers"]["kd"]["trained_on_time_points"] == [-1]
    for when in ("before", "after"):
        machine = metrics["machine"][when]
        assert machine["cores"] >= 1 and len(machine["loadavg_1_5_15_min"]) == 3
    assert metrics["total_seconds"] > sum(metrics["stage_seconds"].values()) * 0.99


def test_the_ablation_trains_every_m_and_k_on_the_matching_points(tmp_path):
    from dsno.checkpoint import load_checkpoint
    from dsno.schedule import output_time_points

    threads = torch.get_num_threads()
    try:
        assert (
            cli.main(["demo", "--quick", "--ablation", "--train-steps", "4", "--out", str(tmp_path), "--no-progress"])
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    ablation = json.loads((tmp_path / "ablation.json").read_text())
    assert [(row["M"], row["K"]) for row in ablation["rows"]] == list(ABLATION)
    assert {m for m, _ in ABLATION} == {1, 2, 4} and {k for _, k in ABLATION} == {1, 2, 3}
    for row in ablation["rows"]:
        expected = output_time_points(256, row["M"], "quadratic").logsnr.tolist()
        assert row["logsnr"] == pytest.approx(expected, rel=1e-6), row
        state = load_checkpoint(tmp_path / "ablation" / f"M{row['M']}-K{row['K']}" / "checkpoint.pt")
        assert state["step"] == 4 == row["train_steps"]
        assert state["config"]["model"]["overrides"]["num_modes"] == row["K"]
        for key in ("fd_to_teacher", "fd_to_digits", "mse_to_teacher"):
            assert np.isfinite(row[key]), (row, key)
    assert ablation["machine"]["before"]["loadavg_1_5_15_min"] is not None
    assert (tmp_path / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "train").exists()  # the ablation trains only its own variants


def test_bad_time_points_are_an_error_naming_the_setting(demo, tmp_path):
    from dsno.demo import _pipeline_config
    from dsno.train import train

    config = _pipeline_config(QUICK, demo, "cpu", train_steps=1)
    for bad in ([4], [-5], [], [3, 1], [1, 1], "last", [True]):
        config["train"]["time_points"] = bad
        config["train"]["out"] = str(tmp_path / "never")
        with pytest.raises(ValueError, match="train.time_points"):
            train(config, progress=False)
        assert not (tmp_path / "never").exists()


def test_the_digits_preset_is_what_the_demo_runs(demo):
    from dsno.config import presets

    assert "digits" in presets()
    preset = load_config("digits")
    assert preset["model"]["overrides"]["in_channels"] == 1 and preset["data"]["shape"] == [1, 8, 8]
    assert preset["schedule"]["num_steps"] == 256 and preset["traj"]["solver"] == "ddim"
    ran = json.loads((demo / "metrics.json").read_text())["config"]
    quick = load_config("digits", QUICK.overrides)
    for section in quick:
        for key, value in quick[section].items():
            if key in ("out", "data", "gmm_path", "checkpoint", "device"):
                continue  # paths under --out, and --device
            assert ran[section][key] == value, (section, key)


def test_bad_demo_settings_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--train-steps", "0", "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err == "dsno demo: error: --train-steps must be positive, got 0\n"
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------------
# `dsno demo --claim`: DSNO vs KD on two exact teachers, several seeds, paired statistics


QUICK_CLAIM_STEPS = [4, 8, 12, 16]  # the quick claim's 16 steps, measured at each quarter


@pytest.fixture(scope="module")
def claim(tmp_path_factory):
    out = tmp_path_factory.mktemp("claim")
    threads = torch.get_num_threads()
    try:
        assert cli.main(["demo", "--claim", "--quick", "--seeds", "2", "--out", str(out), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _independent_paired(a, b, t_quantile):
    """The claim's paired statistics, recomputed here from the per-noise MSEs [seeds, noises]."""
    d = a - b
    seeds, noises = d.shape
    means = d.mean(1)
    noise_se = d.mean(0).std(ddof=1) / np.sqrt(noises)
    se = np.sqrt(means.var(ddof=1) / seeds + noise_se**2)
    return means, d.std(1, ddof=1) / np.sqrt(noises), means.mean(), se, t_quantile * se


def test_claim_reports_every_seed_and_its_paired_statistics(claim):
    from scipy.stats import t

    from dsno.claim import COMPARISONS, MODELS, QUICK_CLAIM, TEACHERS, claim_summary

    summary = json.loads((claim / "claim.json").read_text())
    per_noise = np.load(claim / "claim-per-noise.npz")
    data = (claim / "claim.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24])[0] >= 600
    steps = QUICK_CLAIM_STEPS
    assert load_config("digits", QUICK_CLAIM.overrides)["train"]["steps"] == steps[-1] == 4 * steps[0]
    assert list(summary["teachers"]) == list(TEACHERS) and summary["settings"]["seeds"] == 2
    for name, teacher in summary["teachers"].items():
        assert teacher["endpoint_mse_vs_fine_grid"] < 1e-7, name  # Heun-256 is the ODE's endpoint
        assert teacher["fd_floor"] > 0 and np.isfinite(teacher["ddim4"]["fd_to_teacher"])
        assert list(teacher["models"]) == list(MODELS)
        for model, entry in teacher["models"].items():
            mse = per_noise[f"{name}/{model}"]
            assert mse.shape == (2, len(steps), QUICK_CLAIM.eval_samples)
            assert [point["step"] for point in entry["curve"]] == steps
            for point, values in enumerate(entry["curve"]):
                assert values["mse_to_teacher"]["per_seed"] == pytest.approx(mse[:, point].mean(1), rel=1e-12)
                assert len(values["fd_to_teacher"]["per_seed"]) == 2
        for comparison, (a, b) in COMPARISONS.items():
            for point, entry in enumerate(teacher["comparisons"][comparison]):
                means, ses, mean, se, half = _independent_paired(
                    per_noise[f"{name}/{a}"][:, point], per_noise[f"{name}/{b}"][:, point], t.ppf(0.975, 1)
                )
                assert [s["mean"] for s in entry["per_seed"]] == pytest.approx(means, rel=1e-9)
                assert [s["standard_error"] for s in entry["per_seed"]] == pytest.approx(ses, rel=1e-9)
                assert entry["mean"] == pytest.approx(mean, rel=1e-9) and entry["standard_error"] == pytest.approx(se)
                assert entry["interval_95"] == pytest.approx([mean - half, mean + half], rel=1e-9)
                assert entry["resolved"] == (abs(mean) > half)
                assert entry["lower"] == ((a if mean < 0 else b) if abs(mean) > half else None)
    assert summary["summary"] == claim_summary(summary) and len(summary["summary"]) == 2
    assert all("DSNO − KD = " in line and "DSNO − KD equal-compute = " in line for line in summary["summary"])
    run = summary["run"]
    assert len(run["jobs"]) == 2 + 2 * 3 * 2 and run["threads_per_worker"] == 1 and run["workers"] >= 1
    assert all(job["cpu_seconds"] > 0 and len(job["loadavg_1_5_15_min_at_end"]) == 3 for job in run["jobs"])
    assert run["cpu_seconds"]["worker_processes"] >= 0.9 * run["cpu_seconds"]["jobs"] > 0


def test_claim_models_share_data_seeds_and_optimiser_and_are_measured_as_recorded(claim):
    from dsno.checkpoint import load_checkpoint
    from dsno.claim import MODELS, TEACHERS
    from dsno.sample import load_sampler
    from dsno.trajectories import TrajectoryDataset

    summary = json.loads((claim / "claim.json").read_text())
    per_noise = np.load(claim / "claim-per-noise.npz")
    for name in TEACHERS:
        folder = claim / "claim" / name
        dataset = TrajectoryDataset(folder / "traj")
        assert dataset.spec.solver == "heun" and dataset.spec.num_steps == 256
        assert dataset.spec.teacher["kind"] == {"mixture": "gmm", "kde": "kde"}[name]
        noise = np.load(folder / "noise.npy")
        trained_on = {dataset[i]["noise"].numpy().tobytes() for i in range(len(dataset))}
        assert not trained_on & {row.tobytes() for row in noise}
        endpoint = np.load(folder / "teacher_endpoints.npy")
        for seed in range(2):
            states = {model: load_checkpoint(folder / f"seed{seed}" / model / "checkpoint.pt") for model in MODELS}
            assert not list((folder / f"seed{seed}").glob("*/checkpoint-*.pt"))  # measured, then removed
            dsno, kd, kd_equal = (states[m]["config"] for m in MODELS)
            for config in (dsno, kd, kd_equal):
                assert config["train"]["seed"] == seed and config["train"]["data"] == str(folder / "traj")
            for section in ("train", "traj", "schedule", "teacher", "data"):
                differ = {key for key in dsno[section] if kd_equal[section][key] != dsno[section][key]}
                assert differ <= {"out", "time_points", "batch_size"}, (section, differ)
            model_differ = {k for k, v in dsno["model"]["overrides"].items() if kd_equal["model"]["overrides"][k] != v}
            assert model_differ == {"num_time_points", "num_modes"} and kd["model"] == kd_equal["model"]
            assert kd["train"] == {
                **kd_equal["train"],
                "batch_size": dsno["train"]["batch_size"],
                "out": kd["train"]["out"],
            }
            assert kd_equal["train"]["batch_size"] == 4 * dsno["train"]["batch_size"]
            assert kd["train"]["time_points"] == [-1] and kd["model"]["overrides"]["num_time_points"] == 1
            assert dsno["train"]["time_points"] is None and dsno["model"]["overrides"]["num_time_points"] == 4
            evaluations = {m: summary["teachers"][name]["models"][m]["backbone_evaluations_per_step"] for m in MODELS}
            assert evaluations["dsno"] == evaluations["kd_equal"] == 4 * evaluations["kd"]
            for model in MODELS:
                assert states[model]["step"] == QUICK_CLAIM_STEPS[-1]
                sampler, meta = load_sampler(folder / f"seed{seed}" / model / "checkpoint.pt")
                with torch.no_grad():
                    samples = sampler(torch.from_numpy(noise), torch.tensor(meta["logsnr"]))[:, -1].clamp(-1, 1)
                np.testing.assert_allclose(
                    per_sample_mse(samples, endpoint), per_noise[f"{name}/{model}"][seed, -1], rtol=1e-6, atol=1e-9
                )


def test_claim_teacher_endpoints_are_the_exact_teachers_from_the_held_out_noises(claim):
    from dsno.claim import QUICK_CLAIM
    from dsno.digits import fit_gaussian_mixture, load_digits
    from dsno.schedule import LogSNRSchedule, time_grid
    from dsno.teachers import KernelDensityTeacher, solve
    from dsno.trajectories import sample_noise

    summary = json.loads((claim / "claim.json").read_text())
    digits, labels = load_digits()
    teachers = {
        "mixture": fit_gaussian_mixture(digits, labels),
        "kde": KernelDensityTeacher(torch.from_numpy(digits), summary["teachers"]["kde"]["description"]["width"]),
    }
    rows = [0, 1, QUICK_CLAIM.eval_samples - 1]
    noise, _ = sample_noise(rows, [1, 8, 8], QUICK_CLAIM.eval_seed)
    for name, teacher in teachers.items():
        expected = solve(teacher, noise, LogSNRSchedule().logsnr(time_grid(256)), [256], solver="heun")[:, 0]
        saved = np.load(claim / "claim" / name / "teacher_endpoints.npy")[rows]
        np.testing.assert_allclose(saved, expected.clamp(-1, 1).numpy(), rtol=0, atol=1e-6, err_msg=name)


def _exit_code(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit:  # argparse's own mistakes (exit 2)
        return exit.code


def test_bad_claim_settings_are_one_line_errors_before_any_output(tmp_path, capsys):
    for argv, message, code in (
        (["--seeds", "0"], "--seeds must be positive, got 0", 1),
        (["--ablation"], "choose one", 1),
        (["--train-steps", "6"], "multiple of 4", 1),
        (["--threads", "0"], "--threads: must be a positive integer, got '0'", 2),
        (["--device", "cuda:7"], "device", 1),
    ):
        assert _exit_code(["demo", "--claim", "--out", str(tmp_path / "x"), *argv]) == code, argv
        err = capsys.readouterr().err
        assert err.startswith("dsno demo: error: ") and message in err and err.count("\n") == 1, (argv, err)
        assert not (tmp_path / "x").exists(), argv
    (tmp_path / "file").write_text("")
    assert cli.main(["demo", "--claim", "--quick", "--out", str(tmp_path / "file" / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dsno demo: error: ") and "--out" in err and err.count("\n") == 1, err


def test_the_readme_claim_section_is_the_committed_claim_run():
    import dataclasses
    from pathlib import Path

    from dsno.claim import CLAIM, KDE_WIDTH, WIDTH_RULE, claim_summary, claim_table, fd_table, run_line, sweep_table

    docs = Path(__file__).resolve().parents[1] / "docs" / "demo"
    readme = " ".join((docs.parents[1] / "README.md").read_text().split())
    summary = json.loads((docs / "claim.json").read_text())
    assert (docs / "claim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the committed run is the default one, with the width the sweep's rule chose
    for key, value in dataclasses.asdict(CLAIM).items():
        assert summary["settings"][key] == (list(value) if isinstance(value, tuple) else value), key
    assert summary["settings"]["train_steps"] == load_config("digits")["train"]["steps"]
    sweep = json.loads((docs / "claim-width-sweep.json").read_text())
    assert sweep["rule"] == WIDTH_RULE and sweep["chosen"] == KDE_WIDTH == summary["settings"]["kde_width"]
    assert summary["summary"] == claim_summary(summary)
    for text in (claim_table(summary), fd_table(summary), *summary["summary"], run_line(summary), sweep_table(sweep)):
        assert " ".join(text.split()) in readme, text[:80]


def test_the_closing_line_states_dsno_versus_kd_as_measured(demo):
    import copy

    from dsno.demo import _closing_line

    metrics = json.loads((demo / "metrics.json").read_text())
    line = _closing_line(metrics, demo)
    for key, digits in (("fd_to_teacher", 4), ("mse_to_teacher", 5)):
        assert (
            f"{metrics['samplers']['kd'][key]:.{digits}f}" in line
            and f"{metrics['samplers']['dsno'][key]:.{digits}f}" in line
        )
    paired = metrics["dsno_minus_kd_mse_per_noise"]
    assert f"{paired['mean']:+.5f} +- {paired['standard_error']:.5f}" in line
    for mean, verdict in ((5.0, "KD is closer"), (-5.0, "DSNO is closer"), (1.0, "no MSE difference resolved")):
        changed = copy.deepcopy(metrics)
        changed["dsno_minus_kd_mse_per_noise"] = {"mean": mean * 1e-3, "standard_error": 1e-3}
        assert verdict in _closing_line(changed, demo), mean
    assert "than ddim1" in line  # test_dsno_is_closer_to_the_teacher_than_one_step_ddim: DSNO beats DDIM-1


def test_the_readme_claim_prose_is_what_claim_json_says():
    """The claim section's sentences around its tables, recomputed from the committed run."""
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs" / "demo"
    readme = " ".join((docs.parents[1] / "README.md").read_text().split())
    summary = json.loads((docs / "claim.json").read_text())
    sweep = json.loads((docs / "claim-width-sweep.json").read_text())
    teachers = summary["teachers"]

    def final(teacher, model, metric):
        return teachers[teacher]["models"][model]["curve"][-1][metric]["mean"]

    # "At the end of training DSNO and KD are indistinguishable on both teachers; against KD with equal compute,
    # DSNO is 18% closer on the kernel-density teacher and no difference is resolved on the mixture."
    assert "At the end of training DSNO and KD are indistinguishable on both teachers" in readme
    assert not any(teachers[t]["comparisons"]["dsno_minus_kd"][-1]["resolved"] for t in teachers)
    equal = {t: teachers[t]["comparisons"]["dsno_minus_kd_equal"] for t in teachers}
    assert not equal["mixture"][-1]["resolved"]
    assert equal["kde"][-1]["resolved"] and equal["kde"][-1]["lower"] == "dsno"
    assert f"DSNO is {-100 * equal['kde'][-1]['relative']:.0f}% closer on the kernel-density teacher" in readme
    # "equal-compute KD is ahead early (resolved at step 600 on the mixture and step 300 on the kernel-density
    # teacher)": the first step at which it is resolved and lower
    first = {
        t: next(c["step"] for c in equal[t] if c["resolved"] and c["lower"] == "kd_equal") for t in ("mixture", "kde")
    }
    assert f"resolved at step {first['mixture']} on the mixture and step {first['kde']} on the kernel-density" in readme
    # its MSE rises again after step 600 while its FD keeps falling
    curve = teachers["kde"]["models"]["kd_equal"]["curve"]
    mse = [point["mse_to_teacher"]["mean"] for point in curve]
    fd = [point["fd_to_teacher"]["mean"] for point in curve]
    lowest = curve[mse.index(min(mse))]["step"]
    assert f"its MSE rises again after step {lowest} while its FD keeps falling" in readme
    assert all(a > b for a, b in zip(fd, fd[1:])) and mse[-1] > min(mse)
    # DDIM-4 against DSNO and KD on the kernel-density teacher; only equal-compute KD beats it in FD
    ddim4 = teachers["kde"]["ddim4"]
    numbers = (
        f"FD {ddim4['fd_to_teacher']:.3f} against {final('kde', 'dsno', 'fd_to_teacher'):.3f} and "
        f"{final('kde', 'kd', 'fd_to_teacher'):.3f}, MSE {ddim4['mse_to_teacher']:.4f} against "
        f"{final('kde', 'dsno', 'mse_to_teacher'):.3f} and {final('kde', 'kd', 'mse_to_teacher'):.3f}"
    )
    assert numbers in readme, numbers
    assert final("kde", "kd_equal", "fd_to_teacher") < ddim4["fd_to_teacher"] < final("kde", "kd", "fd_to_teacher")
    # the resolvable differences, relative to KD's MSE
    share = {t: 100 * teachers[t]["comparisons"]["dsno_minus_kd"][-1]["relative_resolvable"] for t in teachers}
    sentence = f"{share['mixture']:.1f}% of KD's MSE on the mixture and {share['kde']:.1f}% on the kernel-density"
    assert sentence in readme, sentence
    # the sweep: DDIM-4's FD over the floor at every width, and the chosen width's one-pass FD over it
    ratios = [row["ddim4_over_floor"] for row in sweep["rows"]]
    assert not any(row["qualifies"] for row in sweep["rows"])
    assert f"within {min(ratios):.1f}-{max(ratios):.1f} times the floor at every width" in readme
    chosen = next(row for row in sweep["rows"] if row["width"] == sweep["chosen"])
    assert f"FD is {chosen['one_pass_over_floor']:.1f} times the floor" in readme
