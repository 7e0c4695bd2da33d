"""``alzmri curve``: the transfer-learning trade-off measured. Frozen-feature heads, fine-tuning and the scratch CNN
are trained on growing numbers of training subjects under subject-cv, all scored on the SAME test folds
(``classify.protocols.folds_for``), and plotted as balanced accuracy with 95% intervals against the number of
training subjects.

Per fold, the training subjects are put in one stratified random order (one subject of each class first, then the
classes interleaved in proportion), and a size ``n`` takes the first ``n``: the sets are nested (10 within 20 within
40 ...), so a curve's steps come from more data, not from another draw. The frozen head is grid-searched on its
training rows only (``classify.evaluate.select_head``, inner folds by subject); the CNNs are ``classify.cnn``'s
recipe, their validation part carved from the chosen training subjects.

Intervals: every subject is tested exactly once over the folds, so the pooled test predictions of a (method, size)
are bootstrapped over test subjects (percentile 95%), for slice- and subject-level balanced accuracy alike; the
fold mean and std are in the table too. Finished cells are kept (``cells/``), CNN cells resume from checkpoints,
and a cell stopped by ``max_train_minutes`` is continued by a rerun.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from classify.protocols import folds_for
from featurize.atomic import atomic_path
from featurize.errors import AlzmriError, CacheError, DataError
from featurize.options import at_least, choose

METHODS = ("frozen", "finetune", "scratch")
DEFAULT_SIZES = (10, 20, 40, 80, 0)  # 0: all the fold's training subjects
N_BOOT = 1000
Log = Callable[[str], None]
LABELS = {"frozen": "frozen features + {head}", "finetune": "fine-tuned {backbone}", "scratch": "CNN from scratch"}


def parse_sizes(text: str | Sequence[int | str]) -> tuple[int, ...]:
    """``"10,20,all"`` -> (10, 20, 0); sizes are training subjects per fold, ``all`` (0) every one of them."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else map(str, text)) if t.strip()]
    out = []
    for t in items:
        if t in ("all", "0"):
            out.append(0)
        elif t.isdigit() and int(t) >= 2:
            out.append(int(t))
        else:
            raise AlzmriError(f"--sizes {text}: {t!r} is not a number of subjects >= 2 or 'all'")
    if not out:
        raise AlzmriError("--sizes is empty; pass e.g. 10,20,40,80,all")
    return tuple(sorted(set(out), key=lambda n: n or 10**9))


