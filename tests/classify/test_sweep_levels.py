"""The sweep over slice and subject levels and a fused candidate, on caches written with featurize.store (no TF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from classify.bundle import load_bundle
from classify.sweep import check_criterion, format_sweep, sweep_caches
from featurize.config import features_dir
from featurize.dataset import dataset_id
from featurize.errors import AlzmriError
from featurize.store import cache_name, save
from tests.classify.test_evaluate import synthetic


def _caches(root: Path, art: Path) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for layers, seed in (("last", 0), ("block_13_expand_relu", 1)):
        fs = synthetic(subjects=6, slices=3, dim=8, sep=1.0, seed=seed)
        fs.sha1 = np.array([f"h{i}" for i in range(len(fs))], dtype=object)
        fs.meta.update(backbone="mobilenetv2", weights="imagenet", weights_sha256="00", image_size="224x224",
                       pooling="avg", resize="stretch", layers=layers, data_root=str(root))
        path = features_dir(dataset_id(root), art) / cache_name(fs.meta)
        save(path, fs)
        out.append(path)
    return out


@pytest.mark.slow
def test_sweep_levels_and_fusion(tmp_path: Path) -> None:
    root, art = tmp_path / "data", tmp_path / "art"
    caches = _caches(root, art)
    (res,) = sweep_caches(root, caches, heads=["logreg"], tasks=["binary"], artifacts=art, progress=False,
                          levels=["slice", "subject"], poolings=["meanstd"], fuse="mobilenetv2:last+mobilenetv2:mid",
                          n_jobs=1)
    assert res.criterion == "subject_balanced_accuracy"
    assert len(res.candidates) == 6  # (2 caches + 1 fusion) x 1 head x 2 levels
    assert {c.level for c in res.candidates} == {"slice", "subject-meanstd"}
    assert {c.backbone for c in res.candidates} == {"mobilenetv2", "mobilenetv2+mobilenetv2"}
    # every candidate was scored on the same held-out subjects
    tested = {tuple(sorted(map(tuple, [sorted(c.result.subject_oof.subjects[c.result.subject_oof.fold == k])
                                       for k in range(5)]))) for c in res.candidates}
    assert len(tested) == 1
    # slice heads' inner scores are per subject too (subjects routed into the inner CV), so levels compare
    assert all(np.isfinite(c.inner_scores).all() for c in res.candidates)
    lo, hi = res.nested_interval["subject_balanced_accuracy_lo"], res.nested_interval["subject_balanced_accuracy_hi"]
    assert 0 <= lo <= hi <= 1 and set(res.by_level) == {"slice", "subject"}
    text = format_sweep(res)
    assert "gap subject - slice" in text and "95% CI" in text and "best subject-level" in text
    bundle = load_bundle(res.model_path)
    assert bundle.level == res.best.level and bundle.protocol == "subject-cv"
    if "+" in res.best.backbone:
        assert len(bundle.parts) == 2
    assert set(res.table["level"]) == {"slice", "subject-meanstd"}


def test_criterion_follows_the_levels() -> None:
    assert check_criterion(None, ["slice"]) == "balanced_accuracy"
    assert check_criterion(None, ["slice", "subject"]) == "subject_balanced_accuracy"
    with pytest.raises(AlzmriError, match="scores slices"):
        check_criterion("balanced_accuracy", ["slice", "subject"])
