"""Fault injection through the real `dsno` command: bad settings, damaged data and checkpoints, a full disk,
a kill in the middle of a write. Each case checks the exit status, that the error is one line naming the
setting or file (no traceback), and that nothing was written and nothing already on disk was lost.

Most cases call `cli.main` in this process (a subprocess costs seconds of torch import); a
representative few run `python -m dsno` in a subprocess, as a user would.
"""

import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dsno import cli

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py

REPO = Path(__file__).resolve().parents[1]


def settings(root: Path) -> list[str]:
    """A tiny gen-traj -> train -> sample pipeline (tiny DSNO model, 16 trajectories of 3x8x8) under root."""
    values = {
        "traj.out": root / "traj",
        "train.out": root / "train",
        "train.data": "null",
        "sample.out": root / "samples",
        "sample.checkpoint": "null",
        "schedule.num_steps": 16,
        "traj.num_samples": 16,
        "traj.shard_size": 8,
        "traj.batch_size": 8,
        "train.batch_size": 4,
        "train.steps": 2,
        "train.warmup": 0,
        "train.log_every": 1,
        "train.save_every": 1,
        "sample.num_samples": 4,
        "sample.batch_size": 4,
        "traj.device": "cpu",
        "train.device": "cpu",
        "sample.device": "cpu",
    }
    return ["-c", "tiny", "--no-progress"] + [
        arg for key, value in values.items() for arg in ("--set", f"{key}={value}")
    ]


def run(capsys, *argv):
    """(exit status, stdout, stderr) of `dsno argv` run in this process."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exit_info:
        status = exit_info.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(err: str, command: str, *fragments: str) -> str:
    assert "Traceback" not in err and "usage:" not in err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"dsno {command}: error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A finished dataset, training run and sample folder; tests copy what they damage."""
    root = tmp_path_factory.mktemp("pipeline")
    for command in ("gen-traj", "train", "sample"):
        assert cli.main([command, *settings(root)]) == 0
    return root


@pytest.fixture
def copy_of(pipeline, tmp_path):
    import shutil

    def copy(*names):
        for name in names:
            shutil.copytree(pipeline / name, tmp_path / name)
        return tmp_path

    return copy


# --------------------------------------------------------------------------------------------------
# 2. Every numeric setting is checked before anything is written


BAD_SETTINGS = [
    # (command, extra arguments, text the error must contain)
    ("gen-traj", ["--batch-size", "-3"], "traj.batch_size=-3"),
    ("gen-traj", ["--num-samples", "0"], "traj.num_samples=0"),
    ("gen-traj", ["--shard-size", "0"], "traj.shard_size=0"),
    ("gen-traj", ["--solver-steps", "0"], "schedule.num_steps=0"),
    ("gen-traj", ["--set", "traj.max_new_shards=0"], "traj.max_new_shards=0"),
    ("gen-traj", ["--set", "schedule.num_points=40"], "schedule:"),
    ("gen-traj", ["--set", "teacher.gmm_components=0"], "teacher.gmm_components=0"),
    ("gen-traj", ["--device", "gpu"], "traj.device='gpu'"),
    ("train", ["--set", "train.steps=abc"], "train.steps='abc': must be a valid integer"),
    ("train", ["--set", "train.lr=fast"], "train.lr='fast': must be a valid number"),
    ("train", ["--steps", "0"], "train.steps=0: must be greater than or equal to 1"),
    ("train", ["--steps", "-5"], "train.steps=-5"),
    ("train", ["--set", "train.steps=2.5"], "train.steps=2.5"),
    ("train", ["--set", "train.grad_accum=0"], "train.grad_accum=0"),
    ("train", ["--batch-size", "0"], "train.batch_size=0"),
    ("train", ["--set", "train.save_every=0"], "train.save_every=0"),
    ("train", ["--set", "train.log_every=0"], "train.log_every=0"),
    ("train", ["--set", "train.keep_every=-1"], "train.keep_every=-1"),
    ("train", ["--set", "train.warmup=-1"], "train.warmup=-1"),
    ("train", ["--set", "train.milestones=[100, -5]"], "train.milestones.1=-5"),
    ("train", ["--set", "train.ema_decay=1.5"], "train.ema_decay=1.5"),
    ("train", ["--set", "train.lr=.nan"], "train.lr=nan"),
    ("train", ["--set", "train.betas=[0.9]"], "train.betas=[0.9]"),
    ("train", ["--set", "train.num_workers=-1"], "train.num_workers=-1"),
    ("train", ["--set", "train.bf16=maybe"], "train.bf16='maybe'"),
    ("sample", ["--num-samples", "0"], "sample.num_samples=0"),
    ("sample", ["--batch-size", "-1"], "sample.batch_size=-1"),
    ("sample", ["--set", "sample.png_scale=0"], "sample.png_scale=0"),
    ("config", ["--set", "schedule.t_min=2"], "schedule.t_min=2"),
]


