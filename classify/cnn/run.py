"""``alzmri baseline``: train a CNN on the images, evaluate it under the heads' protocols, write the model, its
JSON sidecar, the training curves and a report row.

Two models: ``scratch`` (a compact CNN from random initialisation on grayscale input at the native 176x208 aspect,
default 88x104) and ``finetune`` (a pretrained ``featurize.backbones`` backbone with a new head, at the weights'
native input size and with their preprocessing, both from ``featurize.weights_catalog``: first the head alone on
the frozen backbone, then the top ``unfreeze`` layers too, at a lower learning rate than the head's; BatchNorm
stays in inference mode throughout unless ``batchnorm="train"``).

The recipe (issue 20): augmentation for MRI slices inside the model (no vertical flip), class weights for the
imbalance and label smoothing, a warm-up + cosine schedule per stage, a validation part carved from the training
rows (by subject when subjects are known) for early stopping on its balanced accuracy; the best epoch is kept.
Training checkpoints after every epoch (a rerun with the same settings resumes; other settings start over), stops
cleanly when the loss turns NaN, and after the epoch that would overrun ``max_train_minutes``. The rows are split
by ``classify.protocols.folds_for`` and scored by ``classify.metrics.compute_metrics``, exactly as for the heads.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from classify.cnn.prepare import prepare
from classify.cnn.spec import (
    BATCHNORM_MODES,
    DEFAULT_EPOCHS,
    DEFAULT_FINE_LR,
    DEFAULT_HEAD_EPOCHS,
    DEFAULT_LABEL_SMOOTHING,
    DEFAULT_LR,
    DEFAULT_MIN_EPOCHS,
    DEFAULT_SIZE,
    MODELS,
    SCRATCH_BLOCKS,
    SIDECAR_FORMAT,
    Log,
    NetSpec,
    Schedule,
    digest,
    fmt_secs,
)
from classify.protocols import PROTOCOLS, aggregate, leaked, subjects_per_class
from featurize.atomic import atomic_path, exclusive
from featurize.backbones import get_backbone
from featurize.config import dataset_dir, models_dir, report_path
from featurize.errors import AlzmriError
from featurize.images import RESIZE_MODES, parse_size
from featurize.options import at_least, choose

if TYPE_CHECKING:

    from classify.cnn.train import FitOutcome
    from featurize.weights_catalog import WeightsChoice

SELECTION = "early stopping on validation balanced_accuracy"


def _no_log(msg: str) -> None:
    pass


@dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    """What to train and how (the options of ``alzmri baseline``), checked when made.

    ``epochs`` is the whole budget (for ``finetune``: ``head_epochs`` with the backbone frozen, a fixed warm-up,
    then fine-tuning from where the head ended until ``epochs``). Early stopping (``patience`` epochs without a
    better validation balanced accuracy) never stops before ``min_epochs``. ``None`` means the model's default.
    ``precision`` (``float32|mixed``) and ``devices`` (``auto|one|mirrored``) select the GPU path
    (``featurize.devices``); ``batch_size`` is the global batch, shared by the replicas. ``folds`` are the outer
    folds of the cv protocols.

    The recipe's knobs: ``image_size`` (None: scratch 88x104, finetune the weights' native size from the weights
    catalog), ``learning_rate`` (the head's peak rate, both stages; the scratch CNN's), ``fine_learning_rate`` (the
    unfrozen base's peak rate, at most ``learning_rate``), ``label_smoothing``, and ``max_train_minutes`` (per
    network and run; None: no limit).
    """

    model: str = "scratch"
    backbone: str = "mobilenetv2"
    weights: str = "imagenet"
    image_size: str | None = None
    epochs: int | None = None
    patience: int = 3
    unfreeze: int = 30
    batchnorm: str = "frozen"
    batch_size: int = 32
    protocol: str = "official"
    subjects: str = "auto"
    classes: str | list[str] | None = None
    seed: int = 0
    folds: int = 5
    head_epochs: int | None = None
    resize: str = "stretch"
    learning_rate: float | None = None
    fine_learning_rate: float = DEFAULT_FINE_LR
    min_epochs: int | None = None
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING
    max_train_minutes: float | None = None
    precision: str = "float32"
    devices: str = "auto"
    volumes: Any = None  # featurize.volume_featurize.VolumeOptions for 3-D scans (None: its defaults)

    def __post_init__(self) -> None:
        from featurize.devices import DEVICE_MODES, PRECISIONS

        choose("--model", self.kind, MODELS)
        choose("--protocol", self.protocol, PROTOCOLS)
        choose("resize mode", self.resize, RESIZE_MODES)
        choose("--precision", self.precision, PRECISIONS)
        choose("--devices", self.devices, DEVICE_MODES)
        choose("--batchnorm", self.batchnorm, BATCHNORM_MODES)
        sch = self.schedule
        for name, value, low in (("--epochs", sch.epochs, 1), ("--patience", sch.patience, 1),
                                 ("--batch-size", sch.batch_size, 1), ("--unfreeze", self.unfreeze, 0),
                                 ("folds", self.folds, 2), ("--head-epochs", self.n_head_epochs, 1)):
            at_least(name, value, low)
        lr = DEFAULT_LR if self.learning_rate is None else float(self.learning_rate)
        if not (lr > 0 and 0 < float(self.fine_learning_rate) <= lr):
            raise AlzmriError(f"--fine-learning-rate {self.fine_learning_rate:g} must be above 0 and at most the head's "
                              f"--learning-rate {lr:g} (the base learns slower than the new head)")
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            raise AlzmriError(f"--label-smoothing {self.label_smoothing:g} must be in [0, 1)")
        if self.max_train_minutes is not None and not float(self.max_train_minutes) > 0:
            raise AlzmriError(f"--max-train-minutes {self.max_train_minutes:g} must be above 0")
        size = self.size
        if self.kind == "scratch" and min(size) < 2 ** len(SCRATCH_BLOCKS):
            raise AlzmriError(f"--image-size {size[0]}x{size[1]} is too small for the scratch CNN ({len(SCRATCH_BLOCKS)} poolings); "
                              f"use at least {2 ** len(SCRATCH_BLOCKS)}x{2 ** len(SCRATCH_BLOCKS)}")

    @property
    def kind(self) -> str:
        """``scratch`` or ``finetune`` (``model`` as typed, normalised)."""
        return (self.model or "").strip().lower().replace("-", "")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the network input; for finetune without ``image_size``, the backbone's native size
        (``size_for`` gives a catalog entry's own)."""
        if self.image_size is None and self.kind == "finetune":
            n = get_backbone(self.backbone).input_size
            return n, n
        try:
            return parse_size(self.image_size or DEFAULT_SIZE["scratch"])
        except ValueError as exc:
            raise AlzmriError(str(exc)) from None

    def size_for(self, choice: WeightsChoice | None) -> tuple[int, int]:
        """The input size with resolved weights: ``image_size``, else (finetune) the weights' native size."""
        return choice.input_size if self.image_size is None and choice is not None else self.size

    @property
    def n_head_epochs(self) -> int:
        """Epochs of the frozen-backbone stage (finetune)."""
        return DEFAULT_HEAD_EPOCHS if self.head_epochs is None else int(self.head_epochs)

    @property
    def schedule(self) -> Schedule:
        """The epoch budget, patience, earliest stop and batch size, defaults filled in."""
        kind = self.kind if self.kind in MODELS else "scratch"
        return Schedule(epochs=DEFAULT_EPOCHS[kind] if self.epochs is None else int(self.epochs),
                        patience=int(self.patience),
                        min_epochs=DEFAULT_MIN_EPOCHS[kind] if self.min_epochs is None else int(self.min_epochs),
                        batch_size=int(self.batch_size),
                        max_train_minutes=None if self.max_train_minutes is None else float(self.max_train_minutes))

    def weights_choice(self, artifacts: str | os.PathLike[str] | None = None) -> WeightsChoice | None:
        """The resolved ``weights`` (featurize.weights_catalog) for finetune; None for scratch."""
        if self.kind == "scratch":
            return None
        from featurize.weights_catalog import resolve

        return resolve(self.weights, self.backbone, artifacts=artifacts)

    def net_spec(self, *, n_classes: int, choice: WeightsChoice | None) -> NetSpec:
        """The network this config trains on ``n_classes`` classes, with the weights ``choice`` (None: scratch)."""
        return NetSpec(kind=self.kind, size=self.size_for(choice), n_classes=n_classes, seed=self.seed,
                       backbone=choice.backbone if choice else None, weights=choice.load if choice else "none",
                       weights_tag=choice.tag if choice else "random-init", unfreeze=self.unfreeze,
                       head_epochs=self.n_head_epochs, lr=DEFAULT_LR if self.learning_rate is None else float(self.learning_rate),
                       fine_lr=float(self.fine_learning_rate), label_smoothing=float(self.label_smoothing),
                       preprocess=choice.preprocess if choice else "", precision=self.precision, devices=self.devices,
                       batchnorm=self.batchnorm)


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
    stopped_by_budget: int = 0  # networks stopped by max_train_minutes (a rerun continues them)

    @property
    def row(self) -> dict[str, Any]:
        """The (single) report row."""
        return self.rows[0]

    def summary(self) -> str:
        """A few lines for the terminal: scores, schedule, where things were written."""
        r = self.row

        def std(k: str) -> str:
            v = r.get(k + "_std")
            return f" +- {v:.3f}" if isinstance(v, float) and math.isfinite(v) else ""

        lines = [f"{r['backbone']} / {r['head']} ({r['weights']}, {r.get('image_size')}) on {r['dataset']}, protocol {r['protocol']}: "
                 f"accuracy {r['accuracy']:.3f}{std('accuracy')}, balanced accuracy {r['balanced_accuracy']:.3f}{std('balanced_accuracy')}, "
                 f"macro-F1 {r['macro_f1']:.3f}, ROC-AUC {r['roc_auc']:.3f}"]
        if isinstance(r.get("subject_balanced_accuracy"), float):
            lines.append(f"subject level: accuracy {r['subject_accuracy']:.3f}, balanced accuracy {r['subject_balanced_accuracy']:.3f}")
        lines.append(f"{self.epochs_run} epoch(s), best {self.best_epoch}{' (stopped: NaN loss)' if self.diverged else ''}; "
                     f"training {fmt_secs(self.fit_seconds)}, this run {fmt_secs(self.seconds)}")
        if self.stopped_by_budget:
            lines.append(f"{self.stopped_by_budget} network(s) stopped at --max-train-minutes: these scores are provisional; "
                         "rerun the same command to continue training from the checkpoints")
        if self.failed:
            lines.append(f"{len(self.failed)} unreadable file(s) skipped, e.g. {self.failed[0][0]}: {self.failed[0][1]}")
        lines.append(f"model: {self.model_path} (+ {self.sidecar_path.name})")
        if self.curve_path:
            lines.append(f"curves: {self.curve_path}")
        lines.append(f"report: {self.report}")
        return "\n".join(lines)


