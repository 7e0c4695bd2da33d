"""sweep: every combination under subject-cv, a nested estimate, the winner saved for predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classify.bundle import load_bundle
from classify.sweep import Candidate, format_sweep, nested_estimate, parse_weights, run_sweep
from featurize.synth import write_dataset

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def _cand(name: str, inner: list[float], outer: list[float]) -> Candidate:
    return Candidate(backbone=name, weights="w", layers="last", task="t", head="h", score=float(np.mean(outer)),
                     fold_scores=outer, inner_scores=inner, row={})


def test_nested_estimate_picks_by_inner_scores_only() -> None:
    a = _cand("a", inner=[0.9, 0.1], outer=[0.5, 0.6])
    b = _cand("b", inner=[0.2, 0.8], outer=[0.9, 0.7])
    score, picks = nested_estimate([a, b])
    assert picks == ["a(w)/last/h", "b(w)/last/h"] and np.isclose(score, (0.5 + 0.7) / 2)


def test_parse_weights_per_backbone() -> None:
    assert parse_weights("mobilenetv2=imagenet,*=none", ["mobilenetv2", "vgg16"]) == {"mobilenetv2": "imagenet", "vgg16": "none"}
    assert parse_weights("none", ["a", "b"]) == {"a": "none", "b": "none"}


def test_sweep_end_to_end_tiny(tmp_path: Path) -> None:
    data, art = tmp_path / "data", tmp_path / "art"
    write_dataset(data, subjects_per_class=5, slices_per_subject=3, size=(64, 76), seed=1)
    results = run_sweep(data, backbones=["mobilenetv2"], layers=["last", "mid"], heads=["logreg"], tasks=["stages", "binary"], weights="none",
                        image_size="32x32", artifacts=art, progress=False)
    assert [r.task for r in results] == ["stages", "binary"]
    for r in results:
        assert len(r.candidates) == 2 and np.isfinite(r.nested_score)
        assert load_bundle(r.model_path).protocol == "subject-cv"
        assert "nested estimate" in format_sweep(r)
    assert results[1].best.fs.class_names == ["healthy", "demented"]
    report = pd.read_csv(art / "report.csv")
    assert len(report) == 4 and set(report["protocol"]) == {"subject-cv"} and set(report["task"]) == {"stages", "binary"}
