#!/usr/bin/env bash
# The first run on a lent GPU (issue 25): the figures the GPU plans cannot see, in about 10 minutes
# on one H100 (plan_gpu.py's CHECK_FIRST, items 1-3). Writes everything to $OUT (default gpu_first_run/).
#   bash benchmarks/gpu_first_run.sh            # with the project installed (".[gpu]")
set -u
out=${OUT:-gpu_first_run}
mkdir -p "$out"
py=${PYTHON:-python}
run() {
  echo "+ $*" | tee -a "$out/log.txt"
  timeout 240 "$@" 2>&1 | tee -a "$out/log.txt"
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
run "$py" benchmarks/bench_step.py --full --batch 1 --iters 10
run "$py" benchmarks/bench_step.py --full --batch 1 --iters 10 --settings default
run "$py" benchmarks/bench_generate.py --full --seconds 60 240 --steps 27 --batch 1 --repeats 2 --profile "$out/trace"
run "$py" benchmarks/bench_generate.py --full --seconds 60 --steps 27 --batch 1 --repeats 1 --settings default
