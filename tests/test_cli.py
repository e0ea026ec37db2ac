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
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


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


def check_png(path, height, width):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = pytest.importorskip("PIL.Image").open(path)
    image.load()
    assert image.size == (width, height) and image.mode == "RGB"


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
    # 8x8 images shown 16x16 with 2-pixel gaps: 6 samples in 3 columns; 6 rows of noise + 4 points
    check_png(tmp_path / "samples" / "samples.png", 2 + 2 * 18, 2 + 3 * 18)
    check_png(tmp_path / "samples" / "trajectory.png", 2 + 6 * 18, 2 + 5 * 18)
    return lines


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
