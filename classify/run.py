"""``alzmri classify`` / ``alzmri report``: train heads on cached features, save bundles, report, plot."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from classify.bundle import BACKBONE_KEYS, ModelBundle, bundle_path, save_bundle
from classify.evaluate import PROTOCOLS, SELECTION, EvalResult, evaluate
from classify.heads import head_names
from classify.plots import confusion_from_row, confusion_name, summary_png
from classify.report import format_report, read_report, upsert_rows
from classify.tasks import apply_label_map
from featurize.config import dataset_dir, features_dir, report_path
from featurize.errors import AlzmriError, CacheError
from featurize.featureset import FeatureSet
from featurize.store import variant_tag

Log = Callable[[str], None]


def _stderr_log() -> Log:
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    return lambda msg: console.print(f"[yellow]warning:[/] {msg}", highlight=False)


def plots_dir(dataset_id: str, artifacts: str | os.PathLike[str] | None = None) -> Path:
    """Where a dataset's PNGs go: ``artifacts/<dataset-id>/plots``."""
    return dataset_dir(dataset_id, artifacts) / "plots"


def select_caches(data_root: str | os.PathLike[str], backbone: str = "all",
                  artifacts: str | os.PathLike[str] | None = None, layers: str = "all") -> list[Path]:
    """The complete caches of ``data_root`` for ``backbone`` ("all", a name, or "a,b").

    CacheError naming the `alzmri featurize` command to run when a requested backbone has none. Caches that differ
    only in their input settings (size, pooling, resize, precision) are all used: the report and the bundles tell
    them apart by ``features`` (``featurize.store.variant_tag``).
    """
    from featurize.dataset import dataset_id
    from featurize.store import find_caches, read_attrs

    ds_id = dataset_id(data_root)
    caches = [(p, read_attrs(p)) for p in find_caches(ds_id, artifacts)]
    wanted = None if backbone in ("all", "", None) else [b.strip() for b in str(backbone).split(",") if b.strip()]
    if wanted is None:
        if not caches:
            raise CacheError(f"no feature cache for {data_root} (looked in {features_dir(ds_id, artifacts)}); run "
                             f"`alzmri featurize --data {data_root} --backbone mobilenetv2` first")
        chosen = caches
    else:
        chosen = []
        for b in wanted:
            hits = [(p, a) for p, a in caches if a.get("backbone") == b]
            if not hits:
                raise CacheError(f"no {b} feature cache for {data_root} (looked in {features_dir(ds_id, artifacts)}); "
                                 f"run `alzmri featurize --data {data_root} --backbone {b}` first")
            chosen += hits
    if layers not in ("all", "", None):
        from featurize.backbones import get_backbone, layers_tag, resolve_layers

        tags = {layers_tag(resolve_layers(get_backbone(str(a.get("backbone"))), layers)) for _, a in chosen}
        kept = [(p, a) for p, a in chosen if str(a.get("layers")) in tags]
        if not kept:
            raise CacheError(f"no cache with --layers {layers} for {data_root}; run `alzmri featurize --data {data_root} "
                             f"--backbone {backbone if backbone != 'all' else 'NAME'} --layers {layers}` first")
        chosen = kept
    return sorted(p for p, _ in chosen)


def _fmt_spc(spc: dict[str, int] | None) -> str:
    return "" if not spc else ";".join(f"{c}:{k}" for c, k in spc.items())


