#!/usr/bin/env bash
# One device call: environment, build for the card found, GPU tests, op and model benchmarks, the
# static kernel report, the report with the targets.
#
#   bash benchmarks/gpu_suite.sh                 on the GPU machine (about 8 minutes at most)
#   SMOKE=1 bash benchmarks/gpu_suite.sh         anywhere: every phase on tiny inputs, in about a minute
#
# Phases, in order, each under `timeout` inside an overall deadline (BUDGET_S), so one hang cannot eat
# the call; pytest gets SIGINT first, which still writes the JSON of the benchmarks that finished:
#   env          card, driver, torch / triton / CUDA versions, load, DSNO_KERNELS_* in force
#   build        pip install -e . --no-build-isolation --no-deps for the card's arch (GPU only)
#   info         python -m dsno_kernels.info, where it exists
#   tests        tests/test_cuda.py, tests/test_triton.py, tests/test_cuda_graphs.py and the generic
#                suite (tests/test_ops.py) on the GPU backends (pytest-xdist when installed); the
#                static kernel report (python -m benchmarks.kernel_report, where it exists; no GPU
#                needed) runs beside them, since it only loads the CPU, and is waited for before timing
#   bench-ops    every op benchmark of the set: both ops, fp32 and bf16, fwd and fwd+bwd, every
#                provider, host-inclusive and kernel-only times, and the copy bandwidth -> ops.json
#   bench-model  training step, one-pass sampling (also under a CUDA graph), the 512-step teacher DDIM,
#                the profiled share of the step in temporal layers -> model.json
#   bench-compile  the training step under torch.compile(fullgraph=True) -> compile.json
#   bench-host   benchmarks/test_host_overhead.py, where it exists: the Python + dispatch time per call
#                with the kernel launch stubbed -> host.json
#   interleaved  (CPU only) python -m benchmarks.harness: dsno_fft vs the cpu backend, call by call
#   report       python -m benchmarks.report over the JSON: report.md (targets with pass/MISS) + plots
# With no GPU it runs the CPU set (no build: the installed extension; OMP_WAIT_POLICY=PASSIVE unless set),
# or with SMOKE=1 the smoke set. The committed CPU runs use benchmarks/results/<date>-cpu/measure.sh, which
# runs the CPU set at 2 and 1 threads.
#
# Writes to $OUT when set (the device tool brings $OUT back), else to benchmarks/results/<date>-<device>/
# (SMOKE=1: a temporary folder, never under benchmarks/results/): suite.log, run.md (card, driver,
# versions, date, settings, each phase's exit status), ops.json, model.json, compile.json, host.json,
# kernel_report.txt, report.md, speedup_by_shape.png, bandwidth_by_shape.png. With $OUT set the files
# are also copied to benchmarks/results/<date>-<device>/. Committed JSON keeps statistics only (the
# suites drop pytest-benchmark's per-round samples when they save).
#
# Switches (environment):
#   SMOKE=1             tiny shapes, 0.01 s per case, tests that need a GPU only (skipped without one)
#   SKIP_BUILD=1        keep the installed extension (the default without a GPU)
#   SKIP_TESTS=1  SKIP_KERNEL_REPORT=1 (the default with SMOKE=1)  SKIP_OPS_BENCH=1  SKIP_MODEL_BENCH=1
#   SKIP_COMPILE_BENCH=1  SKIP_HOST_BENCH=1
#   TEST_ARGS           pytest arguments for the tests (default: the GPU tests, see above; without a
#                       GPU only the CUDA test files, which then skip: the CPU suite is CI's job)
#   BENCH_SECONDS       timed seconds per op case (default 0.08; model cases 4x that)
#   BENCH_ARGS          extra pytest arguments for every benchmark run, e.g.
#                       "--bench-shapes cifar10-32,fno1d --bench-seconds 0.1"
#   CUDA_ARCHS          arch list for the build (default: the card's compute capability, e.g. 90)
#   BUDGET_S            deadline for the whole script in seconds (default 480, inside the tool's 600)
#   BUILD_S TESTS_S KERNEL_REPORT_S BENCH_OPS_S BENCH_MODEL_S BENCH_COMPILE_S BENCH_HOST_S   phase
#                       limits (defaults 120 110 90 150 80 110 40 s; the deadline shortens whichever
#                       comes late)
#   PYTHON              interpreter (default python3)
#   DSNO_KERNELS_TRITON_AUTOTUNE  default 1 here (autotuning on); 0 runs the heuristic configuration
set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
START=$(date +%s)
BUDGET=${BUDGET_S:-480}
REPORT_RESERVE=30  # seconds kept for the report and the copies
SMOKE=${SMOKE:-0}
export DSNO_KERNELS_TRITON_AUTOTUNE=${DSNO_KERNELS_TRITON_AUTOTUNE:-1}
export PYTHONUNBUFFERED=1

