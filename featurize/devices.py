"""The GPU code path: mixed precision and ``tf.distribute`` strategies for featurizing and training.

Everything here also runs on CPU, where ``mirrored`` spreads over the logical CPU devices, so that the code the GPUs
run is the code the tests run (see docs/gpu.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from featurize.options import choose

PRECISIONS = ("float32", "mixed")
DEVICE_MODES = ("auto", "one", "mirrored")


def _tf() -> Any:
    from featurize.tfquiet import import_tensorflow

    return import_tensorflow()


def _gpus() -> list[Any]:
    return list(_tf().config.list_physical_devices("GPU"))


POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def policy_name(precision: str) -> str:
    """The Keras dtype policy for ``precision``: ``float32``, or ``mixed_float16`` on GPU / ``mixed_bfloat16`` on CPU.

    A policy name (as recorded in a cache or bundle) is returned as it is, so a model can be rebuilt exactly."""
    if precision in POLICIES:
        return precision
    if choose("precision", precision, PRECISIONS) == "float32":
        return "float32"
    # float16 on CPUs is emulated and slow; Keras advises bfloat16 there.
    return "mixed_float16" if _gpus() else "mixed_bfloat16"


@contextmanager
def precision_policy(precision: str) -> Iterator[str]:
    """Set Keras's global dtype policy for ``precision`` within the block; yields its name.

    The previous global policy comes back on exit, also on an exception. Layers keep the policy they were built
    with, so a model built inside the block still computes in mixed precision after it.
    """
    name = policy_name(precision)
    _tf()  # the first TF import of predict's TF path: quietly
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy(previous)


def make_strategy(devices: str = "auto") -> Any:
    """A ``tf.distribute`` strategy for ``devices``.

    ``one``: the default strategy (TF places work on the first GPU if any). ``auto``: mirrored over all GPUs when
    there are at least two, else the default. ``mirrored``: mirrored over all GPUs, or over all logical CPU devices
    when there is no GPU (one replica per logical CPU; this is how the tests exercise the multi-GPU path).
    """
    devices = choose("devices mode", devices, DEVICE_MODES)
    tf = _tf()
    gpus = _gpus()
    if devices == "one" or (devices == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    if gpus:
        names = [d.name for d in tf.config.list_logical_devices("GPU")]
        return tf.distribute.MirroredStrategy(devices=names)  # NCCL all-reduce where TF can use it
    names = [d.name for d in tf.config.list_logical_devices("CPU")]
    # NCCL (MirroredStrategy's default) is GPU-only.
    return tf.distribute.MirroredStrategy(devices=names, cross_device_ops=tf.distribute.ReductionToOneDevice())


def replicas(strategy: Any) -> int:
    """How many replicas run a step in sync (1 for the default strategy)."""
    return int(strategy.num_replicas_in_sync)


def build_feature_model(build: Callable[[], Any], strategy: Any, precision: str) -> Any:
    """Call ``build()`` (e.g. ``build_base`` + ``feature_model``) inside ``strategy.scope()`` and the precision policy.

    Use this for every model given to ``distributed_forward``: its variables must be created in the strategy's scope.
    """
    with strategy.scope(), precision_policy(precision):
        return build()


def distributed_forward(model: Any, preprocess: Callable[[Any], Any], batch_size: int,
                        strategy: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled forward pass on uint8 batches [n,H,W,3], split across the replicas of ``strategy``.

    ``model`` must have been built inside ``strategy.scope()`` (see ``build_feature_model``). ``batch_size`` is rounded
    up to a multiple of the replica count and short batches are zero-padded to it, so one trace serves all; each
    replica gets a contiguous equal slice and the results come back in input order, padding removed, as float32
    (under mixed precision the model's output is float16/bfloat16). With the default strategy this is
    ``pipeline.make_forward``.
    """
    tf = _tf()
    k = replicas(strategy)
    batch_size = -(-max(1, batch_size) // k) * k
    per = batch_size // k
    h, w = int(model.input_shape[1]), int(model.input_shape[2])

    def step(x: Any) -> Any:
        return tf.cast(model(preprocess(tf.cast(x, tf.float32)), training=False), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec((batch_size, h, w, 3), tf.uint8)])
    def forward(x: Any) -> Any:
        # Each replica takes its own slice, so a GPU receives only its part of the batch.
        parts = strategy.experimental_distribute_values_from_function(
            lambda ctx: x[ctx.replica_id_in_sync_group * per:(ctx.replica_id_in_sync_group + 1) * per])
        out = strategy.run(step, args=(parts,))
        # Local results are in replica order, i.e. the order of the slices.
        return tf.concat(strategy.experimental_local_results(out), axis=0)

    def run(batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n > batch_size:
            raise ValueError(f"batch of {n} images is larger than batch_size {batch_size}")
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, h, w, 3), np.uint8)])
        return forward(tf.constant(batch)).numpy()[:n]

    return run


@contextmanager
def training_scope(devices: str, precision: str) -> Iterator[Any]:
    """Yield the strategy for ``devices`` with its scope entered and the precision policy set, for build/compile/fit.

    Under mixed precision the model's last layer (the softmax / final Dense) must be built with ``dtype="float32"``
    so that the loss is computed in float32 (Keras's rule); Keras adds loss scaling itself for ``mixed_float16``.
    The batch size given to ``fit`` is the global batch: each of the ``replicas(strategy)`` replicas gets an equal
    share of it, so scale it with the replica count to keep the per-device batch.
    """
    strategy = make_strategy(devices)
    with strategy.scope(), precision_policy(precision):
        yield strategy
