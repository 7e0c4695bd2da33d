"""The level key column (old rows migrate to slice, nothing lost) and the source-domain view."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from classify.report import format_report, read_report, upsert_rows
from classify.run import report_command
from classify.transfer import format_transfer, transfer_table


def _row(**kw: object) -> dict:
    base = dict(dataset="d-1", backbone="mobilenetv2", weights="imagenet", layers="last", task="binary", head="logreg",
                protocol="subject-cv", subject_balanced_accuracy=0.7, subject_balanced_accuracy_lo=0.6,
                subject_balanced_accuracy_hi=0.8, subject_accuracy=0.72, subject_roc_auc=0.75)
    return {**base, **kw}


def test_old_rows_without_level_read_as_slice_and_survive_an_upsert(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    old = pd.DataFrame([{k: v for k, v in _row(head=h, some_old_column=i).items()} for i, h in enumerate(("logreg", "svm"))])
    old.to_csv(path, index=False)  # written before the level column existed
    assert (read_report(path)["level"] == "slice").all()
    df = upsert_rows(path, [_row(level="subject-meanstd", subject_balanced_accuracy=0.8)])
    assert len(df) == 3 and sorted(df["level"]) == ["slice", "slice", "subject-meanstd"]
    assert df.loc[df["level"] == "slice", "some_old_column"].tolist() == [0, 1]  # nothing lost
    # a slice row written now replaces the migrated old one (same key), not a duplicate
    df = upsert_rows(path, [_row(level="slice", subject_balanced_accuracy=0.9)])
    assert len(df) == 3 and "subject-meanstd" in format_report(df, "table")


def test_transfer_view_per_backbone_source_and_level(tmp_path: Path, monkeypatch) -> None:
    rows = [_row(weights="imagenet", head="logreg", subject_balanced_accuracy=0.70),
            _row(weights="imagenet", head="svm", subject_balanced_accuracy=0.74, subject_balanced_accuracy_lo=0.66,
                 subject_balanced_accuracy_hi=0.82),
            _row(weights="random-init", subject_balanced_accuracy=0.60),
            _row(weights="imagenet", level="subject-quantiles", subject_balanced_accuracy=0.78, subject_pooling="quantiles10-50-90"),
            _row(weights="imagenet", level="subject-meanstd", subject_balanced_accuracy=0.76),
            _row(backbone="vgg16", weights="file-a2f5111730", level="subject-meanstd", subject_balanced_accuracy=0.8),
            _row(task="stages", subject_balanced_accuracy=0.4)]
    path = tmp_path / "art" / "report.csv"
    upsert_rows(path, rows)
    t = transfer_table(read_report(path))
    assert len(t) == 5
    mob = t[(t["task"] == "binary") & (t["backbone"] == "mobilenetv2")]
    assert mob["weights"].tolist() == ["random-init", "imagenet", "imagenet"]  # no transfer first
    assert mob["level"].tolist() == ["slice", "slice", "subject"]
    best = mob.iloc[1]
    assert best["subject_balanced_accuracy"] == 0.74 and best["n_compared"] == 2 and best["best"] == "last/svm"
    assert mob.iloc[2]["subject_balanced_accuracy"] == 0.78 and mob.iloc[2]["best"].endswith("quantiles10-50-90")
    text = format_transfer(t, "markdown")
    assert "0.740 [0.66, 0.82]" in text and "file-a2f5111730" in text
    table = report_command(tmp_path / "art", view="transfer")
    assert "random-init" in table and "[lo, hi]" in table and "0.740 [0.66, 0.82]" in table  # not eaten as markup