@pytest.mark.parametrize("command, extra, message", BAD_SETTINGS, ids=[f"{c}{' '.join(e)}" for c, e, _ in BAD_SETTINGS])
def test_bad_setting_is_refused_before_anything_is_written(tmp_path, capsys, command, extra, message):
    common = [arg for arg in settings(tmp_path) if command != "config" or arg != "--no-progress"]
    status, out, err = run(capsys, command, *common, *extra)
    assert status == 2 and out == ""
    assert err.count("\n") == 1, err  # one line, as README says: no usage block
    assert_one_line_error(err, command, message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, command, message",
    [
        (["config", "-c", "tiny", "--no-progress"], "config", "unrecognized arguments: --no-progress"),
        (["train", "--steps", "5"], "train", "the following arguments are required: -c/--config"),
        (["gen-traj", "-c", "tiny", "--threads", "0"], "gen-traj", "--threads: must be a positive integer, got '0'"),
        (["sample", "-c", "tiny", "--num-samples", "many"], "sample", "--num-samples: invalid int value: 'many'"),
    ],
)
def test_option_mistakes_are_one_line_naming_the_command(capsys, argv, command, message):
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == "" and err.count("\n") == 1, err
    assert_one_line_error(err, command, message, f"`dsno {command} --help` lists the options")
    status, _, err = run(capsys, "--no-such-flag")
    assert status == 2 and err.count("\n") == 1 and err.startswith("dsno: error: "), err


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from dsno.config import ConfigError

    with pytest.raises(ConfigError, match="train.steps=0"):
        cli.main(["train", *settings(tmp_path), "--steps", "0", "--debug"])
    monkeypatch.setenv("DSNO_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["train", *settings(tmp_path)])


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_says_where_a_rerun_starts(copy_of, capsys, monkeypatch):
    from dsno import sample, train, trajectories

    root = copy_of("traj", "train")
    monkeypatch.setattr(train, "train", _interrupted)
    monkeypatch.setattr(trajectories, "generate_from_config", _interrupted)
    monkeypatch.setattr(sample, "sample", _interrupted)
    checkpoint = root / "train" / "checkpoint.pt"
    expected = {  # (command, extra arguments): the one line it prints
        ("train", ()): f"dsno train: interrupted; the same command resumes from step 2 ({checkpoint})",
        ("train", ("--set", f"train.out={root / 'new'}")): "dsno train: interrupted; no checkpoint was written "
        "yet (one every train.save_every=1 steps): the same command starts again from step 0",
        ("train", ("--set", "train.resume=false")): "dsno train: interrupted; train.resume is false: the same "
        "command starts again from step 0",
        ("gen-traj", ()): "dsno gen-traj: interrupted; 2 of 2 shards are finished and kept: the same command "
        "generates the other 0",
        ("gen-traj", ("--set", f"traj.out={root / 'new'}")): "dsno gen-traj: interrupted; no shard was finished "
        "yet: the same command starts again",
        ("sample", ()): "dsno sample: interrupted; nothing was written, and earlier outputs are as they were",
    }
    (root / "traj" / "shard-00001.json").unlink()  # as if the run had been stopped in its second shard
    expected["gen-traj", ()] = expected["gen-traj", ()].replace("2 of 2", "1 of 2").replace("other 0", "other 1")
    for (command, extra), line in expected.items():
        status, _, err = run(capsys, command, *settings(root), *extra)
        assert status == 130 and err.strip() == line, (command, extra, err)
    assert not (root / "new").exists()


def test_ctrl_c_inside_torch_save_stays_an_interrupt(tmp_path, monkeypatch):
    """torch.save's zip writer, interrupted, fails again as it closes: the interrupt is what comes out (so the
    CLI reports it in one line), the earlier file stays and no temporary is left."""
    from dsno.checkpoint import save_checkpoint

    def interrupted_save(obj, handle):  # what torch 2.14's torch.save does on Ctrl-C in write_record
        try:
            handle.write(b"part of a zip archive")
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 101824 vs 101776")

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the earlier checkpoint")
    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 1}, path)
    assert path.read_bytes() == b"the earlier checkpoint" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_ctrl_c_in_a_real_run_names_the_step_its_checkpoint_holds(tmp_path):
    """SIGINT, as Ctrl-C sends it, to `python -m dsno train` once it has written a checkpoint."""
    from dsno.checkpoint import load_checkpoint

    common = [*settings(tmp_path), "--set", "train.steps=100000", "--set", "train.save_every=5"]
    assert cli.main(["gen-traj", *common]) == 0
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dsno", "train", *map(str, common)],
        env=environment,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, even if ignored here
    )
    metrics = tmp_path / "train" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and any(json.loads(line)["step"] >= 10 for line in metrics.read_text().splitlines()):
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    step = load_checkpoint(tmp_path / "train" / "checkpoint.pt")["step"]
    assert process.returncode == 130 and step >= 5 and step % 5 == 0, err  # step 10 logged: at least 5 saved
    assert err.strip().splitlines()[-1] == (
        f"dsno train: interrupted; the same command resumes from step {step} ({tmp_path / 'train' / 'checkpoint.pt'})"
    ), err


