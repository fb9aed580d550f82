"""Claim: a CNN needs far fewer weights than an MLP and is not fooled when the object moves or is flipped.

Three models with the same head (Dense -> BatchNorm -> ReLU -> softmax; see small_models.py), trained
by `train()` on the same folder: an MLP, a small CNN ending in flatten + Dense, the same CNN ending in
global average pooling; the ones in `StudyScale.augment_models` again with shift + flip augmentation.
Each is scored on the held-out images centred, shifted by each offset (the mean over +x, -x, +y, -y;
empty borders black, as Fashion-MNIST's background), flipped and rotated. The statements name what
produces robustness to shifts: pooling and augmentation, not convolution alone.
"""

from __future__ import annotations

import numpy as np

from .study import ClaimResult, Finding, StudyContext

MODELS = {"mlp": "MLP", "small_cnn": "CNN + flatten + Dense", "small_cnn_gap": "CNN + global average pooling"}
HALF = 0.5  # "robust": loses at most half of the accuracy the reference model loses


def shifted(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """`images` (N, H, W, C) moved by dx pixels right and dy down; the uncovered border is 0."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def rotated(images: np.ndarray, degrees: float) -> np.ndarray:
    """`images` rotated about their centre (counter-clockwise), corners filled with 0."""
    import cv2

    h, w = images.shape[1:3]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return np.stack([cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
                     for image in images])


def transformed_accuracies(model, images: np.ndarray, labels: np.ndarray, shifts, rotations) -> dict:
    """Accuracy of `model` on the images centred, shifted (mean of four directions per offset), flipped
    and rotated; each direction's figure is kept too."""
    def accuracy(batch):
        return float(np.mean(np.argmax(model.predict(batch, batch_size=256, verbose=0), axis=1) == labels))

    figures = {"centred": accuracy(images), "shift": {}, "shift_by_direction": {}}
    for d in shifts:
        if d == 0:
            figures["shift"]["0"] = figures["centred"]
            continue
        directions = {"+x": accuracy(shifted(images, d, 0)), "-x": accuracy(shifted(images, -d, 0)),
                      "+y": accuracy(shifted(images, 0, d)), "-y": accuracy(shifted(images, 0, -d))}
        figures["shift_by_direction"][str(d)] = directions
        figures["shift"][str(d)] = float(np.mean(list(directions.values())))
    figures["horizontal_flip"] = accuracy(images[:, :, ::-1])
    figures["vertical_flip"] = accuracy(images[:, ::-1])
    figures["rotation"] = {f"{r:g}": accuracy(rotated(images, r)) for r in rotations}
    return figures


def parameter_counts(head_units: int, size: int, filters: tuple[int, ...]) -> dict:
    """Weights, computed from the layer shapes (not quoted): one hidden neuron of an MLP at 224x224x3,
    one 3x3 filter, and the first trainable layer of each model at `size` and at 224."""
    def flat_cnn_features(s: int) -> int:
        for _ in filters:
            s //= 2
        return s * s * filters[-1]

    figures = {"one_mlp_neuron_224x224x3": 224 * 224 * 3 + 1, "one_3x3_filter_rgb": 3 * 3 * 3 + 1}
    for s in sorted({size, 224}):
        figures[f"at_{s}"] = {
            "mlp_hidden_layer": (s * s * 3 + 1) * head_units,
            "cnn_first_conv_layer": (3 * 3 * 3 + 1) * filters[0],
            "cnn_flatten_dense_layer": (flat_cnn_features(s) + 1) * head_units,
            "cnn_gap_dense_layer": (filters[-1] + 1) * head_units,
        }
    return figures


def invariance_claim(ctx: StudyContext) -> ClaimResult:
    import keras

    from edgevision.runtime.preprocess import PreprocessPolicy

    from .augment import AugmentConfig
    from .dataset import load_image_folder
    from .model import ModelConfig, build_classifier
    from .small_models import CONV_FILTERS
    from .trainer import TrainConfig

    scale, seed = ctx.scale, ctx.config.seed
    size = scale.small_size
    data = ctx.task(scale.per_class)
    heldout = load_image_folder(data, PreprocessPolicy(size, size), seed=seed).heldout()
    # Shifts up to the reference offset and left-right flips: what the test below moves the images by.
    shift = scale.reference_shift / size
    augment = AugmentConfig(width_shift=shift, height_shift=shift, horizontal_flip=True, fill_mode="constant",
                            fill_value=0.0)
    runs, params = {}, {}
    for backbone, title in MODELS.items():
        model_config = ModelConfig(backbone=backbone, input_size=size, weights="none", mode="scratch", dropout=0.0)
        params[backbone] = int(build_classifier(model_config, len(ctx.source.labels)).count_params())
        for augmented in (False, True):
            if augmented and backbone not in scale.augment_models:
                continue
            name = f"invariance-{backbone}{'-augmented' if augmented else ''}"
            config = TrainConfig(model=model_config, epochs=scale.small_epochs, learning_rate=scale.small_lr,
                                 seed=seed, augment=augment if augmented else AugmentConfig.none(), batch_size=32,
                                 tensorboard=False, keep="last")
            run = ctx.fit(name, data, config)
            model = keras.saving.load_model(run["run_dir"] / "model.keras")
            figures = transformed_accuracies(model, heldout.images, heldout.labels, scale.shifts, scale.rotations)
            runs[name.removeprefix("invariance-")] = {"model": backbone, "augmented": augmented,
                                                      "parameters": params[backbone], **figures}
    counts = parameter_counts(ModelConfig().head_units, size, CONV_FILTERS)
    figures = {"input_size": size, "test_images": len(heldout), "reference_shift": scale.reference_shift,
               "parameters": params, "computed": counts, "runs": runs}
    result = ClaimResult(
        key="invariance", title="MLP vs CNN: weights, and what makes a network robust to shifts",
        method=(f"An MLP, a CNN ending in flatten + Dense and the same CNN ending in global average pooling "
                f"(Conv 3x3 32 and 64, each with BatchNorm, ReLU, 2x2 max pooling; the same Dense 256 head), "
                f"trained by train() for {scale.small_epochs} epochs on {scale.per_class} images per class at "
                f"{size}x{size}, {'some ' if scale.augment_models else ''}also with augmentation (shifts up to "
                f"{scale.reference_shift} px and left-right flips). Scored on {len(heldout):,} held-out images centred, "
                f"shifted by {', '.join(map(str, scale.shifts[1:]))} px (mean over +x, -x, +y, -y, black border), "
                f"flipped and rotated by {', '.join(f'{r:g}' for r in scale.rotations)} degrees."),
        figures=figures)
    result.findings = invariance_findings(figures)
    result.plots["Accuracy against shift, and on flipped and rotated images"] = plot_invariance(
        figures, ctx.plots / "invariance.png")
    return result


def drop(run: dict, shift: int) -> float:
    """Accuracy points lost when the images move by `shift` pixels."""
    return run["centred"] - run["shift"][str(shift)]


def invariance_findings(figures: dict) -> list[Finding]:
    """The statements and what the figures say about each; computed from `figures` alone (the tests
    recompute them from study.json)."""
    runs, d, p = figures["runs"], figures["reference_shift"], figures["parameters"]
    c = figures["computed"]
    mlp, flat, gap = runs["mlp"], runs["small_cnn"], runs["small_cnn_gap"]
    size = figures["input_size"]
    found = [Finding(
        "One hidden neuron of an MLP needs a weight for every input value; a convolution filter does not",
        True,
        f"One MLP neuron at 224x224x3 needs {c['one_mlp_neuron_224x224x3']:,} weights; a 3x3 filter on RGB needs "
        f"{c['one_3x3_filter_rgb']} at any image size (the first conv layer: "
        f"{c['at_224']['cnn_first_conv_layer']:,} against the MLP's hidden layer's "
        f"{c['at_224']['mlp_hidden_layer']:,} at 224x224x3).")]
    for key, name in (("small_cnn", "CNN + flatten"), ("small_cnn_gap", "CNN + global average pooling")):
        holds = p[key] < p["mlp"]
        found.append(Finding(
            f"A {name} needs fewer weights than the MLP", holds,
            f"At {size}x{size}x3 the {name} has {p[key]:,} weights against the MLP's {p['mlp']:,}"
            + ("." if holds else ": the Dense layer after flatten still sees every position "
               f"({c['at_224']['cnn_flatten_dense_layer']:,} weights at 224x224).")))
    best_cnn = max(flat["centred"], gap["centred"])
    found.append(Finding(
        "A CNN is more accurate than an MLP on centred images", best_cnn > mlp["centred"],
        f"Centred: MLP {mlp['centred']:.1%}, CNN + flatten {flat['centred']:.1%}, CNN + global average pooling "
        f"{gap['centred']:.1%}."))
    found.append(Finding(
        "Convolution alone (CNN + flatten) makes the network robust to shifts",
        drop(flat, d) <= HALF * drop(mlp, d),
        f"Shifted by {d} px, the MLP goes from {mlp['centred']:.1%} to {mlp['shift'][str(d)]:.1%} "
        f"(-{drop(mlp, d):.1%} points) and the CNN + flatten from {flat['centred']:.1%} to "
        f"{flat['shift'][str(d)]:.1%} (-{drop(flat, d):.1%})."))
    found.append(Finding(
        "Global average pooling makes the CNN robust to shifts",
        drop(gap, d) <= HALF * drop(flat, d),
        f"Shifted by {d} px, the CNN + global average pooling goes from {gap['centred']:.1%} to "
        f"{gap['shift'][str(d)]:.1%} (-{drop(gap, d):.1%} points), against -{drop(flat, d):.1%} with flatten."))
    augmented = {k: v for k, v in runs.items() if v["augmented"]}
    if augmented:
        parts, holds = [], True
        for key, run in augmented.items():
            plain = runs[run["model"]]
            holds &= drop(run, d) <= HALF * max(drop(plain, d), 0.0) or drop(run, d) <= 0.02
            parts.append(f"{MODELS[run['model']]} {run['centred']:.1%} centred, -{drop(run, d):.1%} points at {d} px "
                         f"(without augmentation -{drop(plain, d):.1%})")
        found.append(Finding("Augmentation with shifts makes a model robust to shifts", holds,
                             "With shift and flip augmentation: " + "; ".join(parts) + "."))
    plain = {k: v for k, v in runs.items() if not v["augmented"]}
    kept = {k: v["horizontal_flip"] / max(v["centred"], 1e-9) for k, v in plain.items()}
    found.append(Finding(
        "A CNN (without flip augmentation) is not fooled when the image is flipped left-right",
        min(kept["small_cnn"], kept["small_cnn_gap"]) >= 0.9,
        "Flipped left-right, the models keep " + ", ".join(f"{MODELS[k]} {v:.0%}" for k, v in kept.items())
        + " of their centred accuracy (up-down: " + ", ".join(
            f"{v['vertical_flip'] / max(v['centred'], 1e-9):.0%}" for v in plain.values()) + ")."))
    largest = max(mlp["rotation"], key=float)
    kept = {k: v["rotation"][largest] / max(v["centred"], 1e-9) for k, v in plain.items()}
    found.append(Finding(
        f"A CNN is not fooled when the image is rotated by {largest} degrees",
        min(kept["small_cnn"], kept["small_cnn_gap"]) >= 0.9,
        f"Rotated by {largest} degrees, the models keep " + ", ".join(f"{MODELS[k]} {v:.0%}" for k, v in kept.items())
        + " of their centred accuracy."))
    return found


def plot_invariance(figures: dict, path):
    from .report import pyplot

    plt = pyplot()
    runs = figures["runs"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    colours = dict(zip(MODELS, ("tab:red", "tab:blue", "tab:green")))
    for key, run in runs.items():
        shifts = sorted(int(s) for s in run["shift"])
        left.plot(shifts, [run["shift"][str(s)] for s in shifts], "--" if run["augmented"] else "-", marker="o",
                  color=colours[run["model"]], label=MODELS[run["model"]] + (", augmented" if run["augmented"] else ""))
    left.set_xlabel(f"shift in pixels (image {figures['input_size']} px; mean of +x, -x, +y, -y)")
    left.set_ylabel("test accuracy")
    left.set_title("accuracy against shift")
    left.set_ylim(0, 1)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    names = ["centred", "left-right flip", "up-down flip"] + [f"rotated {r}°" for r in next(iter(runs.values()))["rotation"]]
    width = 0.8 / len(runs)
    for i, (key, run) in enumerate(runs.items()):
        values = [run["centred"], run["horizontal_flip"], run["vertical_flip"], *run["rotation"].values()]
        right.bar(np.arange(len(names)) + i * width, values, width, color=colours[run["model"]],
                  hatch="//" if run["augmented"] else None, alpha=0.85,
                  label=MODELS[run["model"]] + (", augmented" if run["augmented"] else ""))
    right.set_xticks(np.arange(len(names)) + width * (len(runs) - 1) / 2, names, rotation=20)
    right.set_ylim(0, 1)
    right.set_title("flipped and rotated")
    right.grid(alpha=0.3, axis="y")
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
