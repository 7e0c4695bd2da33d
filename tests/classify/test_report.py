"""report.csv upserts (no duplicates, new columns kept) and the output formats."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from classify.report import KEY, format_report, read_report, upsert_rows
from featurize.errors import AlzmriError


def _row(head: str = "logreg", protocol: str = "official", **kw: object) -> dict:
    base = dict(dataset="d-1", backbone="mobilenetv2", weights="imagenet", layers="last", task="stages", head=head,
                protocol=protocol, n_train=80, n_test=20, balanced_accuracy=0.5)
    return {**base, **kw}


def test_upsert_replaces_rows_with_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    upsert_rows(path, [_row(), _row("svm", balanced_accuracy=0.6)])
    df = upsert_rows(path, [_row(balanced_accuracy=0.9, recall_NonDemented=0.8)])
    assert len(df) == 2 and not df.duplicated(list(KEY)).any()
    again = read_report(path)
    assert len(again) == 2
    assert float(again.loc[again["head"] == "logreg", "balanced_accuracy"].iloc[0]) == 0.9
    assert "recall_NonDemented" in again.columns
    assert not list(tmp_path.glob(".report.csv.tmp*"))


def test_new_columns_and_other_writers_rows_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    upsert_rows(path, [_row()])
    upsert_rows(path, [_row("scratch", epochs=4, backbone="scratch-cnn", some_new_metric=1.5, leakage=None)])
    upsert_rows(path, [_row("svm", "subject-cv", balanced_accuracy_std=0.05, best_params={"clf__C": 1})])
    df = read_report(path)
    assert len(df) == 3 and {"epochs", "some_new_metric"} <= set(df.columns)
    assert df.columns[: len(KEY)].tolist() == list(KEY)
    assert json.loads(df.loc[df["head"] == "svm", "best_params"].iloc[0]) == {"clf__C": 1}
    assert df.loc[df["head"] == "scratch", "leakage"].isna().all()


def test_formats(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    df = upsert_rows(path, [_row(balanced_accuracy=0.4), _row("svm", "subject-cv", balanced_accuracy=0.7,
                                                             balanced_accuracy_std=0.05)])
    table = format_report(df, "table")
    assert table.index("svm") < table.index("logreg")  # best balanced accuracy first
    assert "0.700±0.050" in table
    md = format_report(df, "markdown")
    assert md.splitlines()[0].startswith("| ") and "0.700±0.050" in md
    assert len(pd.read_json(__import__("io").StringIO(format_report(df, "json")))) == 2
    assert format_report(df, "csv").splitlines()[0].startswith("dataset,backbone")
    with pytest.raises(AlzmriError, match="markdown"):
        format_report(df, "html")
    assert read_report(tmp_path / "missing.csv").empty
