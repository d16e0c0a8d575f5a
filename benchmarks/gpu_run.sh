#!/usr/bin/env bash
# Every GPU measurement of benchmarks/README.md (on a lent device machine: its python3 holds
# torch; PYTHONPATH=src makes the library importable without installing). Two parts, each
# under the device's 10 minutes a command (each step has its own time limit, so one slow
# compile cannot take the rest with it):
#   bash benchmarks/gpu_run.sh 1   # correctness checks, then uint8 -> features: eager, compiled, + CUDA graph
#   bash benchmarks/gpu_run.sh 2   # a JPEG folder -> features (nvjpeg, then host decoding); max-autotune
set -u
export PYTHONPATH=src
part=${1:-1}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run() { echo "== $*"; timeout "$@"; }
R50="benchmarks/extract_throughput.py --arch resnet50 --input-size 224 --batch-size 256 --device cuda --threads 16"
if [ "$part" = 1 ]; then
    run 240 python3 benchmarks/gpu_check.py
    run 60 python3 $R50 --n 16384 --naive-n 4096 --workers 16
    run 120 python3 $R50 --n 16384 --naive-n 0 --compile
    run 90 python3 $R50 --n 16384 --naive-n 0 --compile --cuda-graph
else
    run 120 python3 $R50 --n 4096 --naive-n 0 --compile --cuda-graph --files 8192 --decode gpu
    run 120 python3 $R50 --n 4096 --naive-n 0 --compile --cuda-graph --files 8192 --decode cpu
    run 240 python3 $R50 --n 16384 --naive-n 0 --compile max-autotune --cuda-graph
fi
