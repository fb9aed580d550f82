"""Claim: with limited data, transfer learning and augmentation are what make deep learning work; train
only a new head on a very small set, fine-tune everything from pretrained weights on a larger one.

For each number of training images per class, three runs of the same backbone through `train()`:
"scratch" (random init, every weight trains), "head" (ImageNet weights frozen, a new head trains) and
"finetune" (the head first, then every block at a lower rate), with and without augmentation; all
tested on the same held-out images. The crossover is the smallest count from which fine-tuning
everything stays ahead of the head alone.
"""

from __future__ import annotations

import numpy as np

from .study import ClaimResult, Finding, StudyContext

MODES = ("scratch", "head", "finetune")
LEARNING_RATES = {"scratch": 2e-3, "head": 1e-3, "finetune": 1e-3}  # as bench.limited_data_settings
FINE_TUNE_LR = 3e-4


def limited_data_claim(ctx: StudyContext) -> ClaimResult:
    from .augment import AugmentConfig
    from .bench import CLOTHES_AUGMENT, RECIPE
    from .model import ModelConfig
    from .trainer import TrainConfig

    scale, seed = ctx.scale, ctx.config.seed
    available = ctx.source.available_per_class()
    counts = [n for n in scale.counts if n <= available]
    if not counts:
        raise ValueError(f"The limited-data claim needs at least {min(scale.counts)} training images per class; "
                         f"the smallest class has {available} ({ctx.source.description})")
    augments = {"no augmentation": AugmentConfig.none()}
    if scale.limited_augment:
        augments["augmentation"] = CLOTHES_AUGMENT
    results: dict[str, dict[str, dict[str, float]]] = {a: {m: {} for m in MODES} for a in augments}
    seconds = {}
    for count in counts:
        data = ctx.task(count)
        for augment_name, augment in augments.items():
            for mode in MODES:
                if mode == "scratch" and scale.scratch_counts is not None and count not in scale.scratch_counts:
                    continue
                model = ModelConfig(backbone=scale.transfer_backbone, input_size=scale.transfer_size,
                                    weights="none" if mode == "scratch" else "imagenet", mode=mode)
                epochs = {"scratch": scale.scratch_epochs, "head": scale.head_epochs,
                          "finetune": scale.finetune_epochs[0]}[mode]
                extra = dict(fine_tune_epochs=scale.finetune_epochs[1], fine_tune_lr=FINE_TUNE_LR) if mode == "finetune" else {}
                config = TrainConfig(model=model, epochs=epochs, learning_rate=LEARNING_RATES[mode], seed=seed,
                                     augment=augment, batch_size=32, tensorboard=False, **RECIPE, **extra)
                name = f"limited-{count}-{mode}-{'aug' if augment.enabled else 'noaug'}"
                run = ctx.fit(name, data, config)
                results[augment_name][mode][str(count)] = run["accuracy"]
                seconds[name] = run["seconds"]
    figures = {"backbone": scale.transfer_backbone, "input_size": scale.transfer_size, "counts": counts,
               "epochs": {"scratch": scale.scratch_epochs, "head": scale.head_epochs,
                          "finetune": list(scale.finetune_epochs)},
               "test_accuracy": results,
               "crossover": {a: crossover(results[a], counts) for a in augments}, "seconds": seconds}
    result = ClaimResult(
        key="limited_data", title="Limited data: scratch, frozen-backbone head, full fine-tuning; augmentation",
        method=(f"{scale.transfer_backbone} at {scale.transfer_size} px trained by train() on {', '.join(map(str, counts))} "
                f"images per class: from scratch ({scale.scratch_epochs} epochs, lr {LEARNING_RATES['scratch']:g}), a new "
                f"head on the frozen ImageNet backbone ({scale.head_epochs} epochs) and full fine-tuning ("
                f"{scale.finetune_epochs[0]} head epochs, then {scale.finetune_epochs[1]} epochs of every block at "
                f"{FINE_TUNE_LR:g}); cosine schedule, label smoothing 0.1, last epoch kept"
                + (", each with and without augmentation (rotation 10°, shifts and zoom 0.1, left-right flips, "
                   "brightness and contrast 0.1)" if scale.limited_augment else ", without augmentation")
                + "; all tested on the same held-out images."),
        figures=figures)
    result.findings = limited_findings(figures)
    result.plots["Accuracy against training images per class"] = plot_limited(figures, ctx.plots / "limited_data.png")
    return result


