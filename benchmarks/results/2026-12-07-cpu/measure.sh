#!/usr/bin/env bash
# The CPU set of the benchmark suites at 2 and 1 threads, as one command (run from anywhere):
#   bash benchmarks/results/2026-12-07-cpu/measure.sh
# Per thread count N: ops-Nt.json (every op case: both ops, fp32 and bf16, fwd and fwd+bwd, every provider
# that runs here, neuraloperator included when installed), model-Nt.json (the tiny model's training step
# and one-pass sampling; the 512-step teacher and the profiled share only at 2 threads), report-Nt.md; the
# log is measure.log, with the machine, versions and the load average at start and end.
# OMP_WAIT_POLICY=PASSIVE: on a machine shared with other jobs, libgomp's default spin-wait makes a
# 2-thread time depend on the others' load (../2026-12-07-cpu-baselines/); PASSIVE is every provider's
# best configuration there, and it is the same for all of them.
set -u -o pipefail
cd "$(dirname "$0")/../../.."
DIR=benchmarks/results/2026-12-07-cpu
SECONDS_PER_CASE=${BENCH_SECONDS:-0.3}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} PYTHONUNBUFFERED=1
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    lscpu | grep "Model name"
    python -c "import torch; print('torch', torch.__version__)"
    python -c "import neuralop; print('neuraloperator', neuralop.__version__)" 2>&1 | tail -1
    echo "OMP_WAIT_POLICY=$OMP_WAIT_POLICY, $SECONDS_PER_CASE s per op case"
    echo "load at start: $(cat /proc/loadavg)"
    for threads in 2 1; do
        echo "== $threads threads, load $(cat /proc/loadavg)"
        model_k="not compiled"
        [[ $threads == 1 ]] && model_k="not compiled and (train_step or sample_one_pass) and not share"
        OMP_NUM_THREADS=$threads python -m pytest -p no:cacheprovider benchmarks/test_ops_bench.py --bench-set cpu \
            --benchmark-only -q --benchmark-quiet --bench-seconds "$SECONDS_PER_CASE" --benchmark-json="$DIR/ops-${threads}t.json"
        OMP_NUM_THREADS=$threads python -m pytest -p no:cacheprovider benchmarks/test_model_bench.py --bench-set cpu \
            --benchmark-only -q --benchmark-quiet --bench-seconds "$SECONDS_PER_CASE" -k "$model_k" \
            --benchmark-json="$DIR/model-${threads}t.json"
        python -m benchmarks.report "$DIR/ops-${threads}t.json" "$DIR/model-${threads}t.json" --out "$DIR" >/dev/null \
            && mv "$DIR/report.md" "$DIR/report-${threads}t.md"
        rm -f "$DIR"/*.png
    done
    echo "load at end: $(cat /proc/loadavg)"
    date -u +%Y-%m-%dT%H:%M:%SZ
} 2>&1 | grep -v -E "Warning|warn\(" | tee "$DIR/measure.log"
# Keep what the reports read (extra_info and the statistics), compactly.
python - "$DIR"/ops-*t.json "$DIR"/model-*t.json <<'PY'
import json, sys

for name in sys.argv[1:]:
    with open(name) as f:
        data = json.load(f)
    data.pop("commit_info", None)
    for bench in data["benchmarks"]:
        for key in ("params", "options", "fullname"):
            bench.pop(key, None)
        keep = ("min", "max", "mean", "stddev", "median", "q1", "q3", "rounds", "iterations")
        bench["stats"] = {k: bench["stats"][k] for k in keep if k in bench["stats"]}
    with open(name, "w") as f:
        json.dump(data, f, separators=(",", ":"))
PY
