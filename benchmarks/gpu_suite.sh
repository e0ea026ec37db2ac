#!/usr/bin/env bash
# One device call: environment, build for the card found, GPU tests, GPU benchmarks, report.
#
#   bash benchmarks/gpu_suite.sh
#
# Writes suite.log, ops.json, model.json, report.md, speedup_by_shape.png and bandwidth_by_shape.png
# (6 flat files) to $OUT when it is set (the device tool brings $OUT back), and copies them to
# benchmarks/results/<date>-<device>/. Every step runs under `timeout` inside an overall deadline, so
# one hang cannot eat the call; pytest gets SIGINT first, which still writes the JSON of the
# benchmarks that finished. With no GPU it runs the CPU set: a dry run anywhere.
#
# Switches (environment):
#   SKIP_BUILD=1      keep the installed extension        SKIP_TESTS=1   skip tests/
#   SKIP_MODEL_BENCH=1  skip the model-level benchmarks
#   TEST_ARGS         pytest arguments for the tests (default: "tests -x -q")
#   BENCH_ARGS        extra pytest arguments for both benchmark runs, e.g.
#                     "--bench-shapes cifar10-32,fno1d --bench-seconds 0.1"
#   CUDA_ARCHS        arch list for the build (default: the card's compute capability, e.g. 90)
#   BUDGET_S          deadline for the whole script in seconds (default 540, inside the tool's 600)
#   TESTS_S, BENCH_OPS_S, BENCH_MODEL_S   limits of the tests and the two benchmark runs (default 180, 260, 150 s)
#   PYTHON            interpreter (default python3)
set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
START=$(date +%s)
BUDGET=${BUDGET_S:-540}
REPORT_RESERVE=45  # seconds kept for the report and the copies

DEVICE=$($PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')")
SLUG=$(echo "$DEVICE" | tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')
RESULTS=benchmarks/results/$(date +%Y-%m-%d)-$SLUG
DEST=${OUT:-$RESULTS}
mkdir -p "$RESULTS" "$DEST"
exec > >(tee -a "$DEST/suite.log") 2>&1
TEE_PID=$!

STATUS=()
step() {  # step NAME MAX_SECONDS COMMAND...: run COMMAND with a timeout that fits the deadline
    local name=$1 max=$2
    shift 2
    local left=$((START + BUDGET - REPORT_RESERVE - $(date +%s)))
    if ((left < 20)); then
        echo "== $name: skipped, the time budget is spent"
        STATUS+=("$name=skipped")
        return
    fi
    local limit=$((max < left ? max : left))
    echo "== $name (limit ${limit}s): $*"
    local t0=$(date +%s)
    timeout -s INT -k 20 "$limit" "$@"
    local rc=$?
    echo "== $name: rc=$rc after $(($(date +%s) - t0))s"
    STATUS+=("$name=$rc")
}

echo "== environment ($(date -u +%Y-%m-%dT%H:%M:%SZ), results in $DEST)"
nvidia-smi || echo "nvidia-smi: not available (no GPU: CPU set)"
uptime  # the load: other processes on the machine skew CPU timings
$PY - <<'EOF'
import platform, sys
import torch
print("python", sys.version.split()[0], "on", platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print("capability", torch.cuda.get_device_capability(), "SMs", props.multi_processor_count,
          "L2 MiB", getattr(props, "L2_cache_size", 0) / 2**20, "memory GiB", round(props.total_memory / 2**30, 1))
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton not installed")
EOF

if [[ ${SKIP_BUILD:-0} == 1 ]]; then
    echo "== build: skipped (SKIP_BUILD=1)"
else
    if [[ $DEVICE != cpu ]]; then
        ARCHS=${CUDA_ARCHS:-$($PY -c "import torch; major, minor = torch.cuda.get_device_capability(); print(f'{major}{minor}')")}
    else
        ARCHS=${CUDA_ARCHS:-80;90}
    fi
    export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
    step build 300 env DSNO_KERNELS_CUDA_ARCHS="$ARCHS" $PY -m pip install -e . --no-build-isolation --no-deps
fi
$PY -c "import dsno_kernels; print('dsno_kernels backends:', dsno_kernels.available_backends(), '| cpu:', dsno_kernels.available_backends('cpu'), '| cuda:', dsno_kernels.available_backends('cuda'))"

if [[ ${SKIP_TESTS:-0} == 1 ]]; then
    echo "== tests: skipped (SKIP_TESTS=1)"
else
    # shellcheck disable=SC2086  # TEST_ARGS is a list of arguments
    step tests "${TESTS_S:-180}" $PY -m pytest ${TEST_ARGS:-tests -x -q}
fi

COLUMNS_ARGS=(--benchmark-columns=median,iqr,rounds,iterations --durations=10)
# shellcheck disable=SC2086
step bench-ops "${BENCH_OPS_S:-260}" $PY -m pytest benchmarks/test_ops_bench.py --benchmark-only -q "${COLUMNS_ARGS[@]}" \
    --benchmark-json="$DEST/ops.json" ${BENCH_ARGS:-}
if [[ ${SKIP_MODEL_BENCH:-0} == 1 ]]; then
    echo "== bench-model: skipped (SKIP_MODEL_BENCH=1)"
else
    # shellcheck disable=SC2086
    step bench-model "${BENCH_MODEL_S:-150}" $PY -m pytest benchmarks/test_model_bench.py --benchmark-only -q \
        "${COLUMNS_ARGS[@]}" --benchmark-json="$DEST/model.json" ${BENCH_ARGS:-}
fi

echo "== report"
JSONS=()
for f in "$DEST/ops.json" "$DEST/model.json"; do [[ -s $f ]] && JSONS+=("$f"); done
if ((${#JSONS[@]})); then
    timeout -k 10 60 $PY -m benchmarks.report "${JSONS[@]}" --out "$DEST"
    rc=$?
    echo "== report: rc=$rc ($DEST/report.md)"
    STATUS+=("report=$rc")
else
    echo "no benchmark JSON to report"
    STATUS+=("report=none")
fi

if [[ $DEST != "$RESULTS" ]]; then
    cp "$DEST"/* "$RESULTS"/
fi
echo "== done in $(($(date +%s) - START))s: ${STATUS[*]}"
ls -la "$DEST"
exec >&- 2>&-
wait "$TEE_PID"  # the log is complete before the call returns
