#!/usr/bin/env bash
# `make gpu-check`: the product's GPU path in one short run (< 5 min on one H200): synthetic LLP-size data
# (10,000 train videos), one Ray Train worker on the GPU, DeepSpeed bf16, the NCCL process group, PPL with the
# EMA teacher, 2 epochs, then test. Prints epoch time, videos/s, peak GPU memory and the test table.
#   bash bench/gpu_check.sh [OUT_DIR]        (needs a CUDA build of torch in .venv: make install TORCH_SPEC=...)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu-check}
py=${PYTHON:-.venv/bin/python}
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA device visible to torch')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ ! -f "$out/data/synth.json" ]; then
  "$py" -m distributed.synth --out "$out/data" --train 10000 --val 649 --test 1200 --pool --overwrite
fi
for split in train val test; do
  [ -f "$out/shards/$split/manifest.json" ] || "$py" -m distributed.shards --features "$out/data/features" \
    --annotations "$out/data/annotations" --split "$split" --out "$out/shards/$split" --num-shards 16 --workers 8
done
start=$(date +%s)
"$py" -m distributed.train --config ppl --no-mlflow name=gpu-check "output_dir=$out/run" "data.shards=$PWD/$out/shards" \
  distributed.num_workers=1 distributed.use_gpu=true distributed.engine=deepspeed distributed.precision=bf16 \
  distributed.cpus_per_worker=8 data.batch_size=128 data.loader_workers=4 optim.epochs=2 ppl.warmup_epochs=1
echo "gpu-check: wall time $(( $(date +%s) - start )) s"
"$py" - "$out/run/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for h in r["history"]:
    print(f"epoch {h['epoch']}: {h['videos_per_s']:.0f} videos/s, step {h['step_ms']:.1f} ms, "
          f"peak GPU memory {h.get('gpu_peak_memory_gib', float('nan')):.2f} GiB")
PY
