"""Reliability diagrams from a report row's pooled bins (its ``reliability`` column, ``classify.calibration``).

One PNG per row: slice level and subject level side by side. Each panel shows, per top-label confidence bin,
the share of correct predictions (bars) against the mean confidence (dots), the diagonal of perfect calibration,
and the row count per bin; the title gives the ECE and the Brier score. ``compare_png`` overlays the rows of one
configuration that differ only in calibration (none / sigmoid / isotonic), which is the before/after view.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from classify.calibration import ece_from_bins
from classify.plots import _save, slug

LEVELS = (("slice", "slices"), ("subject", "subjects"))


def reliability_name(row: dict[str, Any] | pd.Series) -> str:
    """File name of a report row's reliability diagram."""
    parts = [row.get(k, "") for k in ("backbone", "weights", "layers", "features", "task", "head", "protocol",
                                      "calibration")]
    parts = [p for p in parts if str(p or "") not in ("", "nan")]
    return "reliability__" + "__".join(slug(p) for p in parts) + ".png"


def row_bins(row: dict[str, Any] | pd.Series) -> dict[str, dict[str, list[float]]] | None:
    """The pooled bins of a row, or None when it has none."""
    text = row.get("reliability")
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        bins = json.loads(text)
    except ValueError:
        return None
    return bins if isinstance(bins, dict) and "slice" in bins else None


def _curve(bins: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = np.asarray(bins["count"], dtype=float)
    k = len(n)
    centers = (np.arange(k) + 0.5) / k
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.asarray(bins["correct"]) / n
        conf = np.asarray(bins["confidence"]) / n
    return centers, acc, conf, n


def _panel(ax: Any, bins: dict[str, list[float]], unit: str, title: str) -> None:
    centers, acc, conf, n = _curve(bins)
    width = 1.0 / len(n)
    ok = n > 0
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.bar(centers[ok], acc[ok], width * 0.9, color="C0", edgecolor="black", lw=0.5, alpha=0.8, label="accuracy")
    ax.plot(conf[ok], acc[ok], "o", color="C3", ms=4, label="mean confidence")
    for c, a, m in zip(centers[ok], acc[ok], n[ok]):
        ax.text(c, min(a, 0.93) + 0.02, f"{int(m)}", ha="center", fontsize=6, color="black")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("top-label confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\n{int(n.sum())} {unit}, pooled ECE {ece_from_bins(bins):.3f} (numbers: {unit} per bin)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")


def reliability_png(path: str | os.PathLike[str], bins: dict[str, dict[str, list[float]]], title: str = "") -> Path:
    """Draw the slice (and, when present, subject) reliability diagrams of pooled ``bins``."""
    levels = [(lvl, unit) for lvl, unit in LEVELS if lvl in bins]
    fig = Figure(figsize=(4.2 * len(levels), 4.4), layout="constrained")
    for i, (lvl, unit) in enumerate(levels):
        _panel(fig.add_subplot(1, len(levels), i + 1), bins[lvl], unit, f"{lvl} level")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, Path(path))


def _title(row: dict[str, Any] | pd.Series) -> str:
    cal = str(row.get("calibration") or "") or "uncalibrated"
    cal = "uncalibrated" if cal == "nan" else cal
    brier = pd.to_numeric(pd.Series([row.get("brier")]), errors="coerce").iloc[0]
    return (f"{row.get('backbone')} ({row.get('weights')}) + {row.get('head')} | {row.get('protocol')} | task "
            f"{row.get('task')} | {cal}" + ("" if pd.isna(brier) else f" | Brier {float(brier):.3f}"))


def reliability_from_row(path: str | os.PathLike[str], row: dict[str, Any] | pd.Series) -> Path | None:
    """A report row's reliability diagram; None when the row has no bins."""
    bins = row_bins(row)
    return None if bins is None else reliability_png(path, bins, _title(row))


def compare_png(path: str | os.PathLike[str], rows: Sequence[dict[str, Any] | pd.Series], level: str = "slice",
                title: str = "") -> Path | None:
    """Reliability curves of several rows (e.g. one head without and with calibration) on one panel."""
    drawn = [(r, row_bins(r)) for r in rows]
    drawn = [(r, b) for r, b in drawn if b is not None and level in b]
    if not drawn:
        return None
    fig = Figure(figsize=(4.8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    for i, (r, b) in enumerate(drawn):
        _, acc, conf, n = _curve(b[level])
        ok = n > 0
        cal = str(r.get("calibration") or "") or "uncalibrated"
        ax.plot(conf[ok], acc[ok], "o-", color=f"C{i}", ms=4, label=f"{cal} (pooled ECE {ece_from_bins(b[level]):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean top-label confidence (per bin)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"{level} level: before and after calibration", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, Path(path))
