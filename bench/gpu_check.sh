#!/usr/bin/env bash
# One call on a GPU machine: the kernel tests compiled for the GPU, then the attention benchmark.
# Results (device, versions, shapes, numbers) go to $OUT if set (the device tool's output
# folder), else bench/results/. Usage: bash bench/gpu_check.sh [bench/attention.py flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import jax; assert jax.default_backend() == 'gpu', jax.devices(); print(jax.devices())"
python -m pytest -q tests/test_block_sparse_attention.py tests/test_block_tables.py \
    tests/test_video_patterns.py
python bench/attention.py --out="${OUT:-bench/results}" "$@"
