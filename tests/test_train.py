"""Training: loss goes down, exact resume, DDP equivalence and teardown, EMA, lr schedule, atomic checkpoints."""

import json
import math
import os
import pickle
import socket
import threading

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from dsno import train as train_module
from dsno.checkpoint import load_checkpoint, load_tensor_file, save_checkpoint
from dsno.config import load_config
from dsno.model import build_model_from_config
from dsno.teachers import GaussianMixtureTeacher
from dsno.train import WarmupMultiStep, snr_weights, train, trajectory_loss
from dsno.trajectories import TrajectorySpec, generate

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py

SHAPE = [2, 4, 4]
POINTS = 3


class StandInModel(nn.Module):
    """A few-parameter stand-in with DSNO's interface: model(x [B, C, H, W], logsnr [M]) -> [B, M, C, H, W]."""

    def __init__(self, dropout=0.0, hidden=8):
        super().__init__()
        channels = SHAPE[0]
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1)
        self.embed = nn.Linear(1, hidden)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mix = nn.Parameter(torch.eye(POINTS))
        self.register_buffer("scale", torch.tensor(1.0))

    def forward(self, x, logsnr, y=None):
        h = self.conv_in(x)[:, None] + self.embed(logsnr[:, None] / 20.0)[None, :, :, None, None]
        h = self.dropout(torch.nn.functional.silu(h))
        out = self.conv_out(h.flatten(0, 1)).unflatten(0, h.shape[:2]) * self.scale
        return torch.einsum("mn,bnchw->bmchw", self.mix, out) + x[:, None]


def make_standin(dropout=0.0, dtype=torch.float32):
    return lambda: StandInModel(dropout).to(dtype)


@pytest.fixture(scope="module")
def trajectory_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("traj")
    spec = TrajectorySpec(
        shape=SHAPE,
        num_samples=32,
        shard_size=16,
        seed=0,
        solver="ddim",
        num_steps=8,
        num_points=POINTS,
        teacher={"kind": "gmm", "seed": 0},
    )
    generate(GaussianMixtureTeacher.random(SHAPE, 2, seed=0), spec, root, batch_size=16, progress=False)
    return root


def make_config(data, out, **train):
    settings = dict(
        data=str(data),
        out=str(out),
        steps=6,
        batch_size=8,
        num_workers=0,
        lr=1e-2,
        warmup=2,
        milestones=[4],
        log_every=1,
        save_every=3,
        device="cpu",
        ema_decay=0.9,
        seed=5,
    )
    settings.update(train)
    return load_config("tiny", [f"train.{k}={json.dumps(v)}" for k, v in settings.items()])


def metrics(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("elapsed_seconds")
    return lines


def assert_states_equal(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_states_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_states_equal(x, y)
    elif torch.is_tensor(a):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b)
    else:
        assert a == b


def test_training_lowers_the_loss(trajectory_dir, tmp_path):
    config = make_config(trajectory_dir, tmp_path, steps=60, milestones=[], save_every=60)
    result = train(config, model_factory=make_standin(), progress=False)
    losses = [line["loss"] for line in metrics(tmp_path)]
    assert len(losses) == 60 and result["step"] == 60
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5, losses


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(trajectory_dir, tmp_path, monkeypatch):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    factory = make_standin(dropout=0.3)
    train(make_config(trajectory_dir, straight), model_factory=factory, progress=False)

    # crash during step 5: the checkpoint is from step 3 and metrics already hold step 4
    calls = {"n": 0}
    real_loss = train_module.trajectory_loss

    def crashing_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "trajectory_loss", crashing_loss)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_config(trajectory_dir, crashed), model_factory=factory, progress=False)
    monkeypatch.undo()
    assert load_checkpoint(crashed / "checkpoint.pt")["step"] == 3
    assert [line["step"] for line in metrics(crashed)] == [1, 2, 3, 4]

    train(make_config(trajectory_dir, crashed), model_factory=factory, progress=False)
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(crashed / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema", "optimizer", "scheduler", "rng"):
        assert_states_equal(a[key], b[key])
    assert metrics(crashed) == metrics(straight)


def test_ema_and_gradient_accumulation(trajectory_dir, tmp_path):
    factory = make_standin(dtype=torch.float64)
    one = train(
        make_config(trajectory_dir, tmp_path / "one", steps=1, batch_size=8), model_factory=factory, progress=False
    )
    state = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    torch.manual_seed(5)  # train.seed: the initial weights
    initial = factory().state_dict()
    for name, value in state["ema"].items():
        expected = value if name == "scale" else 0.9 * initial[name] + 0.1 * state["model"][name]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-15)
    assert one["step"] == 1

    train(
        make_config(trajectory_dir, tmp_path / "accum", steps=3, batch_size=4, grad_accum=2),
        model_factory=factory,
        progress=False,
    )
    train(make_config(trajectory_dir, tmp_path / "full", steps=3, batch_size=8), model_factory=factory, progress=False)
    accum, full = (load_checkpoint(tmp_path / name / "checkpoint.pt")["model"] for name in ("accum", "full"))
    for name in full:
        torch.testing.assert_close(accum[name], full[name], rtol=1e-9, atol=1e-12)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _native_threads():
    """Ids of this process's threads that Python did not start (gloo's workers and its TCP loop among them)."""
    python = {thread.native_id for thread in threading.enumerate()}
    return sorted(int(tid) for tid in os.listdir("/proc/self/task") if int(tid) not in python)


