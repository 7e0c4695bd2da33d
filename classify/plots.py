"""PNG plots: a confusion matrix per report row, and a balanced-accuracy summary per dataset.

Rendering uses matplotlib's Agg backend (no display needed) through the object API, so it never touches
pyplot's global state; every PNG is written to a temp file and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from featurize.atomic import atomic_path
from featurize.errors import CacheError
from featurize.naming import slug

PROTOCOL_HATCH = {"official": "", "subject-cv": "//", "slice-cv": ".."}
HEAD_ORDER = ("logreg", "svm", "mlp")


def _save(fig: Figure, path: Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            FigureCanvasAgg(fig)
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    except OSError as exc:  # models and report rows are written before any plot
        raise CacheError(f"{path}: cannot write the plot ({exc.strerror or exc}); free disk space and run "
                         "`alzmri report` to redraw it (models and report rows are saved)") from None
    return path


def confusion_png(path: str | os.PathLike[str], cm: np.ndarray, class_names: list[str], title: str = "") -> Path:
    """Confusion matrix (rows = true, columns = predicted, in ``class_names`` order): colour = row-normalised
    share, text = count and share."""
    cm = np.asarray(cm, dtype=float)
    n = len(class_names)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = 2.2 + 1.1 * n
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.55 else "black")
    ax.set_xticks(range(n), labels=class_names, rotation=35, ha="right")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, Path(path))


def confusion_name(row: dict[str, Any] | pd.Series) -> str:
    """File name of a report row's confusion matrix PNG."""
    # features, level and calibration join the name only when not the default, so older names stay as they were
    parts = [row.get(k, "") for k in ("backbone", "weights", "layers", "features", "task", "head", "protocol", "level",
                                      "calibration")
             if k not in ("features", "level", "calibration") or str(row.get(k, "") or "") not in ("", "nan", "slice")]
    return "confusion__" + "__".join(slug(p) for p in parts) + ".png"


def confusion_from_row(path: str | os.PathLike[str], row: dict[str, Any] | pd.Series) -> Path | None:
    """Draw a report row's confusion matrix (its ``confusion`` and ``class_names`` columns); None if it has none."""
    cm_text, names_text = row.get("confusion"), row.get("class_names")
    if not isinstance(cm_text, str) or not isinstance(names_text, str) or not cm_text:
        return None
    try:
        cm = np.asarray(json.loads(cm_text))
        names = json.loads(names_text)
    except ValueError:
        return None
    if cm.ndim != 2 or cm.shape != (len(names), len(names)):
        return None
    title = (f"{row.get('backbone')} ({row.get('weights')}) + {row.get('head')} | {row.get('protocol')} | "
             f"task {row.get('task')}\nbalanced accuracy {float(row.get('balanced_accuracy', float('nan'))):.3f}")
    return confusion_png(path, cm, names, title)


def _n_classes(df: pd.DataFrame) -> int | None:
    for text in df.get("class_names", pd.Series(dtype=object)).dropna():
        with contextlib.suppress(ValueError, TypeError):
            return len(json.loads(text))
    return None


def summary_png(path: str | os.PathLike[str], df: pd.DataFrame, title: str = "") -> Path | None:
    """Grouped bars of balanced accuracy: backbone (+weights) on x, one bar per head x protocol (colour = head,
    hatch = protocol), error bars from ``balanced_accuracy_std``, dashed chance line at 1/n_classes.
    One panel per task. None when ``df`` has no scored rows."""
    df = df.copy()
    df["balanced_accuracy"] = pd.to_numeric(df.get("balanced_accuracy"), errors="coerce")
    df = df[df["balanced_accuracy"].notna()]
    if df.empty:
        return None
    df["std"] = pd.to_numeric(df["balanced_accuracy_std"], errors="coerce") if "balanced_accuracy_std" in df else np.nan
    df["model"] = df["backbone"].astype(str) + np.where(df["weights"].astype(str).isin(["imagenet", ""]), "",
                                                         " (" + df["weights"].astype(str) + ")")
    if "layers" in df and df["layers"].nunique() > 1:
        # Layer tags can be long chains (a+b+last): one layer per line keeps tick labels apart.
        df["model"] = df["model"] + "\n" + df["layers"].astype(str).str.replace("+", "+\n", regex=False)
    if "features" in df and df["features"].fillna("").astype(str).nunique() > 1:
        df["model"] = df["model"] + "\n" + df["features"].fillna("").astype(str).replace("", "default")
    if "level" in df and df["level"].fillna("slice").astype(str).nunique() > 1:
        df["model"] = df["model"] + "\n" + df["level"].fillna("slice").astype(str)
    tasks = list(dict.fromkeys(df["task"].astype(str)))
    seen = list(dict.fromkeys(df["head"].astype(str)))
    heads = [h for h in HEAD_ORDER if h in seen] + [h for h in seen if h not in HEAD_ORDER]
    protocols = [p for p in PROTOCOL_HATCH if p in set(df["protocol"])] + sorted(set(df["protocol"]) - set(PROTOCOL_HATCH))
    combos = [(h, p) for h in heads for p in protocols if ((df["head"] == h) & (df["protocol"] == p)).any()]
    colors = {h: f"C{i % 10}" for i, h in enumerate(heads)}
    models_max = max(df[df["task"] == t]["model"].nunique() for t in tasks)
    width = max(6.0, 1.0 + models_max * (0.5 + 0.22 * len(combos)))
    fig = Figure(figsize=(width, 4.0 * len(tasks) + 0.6), layout="constrained")
    for ti, task in enumerate(tasks):
        ax = fig.add_subplot(len(tasks), 1, ti + 1)
        sub = df[df["task"] == task]
        models = list(dict.fromkeys(sub["model"]))
        bar = 0.8 / max(1, len(combos))
        for ci, (h, p) in enumerate(combos):
            xs, ys, es = [], [], []
            for mi, m in enumerate(models):
                hit = sub[(sub["model"] == m) & (sub["head"] == h) & (sub["protocol"] == p)]
                if len(hit):
                    xs.append(mi - 0.4 + bar * (ci + 0.5))
                    ys.append(float(hit["balanced_accuracy"].iloc[-1]))
                    es.append(float(hit["std"].iloc[-1]))  # NaN (single split) draws no error bar
            if xs:
                ax.bar(xs, ys, bar * 0.95, yerr=es, capsize=2, color=colors[h], edgecolor="black", linewidth=0.5,
                       hatch=PROTOCOL_HATCH.get(p, "xx"), label=f"{h} · {p}")
        k = _n_classes(sub)
        if k:
            ax.axhline(1.0 / k, color="red", linestyle="--", linewidth=1, label=f"chance (1/{k})")
        ax.set_xticks(range(len(models)), labels=models, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("balanced accuracy")
        ax.set_title(f"{title + ' | ' if title else ''}task {task}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, Path(path))
