#!/usr/bin/env bash
# The GPU training check, as one run of at most about 9 minutes on a machine with an NVIDIA GPU, Python
# 3.12 with JAX (CUDA) and OpenCV, and no network:
#   bash benchmarks/gpu/fetch.sh        # on a machine with network, once: wheels + data into .gpu/
#   bash benchmarks/gpu/check.sh [STEP ...]   # on the GPU machine, from the repository root, with .gpu/ copied
#                                             # along; steps: throughput streaming limited-data data-parallel
#                                             # (default: all, about 10 minutes)
# Each step runs under its own timeout, so one that fails or hangs leaves the others' figures.
# Writes $OUT/gpu-check.log (everything) and $OUT/*.json (the figures).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl || exit 1
REPO=$(pwd)
cd /tmp  # not the checkout: its edgevision/ folder would shadow the installed package
export PYTHONPATH=/tmp/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# Steps 1 and 2 train the same model: the second one reuses the compiled step from this cache.
export JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
STEPS=${*:-throughput streaming limited-data data-parallel}
step() { echo "== $1 ($(date +%T))"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
step "machine"
nvidia-smi -L; nproc; grep -m1 "model name" /proc/cpuinfo
python3 -c "import jax, keras, cv2, numpy; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__, 'opencv', cv2.__version__, 'numpy', numpy.__version__)"

# 1. MobileNetV2 1.0 224x224 bf16 batch 256, augmentation off then on (the `light` preset), one process.
want throughput && step "throughput" && timeout 160 python3 -m edgevision.train.bench throughput --backbone mobilenet_v2 --alpha 1.0 --input-size 224 \
    --batch-size 256 --steps 40 --warmup 5 --mixed-precision --json "$OUT/throughput-bf16.json"

# 2. Fed from JPEG files on disk: decode images/s per core and with 8/16 decoders, in threads and in
#    processes, then the same training step (with augmentation) fed from memory and streamed from 4,096
#    500x375 JPEGs by 8, 12 and 16 decoders of each kind.
want streaming && step "streaming" && timeout 240 python3 -m edgevision.train.bench streaming --out /tmp/sb --images 4096 --workers 1,8,16 \
    --decoder processes,threads --train-workers 8,12,16 \
    --backbone mobilenet_v2 --alpha 1.0 --input-size 224 --batch-size 256 --steps 30 --warmup 5 \
    --mixed-precision --json "$OUT/streaming-bf16.json"

# 3. The limited-data benchmark's best setting through train(): EfficientNet-Lite0 fine-tuned at 224 px
#    on 50 Fashion-MNIST images a class, tested on all 10,000 test images.
if want limited-data; then
    step "limited-data"
    mkdir -p /tmp/ld && tar -C /tmp/ld -xzf "$REPO/.gpu/limited-data.tgz"
    timeout 240 python3 -m edgevision.train.bench limited-data --out /tmp/ld --input-size 224 \
        --only "efficientnet_lite0 finetune, no aug"
    cp /tmp/ld/results.json "$OUT/limited-data-gpu-224.json" 2>/dev/null
fi

# 4. keras.distribution.DataParallel on this machine's accelerators: the batch is sharded over a mesh of
#    every visible device and a few training steps run (with one GPU the mesh has one device).
want data-parallel && step "data-parallel" && timeout 120 python3 - <<'EOF' | tee "$OUT/data-parallel.txt"
import jax, keras, numpy as np
from edgevision.train.model import ModelConfig, build_classifier
devices = keras.distribution.list_devices()
distribution = keras.distribution.DataParallel(devices=devices)
batch = 32 * len(devices)
with distribution.scope():
    model = build_classifier(ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=96, weights="none",
                                         mode="scratch"), 10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).integers(0, 256, (batch * 4, 96, 96, 3)).astype("float32")
    y = np.arange(batch * 4) % 10
    history = model.fit(x, y, batch_size=batch, epochs=2, verbose=0)
layout = distribution.get_data_layout((batch, 96, 96, 3))
sharded = jax.device_put(x[:batch], layout.backend_layout)
print("devices", devices, "mesh", distribution.device_mesh.shape, "global batch", batch,
      "per-device shard", [s.data.shape for s in sharded.addressable_shards],
      "loss", [round(v, 4) for v in history.history["loss"]])
EOF
step "done"
