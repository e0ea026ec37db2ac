"""The timing helpers' logic, with CUDA's stream, events and sleep kernel replaced by fakes (not a
benchmark: it checks what a GPU run relies on, on any machine)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import harness


class FakeStream:
    """A stream that is busy until the fake sleep has run out: `cycles_needed` cycles of sleep hold
    it long enough for the host to queue all the calls."""

    def __init__(self, cycles_needed: int):
        self.cycles_needed = cycles_needed
        self.sleeps: list[int] = []

    def event(self, *, enable_timing: bool):
        stream = self

        class Event:
            def record(self):
                self.sleep = stream.sleeps[-1] if stream.sleeps else 0

            def query(self):  # completed already: the sleep before it ran out early
                return self.sleep < stream.cycles_needed

            def synchronize(self):
                pass

            def elapsed_time(self, end):
                return 4.0  # milliseconds for the queued calls

        return Event()


@pytest.fixture
def fake_cuda(monkeypatch):
    def install(cycles_needed):
        stream = FakeStream(cycles_needed)
        monkeypatch.setattr(torch.cuda, "Event", stream.event)
        monkeypatch.setattr(torch.cuda, "_sleep", stream.sleeps.append)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
        return stream

    return install


def test_kernel_seconds_lengthens_the_sleep_until_the_host_is_off_the_critical_path(fake_cuda):
    calls = []
    stream = fake_cuda(cycles_needed=500_000)  # a few doublings above the first guess (~1e5 cycles)
    seconds = harness.kernel_seconds(lambda: calls.append(1), calls=4, repeats=3)
    assert seconds == pytest.approx(4e-3 / 4)  # 4 ms for 4 calls
    first, *rest = stream.sleeps
    assert first < 500_000 <= rest[-1]  # doubled until long enough, then kept
    assert all(later == 2 * earlier or later == earlier for earlier, later in zip(stream.sleeps, rest))
    assert sum(1 for s in stream.sleeps if s >= 500_000) == 3  # the three timed repeats


def test_kernel_seconds_gives_up_when_no_sleep_is_long_enough(fake_cuda):
    fake_cuda(cycles_needed=10**30)
    assert harness.kernel_seconds(lambda: None, calls=2, attempts=3) is None


def test_floor_bytes_are_design_md_floors():
    shape = harness.OpShape("s", B=2, T=4, K=2, C=8, spatial=(4,))
    x, w = shape.x_numel, shape.weight_numel
    assert harness.floor_bytes(shape, "fwd", "bf16") == 2 * (2 * x + w)
    assert harness.floor_bytes(shape, "fwd+bwd", "fp32") == 4 * (5 * x + 2 * w)


def test_interleaved_comparison_runs_and_checks_its_targets(capsys):
    """`python -m benchmarks.harness` (the README cites it) on a tiny shape: a table, exit 1 on a miss with --check."""
    assert harness.main(["--shape", "smoke-2d", "--repeats", "2"]) == 0  # without --check: 0, met or not
    assert "fwd+bwd" in capsys.readouterr().out
    assert harness.main(["--shape", "smoke-2d", "--repeats", "2", "--targets", "1e9,1e9", "--check"]) == 1
    assert capsys.readouterr().out.count("MISSED") == 2
