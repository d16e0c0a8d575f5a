#!/usr/bin/env bash
# Every GPU measurement of benchmarks/README.md, in one run (on a lent device machine:
# its python3 holds torch; PYTHONPATH=src makes the library importable without installing).
set -u
export PYTHONPATH=src
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/extract_throughput.py --arch resnet50 --input-size 224 --n 16384 --batch-size 256 --device cuda --workers 16 --naive-n 4096
python3 benchmarks/extract_throughput.py --arch resnet50 --input-size 224 --n 16384 --batch-size 256 --device cuda --workers 16 --naive-n 4096 --compile
python3 benchmarks/extract_throughput.py --arch resnet50 --input-size 224 --n 8192 --batch-size 256 --device cuda --precision fp32 --workers 16 --naive-n 2048
python3 benchmarks/gpu_check.py