def test_steps_below_the_checkpoint_are_refused(copy_of, capsys):
    root = copy_of("traj", "train")
    before = snapshot(root / "train")
    status, _, err = run(capsys, "train", *settings(root), "--steps", "1")
    assert status == 1
    assert_one_line_error(err, "train", "checkpoint.pt is at step 2, past train.steps=1", "set train.steps >= 2")
    assert snapshot(root / "train") == before
    status, out, _ = run(capsys, "train", *settings(root), "--steps", "2")
    assert status == 0 and "already at step 2" in out


# --------------------------------------------------------------------------------------------------
# 3. One-line errors for expected failures


def test_missing_dataset(tmp_path, capsys):
    status, _, err = run(capsys, "train", *settings(tmp_path))
    assert status == 1
    assert_one_line_error(err, "train", str(tmp_path / "traj"), "dsno gen-traj")
    assert not (tmp_path / "train").exists()


def test_incomplete_dataset_counts_the_finished_shards(tmp_path, capsys):
    assert (
        cli.main(["gen-traj", *settings(tmp_path), "--set", "traj.num_samples=24", "--set", "traj.max_new_shards=2"])
        == 0
    )
    capsys.readouterr()
    # as a run killed before it updated the manifest: the shard markers are the record
    manifest_path = tmp_path / "traj" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"] = []
    manifest_path.write_text(json.dumps(manifest))
    status, _, err = run(capsys, "train", *settings(tmp_path))
    assert status == 1
    assert_one_line_error(err, "train", "incomplete (2 of 3 shards finished)", "dsno gen-traj")


@pytest.mark.parametrize("command, key", [("gen-traj", "traj.out"), ("train", "train.out"), ("sample", "sample.out")])
def test_output_folder_that_is_a_file(copy_of, capsys, command, key):
    root = copy_of("traj", "train")
    blocker = root / "blocker"
    blocker.write_text("keep me")
    before = snapshot(root)
    status, _, err = run(capsys, command, *settings(root), "--set", f"{key}={blocker / 'sub'}")
    assert status == 1
    assert_one_line_error(err, command, key, str(blocker))
    assert snapshot(root) == before


