"""classify under a full disk (a real EFBIG from RLIMIT_FSIZE) and kill -9, in real CLI subprocesses. No TF:
the cache is written with ``featurize.store.save``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from classify.bundle import list_bundles, load_bundle
from featurize.config import features_dir
from featurize.dataset import dataset_id
from featurize.store import cache_name, save
from tests.classify.test_evaluate import synthetic
from tests.reliability.helpers import error_lines, run

pytestmark = pytest.mark.slow  # several sklearn-importing subprocesses


def _setup(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    root, art = tmp_path / "data", tmp_path / "art"
    root.mkdir()
    fs = synthetic(subjects=4, slices=3, split=True)
    fs.meta.update(backbone="mobilenetv2", weights="imagenet", weights_sha256="00", image_size="224x224",
                   pooling="avg", resize="stretch", layers="last", data_root=str(root))
    save(features_dir(dataset_id(root), art) / cache_name(fs.meta), fs)
    args = ["classify", "--data", root, "--backbone", "mobilenetv2", "--head", "logreg", "--artifacts", art,
            "--no-progress", "--n-jobs", "1"]
    return root, art, args


def _models(art: Path) -> list[str]:
    return sorted(p.name for p in art.glob("models/*/*") if not p.name.startswith(".")) + \
        sorted(p.name for p in art.glob("models/*/.*"))


def test_disk_full_while_classify_writes_the_bundle_the_report_or_a_plot(tmp_path: Path) -> None:
    root, art, args = _setup(tmp_path)
    # 1. the bundle write hits the limit: one line, exit 4, nothing half-written, no report row
    small = run(args, fsize=512)
    assert small.returncode == 4, small.stderr
    lines = error_lines(small.stderr)
    assert len(lines) == 1 and "free disk space" in lines[0], small.stderr
    assert _models(art) == [] and not (art / "report.csv").exists()
    # 2. bundle and row fit, the confusion plot does not: one line that says what was saved
    plot = run(args, fsize=8192)
    assert plot.returncode == 4, plot.stderr
    lines = error_lines(plot.stderr)
    assert len(lines) == 1 and "plot" in lines[0] and "alzmri report" in lines[0], plot.stderr
    assert len(pd.read_csv(art / "report.csv")) == 1 and len(list_bundles(dataset_id(root), art)) == 1
    # 3. a good run, then a report that has grown past the limit: the bundle fits, the report rewrite does not
    assert run(args).returncode == 0
    good = list_bundles(dataset_id(root), art)
    before_bytes = good[0].read_bytes()
    report = art / "report.csv"
    old = pd.read_csv(report)
    filler = pd.concat([old.assign(dataset=f"other-{i}") for i in range(400)], ignore_index=True)
    pd.concat([old, filler]).to_csv(report, index=False)
    before_report = report.read_bytes()
    limit = len(before_report) - 1024  # the report cannot be rewritten; the bundle (a few kB) can
    assert good[0].stat().st_size < limit
    full = run([*args, "--seed", "1"], fsize=limit)
    assert full.returncode == 4, full.stderr
    lines = error_lines(full.stderr)
    assert len(lines) == 1 and "report" in lines[0] and "free disk space" in lines[0], full.stderr
    assert report.read_bytes() == before_report  # the old report, whole
    assert good[0].read_bytes() == before_bytes  # the old bundle, still in place and still verifying
    load_bundle(good[0])
    assert _models(art) == sorted(p.name for p in good) + sorted(f"{p.name}.sig" for p in good)  # no staged leftovers


def test_kill_9_between_the_bundle_and_its_report_row_leaves_no_bundle_without_a_row(tmp_path: Path) -> None:
    root, art, args = _setup(tmp_path)
    killed = run(args, kill=["classify.run:upsert_rows,1,before"])
    assert killed.returncode == -9, killed.stderr
    assert not (art / "report.csv").exists()
    assert list_bundles(dataset_id(root), art) == []  # staged (hidden, never listed or loaded), not in place
    staged = list(art.glob("models/*/.*.staged-*"))
    assert len(staged) == 2  # the bundle and its signature
    again = run(args)
    assert again.returncode == 0, again.stderr
    assert "interrupted classify" in again.stderr and not list(art.glob("models/*/.*.staged-*"))
    rows = pd.read_csv(art / "report.csv")
    bundles = list_bundles(dataset_id(root), art)
    assert len(rows) == 1 and [Path(p).name for p in rows["model_path"]] == [b.name for b in bundles]
    load_bundle(bundles[0])
