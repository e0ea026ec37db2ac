#!/usr/bin/env bash
# The CPU set's op cases with every provider timed call by call in alternation (python -m
# benchmarks.interleaved), at 2 and 1 threads: ratios that do not depend on when a case ran (run from
# anywhere; after measure.sh, which runs the pytest-benchmark suite). Writes interleaved-Nt.json and
# interleaved.log here.
set -u -o pipefail
cd "$(dirname "$0")/../../.."
DIR=benchmarks/results/2026-12-07-cpu
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} PYTHONUNBUFFERED=1
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    lscpu | grep "Model name"
    echo "OMP_WAIT_POLICY=$OMP_WAIT_POLICY; load at start: $(cat /proc/loadavg)"
    for threads in 2 1; do
        echo "== $threads threads"
        python -m benchmarks.interleaved --set cpu --threads "$threads" --repeats "${REPEATS:-15}" \
            --out "$DIR/interleaved-${threads}t.json"
    done
    echo "load at end: $(cat /proc/loadavg)"
    date -u +%Y-%m-%dT%H:%M:%SZ
} 2>&1 | grep --line-buffered -v -E "Warning|warn\(" | tee "$DIR/interleaved.log"