def _ddp_worker(rank, world_size, port, config, record, fail_on_rank=None):
    """One rank of a DDP run of the stand-in model; writes the native threads it had before, during (at each forward)
    and after the run to `record`/threads-RANK.json. fail_on_rank raises in that rank's third forward."""
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    import warnings

    from dsno import distributed

    warnings.filterwarnings("error", category=FutureWarning)  # e.g. DDP's deprecated broadcast_buffers
    warnings.filterwarnings("error", message="Grad strides do not match")
    threads = {"before": _native_threads(), "during": set()}
    forwards = []

    def factory():
        model = make_standin(dtype=torch.float64)()

        def note_threads(module, inputs, output):
            threads["during"].update(_native_threads())
            forwards.append(rank)
            if rank == fail_on_rank and len(forwards) == 3:
                raise RuntimeError(f"simulated failure on rank {rank}")

        model.register_forward_hook(note_threads)
        return model

    try:
        with distributed.session():
            train(config, model_factory=factory, progress=False)
    finally:
        threads.update(during=sorted(threads["during"]), after=_native_threads())
        (record / f"threads-{rank}.json").write_text(json.dumps(threads))


def _assert_process_group_torn_down(record, world_size):
    """gloo's threads ran during the run and none outlives distributed.session(): a gloo thread still running
    when Python shuts down can abort the process ("terminate called without an active exception")."""
    for rank in range(world_size):
        threads = json.loads((record / f"threads-{rank}.json").read_text())
        assert set(threads["during"]) - set(threads["before"]), f"rank {rank}: no gloo threads seen"
        assert set(threads["after"]) <= set(threads["before"]), f"rank {rank}: threads left running: {threads}"


def test_bf16_autocast_trains(trajectory_dir, tmp_path):
    seen = []

    def factory():
        model = StandInModel()
        model.conv_out.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        return model

    result = train(make_config(trajectory_dir, tmp_path, steps=2, bf16=True), model_factory=factory, progress=False)
    assert math.isfinite(result["loss"]) and seen == [torch.bfloat16, torch.bfloat16]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["model"]["conv_in.weight"].dtype == torch.float32


def test_ddp_two_processes_match_one_process_on_the_combined_batch(trajectory_dir, tmp_path):
    single = make_config(trajectory_dir, tmp_path / "single", steps=4, batch_size=8, save_every=2)
    train(single, model_factory=make_standin(dtype=torch.float64), progress=False)
    double = make_config(trajectory_dir, tmp_path / "ddp", steps=4, batch_size=4, save_every=2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), double, tmp_path), nprocs=2, join=True)
    _assert_process_group_torn_down(tmp_path, 2)
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("single", "ddp"))
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    for key in ("model", "ema"):
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], rtol=1e-9, atol=1e-12)
    losses_a, losses_b = metrics(tmp_path / "single"), metrics(tmp_path / "ddp")
    assert [m["step"] for m in losses_b] == [1, 2, 3, 4]
    for x, y in zip(losses_a, losses_b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-9)