def test_output_folder_that_cannot_be_written(copy_of, capsys, monkeypatch):
    # as root every folder is writable, so the permission is denied by patching os.access
    root = copy_of("train")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != root)
    status, _, err = run(capsys, "sample", *settings(root), "--set", f"sample.out={root / 'new'}")
    assert status == 1
    assert_one_line_error(err, "sample", "sample.out", f"cannot write into {root}")
    assert not (root / "new").exists()


def test_unavailable_device(copy_of, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    root = copy_of("traj", "train")
    status, _, err = run(capsys, "sample", *settings(root), "--device", "cuda")
    assert status == 1
    line = assert_one_line_error(err, "sample", "CUDA is not available", "--device cpu")
    assert not (root / "samples").exists()
    # the demo refuses the same way, before it creates anything
    status, _, err = run(capsys, "demo", "--quick", "--no-progress", "--device", "cuda", "--out", root / "demo")
    assert status == 1 and err.strip() == line.replace("dsno sample", "dsno demo")
    assert not (root / "demo").exists()
    status, _, err = run(capsys, "demo", "--quick", "--device", "gpu", "--out", root / "demo")
    assert status == 1 and not (root / "demo").exists()
    assert_one_line_error(err, "demo", "device 'gpu': must be auto, cpu, cuda or cuda:N")


def test_demo_output_folder_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    status, _, err = run(capsys, "demo", "--quick", "--no-progress", "--out", blocker)
    assert status == 1
    assert_one_line_error(err, "demo", str(blocker), "--out: the output folder is a file; choose a folder path")
    status, _, err = run(capsys, "demo", "--quick", "--no-progress", "--out", blocker / "sub")
    assert_one_line_error(err, "demo", "--out: the output folder is under", str(blocker))
    status, _, err = run(capsys, "demo", "--quick", "--train-steps", "0", "--out", tmp_path / "x")
    assert status == 1 and not (tmp_path / "x").exists()
    assert_one_line_error(err, "demo", "--train-steps must be positive, got 0")
    assert snapshot(tmp_path) == {"blocker": b"keep me"}


# --------------------------------------------------------------------------------------------------
# 4. Data on disk: checked shards, regenerated on resume, preallocated, atomic outputs


def test_truncated_shard_is_named_when_opened_and_regenerated_on_resume(copy_of, pipeline, capsys):
    root = copy_of("traj")
    shard = root / "traj" / "shard-00001.traj.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    status, _, err = run(capsys, "train", *settings(root))
    assert status == 1
    assert_one_line_error(err, "train", str(shard), "bytes", "dsno gen-traj")
    # gen-traj finds it too (the old code said "2/2 shards, complete") and writes it again
    status, out, _ = run(capsys, "gen-traj", *settings(root))
    assert status == 0 and "regenerating shard-00001" in out and "2/2 shards, complete" in out
    assert snapshot(root / "traj") == snapshot(pipeline / "traj")


def test_overwritten_shard_fails_the_checksum(copy_of, capsys):
    root = copy_of("traj")
    shard = root / "traj" / "shard-00000.noise.npy"
    data = bytearray(shard.read_bytes())
    data[-4:] = b"\0\0\0\0"
    shard.write_bytes(bytes(data))
    status, _, err = run(capsys, "train", *settings(root))
    assert status == 1
    assert_one_line_error(err, "train", str(shard), "checksum")


def test_stale_temporaries_are_removed(copy_of, pipeline, capsys):
    root = copy_of("traj")
    stale = [root / "traj" / "shard-00001.traj.npy.tmp", root / "traj" / ".manifest.json.abc.tmp"]
    for path in stale:
        path.write_bytes(b"left by a killed run")
    assert run(capsys, "gen-traj", *settings(root))[0] == 0
    assert not any(path.exists() for path in stale)
    assert snapshot(root / "traj") == snapshot(pipeline / "traj")


def test_full_disk_during_gen_traj_is_a_clear_error(tmp_path, capsys, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    status, _, err = run(capsys, "gen-traj", *settings(tmp_path))
    assert status == 1
    assert_one_line_error(err, "gen-traj", "shard-00000", "no space left")
    assert not list((tmp_path / "traj").glob("*.tmp")) and not list((tmp_path / "traj").glob("shard-*"))
    monkeypatch.undo()
    assert run(capsys, "gen-traj", *settings(tmp_path))[0] == 0  # and a rerun with space finishes it


def _fail_on(monkeypatch, module, name, after: int, error: BaseException):
    """Make module.name raise `error` on its (after + 1)-th call."""
    real = getattr(module, name)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


@pytest.mark.parametrize("after", [0, 1, 3])
def test_full_disk_during_sample_keeps_the_earlier_output(copy_of, capsys, monkeypatch, after):
    root = copy_of("traj", "train", "samples")
    before = snapshot(root / "samples")
    # the failure hits the (after + 1)-th file: with a different seed every file would change
    _fail_on(monkeypatch, os, "fsync", after, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    status, _, err = run(capsys, "sample", *settings(root), "--seed", "7")
    assert status == 1
    assert_one_line_error(err, "sample", str(root / "samples"), "no space left")
    assert snapshot(root / "samples") == before


def test_full_disk_during_eval_keeps_the_earlier_json(copy_of, capsys, monkeypatch):
    root = copy_of("traj", "samples")
    reference, samples = root / "traj" / "shard-00000.traj.npy", root / "samples" / "trajectory.npy"
    result = root / "eval.json"
    assert run(capsys, "eval", samples, "--reference", reference, "--json", result)[0] == 0
    good = result.read_bytes()
    assert json.loads(good)["results"][str(samples)]["num_samples"] == 4
    _fail_on(monkeypatch, os, "fsync", 0, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    status, _, err = run(capsys, "eval", samples, "--reference", samples, "--json", result)
    assert status == 1
    assert_one_line_error(err, "eval", str(result), "no space left")
    assert result.read_bytes() == good and [p.name for p in root.iterdir() if p.is_file()] == ["eval.json"]


def test_eval_takes_a_trajectory_dataset_folder_as_its_last_time_point(copy_of, capsys, tmp_path):
    root = copy_of("traj", "samples")
    samples = root / "samples" / "trajectory.npy"
    final = np.concatenate([np.load(root / "traj" / f"shard-0000{i}.traj.npy")[:, -1] for i in (0, 1)])
    np.save(tmp_path / "final.npy", final)
    for reference in (root / "traj", tmp_path / "final.npy"):
        status, _, _ = run(
            capsys, "eval", samples, root / "traj", "--reference", reference, "--json", tmp_path / "e.json"
        )
        assert status == 0
        results = json.loads((tmp_path / "e.json").read_text())["results"]
        assert results[str(root / "traj")]["num_samples"] == 16 and results[str(root / "traj")]["mse"] == 0.0
        if reference == root / "traj":
            by_folder = results[str(samples)]["frechet_distance"]
    assert results[str(samples)]["frechet_distance"] == by_folder  # the folder is exactly its final states
    # a folder that is not a dataset, and one that is not finished
    status, _, err = run(capsys, "eval", samples, "--reference", root / "samples")
    assert status == 1
    assert_one_line_error(err, "eval", str(root / "samples"), "not a trajectory dataset")
    (root / "traj" / "shard-00001.traj.npy").write_bytes(b"")
    status, _, err = run(capsys, "eval", samples, "--reference", root / "traj")
    assert status == 1
    assert_one_line_error(err, "eval", "shard-00001.traj.npy", "dsno gen-traj")


def test_eval_says_what_it_accepts_and_warns_about_few_samples(copy_of, capsys, tmp_path):
    root = copy_of("samples")
    samples = root / "samples" / "trajectory.npy"
    status, _, err = run(capsys, "eval", samples, "--reference", samples)
    assert status == 0 and "N=4 samples of D=192 values" in err
    (tmp_path / "text.npy").write_text("not an array")
    status, _, err = run(capsys, "eval", tmp_path / "text.npy", "--reference", samples)
    assert status == 1
    assert_one_line_error(err, "eval", "text.npy", "not a readable .npy")
    np.save(tmp_path / "one.npy", np.zeros((1, 3, 8, 8)))
    status, _, err = run(capsys, "eval", tmp_path / "one.npy", "--reference", samples)
    assert_one_line_error(err, "eval", "one.npy", "at least 2")
    status, _, err = run(capsys, "eval", samples, "--reference", samples, "--json", root / "samples" / "x" / "e.json")
    assert status == 0
    status, _, err = run(capsys, "eval", samples, "--reference", samples, "--json", samples / "e.json")
    assert_one_line_error(err, "eval", "--json", str(samples))


def test_files_are_created_0644(pipeline):
    old = os.umask(0o022)
    os.umask(old)
    if old != 0o022:
        pytest.skip(f"umask is {old:o}")
    for path in [
        pipeline / "train" / "checkpoint.pt",
        pipeline / "train" / "config.yaml",
        pipeline / "traj" / "manifest.json",
        pipeline / "traj" / "shard-00000.json",
        pipeline / "traj" / "shard-00000.traj.npy",
        pipeline / "samples" / "trajectory.npy",
        pipeline / "samples" / "samples.png",
    ]:
        assert path.stat().st_mode & 0o777 == 0o644, path


# --------------------------------------------------------------------------------------------------
# 5. Checkpoints are data


class Payload:
    """Unpickling this creates `path`: a stand-in for code a crafted checkpoint would run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _damaged_checkpoints(root: Path) -> dict[str, tuple[Path, str]]:
    good = (root / "train" / "checkpoint.pt").read_bytes()
    not_torch = "checkpoint is not a file written by torch.save: it begins with"
    files = {
        "garbage": (b"\x00garbage" * 100, f"{not_torch} b'\\x00garbage\\x00garbage'"),
        "truncated": (good[: len(good) // 2], "checkpoint is truncated or damaged: it begins as torch.save's zip"),
        "empty": (b"", "checkpoint is empty (0 bytes)"),
        "text": (b"root:x:0:0:root:/root:/bin/bash\n" * 3, f"{not_torch} b'root:x:0:0:root:'"),
        "pickle": (
            pickle.dumps({"step": list(range(100))})[:-20],
            "truncated or damaged: it begins as torch.save's pickle",
        ),
    }
    made = {}
    for name, (data, message) in files.items():
        (root / f"{name}.pt").write_bytes(data)
        made[name] = (root / f"{name}.pt", message)
    torch.save({"weights": torch.zeros(3)}, root / "foreign.pt")
    made["foreign"] = (root / "foreign.pt", "not a dsno training checkpoint")
    return made


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "text", "pickle", "foreign"])
def test_damaged_checkpoint(copy_of, capsys, kind):
    root = copy_of("train")
    path, message = _damaged_checkpoints(root)[kind]
    status, _, err = run(capsys, "sample", *settings(root), "--checkpoint", path)
    assert status == 1
    line = assert_one_line_error(err, "sample", str(path), message)
    assert not re.search(r"\(\w*\)|\(\d+\)|index out of range", line), line  # in words, no bare codes
    assert not (root / "samples").exists()


def test_every_torch_load_is_weights_only():
    package = REPO / "dsno"
    calls = [
        (path.name, line)
        for path in sorted(package.glob("*.py"))
        for line in path.read_text().splitlines()
        if "torch.load(" in line
    ]
    assert calls and all("weights_only=True" in line for _, line in calls), calls


def test_malicious_checkpoint_does_not_run(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    torch.save({"version": 2, "step": 1, "model": Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()
    marker.unlink()
    status, _, err = run(capsys, "sample", *settings(tmp_path), "--checkpoint", tmp_path / "evil.pt")
    assert status == 1
    assert_one_line_error(err, "sample", "evil.pt", "could run code")
    assert not marker.exists()
    # a pickle that is not even a torch file is refused too
    (tmp_path / "plain.pt").write_bytes(pickle.dumps(Payload(marker)))
    status, _, err = run(capsys, "sample", *settings(tmp_path), "--checkpoint", tmp_path / "plain.pt")
    assert status == 1 and not marker.exists()
    assert_one_line_error(err, "sample", "plain.pt")


def test_checkpoint_of_another_model(copy_of, capsys):
    root = copy_of("traj", "train")
    before = snapshot(root / "train")
    status, _, err = run(capsys, "train", *settings(root), "--steps", "3", "--set", "model.overrides={temb_dim: 64}")
    assert status == 1
    assert_one_line_error(err, "train", "checkpoint.pt", "do not fit the model", "temb_dim")
    assert snapshot(root / "train") == before


def test_teacher_and_backbone_weights_are_checked(copy_of, capsys):
    root = copy_of("traj")
    (root / "bad.pt").write_bytes(b"nonsense")
    status, _, err = run(capsys, "train", *settings(root), "--init-backbone", root / "bad.pt")
    assert status == 1
    assert_one_line_error(err, "train", "bad.pt", "train.init_backbone")
    status, _, err = run(
        capsys,
        "gen-traj",
        *settings(root),
        "--set",
        "traj.out=" + str(root / "t2"),
        "--set",
        "teacher.kind=backbone",
        "--set",
        "teacher.backbone=tiny",
        "--teacher-weights",
        root / "missing.pt",
    )
    assert status == 1
    assert_one_line_error(err, "gen-traj", "missing.pt", "teacher.weights")


# --------------------------------------------------------------------------------------------------
# The same through a real subprocess, and a SIGKILL in the middle of writing samples


def dsno(*argv, env=None):
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "dsno", *map(str, argv)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        timeout=300,
    )


def test_subprocess_errors_are_one_line(copy_of, tmp_path):
    root = copy_of("train")
    result = dsno("gen-traj", *settings(tmp_path / "new"), "--batch-size", "-3")
    assert result.returncode == 2 and not (tmp_path / "new").exists()
    assert_one_line_error(result.stderr, "gen-traj", "traj.batch_size=-3")
    torch.save({"version": 2, "model": Payload(tmp_path / "payload-ran")}, tmp_path / "evil.pt")
    result = dsno("sample", *settings(root), "--checkpoint", tmp_path / "evil.pt")
    assert result.returncode == 1 and not (tmp_path / "payload-ran").exists()
    assert_one_line_error(result.stderr, "sample", "evil.pt", "could run code")
    result = dsno("sample", *settings(root), "--checkpoint", tmp_path / "evil.pt", env={"DSNO_DEBUG": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr


KILL_WHILE_WRITING = """
import os, signal, sys
from dsno import cli, sample
def killed(*args, **kwargs):  # the .npy files are in their temporaries when this runs
    os.kill(os.getpid(), signal.SIGKILL)
sample.figure_png = killed
cli.main(sys.argv[1:])
"""


def test_sigkill_while_writing_samples_keeps_the_earlier_output(copy_of):
    root = copy_of("train", "samples")
    before = snapshot(root / "samples")
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", KILL_WHILE_WRITING, "sample", *settings(root), "--seed", "9"],
        env=environment,
        cwd=REPO,
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL
    leftovers = {p.name for p in (root / "samples").iterdir()} - set(before)
    assert leftovers and all(name.endswith(".tmp") for name in leftovers)  # it was killed mid-write
    assert {k: v for k, v in snapshot(root / "samples").items() if k in before} == before
    # the next run removes the leftovers and writes the new output
    assert cli.main(["sample", *settings(root), "--seed", "9"]) == 0
    assert {p.name for p in (root / "samples").iterdir()} == set(before)
    assert snapshot(root / "samples") != before
