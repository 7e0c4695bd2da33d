"""Keras, and alzmri's custom Keras objects, registered for loading when this module is imported.

Importing this module imports TensorFlow (quietly), so the rest of ``classify.cnn`` imports it inside the
functions that need it; the registrations happen once, at that first import.
"""

from __future__ import annotations

from typing import Any

from featurize.tfquiet import import_tensorflow

tf = import_tensorflow()

import keras  # noqa: E402  (after TensorFlow's quiet import)
from keras import ops  # noqa: E402

from featurize.backbones import get_backbone  # noqa: E402

__all__ = ["BackbonePreprocess", "BalancedAccuracy", "keras", "ops", "tf"]


@keras.saving.register_keras_serializable(package="alzmri")
class BackbonePreprocess(keras.layers.Layer):
    """The backbone's ``preprocess_input`` as a layer, so a saved model takes raw 0..255 pixels."""

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self._fn = get_backbone(backbone).preprocess_fn()

    def call(self, x: Any) -> Any:
        return self._fn(x)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone": self.backbone}


@keras.saving.register_keras_serializable(package="alzmri")
class BalancedAccuracy(keras.metrics.Metric):
    """Streaming balanced accuracy (mean per-class recall over the classes seen) from a confusion matrix."""

    def __init__(self, n_classes: int, name: str = "bal_acc", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.n_classes = int(n_classes)
        self.cm = self.add_variable(shape=(self.n_classes, self.n_classes), initializer="zeros", name="cm", dtype="float32")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:  # class weights ignored on purpose
        t = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.n_classes)
        p = ops.one_hot(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), self.n_classes)
        self.cm.assign_add(ops.matmul(ops.transpose(t), p))

    def result(self) -> Any:
        support = ops.sum(self.cm, axis=1)
        recall = ops.divide_no_nan(ops.diagonal(self.cm), support)
        seen = ops.cast(support > 0, "float32")
        return ops.divide_no_nan(ops.sum(recall * seen), ops.sum(seen))

    def reset_state(self) -> None:
        self.cm.assign(ops.zeros((self.n_classes, self.n_classes)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_classes": self.n_classes}
