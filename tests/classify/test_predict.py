"""predict: a saved bundle reproduces classify's predictions from image files alone; mismatches are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import featurize
from classify.bundle import load_bundle, save_bundle
from classify.predict import expand_inputs, format_predictions, predict_paths
from classify.run import classify_dataset
from featurize.errors import DataError, WeightsError
from featurize.run import featurize_dataset
from featurize.synth import write_dataset
from tests.conftest import cpu_only, needs_onnx

pytestmark = [pytest.mark.tf, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny synthetic dataset, featurized and classified with logreg; returns (data, artifacts, bundle)."""
    base = tmp_path_factory.mktemp("predict")
    data, art = base / "data", base / "artifacts"
    write_dataset(data, subjects_per_class=3, slices_per_subject=3, size=(64, 76), seed=3)
    featurize_dataset(data, backbone="mobilenetv2", weights="none", image_size="32x32", subjects="auto",
                      artifacts=art, progress=False)
    df = classify_dataset(data, backbone="mobilenetv2", heads=["logreg"], protocol="official", artifacts=art,
                          progress=False, log=lambda s: None)
    return data, art, Path(df.attrs["bundles"][0])


def test_predict_matches_the_cached_features_predictions(trained: tuple[Path, Path, Path]) -> None:
    data, art, bundle_file = trained
    bundle = load_bundle(bundle_file)
    cache = featurize.store.find_caches(featurize.dataset.dataset_id(data), art)[0]
    fs = featurize.load(cache)
    table, _ = predict_paths(bundle_file, [data / "test"])
    by_path = {str(data / p): i for i, p in enumerate(fs.paths)}
    rows = [by_path[f] for f in table["file"]]
    expected = bundle.predict_proba(fs.X[rows])
    got = table[[f"p_{c}" for c in bundle.class_names]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-3)  # table rounds to 4 decimals
    assert list(table["predicted"]) == [bundle.class_names[i] for i in expected.argmax(axis=1)]


def test_predict_by_subject_and_formats(trained: tuple[Path, Path, Path]) -> None:
    data, _, bundle_file = trained
    table, subjects = predict_paths(bundle_file, [data / "train"], by_subject="infer")
    assert subjects is not None and subjects["n_slices"].sum() == len(table)
    assert format_predictions(table, "csv").splitlines()[0].startswith("file,predicted,p_NonDemented")
    assert format_predictions(table, "json").lstrip().startswith("[")


def test_predict_refuses_a_backbone_with_other_weights(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, _, bundle_file = trained
    bundle = load_bundle(bundle_file)
    bundle.backbone["weights_sha256"] = "0" * 64
    other = save_bundle(tmp_path / "other.joblib", bundle)
    with pytest.raises(WeightsError, match="differ from those the model was trained on"):
        predict_paths(other, [data / "test"])


def test_predict_lists_unreadable_files_and_rejects_missing_inputs(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, _, bundle_file = trained
    bad = tmp_path / "bad.png"
    bad.write_text("no image")
    table, _ = predict_paths(bundle_file, [bad])
    assert table["error"].iloc[0] and table["predicted"].iloc[0] == ""
    with pytest.raises(DataError, match="no such image"):
        expand_inputs([tmp_path / "missing.png"])


@cpu_only
def test_predict_rebuilds_a_mixed_precision_backbone_like_its_cache(tmp_path: Path) -> None:
    data, art = tmp_path / "data", tmp_path / "artifacts"
    write_dataset(data, subjects_per_class=3, slices_per_subject=2, size=(64, 76), seed=4)
    res = featurize_dataset(data, backbone="mobilenetv2", weights="none", image_size="32x32", subjects="auto",
                            artifacts=art, progress=False, precision="mixed")
    df = classify_dataset(data, backbone="mobilenetv2", heads=["logreg"], protocol="official", artifacts=art,
                          progress=False, log=lambda s: None)
    bundle_file = Path(df.attrs["bundles"][0])
    bundle = load_bundle(bundle_file)
    assert bundle.backbone["precision"] == "mixed_bfloat16"  # no GPU here
    fs = featurize.load(res.cache)
    table, _ = predict_paths(bundle_file, [data / "test"])
    by_path = {str(data / p): i for i, p in enumerate(fs.paths)}
    expected = bundle.predict_proba(fs.X[[by_path[f] for f in table["file"]]])
    np.testing.assert_allclose(table[[f"p_{c}" for c in bundle.class_names]].to_numpy(), expected, atol=2e-3)


@needs_onnx
def test_predict_uses_the_model_card_and_export_without_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import featurize.backbones
    import featurize.modelcard

    monkeypatch.setattr(featurize.modelcard, "gpu_possible", lambda: False)
    data, art = tmp_path / "data", tmp_path / "artifacts"
    write_dataset(data, subjects_per_class=3, slices_per_subject=2, size=(64, 76), seed=5)
    res = featurize_dataset(data, backbone="mobilenetv2", weights="none", image_size="32x32", subjects="auto",
                            artifacts=art, progress=False, engine="onnx")
    assert list((art / "engines").glob("*.card.json"))
    df = classify_dataset(data, backbone="mobilenetv2", heads=["logreg"], protocol="official", artifacts=art,
                          progress=False, log=lambda s: None)
    bundle_file = Path(df.attrs["bundles"][0])
    bundle = load_bundle(bundle_file)
    monkeypatch.setattr(featurize.backbones, "build_base", lambda *a, **k: pytest.fail("rebuilt the backbone with TF"))
    table, _ = predict_paths(bundle_file, [data / "test"], artifacts=art)
    fs = featurize.load(res.cache)
    by_path = {str(data / p): i for i, p in enumerate(fs.paths)}
    expected = bundle.predict_proba(fs.X[[by_path[f] for f in table["file"]]])
    np.testing.assert_allclose(table[[f"p_{c}" for c in bundle.class_names]].to_numpy(), expected, atol=1e-3)