@dataclass(frozen=True, kw_only=True)
class CurveConfig:
    """What ``alzmri curve`` trains. ``epochs``/``max_train_minutes``/``image_size``/``batch_size`` go to both CNNs
    (None: each model's default, see ``classify.cnn.run.BaselineConfig``), ``unfreeze`` and ``batchnorm`` to the
    fine-tuned one (baseline's defaults); ``head`` is the frozen-feature head."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    methods: tuple[str, ...] = METHODS
    head: str = "logreg"
    backbone: str = "mobilenetv2"
    weights: str = "imagenet"
    layers: str = "last"
    epochs: int | None = None
    max_train_minutes: float | None = None
    image_size: str | None = None
    unfreeze: int = 30
    batchnorm: str = "frozen"
    batch_size: int = 32
    folds: int = 5
    seed: int = 0
    subjects: str = "auto"
    n_boot: int = N_BOOT

    def __post_init__(self) -> None:
        from classify.heads import HEADS

        for m in self.methods:
            choose("--methods", m, METHODS)
        choose("--head", self.head, HEADS)
        at_least("folds", self.folds, 2)
        parse_sizes(self.sizes)
        self.cnn("scratch")  # checks the CNN options now, not after the frozen cells

    def cnn(self, kind: str) -> Any:
        """The ``BaselineConfig`` of one CNN method under this curve."""
        from classify.cnn.run import BaselineConfig

        return BaselineConfig(model=kind, backbone=self.backbone, weights=self.weights, image_size=self.image_size,
                              epochs=self.epochs, batch_size=self.batch_size, protocol="subject-cv", folds=self.folds,
                              seed=self.seed, subjects=self.subjects, max_train_minutes=self.max_train_minutes,
                              unfreeze=self.unfreeze, batchnorm=self.batchnorm)


@dataclass
class Rows:
    """The labelled rows every method shares: paths, class indices, subjects and the subject-cv folds."""

    paths: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    class_names: list[str]
    folds: list[tuple[np.ndarray, np.ndarray]]
    dataset_id: str


@dataclass
class CurveResult:
    """The table (one row per method x size), the per-cell records, and where things were written."""

    table: pd.DataFrame
    cells: list[dict[str, Any]]
    csv_path: Path
    png_path: Path | None
    seconds: float
    notes: list[str] = field(default_factory=list)


def subject_order(groups: np.ndarray, y: np.ndarray, *, seed: int) -> list[str]:
    """The training subjects in one stratified random order: the first subject of each class (the classes in
    random order), then the rest by their fractional rank within their class, so that any prefix keeps the
    class proportions. Prefixes are the nested training sets of the curve."""
    rng = np.random.default_rng(seed)
    subj = sorted(set(groups.tolist()))
    label = {s: int(np.bincount(y[groups == s]).argmax()) for s in subj}
    by_class: dict[int, list[str]] = {}
    for s in rng.permutation(np.array(subj, dtype=object)).tolist():
        by_class.setdefault(label[s], []).append(s)
    firsts = [by_class[c][0] for c in rng.permutation(sorted(by_class)).tolist()]
    rest = [(r / len(members) + rng.uniform(0, 1e-3), s) for members in by_class.values()
            for r, s in enumerate(members) if r > 0]
    return firsts + [s for _, s in sorted(rest)]


def _balanced(y: np.ndarray, pred: np.ndarray, k: int, w: np.ndarray | None = None) -> float:
    """Balanced accuracy over the classes present (weights = bootstrap multiplicities)."""
    w = np.ones(len(y)) if w is None else w
    support = np.bincount(y, weights=w, minlength=k)
    hit = np.bincount(y, weights=w * (pred == y), minlength=k)
    seen = support > 0
    return float(np.mean(hit[seen] / support[seen])) if seen.any() else float("nan")


def bootstrap(y: np.ndarray, scores: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int) -> dict[str, float]:
    """Slice- and subject-level balanced accuracy of pooled test predictions, with percentile 95% intervals from
    resampling test subjects (each resampled subject brings all its slices)."""
    from classify.metrics import subject_level

    k = scores.shape[1]
    subj, inv = np.unique(groups, return_inverse=True)
    ys, ss = subject_level(y, scores, groups)
    pred, spred = scores.argmax(1), ss.argmax(1)
    out = {"balanced_accuracy": _balanced(y, pred, k), "subject_balanced_accuracy": _balanced(ys, spred, k)}
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        mult = np.bincount(rng.integers(0, len(subj), len(subj)), minlength=len(subj)).astype(float)
        boots.append((_balanced(y, pred, k, mult[inv]), _balanced(ys, spred, k, mult)))
    b = np.array(boots) if boots else np.full((1, 2), np.nan)
    for j, key in enumerate(("balanced_accuracy", "subject_balanced_accuracy")):
        out[f"{key}_lo"], out[f"{key}_hi"] = (float(np.nanpercentile(b[:, j], 2.5)), float(np.nanpercentile(b[:, j], 97.5)))
    return out


def shared_rows(data: str | os.PathLike[str], cfg: CurveConfig, *, artifacts: str | os.PathLike[str] | None,
                log: Log) -> tuple[Rows, Any]:
    """The rows and folds every method uses, and the frozen-feature set (None without the frozen method): the
    feature cache's rows when it is used (the CNNs are matched to them by path), else the dataset's."""
    from featurize.dataset import class_indices, scan
    from featurize.grouping import resolve_subjects

    fs = _features(data, cfg, artifacts=artifacts, log=log) if "frozen" in cfg.methods else None
    if fs is not None:
        if not fs.has_subjects:
            raise DataError(f"{fs.meta.get('cache_path')}: the feature cache has no subjects; rerun `alzmri featurize "
                            f"--data {data} --subjects auto` so that subject-cv can hold whole subjects out")
        paths, y, groups = np.asarray(fs.paths, dtype=object), np.asarray(fs.y), np.asarray(fs.subject, dtype=object)
        names, ds_id = list(fs.class_names), str(fs.meta.get("dataset_id"))
    else:
        ds = scan(data, None)
        table = ds.table.copy()
        table["subject"] = resolve_subjects(ds, cfg.subjects, artifacts=artifacts, log=log)
        paths, names, ds_id = table["path"].to_numpy(dtype=object), list(ds.class_names), ds.dataset_id
        y, groups = class_indices(table["label"], names), table["subject"].to_numpy(dtype=object).astype(str)
        if not len(groups) or any(g == "" for g in groups):
            groups = None
    folds, notes = folds_for("subject-cv", y=y, groups=groups, split=None, seed=cfg.seed, n_splits=cfg.folds,
                             class_names=names, source=str(data))
    for n in notes:
        log(f"note: {n}")
    return Rows(paths=paths, y=np.asarray(y), groups=np.asarray(groups, dtype=object), class_names=names,
                folds=folds, dataset_id=ds_id), fs


def _features(data: str | os.PathLike[str], cfg: CurveConfig, *, artifacts: str | os.PathLike[str] | None, log: Log) -> Any:
    from classify.run import select_caches
    from featurize.store import load, read_attrs
    from featurize.weights_catalog import resolve

    tag = resolve(cfg.weights, cfg.backbone, artifacts=artifacts).tag
    caches = [p for p in select_caches(data, cfg.backbone, artifacts=artifacts, layers=cfg.layers)
              if read_attrs(p).get("weights") == tag]
    if not caches:
        raise CacheError(f"no {cfg.backbone} feature cache with weights {tag} for {data}; run `alzmri featurize --data "
                         f"{data} --backbone {cfg.backbone} --weights {cfg.weights} --layers {cfg.layers}` first")
    if len(caches) > 1:
        log(f"note: {len(caches)} matching feature caches; the frozen head uses {caches[0].name}")
    return load(caches[0])


def _cell_key(cfg: CurveConfig, rows: Rows, method: str, n: int, fold: int, train: np.ndarray) -> str:
    from classify.cnn.spec import digest

    what = {"method": method, "n": n, "fold": fold, "train": digest(rows.paths[train].tolist()),
            "test": digest(rows.paths[rows.folds[fold - 1][1]].tolist()), "seed": cfg.seed}
    if method == "frozen":
        what.update(head=cfg.head, backbone=cfg.backbone, weights=cfg.weights, layers=cfg.layers)
    else:  # the network's own settings also key its checkpoints (classify.cnn.checkpoint)
        what.update({k: getattr(cfg, k) for k in ("backbone", "weights", "epochs", "image_size", "batch_size", "subjects")})
        if method == "finetune":  # only when not the defaults, so that cells measured before stay kept
            what.update({k: v for k, v in (("unfreeze", cfg.unfreeze), ("batchnorm", cfg.batchnorm))
                         if v != CurveConfig.__dataclass_fields__[k].default})
    return digest(what)


def run_curve(data: str | os.PathLike[str], config: CurveConfig | None = None, *,
              artifacts: str | os.PathLike[str] | None = None, progress: bool = True, log: Log = lambda m: None,
              n_jobs: int = 2, **options: Any) -> CurveResult:
    """Train every method of ``config`` (or a ``CurveConfig`` of ``options``) on each size's training subjects of
    every subject-cv fold, score the fold's test rows, and write the table (CSV), the plot (PNG) and report rows."""
    from featurize.config import dataset_dir

    t0 = time.perf_counter()
    cfg = replace(config, **options) if config is not None else CurveConfig(**options)
    rows, fs = shared_rows(data, cfg, artifacts=artifacts, log=log)
    out_dir = dataset_dir(rows.dataset_id, artifacts) / "curve"
    cell_dir = out_dir / "cells"
    plan = _plan(rows, cfg)
    n_cells = sum(len(v) for v in plan.values()) * len(cfg.methods)
    log(f"curve: {len(cfg.methods)} method(s) x {len(cfg.sizes)} size(s) x {len(rows.folds)} folds = {n_cells} cells "
        f"on {len(rows.y)} slices of {len(set(rows.groups))} subjects; the same {len(rows.folds)} test folds for all")
    cells: list[dict[str, Any]] = []
    done = 0
    for method in [m for m in ("frozen", "scratch", "finetune") if m in cfg.methods]:
        trainer = None  # made on first need: a rerun whose cells are all kept decodes no image
        t_method, fresh, todo = time.perf_counter(), 0, sum(len(v) for v in plan.values())
        for fold, per_size in plan.items():
            te = rows.folds[fold - 1][1]
            for n, train in per_size:
                key = _cell_key(cfg, rows, method, n, fold, train)
                path = cell_dir / f"{method}__n{n or 'all'}__fold{fold}.json"
                cell = _read_cell(path, key)
                if cell is None:
                    if trainer is None:
                        trainer = _frozen_trainer(fs, rows, cfg, n_jobs) if method == "frozen" else \
                            _cnn_trainer(data, rows, cfg, method, artifacts=artifacts, progress=progress, log=log)
                    scores, extra = trainer(n, fold, train, te)
                    cell = {"key": key, "method": method, "n": n, "fold": fold, "n_subjects": len(set(rows.groups[train])),
                            "n_slices": len(train), "train": train.tolist(), "test": te.tolist(),
                            "scores": np.round(scores, 6).tolist(), **extra}
                    if not cell.get("stopped_by_budget"):  # a stopped CNN is continued by the next run
                        _write_json(path, cell)
                    fresh += 1
                cells.append(cell)
                done, todo = done + 1, todo - 1
                left = (time.perf_counter() - t_method) / max(1, fresh) * todo  # at this method's pace so far
                log(f"curve {done}/{n_cells}: {method} n={cell['n_subjects']} subjects fold {fold}: balanced accuracy "
                    f"{_cell_bal(cell, rows):.3f}" + (f" (~{left / 60:.1f} min left for {method})" if fresh and todo else
                                                       "" if fresh else " (kept from an earlier run)"))
    table = curve_table(cells, rows, cfg)
    csv_path = out_dir / "curve.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    png = None
    try:
        png = plot_curve(table, out_dir / "curve.png", n_classes=len(rows.class_names),
                         title=f"{rows.dataset_id}: subject-cv, {len(rows.folds)} folds, the same test folds for every point")
    except Exception as exc:  # noqa: BLE001 - never lose the measured table over a plot
        log(f"warning: could not draw the curve ({type(exc).__name__}: {exc})")
    _report_rows(table, rows, cfg, artifacts=artifacts)
    return CurveResult(table=table, cells=cells, csv_path=csv_path, png_path=png, seconds=time.perf_counter() - t0)


