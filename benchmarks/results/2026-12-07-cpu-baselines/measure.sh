#!/usr/bin/env bash
# The tiny model's training step with dsno_fft and cpu temporal layers, interleaved, at 1 and 2 threads,
# with libgomp's default wait policy (spin, then sleep) and OMP_WAIT_POLICY=PASSIVE (sleep at once), on
# the machine as it is and with two busy loops of our own beside it (a controlled "other job" per core);
# one run with denormals flushed. Run from the repository root; writes measure.log here.
set -u
cd "$(dirname "$0")/../../.."
DIR=benchmarks/results/2026-12-07-cpu-baselines
{
    lscpu | grep "Model name"
    python -c "import torch; print('torch', torch.__version__)"
    echo "load at start: $(cat /proc/loadavg)"
    run() { PYTHONPATH=. python "$DIR/tiny_step.py" --rounds 12 "$@" 2>&1 | grep -v Warning; }
    for load in none busy; do
        pids=()
        if [[ $load == busy ]]; then
            for _ in 1 2; do python -c "while True: pass" & pids+=($!); done
        fi
        echo "== extra load: $load"
        run --threads 1
        run --threads 2
        OMP_WAIT_POLICY=PASSIVE run --threads 2
        [[ $load == none ]] && run --threads 2 --flush-denormal
        for pid in "${pids[@]}"; do kill "$pid"; done
        wait 2>/dev/null
    done
    echo "load at end: $(cat /proc/loadavg)"
} | tee "$DIR/measure.log"
