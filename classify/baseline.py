"""``alzmri baseline``: CNNs trained on the images themselves, for comparison with the frozen-feature heads.

Two models:

* ``scratch``: a compact CNN from random initialisation (conv blocks with BatchNorm, pooling and dropout,
  global average pooling, softmax) on grayscale input at the native 176x208 aspect (default 88x104).
* ``finetune``: a pretrained backbone from ``featurize.backbones`` with a new head; first the head alone on the
  frozen backbone, then the top ``unfreeze`` layers too at a small learning rate. BatchNorm stays in inference
  mode throughout (the backbone is called with ``training=False`` and its BN layers are never trainable).

Both models take float pixel values in 0..255 at a fixed size; augmentation (shift, rotation, zoom, brightness,
active only in training) and the preprocessing (x/255, or the backbone's ``preprocess_input``) live inside the
model, so ``predict`` needs only the JSON sidecar: size, grayscale/rgb and resize mode.

Training uses class weights, a validation part carved from train (group-aware when subjects are known), early
stopping on validation balanced accuracy, keeps the best epoch, checkpoints after every epoch (a rerun with the
same settings resumes; other settings start over) and stops cleanly when the loss turns NaN.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from featurize.backbones import Backbone, build_base, get_backbone, weights_tag
from featurize.config import dataset_dir, models_dir, report_path
from featurize.errors import AlzmriError, DataError
from featurize.images import RESIZE_MODES, parse_size

Log = Callable[[str], None]

MODELS = ("scratch", "finetune")
PROTOCOLS = ("official", "subject-cv", "slice-cv")
ARCH_VERSION = 2  # bump when a network definition changes: old checkpoints then start over
SIDECAR_FORMAT = "alzmri-baseline/1"

# Defaults, calibrated on the 5,120-slice Kaggle set (4,097 train: 3,482 fit + 615 validation) on the 2-core CPU:
# scratch 88x104 ~17 s/epoch idle (~35-90 s when the cores are shared); fine-tune 160x192 ~60 s per head epoch and
# ~75-115 s per unfrozen epoch. Budgets: scratch <= 30 epochs (~9 min idle), fine-tune 4 + 10 epochs (~15-23 min).
DEFAULT_SIZE = {"scratch": "88x104", "finetune": "160x192"}
DEFAULT_EPOCHS = {"scratch": 30, "finetune": 14}
DEFAULT_HEAD_EPOCHS = 4
# Early stopping waits this long first: a scratch CNN's validation score (subject-disjoint when subjects are known)
# is flat and noisy for the first epochs, and patience 3 alone stopped it at epoch 6, barely trained.
DEFAULT_MIN_EPOCHS = {"scratch": 10, "finetune": 0}
DEFAULT_LR = 1e-3
DEFAULT_FINE_LR = 1e-5
SCRATCH_BLOCKS = ((16, 0.1), (32, 0.1), (64, 0.1), (128, 0.2), (256, 0.2))  # (filters, dropout) per block
VAL_FRACTION = 0.15


@dataclass
class FitOutcome:
    """One trained network: its best weights are in ``model``."""

    model: Any
    history: list[dict[str, Any]]
    epochs_run: int
    best_epoch: int
    best_val_bal_acc: float
    train_seconds: float
    diverged_epoch: int | None
    stopped_early: bool
    resumed_from: int
    n_train: int
    n_val: int
    fingerprint: str = ""


@dataclass
class BaselineResult:
    """What one ``train_baseline`` call did. ``rows`` are the report rows written (one per call)."""

    rows: list[dict[str, Any]]
    model_path: Path
    sidecar_path: Path
    curve_path: Path | None
    report: Path
    epochs_run: int
    best_epoch: int
    fit_seconds: float
    seconds: float
    failed: list[tuple[str, str]]
    problems: list[str] = field(default_factory=list)
    diverged: bool = False
    resumed_from: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    folds: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def row(self) -> dict[str, Any]:
        """The (single) report row."""
        return self.rows[0]

    def summary(self) -> str:
        """A few lines for the terminal: scores, schedule, where things were written."""
        r = self.row
        std = lambda k: f" +- {r[k + '_std']:.3f}" if isinstance(r.get(k + "_std"), float) and math.isfinite(r[k + "_std"]) else ""  # noqa: E731
        lines = [f"{r['backbone']} / {r['head']} ({r['weights']}, {r.get('image_size')}) on {r['dataset']}, protocol {r['protocol']}: "
                 f"accuracy {r['accuracy']:.3f}{std('accuracy')}, balanced accuracy {r['balanced_accuracy']:.3f}{std('balanced_accuracy')}, "
                 f"macro-F1 {r['macro_f1']:.3f}, ROC-AUC {r['roc_auc']:.3f}"]
        if isinstance(r.get("subject_balanced_accuracy"), float):
            lines.append(f"subject level: accuracy {r['subject_accuracy']:.3f}, balanced accuracy {r['subject_balanced_accuracy']:.3f}")
        lines.append(f"{self.epochs_run} epoch(s), best {self.best_epoch}{' (stopped: NaN loss)' if self.diverged else ''}; "
                     f"training {_fmt_secs(self.fit_seconds)}, this run {_fmt_secs(self.seconds)}")
        if self.failed:
            lines.append(f"{len(self.failed)} unreadable file(s) skipped, e.g. {self.failed[0][0]}: {self.failed[0][1]}")
        lines.append(f"model: {self.model_path} (+ {self.sidecar_path.name})")
        if self.curve_path:
            lines.append(f"curves: {self.curve_path}")
        lines.append(f"report: {self.report}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- settings


@dataclass
class _Spec:
    """Everything that defines the network and its schedule."""

    kind: str
    size: tuple[int, int]
    n_classes: int
    seed: int
    backbone: Backbone | None
    weights: str
    weights_tag: str
    unfreeze: int
    head_epochs: int
    lr: float
    fine_lr: float
    precision: str = "float32"
    devices: str = "auto"

    @property
    def channels(self) -> int:
        return 1 if self.kind == "scratch" else 3

    @property
    def name(self) -> str:
        return "scratch__end-to-end" if self.kind == "scratch" else f"{self.backbone.name}__fine-tune"

    @property
    def head(self) -> str:
        return "end-to-end" if self.kind == "scratch" else "fine-tune"

    def stages(self, epochs: int) -> list[tuple[str, int, float]]:
        """(stage name, last epoch of the stage (1-based, inclusive), learning rate)."""
        if self.kind == "scratch":
            return [("train", epochs, self.lr)]
        return [("head", min(self.head_epochs, epochs), self.lr), ("fine", epochs, self.fine_lr)]

    def settings(self) -> dict[str, Any]:
        return {"arch_version": ARCH_VERSION, "model": self.kind, "backbone": self.backbone.name if self.backbone else "scratch",
                "weights": self.weights_tag, "image_size": f"{self.size[0]}x{self.size[1]}", "channels": self.channels,
                "n_classes": self.n_classes, "seed": self.seed, "lr": self.lr,
                **({"unfreeze": self.unfreeze, "head_epochs": self.head_epochs, "fine_lr": self.fine_lr,
                    "schedule": "head-then-fine-from-last"} if self.kind == "finetune" else {}),
                # only when not the default, so that float32 checkpoints are unchanged
                **({"precision": _policy(self.precision)} if self.precision != "float32" else {})}


def _policy(precision: str) -> str:
    from featurize.devices import policy_name

    return policy_name(precision)


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- keras objects


@functools.lru_cache(maxsize=None)
def _kx() -> Any:
    """Keras, and the custom layer/metric, defined (and registered for loading) on first use."""
    from featurize.tfquiet import import_tensorflow

    import_tensorflow()
    import keras
    from keras import ops

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

    class _NS:
        pass

    ns = _NS()
    ns.keras, ns.ops, ns.BackbonePreprocess, ns.BalancedAccuracy = keras, ops, BackbonePreprocess, BalancedAccuracy
    import tensorflow as tf

    ns.tf = tf
    return ns


def _augmentation(keras: Any, seed: int) -> Any:
    """Light augmentation on 0..255 pixels: small shifts, rotations (+-10 deg), zoom, brightness. Training only."""
    L = keras.layers
    return keras.Sequential([
        L.RandomTranslation(0.06, 0.06, fill_mode="constant", fill_value=0.0, seed=seed),
        L.RandomRotation(10 / 360, fill_mode="constant", fill_value=0.0, seed=seed + 1),
        L.RandomZoom(0.1, fill_mode="constant", fill_value=0.0, seed=seed + 2),
        L.RandomBrightness(0.1, value_range=(0.0, 255.0), seed=seed + 3),
    ], name="augment")


def build_scratch(size: tuple[int, int], n_classes: int, seed: int = 0) -> Any:
    """The compact CNN: 5 blocks of 3x3 Conv-BN-ReLU, 2x2 max-pool and dropout (16..256 filters), GAP, dropout, softmax.

    About 0.4 M parameters and ~20 CPU-seconds per epoch of the 5,120-slice set at 88x104.
    """
    kx = _kx()
    keras = kx.keras
    L = keras.layers
    keras.utils.set_random_seed(seed)
    w, h = size
    inp = keras.Input((h, w, 1), name="image")
    x = _augmentation(keras, seed)(inp)
    x = L.Rescaling(1.0 / 255, name="rescale")(x)
    for b, (filters, drop) in enumerate(SCRATCH_BLOCKS, start=1):
        x = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{b}_conv")(x)
        x = L.BatchNormalization(name=f"block{b}_bn")(x)
        x = L.ReLU(name=f"block{b}_relu")(x)
        x = L.MaxPooling2D(name=f"block{b}_pool")(x)
        x = L.Dropout(drop, seed=seed + b, name=f"block{b}_drop")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.3, seed=seed, name="head_drop")(x)
    out = L.Dense(n_classes, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inp, out, name="scratch_cnn")


def _quiet_build_base(backbone: Backbone, weights: str, size: tuple[int, int], seed: int) -> Any:
    with warnings.catch_warnings():
        # Keras notes that ImageNet weights made at 224x224 serve other sizes too: expected here, not news
        warnings.filterwarnings("ignore", message=".*input_shape. is undefined or non-square.*")
        return build_base(backbone, weights, size, seed=seed)


def build_finetune(backbone: Backbone, weights: str, size: tuple[int, int], n_classes: int, seed: int = 0) -> tuple[Any, Any]:
    """Pretrained base (frozen, called with training=False) plus a new GAP-dropout-softmax head. Returns (model, base)."""
    kx = _kx()
    keras = kx.keras
    L = keras.layers
    base = _quiet_build_base(backbone, weights, size, seed)
    base.trainable = False
    keras.utils.set_random_seed(seed)
    w, h = size
    inp = keras.Input((h, w, 3), name="image")
    x = _augmentation(keras, seed)(inp)
    x = kx.BackbonePreprocess(backbone.name, name="preprocess")(x)
    x = base(x, training=False)  # BatchNorm in inference mode, whatever is trainable later
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.2, seed=seed, name="head_drop")(x)
    out = L.Dense(n_classes, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inp, out, name=f"{backbone.name}_finetune"), base


def _is_bn(layer: Any) -> bool:
    keras = _kx().keras
    return isinstance(layer, keras.layers.BatchNormalization)


def set_stage(base: Any, stage: str, unfreeze: int) -> list[str]:
    """Freeze the base (``head``), or unfreeze its top ``unfreeze`` layers except BatchNorm (``fine``).

    "Top N layers" counts every layer of ``base.layers`` from the end (as in Keras's transfer-learning guide);
    returns the names of the base layers left trainable that carry weights.
    """
    if base is None:
        return []
    if stage != "fine" or unfreeze <= 0:
        base.trainable = False
        return []
    base.trainable = True
    cut = max(0, len(base.layers) - unfreeze)
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= cut and not _is_bn(layer)
    return [layer.name for layer in base.layers if layer.trainable and layer.weights]


# --------------------------------------------------------------------------------------------------- data


def decode_images(paths: Sequence[str], size: tuple[int, int], resize: str, gray: bool, batch_size: int = 64,
                  progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """All images as uint8 [N,H,W,C] (C=1 luma when ``gray``), and the error per file ("" when it decoded)."""
    from featurize.pipeline import image_batches
    from featurize.progress import progress_bar

    w, h = size
    X = np.zeros((len(paths), h, w, 1 if gray else 3), np.uint8)
    errors: list[str] = []
    if not len(paths):
        return X, errors
    with progress_bar(len(paths), "decode", enabled=progress) as advance:
        for arr, errs in image_batches(list(paths), size, resize, batch_size):
            if gray:
                arr = ((arr[..., 0:1].astype(np.uint32) * 299 + arr[..., 1:2].astype(np.uint32) * 587
                        + arr[..., 2:3].astype(np.uint32) * 114 + 500) // 1000).astype(np.uint8)
            X[len(errors):len(errors) + len(arr)] = arr
            errors += errs
            advance(len(arr))
    return X, errors


def _stratify_ok(y: np.ndarray, n_splits: int) -> bool:
    """True when every class present has at least ``n_splits`` members."""
    counts = np.bincount(y)
    return len(y) > 0 and int(counts[counts > 0].min()) >= n_splits


def validation_split(y: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, validation) for a stratified part of about ``fraction`` carved from a training part;
    group-aware when groups (subjects) are given.

    With groups: StratifiedGroupKFold with round(1/fraction) folds, first fold held out (GroupShuffleSplit when
    there are too few groups). Without: a stratified shuffle split (plain shuffle when a class is too small).
    """
    from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit, StratifiedGroupKFold, StratifiedShuffleSplit

    n = len(y)
    idx = np.arange(n)
    if n < 2:
        raise DataError(f"only {n} usable training image(s): too few to carve a validation part")
    k = max(2, int(round(1 / fraction)))
    if groups is not None:
        n_groups = len(set(groups))
        if n_groups < 2:
            raise DataError("all training images belong to one subject: cannot carve a subject-disjoint validation part; use --subjects none")
        if n_groups >= k and _stratify_ok(y, k):
            tr, te = next(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(idx, y, groups))
        else:
            tr, te = next(GroupShuffleSplit(n_splits=1, test_size=max(1, int(round(fraction * n_groups))) / n_groups,
                                            random_state=seed).split(idx, y, groups))
        return np.sort(tr), np.sort(te)
    k_present = len(set(y.tolist()))
    n_test = max(int(round(fraction * n)), k_present)
    if n - n_test >= k_present and _stratify_ok(y, 2):
        tr, te = next(StratifiedShuffleSplit(n_splits=1, test_size=n_test, random_state=seed).split(idx, y))
    else:
        tr, te = next(ShuffleSplit(n_splits=1, test_size=min(n - 1, max(1, int(round(fraction * n)))), random_state=seed).split(idx))
    return np.sort(tr), np.sort(te)


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced class weights n / (k * count) over the classes present (1.0 for absent classes)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.ones(n_classes)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return w


def _train_dataset(X: np.ndarray, y: np.ndarray, w: np.ndarray, batch_size: int, seed: int) -> Any:
    tf = _kx().tf
    n = len(y)
    Xt, yt, wt = tf.constant(X), tf.constant(y.astype(np.int32)), tf.constant(w.astype(np.float32))

    def gather(i: Any) -> tuple[Any, Any, Any]:
        return tf.cast(tf.gather(Xt, i), tf.float32), tf.gather(yt, i), tf.gather(wt, i)

    ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def predict_proba(model: Any, X: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax outputs for uint8 images [N,H,W,C], in inference mode."""
    tf = _kx().tf
    if not len(X):
        return np.zeros((0, int(model.output_shape[-1])), np.float32)
    ds = tf.data.Dataset.from_tensor_slices(X).batch(batch_size).map(lambda x: tf.cast(x, tf.float32)).prefetch(2)
    return np.asarray(model.predict(ds, verbose=0), dtype=np.float64)


# --------------------------------------------------------------------------------------------------- metrics


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y, pred)) if len(y) else float("nan")


def _cross_entropy(y: np.ndarray, probs: np.ndarray) -> float:
    if not len(y):
        return float("nan")
    p = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    return float(-np.mean(np.log(p)))


def test_metrics(y: np.ndarray, probs: np.ndarray, class_names: list[str],
                 groups: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray, np.ndarray | None]:
    """The classify heads' metrics (``classify.evaluate.compute_metrics``), so both kinds of rows compare exactly:
    accuracy, balanced accuracy, macro-F1, OvR macro ROC-AUC, per-class precision/recall, and subject-level scores
    from mean slice probabilities when subjects are known. Returns (metrics, confusion, subject confusion)."""
    from classify.evaluate import compute_metrics

    return compute_metrics(y, probs.argmax(axis=1), probs, class_names, groups)


# --------------------------------------------------------------------------------------------------- checkpoints


class _Checkpoint:
    """``state.json`` (settings fingerprint, epoch, history, best, patience counter) pointing at per-epoch folders
    ``eNNNN/`` (weights and optimizer state). A folder is complete before the pointer moves (rename, then
    ``os.replace`` of state.json), so an interruption at any moment leaves the previous epoch intact."""

    def __init__(self, folder: Path, settings: dict[str, Any], log: Log) -> None:
        self.dir, self.settings, self.fingerprint, self.log = folder, settings, _digest(settings), log

    def fresh(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "settings": self.settings, "epoch": 0, "stage_index": 0, "wait": 0,
                "history": [], "best_epoch": 0, "best_bal_acc": -1.0, "best_loss": float("inf"), "last_dir": "",
                "best_dir": "", "train_seconds": 0.0, "diverged_epoch": None}

    def load(self) -> dict[str, Any] | None:
        path = self.dir / "state.json"
        if not path.is_file():
            if self.dir.exists():
                shutil.rmtree(self.dir, ignore_errors=True)
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            self.log(f"{self.dir}: unreadable checkpoint ({exc}); starting over")
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        if state.get("fingerprint") != self.fingerprint:
            old = state.get("settings", {})
            changed = sorted(k for k in set(old) | set(self.settings) if str(old.get(k)) != str(self.settings.get(k)))
            self.log(f"{self.dir}: checkpoint was made with other settings ({', '.join(changed) or 'format'} changed); starting over")
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        for key in ("last_dir", "best_dir"):
            if state.get(key) and not (self.dir / state[key] / "model.weights.h5").is_file():
                self.log(f"{self.dir}: checkpoint is incomplete ({state[key]} missing); starting over")
                shutil.rmtree(self.dir, ignore_errors=True)
                return None
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "state.json.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1, default=float)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / "state.json")

    def save(self, model: Any, state: dict[str, Any], best: bool) -> None:
        name = f"e{int(state['epoch']):04d}"
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp, final = self.dir / f"{name}.tmp", self.dir / name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save_weights(str(tmp / "model.weights.h5"))  # a compiled model's file holds the optimizer state too
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        state["last_dir"] = name
        if best:
            state["best_dir"] = name
        self.write_state(state)
        keep = {state["last_dir"], state["best_dir"]}
        for p in self.dir.iterdir():
            if p.is_dir() and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def restore(self, model: Any, which: str, state: dict[str, Any], optimizer: bool) -> None:
        """Load the weights of the ``which`` epoch; with ``optimizer`` also Adam's state (saved in the same file)."""
        folder = self.dir / state[which]
        if optimizer:
            model.optimizer.build(model.trainable_variables)
        with warnings.catch_warnings():
            # without ``optimizer`` the fresh optimizer is unbuilt and Keras says it skips the saved one: intended
            warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
            model.load_weights(str(folder / "model.weights.h5"))


# --------------------------------------------------------------------------------------------------- training


def _fmt_secs(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _make_control(kx: Any, ck: _Checkpoint, state: dict[str, Any], stage: str, X_val: np.ndarray, y_val: np.ndarray,
                  patience: int, min_epochs: int, total_epochs: int, batch_size: int, label: str, log: Log, advance: Callable[[int], None]) -> Any:
    """The per-epoch callback: validation balanced accuracy, best/patience bookkeeping, checkpoint, NaN guard."""

    class Control(kx.keras.callbacks.Callback):
        diverged = False

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            advance(1)
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.diverged = True
                self.model.stop_training = True

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs if logs is not None else {}
            e = epoch + 1
            probs = None if self.diverged else predict_proba(self.model, X_val, batch_size)
            if probs is None or not np.all(np.isfinite(probs)) or not math.isfinite(float(logs.get("loss", 0.0))):
                self.diverged = True
                self.model.stop_training = True
                state["diverged_epoch"] = e
                ck.write_state(state)
                kept = f"keeping the best checkpoint (epoch {state['best_epoch']})" if state["best_dir"] else "no epoch finished cleanly"
                log(f"{label}: training diverged (NaN loss) in epoch {e}; stopped, {kept}. Lower the learning rate to retry")
                return
            val_loss, val_bal = _cross_entropy(y_val, probs), _balanced_accuracy(y_val, probs.argmax(1))
            logs["val_loss"], logs["val_bal_acc"] = val_loss, val_bal
            dt = time.perf_counter() - self.t0
            rec = {"epoch": e, "stage": stage, "loss": float(logs.get("loss", float("nan"))), "bal_acc": float(logs.get("bal_acc", float("nan"))),
                   "val_loss": val_loss, "val_bal_acc": val_bal, "seconds": round(dt, 2),
                   "lr": float(np.asarray(self.model.optimizer.learning_rate))}
            state["history"].append(rec)
            state["epoch"] = e
            state["train_seconds"] = float(state["train_seconds"]) + dt
            improved = val_bal > state["best_bal_acc"] + 1e-9 or (abs(val_bal - state["best_bal_acc"]) <= 1e-9 and val_loss < state["best_loss"])
            if improved:
                state["best_epoch"], state["best_bal_acc"], state["best_loss"], state["wait"] = e, val_bal, val_loss, 0
            else:
                state["wait"] = int(state["wait"]) + 1
            ck.save(self.model, state, best=improved)
            left = (total_epochs - e) * dt
            log(f"{label} epoch {e}/{total_epochs} ({stage}) loss {rec['loss']:.3f} bal_acc {rec['bal_acc']:.3f} | "
                f"val loss {val_loss:.3f} bal_acc {val_bal:.3f}{' (best)' if improved else ''} | {dt:.0f}s, "
                f"elapsed {_fmt_secs(state['train_seconds'])}, at most ~{_fmt_secs(left)} left")
            if stage != "head" and state["wait"] >= patience and e >= min_epochs and e < total_epochs:  # the head stage has a fixed length
                self.model.stop_training = True
                log(f"{label}: no gain in validation balanced accuracy for {patience} epoch(s); early stopping (best epoch {state['best_epoch']})")

    return Control()


def fit_network(spec: _Spec, X: np.ndarray, y: np.ndarray, train_idx: np.ndarray, groups: np.ndarray | None,
                ckpt_dir: Path, run_settings: dict[str, Any], epochs: int, patience: int, batch_size: int,
                progress: bool, log: Log, label: str, callbacks: Sequence[Any] = (), min_epochs: int = 0) -> FitOutcome:
    """Carve validation from ``train_idx``, train ``spec`` with checkpoints in ``ckpt_dir``; the model ends on its best epoch."""
    from featurize.devices import replicas, training_scope

    kx = _kx()
    with training_scope(spec.devices, spec.precision) as strategy:
        n_rep = replicas(strategy)
        if n_rep > 1:  # BatchNorm statistics are per replica: a different computation, so a different checkpoint
            run_settings = {**run_settings, "replicas": n_rep}
        return _fit_in_scope(kx, spec, X, y, train_idx, groups, ckpt_dir, run_settings, epochs, patience, batch_size,
                             progress, log, label, callbacks, min_epochs)


def _fit_in_scope(kx: Any, spec: _Spec, X: np.ndarray, y: np.ndarray, train_idx: np.ndarray, groups: np.ndarray | None,
                  ckpt_dir: Path, run_settings: dict[str, Any], epochs: int, patience: int, batch_size: int,
                  progress: bool, log: Log, label: str, callbacks: Sequence[Any], min_epochs: int) -> FitOutcome:
    from featurize.progress import progress_bar

    keras = kx.keras
    tr_pos, va_pos = validation_split(y[train_idx], None if groups is None else groups[train_idx], VAL_FRACTION, spec.seed)
    tr, va = train_idx[tr_pos], train_idx[va_pos]
    data_key = _digest([run_settings, tr.tolist(), va.tolist(), y[tr].tolist()])
    ck = _Checkpoint(ckpt_dir, {**spec.settings(), **run_settings, "batch_size": batch_size, "data": data_key}, log)
    state = ck.load()
    resumed_from = 0
    if state is None:
        state = ck.fresh()
    else:
        resumed_from = int(state["epoch"])
        if resumed_from:
            log(f"{label}: resuming from the checkpoint after epoch {resumed_from} ({ck.dir})")
    if spec.kind == "scratch":
        model, base = build_scratch(spec.size, spec.n_classes, spec.seed), None
    else:
        model, base = build_finetune(spec.backbone, spec.weights, spec.size, spec.n_classes, spec.seed)
    cw = class_weights(y[tr], spec.n_classes)
    train_ds = _train_dataset(X[tr], y[tr], cw[y[tr]], batch_size, spec.seed + int(state["epoch"]))
    steps = int(math.ceil(len(tr) / batch_size))
    X_val, y_val = X[va], y[va]
    stages = spec.stages(epochs)
    todo = max(0, epochs - int(state["epoch"]))
    if todo and not state["diverged_epoch"]:
        log(f"{label}: {len(tr)} training / {len(va)} validation slices, epochs {int(state['epoch']) + 1}..{epochs} "
            f"(patience {patience}{f' after epoch {min_epochs}' if min_epochs else ''}), batch {batch_size}, {spec.size[0]}x{spec.size[1]} {'grayscale' if spec.channels == 1 else 'rgb'}")
    try:
        with progress_bar(todo * steps, f"train {label}", enabled=progress and todo > 0, unit="batch") as advance:
            for si, (stage, end, lr) in enumerate(stages):
                if si < int(state["stage_index"]) or state["diverged_epoch"]:
                    continue
                set_stage(base, stage, spec.unfreeze)
                model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="sparse_categorical_crossentropy",
                              metrics=[kx.BalancedAccuracy(spec.n_classes)], jit_compile=False)
                last_stage = state["history"][-1]["stage"] if state["history"] else None
                if si > int(state["stage_index"]):
                    # fine-tuning continues from where the head stage ended (its weights are in ``model``), with a
                    # fresh optimizer and patience; the best epoch is still tracked over both stages
                    state["stage_index"], state["wait"] = si, 0
                    trainable = set_stage(base, stage, spec.unfreeze)
                    log(f"{label}: stage {stage}: {len(trainable)} weighted layers of the top {spec.unfreeze} unfrozen "
                        f"(BatchNorm kept frozen), learning rate {lr:g}")
                elif state["last_dir"] and last_stage == stage:
                    ck.restore(model, "last_dir", state, optimizer=True)
                stop = stage != "head" and int(state["wait"]) >= patience and int(state["epoch"]) >= min_epochs
                if int(state["epoch"]) >= end or stop:
                    continue
                control = _make_control(kx, ck, state, stage, X_val, y_val, patience, min_epochs, epochs, batch_size, label, log, advance)
                model.fit(train_ds, initial_epoch=int(state["epoch"]), epochs=end, verbose=0, shuffle=False,
                          callbacks=[control, *callbacks])
                if control.diverged:
                    break
    except KeyboardInterrupt:
        raise AlzmriError(f"{label}: interrupted in epoch {int(state['epoch']) + 1}; {int(state['epoch'])} finished epoch(s) are "
                          f"saved in {ck.dir}: rerun the same command to resume", exit_code=130) from None
    if not state["best_dir"]:
        if state["diverged_epoch"]:
            raise AlzmriError(f"{label}: training diverged (NaN loss) in epoch {state['diverged_epoch']} before any epoch finished; "
                              "lower the learning rate (or check the images) and rerun")
        raise AlzmriError(f"{label}: no epoch was trained (epochs={epochs})")
    ck.restore(model, "best_dir", state, optimizer=False)
    set_stage(base, "head", spec.unfreeze)
    stopped_early = int(state["epoch"]) < epochs and not state["diverged_epoch"]
    return FitOutcome(model=model, history=list(state["history"]), epochs_run=int(state["epoch"]), best_epoch=int(state["best_epoch"]),
                      best_val_bal_acc=float(state["best_bal_acc"]), train_seconds=float(state["train_seconds"]),
                      diverged_epoch=state["diverged_epoch"], stopped_early=stopped_early, resumed_from=resumed_from,
                      n_train=len(tr), n_val=len(va), fingerprint=ck.fingerprint)


# --------------------------------------------------------------------------------------------------- saving / loading


def _save_model(spec: _Spec, fit: FitOutcome, path: Path) -> None:
    """Save a clean copy (no optimizer, no metrics) of the best network as ``.keras``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    keras = _kx().keras
    clone = keras.Model(fit.model.inputs, fit.model.outputs, name=fit.model.name)  # same weights, no optimizer/metrics
    clone.save(str(tmp))
    os.replace(tmp, path)


def load_baseline(model_path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """Load a baseline model and its JSON sidecar (class names, size, channels, resize) for prediction."""
    path = Path(model_path)
    side = path.with_suffix(".json")
    if not path.is_file():
        raise AlzmriError(f"{path}: no such model; train one with `alzmri baseline`")
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise AlzmriError(f"{side}: missing or unreadable sidecar ({exc}); retrain with `alzmri baseline`") from None
    kx = _kx()
    return kx.keras.models.load_model(str(path), compile=False), meta


def predict_files(model_path: str | os.PathLike[str], paths: Sequence[str], batch_size: int = 32) -> tuple[np.ndarray, list[str]]:
    """Class probabilities for image files (rows of failed files are NaN) and the error per file ("" if fine)."""
    model, meta = load_baseline(model_path)
    size = parse_size(meta["image_size"])
    X, errors = decode_images(paths, size, meta["resize"], meta["color"] == "grayscale", batch_size, progress=False)
    probs = predict_proba(model, X, batch_size)
    probs[[bool(e) for e in errors]] = np.nan
    return probs, errors


# --------------------------------------------------------------------------------------------------- entry point


def _versions() -> dict[str, str]:
    kx = _kx()
    from featurize import __version__

    return {"tf_version": kx.tf.__version__, "keras_version": kx.keras.__version__, "alzmri_version": __version__}


def _aggregate(folds: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and std over folds, NaN-aware (as ``classify.evaluate`` does for the heads)."""
    keys = list(dict.fromkeys(k for f in folds for k in f))
    mean, std = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in keys:
            v = np.array([f.get(k, np.nan) for f in folds], dtype=float)
            mean[k], std[k] = float(np.nanmean(v)), float(np.nanstd(v))
    return mean, std


def _leaked(groups: np.ndarray | None, folds: list[tuple[np.ndarray, np.ndarray]]) -> int | None:
    if groups is None:
        return None
    return len(set().union(*[set(groups[te]) & set(groups[tr]) for tr, te in folds]))


def train_baseline(
    data: str | os.PathLike[str],
    model: str = "scratch",
    backbone: str = "mobilenetv2",
    weights: str = "imagenet",
    image_size: str | None = None,
    epochs: int | None = None,
    patience: int = 3,
    unfreeze: int = 30,
    batch_size: int = 32,
    protocol: str = "official",
    subjects: str = "auto",
    classes: str | list[str] | None = None,
    artifacts: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Log = lambda s: None,
    folds: int = 5,
    head_epochs: int | None = None,
    resize: str = "stretch",
    learning_rate: float | None = None,
    fine_learning_rate: float = DEFAULT_FINE_LR,
    min_epochs: int | None = None,
    callbacks: Sequence[Any] = (),
    precision: str = "float32",
    devices: str = "auto",
) -> BaselineResult:
    """Train a CNN on the images (``scratch`` or ``finetune``), evaluate it under ``protocol``, write the model,
    its sidecar, a training-curve PNG and a report row.

    ``epochs`` is the whole budget (for ``finetune``: ``head_epochs`` with the backbone frozen, a fixed warm-up,
    then fine-tuning from where the head ended until ``epochs``). Early stopping (``patience`` epochs without a better validation balanced
    accuracy) never stops before ``min_epochs``. ``callbacks`` are extra Keras callbacks (used by tests).
    ``precision`` (``float32|mixed``) and ``devices`` (``auto|one|mirrored``) select the GPU path
    (``featurize.devices``); ``batch_size`` is the global batch, shared by the replicas.
    """
    t_start = time.perf_counter()
    kind = (model or "").strip().lower().replace("-", "")
    if kind not in MODELS:
        raise AlzmriError(f"unknown --model {model!r}; choose scratch or finetune")
    if protocol not in PROTOCOLS:
        raise AlzmriError(f"unknown --protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    if resize not in RESIZE_MODES:
        raise AlzmriError(f"unknown resize mode {resize!r}; choose one of: {', '.join(RESIZE_MODES)}")
    from featurize.devices import DEVICE_MODES, PRECISIONS

    for name, value, valid in (("--precision", precision, PRECISIONS), ("--devices", devices, DEVICE_MODES)):
        if value not in valid:
            raise AlzmriError(f"unknown {name} {value!r}; choose one of: {', '.join(valid)}")
    epochs = DEFAULT_EPOCHS[kind] if epochs is None else int(epochs)
    head_epochs = DEFAULT_HEAD_EPOCHS if head_epochs is None else int(head_epochs)
    min_epochs = DEFAULT_MIN_EPOCHS[kind] if min_epochs is None else int(min_epochs)
    for name, value, low in (("--epochs", epochs, 1), ("--patience", patience, 1), ("--batch-size", batch_size, 1),
                             ("--unfreeze", unfreeze, 0), ("--folds", folds, 2), ("--head-epochs", head_epochs, 1)):
        if value < low:
            raise AlzmriError(f"{name} must be at least {low}, not {value}")
    try:
        size = parse_size(image_size or DEFAULT_SIZE[kind])
    except ValueError as exc:
        raise AlzmriError(str(exc)) from None
    if kind == "scratch":
        if min(size) < 2 ** len(SCRATCH_BLOCKS):
            raise AlzmriError(f"--image-size {size[0]}x{size[1]} is too small for the scratch CNN ({len(SCRATCH_BLOCKS)} poolings); "
                              f"use at least {2 ** len(SCRATCH_BLOCKS)}x{2 ** len(SCRATCH_BLOCKS)}")
        bb, wtag = None, "random-init"
    else:
        bb = get_backbone(backbone)
        wtag = weights_tag(weights)

    from featurize.dataset import class_indices, scan
    from featurize.grouping import resolve_subjects

    ds = scan(data, classes)
    for p in ds.problems:
        log(f"warning: {p}")
    ds.table["subject"] = resolve_subjects(ds, subjects, artifacts=artifacts, log=log)
    class_names = list(ds.class_names)
    spec = _Spec(kind=kind, size=size, n_classes=len(class_names), seed=seed, backbone=bb, weights=weights, weights_tag=wtag,
                 unfreeze=unfreeze, head_epochs=head_epochs, lr=DEFAULT_LR if learning_rate is None else float(learning_rate),
                 fine_lr=float(fine_learning_rate), precision=precision, devices=devices)
    if kind == "finetune":
        _ = _kx()  # build the base once now so that weight errors come before decoding
        _quiet_build_base(bb, weights, size, seed)

    table = ds.table
    X, errors = decode_images(table["abspath"].tolist(), size, resize, gray=spec.channels == 1, progress=progress)
    bad = np.array([bool(e) for e in errors], dtype=bool)
    failed = [(p, e) for p, e in zip(table["path"], errors) if e]
    for p, e in failed:
        log(f"skipped {p}: {e}")
    if failed:
        log(f"{len(failed)} of {len(table)} files could not be read and were skipped")
    if bad.all():
        raise DataError(f"{data}: no image could be read ({len(failed)} failed, e.g. {failed[0][0]}: {failed[0][1]})")
    keep = ~bad
    X, table = X[keep], table[keep].reset_index(drop=True)
    y = class_indices(table["label"], class_names)
    subj = table["subject"].to_numpy(dtype=object).astype(str)
    groups = subj if len(subj) and all(s != "" for s in subj) else None
    if protocol == "subject-cv" and groups is None:
        raise DataError(f"{data}: --protocol subject-cv needs subjects; use --subjects auto/infer/column/regex:PATTERN")

    mdir = models_dir(ds.dataset_id, artifacts)
    ckroot = mdir / f"{spec.name}.ckpt" / protocol
    common = {"classes": class_names, "resize": resize, "protocol": protocol, "files": _digest(sorted(zip(table["path"], table["sha1"])))}
    folds_out: list[dict[str, Any]] = []
    notes: list[str] = []
    t_pred = 0.0
    from classify import evaluate as ev

    if protocol == "official":
        if ds.has_split:  # exactly as the heads: split == train vs test, unsplit rows unused
            split = table["split"].to_numpy()
            train_idx, test_idx = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
            if (split == "").any():
                notes.append(f"official: {int((split == '').sum())} rows have no split and are not used")
            missing = sorted(set(np.unique(y[test_idx])) - set(np.unique(y[train_idx])))
            if missing:
                raise DataError(f"{data}: the test split has class(es) {', '.join(class_names[i] for i in missing)} with no "
                                "training rows; add training images of them or use --protocol subject-cv")
            split_note = "the data's own train/test split"
        else:  # the heads' hold-out: same rows for the same seed and subjects
            train_idx, test_idx, more = ev.holdout_split(y, groups, seed)
            notes += more
            split_note = f"no train/test split in the data: stratified ~20% hold-out {'by subject' if groups is not None else 'by slice'}, seed {seed}"
            log(split_note)
        folds_idx = [(np.sort(train_idx), np.sort(test_idx))]
    else:
        g_outer = groups if protocol == "subject-cv" else None
        splitter, more = ev.make_splitter(y, g_outer, folds, seed, what=f"{protocol} folds")
        notes += more
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folds_idx = [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros((len(y), 1)), y, g_outer)]
        split_note = (f"{len(folds_idx)}-fold {'StratifiedGroupKFold by subject' if g_outer is not None else 'StratifiedKFold by slice (leaky)'}"
                      f", seed {seed}")
    for note in notes:
        log(f"note: {note}")

    fold_metrics, cms, scms = [], [], []
    fit_seconds = 0.0
    for k, (tr, te) in enumerate(folds_idx, start=1):
        cv = protocol != "official"
        label = f"{spec.name} fold {k}/{len(folds_idx)}" if cv else spec.name
        f = fit_network(spec, X, y, tr, groups, ckroot / f"fold{k}" if cv else ckroot, {**common, "run": f"fold{k}/{len(folds_idx)}" if cv else "official"},
                        epochs, patience, batch_size, progress, log, label, callbacks, min_epochs)
        t0 = time.perf_counter()
        probs = predict_proba(f.model, X[te], batch_size)
        t_pred += time.perf_counter() - t0
        m, cm, scm = test_metrics(y[te], probs, class_names, None if groups is None else groups[te])
        fold_metrics.append(m)
        cms.append(cm)
        scms.append(scm)
        fit_seconds += f.train_seconds
        folds_out.append({"fold": k, "n_train": len(tr), "n_test": len(te), "epochs": f.epochs_run, "best_epoch": f.best_epoch,
                          "fit_seconds": f.train_seconds, "diverged_epoch": f.diverged_epoch, **m})
        if cv:
            log(f"{label}: accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}")
            del f
        else:
            fit = f
    metrics, std = _aggregate(fold_metrics)
    if protocol == "official":
        std = {}
        n_train, n_test = len(folds_idx[0][0]), len(folds_idx[0][1])
    else:
        n_train, n_test = len(y), int(sum(len(b) for _, b in folds_idx))  # as the heads report cv rows
        log(f"{spec.name}: training the final model on all {len(y)} slices (for predict)")
        fit = fit_network(spec, X, y, np.arange(len(y)), groups, ckroot / "final", {**common, "run": "final"}, epochs, patience,
                          batch_size, progress, log, f"{spec.name} final", callbacks, min_epochs)
        fit_seconds += fit.train_seconds
    epochs_col: float | int = fit.epochs_run if protocol == "official" else float(np.mean([f["epochs"] for f in folds_out]))
    leakage = _leaked(groups, folds_idx)
    if leakage:
        notes.append(f"{protocol}: {leakage} test subjects also have slices in training: scores are optimistic (leakage)")
        log(f"note: {notes[-1]}")

    model_path = mdir / f"{spec.name}.keras"
    sidecar_path = model_path.with_suffix(".json")
    _save_model(spec, fit, model_path)
    created = time.strftime("%Y-%m-%dT%H:%M:%S")
    sidecar = {
        "format": SIDECAR_FORMAT, "name": spec.name, "model": kind, "head": spec.head,
        "backbone": bb.name if bb else "scratch", "weights": wtag, "class_names": class_names,
        "image_size": f"{size[0]}x{size[1]}", "width": size[0], "height": size[1],
        "color": "grayscale" if spec.channels == 1 else "rgb", "channels": spec.channels, "resize": resize,
        "input": "float32 pixel values 0..255, shape (height, width, channels); decode with featurize.images.load_rgb"
                 + (", then ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B)" if spec.channels == 1 else ""),
        "preprocessing": "inside the model: x / 255" if kind == "scratch"
                         else f"inside the model: keras.applications.{bb.module}.preprocess_input",
        "custom_objects": "import classify.baseline and call classify.baseline.load_baseline (registers alzmri>BackbonePreprocess)",
        "dataset_id": ds.dataset_id, "protocol": protocol, "split": split_note, "seed": seed,
        "epochs_run": fit.epochs_run, "best_epoch": fit.best_epoch, "val_balanced_accuracy": fit.best_val_bal_acc,
        "diverged_epoch": fit.diverged_epoch, "unfreeze": unfreeze if kind == "finetune" else None,
        "precision": spec.settings().get("precision", "float32"), "created": created, **_versions(),
    }
    tmp = sidecar_path.with_name(sidecar_path.name + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=1, default=float))
    os.replace(tmp, sidecar_path)

    from classify.curves import plot_training_curves

    curve_path = dataset_dir(ds.dataset_id, artifacts) / f"{spec.name}__{protocol}__curves.png"
    title = f"{spec.name} ({wtag}, {size[0]}x{size[1]}) on {ds.dataset_id}" + ("" if protocol == "official" else f" - final model ({protocol})")
    try:
        plot_training_curves(fit.history, curve_path, title, best_epoch=fit.best_epoch)
    except Exception as exc:  # a plot must never cost the trained model
        log(f"warning: could not draw the training curves ({type(exc).__name__}: {exc})")
        curve_path = None

    spc = None if groups is None else ev.subjects_per_class(y, groups, class_names)
    schedule = {"image_size": f"{size[0]}x{size[1]}", "resize": resize, "max_epochs": epochs, "patience": patience, "min_epochs": min_epochs,
                "batch_size": batch_size, "lr": spec.lr, "best_epoch": fit.best_epoch,
                **({"head_epochs": head_epochs, "unfreeze": unfreeze, "fine_lr": spec.fine_lr} if kind == "finetune" else {})}
    row: dict[str, Any] = {"dataset": ds.dataset_id, "backbone": bb.name if bb else "scratch", "weights": wtag, "layers": "",
                           "task": "stages", "head": spec.head, "protocol": protocol, "n_train": n_train, "n_test": n_test}
    row.update(metrics)
    row.update({f"{k}_std": v for k, v in std.items() if not k.startswith(("precision_", "recall_"))})
    row.update({
        "n_splits": len(folds_idx), "subjects_per_class": "" if not spc else ";".join(f"{c}:{k}" for c, k in spc.items()),
        "leakage": leakage, "best_params": json.dumps(schedule, sort_keys=True),
        "selection": "early stopping on validation balanced_accuracy", "fit_seconds": round(fit_seconds, 3),
        "predict_seconds": round(t_pred, 4), "epochs": epochs_col, "class_names": json.dumps(class_names),
        "confusion": json.dumps(np.sum(cms, axis=0).tolist()),
        "subject_confusion": "" if groups is None else json.dumps(np.sum(scms, axis=0).tolist()),
        "fingerprint": fit.fingerprint, "model_path": str(model_path), "image_size": f"{size[0]}x{size[1]}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    rpath = report_path(artifacts)
    from classify.report import upsert_rows

    upsert_rows(rpath, [row])
    try:  # the per-dataset summary plot of classify, now with this row
        from classify.run import regenerate_summary

        regenerate_summary(artifacts, ds.dataset_id)
    except Exception as exc:  # the plot is a convenience: never lose the trained model over it
        log(f"warning: could not redraw the summary plot ({type(exc).__name__}: {str(exc)[:100]})")
    log(f"{spec.name} ({protocol}): accuracy {metrics['accuracy']:.3f}, balanced accuracy {metrics['balanced_accuracy']:.3f}, "
        f"{fit.epochs_run} epoch(s) (best {fit.best_epoch}), training {_fmt_secs(fit_seconds)}; model {model_path}")
    return BaselineResult(rows=[row], model_path=model_path, sidecar_path=sidecar_path, curve_path=curve_path, report=rpath,
                          epochs_run=fit.epochs_run, best_epoch=fit.best_epoch, fit_seconds=fit_seconds,
                          seconds=time.perf_counter() - t_start, failed=failed, problems=list(ds.problems),
                          diverged=fit.diverged_epoch is not None, resumed_from=fit.resumed_from,
                          history=fit.history, folds=folds_out, notes=notes)
