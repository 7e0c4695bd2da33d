"""``alzmri classify`` / ``alzmri report``: train heads on cached features, save bundles, report, plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from classify.bundle import bundle_for, commit_bundle, discard_staged, remove_dead_staged, save_bundle, staged_path
from classify.evaluate import SELECTION, evaluate
from classify.heads import head_names
from classify.plots import confusion_from_row, confusion_name, summary_png
from classify.protocols import check_protocol
from classify.reliability import reliability_from_row, reliability_name
from classify.report import format_report, head_row, read_report, upsert_rows
from classify.tasks import apply_label_map
from featurize.cluster import on_cluster
from featurize.config import dataset_dir, features_dir, models_dir, report_path
from featurize.errors import AlzmriError, CacheError
from featurize.options import at_least

Log = Callable[[str], None]


def _stderr_log() -> Log:
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    return lambda msg: console.print(f"[yellow]warning:[/] {msg}", highlight=False)


def plots_dir(dataset_id: str, artifacts: str | os.PathLike[str] | None = None) -> Path:
    """Where a dataset's PNGs go: ``artifacts/<dataset-id>/plots``."""
    return dataset_dir(dataset_id, artifacts) / "plots"


def select_caches(data_root: str | os.PathLike[str], backbone: str = "all", *,
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


def regenerate_summary(artifacts: str | os.PathLike[str] | None = None, *, dataset: str | None = None) -> list[Path]:
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


@on_cluster
def classify_dataset(data_root: str | os.PathLike[str], *, backbone: str = "all",
                     heads: list[str] | tuple[str, ...] | str = ("logreg", "svm", "mlp"), protocol: str = "official",
                     artifacts: str | os.PathLike[str] | None = None, permutation: int = 0, n_jobs: int = 2,
                     seed: int = 0, by_subject: bool = False, progress: bool = True, task: str = "stages",
                     pca: int | None | str = "default", log: Log | None = None, layers: str = "all",
                     calibration: str = "none", conformal: float | None = None,
                     cluster: str | None = None, level: str = "slice", pooling: str = "meanstd",
                     inner_slices: int | None = None) -> pd.DataFrame:
    """Train and evaluate each head on each matching feature cache of ``data_root``.

    For each cache x head: evaluate under ``protocol`` (see classify.evaluate), save the signed bundle, upsert
    the report row, draw its confusion matrix; then redraw the dataset's summary chart. ``by_subject``
    requires subjects and draws subject-level confusion matrices (subject metrics are always in the row
    when subjects are known). ``task`` is a label map (``stages``, ``binary`` or ``A=x,B=y,*=z``). ``calibration``
    and ``conformal`` (a level) are fitted inside each training part (classify.calibration, classify.conformal).
    ``level`` ``subject`` trains on one row per subject, pooled by ``pooling`` (``classify.subject_level``), on the
    slice heads' outer folds; its bundles decide per person.
    Warnings go to ``log`` (default: stderr) and are also returned in ``df.attrs["warnings"]``; the written
    bundle and plot paths are in ``df.attrs["bundles"]`` and ``df.attrs["plots"]``.
    ``cluster`` (``local[:N]``, ``tcp://HOST:PORT``, ``scheduler-file:PATH``) runs the CV folds on Dask workers
    through joblib's Dask backend (``featurize.cluster.folds_on``). ``inner_slices``: slice heads grid-search on
    that many evenly spaced slices per subject, then refit on all (``classify.evaluate.evaluate``).
    """
    from featurize.dataset import dataset_id
    from featurize.progress import progress_bar
    from featurize.store import load

    log = log or _stderr_log()
    from classify.subject_level import SubjectPooling, check_level

    check_protocol(protocol)
    check_level(level)
    pool = SubjectPooling(pooling)
    names = head_names(heads)
    at_least("--n-jobs", n_jobs, 1)
    at_least("--permutation", permutation, 0)
    said: list[str] = []

    def warn(msg: str) -> None:
        if msg not in said:  # data-level notes repeat for every head: say each once
            said.append(msg)
            log(msg)

    caches = select_caches(data_root, backbone, artifacts=artifacts, layers=layers)
    ds_id = dataset_id(data_root)
    for p in remove_dead_staged(models_dir(ds_id, artifacts)):
        log(f"{p}: a bundle an interrupted classify saved before its report row; deleted")
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
                res = evaluate(fs, head, protocol=protocol, pca=pca, permutation=permutation, n_jobs=n_jobs, seed=seed,
                               calibration=calibration, conformal=conformal, level=level, pooling=pool,
                               inner_slices=inner_slices)
                for w in res.warnings:
                    warn(f"{fs.meta.get('backbone')}: {w}")
                path, bundle = bundle_for(fs, res, task=task_name, selection=SELECTION, artifacts=artifacts)
                row = head_row(fs, res, task=task_name, model_path=path)
                bundles.append(_save_with_row(path, bundle, row, report_path(artifacts)))
                rows.append(row)
                plot_row = dict(row, confusion=row["subject_confusion"]) if by_subject and row["subject_confusion"] else row
                png = confusion_from_row(plots_dir(ds_id, artifacts) / confusion_name(row), plot_row)
                if png is not None:
                    plots.append(png)
                plots += [p for p in [reliability_from_row(plots_dir(ds_id, artifacts) / reliability_name(row), row)] if p]
                advance(1)
    plots += regenerate_summary(artifacts, dataset=ds_id)
    df = pd.DataFrame(rows)
    df.attrs.update(warnings=said, bundles=bundles, plots=plots)
    return df


def _save_with_row(path: Path, bundle: Any, row: dict[str, Any], report: Path) -> Path:
    """Save a bundle and upsert its report row so that no bundle is ever in place without its row: the bundle
    is staged (hidden, signed), the row written, then the bundle renamed into place. Row by row, so an
    interrupted run keeps what finished. A full disk is one line (exit 4), and the old bundle and row stay."""
    staged = staged_path(path)
    try:
        try:
            save_bundle(staged, bundle, name=path.name)
            upsert_rows(report, [row])
        except BaseException:
            discard_staged(staged)
            raise
        return commit_bundle(staged, path)
    except OSError as exc:
        raise CacheError(f"{path.parent}: cannot write the model or report.csv ({exc.strerror or exc}); free disk "
                         "space and rerun: the previous models and report rows are intact") from None


def report_command(artifacts: str | os.PathLike[str] | None = None, *, fmt: str = "table", view: str = "rows") -> str:
    """Re-read report.csv, redraw every confusion matrix and summary chart, and return the formatted report
    (``view`` ``transfer``: the source-domain table of ``classify.transfer`` instead of the rows)."""
    from classify.transfer import VIEWS, format_transfer, transfer_table
    from featurize.options import choose

    choose("--view", view, VIEWS)
    path = report_path(artifacts)
    if not path.is_file():
        raise AlzmriError(f"{path}: no report yet; run `alzmri classify --data ROOT` first")
    df = read_report(path)
    if view == "transfer":
        return format_transfer(transfer_table(df), fmt)
    for _, row in df.iterrows():
        if row.get("dataset"):
            confusion_from_row(plots_dir(str(row["dataset"]), artifacts) / confusion_name(row), row)
            reliability_from_row(plots_dir(str(row["dataset"]), artifacts) / reliability_name(row), row)
    regenerate_summary(artifacts)
    return format_report(df, fmt)
