"""Per-epoch checkpoints that survive a killed process, and the work folder that holds them.

    RUN_DIR/../.RUN_NAME.train/      the work folder of RUN_DIR while it trains (a hidden sibling:
      state.json                     RUN_DIR itself appears only complete, see runtime.atomic)
      weights-0003.npz               every model and optimizer variable after epoch 3, and the RNG state
      best.npz                       the classifier's variables at the best epoch so far
      logs/                          TensorBoard scalars, live

`state.json` is written last and atomically and names its arrays file, so a kill at any instant leaves
either the previous epoch's checkpoint or the new one, never a mix. Variables are stored by their
Keras path and order and restored by assignment: exact, and the same on every backend.
Standard library and numpy only; the Keras variables are passed in.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgevision.runtime.atomic import atomic_write_bytes

STATE_FILE = "state.json"
BEST_FILE = "best.npz"
STATE_VERSION = 1


def work_dir(out_dir: str | os.PathLike) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.train"


@dataclass
class RunState:
    """Where training stands after `epoch` finished epochs (numbered from 0, contiguous across phases)."""

    config: dict
    fingerprint: str
    epoch: int = 0
    phase: int = 0  # index into the run's phases of the last finished epoch
    phase_start: int = 0  # first epoch of that phase
    phase_done: bool = False  # the phase ended (its epochs ran out, or early stopping)
    history: dict[str, list[float]] = field(default_factory=dict)
    monitor: dict = field(default_factory=dict)
    resumed_at: list[int] = field(default_factory=list)  # epochs at which a killed run was resumed

    def to_dict(self) -> dict:
        return {"version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "RunState":
        data = {k: v for k, v in data.items() if k not in ("version", "arrays")}
        return cls(**data)


def variable_arrays(variables) -> tuple[list[str], list[np.ndarray]]:
    return [v.path for v in variables], [np.asarray(v.numpy()) for v in variables]


def _canonical(path: str) -> str:
    # Keras numbers auto-named objects per process ("seed_generator_3"): the same model built after
    # another one gets other numbers, so they cannot tell two models apart.
    return re.sub(r"_\d+(?=/|$)", "", path)


def assign_arrays(variables, paths: list[str], arrays: list[np.ndarray], what: str) -> None:
    """Assign saved arrays to `variables` in order (Keras lists a model's variables by structure, not by
    trainability, so the order survives unfreezing); the paths and shapes must match, otherwise the
    checkpoint belongs to another model and the error names the first difference."""
    variables = list(variables)
    current = [v.path for v in variables]
    if [_canonical(p) for p in current] != [_canonical(p) for p in paths]:
        diff = next((i for i, (a, b) in enumerate(zip(current, paths)) if _canonical(a) != _canonical(b)),
                    min(len(current), len(paths)))
        raise ValueError(
            f"The {what} checkpoint does not fit this model: {len(paths)} saved variables, {len(current)} in the "
            f"model; first difference at #{diff}: saved {paths[diff] if diff < len(paths) else None!r}, "
            f"model {current[diff] if diff < len(current) else None!r}"
        )
    for path, variable, value in zip(current, variables, arrays):
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"The {what} checkpoint has shape {value.shape} for {path}, the model {variable.shape}")
        variable.assign(value)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _rng_state() -> tuple[dict, np.ndarray]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return ({"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [version, list(internal), gauss]},
            np.asarray(keys))


def _set_rng_state(info: dict, keys: np.ndarray) -> None:
    kind, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, keys, pos, has_gauss, cached))
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(folder: Path, state: RunState, model_variables, optimizer_variables) -> None:
    """Write the arrays file of this epoch, then `state.json` pointing at it, then drop older arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    model_paths, model_arrays = variable_arrays(model_variables)
    optimizer_paths, optimizer_arrays = variable_arrays(optimizer_variables)
    rng_info, rng_keys = _rng_state()
    arrays = {f"m{i}": a for i, a in enumerate(model_arrays)}
    arrays.update({f"o{i}": a for i, a in enumerate(optimizer_arrays)})
    arrays["rng_keys"] = rng_keys
    name = f"weights-{state.epoch:04d}.npz"
    atomic_write_bytes(folder / name, _npz_bytes(arrays))
    data = {**state.to_dict(), "arrays": name, "model_paths": model_paths, "optimizer_paths": optimizer_paths,
            "rng": rng_info}
    atomic_write_bytes(folder / STATE_FILE, json.dumps(data).encode())
    for old in folder.glob("weights-*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)


@dataclass
class Checkpoint:
    state: RunState
    model_paths: list[str]
    model_arrays: list[np.ndarray]
    optimizer_paths: list[str]
    optimizer_arrays: list[np.ndarray]
    rng: dict
    rng_keys: np.ndarray

    def restore_rng(self) -> None:
        _set_rng_state(self.rng, self.rng_keys)


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The last complete checkpoint in `folder`, or None if there is none."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as bad:
        raise ValueError(f"Checkpoint state '{path}' is not valid JSON ({bad}); delete '{folder}' to start over") from None
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"Checkpoint '{path}' has version {data.get('version')!r}, expected {STATE_VERSION}; "
                         f"delete '{folder}' to start over")
    with np.load(folder / data["arrays"]) as arrays:
        model = [arrays[f"m{i}"] for i in range(len(data["model_paths"]))]
        optimizer = [arrays[f"o{i}"] for i in range(len(data["optimizer_paths"]))]
        keys = arrays["rng_keys"]
    return Checkpoint(RunState.from_dict({k: v for k, v in data.items()
                                          if k not in ("model_paths", "optimizer_paths", "rng")}),
                      data["model_paths"], model, data["optimizer_paths"], optimizer, data["rng"], keys)


def save_best(folder: Path, variables) -> None:
    paths, arrays = variable_arrays(variables)
    atomic_write_bytes(folder / BEST_FILE, _npz_bytes({"paths": np.asarray(paths), **{f"v{i}": a for i, a in enumerate(arrays)}}))


def restore_best(folder: Path, variables) -> bool:
    """Assign the best epoch's variables; False when no best was recorded."""
    path = folder / BEST_FILE
    if not path.is_file():
        return False
    with np.load(path) as saved:
        paths = [str(p) for p in saved["paths"]]
        assign_arrays(variables, paths, [saved[f"v{i}"] for i in range(len(paths))], "best-epoch")
    return True