DEVICE=$($PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')")
SLUG=$(echo "$DEVICE" | tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')
RESULTS=benchmarks/results/$(date -u +%Y-%m-%d)-$SLUG
if [[ -n ${OUT:-} ]]; then
    DEST=$OUT
elif [[ $SMOKE == 1 ]]; then
    DEST=$(mktemp -d -t dsno-gpu-suite-XXXXXX)
    RESULTS=$DEST  # a smoke run never lands in benchmarks/results/
else
    DEST=$RESULTS
fi
mkdir -p "$DEST" "$RESULTS"
exec > >(tee -a "$DEST/suite.log") 2>&1
TEE_PID=$!

STATUS=()
step() {  # step NAME MAX_SECONDS COMMAND...: run COMMAND with a timeout that fits the deadline
    local name=$1 max=$2
    shift 2
    local left=$((START + BUDGET - REPORT_RESERVE - $(date +%s)))
    if ((left < 15)); then
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
skipped() {  # skipped NAME WHY
    echo "== $1: skipped ($2)"
    STATUS+=("$1=skipped")
}
has_module() { $PY -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }

echo "== environment ($(date -u +%Y-%m-%dT%H:%M:%SZ), results in $DEST, SMOKE=$SMOKE)"
nvidia-smi 2>/dev/null || echo "nvidia-smi: not available (no GPU: the $([[ $SMOKE == 1 ]] && echo smoke || echo CPU) set)"
uptime  # the load: other processes on the machine skew host-inclusive and CPU timings
ENV_SUMMARY=$($PY - <<'EOF'
import os, platform, sys
import torch
print("python", sys.version.split()[0], "on", platform.platform())
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| device",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print("capability", torch.cuda.get_device_capability(), "| SMs", props.multi_processor_count,
          "| L2 MiB", getattr(props, "L2_cache_size", 0) / 2**20, "| memory GiB", round(props.total_memory / 2**30, 1))
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton not installed")
print("settings:", {k: v for k, v in sorted(os.environ.items()) if k.startswith(("DSNO_KERNELS_", "TRITON_"))})
EOF
)
echo "$ENV_SUMMARY"
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)

if [[ $DEVICE == cpu && -z ${SKIP_BUILD:-} ]]; then
    SKIP_BUILD=1  # no card to build for: keep the extension that is installed
fi
if [[ $DEVICE == cpu ]]; then
    # libgomp's default spin-wait makes a multi-threaded CPU time follow the other jobs' load on a shared
    # machine (benchmarks/results/2026-12-07-cpu-baselines/): threads sleep at barriers, for every provider
    export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
    echo "OMP_WAIT_POLICY=$OMP_WAIT_POLICY"
fi
if [[ ${SKIP_BUILD:-0} == 1 ]]; then
    skipped build "SKIP_BUILD=1 or no GPU"
else
    ARCHS=${CUDA_ARCHS:-$($PY -c "import torch; major, minor = torch.cuda.get_device_capability(); print(f'{major}{minor}')")}
    export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
    step build "${BUILD_S:-120}" env DSNO_KERNELS_CUDA_ARCHS="$ARCHS" MAX_JOBS=16 \
        $PY -m pip install -e . --no-build-isolation --no-deps -q
fi
$PY -c "import dsno_kernels; print('dsno_kernels backends:', dsno_kernels.available_backends(), '| cpu:', dsno_kernels.available_backends('cpu'), '| cuda:', dsno_kernels.available_backends('cuda'))"
if has_module dsno_kernels.info; then
    step info 30 $PY -m dsno_kernels.info
else
    skipped info "no dsno_kernels.info in this tree"
fi

if [[ $SMOKE == 1 ]]; then
    BENCH_SET=(--bench-set smoke --bench-seconds 0.01)
else  # about 290 op cases on a GPU: 0.08 s each keeps the op benchmarks near two minutes
    BENCH_SET=(--bench-seconds "${BENCH_SECONDS:-0.08}")
fi

# The static kernel report needs no GPU, only CPU: it runs beside the tests (its host times are
# per-thread CPU time, which the tests' load moves little), never beside the benchmarks.
KERNEL_REPORT_PID=
if [[ ${SKIP_KERNEL_REPORT:-$SMOKE} == 1 ]]; then
    skipped kernel-report "SKIP_KERNEL_REPORT=1"
elif [[ ! -f benchmarks/kernel_report.py ]]; then
    skipped kernel-report "no benchmarks/kernel_report.py in this tree"
else
    echo "== kernel-report (limit ${KERNEL_REPORT_S:-90}s, in the background): $PY -m benchmarks.kernel_report > $DEST/kernel_report.txt"
    (
        t0=$(date +%s)
        timeout -s INT -k 10 "${KERNEL_REPORT_S:-90}" $PY -m benchmarks.kernel_report >"$DEST/kernel_report.txt" 2>&1
        rc=$?
        echo "== kernel-report: rc=$rc after $(($(date +%s) - t0))s ($DEST/kernel_report.txt)"
        exit $rc
    ) &
    KERNEL_REPORT_PID=$!
fi

if [[ ${SKIP_TESTS:-0} == 1 ]]; then
    skipped tests "SKIP_TESTS=1"
else
    if [[ -n ${TEST_ARGS:-} ]]; then
        eval "TESTS=($TEST_ARGS)"  # keeps quoted arguments such as -k "a or b" whole
    elif [[ $SMOKE == 1 || $DEVICE == cpu ]]; then  # the GPU tests, which skip here: the CPU suite is CI's
        TESTS=(tests/test_cuda_graphs.py tests/test_cuda.py -q)
    else
        # -k keeps the generic suite's GPU cases: ids name the backend and the device ("triton-cuda").
        TESTS=(tests/test_cuda.py tests/test_triton.py tests/test_cuda_graphs.py tests/test_ops.py
               -k "cuda or triton" -q --tb=short -rfE --show-capture=no --maxfail=40)
        if [[ $DEVICE != cpu ]] && has_module xdist; then
            TESTS+=(-n 12)
        fi
    fi
    step tests "${TESTS_S:-110}" $PY -m pytest -p no:cacheprovider "${TESTS[@]}"
fi
if [[ -n $KERNEL_REPORT_PID ]]; then
    wait "$KERNEL_REPORT_PID"
    STATUS+=("kernel-report=$?")
    tail -n 40 "$DEST/kernel_report.txt"
fi

BENCH=(-p no:cacheprovider --benchmark-only -q --benchmark-quiet --durations=5 "${BENCH_SET[@]}")
eval "EXTRA=(${BENCH_ARGS:-})"
if [[ ${SKIP_OPS_BENCH:-0} == 1 ]]; then
    skipped bench-ops "SKIP_OPS_BENCH=1"
else
    step bench-ops "${BENCH_OPS_S:-150}" $PY -m pytest benchmarks/test_ops_bench.py "${BENCH[@]}" \
        --benchmark-json="$DEST/ops.json" "${EXTRA[@]}"
fi
if [[ ${SKIP_MODEL_BENCH:-0} == 1 ]]; then
    skipped bench-model "SKIP_MODEL_BENCH=1"
else
    step bench-model "${BENCH_MODEL_S:-80}" $PY -m pytest benchmarks/test_model_bench.py "${BENCH[@]}" \
        -k "not compiled" --benchmark-json="$DEST/model.json" "${EXTRA[@]}"
fi
if [[ ${SKIP_COMPILE_BENCH:-0} == 1 ]]; then
    skipped bench-compile "SKIP_COMPILE_BENCH=1"
elif [[ $DEVICE == cpu && $SMOKE != 1 ]]; then
    skipped bench-compile "the CPU set has no compiled cases"
else
    step bench-compile "${BENCH_COMPILE_S:-110}" $PY -m pytest benchmarks/test_model_bench.py "${BENCH[@]}" \
        -k compiled --benchmark-json="$DEST/compile.json" "${EXTRA[@]}"
fi
if [[ ${SKIP_HOST_BENCH:-0} == 1 ]]; then
    skipped bench-host "SKIP_HOST_BENCH=1"
elif [[ ! -f benchmarks/test_host_overhead.py ]]; then
    skipped bench-host "no benchmarks/test_host_overhead.py in this tree"
else
    step bench-host "${BENCH_HOST_S:-40}" $PY -m pytest benchmarks/test_host_overhead.py "${BENCH[@]}" \
        --benchmark-json="$DEST/host.json" "${EXTRA[@]}"
fi
if [[ $DEVICE == cpu ]]; then
    if [[ $SMOKE == 1 ]]; then
        step interleaved 30 $PY -m benchmarks.harness --shape smoke-2d --repeats 3
    else
        step interleaved 60 $PY -m benchmarks.harness
    fi
fi

echo "== report"
JSONS=()
for f in "$DEST/ops.json" "$DEST/model.json" "$DEST/compile.json" "$DEST/host.json"; do [[ -s $f ]] && JSONS+=("$f"); done
if ((${#JSONS[@]})); then
    timeout -k 10 60 $PY -m benchmarks.report "${JSONS[@]}" --out "$DEST" --brief
    rc=$?
    echo "== report: rc=$rc ($DEST/report.md)"
    STATUS+=("report=$rc")
else
    echo "no benchmark JSON to report"
    STATUS+=("report=none")
fi

cat >"$DEST/run.md" <<EOF
# $DEVICE, $(date -u +%Y-%m-%d): benchmarks/gpu_suite.sh

- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - START)) s in all
- card: $DEVICE; driver: ${DRIVER:-none}
$(echo "$ENV_SUMMARY" | sed 's/^/- /')
- switches: SMOKE=$SMOKE BUDGET_S=$BUDGET TEST_ARGS="${TEST_ARGS:-}" BENCH_ARGS="${BENCH_ARGS:-}"
- phases (exit status; 124 = stopped by its time limit): ${STATUS[*]}
- files: suite.log (the log), ops.json / model.json / compile.json / host.json (pytest-benchmark JSON,
  statistics only), kernel_report.txt, report.md and the plots (python -m benchmarks.report)
EOF

if [[ $DEST != "$RESULTS" ]]; then
    cp "$DEST"/* "$RESULTS"/
fi
echo "== done in $(($(date +%s) - START))s: ${STATUS[*]}"
ls -la "$DEST"
exec >&- 2>&-
wait "$TEE_PID"  # the log is complete before the call returns
