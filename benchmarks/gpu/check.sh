#!/usr/bin/env bash
# The GPU training check for issue 3, as one device run (at most about 8 minutes on an H100/H200, each step under a timeout):
#   bash benchmarks/gpu/fetch.sh        # here, once: wheels + data into .gpu/
#   device run: bash benchmarks/gpu/check.sh   with carry [".gpu"], timeout_s 540
# Writes $OUT/gpu-check.log (everything) and $OUT/*.json (the figures).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl || exit 1
REPO=$(pwd)
cd /tmp  # not the checkout: its edgevision/ folder would shadow the installed package
export PYTHONPATH=/tmp/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
# 1. Throughput, the figure: MobileNetV2 1.0 224x224, bf16, augmentation off then on, same process.
timeout 180 python3 -m edgevision.train.bench throughput --backbone mobilenet_v2 --alpha 1.0 --input-size 224 \
    --batch-size 256 --steps 60 --mixed-precision --json "$OUT/throughput-bf16.json"
# 2. The real training path on the GPU: the limited-data benchmark's transfer settings through train(),
#    at 160 px (the CPU table's size) and 224 px (Lite0's own size; too slow to sweep on 2 CPU cores).
mkdir -p /tmp/ld && tar -C /tmp/ld -xzf "$REPO/.gpu/limited-data.tgz"
for size in 160 224; do
    mkdir -p /tmp/ld$size && ln -sfn /tmp/ld/data /tmp/ld$size/data
    timeout 120 python3 -m edgevision.train.bench limited-data --out /tmp/ld$size --input-size $size \
        --only "efficientnet_lite0 finetune"; cp /tmp/ld$size/results.json "$OUT/limited-data-gpu-$size.json" 2>/dev/null
done