def crossover(accuracy: dict[str, dict[str, float]], counts: list[int]) -> int | None:
    """The smallest count from which full fine-tuning beats the head at every larger count too, if any."""
    ahead = [accuracy["finetune"][str(n)] > accuracy["head"][str(n)] for n in counts]
    for i, n in enumerate(counts):
        if all(ahead[i:]):
            return n
    return None


def limited_findings(figures: dict) -> list[Finding]:
    counts, results = figures["counts"], figures["test_accuracy"]
    plain = results["no augmentation"]
    low, high = str(counts[0]), str(counts[-1])
    best_transfer = max(plain["head"][low], plain["finetune"][low])
    found = [Finding(
        "With limited data, transfer learning beats training from scratch", best_transfer > plain["scratch"][low],
        f"At {low} images per class (no augmentation): scratch {plain['scratch'][low]:.1%}, frozen-backbone head "
        f"{plain['head'][low]:.1%}, full fine-tuning {plain['finetune'][low]:.1%}"
        + (f"; at {high}: {plain['scratch'][high]:.1%}, {plain['head'][high]:.1%}, {plain['finetune'][high]:.1%}."
           if high != low and high in plain["scratch"] else "."))]
    cross = figures["crossover"]["no augmentation"]
    if len(counts) < 2:
        found.append(Finding("Train only the head on very small data; fine-tune everything on more", None,
                             "One data size only: the crossover cannot be measured."))
    else:
        holds = plain["head"][low] >= plain["finetune"][low] and cross is not None
        if cross is None:
            where = "fine-tuning everything never stays ahead of the head alone"
        elif cross == counts[0]:
            where = f"fine-tuning everything is ahead already at {low} images per class (no crossover within the counts)"
        else:
            where = f"fine-tuning everything overtakes the head from {cross} images per class on"
        found.append(Finding(
            "Train only a new head on very small data; fine-tune everything from pretrained weights on more",
            holds, f"Without augmentation, {where} (head / fine-tuned: " + ", ".join(
                f"{n}: {plain['head'][str(n)]:.1%} / {plain['finetune'][str(n)]:.1%}" for n in counts) + ")."))
    if "augmentation" in results:
        gains = {m: float(np.mean([results["augmentation"][m][n] - plain[m][n] for n in plain[m]])) for m in MODES}
        others = max(gains["head"], gains["finetune"])
        found.append(Finding(
            "Augmentation helps most the model that has the most to learn (scratch)",
            gains["scratch"] > 0 and gains["scratch"] > others,
            "Mean change from augmentation over the counts: " + ", ".join(
                f"{m} {g:+.1%}" for m, g in gains.items()) + " (points)."))
    else:
        found.append(Finding("Augmentation helps most the model that has the most to learn (scratch)", None,
                             "Not measured in this run (augmentation off in this scale)."))
    return found


def plot_limited(figures: dict, path):
    from .report import pyplot

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5), constrained_layout=True)
    colours = {"scratch": "tab:red", "head": "tab:blue", "finetune": "tab:green"}
    names = {"scratch": "from scratch", "head": "frozen backbone, new head", "finetune": "full fine-tuning"}
    counts = figures["counts"]
    for augment, results in figures["test_accuracy"].items():
        for mode, by_count in results.items():
            shown = [n for n in counts if str(n) in by_count]
            axis.plot(shown, [by_count[str(n)] for n in shown], "-" if augment == "no augmentation" else "--",
                      marker="o", color=colours[mode], label=f"{names[mode]}, {augment}")
    cross = figures["crossover"].get("no augmentation")
    if cross is not None and len(counts) > 1:
        said = (f"fine-tuning ahead from the smallest count ({cross}/class): no crossover" if cross == counts[0]
                else f"fine-tuning overtakes the head ({cross}/class)")
        axis.axvline(cross, color="grey", linestyle=":", label=said)
    axis.set_xscale("log")
    axis.set_xticks(counts, [str(n) for n in counts])
    axis.set_xlabel("training images per class")
    axis.set_ylabel("test accuracy")
    axis.set_title(f"{figures['backbone']} at {figures['input_size']} px")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
