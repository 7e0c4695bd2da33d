"""``alzmri sweep``: evaluate backbones x layers x heads x tasks under subject-cv, and select honestly.

Every combination is scored with the same outer StratifiedGroupKFold folds (by subject). Picking the best of
many combinations by those outer scores would itself overfit the folds, so the sweep also reports a **nested**
estimate of the whole procedure: in each outer fold, the combination with the best *inner* (training-part only)
CV score is chosen, and its score on that fold's held-out subjects is what counts. That estimate is the honest
number for "run the sweep, deploy its winner"; the winner's own outer score is shown beside it, labelled.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from featurize.atomic import atomic_path
from featurize.cluster import on_cluster
from featurize.errors import AlzmriError

Log = Callable[[str], None]
CRITERIA = ("balanced_accuracy", "subject_balanced_accuracy", "roc_auc", "subject_roc_auc")


@dataclass
class Candidate:
    """One evaluated combination."""

    backbone: str
    weights: str
    layers: str
    task: str
    head: str
    score: float
    fold_scores: list[float]
    inner_scores: list[float]
    row: dict[str, Any]
    result: Any = None
    fs: Any = None


@dataclass
class SweepResult:
    """All candidates of one task, the winner, and the nested estimate of the selection procedure."""

    task: str
    criterion: str
    candidates: list[Candidate]
    best: Candidate
    nested_score: float
    nested_choices: list[str]
    model_path: Path
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


def parse_weights(spec: str, backbones: list[str]) -> dict[str, str]:
    """``imagenet``, ``none`` or ``PATH`` for all, or ``name=weights,...,*=weights`` per backbone."""
    if "=" not in spec:
        return {b: spec for b in backbones}
    pairs = dict(item.split("=", 1) for item in spec.split(",") if item.strip())
    out = {}
    for b in backbones:
        if b in pairs:
            out[b] = pairs[b]
        elif "*" in pairs:
            out[b] = pairs["*"]
        else:
            raise AlzmriError(f"--weights {spec!r} does not say which weights {b} uses; add {b}=imagenet|none or *=...")
    return out


def nested_estimate(cands: list[Candidate]) -> tuple[float, list[str]]:
    """Per outer fold, pick the candidate with the best inner score and take its outer score; average over folds."""
    n_folds = min(len(c.fold_scores) for c in cands)
    picks, scores = [], []
    for k in range(n_folds):
        best = max(cands, key=lambda c: (c.inner_scores[k] if np.isfinite(c.inner_scores[k]) else -np.inf))
        picks.append(label(best))
        scores.append(best.fold_scores[k])
    return float(np.nanmean(scores)), picks


def label(c: Candidate) -> str:
    """A short name of a combination."""
    return f"{c.backbone}({c.weights})/{c.layers}/{c.head}"


@on_cluster
def run_sweep(data: str | os.PathLike[str], *, backbones: list[str], layers: list[str], heads: list[str], tasks: list[str],
              weights: str = "imagenet", image_size: str | None = None, criterion: str = "balanced_accuracy",
              artifacts: str | os.PathLike[str] | None = None, n_jobs: int = 2, seed: int = 0, batch_size: int = 32,
              progress: bool = True, log: Log = lambda s: None, calibration: str = "none",
              cluster: str | None = None) -> list[SweepResult]:
    """Featurize what is missing (one pass per backbone), evaluate every combination under subject-cv,
    write every row to report.csv, and refit + save the winner of each task for ``predict``.
    ``cluster`` runs the featurize pass and the CV folds on one Dask cluster (``featurize.cluster``)."""
    from classify.bundle import bundle_for, save_bundle
    from classify.evaluate import evaluate
    from classify.heads import head_names
    from classify.report import head_row, upsert_rows
    from classify.tasks import apply_label_map
    from featurize.config import dataset_dir, report_path
    from featurize.dataset import dataset_id
    from featurize.options import choose
    from featurize.progress import progress_bar
    from featurize.run import featurize_layers
    from featurize.store import load

    choose("--criterion", criterion, CRITERIA)
    heads = head_names(heads)
    wmap = parse_weights(weights, backbones)
    ds_id = dataset_id(data)
    caches: list[Path] = []
    for b in backbones:
        log(f"featurize {b} ({wmap[b]}), layers {', '.join(layers)}: computing only what is not cached")
        for res in featurize_layers(data, backbone=b, weights=wmap[b], image_size=image_size, layer_choices=layers,
                                    subjects="auto", artifacts=artifacts, progress=progress, log=log, batch_size=batch_size,
                                    cluster=cluster):
            caches.append(res.cache)
    results = []
    for task in tasks:
        cands: list[Candidate] = []
        t0 = time.perf_counter()
        with progress_bar(len(caches) * len(heads), f"sweep {task}", enabled=progress, unit="model") as advance:
            for cache in caches:
                fs, task_name = apply_label_map(load(cache), task)
                fs.meta["dataset_id"] = ds_id
                if not fs.has_subjects:
                    raise AlzmriError(f"{cache}: the sweep evaluates by subject and needs subjects; run `alzmri subjects --data {data}`")
                for head in heads:
                    res = evaluate(fs, head, protocol="subject-cv", n_jobs=n_jobs, seed=seed, calibration=calibration)
                    row = head_row(fs, res, task=task_name, model_path=None, selection=f"sweep subject-cv {criterion}")
                    upsert_rows(report_path(artifacts), [row])
                    fold = [float(m.get(criterion, np.nan)) for m in res.fold_metrics]
                    cands.append(Candidate(backbone=str(fs.meta["backbone"]), weights=str(fs.meta["weights"]),
                                           layers=str(fs.meta["layers"]), task=task_name, head=head,
                                           score=float(res.metrics.get(criterion, np.nan)), fold_scores=fold,
                                           inner_scores=list(res.fold_inner_scores), row=row, result=res, fs=fs))
                    advance(1)
        ranked = sorted(cands, key=lambda c: -np.nan_to_num(c.score, nan=-1))
        best = ranked[0]
        nested, picks = nested_estimate(cands)
        selection = (f"sweep winner by mean subject-cv {criterion} over {len(cands)} combinations; "
                     f"nested estimate of the selection {nested:.3f}")
        path, bundle = bundle_for(best.fs, best.result, task=best.task, selection=selection, artifacts=artifacts)
        save_bundle(path, bundle)
        best_copy = path.with_name(f"sweep-best__{path.stem.split('__')[0]}__{best.task.replace(':', '-')}.joblib")
        save_bundle(best_copy, bundle)
        table = sweep_table(ranked)
        out_csv = dataset_dir(ds_id, artifacts) / f"sweep_{task.replace(':', '-').replace('/', '_')}.csv"
        with atomic_path(out_csv) as tmp:
            table.to_csv(tmp, index=False)
        log(f"sweep {task}: {len(cands)} combinations in {time.perf_counter() - t0:.0f} s; table {out_csv}")
        results.append(SweepResult(task=task, criterion=criterion, candidates=ranked, best=best, nested_score=nested,
                                   nested_choices=picks, model_path=best_copy, table=table))
    return results


def sweep_table(ranked: list[Candidate]) -> pd.DataFrame:
    """Slice- and subject-level scores of every combination, best first."""
    keys = ("balanced_accuracy", "balanced_accuracy_std", "roc_auc", "subject_balanced_accuracy",
            "subject_balanced_accuracy_std", "subject_roc_auc", "fit_seconds")
    rows = [{"backbone": c.backbone, "weights": c.weights, "layers": c.layers, "head": c.head,
             **{k: c.row.get(k) for k in keys}} for c in ranked]
    return pd.DataFrame(rows)


def format_sweep(res: SweepResult, *, top: int = 10) -> str:
    """The top rows, the winner and the nested estimate, in words."""
    t = res.table.head(top).copy()
    for col in t.columns:
        if t[col].dtype.kind == "f":
            t[col] = t[col].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    chance = 1.0 / len(res.best.fs.class_names)
    lines = [f"== task {res.task}: top {min(top, len(res.table))} of {len(res.table)} by mean subject-cv {res.criterion} "
             f"(chance {chance:.2f}) ==", t.to_string(index=False),
             f"winner: {label(res.best)}  {res.criterion} {res.best.score:.3f} (outer-CV score of the winner: optimistic, it was picked by it)",
             f"nested estimate of 'run the sweep, use its winner': {res.nested_score:.3f} "
             f"(per fold, the combination with the best inner-CV score: {', '.join(dict.fromkeys(res.nested_choices))})",
             f"saved for predict: {res.model_path}"]
    return "\n".join(lines)


def _split(text: str, sep: str) -> list[str]:
    return [t.strip() for t in text.split(sep) if t.strip()]


def sweep_lists(*, backbones: str, layers: str, heads: str, tasks: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """The command line's lists for ``run_sweep``: backbones and heads split on commas; layer choices on ``;`` when
    there is one (a choice may be ``LAYER,LAYER``), else on commas; tasks on ``;`` when there is one or a label map
    (``A=x,B=y`` has commas of its own), else on commas."""
    task_sep = ";" if ";" in tasks or "=" in tasks else ","
    return (_split(backbones, ","), _split(layers, ";" if ";" in layers else ","), _split(heads, ","),
            _split(tasks, task_sep))
