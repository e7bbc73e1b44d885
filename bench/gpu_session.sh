#!/usr/bin/env bash
# The one prepared device run of issue 17: every GPU check and figure in one command (~6-8 min).
#
#   bash bench/gpu_prepare.sh                       # here, first (wheels for the device, no device time)
#   device.run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=590)
#   bash bench/gpu_session.sh --dry-run             # anywhere: the same steps on the CPU, tiny settings
#
# Steps, each under its own time limit, each log in $OUT (what the device tool brings back):
#   info   fed8 info (torch, CUDA, the GPU, FP8 compute yes/no)
#   tests  the GPU tests (tests/test_device.py, tests/test_fp8_linear.py): CUDA run vs CPU run, FP8 Linear on the GPU
#   fp8    bench/gpu_fp8.py: vit_tiny and the cnn's fc layers, FP8 against BF16 at batch 1024, accuracy deltas
#   w1     bench/w1_fedavg.py W1 on cuda and cpu (16 threads), sequential and batched clients, ratio to the CPU
# A step that fails or runs out of time is reported and the next one runs. fed8 is used from src/
# (PYTHONPATH): the image's torch (2.11) is not the 2.13.0 that pyproject pins, and nothing can be
# installed from an index there.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fed8-site .whl/*.whl \
    && export PYTHONPATH=/tmp/fed8-site
fi
export PYTHONPATH="$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log to $OUT/NAME.log, never stop the script
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "== $name: exit $rc$([ $rc = 124 ] && echo ' (time limit)')"
}

if [ $dry = 1 ]; then
  step info 60 python3 -c "import sys; from fed8.cli import main; sys.exit(main(['info']))"
  step tests 300 python3 -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_fp8_linear.py
  step fp8 300 python3 bench/gpu_fp8.py --dry-run
  step w1 300 python3 bench/w1_fedavg.py --workload S8 --clients 8 --rounds 2 --threads 2 --modes sequential,batched \
    --devices cpu
else
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/gpu.txt"
  step info 60 python3 -c "import sys; from fed8.cli import main; sys.exit(main(['info']))"
  step tests 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_device.py tests/test_fp8_linear.py
  step fp8 150 python3 bench/gpu_fp8.py
  step w1 200 python3 bench/w1_fedavg.py --workload W1 --rounds 3 --threads 16 --modes sequential,batched \
    --devices cpu,cuda
fi
echo "== done $(date -u +%H:%M:%S); logs in $OUT"