def report_row(fs: FeatureSet, res: EvalResult, task: str, model_path: Path | None) -> dict[str, Any]:
    """The report.csv row of one evaluation."""
    m = fs.meta
    row: dict[str, Any] = {
        "dataset": m.get("dataset_id", ""), "backbone": m.get("backbone", ""), "weights": m.get("weights", ""),
        "layers": m.get("layers", ""), "features": variant_tag(m), "task": task, "head": res.head, "protocol": res.protocol,
        "n_train": res.n_train, "n_test": res.n_test,
    }
    for k, v in res.metrics.items():
        row[k] = v
    for k, v in res.std.items():
        if not k.startswith(("precision_", "recall_")):  # per-class spreads would double the width for little
            row[f"{k}_std"] = v
    row.update({
        "n_splits": res.n_splits, "subjects_per_class": _fmt_spc(res.subjects_per_class), "leakage": res.leakage,
        "chance_balanced_accuracy": res.chance_balanced_accuracy, "permutation_p": res.permutation_p,
        "best_params": json.dumps(res.best_params, default=str, sort_keys=True), "selection": SELECTION,
        "pca": res.pca, "fit_seconds": round(res.fit_seconds, 3), "predict_seconds": round(res.predict_seconds, 4),
        "featurize_images_per_s": m.get("featurize_images_per_s"), "epochs": None,
        "class_names": json.dumps(res.class_names), "confusion": json.dumps(np.asarray(res.confusion).tolist()),
        "subject_confusion": "" if res.subject_confusion is None else json.dumps(np.asarray(res.subject_confusion).tolist()),
        "fingerprint": m.get("fingerprint", ""), "model_path": str(model_path or ""),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return row


def regenerate_summary(artifacts: str | os.PathLike[str] | None = None, dataset: str | None = None) -> list[Path]:
    """Redraw ``artifacts/<dataset-id>/plots/summary.png`` for ``dataset`` (or every dataset in the report)."""
    df = read_report(report_path(artifacts))
    out = []
    for ds, sub in df.groupby("dataset", sort=True):
        if dataset is not None and ds != dataset:
            continue
        p = summary_png(plots_dir(str(ds), artifacts) / "summary.png", sub, title=str(ds))
        if p is not None:
            out.append(p)
    return out


def classify_dataset(data_root: str | os.PathLike[str], backbone: str = "all",
                     heads: list[str] | tuple[str, ...] | str = ("logreg", "svm", "mlp"), protocol: str = "official",
                     artifacts: str | os.PathLike[str] | None = None, permutation: int = 0, n_jobs: int = 2,
                     seed: int = 0, by_subject: bool = False, progress: bool = True, task: str = "stages",
                     pca: int | None | str = "default", log: Log | None = None, layers: str = "all") -> pd.DataFrame:
    """Train and evaluate each head on each matching feature cache of ``data_root``.

    For each cache x head: evaluate under ``protocol`` (see classify.evaluate), save the signed bundle, upsert
    the report row, draw its confusion matrix; then redraw the dataset's summary chart. ``by_subject``
    requires subjects and draws subject-level confusion matrices (subject metrics are always in the row
    when subjects are known). ``task`` is a label map (``stages``, ``binary`` or ``A=x,B=y,*=z``).
    Warnings go to ``log`` (default: stderr) and are also returned in ``df.attrs["warnings"]``; the written
    bundle and plot paths are in ``df.attrs["bundles"]`` and ``df.attrs["plots"]``.
    """
    from featurize.dataset import dataset_id
    from featurize.progress import progress_bar
    from featurize.store import load

    log = log or _stderr_log()
    if protocol not in PROTOCOLS:
        raise AlzmriError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    names = head_names(heads)
    if n_jobs < 1:
        raise AlzmriError(f"--n-jobs must be at least 1 (got {n_jobs})")
    if permutation < 0:
        raise AlzmriError(f"--permutation must be 0 or more (got {permutation})")
    said: list[str] = []

    def warn(msg: str) -> None:
        if msg not in said:  # data-level notes repeat for every head: say each once
            said.append(msg)
            log(msg)

    caches = select_caches(data_root, backbone, artifacts, layers)
    ds_id = dataset_id(data_root)
    rows: list[dict[str, Any]] = []
    bundles: list[Path] = []
    plots: list[Path] = []
    with progress_bar(len(caches) * len(names), f"classify ({protocol})", enabled=progress, unit="model") as advance:
        for cache in caches:
            fs = load(cache)
            fs.meta["dataset_id"] = ds_id
            fs, task_name = apply_label_map(fs, task)
            if by_subject and not fs.has_subjects:
                raise AlzmriError(f"{cache}: --by-subject needs the subject of every slice; run `alzmri subjects --data "
                                  f"{data_root}` or featurize with `--subjects auto`")
            for head in names:
                res = evaluate(fs, head, protocol, pca=pca, permutation=permutation, n_jobs=n_jobs, seed=seed)
                for w in res.warnings:
                    warn(f"{fs.meta.get('backbone')}: {w}")
                path = bundle_path(ds_id, str(fs.meta.get("backbone")), head, artifacts, str(fs.meta.get("weights")),
                                   str(fs.meta.get("layers")), task_name, protocol, variant_tag(fs.meta))
                bundle = ModelBundle(
                    pipeline=res.model, class_names=list(fs.class_names),
                    backbone={k: fs.meta.get(k) for k in BACKBONE_KEYS}, fingerprint=str(fs.meta.get("fingerprint", "")),
                    head=head, protocol=protocol, selection=SELECTION, task=task_name, best_params=res.best_params,
                    metrics={k: v for k, v in res.metrics.items() if isinstance(v, float) and not math.isnan(v)},
                    dataset_id=ds_id)
                bundles.append(save_bundle(path, bundle))
                row = report_row(fs, res, task_name, path)
                upsert_rows(report_path(artifacts), [row])  # row by row: an interrupted run keeps what finished
                rows.append(row)
                plot_row = dict(row, confusion=row["subject_confusion"]) if by_subject and row["subject_confusion"] else row
                png = confusion_from_row(plots_dir(ds_id, artifacts) / confusion_name(row), plot_row)
                if png is not None:
                    plots.append(png)
                advance(1)
    plots += regenerate_summary(artifacts, ds_id)
    df = pd.DataFrame(rows)
    df.attrs.update(warnings=said, bundles=bundles, plots=plots)
    return df


def report_command(artifacts: str | os.PathLike[str] | None = None, fmt: str = "table") -> str:
    """Re-read report.csv, redraw every confusion matrix and summary chart, and return the formatted report."""
    path = report_path(artifacts)
    if not path.is_file():
        raise AlzmriError(f"{path}: no report yet; run `alzmri classify --data ROOT` first")
    df = read_report(path)
    for _, row in df.iterrows():
        if row.get("dataset"):
            confusion_from_row(plots_dir(str(row["dataset"]), artifacts) / confusion_name(row), row)
    regenerate_summary(artifacts)
    return format_report(df, fmt)
