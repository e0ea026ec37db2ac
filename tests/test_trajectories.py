"""Trajectory datasets: generation, exact resume after a crash, rank split, and the loader."""

import json

import numpy as np
import pytest
import torch

from dsno import trajectories
from dsno.teachers import GaussianMixtureTeacher, solve
from dsno.trajectories import (
    TrajectoryDataset,
    TrajectorySpec,
    finalize_manifest,
    generate,
    read_manifest,
    sample_noise,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py

SHAPE = [2, 3, 3]


@pytest.fixture(scope="module")
def teacher():
    return GaussianMixtureTeacher.random(SHAPE, 3, seed=0)


def make_spec(**changes):
    fields = dict(
        shape=SHAPE,
        num_samples=20,
        shard_size=6,
        seed=3,
        solver="heun",
        num_steps=8,
        num_points=3,
        spacing="quadratic",
        teacher={"kind": "gmm", "seed": 0},
    )
    fields.update(changes)
    return TrajectorySpec(**fields)


def run(teacher, spec, root, **kwargs):
    return generate(teacher, spec, root, batch_size=4, progress=False, **kwargs)


def dataset_files(root):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_noise_is_a_function_of_seed_and_index_only():
    noise, labels = sample_noise(range(6), SHAPE, seed=11, num_classes=5)
    part, part_labels = sample_noise([4, 2], SHAPE, seed=11, num_classes=5)
    assert torch.equal(part, noise[[4, 2]]) and torch.equal(part_labels, labels[[4, 2]])
    assert not torch.equal(sample_noise([0], SHAPE, seed=12)[0], noise[:1])
    assert labels.dtype == torch.int64 and int(labels.min()) >= 0 and int(labels.max()) < 5
    assert sample_noise(range(3), SHAPE, seed=11)[1] is None


def test_generated_dataset_holds_the_teacher_trajectories(tmp_path, teacher):
    spec = make_spec()
    manifest = run(teacher, spec, tmp_path)
    assert manifest["complete"] and manifest["num_shards"] == 4
    assert [s["count"] for s in manifest["shards"]] == [6, 6, 6, 2]
    assert manifest["time_indices"] == [4, 7, 8] and len(manifest["logsnr"]) == 3
    dataset = TrajectoryDataset(tmp_path)
    assert len(dataset) == 20
    noise = torch.stack([dataset[i]["noise"] for i in range(20)])
    traj = torch.stack([dataset[i]["trajectory"] for i in range(20)])
    assert noise.shape == (20, *SHAPE) and traj.shape == (20, 3, *SHAPE)
    assert torch.equal(noise, sample_noise(range(20), SHAPE, seed=3)[0])
    expected = solve(teacher, noise, spec.logsnr_grid(), [4, 7, 8], solver="heun", record="x0")
    torch.testing.assert_close(traj, expected, rtol=0, atol=1e-6)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert batch["noise"].shape == (5, *SHAPE) and batch["trajectory"].shape == (5, 3, *SHAPE)


def test_interrupted_generation_resumes_to_the_same_dataset(tmp_path, teacher, monkeypatch):
    spec = make_spec()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(teacher, spec, straight)

    # a time-limited job: one shard, then stop
    manifest = run(teacher, spec, resumed, max_new_shards=1)
    assert not manifest["complete"] and len(manifest["shards"]) == 1
    with pytest.raises(ValueError, match="incomplete"):
        TrajectoryDataset(resumed)

    # then a crash in the middle of the next shard (its second batch)
    calls = {"n": 0}

    def crashing_solve(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return solve(*args, **kwargs)

    monkeypatch.setattr(trajectories, "solve", crashing_solve)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(teacher, spec, resumed)
    monkeypatch.undo()
    assert any(p.name.endswith(".tmp") for p in resumed.iterdir())
    assert len(read_manifest(resumed)["shards"]) == 1

    manifest = run(teacher, spec, resumed)
    assert manifest["complete"]
    files = dataset_files(resumed)
    assert not any(name.endswith(".tmp") for name in files)
    assert files == dataset_files(straight)


def test_resume_refuses_a_different_dataset(tmp_path, teacher):
    run(teacher, make_spec(), tmp_path, max_new_shards=1)
    with pytest.raises(ValueError, match="solver"):
        run(teacher, make_spec(solver="ddim"), tmp_path)


def test_ranks_write_disjoint_shards_that_add_up_to_the_whole(tmp_path, teacher):
    spec = make_spec()
    run(teacher, spec, tmp_path / "one")
    split = tmp_path / "two"
    run(teacher, spec, split, rank=0, world_size=2)
    assert sorted(p.name for p in split.glob("shard-*.json")) == ["shard-00000.json", "shard-00002.json"]
    run(teacher, spec, split, rank=1, world_size=2)
    assert finalize_manifest(split)["complete"]
    assert dataset_files(split) == dataset_files(tmp_path / "one")


def test_half_precision_storage_and_labels(tmp_path, teacher):
    spec = make_spec(num_samples=7, dtype="float16", num_classes=10, record="xt")
    run(teacher, spec, tmp_path)
    dataset = TrajectoryDataset(tmp_path)
    assert np.load(tmp_path / "shard-00000.traj.npy", mmap_mode="r").dtype == np.float16
    item = dataset[6]
    assert item["trajectory"].dtype == torch.float32 and item["label"].dtype == torch.int64
    _, labels = sample_noise(range(7), SHAPE, seed=3, num_classes=10)
    assert [int(dataset[i]["label"]) for i in range(7)] == labels.tolist()
    assert dataset.num_classes == 10
    assert json.loads((tmp_path / "manifest.json").read_text())["spec"]["record"] == "xt"


@pytest.mark.parametrize("keyword", [{"batch_size": -3}, {"batch_size": 0}, {"max_new_shards": 0}])
def test_generate_refuses_bad_sizes_before_writing(tmp_path, keyword):
    spec = TrajectorySpec(shape=[2, 2, 2], num_samples=4, shard_size=2, num_steps=8, num_points=2)
    with pytest.raises(ValueError, match=next(iter(keyword))):
        generate(GaussianMixtureTeacher.random([2, 2, 2], 2, seed=0), spec, tmp_path / "out", progress=False, **keyword)
    assert not (tmp_path / "out").exists()