def _plan(rows: Rows, cfg: CurveConfig) -> dict[int, list[tuple[int, np.ndarray]]]:
    """Per fold: (size, training rows) for each distinct size (sizes above the fold's subjects collapse to all)."""
    plan: dict[int, list[tuple[int, np.ndarray]]] = {}
    for k, (tr, _) in enumerate(rows.folds, start=1):
        order = subject_order(rows.groups[tr], rows.y[tr], seed=cfg.seed + k)
        seen: set[int] = set()
        plan[k] = []
        for n in parse_sizes(cfg.sizes):
            m = len(order) if n == 0 or n >= len(order) else n
            if m in seen:
                continue
            seen.add(m)
            chosen = set(order[:m])
            plan[k].append((0 if m == len(order) else n, tr[np.isin(rows.groups[tr], list(chosen))]))
    return plan


def _frozen_trainer(fs: Any, rows: Rows, cfg: CurveConfig, n_jobs: int) -> Callable[..., tuple[np.ndarray, dict[str, Any]]]:
    from threadpoolctl import threadpool_limits

    from classify.evaluate import select_head
    from classify.heads import make_head
    from classify.metrics import predict_scores, quiet_sklearn

    X = np.asarray(fs.X)

    def train(n: int, fold: int, tr: np.ndarray, te: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        t = time.perf_counter()
        with threadpool_limits(1), quiet_sklearn():
            try:
                model, params, _ = select_head(cfg.head, X[tr], rows.y[tr], rows.groups[tr], n_jobs=n_jobs, seed=cfg.seed)
            except ValueError:  # too few subjects for inner folds (every candidate failed): the default head
                model, params = make_head(cfg.head, None, cfg.seed).fit(X[tr], rows.y[tr]), {"grid": "skipped: too few subjects"}
            scores = predict_scores(model, X[te], len(rows.class_names))
        return scores, {"seconds": time.perf_counter() - t, "params": params}

    return train


def _cnn_trainer(data: str | os.PathLike[str], rows: Rows, cfg: CurveConfig, kind: str, *,
                 artifacts: str | os.PathLike[str] | None, progress: bool, log: Log) -> Callable[..., tuple[np.ndarray, dict[str, Any]]]:
    from classify.cnn.data import Images, predict_proba
    from classify.cnn.prepare import prepare
    from classify.cnn.spec import digest
    from classify.cnn.train import fit_network
    from featurize.config import models_dir

    bcfg = cfg.cnn(kind)
    spec = bcfg.net_spec(n_classes=len(rows.class_names), choice=bcfg.weights_choice(artifacts))
    prep = prepare(data, bcfg, spec, artifacts=artifacts, progress=progress, log=log)
    where = {p: i for i, p in enumerate(prep.table["path"].to_numpy(dtype=object))}
    missing = [p for p in rows.paths if p not in where]
    if missing:
        raise DataError(f"{data}: {len(missing)} row(s) of the feature cache could not be decoded for the {kind} CNN "
                        f"(e.g. {missing[0]}); fix or remove them, then rerun featurize and curve")
    pos = np.array([where[p] for p in rows.paths])
    img = Images(prep.images.X[pos], rows.y, rows.groups)  # the shared rows, in their order
    del prep
    sch = bcfg.schedule
    root = models_dir(rows.dataset_id, artifacts) / "curve" / spec.name
    common = {"classes": rows.class_names, "resize": bcfg.resize, "protocol": "subject-cv", "files": digest(rows.paths.tolist())}

    def train(n: int, fold: int, tr: np.ndarray, te: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        tag = f"n{n or 'all'}"
        f = fit_network(spec, sch, img, train_idx=tr, ckpt_dir=root / tag / f"fold{fold}",
                        run_settings={**common, "run": f"curve/{tag}/fold{fold}"},
                        label=f"{kind} {tag} fold {fold}/{len(rows.folds)}", log=log, progress=progress)
        scores = predict_proba(f.model, img.X[te], sch.batch_size)
        return scores, {"seconds": f.train_seconds, "epochs": f.epochs_run, "best_epoch": f.best_epoch,
                        "stopped_by_budget": f.stopped_by_budget, "val_subjects": len(set(rows.groups[f.val_rows]))}

    return train


def _read_cell(path: Path, key: str) -> dict[str, Any] | None:
    try:
        cell = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cell if cell.get("key") == key else None


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, default=float))


