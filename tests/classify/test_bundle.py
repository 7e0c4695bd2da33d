"""Signed model bundles: round trip, naming, and refusal of unsigned, tampered or foreign files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from classify.bundle import ModelBundle, bundle_name, bundle_path, list_bundles, load_bundle, save_bundle, sig_path
from classify.evaluate import select_head
from featurize.errors import AlzmriError
from tests.classify.test_evaluate import synthetic


@pytest.fixture
def key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private signing key location (never the user's real ~/.config)."""
    path = tmp_path / "keys" / "signing.key"
    monkeypatch.setenv("ALZMRI_KEY_FILE", str(path))
    return path


def _bundle() -> tuple[ModelBundle, np.ndarray]:
    fs = synthetic(subjects=4)
    model, params, _ = select_head("logreg", fs.X, fs.y, fs.subject, n_jobs=1)
    b = ModelBundle(pipeline=model, class_names=fs.class_names,
                    backbone={"backbone": "fake", "weights": "imagenet", "weights_sha256": "ab", "image_size": "224x224",
                              "pooling": "avg", "resize": "stretch", "layers": "last"},
                    fingerprint="f00d", head="logreg", protocol="subject-cv", best_params=params)
    return b, fs.X


def test_round_trip_predicts_identically_and_key_is_private(key: Path, tmp_path: Path) -> None:
    b, X = _bundle()
    path = save_bundle(tmp_path / "m" / "fake__logreg.joblib", b)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    sig = json.loads(sig_path(path).read_text())
    assert set(sig) >= {"hmac", "sha256", "created"}
    back = load_bundle(path)
    np.testing.assert_array_equal(back.pipeline.predict_proba(X), b.pipeline.predict_proba(X))
    assert back.predict(X[:2]) == b.predict(X[:2]) and back.predict_proba(X).shape == (len(X), 4)
    assert back.class_names == b.class_names and back.fingerprint == "f00d" and back.backbone["image_size"] == "224x224"
    assert back.tool_version and back.sklearn_version and back.protocol == "subject-cv"
    assert not list(path.parent.glob(".*tmp*"))  # atomic writes leave no temp files


def test_tampered_unsigned_and_foreign_bundles_are_refused(key: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    b, _ = _bundle()
    path = save_bundle(tmp_path / "a.joblib", b)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AlzmriError, match="signature does not match.*arbitrary code"):
        load_bundle(path)

    foreign = tmp_path / "foreign.joblib"
    import joblib

    joblib.dump(b, foreign)  # a pickle someone else made: no signature at all
    with pytest.raises(AlzmriError, match="no signature file.*arbitrary code"):
        load_bundle(foreign)

    good = save_bundle(tmp_path / "b.joblib", b)
    monkeypatch.setenv("ALZMRI_KEY_FILE", str(tmp_path / "other.key"))
    with pytest.raises(AlzmriError, match="no signing key"):
        load_bundle(good)
    save_bundle(tmp_path / "c.joblib", b)  # creates the other key
    with pytest.raises(AlzmriError, match="signature does not match"):
        load_bundle(good)
    sig_path(good).write_text("not json")
    with pytest.raises(AlzmriError, match="malformed signature"):
        load_bundle(good)


def test_names_add_parts_only_when_they_differ_from_defaults(key: Path, tmp_path: Path) -> None:
    assert bundle_name("mobilenetv2", "logreg") == "mobilenetv2__logreg.joblib"
    assert bundle_name("mobilenetv2", "svm", protocol="subject-cv") == "mobilenetv2__svm__subject-cv.joblib"
    assert bundle_name("resnet50", "mlp", weights="random-init", layers="mid", task="binary") == \
        "resnet50__mlp__random-init__mid__binary.joblib"
    custom = bundle_name("x", "mlp", task="custom:A=a,*=b")
    assert custom.startswith("x__mlp__custom-") and "," not in custom
    p = bundle_path("ds-1234", "mobilenetv2", "logreg", artifacts=tmp_path)
    assert p == tmp_path / "models" / "ds-1234" / "mobilenetv2__logreg.joblib"
    b, _ = _bundle()
    save_bundle(p, b)
    assert list_bundles("ds-1234", tmp_path) == [p]


class _Evil:
    """Unpickling this creates ``path``: what a hostile model file would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_a_hostile_pickle_is_refused_before_unpickling(key: Path, tmp_path: Path) -> None:
    """Through the real CLI: unsigned, with a copied signature, or signed with another key, the file never runs."""
    import os
    import subprocess
    import sys

    import joblib
    from PIL import Image

    repo = Path(__file__).resolve().parents[2]
    image = tmp_path / "slice.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
    genuine = save_bundle(tmp_path / "genuine.joblib", _bundle()[0])
    cases = {"unsigned": None, "copied": sig_path(genuine).read_text(),
             "other-key": json.dumps({"hmac": "0" * 64, "sha256": "0" * 64})}
    for name, sig in cases.items():
        marker = tmp_path / f"ran-{name}"
        evil = tmp_path / f"{name}.joblib"
        joblib.dump(_Evil(str(marker)), evil)
        if sig is not None:
            sig_path(evil).write_text(sig)
        with pytest.raises(AlzmriError, match="arbitrary code"):
            load_bundle(evil)
        proc = subprocess.run([sys.executable, "cli.py", "predict", "--model", str(evil), str(image)], cwd=repo,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(repo)})
        assert proc.returncode != 0 and "arbitrary code" in proc.stderr, (name, proc.stderr)
        assert not marker.exists(), f"{name}: the hostile pickle ran"
    # the check itself: the same pickle, once unpickled, does create its marker
    joblib.load(tmp_path / "unsigned.joblib")
    assert (tmp_path / "ran-unsigned").exists()
