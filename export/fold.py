"""Fold every BatchNormalization into the layer next to it, giving a BN-free Keras model to convert.

    folded, report = fold_batchnorm(model)

Two passes over the Keras 3 functional graph:

1. `flatten`: nested functional models (the keras.applications backbone) are inlined into one flat
   graph, every layer is cloned with its weights, and layers that are the identity at inference
   (Dropout and friends) are dropped. The result computes exactly what `model(x, training=False)` does.
2. folding: a BatchNormalization whose input comes from a Conv2D / DepthwiseConv2D or a Dense (linear
   activation, the BN its only consumer) is folded backwards into that layer,
   kernel * gamma / sqrt(var + eps) and bias (b - mean) * gamma / sqrt(var + eps) + beta; a bias-less
   layer becomes one with a bias (the classifier head's hidden Dense is one). A BatchNormalization on a
   feature vector with no linear layer before it, whose only consumer is a Dense layer, is folded
   forwards into that Dense. ReLU6 / hard-swish stay separate layers after the folded layer, so they see
   the same values as before.

A BN that fits neither rule is left in place and listed in `FoldReport.unfolded`; the converters then
lower it to Mul/Add, which is still correct.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Layers that are the identity at inference: dropped when flattening.
_INFERENCE_IDENTITY = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                       "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity")


@dataclass
class FoldReport:
    """What folding did: (batchnorm, layer) name pairs folded into convolutions and into Dense layers
    (backwards or forwards), and the BatchNormalization layers it could not fold."""

    into_conv: list[tuple[str, str]] = field(default_factory=list)
    into_dense: list[tuple[str, str]] = field(default_factory=list)
    unfolded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def folded(self) -> int:
        return len(self.into_conv) + len(self.into_dense)

    def to_dict(self) -> dict:
        return {"folded_into_conv": len(self.into_conv), "folded_into_dense": len(self.into_dense),
                "unfolded": list(self.unfolded), "dropped_inference_identity_layers": len(self.dropped)}


def _functional_of(layer):
    """The functional graph behind a nested model (a Sequential keeps its own), or None for a plain layer."""
    import keras

    if isinstance(layer, keras.Sequential):
        return getattr(layer, "_functional", None)
    if isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph"):
        return layer
    return None


def _clone(layer, **overrides):
    config = layer.get_config()
    config.update(overrides)
    return layer.__class__.from_config(config)


def _strip_training(kwargs: dict) -> dict:
    # The flat model is for inference only: every layer runs in inference mode.
    return {k: v for k, v in kwargs.items() if k != "training"}


def _new_inputs(model):
    import keras

    return [keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name) for x in model.inputs]


def _one_or_list(inputs: list):
    # A one-input model built from a list expects a list: called with a tensor, Keras warns on every call.
    return inputs[0] if len(inputs) == 1 else inputs


def _check_functional(model) -> None:
    if _functional_of(model) is None:
        raise TypeError(
            f"BatchNorm folding needs a functional or sequential Keras model, got {type(model).__name__} "
            "(subclassed models have no graph to rewrite)"
        )


def flatten(model, report: FoldReport | None = None):
    """One flat functional model computing `model(x, training=False)`: nested models inlined, layers
    cloned with their weights (a shared layer stays shared), inference-identity layers dropped."""
    import keras

    _check_functional(model)
    report = report if report is not None else FoldReport()
    clones: dict[int, object] = {}

    def call(op, *args, **kwargs):
        inner = _functional_of(op)
        if inner is not None:
            outputs = inner._run_through_graph(args[0] if len(args) == 1 else list(args), call_fn=call)
            return outputs
        if type(op).__name__ in _INFERENCE_IDENTITY:
            report.dropped.append(op.name)
            return args[0]
        if not isinstance(op, keras.layers.Layer):
            return op(*args, **_strip_training(kwargs))  # a stateless keras.ops operation: reuse it
        if id(op) not in clones:
            clones[id(op)] = (_clone(op), op)
        clone, original = clones[id(op)]
        result = clone(*args, **_strip_training(kwargs))
        if original.weights and not clone.get_weights():
            raise ValueError(f"Layer {original.name!r} did not build when cloned; cannot copy its weights")
        clone.set_weights(original.get_weights())
        return result

    graph = _functional_of(model)
    inputs = _one_or_list(_new_inputs(graph))
    outputs = graph._run_through_graph(inputs, call_fn=call)
    return keras.Model(inputs, outputs, name=f"{model.name}_flat")


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None


def _consumers(model) -> dict[int, int]:
    """id(tensor) -> number of layer calls (and model outputs) that read it."""
    counts: dict[int, int] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                counts[id(tensor)] = counts.get(id(tensor), 0) + 1
    for tensor in model.outputs:
        counts[id(tensor)] = counts.get(id(tensor), 0) + 1
    return counts


def _bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """Inference-mode BatchNormalization as y = x * scale + shift, in float64."""
    weights = dict(zip([w.path.split("/")[-1] for w in bn.weights], bn.get_weights()))
    mean = weights["moving_mean"].astype(np.float64)
    variance = weights["moving_variance"].astype(np.float64)
    gamma = weights["gamma"].astype(np.float64) if "gamma" in weights else np.ones_like(mean)
    beta = weights["beta"].astype(np.float64) if "beta" in weights else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return scale, beta - mean * scale


def _last_axis(bn, rank: int) -> bool:
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    return len(axes) == 1 and axes[0] in (-1, rank - 1)


def _fold_plan(model) -> tuple[dict[int, str], dict[int, object], dict[int, object]]:
    """Which layers fold: id(bn) -> "conv" (backwards, into the convolution or Dense before it) | "dense"
    (forwards, into the Dense after it), id(layer) -> its bn."""
    import keras

    consumers = _consumers(model)
    bn_role: dict[int, str] = {}
    conv_bn: dict[int, object] = {}
    dense_bn: dict[int, object] = {}
    readers: dict[int, list] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                readers.setdefault(id(tensor), []).append(layer)
    for bn in model.layers:
        if not isinstance(bn, keras.layers.BatchNormalization) or len(bn._inbound_nodes) != 1:
            continue
        x = bn._inbound_nodes[0].input_tensors[0]
        out = bn._inbound_nodes[0].output_tensors[0]
        if not _last_axis(bn, len(x.shape)):
            continue
        conv = _producer(x)
        if (
            (
                isinstance(conv, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
                and not isinstance(conv, keras.layers.Conv2DTranspose)
                and conv.data_format == "channels_last"
                or isinstance(conv, keras.layers.Dense) and len(x.shape) == 2
            )
            and len(conv._inbound_nodes) == 1
            and conv.get_config().get("activation") == "linear"
            and consumers.get(id(x), 0) == 1
            and id(conv) not in conv_bn
            and id(conv) not in dense_bn
        ):
            bn_role[id(bn)], conv_bn[id(conv)] = "conv", bn
            continue
        next_layers = readers.get(id(out), [])
        if (
            len(x.shape) == 2
            and consumers.get(id(out), 0) == 1
            and len(next_layers) == 1
            and isinstance(next_layers[0], keras.layers.Dense)
            and len(next_layers[0]._inbound_nodes) == 1
            and id(next_layers[0]) not in dense_bn
            and id(next_layers[0]) not in conv_bn
        ):
            bn_role[id(bn)], dense_bn[id(next_layers[0])] = "dense", bn
    return bn_role, conv_bn, dense_bn


def _folded_conv_weights(conv, bn) -> list[np.ndarray]:
    import keras

    weights = conv.get_weights()
    kernel = weights[0].astype(np.float64)
    # Output channels: the last kernel axis of a Conv2D (kh, kw, in, out) or a Dense (in, out).
    bias = weights[1].astype(np.float64) if conv.use_bias else np.zeros(kernel.shape[-1] if not isinstance(
        conv, keras.layers.DepthwiseConv2D) else kernel.shape[2] * kernel.shape[3])
    scale, shift = _bn_affine(bn)
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        # Depthwise kernels are (kh, kw, in, multiplier); output channel c = i * multiplier + m.
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    dtype = weights[0].dtype
    return [kernel.astype(dtype), (bias * scale + shift).astype(dtype)]


def _folded_dense_weights(dense, bn) -> list[np.ndarray]:
    weights = dense.get_weights()
    kernel = weights[0].astype(np.float64)
    bias = weights[1].astype(np.float64) if dense.use_bias else np.zeros(kernel.shape[1])
    scale, shift = _bn_affine(bn)
    # Dense(x * s + t) = x @ (s[:, None] * W) + (t @ W + b)
    dtype = weights[0].dtype
    return [(kernel * scale[:, None]).astype(dtype), (shift @ kernel + bias).astype(dtype)]


def fold_batchnorm(model):
    """A flat, BatchNorm-free copy of `model` (see the module docstring) and a FoldReport.
    The original model is not changed."""
    import keras

    _check_functional(model)
    report = FoldReport()
    flat = flatten(model, report)
    bn_role, conv_bn, dense_bn = _fold_plan(flat)

    def call(op, *args, **kwargs):
        if id(op) in bn_role:
            return args[0]  # folded into its neighbour
        if id(op) in conv_bn:
            bn = conv_bn[id(op)]
            new = _clone(op, use_bias=True, name=op.name)
            result = new(*args, **kwargs)
            new.set_weights(_folded_conv_weights(op, bn))
            (report.into_dense if isinstance(op, keras.layers.Dense) else report.into_conv).append((bn.name, op.name))
            return result
        if id(op) in dense_bn:
            bn = dense_bn[id(op)]
            new = _clone(op, use_bias=True)
            result = new(*args, **kwargs)
            new.set_weights(_folded_dense_weights(op, bn))
            report.into_dense.append((bn.name, op.name))
            return result
        if isinstance(op, keras.layers.BatchNormalization):
            report.unfolded.append(op.name)
        return op(*args, **kwargs)

    inputs = _one_or_list(_new_inputs(flat))
    outputs = flat._run_through_graph(inputs, call_fn=call)
    folded = keras.Model(inputs, outputs, name=f"{model.name}_folded")
    return folded, report


def count_batchnorm(model) -> int:
    """BatchNormalization layers in `model`, nested models included."""
    import keras

    def visit(layer) -> int:
        own = int(isinstance(layer, keras.layers.BatchNormalization))
        return own + sum(visit(child) for child in getattr(layer, "layers", []))

    return sum(visit(layer) for layer in model.layers)
