"""predict with a subject-level bundle (one row per person) and with a fused bundle, the backbone replaced by the
cached features (the TF path itself is covered by test_predict.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import classify.predict as predict_mod
from classify.bundle import bundle_for, save_bundle
from classify.evaluate import evaluate
from classify.fusion import fuse
from classify.predict import predict_paths
from classify.subject_level import SubjectPooling
from featurize.errors import AlzmriError
from tests.classify.test_evaluate import synthetic


def _folders(tmp_path: Path, fs) -> dict[str, int]:
    """One folder per person holding its slices (empty files: the features come from ``fs``)."""
    rows = {}
    for i, (s, p) in enumerate(zip(fs.subject, fs.paths)):
        f = tmp_path / "people" / s / Path(p).name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
        rows[str(f)] = i
    return rows


def test_subject_bundle_answers_one_row_per_person(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = synthetic(subjects=4, slices=3, dim=6)
    fs.meta.update(dataset_id="d", backbone="mobilenetv2", weights="imagenet", layers="last")
    res = evaluate(fs, "logreg", protocol="subject-cv", n_jobs=1, level="subject", pooling="quantiles", n_boot=0)
    path, bundle = bundle_for(fs, res, task="stages", selection="x")
    save_bundle(tmp_path / path.name, bundle)
    rows = _folders(tmp_path, fs)
    bad = next(iter(rows))  # one unreadable slice: left out of its person's pooled row
    with pytest.raises(AlzmriError, match="decides per person"):
        monkeypatch.setattr(predict_mod, "bundle_features", None)  # refused before computing any feature
        predict_paths(tmp_path / path.name, [tmp_path / "people"])
    monkeypatch.setattr(predict_mod, "bundle_features", lambda spec, files, **kw: (
        fs.X[[rows[f] for f in files]].copy(), ["cannot decode" if f == bad else "" for f in files]))
    table, people = predict_paths(tmp_path / path.name, [tmp_path / "people"], by_subject="folder")
    assert len(people) == 16 and people["n_slices"].sum() == len(fs) - 1 and len(table) == len(fs)
    assert "predicted" not in table.columns  # a subject model gives no per-slice answer
    pool = SubjectPooling("quantiles")
    for _, r in people.iterrows():
        mine = [rows[f] for f in table.loc[table["subject"] == r["subject"], "file"] if f != bad]
        want = bundle.predict_proba(pool.pool(fs.X[mine])[None, :])[0]
        assert np.allclose([r[f"p_{c}"] for c in fs.class_names], want, atol=1e-4)
        assert r["predicted"] == fs.class_names[int(fs.y[mine[0]])]  # well separated blobs: every person right


def test_fused_bundle_joins_every_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = synthetic(subjects=3, slices=2, dim=4, seed=0)
    a.meta.update(dataset_id="d", backbone="mobilenetv2", weights="imagenet", layers="last", cache_path="a")
    b = a.subset(np.arange(len(a)))
    b.X = np.asarray(a.X[:, ::-1] * 3, dtype=np.float32)
    b.meta.update(backbone="mobilenetv2", layers="block_13_expand_relu", cache_path="b")
    f = fuse([a, b])
    res = evaluate(f, "logreg", protocol="subject-cv", n_jobs=1, n_boot=0)
    path, bundle = bundle_for(f, res, task="stages", selection="x")
    assert [p["layers"] for p in bundle.parts] == ["last", "block_13_expand_relu"]
    save_bundle(tmp_path / path.name, bundle)
    rows = _folders(tmp_path, a)
    part = {"last": a, "block_13_expand_relu": b}
    monkeypatch.setattr(predict_mod, "bundle_features", lambda spec, files, **kw: (
        part[spec["layers"]].X[[rows[x] for x in files]].copy(), [""] * len(files)))
    table, _ = predict_paths(tmp_path / path.name, [tmp_path / "people"])
    idx = [rows[x] for x in table["file"]]
    want = bundle.predict_proba(f.X[idx])
    assert np.allclose(table[[f"p_{c}" for c in a.class_names]].to_numpy(), want, atol=1e-4)
