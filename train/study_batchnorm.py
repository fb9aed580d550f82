"""Claim: BatchNorm after convolutions makes training faster and more stable; and its pitfall on small
datasets (moving statistics that never catch up).

The classic small CNN (Conv -> BatchNorm -> ReLU -> pooling, twice, Dense -> BatchNorm -> softmax:
small_models.py's "small_cnn") with and without BatchNorm at each learning rate, trained by `train()`
(Adam, constant rate): validation accuracy after every epoch. The pitfall: the same BatchNorm model
with Keras' default momentum 0.99 (and the MobileNets' 0.999) instead of `momentum_for(steps)`; the
per-epoch validation accuracy is measured in inference mode with the moving statistics, which is what
keep="best" and early stopping read.
"""

from __future__ import annotations

import math

import numpy as np

from .study import ClaimResult, Finding, StudyContext

PITFALL_MOMENTA = (0.99, 0.999)  # Keras' BatchNormalization default; what Keras' MobileNets ship


def batchnorm_claim(ctx: StudyContext) -> ClaimResult:
    from .augment import AugmentConfig
    from .model import ModelConfig, momentum_for
    from .trainer import TrainConfig

    scale, seed = ctx.scale, ctx.config.seed
    size = scale.small_size
    data = ctx.task(scale.bn_per_class)
    batch_size = 32
    steps = math.ceil(scale.bn_per_class * len(ctx.source.labels) / batch_size)

    def config(batchnorm: bool, rate: float, momentum: float | None = None) -> TrainConfig:
        model = ModelConfig(backbone="small_cnn", input_size=size, weights="none", mode="scratch", dropout=0.0,
                            batchnorm=batchnorm)
        return TrainConfig(model=model, epochs=scale.bn_epochs, learning_rate=rate, seed=seed, batch_size=batch_size,
                           augment=AugmentConfig.none(), tensorboard=False, keep="last", bn_momentum=momentum)

    def summary(run: dict) -> dict:
        return {"val_accuracy": [round(float(v), 4) for v in run["history"].get("val_accuracy", [])],
                "test_accuracy": run["accuracy"], "seconds": run["seconds"]}

    runs = {}
    for rate in scale.bn_rates:
        for batchnorm in (True, False):
            name = f"{'with' if batchnorm else 'without'} BatchNorm, lr {rate:g}"
            runs[name] = {"batchnorm": batchnorm, "learning_rate": rate,
                          **summary(ctx.fit(f"batchnorm-{int(batchnorm)}-{rate:g}", data, config(batchnorm, rate)))}
    # The pitfall is a small-data one: on the small task (per_class images a class), few steps an epoch.
    pitfall_rate = min(scale.bn_rates)
    small = ctx.task(scale.per_class)
    small_steps = math.ceil(scale.per_class * len(ctx.source.labels) / batch_size)
    toolkit = momentum_for(small_steps)
    pitfall = {f"toolkit momentum {toolkit:.3g}": {
        "momentum": toolkit, **summary(ctx.fit("batchnorm-momentum-toolkit", small, config(True, pitfall_rate)))}}
    for momentum in PITFALL_MOMENTA:
        run = ctx.fit(f"batchnorm-momentum-{momentum:g}", small, config(True, pitfall_rate, momentum))
        pitfall[f"momentum {momentum:g}"] = {"momentum": momentum, **summary(run)}
    figures = {"input_size": size, "images_per_class": scale.bn_per_class, "epochs": scale.bn_epochs,
               "batch_size": batch_size, "steps_per_epoch": steps, "learning_rates": list(scale.bn_rates),
               "runs": runs, "pitfall": {"learning_rate": pitfall_rate, "toolkit_momentum": toolkit,
                                          "images_per_class": scale.per_class, "steps_per_epoch": small_steps,
                                          "runs": pitfall}}
    result = ClaimResult(
        key="batchnorm", title="BatchNorm: faster, more stable training, and the small-data pitfall",
        method=(f"The classic small CNN (Conv 3x3 32 -> BatchNorm -> ReLU -> max pool, Conv 3x3 64 -> BatchNorm -> "
                f"ReLU -> max pool, Dense 256 -> BatchNorm -> ReLU -> softmax) with and without its BatchNorm layers, "
                f"trained by train() with Adam at a constant learning rate of {', '.join(f'{r:g}' for r in scale.bn_rates)} "
                f"for {scale.bn_epochs} epochs on {scale.bn_per_class} images per class ({steps} steps an epoch); "
                f"validation accuracy after each epoch. Pitfall: the BatchNorm model at {pitfall_rate:g} on "
                f"{scale.per_class} images per class ({small_steps} steps an epoch) with the toolkit's "
                f"momentum_for({small_steps}) = {toolkit:.3g} against Keras' default 0.99 and the MobileNets' 0.999; "
                f"train() re-estimates the statistics before the final test either way."),
        figures=figures)
    result.findings = batchnorm_findings(figures)
    result.plots["Validation accuracy per epoch; the momentum pitfall"] = plot_batchnorm(figures, ctx.plots / "batchnorm.png")
    return result


