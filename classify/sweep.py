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
from featurize.naming import slug

Log = Callable[[str], None]
CRITERIA = ("balanced_accuracy", "subject_balanced_accuracy", "roc_auc", "subject_roc_auc")


@dataclass
class Candidate:
    """One evaluated combination (``level`` is the report's level value; ``inner_scores`` are those of the sweep's
    criterion)."""

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
    level: str = "slice"


@dataclass
class SweepResult:
    """All candidates of one task, the winner, and the nested estimate of the selection procedure (overall, with
    its 95% interval over subjects, and per level)."""

    task: str
    criterion: str
    candidates: list[Candidate]
    best: Candidate
    nested_score: float
    nested_choices: list[str]
    model_path: Path
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    nested_interval: dict[str, float] = field(default_factory=dict)
    by_level: dict[str, tuple[float, Candidate]] = field(default_factory=dict)
    seconds: float = 0.0


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


def _best_at(cands: list[Candidate], k: int) -> Candidate:
    return max(cands, key=lambda c: (c.inner_scores[k] if np.isfinite(c.inner_scores[k]) else -np.inf))


def nested_estimate(cands: list[Candidate]) -> tuple[float, list[str]]:
    """Per outer fold, pick the candidate with the best inner score and take its outer score; average over folds."""
    n_folds = min(len(c.fold_scores) for c in cands)
    picks, scores = [], []
    for k in range(n_folds):
        best = _best_at(cands, k)
        picks.append(label(best))
        scores.append(best.fold_scores[k])
    return float(np.nanmean(scores)), picks


def nested_interval(cands: list[Candidate], *, seed: int = 0) -> dict[str, float]:
    """95% bootstrap intervals over subjects of the nested estimate's decisions: each outer fold's held-out
    subjects as decided by that fold's inner-CV pick (all candidates share the outer folds, so every subject is
    decided once). Empty when the candidates carry no subject-level out-of-fold decisions."""
    from classify.intervals import bootstrap_subjects

    if not cands or any(c.result is None or c.result.subject_oof is None for c in cands):
        return {}
    n_folds = min(len(c.fold_scores) for c in cands)
    ys, ss = [], []
    for k in range(n_folds):
        oof = _best_at(cands, k).result.subject_oof
        ys.append(oof.y[oof.fold == k])
        ss.append(oof.scores[oof.fold == k])
    return bootstrap_subjects(np.concatenate(ys), np.concatenate(ss), None, seed=seed)


def label(c: Candidate) -> str:
    """A short name of a combination."""
    lvl = "" if c.level == "slice" else f"/{c.level}"
    return f"{c.backbone}({c.weights})/{c.layers}/{c.head}{lvl}"


def check_criterion(criterion: str | None, levels: list[str]) -> str:
    """The criterion, defaulting to the subject-level balanced accuracy when subject-level heads take part (a
    slice-level score does not exist for them; comparing it with theirs would mix units), else the slice one."""
    from classify.subject_level import check_level
    from featurize.options import choose

    for lv in levels:
        check_level(lv)
    if criterion is None:
        return "subject_balanced_accuracy" if "subject" in levels else "balanced_accuracy"
    choose("--criterion", criterion, CRITERIA)
    if "subject" in levels and not criterion.startswith("subject_"):
        raise AlzmriError(f"--criterion {criterion} scores slices, and subject-level heads have none; with --level "
                          "subject use subject_balanced_accuracy or subject_roc_auc")
    return criterion


@on_cluster
def run_sweep(data: str | os.PathLike[str], *, backbones: list[str], layers: list[str], heads: list[str], tasks: list[str],
              weights: str = "imagenet", image_size: str | None = None, criterion: str | None = None,
              artifacts: str | os.PathLike[str] | None = None, n_jobs: int = 2, seed: int = 0, batch_size: int = 32,
              progress: bool = True, log: Log = lambda s: None, levels: list[str] = ("slice",),  # type: ignore[assignment]
              poolings: list[str] = ("meanstd",), fuse: str | None = None, calibration: str = "none",  # type: ignore[assignment]
              cluster: str | None = None, inner_slices: int | None = None) -> list[SweepResult]:
    """Featurize what is missing (one pass per backbone), evaluate every combination under subject-cv,
    write every row to report.csv, and refit + save the winner of each task for ``predict``
    (see ``sweep_caches`` for ``levels``, ``poolings``, ``fuse`` and ``calibration``). ``cluster`` runs the
    featurize pass and the CV folds on one Dask cluster (``featurize.cluster``)."""
    from featurize.run import featurize_layers

    criterion = check_criterion(criterion, list(levels))
    wmap = parse_weights(weights, backbones)
    caches: list[Path] = []
    for b in backbones:
        log(f"featurize {b} ({wmap[b]}), layers {', '.join(layers)}: computing only what is not cached")
        for res in featurize_layers(data, backbone=b, weights=wmap[b], image_size=image_size, layer_choices=layers,
                                    subjects="auto", artifacts=artifacts, progress=progress, log=log, batch_size=batch_size,
                                    cluster=cluster):
            caches.append(res.cache)
    return sweep_caches(data, caches, heads=heads, tasks=tasks, criterion=criterion, artifacts=artifacts, n_jobs=n_jobs,
                        seed=seed, progress=progress, log=log, levels=levels, poolings=poolings, fuse=fuse,
                        default_layers=layers[0] if layers else "last", calibration=calibration,
                        inner_slices=inner_slices)