def _cell_bal(cell: dict[str, Any], rows: Rows) -> float:
    te, scores = np.asarray(cell["test"]), np.asarray(cell["scores"])
    return _balanced(rows.y[te], scores.argmax(1), len(rows.class_names))


def curve_table(cells: list[dict[str, Any]], rows: Rows, cfg: CurveConfig) -> pd.DataFrame:
    """One row per (method, size): pooled balanced accuracies (slice and subject) with bootstrap 95% intervals,
    the fold mean and std, and the mean number of training subjects and slices."""
    from classify.metrics import compute_metrics

    out = []
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in cells:
        by.setdefault((c["method"], int(c["n"])), []).append(c)
    for (method, n), group in by.items():
        te = np.concatenate([np.asarray(c["test"]) for c in group])
        scores = np.concatenate([np.asarray(c["scores"]) for c in group])
        b = bootstrap(rows.y[te], scores, rows.groups[te], n_boot=cfg.n_boot, seed=cfg.seed)
        per_fold = [compute_metrics(rows.y[np.asarray(c["test"])], np.asarray(c["scores"]).argmax(1), np.asarray(c["scores"]),
                                    rows.class_names, groups=rows.groups[np.asarray(c["test"])])[0] for c in group]
        out.append({"method": method, "label": LABELS[method].format(head=cfg.head, backbone=cfg.backbone),
                    "size": "all" if n == 0 else str(n), "n_subjects": float(np.mean([c["n_subjects"] for c in group])),
                    "n_slices": float(np.mean([c["n_slices"] for c in group])), "folds": len(group), **b,
                    **{f"{k}_fold_mean": float(np.nanmean([m[k] for m in per_fold])) for k in ("balanced_accuracy", "subject_balanced_accuracy")},
                    **{f"{k}_fold_std": float(np.nanstd([m[k] for m in per_fold])) for k in ("balanced_accuracy", "subject_balanced_accuracy")},
                    "train_seconds": float(sum(c.get("seconds", 0.0) for c in group)),
                    "stopped_by_budget": int(sum(bool(c.get("stopped_by_budget")) for c in group)),
                    "test_rows": int(len(te))})
    df = pd.DataFrame(out)
    return df.sort_values(["method", "n_subjects"], kind="stable").reset_index(drop=True) if len(df) else df


