"""``alzmri report --html FILE``: the whole report on one self-contained HTML page.

Everything is inline: CSS in a ``<style>`` block, every plot a base64 PNG ``data:`` URI, no script and no external
URL, so the page opens offline and can be mailed as one file. Per dataset: the sorted table, the summary chart,
calibration and conformal tables, reliability diagrams (with a before/after view for configurations evaluated
with and without calibration), confusion matrices, and example explanations when ``predict --explain`` left any
under ``artifacts/<dataset>/explanations`` (or the folders given). Per-row plots are embedded for the ``top`` rows
of each dataset by balanced accuracy, so a report of hundreds of rows stays a page of a few MB.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from featurize.atomic import atomic_path
from featurize.config import artifacts_dir, dataset_dir, report_path
from featurize.errors import AlzmriError

TOP = 8
MAX_EXPLANATIONS = 12
CONFIG = ("backbone", "weights", "layers", "features", "task", "head", "protocol")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f24;max-width:1400px}
h1{font-size:1.6em;margin-bottom:0}h2{margin-top:2em;border-bottom:2px solid #d0d7de;padding-bottom:4px}
h3{margin-top:1.4em}p.note{color:#57606a;font-size:.9em;margin-top:2px}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:.82em;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f6f8fa}td.l,th.l{text-align:left}tr:nth-child(even) td{background:#fbfcfd}
.grid{display:flex;flex-wrap:wrap;gap:14px}.grid figure{margin:0;max-width:560px}
figure img{max-width:100%;border:1px solid #eaeef2}figcaption{font-size:.78em;color:#57606a;max-width:560px}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure(path: Path | None, caption: str) -> str:
    if path is None or not Path(path).is_file():
        return ""
    return f"<figure>{_img(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(headers: Sequence[str], body: Iterable[Sequence[Any]], left: int = 0) -> str:
    """An HTML table; the first ``left`` columns are left-aligned text."""
    cls = lambda i: ' class="l"' if i < left else ""  # noqa: E731
    head = "".join(f"<th{cls(i)}>{html.escape(str(h))}</th>" for i, h in enumerate(headers))
    rows = "".join("<tr>" + "".join(f"<td{cls(i)}>{html.escape(str(c))}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in body)
    return f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>"


def _num(v: Any, digits: int = 3) -> str:
    x = pd.to_numeric(pd.Series([v]), errors="coerce").iloc[0]
    return "" if pd.isna(x) else f"{float(x):.{digits}f}"


def _label(row: pd.Series) -> str:
    parts = [f"{row.get('backbone')} ({row.get('weights')})", str(row.get("head")), str(row.get("protocol")),
             f"task {row.get('task')}"]
    for k in ("layers", "features"):
        v = str(row.get(k) or "")
        if v not in ("", "nan", "last"):
            parts.append(v)
    cal = str(row.get("calibration") or "")
    parts.append(cal if cal not in ("", "nan") else "uncalibrated")
    return " | ".join(parts)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    key = pd.to_numeric(df.get("balanced_accuracy"), errors="coerce")
    return df.assign(_k=key).sort_values("_k", ascending=False, na_position="last", kind="stable").drop(columns="_k")


def _calibration_table(df: pd.DataFrame) -> str:
    if "ece" not in df.columns or pd.to_numeric(df["ece"], errors="coerce").isna().all():
        return ""
    cols = ("brier", "ece", "subject_brier", "subject_ece")
    body = [[_label(r)] + [_num(r.get(c)) + (f" ± {_num(r.get(c + '_std'))}" if _num(r.get(c + "_std")) else "")
                           for c in cols] for _, r in df.iterrows() if _num(r.get("ece"))]
    return ("<h3>Calibration</h3><p class=\"note\">Brier score (halved for two classes) and top-label expected "
            "calibration error (10 bins) on the test parts, mean ± std over folds (the diagrams pool the folds' bins, so their "
            "ECE can differ); subject level = mean slice probabilities per subject.</p>"
            + _table(["configuration", "Brier", "ECE", "subject Brier", "subject ECE"], body, left=1))


def _coverage_table(df: pd.DataFrame) -> str:
    cov = sorted((c for c in df.columns if c.startswith("coverage_") and not c.endswith("_std")),
                 key=lambda c: float(c.split("_", 1)[1]))
    rows = df[pd.to_numeric(df.get("conformal_level"), errors="coerce").notna()] if "conformal_level" in df else df.iloc[:0]
    if not cov or rows.empty:
        return ""
    headers = ["configuration", "chosen level"]
    for c in cov:
        tag = c.split("_", 1)[1]
        headers += [f"coverage @{tag}%", f"set size @{tag}%"]
    body = []
    for _, r in rows.iterrows():
        line = [_label(r), _num(r.get("conformal_level"), 2)]
        for c in cov:
            tag = c.split("_", 1)[1]
            line += [_num(r.get(c)), _num(r.get(f"set_size_{tag}"), 2)]
        body.append(line)
    return ("<h3>Conformal prediction sets (per subject)</h3><p class=\"note\">Split conformal calibrated by subject "
            "inside each training part: coverage = share of test subjects whose set holds their stage (mean over "
            "folds), set size = mean number of stages per set.</p>" + _table(headers, body, left=1))


def _before_after(df: pd.DataFrame, folder: Path) -> list[str]:
    from classify.reliability import compare_png
    from classify.report import KEY

    if "calibration" not in df.columns:
        return []
    figs = []
    keys = [k for k in KEY if k not in ("calibration", "dataset")]
    for _, grp in df.groupby([df[k].astype(str) for k in keys], sort=False):
        if grp["calibration"].fillna("").astype(str).nunique() < 2:
            continue
        grp = grp.sort_values("calibration", key=lambda s: s.fillna("").astype(str), kind="stable")
        r0 = grp.iloc[0]
        for level in ("slice", "subject"):
            path = folder / f"before-after-{len(figs)}-{level}.png"
            if compare_png(path, [r for _, r in grp.iterrows()], level=level,
                           title=f"{level} level: {r0.get('backbone')} + {r0.get('head')}, {r0.get('protocol')}, "
                                 f"task {r0.get('task')}") is not None:
                figs.append(_figure(path, f"reliability before and after calibration ({level} level): "
                                          f"{_label(r0).rsplit(' | ', 1)[0]}"))
    return figs


def _explanations(dirs: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for d in dirs:
        if d.is_dir():
            found += sorted(d.rglob("montage*.png"))
    return found[:MAX_EXPLANATIONS]


def _section(ds: str, df: pd.DataFrame, artifacts: Path | None, tmp: Path, explain: Sequence[Path], top: int) -> str:
    from classify.plots import confusion_from_row, confusion_name, summary_png
    from classify.reliability import reliability_from_row, reliability_name
    from classify.report import _compact

    df = _sorted(df)
    headers, body = _compact(df)
    parts = [f"<h2>{html.escape(ds)}</h2>", f"<p class=\"note\">{len(df)} rows, best balanced accuracy first; ± = std "
             "over folds.</p>", _table(headers, body, left=sum(h in ("dataset", "backbone", "weights", "layers",
                                                                         "features", "task", "head", "protocol", "calib")
                                                                    for h in headers))]
    summary = summary_png(tmp / "summary.png", df, title=ds)
    parts.append("<h3>Summary</h3><div class=\"grid\">" + _figure(summary, "balanced accuracy per configuration") + "</div>")
    parts += [_calibration_table(df), _coverage_table(df)]
    rel, conf = [], []
    for i, (_, row) in enumerate(df.head(top).iterrows()):
        rel.append(_figure(reliability_from_row(tmp / f"{i}-{reliability_name(row)}", row), _label(row)))
        plot_row = row
        if str(row.get("subject_confusion") or "") not in ("", "nan"):
            plot_row = row.copy()
            plot_row["confusion"] = row["subject_confusion"]
        conf.append(_figure(confusion_from_row(tmp / f"{i}-{confusion_name(row)}", plot_row),
                            _label(row) + (" (per subject)" if plot_row is not row else "")))
    ba = _before_after(df, tmp)
    if ba:
        parts.append("<h3>Reliability before and after calibration</h3><div class=\"grid\">" + "".join(ba) + "</div>")
    if any(rel):
        parts.append(f"<h3>Reliability diagrams (top {min(top, len(df))})</h3><div class=\"grid\">" + "".join(rel) + "</div>")
    if any(conf):
        parts.append(f"<h3>Confusion matrices (top {min(top, len(df))})</h3><div class=\"grid\">" + "".join(conf) + "</div>")
    dirs = list(explain) + ([dataset_dir(ds, artifacts) / "explanations"] if ds else [])
    ex = _explanations(dirs)
    if ex:
        parts.append("<h3>Example explanations</h3><p class=\"note\">Per-subject montages written by "
                     "<code>alzmri predict --explain</code>: red = evidence for the predicted stage.</p><div class=\"grid\">"
                     + "".join(_figure(p, p.stem) for p in ex) + "</div>")
    return "\n".join(p for p in parts if p)


def render_html(df: pd.DataFrame, *, artifacts: str | os.PathLike[str] | None = None,
                explain_dirs: Sequence[str | os.PathLike[str]] = (), top: int = TOP, title: str = "alzmri report") -> str:
    """The page for report rows ``df`` (one section per dataset)."""
    art = Path(artifacts) if artifacts is not None else None
    explain = [Path(p) for p in explain_dirs]
    with tempfile.TemporaryDirectory(prefix="alzmri-html-") as tmp:
        sections = []
        for ds, sub in df.groupby(df["dataset"].astype(str), sort=True):
            folder = Path(tmp) / f"d{len(sections)}"
            folder.mkdir()
            sections.append(_section(str(ds), sub, art, folder, explain, top))
    meta = html.escape(f"{len(df)} rows from {report_path(artifacts)}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p class=\"note\">{meta}</p>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def write_html(path: str | os.PathLike[str], artifacts: str | os.PathLike[str] | None = None, *,
               explain_dirs: Sequence[str | os.PathLike[str]] = (), top: int = TOP) -> Path:
    """Write the self-contained page for ``artifacts``'s report.csv to ``path`` (atomically); returns the path."""
    from classify.report import read_report

    rp = report_path(artifacts)
    if not rp.is_file():
        raise AlzmriError(f"{rp}: no report yet; run `alzmri classify --data ROOT` first")
    df = read_report(rp)
    text = render_html(df, artifacts=artifacts_dir(artifacts), explain_dirs=explain_dirs, top=top)
    out = Path(path).expanduser()
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return out


def embedded_images(text: str) -> list[str]:
    """The base64 payloads of the page's images (for tests and checks)."""
    import re

    return re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)

