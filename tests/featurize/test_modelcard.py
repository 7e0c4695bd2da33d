"""Model cards: a run whose weights source matches a card uses the verified export without building the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featurize import engines, extractor, modelcard
from featurize import run as frun
from featurize.config import engines_dir
from tests.conftest import write_images

pytestmark = [pytest.mark.tf, pytest.mark.slow]

needs_onnx = pytest.mark.skipif(bool(engines.missing_packages("onnx")), reason="onnx extra not installed")
FAST = {"weights": "none", "image_size": "32x32", "subjects": "none", "progress": False}
REPO = Path(__file__).resolve().parents[2]


def _data(tmp_path: Path, name: str, seed: int) -> Path:
    root = tmp_path / name
    write_images(root, "kaggle", n_per_class=3, seed=seed)
    return root


@pytest.fixture
def carded(tmp_path: Path, artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Artifacts after one ONNX featurize run (model built, exported, card written); no GPU assumed."""
    monkeypatch.setattr(modelcard, "gpu_possible", lambda: False)
    frun.featurize_dataset(_data(tmp_path, "a", 0), engine="onnx", artifacts=artifacts, **FAST)
    assert len(list(engines_dir(artifacts).glob("*.card.json"))) == 1
    return artifacts


@needs_onnx
def test_a_matching_card_skips_the_build_and_gives_the_tf_features(carded: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import featurize

    data = _data(tmp_path, "b", 1)
    reference = featurize.load(frun.featurize_dataset(data, engine="tf", artifacts=tmp_path / "ref", **FAST).cache)
    monkeypatch.setattr(extractor, "build", lambda *a, **k: pytest.fail("built the model although a card matched"))
    res = frun.featurize_dataset(data, engine="onnx", artifacts=carded, **FAST)
    assert res.n_computed == 12 and res.settings["engine"] == "onnx"
    assert res.settings["weights_sha256"] == reference.meta["weights_sha256"]
    got = featurize.load(res.cache)
    assert list(got.paths) == list(reference.paths)
    assert engines.relative_error(got.X, reference.X) <= 1e-4


@needs_onnx
def test_an_export_changed_after_its_check_means_the_tf_path(carded: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    export = next(engines_dir(carded).glob("*.onnx"))
    os.utime(export, ns=(export.stat().st_atime_ns, export.stat().st_mtime_ns + 10**9))  # newer than its stored check
    built: list[int] = []
    real = extractor.build
    monkeypatch.setattr(extractor, "build", lambda *a, **k: built.append(1) or real(*a, **k))
    res = frun.featurize_dataset(_data(tmp_path, "b", 1), engine="onnx", artifacts=carded, **FAST)
    assert built == [1] and res.settings["engine"] == "onnx"


def test_weights_source_follows_the_keras_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert modelcard.weights_source("mobilenetv2", "imagenet", 0) is None  # no cache folder: no shortcut
    weights = tmp_path / "keras" / "models" / "w.h5"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"1" * 10)
    first = modelcard.weights_source("mobilenetv2", "imagenet", 0)
    assert first is not None and first == modelcard.weights_source("mobilenetv2", "imagenet", 0)
    card = tmp_path / "c.card.json"
    modelcard.write_card(card, first, "ab" * 32, [1280], "key", (224, 224), light=True, tags=["last"])
    assert modelcard.read_card(card, first)["dims"] == [1280]
    weights.write_bytes(b"2" * 11)  # other weights downloaded in place
    second = modelcard.weights_source("mobilenetv2", "imagenet", 0)
    assert second != first and modelcard.read_card(card, second) is None
    assert modelcard.weights_source("mobilenetv2", "random-init", 0) != modelcard.weights_source("mobilenetv2", "random-init", 1)
    card.write_text("{not json")
    assert modelcard.read_card(card, first) is None


@needs_onnx
def test_a_carded_run_never_imports_tensorflow(carded: Path, tmp_path: Path) -> None:
    data = _data(tmp_path, "b", 1)
    script = ("import json, sys\n"
              "import featurize.modelcard as mc\n"
              "mc.gpu_possible = lambda: False\n"
              "from featurize.run import featurize_dataset\n"
              f"r = featurize_dataset({str(data)!r}, engine='onnx', artifacts={str(carded)!r}, weights='none', "
              "image_size='32x32', subjects='none', progress=False)\n"
              "print(json.dumps({'n': r.n_computed, 'tf': 'tensorflow' in sys.modules, 'engine': r.settings['engine']}))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"n": 12, "tf": False, "engine": "onnx"}