def early(curve: list[float]) -> float:
    """Mean validation accuracy over the first half of the epochs: how fast a run gets somewhere."""
    half = max(1, math.ceil(len(curve) / 2))
    return float(np.mean(curve[:half])) if curve else float("nan")


def batchnorm_findings(figures: dict) -> list[Finding]:
    runs, rates = figures["runs"], figures["learning_rates"]
    pair = {r: (runs[f"with BatchNorm, lr {r:g}"], runs[f"without BatchNorm, lr {r:g}"]) for r in rates}
    faster = [r for r, (bn, plain) in pair.items() if early(bn["val_accuracy"]) > early(plain["val_accuracy"])]
    found = [Finding(
        "BatchNorm makes training faster", len(faster) * 2 > len(rates),
        "Mean validation accuracy over the first half of the epochs, with / without BatchNorm: " + "; ".join(
            f"lr {r:g}: {early(bn['val_accuracy']):.1%} / {early(plain['val_accuracy']):.1%}"
            for r, (bn, plain) in pair.items()) + f" (faster with BatchNorm at {len(faster)} of {len(rates)} rates).")]
    high = max(rates)
    bn, plain = pair[high]
    spread_bn = max(b["test_accuracy"] for b, _ in pair.values()) - min(b["test_accuracy"] for b, _ in pair.values())
    spread_plain = max(p["test_accuracy"] for _, p in pair.values()) - min(p["test_accuracy"] for _, p in pair.values())
    found.append(Finding(
        "BatchNorm makes training more stable (it tolerates a high learning rate)",
        bn["test_accuracy"] > plain["test_accuracy"] and spread_bn < spread_plain,
        f"At the highest rate ({high:g}) the test accuracy is {bn['test_accuracy']:.1%} with BatchNorm and "
        f"{plain['test_accuracy']:.1%} without; across the rates it varies by {spread_bn:.1%} points with BatchNorm "
        f"and {spread_plain:.1%} without."))
    pitfall = figures["pitfall"]["runs"]
    toolkit_key = next(k for k in pitfall if k.startswith("toolkit"))
    ours = pitfall[toolkit_key]
    default = pitfall["momentum 0.99"]
    # The three runs train the same weights (BatchNorm normalises with the batch while training; its momentum
    # only sets the moving statistics), so their last-epoch validation figures differ by the statistics alone.
    last = {name: run["val_accuracy"][-1] for name, run in pitfall.items()}
    found.append(Finding(
        "On a small dataset Keras' default BatchNorm momentum makes the per-epoch validation accuracy misleading; "
        "the toolkit's momentum does not",
        last[toolkit_key] - last["momentum 0.99"] >= 0.05,
        f"With {figures['pitfall']['steps_per_epoch']} steps an epoch, the same weights score "
        f"{last[toolkit_key]:.1%} on validation after the last epoch with the toolkit's momentum {ours['momentum']:.3g}, "
        f"{last['momentum 0.99']:.1%} with 0.99 and {last['momentum 0.999']:.1%} with 0.999 (after epoch 1: "
        f"{ours['val_accuracy'][0]:.1%}, {default['val_accuracy'][0]:.1%}, "
        f"{pitfall['momentum 0.999']['val_accuracy'][0]:.1%}); once train() re-estimates the statistics the test "
        f"accuracy is {ours['test_accuracy']:.1%}, {default['test_accuracy']:.1%} and "
        f"{pitfall['momentum 0.999']['test_accuracy']:.1%}."))
    return found


def plot_batchnorm(figures: dict, path):
    from .report import pyplot

    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, rate in enumerate(figures["learning_rates"]):
        for batchnorm, style in ((True, "-"), (False, "--")):
            run = figures["runs"][f"{'with' if batchnorm else 'without'} BatchNorm, lr {rate:g}"]
            curve = run["val_accuracy"]
            left.plot(range(1, len(curve) + 1), curve, style, marker="o", markersize=3, color=colours[i % len(colours)],
                      label=f"lr {rate:g}, {'with' if batchnorm else 'without'} BatchNorm")
    left.set_title("validation accuracy per epoch (solid: BatchNorm, dashed: none)")
    for k, (name, run) in enumerate(figures["pitfall"]["runs"].items()):
        curve = run["val_accuracy"]
        right.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, color=colours[(k + 4) % len(colours)],
                   label=f"{name} (test after re-estimation {run['test_accuracy']:.1%})")
    right.set_title(f"pitfall: BatchNorm momentum, {figures['pitfall']['steps_per_epoch']} steps an epoch, "
                    f"lr {figures['pitfall']['learning_rate']:g}")
    for axis in (left, right):
        axis.set_xlabel("epoch")
        axis.set_ylabel("validation accuracy")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