def train_baseline(data: str | os.PathLike[str], config: BaselineConfig | None = None, *,
                   artifacts: str | os.PathLike[str] | None = None, progress: bool = True, log: Log = _no_log,
                   callbacks: Sequence[Any] = (), **options: Any) -> BaselineResult:
    """Train a CNN on the images of ``data`` (``config``, or a ``BaselineConfig`` made of ``options``; options
    given with a config override it), evaluate it under its protocol, and write the model, its sidecar, a
    training-curve PNG and a report row. ``callbacks`` are extra Keras callbacks (used by tests)."""

    t_start = time.perf_counter()
    cfg = replace(config, **options) if config is not None else BaselineConfig(**options)
    spec = cfg.net_spec(n_classes=0, choice=cfg.weights_choice(artifacts))  # the classes come with the data
    # one model file per (dataset, model): a second run of it is refused, never mixed into the same checkpoint
    from featurize.dataset import dataset_id

    model_file = models_dir(dataset_id(data), artifacts) / f"{spec.name}.keras"
    with exclusive(model_file.with_name(f".{spec.name}.lock"), what=f"{model_file} (alzmri baseline)"):
        return _train(data, cfg, spec, artifacts=artifacts, progress=progress, log=log, callbacks=callbacks,
                      t_start=t_start)


