#!/bin/bash
# CPU re-measurement after the CPU kernel changes (run on a quiet machine).
set -e
cd "$(git rev-parse --show-toplevel)"
# (in the project environment)
OUT=benchmarks/results/2026-11-29-cpu-v2
mkdir -p $OUT
{
  echo "# $(date -u) $(uptime)"
  for shape in cpu-c128-16 cpu-c128-16 cpu-c128-16 cpu-c64-32 cpu-c256-8; do
    echo "\$ python -m benchmarks.harness --shape $shape --repeats 30"
    python -m benchmarks.harness --shape $shape --repeats 30
    echo
  done
  echo "# $(date -u) $(uptime)"
} 2>&1 | tee $OUT/harness.log
echo "# before tiny: $(uptime)" > $OUT/model.log
OMP_NUM_THREADS=1 python -m pytest benchmarks/test_model_bench.py --benchmark-only -q \
  -k "tiny and (train_step or sample_one_pass) and (dsno_fft or cpu)" --benchmark-json=$OUT/model.json 2>&1 | tail -3 | tee -a $OUT/model.log
echo "# after tiny: $(uptime)" >> $OUT/model.log
python -m benchmarks.report --strip $OUT/model.json
python -m benchmarks.report $OUT/model.json > $OUT/report.md
cat $OUT/report.md | head -40
