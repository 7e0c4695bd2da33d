"""Re-estimate BatchNorm statistics on training images, so that inference sees the statistics it will normalise with.

A BatchNorm layer normalises with each batch's statistics in training and with running averages (momentum 0.99) in
inference. On few steps those averages are still mostly their initial values (mean 0, variance 1): the demo's 24
training steps leave 0.99**24 = 79% of the initial variance, so a channel whose true variance is 1e-4 is divided by
about 0.9 instead of 0.01. Measured on the demo (192 slices, 6 epochs): training-mode outputs classified 56-78% of
the test slices right, inference-mode outputs put every slice in one class. Momentum 0.9 did not fix it (36 steps
still leave 2% of the initial variance, 50x the true one of a quiet channel; deeper layers compound the error).

The remedy is "precise BatchNorm" (Wu & Johnson, 2021, "Rethinking 'Batch' in BatchNorm"): after an epoch, set each
layer's moving mean and variance to the population statistics of its input over training images, computed with the
layers before it in inference mode (no augmentation, no dropout, their own re-estimated statistics), i.e. exactly
the input it receives at inference. Training itself is unchanged (it uses batch statistics).

A fine-tuned backbone with ``--batchnorm train`` needs the same, for a different reason: Keras's MobileNetV2 keeps
its averages with momentum 0.999, so after 900 steps 41% of each one is still ImageNet's, and its leaky validation
score stayed at 0.30-0.47 where frozen BatchNorm reached 0.67 (docs/benchmarks.md). Its 52 layers are re-estimated
in one pass in training mode, as fvcore's ``update_bn_stats`` does: each layer's averages become the mean over
batches of its batch statistics, the layers before it normalising with batch statistics too. Layer after layer
(as above) would cost 52 partial forward passes an epoch; one pass costs one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from classify.cnn.keras_objects import keras, tf


def trainable_batchnorms(model: Any) -> list[Any]:
    """The model's own (top-level) BatchNormalization layers that train, in graph order; a fine-tuned backbone's
    frozen, inference-mode BatchNorm is nested in the base model and is not touched."""
    return [layer for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def reestimate_batchnorm(model: Any, X: np.ndarray, *, batch_size: int = 128) -> int:
    """Set the moving mean and variance of each of ``model``'s trainable BatchNorm layers to the mean and variance of
    its inference-mode input over the images ``X`` (uint8 or float, [N,H,W,C]), layer after layer; returns how
    many layers were set. Float64 accumulation, per channel."""
    layers = trainable_batchnorms(model)
    if not layers or not len(X):
        return 0
    for layer in layers:
        # eager calls: a tf.function per sub-model would be traced once per layer and epoch, for 4 batches
        sub = keras.Model(model.inputs, layer.input)
        total = total_sq = None
        count = 0
        for start in range(0, len(X), batch_size):
            a = sub(tf.cast(X[start:start + batch_size], tf.float32), training=False).numpy().astype(np.float64)
            a = a.reshape(-1, a.shape[-1])
            s, sq = a.sum(0), (a * a).sum(0)
            total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
            count += len(a)
        mean = total / count
        var = np.maximum(total_sq / count - mean * mean, 0.0)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(var.astype(np.float32))
    return len(layers)


def base_batchnorms(base: Any) -> list[Any]:
    """The BatchNormalization layers of a backbone ``base`` that run in training mode (``--batchnorm train``)."""
    return [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def reestimate_base_batchnorm(base: Any, preprocess: Any, X: np.ndarray, *, batch_size: int = 128) -> int:
    """Set the moving mean and variance of ``base``'s training-mode BatchNorm layers to their averages of batch
    statistics over the images ``X`` ([N,H,W,3], the model's input before ``preprocess``, its preprocessing layer),
    in one training-mode pass without augmentation; returns how many layers were set."""
    layers = base_batchnorms(base)
    if not layers or not len(X):
        return 0
    momenta = [layer.momentum for layer in layers]
    try:
        for start in range(0, len(X), batch_size):
            batch = X[start:start + batch_size]
            # moving <- moving * m + batch * (1 - m) with m = seen / (seen + len(batch)): the image-weighted mean of
            # the batches so far (the first batch replaces the old averages outright)
            for layer in layers:
                layer.momentum = start / (start + len(batch))
            base(preprocess(tf.cast(batch, tf.float32)), training=True)
    finally:
        for layer, m in zip(layers, momenta):
            layer.momentum = m
    return len(layers)
