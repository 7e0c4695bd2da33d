"""kill -9 in real subprocesses during ``baseline`` (mid-checkpoint) and during ``sweep``; the reruns resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import write_images
from tests.reliability.helpers import run

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def test_kill_9_mid_checkpoint_in_baseline_then_the_rerun_resumes(tmp_path: Path) -> None:
    from classify.cnn import train_baseline

    data, art = tmp_path / "data", tmp_path / "art"
    write_images(data, "kaggle", n_per_class=4)
    args = ["baseline", "--data", data, "--model", "scratch", "--weights", "none", "--image-size", "32x32",
            "--epochs", "3", "--patience", "3", "--subjects", "none", "--batch-size", "4", "--artifacts", art,
            "--no-progress"]
    # epoch 2's weights folder is renamed into place, then the process dies before state.json points at it
    killed = run(args, kill=["classify.cnn.checkpoint:Checkpoint.write_state,2,before"])
    assert killed.returncode == -9, killed.stderr
    state = json.loads(next(art.glob("models/*/*.ckpt/official/state.json")).read_text())
    assert state["epoch"] == 1 and not (art / "report.csv").exists() and not list(art.glob("models/*/*.keras"))
    logs: list[str] = []
    res = train_baseline(data, model="scratch", weights="none", image_size="32x32", epochs=3, patience=3,
                         subjects="none", batch_size=4, artifacts=art, progress=False, log=logs.append)
    assert res.resumed_from == 1 and [h["epoch"] for h in res.history] == [1, 2, 3], logs
    assert any("resuming from the checkpoint after epoch 1" in m for m in logs)
    ckpt = next(art.glob("models/*/*.ckpt/official"))
    assert not [p.name for p in ckpt.iterdir() if ".tmp" in p.name]  # nothing half-written is left
    assert len(pd.read_csv(art / "report.csv")) == 1 and res.model_path.is_file()


def test_kill_9_during_sweep_then_the_rerun_completes_without_duplicates(tmp_path: Path) -> None:
    from classify.bundle import load_bundle
    from classify.sweep import run_sweep
    from featurize.synth import write_dataset

    data, art = tmp_path / "data", tmp_path / "art"
    write_dataset(data, subjects_per_class=4, slices_per_subject=3, size=(64, 76), seed=1)
    opts = dict(backbones=["mobilenetv2"], layers=["last"], heads=["logreg", "svm"], tasks=["binary"], weights="none",
                image_size="32x32", artifacts=str(art), progress=False, n_jobs=1, batch_size=8)
    code = f"import sys; from classify.sweep import run_sweep; run_sweep(sys.argv[1], **{opts!r})"
    killed = run(["-c", code, data], kill=["classify.report:upsert_rows,2,before"])
    assert killed.returncode == -9, killed.stderr
    assert len(pd.read_csv(art / "report.csv")) == 1  # the first combination's row was kept
    assert not list(art.glob("models/*/*.joblib"))  # no winner yet
    (cache,) = art.glob("features/*/*.h5")
    written = cache.stat().st_mtime_ns
    (res,) = run_sweep(data, **opts)
    assert cache.stat().st_mtime_ns == written  # the features were complete before the kill: not recomputed
    report = pd.read_csv(art / "report.csv")
    assert len(report) == 2 and not report.duplicated(subset=["head", "protocol", "task"]).any()
    assert load_bundle(res.model_path).protocol == "subject-cv"
