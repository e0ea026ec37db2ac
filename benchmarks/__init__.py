"""Benchmarks of dsno_kernels against DSNO's own layer and a dense-GEMM baseline (pytest-benchmark
suites, `python -m benchmarks.report`, `benchmarks/gpu_suite.sh`, `python -m benchmarks.harness`)."""
