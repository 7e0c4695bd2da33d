"""A scratch CNN's BatchNorm statistics are re-estimated after each epoch on training images (classify.cnn.batchnorm):
without it, a CNN trained for a few steps normalises with near-initial statistics at inference and puts every slice
in one class (the demo's scratch row sat at 0.250). A fine-tuned backbone with ``--batchnorm train`` has its averages
re-estimated too, from its training-mode batch statistics."""

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


def _small_base():  # noqa: ANN202
    """A backbone-like functional model: Conv-BN-ReLU-Conv-BN, momentum 0.999 as in Keras's MobileNetV2."""
    from classify.cnn.keras_objects import keras

    L = keras.layers
    inp = keras.Input((12, 12, 3))
    x = L.Conv2D(4, 3, name="c1")(inp)
    x = L.BatchNormalization(momentum=0.999, name="bn1")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(5, 3, name="c2")(x)
    x = L.BatchNormalization(momentum=0.999, name="bn2")(x)
    return keras.Model(inp, x, name="base")


def test_base_statistics_become_the_image_weighted_mean_of_training_mode_batch_statistics() -> None:
    from classify.cnn.batchnorm import base_batchnorms, reestimate_base_batchnorm
    from classify.cnn.keras_objects import keras

    keras.utils.set_random_seed(0)
    base = _small_base()

    def preprocess(x):  # noqa: ANN001, ANN202
        return x / 127.5 - 1.0

    rng = np.random.default_rng(1)
    X = (rng.random((23, 12, 12, 3)) * np.array([60, 200, 255])).astype(np.uint8)
    layers = base_batchnorms(base)
    # training-mode inputs of each layer do not depend on the moving averages, so they can be taken before
    probe = keras.Model(base.input, [la.input for la in layers])
    batches = [X[s:s + 10] for s in range(0, len(X), 10)]  # 10, 10, 3: the last batch weighs 3/23
    acts = [[np.asarray(a, np.float64) for a in probe(preprocess(b.astype(np.float32)), training=True)] for b in batches]
    assert reestimate_base_batchnorm(base, preprocess, X, batch_size=10) == 2
    w = np.array([len(b) for b in batches], np.float64) / len(X)
    for i, layer in enumerate(layers):
        flat = [a[i].reshape(-1, a[i].shape[-1]) for a in acts]
        mean = sum(wj * f.mean(0) for wj, f in zip(w, flat))
        var = sum(wj * f.var(0) for wj, f in zip(w, flat))
        np.testing.assert_allclose(np.asarray(layer.moving_mean), mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(layer.moving_variance), var, rtol=1e-3, atol=1e-6)
        assert layer.momentum == 0.999  # restored
    # a frozen (inference-mode) BatchNorm is not the backbone's to re-estimate
    layers[0].trainable = False
    assert base_batchnorms(base) == [layers[1]]


def test_finetune_with_trained_batchnorm_reestimates_the_base_after_each_epoch_on_training_slices(
        kaggle_root: Path, artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import classify.cnn.train as train

    calls: list[tuple[object, np.ndarray]] = []
    real = train.reestimate_base_batchnorm

    def recording(base, preprocess, X, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append((base, np.array(X)))
        n = real(base, preprocess, X, **kw)
        assert n > 0  # every BatchNorm of the base runs in training mode, in both stages
        return n

    monkeypatch.setattr(train, "reestimate_base_batchnorm", recording)
    res = train_baseline(kaggle_root, model="finetune", epochs=2, head_epochs=1, unfreeze=6, batchnorm="train",
                         batch_size=16, weights="none", image_size="32x32", subjects="none", progress=False)
    assert [h["stage"] for h in res.history] == ["head", "fine"]
    assert len(calls) == res.epochs_run == 2
    assert 0 < len(calls[0][1]) < int(res.row["n_train"])  # training slices, the validation part carved out
    np.testing.assert_array_equal(calls[0][1], calls[1][1])
    # the default (frozen BatchNorm) leaves the ImageNet statistics alone
    calls.clear()
    train_baseline(kaggle_root, model="finetune", epochs=2, head_epochs=1, unfreeze=6, batch_size=16, weights="none",
                   image_size="32x32", subjects="none", progress=False)
    assert calls == []
