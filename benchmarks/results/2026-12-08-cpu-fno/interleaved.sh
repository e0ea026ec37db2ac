#!/usr/bin/env bash
# The CPU set's FNO-1D op cases with every provider (neuraloperator included) called in alternation
# (python -m benchmarks.interleaved), 2 and 1 threads. Writes interleaved-Nt.json and interleaved.log here.
set -u -o pipefail
cd "$(dirname "$0")/../../.."
DIR=benchmarks/results/2026-12-08-cpu-fno
SHAPES=cpu-fno1d,cpu-fno1d-t256,cpu-fno1d-t200,cpu-fno1d-t1000,cpu-fno1d-t1024
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} PYTHONUNBUFFERED=1
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    lscpu | grep "Model name"
    echo "OMP_WAIT_POLICY=$OMP_WAIT_POLICY; load at start: $(cat /proc/loadavg)"
    for threads in 2 1; do
        echo "== $threads threads"
        python -m benchmarks.interleaved --set cpu --shapes "$SHAPES" --threads "$threads" \
            --repeats "${REPEATS:-15}" --out "$DIR/interleaved-${threads}t.json"
    done
    echo "load at end: $(cat /proc/loadavg)"
    date -u +%Y-%m-%dT%H:%M:%SZ
} 2>&1 | grep --line-buffered -v -E "Warning|warn\(" | tee "$DIR/interleaved.log"
