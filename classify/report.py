"""``report.csv``: one row per (dataset, backbone, weights, layers, features, task, head, protocol, level), upserted
atomically.

``level`` is ``slice`` (a head on slice rows; CNNs too) or ``subject-<pooling>`` (a head on one pooled row per subject,
``classify.subject_level``). Rows written before the column existed read as ``slice``: they were all slice heads.

``features`` names the input settings of the cache when they differ from the backbone's defaults (image size,
pooling, resize, precision; see ``featurize.store.variant_tag``), and is empty otherwise.

Several commands (classify, baseline, sweep) and several processes write the same file, so every upsert
is a locked read-modify-write followed by an atomic replace; unknown columns are kept, never dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from featurize.atomic import atomic_path
from featurize.errors import AlzmriError, CacheError
from featurize.options import choose

if TYPE_CHECKING:
    from classify.evaluate import EvalResult
    from featurize.featureset import FeatureSet

# ``calibration`` is "" for uncalibrated heads (as in reports written before it existed), else sigmoid|isotonic.
KEY = ("dataset", "backbone", "weights", "layers", "features", "task", "head", "protocol", "level", "calibration")
KEY_DEFAULTS = {"level": "slice"}  # the value of a key column in rows written before it existed
COLUMNS = KEY + (
    "n_train", "n_test", "accuracy", "accuracy_std", "balanced_accuracy", "balanced_accuracy_std", "macro_f1",
    "macro_f1_std", "roc_auc", "roc_auc_std", "subject_accuracy", "subject_accuracy_std", "subject_balanced_accuracy",
    "subject_balanced_accuracy_std", "subject_roc_auc", "subject_roc_auc_std", "subject_accuracy_lo",
    "subject_accuracy_hi", "subject_balanced_accuracy_lo", "subject_balanced_accuracy_hi", "subject_roc_auc_lo",
    "subject_roc_auc_hi", "interval_subjects", "subject_pooling", "n_splits", "subjects_per_class",
    "leakage", "chance_balanced_accuracy", "permutation_p", "best_params", "selection", "pca", "fit_seconds",
    "predict_seconds", "featurize_images_per_s", "epochs", "class_names", "confusion", "subject_confusion",
    "fingerprint", "model_path", "created",
    # calibration and conformal sets (classify.calibration, classify.conformal)
    "brier", "brier_std", "ece", "ece_std", "subject_brier", "subject_brier_std", "subject_ece", "subject_ece_std",
    "reliability", "conformal_level", "coverage", "coverage_std", "set_size", "set_size_std",
)
FORMATS = ("table", "csv", "markdown", "json")
# The compact view: (column, header) pairs shown by the table/markdown formats when present.
COMPACT = (("dataset", "dataset"), ("backbone", "backbone"), ("weights", "weights"), ("layers", "layers"),
           ("features", "features"), ("task", "task"), ("head", "head"), ("protocol", "protocol"),
           ("calibration", "calib"), ("n_train", "n_train"), ("n_test", "n_test"),
           ("balanced_accuracy", "bal_acc"), ("macro_f1", "macro_f1"), ("roc_auc", "auc"),
           ("level", "level"), ("subject_balanced_accuracy", "subj_bal_acc"), ("subject_balanced_accuracy_lo", "95% CI"),
           ("leakage", "leak"), ("chance_balanced_accuracy", "chance"),
           ("permutation_p", "perm_p"), ("ece", "ece"), ("subject_ece", "subj_ece"), ("coverage", "coverage"),
           ("set_size", "set_size"), ("fit_seconds", "fit_s"))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # A sidecar lock file (never replaced) serialises writers; the CSV itself is swapped atomically.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean(v: Any) -> Any:
    """Plain CSV-friendly scalar: numpy scalars unwrapped, NaN/None -> NaN, containers -> JSON."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    if isinstance(v, np.ndarray):
        return json.dumps(v.tolist())
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return np.nan
    return v


def _key_frame(df: pd.DataFrame) -> pd.DataFrame:
    for k in KEY:
        if k not in df.columns:
            df[k] = ""
        df[k] = df[k].astype(object).where(df[k].notna(), "").astype(str)
        if k in KEY_DEFAULTS:
            df[k] = df[k].where(df[k] != "", KEY_DEFAULTS[k])
    return df


