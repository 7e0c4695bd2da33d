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
from featurize.weights_catalog import preprocess_fn  # noqa: E402

__all__ = ["BackbonePreprocess", "BalancedAccuracy", "DiscriminativeAdam", "keras", "ops", "tf"]


@keras.saving.register_keras_serializable(package="alzmri")
class BackbonePreprocess(keras.layers.Layer):
    """The weights' input preprocessing as a layer, so a saved model takes raw 0..255 pixels.

    ``preprocess`` is the weights catalog's name for it (``featurize.weights_catalog.PREPROCESSINGS``); "" is the
    architecture's own ``preprocess_input``, which is also what models saved before the catalog used."""

    def __init__(self, backbone: str, preprocess: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone, self.preprocess = backbone, preprocess or ""
        self._fn = preprocess_fn(get_backbone(backbone), self.preprocess)

    def call(self, x: Any) -> Any:
        return self._fn(x)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone": self.backbone, "preprocess": self.preprocess}


class DiscriminativeAdam(keras.optimizers.Adam):
    """Adam whose step for the variables in ``slow`` is scaled by ``factor`` (discriminative learning rates).

    Keras 3 has no per-variable learning rates (TF-Addons' MultiOptimizer is gone), and one optimizer per
    variable group would mean a custom train step; scaling the rate inside ``update_step`` keeps ``model.fit``,
    its checkpoints and the schedule (which gives the head's rate) as they are. Never saved in a ``.keras`` file."""

    def __init__(self, *, slow: Any = (), factor: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._slow_ids, self.factor = {id(v) for v in slow}, float(factor)
        self._factors: list[float] = []

    def build(self, variables: Any) -> None:
        super().build(variables)
        self._factors = [self.factor if id(v) in self._slow_ids else 1.0 for v in variables]

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        f = self._factors[self._get_variable_index(variable)] if self._factors else 1.0
        super().update_step(gradient, variable, learning_rate if f == 1.0 else learning_rate * f)


@keras.saving.register_keras_serializable(package="alzmri")
class BalancedAccuracy(keras.metrics.Metric):
    """Streaming balanced accuracy (mean per-class recall over the classes seen) from a confusion matrix."""

    def __init__(self, n_classes: int, name: str = "bal_acc", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.n_classes = int(n_classes)
        self.cm = self.add_variable(shape=(self.n_classes, self.n_classes), initializer="zeros", name="cm", dtype="float32")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:  # class weights ignored on purpose
        if len(y_true.shape) == 2 and y_true.shape[-1] == self.n_classes and self.n_classes > 1:  # one-hot labels
            y_true = ops.argmax(y_true, axis=-1)
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
