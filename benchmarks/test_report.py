"""The report's arithmetic on a hand-made pytest-benchmark JSON (not a benchmark)."""

from __future__ import annotations

import json

from benchmarks import report


def _bench(provider, op, direction, dtype, shape, median, nbytes=None, copy_gbps=10.0):
    gbps = nbytes / median / 1e9 if nbytes else None
    info = {"provider": provider, "op": op, "direction": direction, "dtype": dtype, "shape": shape,
            "bytes": nbytes, "gbps": gbps, "copy_gbps": copy_gbps, "device": "TestCard", "torch": "2.x",
            "triton": "3.x"}
    return {"extra_info": info, "stats": {"median": median, "rounds": 10}}


def test_report_tables_and_plots(tmp_path):
    benchmarks = [
        _bench("dsno_fft", "time_conv", "fwd", "fp32", "s1", 4e-3, nbytes=10**6),
        _bench("dense_gemm", "time_conv", "fwd", "fp32", "s1", 2e-3, nbytes=10**6),
        _bench("cpu", "time_conv", "fwd", "fp32", "s1", 1e-3, nbytes=10**6),
        _bench("cpu", "time_conv", "fwd", "fp32", "s2", 1e-3, nbytes=10**6),  # no baselines at s2
        _bench("torch", "copy", "fwd", "fp32", "copy-1MiB", 2e-4, nbytes=2 * 10**6),
        _bench("cpu", "sample_one_pass", "fwd", "fp32", "tiny-b8", 1e-2),
        _bench("teacher", "sample_teacher_ddim512", "fwd", "fp32", "tiny-b8", 1.0),
        {"extra_info": {}, "stats": {"median": 1.0, "rounds": 1}},  # another suite's result: ignored
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"benchmarks": benchmarks}))

    assert report.main([str(path)]) == 0
    text = (tmp_path / "report.md").read_text()
    # 1e6 bytes in 1 ms = 1 GB/s = 10% of 10 GB/s; 4 ms / 1 ms and 2 ms / 1 ms.
    assert "| s1 | cpu | 1.000 ms | 1 | 10.0% | 4.00x | 2.00x |" in text
    assert "| s2 | cpu | 1.000 ms | 1 | 10.0% | - | - |" in text
    assert "| TestCard | copy-1MiB | 200.0 us | 10 |" in text
    assert "| tiny-b8 | fp32 | sample_one_pass | cpu | 10.000 ms | 1.250 ms |" in text
    assert "one-pass sampling with cpu is 100.0x faster per image" in text
    assert (tmp_path / "speedup_by_shape.png").stat().st_size > 0
    assert (tmp_path / "bandwidth_by_shape.png").stat().st_size > 0