def _train(data: str | os.PathLike[str], cfg: BaselineConfig, spec: NetSpec, *,
           artifacts: str | os.PathLike[str] | None, progress: bool, log: Log, callbacks: Sequence[Any],
           t_start: float) -> BaselineResult:
    """``train_baseline`` under its lock."""
    from classify.cnn.train import fit_network
    from classify.metrics import compute_metrics
    from classify.report import make_row, upsert_rows

    prep = prepare(data, cfg, spec, artifacts=artifacts, progress=progress, log=log)
    for note in prep.notes:
        log(f"note: {note}")
    ds, img, class_names, folds = prep.ds, prep.images, prep.class_names, prep.folds
    spec = replace(spec, n_classes=len(class_names))
    bb, wtag = spec.backbone, spec.weights_tag
    sch = cfg.schedule
    mdir = models_dir(ds.dataset_id, artifacts)
    ckroot = mdir / f"{spec.name}.ckpt" / cfg.protocol
    common = {"classes": class_names, "resize": cfg.resize, "protocol": cfg.protocol,
              "files": digest(sorted(zip(prep.table["path"], prep.table["sha1"])))}
    cv = cfg.protocol != "official"

    def fit(train_idx: np.ndarray, where: str, run: str, label: str) -> FitOutcome:
        return fit_network(spec, sch, img, train_idx=train_idx, ckpt_dir=ckroot / where if where else ckroot,
                           run_settings={**common, "run": run}, label=label, log=log, progress=progress,
                           callbacks=callbacks)

    fold_metrics, cms, scms, folds_out = [], [], [], []
    fit_seconds, t_pred, budget_stops = 0.0, 0.0, 0
    for k, (tr, te) in enumerate(folds, start=1):
        label = f"{spec.name} fold {k}/{len(folds)}" if cv else spec.name
        f = fit(tr, f"fold{k}" if cv else "", f"fold{k}/{len(folds)}" if cv else "official", label)
        t0 = time.perf_counter()
        probs = _predict(f.model, img.X[te], sch.batch_size)
        t_pred += time.perf_counter() - t0
        m, cm, scm = compute_metrics(img.y[te], probs.argmax(axis=1), probs, class_names,
                                     groups=None if img.groups is None else img.groups[te])
        fold_metrics.append(m)
        cms.append(cm)
        scms.append(scm)
        fit_seconds += f.train_seconds
        budget_stops += f.stopped_by_budget
        folds_out.append({"fold": k, "n_train": len(tr), "n_test": len(te), "epochs": f.epochs_run, "best_epoch": f.best_epoch,
                          "fit_seconds": f.train_seconds, "diverged_epoch": f.diverged_epoch, **m})
        if cv:
            left = fit_seconds / k * (len(folds) - k + 1)  # the other folds and the final model, at this pace
            log(f"{label}: accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}; "
                f"~{fmt_secs(left)} of training left (at most, at this pace)")
            del f
        else:
            final = f
    metrics, std = aggregate(fold_metrics)
    if cv:
        n_train, n_test = len(img), int(sum(len(b) for _, b in folds))  # as the heads report cv rows
        log(f"{spec.name}: training the final model on all {len(img)} slices (for predict)")
        final = fit(np.arange(len(img)), "final", "final", f"{spec.name} final")
        fit_seconds += final.train_seconds
        budget_stops += final.stopped_by_budget
        epochs_col: float | int = float(np.mean([f["epochs"] for f in folds_out]))
    else:
        std = {}
        n_train, n_test = len(folds[0][0]), len(folds[0][1])
        epochs_col = final.epochs_run
    notes = list(prep.notes)
    leakage = leaked(img.groups, folds)
    if leakage:
        notes.append(f"{cfg.protocol}: {leakage} test subjects also have slices in training: scores are optimistic (leakage)")
        log(f"note: {notes[-1]}")

    model_path = mdir / f"{spec.name}.keras"
    sidecar_path = model_path.with_suffix(".json")
    _save_model(final.model, model_path)
    _write_sidecar(sidecar_path, cfg, spec, final, dataset_id=ds.dataset_id, class_names=class_names,
                   split_note=prep.split_note, volumes=prep.volumes)
    from classify.bundle import sign_files

    sign_files(model_path, sidecar_path)  # last: a crash before it leaves a signature that no longer matches
    curve_path = _draw_curves(final, cfg, spec, dataset_id=ds.dataset_id, artifacts=artifacts, log=log)

    size = f"{spec.size[0]}x{spec.size[1]}"
    schedule = {"image_size": size, "resize": cfg.resize, "max_epochs": sch.epochs, "patience": sch.patience,
                "min_epochs": sch.min_epochs, "batch_size": sch.batch_size, "lr": spec.lr, "best_epoch": final.best_epoch,
                "label_smoothing": spec.label_smoothing, "schedule": "warmup-cosine",
                **({"head_epochs": spec.head_epochs, "unfreeze": cfg.unfreeze, "fine_lr": spec.fine_lr,
                    "preprocess": spec.preprocess or "keras", "batchnorm": spec.batchnorm} if cfg.kind == "finetune" else {}),
                # a network stopped by --max-train-minutes: the row is provisional until a rerun finishes it
                **({"stopped": f"max_train_minutes ({budget_stops} network(s))"} if budget_stops else {})}
    # ``features`` stays "" (the input size is in ``image_size``): one row per .keras file, as before
    row = make_row(
        dataset=ds.dataset_id, backbone=bb.name if bb else "scratch", weights=wtag, layers="", features="",
        task="stages", head=spec.head, protocol=cfg.protocol, n_train=n_train, n_test=n_test, metrics=metrics,
        std=std, n_splits=len(folds),
        subjects_per_class=None if img.groups is None else subjects_per_class(img.y, img.groups, class_names),
        leakage=leakage, best_params=schedule, selection=SELECTION, fit_seconds=fit_seconds, predict_seconds=t_pred,
        epochs=epochs_col, class_names=class_names, confusion=np.sum(cms, axis=0),
        subject_confusion=None if img.groups is None else np.sum(scms, axis=0), fingerprint=final.fingerprint,
        model_path=model_path, image_size=size)
    rpath = report_path(artifacts)
    upsert_rows(rpath, [row])
    try:  # the per-dataset summary plot of classify, now with this row
        from classify.run import regenerate_summary

        regenerate_summary(artifacts, dataset=ds.dataset_id)
    except Exception as exc:  # noqa: BLE001 - the plot is a convenience: never lose the trained model over it
        log(f"warning: could not redraw the summary plot ({type(exc).__name__}: {str(exc)[:100]})")
    log(f"{spec.name} ({cfg.protocol}): accuracy {metrics['accuracy']:.3f}, balanced accuracy {metrics['balanced_accuracy']:.3f}, "
        f"{final.epochs_run} epoch(s) (best {final.best_epoch}), training {fmt_secs(fit_seconds)}; model {model_path}")
    return BaselineResult(rows=[row], model_path=model_path, sidecar_path=sidecar_path, curve_path=curve_path, report=rpath,
                          epochs_run=final.epochs_run, best_epoch=final.best_epoch, fit_seconds=fit_seconds,
                          seconds=time.perf_counter() - t_start, failed=prep.failed, problems=list(ds.problems),
                          diverged=final.diverged_epoch is not None, resumed_from=final.resumed_from,
                          history=final.history, folds=folds_out, notes=notes, stopped_by_budget=budget_stops)


