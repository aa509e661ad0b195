#!/usr/bin/env bash
# What to run the moment a CUDA GPU is available (about 10 minutes; never part of the tests):
#   1. a trainer=gpu smoke training of an LAE in bf16-mixed (a few hundred steps on ../shared/data/train),
#   2. benchmarks/gpu_check.py: every shipped model encoded on the GPU and decoded on the CPU and the
#      reverse (desynchronised decodes, differing samples, encode/decode ms per Kodak image).
# Needs the project's environment (make env) and ../shared/data beside the checkout.
# Results: benchmarks/results/gpu_check.json (and $OUT/gpu_check.json when $OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT_DIR=${OUT:-benchmarks/results}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)"

echo "== trainer=gpu smoke training, bf16-mixed"
start=$(date +%s)
WANDB_MODE=offline timeout 300 "$PY" train.py model=lae/mean_scale trainer=gpu trainer.precision=bf16-mixed \
  data=folder data.root=../shared/data/train data.batch_size=16 data.crop_size=256 data.num_workers=4 \
  trainer.max_steps=300 trainer.max_epochs=-1 trainer.limit_val_batches=2 trainer.val_check_interval=100 \
  logger=csv hydra.run.dir="$OUT_DIR/gpu_smoke" | tail -20
echo "smoke training: $(( $(date +%s) - start )) s"

echo "== encode on one device, decode on the other"
timeout 420 "$PY" benchmarks/gpu_check.py --images "${IMAGES:-8}" --out "$OUT_DIR/gpu_check.json"