def plot_curve(table: pd.DataFrame, path: str | os.PathLike[str], *, n_classes: int, title: str = "") -> Path:
    """Two panels (slice- and subject-level balanced accuracy) against training subjects, one line per method,
    bootstrap 95% intervals as error bars, chance as a dashed line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    methods = list(dict.fromkeys(table["method"]))
    for ax, key, name in zip(axes, ("balanced_accuracy", "subject_balanced_accuracy"), ("slice level", "subject level")):
        for i, m in enumerate(methods):
            t = table[table["method"] == m].sort_values("n_subjects")
            x = t["n_subjects"].to_numpy() * (1 + 0.02 * (i - (len(methods) - 1) / 2))  # keep the bars apart
            yv = t[key].to_numpy()
            err = np.vstack([yv - t[f"{key}_lo"].to_numpy(), t[f"{key}_hi"].to_numpy() - yv])
            ax.errorbar(x, yv, yerr=np.clip(err, 0, None), marker="o", ms=4, capsize=3, label=t["label"].iloc[0])
        ax.axhline(1.0 / n_classes, color="red", ls="--", lw=1, label=f"chance (1/{n_classes})")
        ax.set_xscale("log", base=2)
        ticks = sorted(set(np.round(table["n_subjects"]).astype(int)))
        ax.set_xticks(ticks, labels=[str(v) for v in ticks])
        if len(ticks) == 1:  # one size: an auto range would spread the side-by-side offsets across the panel
            ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)
        ax.minorticks_off()
        ax.set_xlabel("training subjects per fold")
        ax.set_title(f"balanced accuracy, {name} (95% bootstrap over test subjects)", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("balanced accuracy")
    axes[1].legend(fontsize=8, loc="best")  # away from the points: "lower right" hid the largest size
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def _report_rows(table: pd.DataFrame, rows: Rows, cfg: CurveConfig, *, artifacts: str | os.PathLike[str] | None) -> None:
    """One report.csv row per (method, size), ``features`` = ``curve:subjects=N`` so that they never replace the
    rows of ``classify`` and ``baseline``; the intervals go in ``best_params``."""
    from classify.report import upsert_rows
    from featurize.config import report_path
    from featurize.weights_catalog import resolve

    tag = resolve(cfg.weights, cfg.backbone, artifacts=artifacts).tag
    out = []
    for r in table.to_dict("records"):
        kind = r["method"]
        out.append({"dataset": rows.dataset_id, "backbone": "scratch" if kind == "scratch" else cfg.backbone,
                    "weights": "random-init" if kind == "scratch" else tag, "layers": cfg.layers if kind == "frozen" else "",
                    "features": f"curve:subjects={r['size']}", "task": "stages",
                    "head": {"frozen": cfg.head, "finetune": "fine-tune", "scratch": "end-to-end"}[kind],
                    "protocol": "subject-cv", "n_train": int(round(r["n_slices"])), "n_test": r["test_rows"],
                    "balanced_accuracy": r["balanced_accuracy"], "balanced_accuracy_std": r["balanced_accuracy_fold_std"],
                    "subject_balanced_accuracy": r["subject_balanced_accuracy"],
                    "subject_balanced_accuracy_std": r["subject_balanced_accuracy_fold_std"], "n_splits": r["folds"],
                    "best_params": json.dumps({k: round(float(r[k]), 4) for k in r if k.endswith(("_lo", "_hi"))} |
                                              {"n_subjects": r["n_subjects"], "stopped_by_budget": r["stopped_by_budget"]}),
                    "selection": "alzmri curve: bootstrap 95% over test subjects", "fit_seconds": round(r["train_seconds"], 3),
                    "class_names": json.dumps(rows.class_names), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    upsert_rows(report_path(artifacts), out)


def format_curve(res: CurveResult) -> str:
    """The table for the terminal, and where the CSV and PNG went."""
    t = res.table
    lines = [f"{'method':<34}{'subjects':>9}{'slices':>8}  {'bal_acc [95% CI]':<24}{'subject bal_acc [95% CI]':<26}{'train s':>9}"]
    for r in t.to_dict("records"):
        lines.append(f"{r['label']:<34}{r['n_subjects']:>9.1f}{r['n_slices']:>8.0f}  "
                     f"{r['balanced_accuracy']:.3f} [{r['balanced_accuracy_lo']:.3f}, {r['balanced_accuracy_hi']:.3f}]  "
                     f"{r['subject_balanced_accuracy']:.3f} [{r['subject_balanced_accuracy_lo']:.3f}, {r['subject_balanced_accuracy_hi']:.3f}]"
                     f"    {r['train_seconds']:>9.1f}" + ("  (stopped by --max-train-minutes)" if r["stopped_by_budget"] else ""))
    lines.append(f"table: {res.csv_path}" + (f"   plot: {res.png_path}" if res.png_path else "") + f"   ({res.seconds:.0f} s)")
    return "\n".join(lines)
