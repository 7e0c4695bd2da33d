"""Shared fixtures: small generated image folders, and the shared real data when present."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alzheimer-mri"
CLASSES = ("NonDemented", "MildDemented")


def _gpu_host() -> bool:
    from featurize.modelcard import gpu_possible  # no TF import: /proc and /dev only

    return gpu_possible()


def _have_onnx() -> bool:
    import importlib.util

    return bool(importlib.util.find_spec("onnxruntime") or importlib.util.find_spec("openvino")) \
        and bool(importlib.util.find_spec("tf2onnx"))


# expectations that hold only on a CPU-only machine (mixed precision means bfloat16 there, and --engine auto an
# ONNX runtime); and tests of the optional onnx extra: both skip elsewhere instead of failing
cpu_only = pytest.mark.skipif(_gpu_host(), reason="expectations are for a CPU-only machine")
needs_onnx = pytest.mark.skipif(not _have_onnx(), reason="onnx extra not installed (pip install 'alzmri[onnx]')")


def write_images(root: Path, layout: str = "kaggle", n_per_class: int = 5, size: tuple[int, int] = (44, 52), seed: int = 0) -> list[Path]:
    """Write small random grayscale PNGs in the Kaggle (``kaggle``) or flat (``folders``) layout."""
    rng = np.random.default_rng(seed)
    files = []
    splits = ("train", "test") if layout == "kaggle" else ("",)
    for split in splits:
        for ci, cls in enumerate(CLASSES):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                base = np.linspace(0, 255 * (ci + 1) / 2, size[0] * size[1]).reshape(size[1], size[0])
                img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
                p = folder / f"img{i}.png"
                Image.fromarray(img).save(p)
                files.append(p)
    return files


@pytest.fixture
def kaggle_root(tmp_path: Path) -> Path:
    """A tiny Kaggle-layout dataset: train/test x 2 classes x 5 images."""
    root = tmp_path / "kaggle"
    write_images(root, "kaggle")
    return root


@pytest.fixture
def artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private artifacts folder, also set as $ALZMRI_ARTIFACTS."""
    out = tmp_path / "artifacts"
    monkeypatch.setenv("ALZMRI_ARTIFACTS", str(out))
    return out


@pytest.fixture
def shared_data() -> Path:
    """The real Kaggle-layout slices beside the repo; the test is skipped where they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared data not present (../shared/data/alzheimer-mri)")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _private_signing_key(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Never touch the user's real model-signing key, the repo's artifacts folder, Keras's or matplotlib's config from tests
    (a test that wants its own artifacts folder takes the ``artifacts`` fixture)."""
    os.environ["ALZMRI_KEY_FILE"] = str(tmp_path_factory.mktemp("key") / "signing.key")
    os.environ["ALZMRI_ARTIFACTS"] = str(tmp_path_factory.mktemp("artifacts"))
    os.environ["MPLCONFIGDIR"] = str(tmp_path_factory.mktemp("mplconfig"))
    # Keras writes keras.json (and downloads) under KERAS_HOME; no test needs real ImageNet weights
    os.environ["KERAS_HOME"] = str(tmp_path_factory.mktemp("keras_home"))


@pytest.fixture(autouse=True)
def _tf_marker_is_honest(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test that uses TensorFlow in-process must carry the ``tf`` marker, so that ``-m "not tf"`` really is the
    fast numpy/scikit-learn suite. Seen two ways: TF gets imported during the test, or the test goes through
    ``featurize.tfquiet.import_tensorflow`` (every model build does), even when an earlier test imported TF."""
    from featurize import tfquiet

    used: list[bool] = []
    real = tfquiet.import_tensorflow

    def spy() -> object:
        used.append(True)
        return real()

    monkeypatch.setattr(tfquiet, "import_tensorflow", spy)
    before = "tensorflow" in sys.modules
    yield
    if (used or (not before and "tensorflow" in sys.modules)) and request.node.get_closest_marker("tf") is None:
        pytest.fail(f"{request.node.nodeid} uses TensorFlow but is not marked tf", pytrace=False)
