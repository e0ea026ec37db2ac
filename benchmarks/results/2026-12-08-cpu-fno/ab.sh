#!/usr/bin/env bash
# Before/after of the `cpu` backend's kernels at the FNO-1D shapes (ab.py), 2 and 1 threads: builds the
# C++ kernels of BASE (default: the commit this change started from) in a temporary directory with the op
# namespace renamed, so that both load in one process. Run from anywhere with the package installed
# (`pip install -e .`); writes ab-Nt.json and ab.log here.
set -eu -o pipefail
BASE=${BASE:-13699c9}
cd "$(dirname "$0")/../../.."
DIR=benchmarks/results/2026-12-08-cpu-fno
OLD=$(mktemp -d)
git archive "$BASE" | tar -x -C "$OLD"
sed -i 's/TORCH_LIBRARY(dsno_kernels,/TORCH_LIBRARY(dsno_old,/; s/TORCH_LIBRARY_IMPL(dsno_kernels,/TORCH_LIBRARY_IMPL(dsno_old,/' \
    "$OLD/csrc/spectral_time_conv.cpp"
(cd "$OLD" && DSNO_KERNELS_CUDA=0 python setup.py build_ext --inplace > build.log 2>&1)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} PYTHONUNBUFFERED=1
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    lscpu | grep "Model name"
    echo "before: $(git rev-parse --short "$BASE"); after: the working tree at $(git rev-parse --short HEAD)"
    echo "OMP_WAIT_POLICY=$OMP_WAIT_POLICY; load at start: $(cat /proc/loadavg)"
    for threads in 2 1; do
        echo "== $threads threads"
        python "$DIR/ab.py" "$OLD"/dsno_kernels/_C*.so --threads "$threads" --repeats "${REPEATS:-30}" \
            --out "$DIR/ab-${threads}t.json"
    done
    echo "load at end: $(cat /proc/loadavg)"
    date -u +%Y-%m-%dT%H:%M:%SZ
} 2>&1 | grep --line-buffered -v -E "Warning|warn\(" | tee "$DIR/ab.log"
rm -rf "$OLD"
