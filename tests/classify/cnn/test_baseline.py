"""classify.cnn (alzmri baseline): end-to-end CNNs (scratch, fine-tune) - outputs, report row, resume, fine-tune schedule, NaN, bad files.

Tiny on purpose (32x32 images, 1-3 epochs, a dozen images, random-init weights): the whole file runs in about a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classify.cnn import BaselineConfig, BaselineResult, load_baseline, predict_files, train_baseline
from classify.cnn import train as cnn_train
from classify.cnn.data import class_weights, validation_split
from featurize.backbones import build_base, get_backbone
from featurize.errors import AlzmriError, DataError, WeightsError
from tests.conftest import write_images

pytestmark = [pytest.mark.tf, pytest.mark.slow]

FAST = dict(weights="none", image_size="32x32", epochs=1, subjects="none", progress=False, batch_size=4)


def _train(data: Path, **kw: object) -> BaselineResult:
    return train_baseline(data, **{**FAST, **kw})


def _keras():
    from classify.cnn.keras_objects import keras

    return keras


def _report(artifacts: Path) -> pd.DataFrame:
    return pd.read_csv(artifacts / "report.csv", keep_default_na=False)


def test_scratch_outputs_sidecar_curve_and_report_row(kaggle_root: Path, artifacts: Path) -> None:
    res = _train(kaggle_root, model="scratch")
    assert res.model_path.name == "scratch__end-to-end.keras" and res.model_path.parent.parent == artifacts / "models"
    assert res.curve_path is not None and res.curve_path.stat().st_size > 1000
    meta = json.loads(res.sidecar_path.read_text())
    assert meta["class_names"] == ["NonDemented", "MildDemented"]
    assert (meta["image_size"], meta["color"], meta["channels"], meta["resize"], meta["weights"]) == ("32x32", "grayscale", 1, "stretch", "random-init")
    assert "x / 255" in meta["preprocessing"]
    model, meta2 = load_baseline(res.model_path)
    assert model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, 2) and meta2 == meta
    files = sorted(str(p) for p in (kaggle_root / "test").rglob("*.png"))[:3]
    probs, errors = predict_files(res.model_path, files)
    assert probs.shape == (3, 2) and errors == ["", "", ""]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)

    row = _report(artifacts).iloc[0]
    assert (row["head"], row["backbone"], row["weights"], row["protocol"], row["task"], row["layers"]) == (
        "end-to-end", "scratch", "random-init", "official", "stages", "")
    assert (int(row["epochs"]), int(row["n_train"]), int(row["n_test"])) == (1, 10, 10) and float(row["fit_seconds"]) > 0
    for col in ("accuracy", "balanced_accuracy", "macro_f1", "recall_NonDemented", "recall_MildDemented", "created"):
        assert col in row.index, col
    assert res.row["accuracy"] == pytest.approx(float(row["accuracy"]))
    assert len(res.history) == 1 and set(res.history[0]) >= {"loss", "bal_acc", "val_loss", "val_bal_acc"}


def test_interrupted_run_resumes_and_changed_settings_start_over(kaggle_root: Path, artifacts: Path) -> None:
    keras = _keras()

    class InterruptAtEpoch2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):  # noqa: ANN001
            if epoch == 1:
                raise KeyboardInterrupt

    class OptimizerProbe(keras.callbacks.Callback):
        iterations = None

        def on_train_begin(self, logs=None):  # noqa: ANN001
            self.iterations = int(self.model.optimizer.iterations.numpy())

    with pytest.raises(AlzmriError) as err:
        _train(kaggle_root, model="scratch", epochs=2, callbacks=[InterruptAtEpoch2()])
    assert err.value.exit_code == 130 and "resume" in str(err.value)
    ckpt = next((artifacts / "models").rglob("state.json"))
    first = json.loads(ckpt.read_text())
    assert first["epoch"] == 1 and len(first["history"]) == 1

    logs: list[str] = []
    probe = OptimizerProbe()
    res = _train(kaggle_root, model="scratch", epochs=2, callbacks=[probe], log=logs.append)
    assert res.resumed_from == 1 and res.epochs_run == 2 and [h["epoch"] for h in res.history] == [1, 2]
    assert res.history[0] == first["history"][0]  # epoch 1 was not retrained
    assert any("resuming from the checkpoint after epoch 1" in m for m in logs)
    assert probe.iterations == 2  # Adam's state came back too: 8 training slices / batch 4 = 2 steps already taken
    assert int(_report(artifacts).iloc[0]["epochs"]) == 2

    logs.clear()
    again = _train(kaggle_root, model="scratch", epochs=2, batch_size=2, log=logs.append)
    assert again.resumed_from == 0 and any("other settings (batch_size changed); starting over" in m for m in logs)


def _base_of(model):  # noqa: ANN001, ANN202
    keras = _keras()
    return next(layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name != "augment")


def test_finetune_freezes_then_unfreezes_exactly_top_n_with_bn_frozen(kaggle_root: Path, artifacts: Path) -> None:
    keras = _keras()
    n = 12
    seen: dict[int, dict[str, object]] = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):  # noqa: ANN001
            base = _base_of(self.model)
            bns = [lay for lay in base.layers if isinstance(lay, keras.layers.BatchNormalization)]
            seen[epoch] = {
                "base_trainable": [lay.name for lay in base.layers if lay.trainable and lay.weights],
                "bn_trainable": [lay.name for lay in bns if lay.trainable],
                "model_trainable": {v.path for v in self.model.trainable_variables},
                "weights": {lay.name: [np.array(w) for w in lay.get_weights()] for lay in base.layers if lay.weights},
            }

        def on_train_end(self, logs=None):  # noqa: ANN001
            base = _base_of(self.model)
            seen["end"] = {"weights": {lay.name: [np.array(w) for w in lay.get_weights()] for lay in base.layers if lay.weights}}

    res = _train(kaggle_root, model="finetune", epochs=2, head_epochs=1, unfreeze=n, fine_learning_rate=1e-3, callbacks=[Probe()])
    assert [h["stage"] for h in res.history] == ["head", "fine"]
    base = build_base(get_backbone("mobilenetv2"), "none", (32, 32))
    top = base.layers[-n:]
    expected = [lay.name for lay in top if lay.weights and not isinstance(lay, keras.layers.BatchNormalization)]
    assert expected and any(isinstance(lay, keras.layers.BatchNormalization) for lay in top)  # the top N holds BN too
    # stage 1: the backbone is frozen, only the new head trains
    assert seen[0]["base_trainable"] == [] and seen[0]["bn_trainable"] == []
    assert all(p.startswith("probs/") for p in seen[0]["model_trainable"])
    # stage 2: exactly the weighted non-BN layers among the top N, plus the head
    assert seen[1]["base_trainable"] == expected and seen[1]["bn_trainable"] == []
    assert len(seen[1]["model_trainable"]) == len(seen[0]["model_trainable"]) + sum(len(base.get_layer(x).trainable_weights) for x in expected)
    before, after = seen[1]["weights"], seen["end"]["weights"]
    for name in before:
        same = all(np.array_equal(a, b) for a, b in zip(before[name], after[name]))
        layer = base.get_layer(name)
        if name in expected:
            assert not same, f"{name} should have been fine-tuned"
        else:  # layers below the cut, and every BatchNorm (weights and moving statistics): untouched
            assert same, f"{name} ({type(layer).__name__}) changed but should be frozen"
    meta = json.loads(res.sidecar_path.read_text())
    assert (meta["color"], meta["channels"], meta["backbone"], meta["head"]) == ("rgb", 3, "mobilenetv2", "fine-tune")
    assert "mobilenet_v2.preprocess_input" in meta["preprocessing"]
    model, _ = load_baseline(res.model_path)
    assert model.input_shape == (None, 32, 32, 3)
    row = _report(artifacts).iloc[0]
    assert (row["head"], row["backbone"], row["weights"], int(row["epochs"])) == ("fine-tune", "mobilenetv2", "random-init", 2)


def test_nan_divergence_stops_and_keeps_best_checkpoint(kaggle_root: Path, artifacts: Path) -> None:
    keras = _keras()

    class PoisonAt(keras.callbacks.Callback):
        def __init__(self, epoch: int) -> None:
            super().__init__()
            self.at = epoch

        def on_epoch_begin(self, epoch, logs=None):  # noqa: ANN001
            if epoch == self.at:
                k = self.model.get_layer("probs").kernel
                k.assign(np.full(k.shape, np.nan, np.float32))

    logs: list[str] = []
    res = _train(kaggle_root, model="scratch", epochs=3, callbacks=[PoisonAt(1)], log=logs.append)
    assert res.diverged and res.epochs_run == 1 and res.best_epoch == 1
    assert any("diverged (NaN loss) in epoch 2" in m and "best checkpoint (epoch 1)" in m for m in logs)
    model, _ = load_baseline(res.model_path)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert np.isfinite(res.row["accuracy"]) and int(_report(artifacts).iloc[0]["epochs"]) == 1

    with pytest.raises(AlzmriError, match="diverged .* before any epoch finished"):
        _train(kaggle_root, model="scratch", epochs=2, batch_size=3, callbacks=[PoisonAt(0)])


def test_early_stopping_waits_for_min_epochs(kaggle_root: Path, artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cnn_train, "balanced_accuracy", lambda y, pred: 0.5)  # validation never improves after epoch 1
    monkeypatch.setattr(cnn_train, "cross_entropy", lambda y, probs: 0.7)
    logs: list[str] = []
    res = _train(kaggle_root, model="scratch", epochs=4, patience=1, min_epochs=3, log=logs.append)
    assert res.epochs_run == 3 and res.best_epoch == 1 and any("early stopping (best epoch 1)" in m for m in logs)


def test_corrupt_files_skipped_and_listed_with_holdout_when_no_split(tmp_path: Path, artifacts: Path) -> None:
    flat = tmp_path / "flat"
    write_images(flat, "folders", n_per_class=6)
    (flat / "NonDemented" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (flat / "MildDemented" / "empty.png").write_bytes(b"")
    cfg = BaselineConfig(weights="none", image_size="32x32", epochs=3, subjects="none", batch_size=4)
    res = train_baseline(flat, cfg, progress=False, epochs=1)  # options given beside a config override it
    assert res.epochs_run == 1
    failed = dict(res.failed)
    assert set(failed) == {"NonDemented/broken.png", "MildDemented/empty.png"}
    assert "zero-byte" in failed["MildDemented/empty.png"]
    assert res.row["n_train"] + res.row["n_test"] == 12 and res.row["n_test"] >= 2
    assert "hold-out by slice, seed 0" in json.loads(res.sidecar_path.read_text())["split"]


def test_subject_cv_reports_mean_and_std_and_trains_final_model(tmp_path: Path, artifacts: Path) -> None:
    root = tmp_path / "m"
    write_images(root, "folders", n_per_class=8)
    rows = [{"path": str(p.relative_to(root)), "label": p.parent.name, "subject": f"{p.parent.name}-{int(p.stem[3:]) // 2}"}
            for p in sorted(root.rglob("*.png"))]
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    with pytest.raises(DataError, match="subject-cv needs subjects"):
        _train(manifest, model="scratch", protocol="subject-cv")
    res = _train(manifest, model="scratch", protocol="subject-cv", subjects="column", folds=2)
    assert len(res.folds) == 2 and res.row["protocol"] == "subject-cv"
    assert {"accuracy_std", "balanced_accuracy_std", "subject_accuracy"} <= set(res.row)
    assert res.model_path.is_file() and res.epochs_run == 1


def test_validation_carve_is_subject_disjoint_and_stratified() -> None:
    y = np.repeat([0, 1, 2], 40)
    groups = np.array([f"s{i // 8}" for i in range(120)])
    tr, va = validation_split(y, groups, 0.15, seed=0)
    assert not set(groups[tr]) & set(groups[va]) and set(y[va]) == {0, 1, 2} and 0.08 < len(va) / 120 < 0.25
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(120))
    y10 = np.array([0] * 5 + [1] * 5)
    tr, va = validation_split(y10, None, 0.15, seed=0)
    assert len(va) == 2 and set(y10[va]) == {0, 1}
    np.testing.assert_allclose(class_weights(np.array([0, 0, 0, 1]), 3), [2 / 3, 2.0, 1.0])


def test_bad_arguments_fail_with_one_line(kaggle_root: Path, artifacts: Path, tmp_path: Path) -> None:
    with pytest.raises(AlzmriError, match="unknown --model"):
        train_baseline(kaggle_root, model="resnet")
    with pytest.raises(AlzmriError, match="unknown --protocol"):
        train_baseline(kaggle_root, protocol="leave-one-out")
    with pytest.raises(AlzmriError, match="--epochs must be at least 1"):
        train_baseline(kaggle_root, epochs=0)
    with pytest.raises(WeightsError, match="nope.h5: weights file not found"):
        train_baseline(kaggle_root, model="finetune", weights=str(tmp_path / "nope.h5"))
    with pytest.raises(AlzmriError, match="unknown backbone"):
        train_baseline(kaggle_root, model="finetune", backbone="alexnet")


def test_config_is_frozen_keyword_only_and_names_no_missing_flags() -> None:
    import dataclasses

    cfg = BaselineConfig(model="Fine-Tune", epochs=6)
    assert cfg.kind == "finetune" and cfg.size == (224, 224)  # MobileNetV2's native input
    assert (cfg.schedule.epochs, cfg.schedule.min_epochs, cfg.n_head_epochs) == (6, 0, 2)
    assert BaselineConfig().schedule.epochs == 30 and BaselineConfig().schedule.min_epochs == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        BaselineConfig("scratch")  # type: ignore[misc]
    # the CLI has no --folds: the message names the library option
    with pytest.raises(AlzmriError, match=r"^folds must be at least 2, not 1$"):
        BaselineConfig(folds=1)
    with pytest.raises(AlzmriError, match=r"^--head-epochs must be at least 1, not 0$"):
        BaselineConfig(head_epochs=0)
    with pytest.raises(AlzmriError, match="at most the head's --learning-rate"):
        BaselineConfig(model="finetune", learning_rate=1e-4, fine_learning_rate=1e-3)
    with pytest.raises(AlzmriError, match="--max-train-minutes 0 must be above 0"):
        BaselineConfig(max_train_minutes=0)
    with pytest.raises(AlzmriError, match="too small for the scratch CNN"):
        BaselineConfig(image_size="16x16")



def test_importing_the_cnn_package_and_its_predict_path_is_light() -> None:
    import subprocess
    import sys

    code = ("import sys, classify.baseline, classify.cnn; from classify.cnn import load_baseline, predict_files; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'sklearn', 'classify.cnn.run') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"  # TF and Keras load with the model, scikit-learn and training code never
