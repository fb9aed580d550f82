"""Benchmark: this augmentation layer against Keras' stock random layers, compiled the same way.

    python -m edgevision.train.augment_bench [--batch 64] [--size 224] [--repeats 5] [--jit auto|on|off]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from .augment import AugmentConfig
from .augment_layer import augmentation_layer


def _timed(fn, batch, repeats: int) -> float:
    """Images per second of fn(batch) after a warm-up (compile) call; the median of `repeats` calls."""
    from keras import ops

    ops.convert_to_numpy(fn(batch))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ops.convert_to_numpy(fn(batch))
        times.append(time.perf_counter() - start)
    return len(batch) / float(np.median(times))


def _compiled(layer, jit_compile: bool):
    """(predict function, whether it got XLA) for the layer in training mode, compiled by Keras itself
    (tf.function or jax.jit), so both layers are timed through the same machinery."""
    import keras

    class Training(keras.Model):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, x):
            return self.inner(x, training=True)

    model = Training(layer)
    with warnings.catch_warnings():  # Keras warns when it refuses XLA for a layer; the result says so
        warnings.simplefilter("ignore", UserWarning)
        model.compile(jit_compile=jit_compile)
    return model.predict_on_batch, bool(model.jit_compile)


def benchmark(batch: int = 64, size: int = 224, repeats: int = 5, jit_modes: tuple[bool, ...] | None = None) -> list[dict]:
    """images/s of this layer (the stock chain's geometry, and the full `strong` preset) against Keras'
    RandomFlip+RandomRotation+RandomZoom+RandomTranslation, compiled the same way, in one process.

    One result per compile mode: by default XLA under JAX; under TensorFlow both the plain graph (what
    Keras' `jit_compile="auto"` picks on a CPU-only machine) and XLA.
    """
    import keras

    backend = keras.backend.backend()
    if jit_modes is None:
        jit_modes = {"jax": (True,), "tensorflow": (False, True)}.get(backend, (False,))
    images = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    geometry = AugmentConfig(rotation=10.0, width_shift=0.1, height_shift=0.1, zoom=0.1, horizontal_flip=True,
                             fill_mode="reflect")
    results = []
    for jit_compile in jit_modes:
        stock = keras.Sequential([
            keras.layers.RandomFlip("horizontal", seed=1),
            keras.layers.RandomRotation(geometry.rotation / 360.0, fill_mode="reflect", seed=2),  # fraction of a turn
            keras.layers.RandomZoom(geometry.zoom, fill_mode="reflect", seed=3),
            keras.layers.RandomTranslation(geometry.height_shift, geometry.width_shift, fill_mode="reflect", seed=4),
        ])
        row = {"backend": backend, "jit_compile": jit_compile, "batch": batch, "size": size}
        for name, layer in (
            ("edgevision_geometry", augmentation_layer(geometry, seed=0)),
            ("edgevision_strong", augmentation_layer(AugmentConfig.strong(), seed=0)),
            ("keras_stock_chain", stock),
        ):
            predict, compiled_with_xla = _compiled(layer, jit_compile)
            row[name] = _timed(predict, images, repeats)
            row[f"{name}_xla"] = compiled_with_xla
        results.append(row)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevision.train.augment_bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                        help="XLA compilation (auto: on under JAX; off, then on, under TensorFlow)")
    args = parser.parse_args(argv)
    modes = {"auto": None, "on": (True,), "off": (False,)}[args.jit]
    for row in benchmark(args.batch, args.size, args.repeats, modes):
        print(f"backend {row['backend']}, jit_compile={row['jit_compile']}, batch {args.batch}x{args.size}x{args.size}x3, "
              f"median of {args.repeats}")
        for key in ("edgevision_geometry", "edgevision_strong", "keras_stock_chain"):
            refused = " (Keras refused XLA for it: ran as a graph)" if row["jit_compile"] and not row[f"{key}_xla"] else ""
            print(f"  {key:22s} {row[key]:10.1f} images/s{refused}")
        print(f"  speed-up, same geometry: {row['edgevision_geometry'] / row['keras_stock_chain']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
