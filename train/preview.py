"""A PNG grid of augmented samples, to check by eye what an AugmentConfig does before training with it.

Layout: one row per source image; the first column is the original, the next `columns` cells are
independent augmented draws of it. `count` augmented cells in all, so ceil(count / columns) rows; rows
cycle through the given images; unused cells of the last row stay grey.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from edgevision.runtime.atomic import atomic_write_bytes

from .augment import AugmentConfig
from .augment_layer import augment_batch

_GAP = 2  # grey pixels between cells
_MIN_CELL = 96  # small images (28-px digits) are enlarged by an integer factor so the grid is readable
_GREY = 128


def preview_grid(
    images: np.ndarray,
    config: AugmentConfig,
    path: str | os.PathLike,
    *,
    count: int = 16,
    columns: int = 4,
    seed: int = 0,
) -> Path:
    """Write the grid for RGB (N, H, W, 3) or one (H, W, 3) 0-255 image(s) to `path` (PNG); return it."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise ValueError(f"images must be RGB (N, H, W, 3) or (H, W, 3) with N >= 1, got shape {images.shape}")
    if count < 1 or columns < 1:
        raise ValueError(f"count and columns must be at least 1, got count={count}, columns={columns}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"Preview path {str(path)!r} must end in .png")

    rows = -(-count // columns)
    sources = images[np.arange(rows) % len(images)].astype(np.float32)
    # One batched call: row r's columns are draws r*columns .. r*columns+columns-1.
    augmented = augment_batch(np.repeat(sources, columns, axis=0), config, seed=seed)

    height, width = images.shape[1:3]
    scale = max(1, -(-_MIN_CELL // max(height, width)))
    cell_h, cell_w = height * scale, width * scale
    grid = np.full(
        (rows * (cell_h + _GAP) + _GAP, (columns + 1) * (cell_w + _GAP) + _GAP, 3), _GREY, dtype=np.uint8
    )

    def place(picture: np.ndarray, row: int, col: int) -> None:
        pixels = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
        pixels = cv2.resize(pixels, (cell_w, cell_h), interpolation=cv2.INTER_NEAREST)
        top, left = _GAP + row * (cell_h + _GAP), _GAP + col * (cell_w + _GAP)
        grid[top : top + cell_h, left : left + cell_w] = pixels

    for row in range(rows):
        place(sources[row], row, 0)
        for col in range(columns):
            index = row * columns + col
            if index < count:
                place(augmented[index], row, col + 1)

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the preview grid for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encoded.tobytes())  # temporary sibling + os.replace
    return path
