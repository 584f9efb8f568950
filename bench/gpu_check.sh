#!/usr/bin/env bash
# One call on a GPU machine: the kernel tests compiled for the GPU, the attention benchmark, the
# training-step benchmark (XL at 16K tokens per video: model.attention=auto, which runs our kernel
# for the padded text; cuDNN with the padding as a dense mask; our kernel on a window), then the
# sampling benchmark (XL at 32K tokens: dense vs AdaSpa at s = 0.8 and 0.9, attention auto).
# Results (device, versions, shapes, numbers) go to $OUT if set (the device tool's output
# folder), else bench/results/. Usage: bash bench/gpu_check.sh [python -m bench.attention flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import jax; assert jax.default_backend() == 'gpu', jax.devices(); print(jax.devices())"
python -m pytest -q tests/test_block_sparse_attention.py tests/test_block_tables.py \
    tests/test_video_patterns.py tests/test_adaspa.py tests/test_attention.py
python -m bench.attention --out="${OUT:-bench/results}" "$@"
for variant in "--config.model.attention=auto" "--config.model.attention=cudnn" \
    "--config.model.attention=block_sparse --config.model.sparse_pattern=window"; do
  # shellcheck disable=SC2086
  python -m bench.train_step --out="${OUT:-bench/results}" --config=configs/video_dit.py:size=XL \
      --config.train.batch_size=2 --config.model.remat=dots_saveable $variant
done
python -m bench.sampling --out="${OUT:-bench/results}"
