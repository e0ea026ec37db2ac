"""The `dsno` command: help, configs and overrides, extension hooks, and gen-traj -> train -> sample."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from dsno import cli
from dsno.config import Config, load_config, presets

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py

REPO = Path(__file__).resolve().parents[1]


class StandInModel(nn.Module):
    """DSNO's interface at toy size: model(x [B, C, H, W], logsnr [M]) -> [B, M, C, H, W]."""

    def __init__(self, channels=3, hidden=8):
        super().__init__()
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1)
        self.embed = nn.Linear(1, hidden)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x, logsnr, y=None):
        h = self.conv_in(x)[:, None] + self.embed(logsnr[:, None] / 20)[None, :, :, None, None]
        h = torch.nn.functional.silu(h)
        return self.conv_out(h.flatten(0, 1)).unflatten(0, h.shape[:2]) + x[:, None]


def run_cli(*argv):
    return cli.main([str(a) for a in argv])


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["gen-traj", "--help"],
        ["train", "--help"],
        ["sample", "--help"],
        ["config", "--help"],
        ["eval", "--help"],
        ["demo", "--help"],
    ],
)
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: dsno" in text
    if argv == ["--help"]:
        for command in ("gen-traj", "train", "sample", "eval", "demo", "config"):
            assert command in text
    if argv[0] == "train":
        assert "--set SECTION.KEY=VALUE" in text and "(sets train.lr)" in text


def test_config_overrides_and_flags(capsys):
    assert run_cli("config", "-c", "cifar10", "--set", "train.lr=1e-4", "--set", "model.overrides.dropout=0.1") == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["train"]["lr"] == 1e-4 and config["model"] == {
        "name": "cifar10",
        "overrides": {"dropout": 0.1},
        "temporal_precision": "fp32",
    }
    assert config["schedule"]["num_steps"] == 512 and config["schedule"]["spacing"] == "quadratic"
    args = cli.build_parser().parse_args(["train", "-c", "tiny", "--set", "train.lr=0.5", "--lr", "0.25", "--bf16"])
    resolved = cli._resolve(args)
    assert resolved["train"]["lr"] == 0.25 and resolved["train"]["bf16"] is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["config", "-c", "tiny", "--set", "train.lrr=1"], "unknown key 'lrr'"),
        (["config", "-c", "tiny", "--set", "nosection.x=1"], "section"),
        (["config", "-c", "no-such-preset"], "presets are"),
        (["config", "-c", "tiny", "--set", "train.lr"], "section.key=value"),
    ],
)
def test_config_errors_are_reported_not_raised(argv, message, capsys):
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("dsno config: error: ")


COMMANDS = ("gen-traj", "train", "sample", "eval", "demo", "config", "convert")


def test_every_command_takes_threads_from_one_definition():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction)).choices
    assert set(subparsers) == set(COMMANDS)
    for command, sub in subparsers.items():
        (threads,) = [a for a in sub._actions if "--threads" in a.option_strings]
        assert threads.default == cli.THREADS == 1 and threads.type is cli._positive_int, command


@pytest.mark.parametrize("command", ["gen-traj", "train", "sample", "eval", "demo"])
def test_threads_apply_while_the_command_runs(command, monkeypatch, tmp_path):
    """The command's work sees --threads (or the default); the calling process gets its own count back."""
    import dsno.demo
    import dsno.metrics
    import dsno.sample
    import dsno.train
    import dsno.trajectories

    seen = []

    def record(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise ValueError("recorded")

    targets = {
        "gen-traj": (dsno.trajectories, "generate_from_config"),
        "train": (dsno.train, "train"),
        "sample": (dsno.sample, "sample"),
        "eval": (dsno.metrics, "main"),
        "demo": (dsno.demo, "main"),
    }
    monkeypatch.setattr(*targets[command], record)
    argv = {"eval": ["eval", "a.npy", "--reference", "b.npy"], "demo": ["demo", "--out", str(tmp_path / "d")]}.get(
        command, [command, "-c", "tiny", "--set", f"traj.out={tmp_path / 't'}"]
    )
    before = torch.get_num_threads()
    assert run_cli(*argv, "--threads", 2) == 1 and run_cli(*argv) == 1
    assert seen == [2, cli.THREADS] and torch.get_num_threads() == before


def test_convert_takes_c_like_every_command(tmp_path, capsys):
    for flag in ("-c", "--config", "--preset"):  # --preset: its earlier spelling, still accepted
        args = cli.build_parser().parse_args(["convert", "x.pt", flag, "cifar10", "--out", "y.pt"])
        assert args.config == "cifar10"
        assert run_cli("convert", tmp_path / "missing.pt", flag, "cifar10", "--out", tmp_path / "y.pt") == 1
        assert (
            capsys.readouterr().err.strip()
            == f"dsno convert: error: {tmp_path / 'missing.pt'}: DSNO checkpoint not found"
        )
    with pytest.raises(SystemExit):
        run_cli("convert", "--help")
    assert "-c PRESET|FILE, --config PRESET|FILE, --preset PRESET|FILE" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["default", *presets()])
def test_every_preset_passes_the_schema(name):
    config = load_config(name)
    assert set(config) == set(Config.model_fields)
    for section, values in config.items():
        assert set(values) == set(Config.model_fields[section].annotation.model_fields), section


