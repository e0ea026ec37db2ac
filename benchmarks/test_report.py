"""The report's arithmetic on hand-made pytest-benchmark JSON (not a benchmark)."""

from __future__ import annotations

import json

from benchmarks import report


def _bench(provider, op, direction, dtype, shape, median, nbytes=None, copy_gbps=10.0, kernel_seconds=None, **more):
    gbps = nbytes / median / 1e9 if nbytes else None
    kernel_gbps = nbytes / kernel_seconds / 1e9 if nbytes and kernel_seconds else None
    info = {
        "provider": provider,
        "op": op,
        "direction": direction,
        "dtype": dtype,
        "shape": shape,
        "bytes": nbytes,
        "gbps": gbps,
        "kernel_seconds": kernel_seconds,
        "kernel_gbps": kernel_gbps,
        "copy_gbps": copy_gbps,
        "device": "TestCard",
        "torch": "2.x",
        "triton": "3.x",
        **more,
    }
    return {"extra_info": info, "stats": {"median": median, "rounds": 10, "data": [median] * 10}}


def _write(tmp_path, benchmarks, name="results.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return path


def test_report_tables_and_plots(tmp_path):
    benchmarks = [
        _bench("dsno_fft", "time_conv", "fwd", "fp32", "s1", 4e-3, nbytes=10**6),
        _bench("dense_gemm", "time_conv", "fwd", "fp32", "s1", 2e-3, nbytes=10**6),
        _bench("cpu", "time_conv", "fwd", "fp32", "s1", 1e-3, nbytes=10**6),
        _bench("cpu", "time_conv", "fwd", "fp32", "s2", 1e-3, nbytes=10**6),  # no baselines at s2
        # A GPU result: the kernel-only time is half the host-inclusive one.
        _bench("triton", "time_conv", "fwd", "fp32", "s1", 2e-3, nbytes=10**6, kernel_seconds=5e-4),
        _bench("torch", "copy", "fwd", "fp32", "copy-1MiB", 2e-4, nbytes=2 * 10**6, kernel_seconds=1e-4),
        _bench("cpu", "train_step", "fwd+bwd", "fp32", "tiny-b8", 0.5),
        _bench("cpu", "temporal_share", "fwd+bwd", "fp32", "tiny-b8", 0.7, temporal_share=0.25),
        _bench("cpu", "sample_one_pass", "fwd", "fp32", "tiny-b8", 1e-2),
        _bench("teacher", "sample_teacher_ddim512", "fwd", "fp32", "tiny-b8", 1.0),
        {"extra_info": {}, "stats": {"median": 1.0, "rounds": 1}},  # another suite's result: ignored
    ]
    path = _write(tmp_path, benchmarks)

    assert report.main([str(path)]) == 0
    text = (tmp_path / "report.md").read_text()
    # 1e6 bytes in 1 ms = 1 GB/s = 10% of 10 GB/s; 4 ms / 1 ms and 2 ms / 1 ms. The CPU has no kernel-only time.
    assert "| s1 | cpu | 1.000 ms | - | 1 | 10.0% | - | - | 4.00x | 2.00x |" in text
    assert "| s2 | cpu | 1.000 ms | - | 1 | 10.0% | - | - | - | - |" in text
    # 1e6 bytes in 0.5 ms kernel-only = 2 GB/s = 20%; 1e6 bytes in 2 ms host-inclusive = 5%.
    assert "| s1 | triton | 2.000 ms | 500.0 us | 0.5 | 5.0% | 2 | 20.0% | 2.00x | 1.00x |" in text
    assert "| s1 | fp32 | fwd | triton | 2.000 ms | 500.0 us | 5.0% | 20.0% | 2.00x | 1.00x |" in text
    assert "| TestCard | copy-1MiB | 200.0 us | 100.0 us | 10 | 20 |" in text
    assert "| tiny-b8 | fp32 | train_step | cpu | 500.000 ms | - | 25% | - | - |" in text
    assert "| tiny-b8 | fp32 | sample_one_pass | cpu | 10.000 ms | 1.250 ms | - | - | - |" in text
    assert "one-pass sampling with cpu is 100.0x faster per image" in text
    assert "temporal_share |" not in text  # the profiled step is no timing: only its share is shown
    assert "5|x|" in text
    assert "## Targets" not in text  # no GPU shape in these results
    from PIL import Image

    for plot in ("speedup_by_shape.png", "bandwidth_by_shape.png"):
        assert Image.open(tmp_path / plot).mode == "P"  # a palette PNG: a third of the bytes


def test_targets_pass_miss_and_not_measured(tmp_path, capsys):
    benchmarks = [
        # cifar10-32 forward: 81% kernel-only (pass); forward+backward 40% (miss).
        _bench(
            "cuda",
            "time_conv",
            "fwd",
            "bf16",
            "cifar10-32",
            2e-3,
            nbytes=81 * 10**4,
            kernel_seconds=1e-3,
            copy_gbps=1.0,
        ),
        _bench(
            "triton",
            "time_conv",
            "fwd",
            "bf16",
            "cifar10-32",
            3e-3,
            nbytes=81 * 10**4,
            kernel_seconds=2e-3,
            copy_gbps=1.0,
        ),
        _bench(
            "cuda",
            "time_conv",
            "fwd+bwd",
            "bf16",
            "cifar10-32",
            2e-3,
            nbytes=40 * 10**4,
            kernel_seconds=1e-3,
            copy_gbps=1.0,
        ),
        # dense_gemm is faster at one of the two cases it has.
        _bench("dense_gemm", "time_conv", "fwd", "bf16", "cifar10-32", 4e-3, nbytes=81 * 10**4, copy_gbps=1.0),
        _bench("dense_gemm", "time_conv", "fwd+bwd", "bf16", "cifar10-32", 1e-3, nbytes=40 * 10**4, copy_gbps=1.0),
        # cifar10-8 forward in 14 us host-inclusive: pass.
        _bench("cuda", "time_conv", "fwd", "bf16", "cifar10-8", 14e-6, nbytes=10**3, copy_gbps=1.0),
        # Model level: training step 2x dsno_fft (pass); one-pass 50x the teacher (miss); compile ran.
        _bench("dsno_fft", "train_step", "fwd+bwd", "bf16", "cifar10-b32", 0.2),
        _bench("triton", "train_step", "fwd+bwd", "bf16", "cifar10-b32", 0.1),
        _bench("triton", "sample_one_pass", "fwd", "bf16", "cifar10-b32", 0.02),
        _bench("teacher", "sample_teacher_ddim512", "fwd", "bf16", "cifar10-b32", 1.0),
        _bench("cuda", "train_step_compiled", "fwd+bwd", "bf16", "cifar10-b32", 0.05),
    ]
    path = _write(tmp_path, benchmarks)
    assert report.main([str(path), "--brief"]) == 0
    printed = capsys.readouterr().out
    assert "## Summary" not in printed  # --brief: the header and the targets only
    text = (tmp_path / "report.md").read_text()
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert rows["time_conv bf16 fwd, cifar10-32: >= 80% of copy bandwidth"].endswith(
        "| 81.0% (cuda, kernel-only) | pass |"
    )
    assert rows["time_conv bf16 fwd, cifar10-16: >= 60% of copy bandwidth"].endswith("| - | not measured |")
    assert rows["time_conv bf16 fwd+bwd, cifar10-32: >= 50% of copy bandwidth on the 5\\|x\\| floor"].endswith(
        "| 40.0% (cuda, kernel-only) | MISS |"
    )
    assert rows["time_conv faster than dense_gemm at every shape, dtype and direction (host-inclusive)"].endswith(
        "| ahead in 1 of 2 cases; least 0.50x (cifar10-32 bf16 fwd+bwd) | MISS |"
    )
    assert rows["time_conv bf16 fwd, cifar10-8: under 15 us host-inclusive"].endswith("| 14.0 us (cuda) | pass |")
    assert "| 2.00x (triton) | pass |" in text
    assert "| 50x (triton, sample_one_pass) | MISS |" in text
    assert "| compiled and ran: cuda | pass |" in text
    assert text.count("| pass |") == 4 and text.count("| MISS |") == 3 and text.count("| not measured |") == 1
    assert printed.count("| pass |") == 4


def test_strip_drops_round_samples_and_keeps_the_statistics(tmp_path):
    path = _write(tmp_path, [_bench("cpu", "time_conv", "fwd", "fp32", "s1", 1e-3, nbytes=10**6)])
    assert report.main(["--strip", str(path)]) == 0
    stats = json.loads(path.read_text())["benchmarks"][0]["stats"]
    assert "data" not in stats and stats["median"] == 1e-3 and stats["rounds"] == 10
    assert report.main([str(path)]) == 0  # still a valid input


def test_strip_keeps_exactly_what_the_report_reads(tmp_path):
    """A result as pytest-benchmark saves it, stripped: only report.KEPT_KEYS and KEPT_STATS stay, and the
    report (host times included) is the same as from the full file."""
    full = _bench("cpu", "time_conv", "fwd", "fp32", "s1", 1e-3, nbytes=10**6)
    full.update(group="ops", name="test_op[cpu]", fullname="benchmarks/x.py::test_op[cpu]", param="cpu")
    full.update(params={"provider": "cpu"}, options={"timer": "perf_counter", "warmup": False})
    full["stats"].update(min=9e-4, max=2e-3, mean=1.1e-3, stddev=1e-4, iqr=1e-4, q1=9.5e-4, ops=1000.0)
    host = {
        "params": {"backend": "triton", "op": "time_conv", "direction": "fwd"},
        "extra_info": {"host_us": 8.0, "host_us_min": 7.5, "host_us_max": 9.0, "load": 0.5},
        "stats": {"median": 0.1, "rounds": 1, "stddev": 0.0},
        "options": {},
    }
    path = _write(tmp_path, [full, host])
    assert report.main([str(path)]) == 0
    before = (tmp_path / "report.md").read_text()
    assert report.main(["--strip", str(path)]) == 0
    stripped = json.loads(path.read_text())["benchmarks"]
    assert set(stripped[0]) == set(report.KEPT_KEYS) and set(stripped[0]["stats"]) == set(report.KEPT_STATS)
    assert set(stripped[1]) == set(report.KEPT_KEYS) and set(stripped[1]["stats"]) == set(report.KEPT_STATS)
    assert report.main([str(path)]) == 0
    assert (tmp_path / "report.md").read_text() == before


def test_unreadable_results_give_one_line(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing.json")]) == 1
    assert capsys.readouterr().err.startswith("benchmarks.report: cannot read results:")


def test_the_suites_save_statistics_without_round_samples():
    from benchmarks import conftest

    saved = {"benchmarks": [_bench("cpu", "time_conv", "fwd", "fp32", "s1", 1e-3)]}
    conftest.pytest_benchmark_update_json(config=None, benchmarks=[], output_json=saved)
    assert "data" not in saved["benchmarks"][0]["stats"] and saved["benchmarks"][0]["stats"]["median"] == 1e-3


def test_host_times_are_reported_beside_the_gpu_numbers(tmp_path, capsys):
    """benchmarks/test_host_overhead.py's records (host.json in gpu_suite.sh) get their own table, also
    in the brief summary."""
    host = {
        "params": {"backend": "triton", "op": "time_conv", "direction": "fwd+bwd"},
        "extra_info": {
            "host_us": 45.04,
            "host_us_min": 44.0,
            "host_us_max": 51.0,
            "budget_us": 60.0,
            "launches_per_call": 3,
            "load": 1.5,
        },
        "stats": {"median": 0.1, "rounds": 1},
    }
    path = _write(tmp_path, [host, _bench("cpu", "time_conv", "fwd", "fp32", "s1", 1e-3, nbytes=10**6)])
    assert report.main([str(path), "--brief"]) == 0
    row = "| triton | time_conv | fwd+bwd | 45.0 (44.0-51.0) | 60 | 3 | 1.50 |"
    assert row in capsys.readouterr().out
    assert row in (tmp_path / "report.md").read_text()