def _fused_sets(spec: str, loaded: list[Any], default_layers: str) -> list[Any]:
    """The fused FeatureSets of ``--fuse`` from the loaded caches (parts matched by backbone and layer choice)."""
    from classify.fusion import fuse, parse_fuse
    from featurize.backbones import get_backbone, layers_tag, resolve_layers

    out = []
    for group in parse_fuse(spec):
        parts = []
        for name, choice in group:
            tag = layers_tag(resolve_layers(get_backbone(name), choice or default_layers))
            hits = [fs for fs in loaded if fs.meta.get("backbone") == name and fs.meta.get("layers") == tag]
            if not hits:
                raise AlzmriError(f"--fuse {name}:{choice or default_layers}: no such cache in this sweep; add {name} to "
                                  f"--backbones and {choice or default_layers} to --layers")
            parts.append(hits[0])
        out.append(fuse(parts))
    return out


def sweep_caches(data: str | os.PathLike[str], caches: list[Path], *, heads: list[str], tasks: list[str],
                 criterion: str | None = None, artifacts: str | os.PathLike[str] | None = None, n_jobs: int = 2,
                 seed: int = 0, progress: bool = True, log: Log = lambda s: None,
                 levels: list[str] = ("slice",), poolings: list[str] = ("meanstd",),  # type: ignore[assignment]
                 fuse: str | None = None, default_layers: str = "last", calibration: str = "none",
                 inner_slices: int | None = None) -> list[SweepResult]:
    """Evaluate every cache (and every ``fuse`` fusion, ``classify.fusion``) x head x level (x pooling at subject
    level) under subject-cv on the same outer folds; write the rows; save each task's winner (slice, subject or
    fused) for ``predict``; return the ranked candidates, the nested estimate with its interval, and per level.
    ``inner_slices``: slice heads grid-search on that many slices per subject, then refit on all."""
    from classify.bundle import bundle_for, save_bundle
    from classify.evaluate import evaluate
    from classify.heads import head_names
    from classify.report import head_row, upsert_rows
    from classify.subject_level import SubjectPooling, level_name
    from classify.tasks import apply_label_map
    from featurize.config import dataset_dir, report_path
    from featurize.dataset import dataset_id
    from featurize.progress import progress_bar
    from featurize.store import load

    levels = list(dict.fromkeys(levels))
    criterion = check_criterion(criterion, levels)
    heads = head_names(heads)
    pools = [SubjectPooling(p) for p in dict.fromkeys(poolings)]
    variants = [(lv, p) for lv in levels for p in ([pools[0]] if lv == "slice" else pools)]
    ds_id = dataset_id(data)
    base = [load(c) for c in caches]
    sets = base + (_fused_sets(fuse, base, default_layers) if fuse else [])
    results = []
    for task in tasks:
        cands: list[Candidate] = []
        t0 = time.perf_counter()
        with progress_bar(len(sets) * len(heads) * len(variants), f"sweep {task}", enabled=progress, unit="model") as advance:
            for raw in sets:
                fs, task_name = apply_label_map(raw, task)
                fs.meta["dataset_id"] = ds_id
                if not fs.has_subjects:
                    raise AlzmriError(f"{fs.meta.get('cache_path')}: the sweep evaluates by subject and needs subjects; "
                                      f"run `alzmri subjects --data {data}`")
                for head in heads:
                    for lv, pool in variants:
                        res = evaluate(fs, head, protocol="subject-cv", n_jobs=n_jobs, seed=seed, level=lv, pooling=pool,
                                       calibration=calibration, inner_slices=inner_slices)
                        row = head_row(fs, res, task=task_name, model_path=None, selection=f"sweep subject-cv {criterion}")
                        upsert_rows(report_path(artifacts), [row])
                        fold = [float(m.get(criterion, np.nan)) for m in res.fold_metrics]
                        cands.append(Candidate(backbone=str(fs.meta["backbone"]), weights=str(fs.meta["weights"]),
                                               layers=str(fs.meta["layers"]), task=task_name, head=head,
                                               score=float(res.metrics.get(criterion, np.nan)), fold_scores=fold,
                                               inner_scores=list(res.fold_inner[criterion]), row=row, result=res, fs=fs,
                                               level=level_name(lv, pool)))
                        log(f"{label(cands[-1])}: {criterion} {cands[-1].score:.3f} ({res.fit_seconds:.0f} s)")
                        advance(1)
        ranked = sorted(cands, key=lambda c: -np.nan_to_num(c.score, nan=-1))
        best = ranked[0]
        nested, picks = nested_estimate(cands)
        by_level = {}
        for lv in levels:
            mine = [c for c in cands if (c.level == "slice") == (lv == "slice")]
            by_level[lv] = (nested_estimate(mine)[0], max(mine, key=lambda c: np.nan_to_num(c.score, nan=-1)))
        selection = (f"sweep winner by mean subject-cv {criterion} over {len(cands)} combinations; "
                     f"nested estimate of the selection {nested:.3f}")
        path, bundle = bundle_for(best.fs, best.result, task=best.task, selection=selection, artifacts=artifacts)
        save_bundle(path, bundle)
        # the winner's weights are in the name: sweeps over other weights sources keep their own winners
        best_copy = path.with_name(f"sweep-best__{path.stem.split('__')[0]}__{slug(best.weights)}__"
                                   f"{best.task.replace(':', '-')}.joblib")
        save_bundle(best_copy, bundle)
        table = sweep_table(ranked)
        out_csv = dataset_dir(ds_id, artifacts) / f"sweep_{task.replace(':', '-').replace('/', '_')}.csv"
        with atomic_path(out_csv) as tmp:
            table.to_csv(tmp, index=False)
        seconds = time.perf_counter() - t0
        log(f"sweep {task}: {len(cands)} combinations in {seconds:.0f} s; table {out_csv}")
        results.append(SweepResult(task=task, criterion=criterion, candidates=ranked, best=best, nested_score=nested,
                                   nested_choices=picks, model_path=best_copy, table=table,
                                   nested_interval=nested_interval(cands, seed=seed), by_level=by_level, seconds=seconds))
    return results


