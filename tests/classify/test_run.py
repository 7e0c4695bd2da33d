"""classify_dataset / report_command end to end on caches written with featurize.store.save."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from classify.bundle import load_bundle
from classify.run import classify_dataset, report_command
from featurize.config import features_dir
from featurize.dataset import dataset_id
from featurize.errors import AlzmriError, CacheError
from featurize.featureset import FeatureSet
from featurize.store import cache_name, save
from tests.classify.test_evaluate import synthetic

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "signing.key"
    monkeypatch.setenv("ALZMRI_KEY_FILE", str(path))
    return path


def _cache(root: Path, art: Path, fs: FeatureSet, backbone: str = "mobilenetv2") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    fs.meta.update(backbone=backbone, weights="imagenet", weights_sha256="00", image_size="224x224", pooling="avg",
                   resize="stretch", layers="last", featurize_images_per_s=123.0, data_root=str(root))
    path = features_dir(dataset_id(root), art) / cache_name(fs.meta)
    save(path, fs)
    return path


@pytest.mark.slow
def test_classify_dataset_end_to_end(tmp_path: Path) -> None:
    root, art = tmp_path / "data", tmp_path / "art"
    _cache(root, art, synthetic(subjects=6, slices=3, split=True))
    said: list[str] = []
    df = classify_dataset(root, backbone="mobilenetv2", heads=["logreg", "svm"], protocol="subject-cv", artifacts=art, permutation=3,
                          n_jobs=2, progress=False, log=said.append)
    ds = dataset_id(root)
    assert len(df) == 2 and set(df["head"]) == {"logreg", "svm"} and (df["protocol"] == "subject-cv").all()
    assert (df["balanced_accuracy"] > 0.9).all() and (df["balanced_accuracy_std"] >= 0).all()
    assert (df["leakage"] == 0).all() and (df["subjects_per_class"].str.count(":") == 4).all()
    assert df["permutation_p"].tolist() == [0.25, 0.25] and df["chance_balanced_accuracy"].between(0, 0.6).all()
    assert (df["fit_seconds"] > 0).all() and (df["featurize_images_per_s"] == 123.0).all()
    assert "recall_ModerateDemented" in df.columns and "subject_balanced_accuracy" in df.columns
    report = art / "report.csv"
    assert report.is_file()
    for p in df.attrs["plots"]:
        assert p.read_bytes()[:8] == PNG
    assert (art / ds / "plots" / "summary.png").is_file()
    fs = synthetic(subjects=6, slices=3, split=True)
    for p in df.attrs["bundles"]:
        b = load_bundle(p)
        assert p.parent == art / "models" / ds and p.name.endswith("__subject-cv.joblib")
        assert b.backbone["backbone"] == "mobilenetv2" and len(b.fingerprint) == 16 and b.protocol == "subject-cv"
        assert (np.array(b.predict(fs.X)) == np.array(fs.class_names)[fs.y]).mean() > 0.9

    # The official split, a binary task, and a rerun: the report gains rows, never duplicates.
    classify_dataset(root, backbone="all", heads="logreg", protocol="official", artifacts=art, n_jobs=1, progress=False, log=said.append)
    classify_dataset(root, backbone="mobilenetv2", heads=["logreg"], protocol="official", artifacts=art, n_jobs=1, progress=False,
                     task="binary", log=said.append)
    again = classify_dataset(root, backbone="mobilenetv2", heads=["logreg"], protocol="official", artifacts=art, n_jobs=1, progress=False,
                             log=said.append)
    assert again["n_test"].iloc[0] == int((fs.split == "test").sum())
    table = report_command(art, fmt="table")
    assert "subject-cv" in table and "binary" in table
    import pandas as pd

    rep = pd.read_csv(report)
    assert len(rep) == 4 and not rep.duplicated(["backbone", "weights", "layers", "task", "head", "protocol"]).any()
    for p in (art / ds / "plots").glob("*.png"):
        p.unlink()
    assert report_command(art, fmt="markdown").startswith("|")
    assert len(list((art / ds / "plots").glob("confusion__*.png"))) == 4 and (art / ds / "plots" / "summary.png").is_file()


def test_missing_cache_names_the_featurize_command(tmp_path: Path) -> None:
    root, art = tmp_path / "data", tmp_path / "art"
    with pytest.raises(CacheError, match=r"alzmri featurize --data .*data --backbone mobilenetv2"):
        classify_dataset(root, backbone="all", heads=["logreg"], artifacts=art, progress=False)
    _cache(root, art, synthetic(subjects=3, slices=2))
    with pytest.raises(CacheError, match=r"alzmri featurize --data .* --backbone resnet50"):
        classify_dataset(root, backbone="resnet50", heads=["logreg"], artifacts=art, progress=False)
    with pytest.raises(AlzmriError, match="unknown head"):
        classify_dataset(root, backbone="all", heads=["tree"], artifacts=art, progress=False)


def test_subjects_required_where_they_matter(tmp_path: Path) -> None:
    root, art = tmp_path / "data", tmp_path / "art"
    _cache(root, art, synthetic(subjects=3, slices=2, with_subjects=False))
    with pytest.raises(AlzmriError, match="alzmri subjects"):
        classify_dataset(root, backbone="all", heads=["logreg"], protocol="subject-cv", artifacts=art, progress=False)
    with pytest.raises(AlzmriError, match="--by-subject"):
        classify_dataset(root, backbone="all", heads=["logreg"], protocol="official", artifacts=art, progress=False, by_subject=True)
    said: list[str] = []
    df = classify_dataset(root, backbone="all", heads=["logreg"], protocol="official", artifacts=art, n_jobs=1, progress=False, log=said.append)
    assert df["leakage"].isna().all()  # unknown, not zero
    assert any("subjects unknown" in w for w in said) and df.attrs["warnings"] == said


def test_caches_with_other_input_settings_get_their_own_rows_and_bundles(tmp_path: Path) -> None:
    import pandas as pd

    from classify.report import format_report
    from featurize.config import report_path

    root, art = tmp_path / "data", tmp_path / "art"
    fs = synthetic(subjects=6, slices=3, split=True)
    _cache(root, art, fs)
    native = synthetic(subjects=6, slices=3, split=True)
    native.meta.update(backbone="mobilenetv2", weights="imagenet", weights_sha256="00", image_size="176x208", pooling="avg",
                       resize="stretch", layers="last", data_root=str(root))
    save(features_dir(dataset_id(root), art) / cache_name(native.meta), native)
    df = classify_dataset(root, heads=["logreg"], artifacts=art, progress=False, log=lambda s: None)
    assert sorted(df["features"]) == ["", "176x208"]
    assert sorted(Path(b).name for b in df.attrs["bundles"]) == ["mobilenetv2__logreg.joblib", "mobilenetv2__logreg__176x208.joblib"]
    report = pd.read_csv(report_path(art), keep_default_na=False)
    assert len(report) == 2 and sorted(report["features"]) == ["", "176x208"]
    assert "features" in format_report(report, "markdown").splitlines()[0]
    classify_dataset(root, heads=["logreg"], artifacts=art, progress=False, log=lambda s: None)
    assert len(pd.read_csv(report_path(art))) == 2  # rerun: upserted, not duplicated
