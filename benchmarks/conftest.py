"""Options and session fixtures of the benchmark suites.

    pytest benchmarks/ --benchmark-only                 GPU set on a GPU machine, CPU set otherwise
    pytest benchmarks/ --benchmark-disable              smoke: tiny shapes, each case run once (CI)
    --bench-set gpu|cpu|smoke    force a set;  --bench-shapes a,b   only these shapes
    --bench-providers a,b        only these providers;  --bench-seconds S   timed seconds per case

The benchmarks run on CUDA when a GPU is visible (unless --bench-set cpu), else on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import harness, report


def pytest_addoption(parser):
    group = parser.getgroup("dsno benchmarks")
    group.addoption(
        "--bench-set",
        choices=("auto", "gpu", "cpu", "smoke"),
        default="auto",
        help="shape set: gpu (DSNO's shapes), cpu (2-core sized), smoke (tiny, for CI); "
        "auto = smoke under --benchmark-disable, else gpu with a GPU, else cpu",
    )
    group.addoption("--bench-shapes", default="", help="comma-separated shape names to keep (default: all of the set)")
    group.addoption("--bench-providers", default="", help="comma-separated providers to keep (default: all)")
    group.addoption(
        "--bench-seconds",
        type=float,
        default=None,
        help="timed seconds per benchmark (default 0.15 on a GPU, 0.5 on the CPU)",
    )


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def benchmarks_disabled(config) -> bool:
    return config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")


def bench_set_name(config) -> str:
    name = config.getoption("--bench-set")
    if name != "auto":
        return name
    if benchmarks_disabled(config):
        return "smoke"
    return "gpu" if torch.cuda.is_available() else "cpu"


def bench_device_name(config) -> str:
    return "cuda" if torch.cuda.is_available() and bench_set_name(config) != "cpu" else "cpu"


def selected_shapes(config) -> list[harness.OpShape]:
    shapes = harness.SHAPE_SETS[bench_set_name(config)]
    wanted = _csv(config.getoption("--bench-shapes"))
    unknown = [name for name in wanted if name not in shapes]
    if unknown:
        raise pytest.UsageError(f"--bench-shapes: {unknown} not in the {bench_set_name(config)} set {sorted(shapes)}")
    return [shapes[name] for name in wanted] if wanted else list(shapes.values())


def provider_selected(config, provider: str) -> bool:
    wanted = _csv(config.getoption("--bench-providers"))
    return not wanted or provider in wanted


def pytest_collection_modifyitems(config, items):
    """Every benchmark reads the host-inclusive clock of its device (harness.clock_for)."""
    timer = pytest.mark.benchmark(timer=harness.clock_for(bench_device_name(config)))
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(timer)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Save the statistics without the raw per-round samples (report.drop_round_samples)."""
    report.drop_round_samples(output_json)


@pytest.fixture(scope="session")
def bench_device(pytestconfig) -> str:
    return bench_device_name(pytestconfig)


@pytest.fixture(scope="session")
def bench_seconds(pytestconfig, bench_device) -> float:
    seconds = pytestconfig.getoption("--bench-seconds")
    if seconds is not None:
        return seconds
    return 0.15 if bench_device == "cuda" else 0.5


@pytest.fixture(scope="session")
def copy_gbps(pytestconfig, bench_device) -> float:
    """The device's copy bandwidth, measured once per session (every result reports it)."""
    if benchmarks_disabled(pytestconfig):
        return float("nan")
    return harness.measure_copy_gbps(bench_device)


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
