"""The fine-tuning recipe of issue 20: phases and discriminative learning rates, a subject-disjoint validation part,
MRI augmentation without vertical flips, the weights catalog's preprocessing, and --max-train-minutes with resume.

Tiny on purpose (32x32 images, 1-3 epochs, random-init weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from classify.cnn import BaselineConfig, train_baseline

pytestmark = [pytest.mark.tf, pytest.mark.slow]

FAST = dict(weights="none", image_size="32x32", subjects="none", progress=False)


def _keras():
    from classify.cnn.keras_objects import keras

    return keras


def _base_of(model):  # noqa: ANN001, ANN202
    keras = _keras()
    return next(layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name != "augment")


def test_head_warms_up_on_the_frozen_base_then_the_base_trains_at_its_lower_rate(kaggle_root: Path, artifacts: Path) -> None:
    keras = _keras()
    lr, fine_lr = 1e-3, 1e-4
    seen: dict[int, dict[str, object]] = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):  # noqa: ANN001
            base, opt = _base_of(self.model), self.model.optimizer
            seen[epoch] = {"trainable": {v.path for v in self.model.trainable_variables},
                           "base": [np.array(w) for w in base.weights],
                           "slow": {id(v) for v in self.model.trainable_variables if id(v) in opt._slow_ids},
                           "base_trainable": {id(v) for v in base.trainable_variables}, "factor": opt.factor}

        def on_train_batch_begin(self, batch, logs=None):  # noqa: ANN001
            if batch == 0:
                seen[max(seen)]["lr"] = float(np.asarray(self.model.optimizer.learning_rate))

        def on_train_end(self, logs=None):  # noqa: ANN001
            seen[-1] = {"base": [np.array(w) for w in _base_of(self.model).weights]}

    # batch 16 > 8 training slices: one step per epoch, which the schedule takes at its peak
    res = train_baseline(kaggle_root, model="finetune", epochs=2, head_epochs=1, unfreeze=12, learning_rate=lr,
                         fine_learning_rate=fine_lr, batch_size=16, callbacks=[Probe()], **FAST)
    assert [h["stage"] for h in res.history] == ["head", "fine"]
    # warm-up: only the new head trains; the whole base (BatchNorm statistics included) stays as it was
    head, fine = seen[0], seen[1]
    assert head["trainable"] and all(p.startswith("probs/") for p in head["trainable"])
    assert all(np.array_equal(a, b) for a, b in zip(head["base"], fine["base"]))
    assert head["slow"] == set() and head["lr"] == pytest.approx(lr)
    # fine stage: the unfrozen base layers, and only they, step at fine_lr / lr of the head's rate
    assert fine["base_trainable"] and fine["slow"] == fine["base_trainable"]
    assert len(fine["trainable"]) == len(head["trainable"]) + len(fine["base_trainable"])
    assert fine["factor"] == pytest.approx(fine_lr / lr) and fine["lr"] == pytest.approx(lr)
    assert res.history[1]["base_lr"] == pytest.approx(res.history[1]["lr"] * fine_lr / lr)
    params = json.loads(res.row["best_params"])
    assert (params["fine_lr"], params["lr"], params["label_smoothing"], params["head_epochs"]) == (fine_lr, lr, 0.1, 1)


def test_batchnorm_train_adapts_the_statistics_in_the_warm_up_and_trains_scale_and_offset_after(
        kaggle_root: Path, artifacts: Path) -> None:
    keras = _keras()
    snap: dict[int, dict[str, np.ndarray]] = {}

    def weights_of(base, kind):  # noqa: ANN001, ANN202
        layers = [la for la in base.layers if isinstance(la, kind) and la.weights]
        return {v.path: np.array(v) for la in layers for v in la.weights}

    trainable: dict[int, set[str]] = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):  # noqa: ANN001
            base = _base_of(self.model)
            snap[epoch] = {**weights_of(base, keras.layers.BatchNormalization), **weights_of(base, keras.layers.Conv2D)}
            trainable[epoch] = {v.path for v in self.model.trainable_variables}

        def on_train_end(self, logs=None):  # noqa: ANN001
            self.on_epoch_begin(-1)

    res = train_baseline(kaggle_root, model="finetune", epochs=2, head_epochs=1, unfreeze=6, batchnorm="train",
                         batch_size=16, callbacks=[Probe()], **FAST)
    assert [h["stage"] for h in res.history] == ["head", "fine"]
    before, after_head, end = snap[0], snap[1], snap[-1]

    def changed(a, b, key):  # noqa: ANN001, ANN202
        return {p for p in a if key in p and not np.array_equal(a[p], b[p])}

    stats = {p for p in before if "moving_" in p}
    affine = {p for p in before if p.endswith(("/gamma", "/beta"))}
    assert stats and affine
    # warm-up: every BatchNorm's statistics adapt to the slices; its scale and offset and every convolution stay,
    # and nothing of the base is a trainable variable (no backward pass through it)
    assert changed(before, after_head, "moving_") == stats
    assert not {p for p in affine if not np.array_equal(before[p], after_head[p])}
    assert not changed(before, after_head, "kernel")
    assert trainable[0] and all(p.startswith("probs/") for p in trainable[0])
    # fine stage: the scale and offset of the top 6 layers' BatchNorm train, the ones below stay; statistics adapt
    moved = {p for p in affine if not np.array_equal(after_head[p], end[p])}
    assert moved and moved < affine and moved <= trainable[1]
    assert not (affine - moved) & trainable[1]
    # re-estimated on the same training slices, the statistics move exactly where their input did: in the top
    # layers, whose weights trained (a suffix of the base's BatchNorm layers); below, they are re-estimated identically
    order = [p.split("/")[0] for p in sorted(stats, key=list(before).index) if p.endswith("moving_mean")]
    moved_bn = {p.split("/")[0] for p in changed(after_head, end, "moving_")}
    assert moved_bn and moved_bn == set(order[len(order) - len(moved_bn):]) and len(moved_bn) < len(order)
    assert json.loads(res.row["best_params"])["batchnorm"] == "train"
    # the default keeps every BatchNorm frozen in the warm-up (test above) and a checkpoint of its own
    frozen = BaselineConfig(model="finetune").net_spec(n_classes=4, choice=BaselineConfig(model="finetune").weights_choice())
    trained = BaselineConfig(model="finetune", batchnorm="train").net_spec(n_classes=4, choice=None)
    assert "batchnorm" not in frozen.settings() and trained.settings()["batchnorm"] == "train"


def test_discriminative_adam_steps_the_slow_variables_at_their_lower_rate() -> None:
    from classify.cnn.keras_objects import DiscriminativeAdam

    keras = _keras()
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    body = keras.layers.Dense(5, activation="tanh", name="body")
    out = keras.layers.Dense(3, activation="softmax", name="head")(body(inp))
    model = keras.Model(inp, out)
    model.compile(optimizer=DiscriminativeAdam(learning_rate=1e-2, slow=body.trainable_variables, factor=0.1),
                  loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(32, 6)).astype("float32"), np.eye(3)[rng.integers(0, 3, 32)]
    before = {v.path: np.array(v) for v in model.trainable_variables}
    model.fit(X, Y, batch_size=32, epochs=1, verbose=0)  # one Adam step: each weight moves by ~ its rate (m/sqrt(v) ~ sign(g))
    step = {k: float(np.max(np.abs(np.array(v) - before[v.path]))) for v in model.trainable_variables for k in [v.path]}
    assert step["body/kernel"] == pytest.approx(1e-3, rel=0.02) and step["head/kernel"] == pytest.approx(1e-2, rel=0.02)


def test_validation_part_is_drawn_from_training_subjects_only(tmp_path: Path) -> None:
    from classify.cnn.data import Images
    from classify.cnn.spec import NetSpec, Schedule
    from classify.cnn.train import fit_network

    rng = np.random.default_rng(0)
    n_subjects, per = 24, 4
    groups = np.repeat([f"s{i:02d}" for i in range(n_subjects)], per)
    y = np.repeat(np.arange(n_subjects) % 3, per)
    X = rng.integers(0, 255, (len(y), 32, 32, 1), dtype=np.uint8)
    test_subjects = {f"s{i:02d}" for i in range(0, n_subjects, 4)}
    train_idx = np.flatnonzero([g not in test_subjects for g in groups])
    spec = NetSpec(kind="scratch", size=(32, 32), n_classes=3, seed=0, backbone=None, weights="none",
                   weights_tag="random-init", unfreeze=0, head_epochs=1, lr=1e-3, fine_lr=1e-3)
    out = fit_network(spec, Schedule(epochs=1, patience=1, min_epochs=0, batch_size=32), Images(X, y, groups),
                      train_idx=train_idx, ckpt_dir=tmp_path / "ck", run_settings={}, label="t", log=lambda m: None,
                      progress=False)
    tr, va = out.train_rows, out.val_rows
    assert len(va) >= per and len(tr) + len(va) == len(train_idx)
    assert set(tr) | set(va) == set(train_idx.tolist())  # carved from the training part, test rows never used
    assert not set(groups[tr]) & set(groups[va])  # whole subjects: no subject on both sides
    assert not set(groups[va]) & test_subjects


def test_augmentation_shifts_rotates_and_jitters_but_never_flips_vertically() -> None:
    from classify.cnn.models import augmentation

    aug = augmentation(seed=0)
    h, w = 48, 40
    img = np.zeros((h, w, 3), np.float32)
    img[: h // 2] = 200.0  # bright top half
    img[: h // 2, : w // 2] = 120.0  # ... whose left quarter is dimmer: a left-right flip is visible
    batch = np.repeat(img[None], 64, axis=0)
    tops, lefts = [], []
    for _ in range(4):
        out = np.asarray(aug(batch, training=True))
        top, bottom = out[:, : h // 2].mean(axis=(1, 2, 3)), out[:, h // 2:].mean(axis=(1, 2, 3))
        tops.append(top - bottom)
        lefts.append(out[:, 4: h // 2 - 4, : w // 2].mean(axis=(1, 2, 3)) - out[:, 4: h // 2 - 4, w // 2:].mean(axis=(1, 2, 3)))
        assert out.min() >= 0.0 and out.max() <= 255.0
    tops, lefts = np.concatenate(tops), np.concatenate(lefts)
    assert (tops > 50).all(), "an augmented slice came out upside down"
    assert (lefts < 0).any() and (lefts > 0).any()  # left-right mirroring happens: the check above is not vacuous
    assert np.std([np.asarray(aug(batch[:1], training=True)).mean() for _ in range(8)]) > 0.5  # intensity jitter
    np.testing.assert_array_equal(np.asarray(aug(batch, training=False)), batch)  # inference: untouched


def test_finetune_uses_the_weights_catalog_preprocessing_and_native_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from classify.cnn.keras_objects import BackbonePreprocess

    weights = tmp_path / "mri.weights.h5"
    weights.write_bytes(b"not loaded by this test")
    cat = tmp_path / "cat.toml"
    cat.write_text(f'[weights.mri01]\nbackbone = "mobilenetv2"\nfile = "{weights}"\npreprocess = "rgb01"\ninput_size = "176x208"\n')
    monkeypatch.setenv("ALZMRI_WEIGHTS_CATALOG", str(cat))
    cfg = BaselineConfig(model="finetune", weights="mri01")
    spec = cfg.net_spec(n_classes=4, choice=cfg.weights_choice())
    assert (spec.size, spec.preprocess, spec.weights, spec.weights_tag.split("-")[0]) == ((176, 208), "rgb01", str(weights), "mri01")
    imagenet = BaselineConfig(model="finetune").net_spec(n_classes=4, choice=BaselineConfig(model="finetune").weights_choice())
    assert (imagenet.size, imagenet.preprocess) == ((224, 224), "")
    x = np.full((1, 4, 4, 3), 255.0, np.float32)
    layer = BackbonePreprocess("mobilenetv2", spec.preprocess)
    np.testing.assert_allclose(np.asarray(layer(x)), 1.0)  # rgb01: x / 255, not MobileNetV2's x / 127.5 - 1
    assert np.asarray(BackbonePreprocess.from_config(layer.get_config())(x)).max() == pytest.approx(1.0)
    np.testing.assert_allclose(np.asarray(BackbonePreprocess("mobilenetv2")(x)), 1.0)  # the architecture's: 255 -> 1 too
    np.testing.assert_allclose(np.asarray(BackbonePreprocess("mobilenetv2")(x * 0)), -1.0)
    np.testing.assert_allclose(np.asarray(layer(x * 0)), 0.0)


def test_the_trained_network_applies_the_catalog_preprocessing(kaggle_root: Path, artifacts: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The spec carrying "rgb01" is not enough: the network that trains (and is saved) must apply it."""
    from featurize.backbones import build_base, get_backbone

    keras = _keras()
    weights = tmp_path / "mri.weights.h5"
    build_base(get_backbone("mobilenetv2"), "none", (32, 32), seed=0).save_weights(str(weights))
    cat = tmp_path / "cat.toml"
    cat.write_text(f'[weights.mri01]\nbackbone = "mobilenetv2"\nfile = "{weights}"\npreprocess = "rgb01"\ninput_size = "32x32"\n')
    monkeypatch.setenv("ALZMRI_WEIGHTS_CATALOG", str(cat))
    seen: list[str] = []

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):  # noqa: ANN001
            seen.append(self.model.get_layer("preprocess").preprocess)

    res = train_baseline(kaggle_root, model="finetune", epochs=1, head_epochs=1, batch_size=16, callbacks=[Probe()],
                         **{**FAST, "weights": "mri01", "image_size": None})
    assert seen == ["rgb01"]
    assert "rgb01" in json.loads(res.sidecar_path.read_text())["preprocessing"]


def test_max_train_minutes_stops_after_an_epoch_and_a_rerun_continues(kaggle_root: Path, artifacts: Path) -> None:
    logs: list[str] = []
    res = train_baseline(kaggle_root, model="scratch", epochs=3, batch_size=4, max_train_minutes=1e-4, log=logs.append, **FAST)
    assert res.epochs_run == 1 and res.stopped_by_budget == 1
    assert any("would exceed --max-train-minutes" in m and "rerun" in m for m in logs)
    assert "max_train_minutes" in json.loads(res.row["best_params"])["stopped"]
    assert "provisional" in res.summary() and res.model_path.is_file()
    logs.clear()
    again = train_baseline(kaggle_root, model="scratch", epochs=3, batch_size=4, log=logs.append, **FAST)
    assert again.resumed_from == 1 and again.epochs_run == 3 and again.stopped_by_budget == 0
    assert [h["epoch"] for h in again.history] == [1, 2, 3] and again.history[0] == res.history[0]
    assert "stopped" not in json.loads(again.row["best_params"])