def test_ddp_rank_that_fails_leaves_the_process_group(trajectory_dir, tmp_path):
    """Rank 1 raises mid-run and rank 0 then loses its peer. Both must exit with their Python error (exit code 1,
    not a signal) and leave the process group first, although the traceback holds the group and the DDP model."""
    config = make_config(trajectory_dir, tmp_path / "ddp", steps=4, batch_size=4)
    context = mp.spawn(_ddp_worker, args=(2, _free_port(), config, tmp_path, 1), nprocs=2, join=False)
    for process in context.processes:  # joined here: spawn's own join would SIGTERM the rank still running
        process.join(timeout=120)
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in context.processes] == [1, 1]
    errors = []
    for path in context.error_files:  # each rank's traceback, written where spawn caught the exception
        with open(path, "rb") as file:
            errors.append(pickle.load(file))
        os.unlink(path)
    assert "simulated failure on rank 1" in errors[1]
    _assert_process_group_torn_down(tmp_path, 2)


def test_lr_schedule_matches_torch_linear_then_multistep():
    reference_model = nn.Linear(1, 1)
    optimizer = torch.optim.Adam(reference_model.parameters(), lr=0.1)
    chained = torch.optim.lr_scheduler.ChainedScheduler(
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.001, total_iters=5),
            torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[8, 12], gamma=0.5),
        ]
    )
    ours = WarmupMultiStep(5, 0.001, [12, 8], 0.5)
    for step in range(20):
        assert 0.1 * ours(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), step
        optimizer.step()
        chained.step()


def test_loss_is_per_point_mean_then_weighted():
    pred = torch.randn(3, 4, 2, 5, dtype=torch.float64)
    target = torch.randn(3, 4, 2, 5, dtype=torch.float64)
    logsnr = torch.tensor([-3.0, 0.5, 4.0, 25.0], dtype=torch.float64)
    weights = snr_weights(logsnr)
    torch.testing.assert_close(weights, torch.tensor([1.0, math.exp(0.25), math.exp(2.0), 1e4], dtype=torch.float64))
    for kind, f in (("L1", lambda d: d.abs()), ("L2", lambda d: d**2)):
        loss, per_point = trajectory_loss(pred, target, weights, kind)
        expected = torch.stack([f(pred[:, m] - target[:, m]).mean() for m in range(4)])
        torch.testing.assert_close(per_point, expected)
        torch.testing.assert_close(loss, (expected * weights).mean())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def torn_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    state = load_tensor_file(path, "checkpoint")
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    save_checkpoint({"step": 3}, path)
    assert load_tensor_file(path, "checkpoint")["step"] == 3


def test_model_from_an_import_path():
    built = build_model_from_config({"name": "torch.nn:Linear", "overrides": {"in_features": 2, "out_features": 3}})
    assert isinstance(built, nn.Linear) and built.out_features == 3
    with pytest.raises(ValueError, match="cannot import"):
        build_model_from_config({"name": "no_such_module_xyz:make", "overrides": {}})


def test_gradients_come_in_the_parameters_layout():
    """DDP copies each gradient into a bucket view with its parameter's strides and warns ("Grad strides do
    not match bucket view strides") when they differ; the raw gradient (as a hook sees it) must match."""
    from dsno.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny")
    mismatched = []
    for name, parameter in model.named_parameters():
        parameter.register_hook(
            lambda grad, name=name, parameter=parameter: (
                mismatched.append(name) if grad.stride() != parameter.stride() else None
            )
        )
    # batch 8: from 4 up, the CPU convolution returns a channels-last weight gradient for a channels-last input
    model(torch.randn(8, 3, 8, 8), torch.linspace(-5, 5, 4)).square().mean().backward()
    assert mismatched == []


def test_setup_selects_the_cuda_device_of_its_rank(monkeypatch):
    """setup() on a CUDA rank sets that rank's device before joining the group (the torchrun path on a GPU
    machine; the device is simulated here, so no GPU is needed to run the code path)."""
    from dsno import distributed

    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(distributed, "resolve_device", lambda device, local_rank: torch.device("cuda", local_rank))
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    info, device = distributed.setup("cuda")
    assert device == torch.device("cuda", 0) and chosen == [torch.device("cuda", 0)]
