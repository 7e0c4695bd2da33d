"""Training one network: the per-epoch callback (validation score, best epoch, patience, checkpoint, NaN guard)
and the staged fit loop that resumes from checkpoints. Importing this module imports TensorFlow."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from classify.cnn.batchnorm import reestimate_base_batchnorm, reestimate_batchnorm, trainable_batchnorms
from classify.cnn.checkpoint import Checkpoint
from classify.cnn.data import Images, class_weights, predict_proba, train_dataset, validation_split
from classify.cnn.keras_objects import BalancedAccuracy, DiscriminativeAdam, keras
from classify.cnn.models import build_finetune, build_scratch, set_stage
from classify.cnn.spec import BN_IMAGES, VAL_FRACTION, WARMUP_FRACTION, Log, NetSpec, Schedule, digest, fmt_secs
from featurize.errors import AlzmriError


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
    stopped_by_budget: bool = False
    train_rows: np.ndarray | None = None  # positions in the data of the fit part
    val_rows: np.ndarray | None = None  # ... and of the validation part (early stopping), carved from train_idx


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Validation balanced accuracy (NaN for an empty part)."""
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y, pred)) if len(y) else float("nan")


def cross_entropy(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean validation cross-entropy, unweighted (NaN for an empty part)."""
    if not len(y):
        return float("nan")
    p = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    return float(-np.mean(np.log(p)))


class EpochControl(keras.callbacks.Callback):
    """After each epoch: score the validation part, keep the best epoch, count patience, checkpoint; stop on a
    NaN loss (keeping the best checkpoint) or when patience runs out (never in the fixed-length head stage, never
    before ``schedule.min_epochs``). ``state`` is the checkpoint state, updated in place."""

    def __init__(self, *, checkpoint: Checkpoint, state: dict[str, Any], stage: str, X_val: np.ndarray,
                 y_val: np.ndarray, schedule: Schedule, label: str, log: Log, advance: Callable[[int], None],
                 deadline: float | None = None, base_lr: Callable[[], float] | None = None,
                 refresh_bn: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.ck, self.state, self.stage, self.X_val, self.y_val = checkpoint, state, stage, X_val, y_val
        self.refresh_bn = refresh_bn
        self.schedule, self.label, self.log, self.advance = schedule, label, log, advance
        self.deadline, self.base_lr = deadline, base_lr
        self.diverged = self.out_of_time = False
        self.t0 = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.advance(1)
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged = True
            self.model.stop_training = True

    def _stop_diverged(self, e: int) -> None:
        state = self.state
        self.diverged = True
        self.model.stop_training = True
        state["diverged_epoch"] = e
        self.ck.write_state(state)
        kept = f"keeping the best checkpoint (epoch {state['best_epoch']})" if state["best_dir"] else "no epoch finished cleanly"
        self.log(f"{self.label}: training diverged (NaN loss) in epoch {e}; stopped, {kept}. Lower the learning rate to retry")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        state, sch, e = self.state, self.schedule, epoch + 1
        if self.refresh_bn is not None and not self.diverged:
            # validation, the checkpoint and the saved model all use the statistics inference will see
            self.refresh_bn()
        probs = None if self.diverged else predict_proba(self.model, self.X_val, sch.batch_size)
        if probs is None or not np.all(np.isfinite(probs)) or not math.isfinite(float(logs.get("loss", 0.0))):
            self._stop_diverged(e)
            return
        val_loss, val_bal = cross_entropy(self.y_val, probs), balanced_accuracy(self.y_val, probs.argmax(1))
        logs["val_loss"], logs["val_bal_acc"] = val_loss, val_bal
        dt = time.perf_counter() - self.t0
        rec = {"epoch": e, "stage": self.stage, "loss": float(logs.get("loss", float("nan"))),
               "bal_acc": float(logs.get("bal_acc", float("nan"))), "val_loss": val_loss, "val_bal_acc": val_bal,
               "seconds": round(dt, 2), "lr": float(np.asarray(self.model.optimizer.learning_rate)),
               "base_lr": self.base_lr() if self.base_lr else 0.0}
        state["history"].append(rec)
        state["epoch"] = e
        state["train_seconds"] = float(state["train_seconds"]) + dt
        improved = val_bal > state["best_bal_acc"] + 1e-9 or (abs(val_bal - state["best_bal_acc"]) <= 1e-9 and val_loss < state["best_loss"])
        if improved:
            state["best_epoch"], state["best_bal_acc"], state["best_loss"], state["wait"] = e, val_bal, val_loss, 0
        else:
            state["wait"] = int(state["wait"]) + 1
        self.ck.save(self.model, state, best=improved)
        left = (sch.epochs - e) * dt
        self.log(f"{self.label} epoch {e}/{sch.epochs} ({self.stage}) loss {rec['loss']:.3f} bal_acc {rec['bal_acc']:.3f} | "
                 f"val loss {val_loss:.3f} bal_acc {val_bal:.3f}{' (best)' if improved else ''} | {dt:.0f}s, "
                 f"elapsed {fmt_secs(state['train_seconds'])}, at most ~{fmt_secs(left)} left")
        # the head stage has a fixed length
        if self.stage != "head" and state["wait"] >= sch.patience and sch.min_epochs <= e < sch.epochs:
            self.model.stop_training = True
            self.log(f"{self.label}: no gain in validation balanced accuracy for {sch.patience} epoch(s); early stopping "
                     f"(best epoch {state['best_epoch']})")
        elif self.deadline is not None and e < sch.epochs and time.monotonic() + dt > self.deadline:
            # the next epoch would overrun --max-train-minutes: stop here, this epoch is checkpointed
            self.out_of_time = self.model.stop_training = True
            self.log(f"{self.label}: stopping after epoch {e}: another epoch (~{fmt_secs(dt)}) would exceed "
                     f"--max-train-minutes {sch.max_train_minutes:g}; rerun the same command to continue from here")


def fit_network(spec: NetSpec, schedule: Schedule, data: Images, *, train_idx: np.ndarray, ckpt_dir: Path,
                run_settings: dict[str, Any], label: str, log: Log, progress: bool = True,
                callbacks: Sequence[Any] = ()) -> FitOutcome:
    """Carve validation from ``train_idx``, train ``spec`` with checkpoints in ``ckpt_dir``; the model ends on its
    best epoch. ``run_settings`` (what the rows are) join the checkpoint fingerprint; ``callbacks`` are extra."""
    from featurize.devices import replicas, training_scope

    with training_scope(spec.devices, spec.precision) as strategy:
        n_rep = replicas(strategy)
        if n_rep > 1:  # BatchNorm statistics are per replica: a different computation, so a different checkpoint
            run_settings = {**run_settings, "replicas": n_rep}
        return _fit_in_scope(spec, schedule, data, train_idx=train_idx, ckpt_dir=ckpt_dir, run_settings=run_settings,
                             label=label, log=log, progress=progress, callbacks=callbacks)


def _open_checkpoint(ck: Checkpoint, label: str, log: Log) -> tuple[dict[str, Any], int]:
    state = ck.load()
    if state is None:
        return ck.fresh(), 0
    resumed_from = int(state["epoch"])
    if resumed_from:
        log(f"{label}: resuming from the checkpoint after epoch {resumed_from} ({ck.dir})")
    return state, resumed_from


def _fit_in_scope(spec: NetSpec, schedule: Schedule, data: Images, *, train_idx: np.ndarray, ckpt_dir: Path,
                  run_settings: dict[str, Any], label: str, log: Log, progress: bool,
                  callbacks: Sequence[Any]) -> FitOutcome:
    from featurize.progress import progress_bar

    X, y, groups = data.X, data.y, data.groups
    epochs, batch_size = schedule.epochs, schedule.batch_size
    tr_pos, va_pos = validation_split(y[train_idx], None if groups is None else groups[train_idx], VAL_FRACTION,
                                      seed=spec.seed)
    tr, va = train_idx[tr_pos], train_idx[va_pos]
    data_key = digest([run_settings, tr.tolist(), va.tolist(), y[tr].tolist()])
    ck = Checkpoint(ckpt_dir, {**spec.settings(), **run_settings, "batch_size": batch_size, "data": data_key}, log)
    state, resumed_from = _open_checkpoint(ck, label, log)
    if spec.kind == "scratch":
        model, base = build_scratch(spec.size, spec.n_classes, seed=spec.seed), None
    else:
        model, base = build_finetune(spec.backbone, spec.weights, spec.size, spec.n_classes, seed=spec.seed,
                                     preprocess=spec.preprocess)
    cw = class_weights(y[tr], spec.n_classes)
    bn_rows = np.random.default_rng(spec.seed).permutation(tr)[:BN_IMAGES]
    base_bn = base is not None and spec.batchnorm == "train"
    X_bn = X[np.sort(bn_rows)] if trainable_batchnorms(model) or base_bn else None

    def refresh_bn() -> None:
        if base_bn:  # the backbone first: the head's input depends on it
            reestimate_base_batchnorm(base, model.get_layer("preprocess"), X_bn)
        reestimate_batchnorm(model, X_bn)
    train_ds = train_dataset(X[tr], y[tr], cw[y[tr]], n_classes=spec.n_classes, batch_size=batch_size,
                             seed=spec.seed + int(state["epoch"]))
    steps = int(math.ceil(len(tr) / batch_size))
    todo = max(0, epochs - int(state["epoch"]))
    if todo and not state["diverged_epoch"]:
        min_note = f" after epoch {schedule.min_epochs}" if schedule.min_epochs else ""
        log(f"{label}: {len(tr)} training / {len(va)} validation slices, epochs {int(state['epoch']) + 1}..{epochs} "
            f"(patience {schedule.patience}{min_note}), batch {batch_size}, {spec.size[0]}x{spec.size[1]} "
            f"{'grayscale' if spec.channels == 1 else 'rgb'}")
    minutes = schedule.max_train_minutes
    deadline = None if minutes is None else time.monotonic() + 60.0 * float(minutes)
    out_of_time = False
    try:
        with progress_bar(todo * steps, f"train {label}", enabled=progress and todo > 0, unit="batch") as advance:
            start = 0
            for si, (stage, end, lr, base_lr) in enumerate(spec.stages(epochs)):
                first, start = start, end
                if si < int(state["stage_index"]) or state["diverged_epoch"]:
                    continue
                if deadline is not None and state["best_dir"] and time.monotonic() >= deadline:
                    out_of_time = True
                    break
                trainable = set_stage(base, stage, spec.unfreeze, batchnorm=spec.batchnorm)
                slow = base.trainable_variables if base is not None and trainable else []
                model.compile(optimizer=stage_optimizer(lr, base_lr, slow=slow, steps=steps * max(1, end - first)),
                              loss=keras.losses.CategoricalCrossentropy(label_smoothing=spec.label_smoothing),
                              metrics=[BalancedAccuracy(spec.n_classes)], jit_compile=False)
                last_stage = state["history"][-1]["stage"] if state["history"] else None
                if si > int(state["stage_index"]):
                    # fine-tuning continues from where the head stage ended (its weights are in ``model``), with a
                    # fresh optimizer, schedule and patience; the best epoch is still tracked over both stages
                    state["stage_index"], state["wait"] = si, 0
                    bn_note = ("BatchNorm kept frozen, in inference mode" if spec.batchnorm == "frozen"
                               else "every BatchNorm training, batch statistics")
                    log(f"{label}: stage {stage}: {len(trainable)} weighted layers of the top {spec.unfreeze} unfrozen "
                        f"({bn_note}), peak learning rates: head {lr:g}, base {base_lr:g}")
                elif state["last_dir"] and last_stage == stage:
                    ck.restore(model, "last_dir", state, optimizer=True)
                stop = stage != "head" and int(state["wait"]) >= schedule.patience and int(state["epoch"]) >= schedule.min_epochs
                if int(state["epoch"]) >= end or stop:
                    continue
                opt = model.optimizer
                control = EpochControl(checkpoint=ck, state=state, stage=stage, X_val=X[va], y_val=y[va],
                                       schedule=schedule, label=label, log=log, advance=advance, deadline=deadline,
                                       refresh_bn=refresh_bn if X_bn is not None else None,
                                       base_lr=(lambda o=opt: float(np.asarray(o.learning_rate)) * o.factor) if slow else None)
                model.fit(train_ds, initial_epoch=int(state["epoch"]), epochs=end, verbose=0, shuffle=False,
                          callbacks=[control, *callbacks])
                if control.diverged:
                    break
                if control.out_of_time:
                    out_of_time = True
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
    set_stage(base, "head", spec.unfreeze)  # frozen for inference and saving, whatever the mode
    stopped_early = int(state["epoch"]) < epochs and not state["diverged_epoch"] and not out_of_time
    return FitOutcome(model=model, history=list(state["history"]), epochs_run=int(state["epoch"]),
                      best_epoch=int(state["best_epoch"]), best_val_bal_acc=float(state["best_bal_acc"]),
                      train_seconds=float(state["train_seconds"]), diverged_epoch=state["diverged_epoch"],
                      stopped_early=stopped_early, resumed_from=resumed_from, n_train=len(tr), n_val=len(va),
                      fingerprint=ck.fingerprint, stopped_by_budget=out_of_time, train_rows=tr, val_rows=va)


def stage_optimizer(lr: float, base_lr: float, *, slow: Sequence[Any], steps: int) -> Any:
    """The optimizer of one stage: Adam at the head's peak ``lr`` and ``base_lr`` for the ``slow`` (unfrozen base)
    variables, on a one-cycle-like schedule over the stage's ``steps``: a linear warm-up from lr/10 over the first
    WARMUP_FRACTION of them, then cosine decay to lr/100."""
    warm = max(1, int(round(WARMUP_FRACTION * steps))) if steps > 1 else 0
    sched = keras.optimizers.schedules.CosineDecay(lr / 10 if warm else lr, decay_steps=max(1, steps - warm),
                                                   alpha=0.01, warmup_target=lr if warm else None, warmup_steps=warm)
    return DiscriminativeAdam(learning_rate=sched, slow=slow, factor=base_lr / lr if slow and lr > 0 else 1.0)