def test_config_file_inherits_from_a_preset(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: tiny\ntrain:\n  lr: 3e-3\nschedule:\n  spacing: uniform\n")
    config = load_config(str(tmp_path / "mine.yaml"))
    assert config["train"]["lr"] == 0.003 and config["schedule"]["spacing"] == "uniform"
    assert config["schedule"]["num_steps"] == load_config("tiny")["schedule"]["num_steps"]
    (tmp_path / "bad.yaml").write_text("base: tiny\ntrain:\n  learning_rate: 1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(str(tmp_path / "bad.yaml"))


def test_extension_hooks(monkeypatch):
    calls = []
    fake = types.ModuleType("dsno.demo")
    fake.add_arguments = lambda parser: parser.add_argument("--size", type=int, default=1)
    fake.main = lambda args: calls.append(args.size) or 0
    monkeypatch.setitem(sys.modules, "dsno.demo", fake)
    assert run_cli("demo", "--size", "3") == 0 and calls == [3]


def tiny_overrides(tmp_path, model_name):
    return [
        "--set",
        f"model.name={model_name}",
        "--set",
        "data.shape=[3, 8, 8]",
        "--set",
        "schedule.num_steps=16",
        "--set",
        f"traj.out={tmp_path / 'traj'}",
        "--set",
        f"train.out={tmp_path / 'train'}",
        "--set",
        "train.data=null",
        "--set",
        f"sample.out={tmp_path / 'samples'}",
        "--set",
        "sample.checkpoint=null",
        "--set",
        "train.log_every=5",
        "--set",
        "train.save_every=10",
        "--set",
        "train.warmup=0",
        "--set",
        "traj.device=cpu",
        "--set",
        "train.device=cpu",
        "--set",
        "sample.device=cpu",
        "--set",
        "sample.png_scale=2",
    ]


def check_png(path, title):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = pytest.importorskip("PIL.Image").open(path)
    image.load()
    assert image.width >= 480 and image.height >= 200 and image.mode in ("RGB", "RGBA")  # a figure, not the bare grid
    assert image.text["Title"].startswith(title), image.text


def run_pipeline(tmp_path, model_name, train_steps, *train_flags):
    common = ["-c", "tiny", "--no-progress", *tiny_overrides(tmp_path, model_name)]
    assert run_cli("gen-traj", *common, "--num-samples", 48, "--shard-size", 16, "--batch-size", 16) == 0
    manifest = json.loads((tmp_path / "traj" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["trajectory_shape"] == [4, 3, 8, 8]
    assert run_cli("train", *common, "--steps", train_steps, "--batch-size", 8, *train_flags) == 0
    lines = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == train_steps
    assert run_cli("sample", *common, "--num-samples", 6, "--batch-size", 4) == 0
    trajectory = np.load(tmp_path / "samples" / "trajectory.npy")
    assert trajectory.shape == (6, 4, 3, 8, 8) and np.isfinite(trajectory).all()
    check_png(tmp_path / "samples" / "samples.png", "6 samples (the last time point, t = 1e-05)")
    check_png(tmp_path / "samples" / "trajectory.png", "One forward pass from noise to all M = 4 time points")
    return lines


def test_sample_figures_label_their_rows_and_columns():
    from dsno.sample import grid_figure

    images = np.zeros((3, 5, 8, 8, 3), dtype=np.uint8)
    columns = ["noise", "t = 0.5", "t = 0.25", "t = 0.1", "t = 0"]
    figure = grid_figure(images, "a title", ["0", "1", "2"], columns, row_title="sample", column_title="time point")
    (axis,) = figure.axes
    assert axis.get_title() == "a title" and axis.get_xlabel() == "time point" and axis.get_ylabel() == "sample"
    assert [t.get_text() for t in axis.get_xticklabels()] == columns
    assert [t.get_text() for t in axis.get_yticklabels()] == ["0", "1", "2"]
    # each label sits at the centre of its images: columns 8 px + 2 px gaps, from a 2 px border
    assert list(axis.get_xticks()) == [2 + 10 * c + 4 for c in range(5)]
    assert list(axis.get_yticks()) == [2 + 10 * r + 4 for r in range(3)]


def test_gen_traj_train_sample_end_to_end(tmp_path):
    lines = run_pipeline(tmp_path, "test_cli:StandInModel", train_steps=40)
    assert lines[-1]["loss"] < lines[0]["loss"]
    # the same commands again: nothing left to generate, training already at its last step
    assert (
        run_cli(
            "gen-traj",
            "-c",
            "tiny",
            "--no-progress",
            *tiny_overrides(tmp_path, "test_cli:StandInModel"),
            "--num-samples",
            48,
            "--shard-size",
            16,
            "--batch-size",
            16,
        )
        == 0
    )


def test_end_to_end_with_the_tiny_dsno_model(tmp_path):
    from dsno.model import build_backbone

    torch.save(build_backbone("tiny").state_dict(), tmp_path / "backbone.pt")
    run_pipeline(tmp_path, "tiny", 4, "--init-backbone", tmp_path / "backbone.pt")


def test_gen_traj_under_torchrun_splits_shards_over_two_ranks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "dsno",
        "gen-traj",
        "-c",
        "tiny",
        "--no-progress",
        *tiny_overrides(tmp_path, "tiny"),
        "--num-samples",
        40,
        "--shard-size",
        10,
        "--batch-size",
        10,
    ]
    result = subprocess.run(
        [str(a) for a in command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "traj" / "manifest.json").read_text())
    assert manifest["complete"] and [s["shard"] for s in manifest["shards"]] == [0, 1, 2, 3]
    assert "4/4 shards, complete" in result.stdout