def sweep_table(ranked: list[Candidate]) -> pd.DataFrame:
    """Slice- and subject-level scores of every combination, best first (subject-level intervals beside them)."""
    keys = ("balanced_accuracy", "balanced_accuracy_std", "roc_auc", "subject_balanced_accuracy",
            "subject_balanced_accuracy_std", "subject_balanced_accuracy_lo", "subject_balanced_accuracy_hi",
            "subject_roc_auc", "fit_seconds")
    rows = [{"backbone": c.backbone, "weights": c.weights, "layers": c.layers, "head": c.head, "level": c.level,
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
             f"nested estimate of 'run the sweep, use its winner': {res.nested_score:.3f}{_ci(res.nested_interval, res.criterion)} "
             f"(per fold, the combination with the best inner-CV score: {', '.join(dict.fromkeys(res.nested_choices))})"]
    for lv, (nested, top) in res.by_level.items():
        lines.append(f"best {lv}-level: {label(top)} {res.criterion} {top.score:.3f}{_ci(top.row, res.criterion)}; "
                     f"nested estimate within {lv} level {nested:.3f}")
    if {"slice", "subject"} <= set(res.by_level):
        (n_sl, b_sl), (n_su, b_su) = res.by_level["slice"], res.by_level["subject"]
        lines.append(f"gap subject - slice: {100 * (b_su.score - b_sl.score):+.1f} points between the best "
                     f"configurations, {100 * (n_su - n_sl):+.1f} points between the nested estimates")
    lines.append(f"saved for predict: {res.model_path}")
    return "\n".join(lines)


def _ci(source: dict[str, Any], metric: str) -> str:
    lo, hi = source.get(f"{metric}_lo"), source.get(f"{metric}_hi")
    try:
        ok = np.isfinite(float(lo)) and np.isfinite(float(hi))
    except (TypeError, ValueError):
        ok = False
    return f" [95% CI {float(lo):.3f}, {float(hi):.3f}]" if ok else ""


def _split(text: str, sep: str) -> list[str]:
    return [t.strip() for t in text.split(sep) if t.strip()]


def sweep_lists(*, backbones: str, layers: str, heads: str, tasks: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """The command line's lists for ``run_sweep``: backbones and heads split on commas; layer choices on ``;`` when
    there is one (a choice may be ``LAYER,LAYER``), else on commas; tasks on ``;`` when there is one or a label map
    (``A=x,B=y`` has commas of its own), else on commas."""
    task_sep = ";" if ";" in tasks or "=" in tasks else ","
    return (_split(backbones, ","), _split(layers, ";" if ";" in layers else ","), _split(heads, ","),
            _split(tasks, task_sep))