def _predict(model: Any, X: np.ndarray, batch_size: int) -> np.ndarray:
    from classify.cnn.data import predict_proba

    return predict_proba(model, X, batch_size)


def _save_model(model: Any, path: Path) -> None:
    """Save a clean copy (no optimizer, no metrics) of the best network as ``.keras``, atomically."""
    from classify.cnn.keras_objects import keras

    path.parent.mkdir(parents=True, exist_ok=True)
    clone = keras.Model(model.inputs, model.outputs, name=model.name)  # same weights, no optimizer/metrics
    with atomic_path(path, suffix=".keras") as tmp:  # Keras insists on the .keras suffix
        clone.save(str(tmp))


def _versions() -> dict[str, str]:
    from classify.cnn.keras_objects import keras, tf
    from featurize import __version__

    return {"tf_version": tf.__version__, "keras_version": keras.__version__, "alzmri_version": __version__}


def _write_sidecar(path: Path, cfg: BaselineConfig, spec: NetSpec, fit: FitOutcome, *, dataset_id: str,
                   class_names: list[str], split_note: str, volumes: dict[str, Any] | None = None) -> None:
    from featurize.atomic import write_bytes_durably

    bb = spec.backbone
    sidecar = {
        "format": SIDECAR_FORMAT, "name": spec.name, "model": spec.kind, "head": spec.head,
        "backbone": bb.name if bb else "scratch", "weights": spec.weights_tag, "class_names": class_names,
        "image_size": f"{spec.size[0]}x{spec.size[1]}", "width": spec.size[0], "height": spec.size[1],
        "color": "grayscale" if spec.channels == 1 else "rgb", "channels": spec.channels, "resize": cfg.resize,
        "input": "float32 pixel values 0..255, shape (height, width, channels); decode with featurize.images.load_rgb"
                 + (", then ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B)" if spec.channels == 1 else ""),
        "preprocessing": "inside the model: x / 255" if spec.kind == "scratch"
                         else f"inside the model: keras.applications.{bb.module}.preprocess_input" if not spec.preprocess
                         else f"inside the model: {spec.preprocess} (weights catalog)",
        "custom_objects": "import classify.baseline and call classify.baseline.load_baseline (registers alzmri>BackbonePreprocess)",
        "dataset_id": dataset_id, "protocol": cfg.protocol, "split": split_note, "seed": cfg.seed,
        "epochs_run": fit.epochs_run, "best_epoch": fit.best_epoch, "val_balanced_accuracy": fit.best_val_bal_acc,
        "diverged_epoch": fit.diverged_epoch, "unfreeze": cfg.unfreeze if spec.kind == "finetune" else None,
        "batchnorm": spec.batchnorm if spec.kind == "finetune" else None,
        "precision": spec.settings().get("precision", "float32"), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **_versions(), **(volumes or {}),
    }
    write_bytes_durably(path, json.dumps(sidecar, indent=1, default=float).encode())


def _draw_curves(fit: FitOutcome, cfg: BaselineConfig, spec: NetSpec, *, dataset_id: str,
                 artifacts: str | os.PathLike[str] | None, log: Log) -> Path | None:
    from classify.curves import plot_training_curves

    path = dataset_dir(dataset_id, artifacts) / f"{spec.name}__{cfg.protocol}__curves.png"
    title = (f"{spec.name} ({spec.weights_tag}, {spec.size[0]}x{spec.size[1]}) on {dataset_id}"
             + ("" if cfg.protocol == "official" else f" - final model ({cfg.protocol})"))
    try:
        return plot_training_curves(fit.history, path, title, best_epoch=fit.best_epoch)
    except Exception as exc:  # noqa: BLE001 - a plot must never cost the trained model
        log(f"warning: could not draw the training curves ({type(exc).__name__}: {exc})")
        return None
