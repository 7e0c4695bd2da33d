"""``alzmri report --view transfer``: which source domain transfers, per backbone and task, at slice and subject level.

From whatever report rows exist: per (dataset, task, protocol, backbone, weights source, level), the row with the best
subject-level balanced accuracy over heads, layer choices and poolings, with its 95% bootstrap intervals over
subjects. Weights sources sort random-init first, then imagenet, then files and catalog names, so each backbone's
block reads "no transfer" -> "transfer from X". ``level`` here is ``slice`` or ``subject`` (the pooling is named in
``best``).

The best of several rows is picked by its own outer-CV score, so it is optimistic (the sweep's nested estimate is
the honest number for a selection); the intervals show how far apart two sources must be to mean anything.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pandas as pd

from classify.report import _num, interval
from classify.subject_level import is_subject_level
from featurize.options import choose

VIEWS = ("rows", "transfer")
FORMATS = ("table", "csv", "markdown", "json")
GROUP = ("dataset", "task", "protocol", "backbone", "weights", "level")
METRICS = (("subject_accuracy", "subj_acc"), ("subject_balanced_accuracy", "subj_bal_acc"), ("subject_roc_auc", "subj_auc"))
PROTOCOL_ORDER = {"subject-cv": 0, "official": 1, "slice-cv": 2}


def _source_rank(weights: str) -> int:
    return {"random-init": 0, "imagenet": 1}.get(str(weights), 2)


def transfer_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per GROUP: the best report row's scores and intervals (see the module docstring)."""
    cols = [*GROUP, "best", "n_compared", *(f"{m}{s}" for m, _ in METRICS for s in ("", "_lo", "_hi")), "balanced_accuracy"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = df.copy()
    for m, _ in METRICS:
        for s in ("", "_lo", "_hi"):
            df[f"{m}{s}"] = pd.to_numeric(df[f"{m}{s}"], errors="coerce") if f"{m}{s}" in df else np.nan
    df["balanced_accuracy"] = pd.to_numeric(df.get("balanced_accuracy"), errors="coerce")
    df["level"] = ["subject" if is_subject_level(v) else "slice" for v in df.get("level", pd.Series(["slice"] * len(df)))]
    df["_rank"] = df["subject_balanced_accuracy"].fillna(-1.0)
    rows: list[dict[str, Any]] = []
    for key, sub in df.groupby(list(GROUP), sort=False, dropna=False):
        best = sub.sort_values("_rank", ascending=False, kind="stable").iloc[0]
        pooling = str(best.get("subject_pooling") or "")
        rows.append({**dict(zip(GROUP, key)), "best": "/".join(x for x in (str(best.get("layers", "")), str(best.get("head", "")),
                                                                            pooling if pooling != "nan" else "") if x),
                     "n_compared": int(len(sub)), **{c: best[c] for c in cols if c in best and c not in GROUP}})
    out = pd.DataFrame(rows, columns=cols)
    out["_p"] = out["protocol"].map(lambda p: PROTOCOL_ORDER.get(str(p), 9))
    out["_w"] = out["weights"].map(_source_rank)
    out = out.sort_values(["dataset", "task", "_p", "backbone", "_w", "weights", "level"], kind="stable")
    return out.drop(columns=["_p", "_w"]).reset_index(drop=True)


def format_transfer(table: pd.DataFrame, fmt: str = "table") -> str:
    """Render ``transfer_table``: rich table or markdown (scores with [95% CI]), or csv / json (every column)."""
    choose("report format", fmt, FORMATS)
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=2)
    shown = [c for c in GROUP if c != "dataset" or table["dataset"].nunique() > 1]
    headers = [*shown, "best (layers/head/pooling)", *(f"{h} [95% CI]" for _, h in METRICS), "n"]
    body = []
    for _, r in table.iterrows():
        body.append([str(r[c]) for c in shown] + [str(r["best"])]
                    + [_num(r[m]) + _ci(r, m) for m, _ in METRICS] + [str(r["n_compared"])])
    note = ("best row per group by its own subject-cv score (optimistic; the sweep's nested estimate is the honest one); "
            "[lo, hi] = 95% bootstrap over subjects")
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
        return "\n".join(lines) + f"\n\n{note}"
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"source domains ({len(table)} groups): {note}"), pad_edge=False)
    for h in headers:
        t.add_column(h, justify="left" if h in (*shown, headers[len(shown)]) else "right", no_wrap=True)
    for row in body:
        t.add_row(*(escape(c) for c in row))
    buf = io.StringIO()
    Console(file=buf, width=250, force_terminal=False, color_system=None).print(t)
    return buf.getvalue().rstrip("\n")


def _ci(r: pd.Series, m: str) -> str:
    lo, hi = r.get(f"{m}_lo"), r.get(f"{m}_hi")
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return ""
    return " " + interval(lo, hi)
