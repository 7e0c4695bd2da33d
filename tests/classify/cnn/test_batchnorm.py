"""A scratch CNN's BatchNorm statistics are re-estimated after each epoch on training images (classify.cnn.batchnorm):
without it, a CNN trained for a few steps normalises with near-initial statistics at inference and puts every slice
in one class (the demo's scratch row sat at 0.250)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from classify.cnn import train_baseline

pytestmark = pytest.mark.tf


def _bn_input_stats(model, X):  # noqa: ANN001, ANN202
    """Per BatchNorm layer: mean and variance of its inference-mode input over X, by numpy."""
    from classify.cnn.batchnorm import trainable_batchnorms
    from classify.cnn.keras_objects import keras

    out = []
    for layer in trainable_batchnorms(model):
        a = np.asarray(keras.Model(model.inputs, layer.input)(X.astype(np.float32), training=False), np.float64)
        a = a.reshape(-1, a.shape[-1])
        out.append((layer, a.mean(0), a.var(0)))
    return out


def test_moving_statistics_become_those_of_each_layers_inference_input() -> None:
    from classify.cnn.batchnorm import reestimate_batchnorm
    from classify.cnn.models import build_scratch

    model = build_scratch((32, 36), 3, seed=0)
    rng = np.random.default_rng(0)
    X = (rng.random((40, 36, 32, 1)) * np.linspace(20, 250, 32)[:, None]).astype(np.uint8)
    assert reestimate_batchnorm(model, X, batch_size=16) == 5  # batches of 16 over 40: the last one is partial
    for layer, mean, var in _bn_input_stats(model, X):
        np.testing.assert_allclose(np.asarray(layer.moving_mean), mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(layer.moving_variance), var, rtol=1e-3, atol=1e-7)
    # the quietest channel of the first layer is far below the initial variance of 1 it replaced
    assert float(np.min(np.asarray(model.get_layer("block1_bn").moving_variance))) < 0.1


def test_scratch_training_validates_and_saves_with_statistics_of_its_training_images(
        kaggle_root: Path, artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import classify.cnn.train as train
    from classify.cnn.keras_objects import keras

    calls: list[np.ndarray] = []
    real = train.reestimate_batchnorm

    def recording(model, X, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append(np.array(X))
        return real(model, X, **kw)

    monkeypatch.setattr(train, "reestimate_batchnorm", recording)
    checked: list[int] = []

    class Probe(keras.callbacks.Callback):  # runs after the epoch control's on_epoch_end
        def on_epoch_end(self, epoch, logs=None):  # noqa: ANN001
            for layer, mean, var in _bn_input_stats(self.model, calls[-1]):
                np.testing.assert_allclose(np.asarray(layer.moving_variance), var, rtol=1e-3, atol=1e-7)
                np.testing.assert_allclose(np.asarray(layer.moving_mean), mean, rtol=1e-4, atol=1e-6)
            checked.append(epoch)

    res = train_baseline(kaggle_root, model="scratch", epochs=2, weights="none", image_size="32x32", subjects="none",
                         batch_size=4, progress=False, callbacks=[Probe()])
    assert len(calls) == len(checked) == res.epochs_run == 2
    # the training part only (the validation part is carved out of the 10 training slices first), the same each epoch
    assert 0 < len(calls[0]) < int(res.row["n_train"]) == 10
    np.testing.assert_array_equal(calls[0], calls[1])