def read_report(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The report as a DataFrame (empty, with the standard columns, when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=list(COLUMNS))
    try:
        df = pd.read_csv(path, dtype={k: str for k in KEY}, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AlzmriError(f"{path}: unreadable report ({str(exc).splitlines()[0]}); move it aside and rerun") from None
    return _key_frame(df)


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    # Standard columns first (in COLUMNS order), then per-class precision/recall, then anything new.
    known = [c for c in COLUMNS if c in df.columns]
    per_class = [c for c in df.columns if c.startswith(("recall_", "precision_")) and c not in known]
    rest = [c for c in df.columns if c not in known and c not in per_class]
    return df[known + per_class + rest]


def upsert_rows(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Insert or replace rows by KEY (a later row with the same key wins) and rewrite the CSV atomically.

    Missing key fields are stored as "". Returns the whole report after the write.
    """
    path = Path(path)
    new = _key_frame(pd.DataFrame([{k: _clean(v) for k, v in r.items()} for r in rows]))
    with _locked(path):
        old = read_report(path)
        frames = [f for f in (old, new) if len(f)]
        df = pd.concat(frames, ignore_index=True) if frames else new
        df = df.drop_duplicates(subset=list(KEY), keep="last").reset_index(drop=True)
        df = _ordered(df)
        try:
            with atomic_path(path) as tmp:
                df.to_csv(tmp, index=False)
        except OSError as exc:
            raise CacheError(f"{path}: cannot write the report ({exc.strerror or exc}); free disk space and rerun: "
                             "the report is unchanged") from None
    return df


# ------------------------------------------------------------------ rows

def _fmt_spc(spc: Mapping[str, int] | None) -> str:
    return "" if not spc else ";".join(f"{c}:{k}" for c, k in spc.items())


def make_row(*, dataset: str, backbone: str, weights: str, layers: str, features: str, task: str, head: str,
             protocol: str, n_train: int, n_test: int, metrics: Mapping[str, float], std: Mapping[str, float],
             n_splits: int, subjects_per_class: Mapping[str, int] | None, leakage: int | None,
             best_params: Mapping[str, Any], selection: str, fit_seconds: float, predict_seconds: float,
             class_names: Sequence[str], confusion: Any, subject_confusion: Any | None, fingerprint: str,
             model_path: str | os.PathLike[str] | None, pca: int | None = None,
             chance_balanced_accuracy: float | None = None, permutation_p: float | None = None,
             featurize_images_per_s: float | None = None, epochs: float | None = None, level: str = "slice",
             intervals: Mapping[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """The report.csv row of one evaluation, for heads and end-to-end CNNs alike (one schema, see COLUMNS).

    Metric means come in ``metrics``, across-fold spreads in ``std`` (stored as ``<metric>_std``; per-class
    precision/recall spreads are left out). ``intervals`` are the bootstrap columns of ``classify.intervals``.
    ``extra`` columns follow ``created`` (the CNNs add ``image_size``).
    """
    row: dict[str, Any] = {
        "dataset": dataset, "backbone": backbone, "weights": weights, "layers": layers, "features": features,
        "task": task, "head": head, "protocol": protocol, "level": level, "n_train": n_train, "n_test": n_test,
    }
    row.update(metrics)
    row.update(intervals or {})
    # per-class spreads would double the width for little
    row.update({f"{k}_std": v for k, v in std.items() if not k.startswith(("precision_", "recall_"))})
    row.update({
        "n_splits": n_splits, "subjects_per_class": _fmt_spc(subjects_per_class), "leakage": leakage,
        "chance_balanced_accuracy": chance_balanced_accuracy, "permutation_p": permutation_p,
        "best_params": json.dumps(best_params, default=str, sort_keys=True), "selection": selection,
        "pca": pca, "fit_seconds": round(fit_seconds, 3), "predict_seconds": round(predict_seconds, 4),
        "featurize_images_per_s": featurize_images_per_s, "epochs": epochs,
        "class_names": json.dumps(list(class_names)), "confusion": json.dumps(np.asarray(confusion).tolist()),
        "subject_confusion": "" if subject_confusion is None else json.dumps(np.asarray(subject_confusion).tolist()),
        "fingerprint": fingerprint, "model_path": str(model_path or ""),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    row.update(extra)
    return row


def head_row(fs: FeatureSet, res: EvalResult, *, task: str, model_path: str | os.PathLike[str] | None,
             selection: str | None = None) -> dict[str, Any]:
    """``make_row`` for a head evaluated on a feature cache (``selection`` defaults to the grid-search score)."""
    from classify.evaluate import SELECTION
    from featurize.store import variant_tag

    m = fs.meta
    return make_row(
        dataset=m.get("dataset_id", ""), backbone=m.get("backbone", ""), weights=m.get("weights", ""),
        layers=m.get("layers", ""), features=m["fused_features"] if "fused_parts" in m else variant_tag(m), task=task, head=res.head, protocol=res.protocol,
        n_train=res.n_train, n_test=res.n_test, metrics=res.metrics, std=res.std, n_splits=res.n_splits,
        subjects_per_class=res.subjects_per_class, leakage=res.leakage, best_params=res.best_params,
        selection=(selection or SELECTION) + (f"; grid on {res.inner_slices} slices/subject" if res.inner_slices else ""),
        fit_seconds=res.fit_seconds, predict_seconds=res.predict_seconds,
        class_names=res.class_names, confusion=res.confusion, subject_confusion=res.subject_confusion,
        fingerprint=m.get("fingerprint", ""), model_path=model_path, pca=res.pca,
        chance_balanced_accuracy=res.chance_balanced_accuracy, permutation_p=res.permutation_p,
        featurize_images_per_s=m.get("featurize_images_per_s"), level=res.level, intervals=res.intervals,
        subject_pooling=res.pooling.describe() if res.pooling is not None else "", **trust_columns(res))


def trust_columns(res: EvalResult) -> dict[str, Any]:
    """The calibration key, pooled reliability bins, and the chosen conformal level's coverage and set size."""
    from classify.calibration import bins_json
    from classify.conformal import level_tag

    out: dict[str, Any] = {"calibration": "" if res.calibration == "none" else res.calibration,
                           "reliability": bins_json(res.reliability)}
    if res.conformal is not None:
        tag = level_tag(res.conformal.level)
        out.update(conformal_level=res.conformal.level, coverage=res.metrics.get(f"coverage_{tag}"),
                   set_size=res.metrics.get(f"set_size_{tag}"), coverage_std=res.std.get(f"coverage_{tag}"),
                   set_size_std=res.std.get(f"set_size_{tag}"))
    return out


# ------------------------------------------------------------------ formatting

def _num(v: Any, std: Any = None, digits: int = 3) -> str:
    """A number with ``digits`` decimals, "±std" when a std is given; "" for missing."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "" if v is None else str(v)
    if math.isnan(f):
        return ""
    try:
        sd = float(std)
    except (TypeError, ValueError):
        sd = float("nan")
    return f"{f:.{digits}f}" + (f"±{sd:.{digits}f}" if not math.isnan(sd) else "")


def interval(lo: Any, hi: Any, digits: int = 2) -> str:
    """``[lo, hi]`` with ``digits`` decimals; "" when either end is missing."""
    a, b = _num(lo, digits=digits), _num(hi, digits=digits)
    return f"[{a}, {b}]" if a and b else ""


def _compact(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    df = df.copy()
    if "balanced_accuracy" in df.columns:
        df["_sort"] = pd.to_numeric(df["balanced_accuracy"], errors="coerce")
        df = df.sort_values("_sort", ascending=False, na_position="last", kind="stable")
    # Columns that are the same on every row (one dataset, default layers) are noise in a terminal table.
    # Weights always show: a random-init row must never pass for transfer learning.
    cols = [(c, h) for c, h in COMPACT if c in df.columns and df[c].notna().any()
            and not (c in ("dataset", "layers", "features", "task", "level", "calibration")
                     and df[c].nunique(dropna=False) <= 1 and len(df) > 1)]
    body = []
    for _, r in df.iterrows():
        line = []
        for c, _h in cols:
            if c in ("fit_seconds",):
                line.append(_num(r[c], digits=1))
            elif c in ("n_train", "n_test", "leakage"):
                line.append(_num(r[c], digits=0))
            elif c == "permutation_p":
                line.append(_num(r[c], digits=3))
            elif c in ("balanced_accuracy", "macro_f1", "roc_auc", "subject_balanced_accuracy", "chance_balanced_accuracy",
                       "ece", "subject_ece", "coverage", "set_size"):
                line.append(_num(r[c], r.get(f"{c}_std")))
            elif c == "subject_balanced_accuracy_lo":
                line.append(interval(r[c], r.get("subject_balanced_accuracy_hi")))
            else:
                line.append("" if pd.isna(r[c]) else str(r[c]))
        body.append(line)
    return [h for _, h in cols], body


def format_report(df: pd.DataFrame, fmt: str = "table") -> str:
    """Render the report: ``table`` (rich, best balanced accuracy first, compact columns), ``markdown``
    (same columns), ``csv`` or ``json`` (all columns)."""
    choose("report format", fmt, FORMATS)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", indent=2)
    headers, body = _compact(df)
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
        return "\n".join(lines)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"alzmri report ({len(df)} rows; bal_acc = balanced accuracy, ± = std over folds, "
                        "95% CI = bootstrap over subjects)",
                  show_lines=False, pad_edge=False)
    numeric = {"n_train", "n_test", "bal_acc", "macro_f1", "auc", "subj_bal_acc", "95% CI", "leak", "chance", "perm_p",
               "fit_s", "ece", "subj_ece", "coverage", "set_size"}
    for h in headers:
        table.add_column(h, justify="right" if h in numeric else "left", no_wrap=True)
    for row in body:
        table.add_row(*row)
    buf = io.StringIO()
    Console(file=buf, width=250, force_terminal=False, color_system=None).print(table)
    return buf.getvalue().rstrip("\n")
