"""The newcomer's path: `alzmri demo` end to end at a tiny size, through the CLI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from classify.demo import run_demo

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def test_demo_end_to_end_tiny(tmp_path: Path) -> None:
    messages: list[str] = []
    res = run_demo(tmp_path / "art", weights="none", subjects_per_class=3, slices_per_subject=4, baseline_epochs=1,
                   permutation=2, image_size="32x32", progress=False, log=messages.append)
    assert res.weights == "random-init"
    df = pd.read_csv(res.report)
    assert {"logreg", "svm", "mlp", "end-to-end"} <= set(df["head"])
    assert {"official", "subject-cv"} <= set(df["protocol"])
    assert (df["weights"].astype(str).str.contains("random-init")).all()
    assert "random-init" in res.table or "random" in res.table
    assert any("inferring subjects" in m for m in messages)
    assert list((tmp_path / "art").rglob("*.png"))


def test_volume_demo_end_to_end_tiny(tmp_path: Path) -> None:
    res = run_demo(tmp_path / "art", weights="none", subjects_per_class=2, slices_per_subject=3, baseline_epochs=1,
                   permutation=0, image_size="32x32", progress=False, volumes=True)
    df = pd.read_csv(res.report)
    assert {"logreg", "svm", "mlp", "end-to-end"} <= set(df["head"])
    assert {"official", "subject-cv"} <= set(df["protocol"])
    cv = df[(df["protocol"] == "subject-cv") & (df["head"] == "logreg")].iloc[0]
    assert cv["n_train"] == 4 * 2 * 3  # scans x views x slices
    assert len(list((tmp_path / "art" / "demo" / "synthetic-volumes").rglob("*.nii.gz"))) == 8


def test_cli_errors_are_one_line_and_nonzero(tmp_path: Path) -> None:
    from cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["featurize", "--data", str(tmp_path / "nope"), "--weights", "none"])
    assert r.exit_code == 3 and "no such folder" in r.output
    r = runner.invoke(app, ["featurize", "--data", str(tmp_path), "--backbone", "vgg99"])
    assert r.exit_code == 2 and "vgg16" in r.output
    r = runner.invoke(app, ["featurize", "--data", str(tmp_path), "--batch-size", "0"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["baseline", "--data", str(tmp_path), "--epochs", "-1"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["classify", "--data", str(tmp_path), "--head", "forest"])
    assert r.exit_code != 0 and "logreg" in r.output
    r = runner.invoke(app, ["featurize", "--list"])
    assert r.exit_code == 0 and "mobilenetv2" in r.output and "efficientnetb0" in r.output
