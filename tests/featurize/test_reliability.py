"""Faults: kill -9 mid-run, the cache lock, odd image files and paths (real EFBIG and more kill points: tests/reliability)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featurize
from featurize import run as frun
from featurize import store
from featurize.errors import CacheError
from featurize.images import load_rgb
from tests.conftest import write_images

FAST = dict(backbone="mobilenetv2", weights="none", image_size="32x32", subjects="none", progress=False, engine="tf")
REPO = Path(__file__).resolve().parents[2]


def _child(data: Path, artifacts: Path, stderr: Path) -> subprocess.Popen[bytes]:
    code = ("import sys; from featurize.run import featurize_dataset; "
            "featurize_dataset(sys.argv[1], backbone='mobilenetv2', weights='none', image_size='96x96', subjects='none', "
            "progress=False, batch_size=4, part_rows=8, artifacts=sys.argv[2], engine='tf')")
    with open(stderr, "wb") as fh:  # a child that fails early explains itself
        return subprocess.Popen([sys.executable, "-c", code, str(data), str(artifacts)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=fh)


@pytest.mark.tf
@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_images(data, "kaggle", n_per_class=50)  # 200 images
    killed_art = tmp_path / "killed"
    proc = _child(data, killed_art, tmp_path / "stderr.txt")
    journal = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            found = list(killed_art.glob("features/*/*.parts/part-*.npz"))
            if len(found) >= 2:
                journal = found[0].parent
                break
            time.sleep(0.01)
    finally:
        proc.kill()  # SIGKILL; safe after the child exited (Popen knows it was reaped)
        proc.wait()
    assert journal is not None, "the child finished or failed before it could be killed: " + (tmp_path / "stderr.txt").read_text()[-2000:]
    cache = journal.with_name(journal.name[: -len(".parts")])
    assert not cache.exists()  # the cache is only ever written whole
    res = frun.featurize_dataset(data, **{**FAST, "image_size": "96x96"}, batch_size=4, artifacts=killed_art)
    assert 0 < res.n_computed < 200
    clean = frun.featurize_dataset(data, **{**FAST, "image_size": "96x96"}, batch_size=4, artifacts=tmp_path / "clean")
    a, b = featurize.load(res.cache), featurize.load(clean.cache)
    assert list(a.paths) == list(b.paths) and list(a.sha1) == list(b.sha1)
    np.testing.assert_allclose(a.X, b.X, atol=1e-6)


@pytest.mark.tf
def test_second_writer_is_refused_while_the_cache_is_locked(kaggle_root: Path, artifacts: Path) -> None:
    cache = frun.cache_path(kaggle_root, frun.settings_for("mobilenetv2", "none", "32x32", "avg", "stretch", "last"))
    with store.locked(cache):
        with pytest.raises(CacheError, match=r"\(featurize\): another run \(pid \d+"):
            frun.featurize_dataset(kaggle_root, **FAST)
    assert frun.featurize_dataset(kaggle_root, **FAST).n_computed == 20


@pytest.mark.parametrize("kind", ["png16", "rgba", "cmyk", "palette", "tiff", "tiny", "bmp"])
def test_odd_image_formats_become_rgb(tmp_path: Path, kind: str) -> None:
    p = tmp_path / f"x.{ {'cmyk': 'jpg', 'tiff': 'tif', 'bmp': 'bmp'}.get(kind, 'png') }"
    g = np.tile(np.arange(64, dtype=np.uint16), (48, 1))
    if kind == "png16":
        Image.fromarray((g * 1000).astype(np.uint16)).save(p)
    elif kind == "rgba":
        Image.fromarray(np.dstack([g.astype(np.uint8)] * 3 + [np.full(g.shape, 128, np.uint8)])).save(p)
    elif kind == "cmyk":
        Image.fromarray(g.astype(np.uint8)).convert("CMYK").save(p)
    elif kind == "palette":
        Image.fromarray(g.astype(np.uint8)).convert("P").save(p)
    elif kind == "tiff":
        Image.fromarray((g * 1000).astype(np.uint16)).save(p)
    elif kind == "tiny":
        Image.fromarray(np.full((8, 8), 200, np.uint8)).save(p)
    else:
        Image.fromarray(g.astype(np.uint8)).save(p)
    out = load_rgb(p, (32, 24))
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8 and out.max() > 0
    if kind == "png16":
        assert out.max() >= 250  # scaled by the image's own range, not left dark


def test_huge_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    """A 12,000 x 12,000 RGB JPEG (432 MB if decoded whole) costs a fresh process far less than that."""
    p = tmp_path / "huge.jpg"
    Image.new("RGB", (12000, 12000), (90, 90, 90)).save(p, quality=50)
    code = ("import resource, sys, warnings; warnings.simplefilter('ignore'); from featurize.images import load_rgb\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "out = load_rgb(sys.argv[1], (224, 224))\n"
            "grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024\n"
            "print(out.shape, int(out.mean()), grown)")
    proc = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    shape, mean, grown_mb = proc.stdout.rsplit(")", 1)[0] + ")", *proc.stdout.rsplit(")", 1)[1].split()
    assert shape == "(224, 224, 3)" and abs(int(mean) - 90) <= 2
    assert float(grown_mb) < 150, f"decoding grew the process by {grown_mb} MB"


@pytest.mark.tf
def test_unicode_spaces_quotes_and_symlinks(tmp_path: Path, artifacts: Path) -> None:
    root = tmp_path / "dätä set"
    write_images(root, "folders", n_per_class=3)
    odd = root / "NonDemented" / "scan 'ü' \"1\".png"
    (root / "NonDemented" / "img0.png").rename(odd)
    (root / "MildDemented" / "link.png").symlink_to(root / "MildDemented" / "img1.png")
    (root / "MildDemented" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    res = frun.featurize_dataset(root, **FAST)
    fs = featurize.load(res.cache)
    assert "NonDemented/scan 'ü' \"1\".png" in set(fs.paths) and "MildDemented/link.png" in set(fs.paths)
    assert dict(res.failed) == {"MildDemented/dangling.png": "dangling symlink"}


def test_label_conflict_is_reported(tmp_path: Path) -> None:
    from featurize.dataset import scan

    root = tmp_path / "d"
    write_images(root, "folders", n_per_class=2)
    (root / "MildDemented" / "copy.png").write_bytes((root / "NonDemented" / "img0.png").read_bytes())
    ds = scan(root)
    assert any("label conflict" in p and "copy.png" in p for p in ds.problems)


def test_train_test_class_mismatch_is_reported(tmp_path: Path) -> None:
    from featurize.dataset import scan

    root = tmp_path / "d"
    write_images(root, "kaggle", n_per_class=2)
    extra = root / "test" / "ModerateDemented"
    extra.mkdir()
    Image.new("L", (20, 20), 3).save(extra / "a.png")
    (root / "train" / "Empty").mkdir()
    ds = scan(root)
    assert any("ModerateDemented" in p and "not in train" in p for p in ds.problems)
    assert any("Empty" in p and "empty class folder" in p for p in ds.problems)


@pytest.mark.tf
@pytest.mark.slow
def test_cache_from_an_older_format_is_rebuilt(kaggle_root: Path, artifacts: Path) -> None:
    import h5py

    res = frun.featurize_dataset(kaggle_root, **FAST)
    with h5py.File(res.cache, "r+") as f:
        f.attrs["format_version"] = 0
    msgs: list[str] = []
    again = frun.featurize_dataset(kaggle_root, **FAST, log=msgs.append)
    assert again.n_computed == 20 and any("another version" in m for m in msgs)
    assert featurize.load(again.cache).meta["format_version"] == store.FORMAT_VERSION


@pytest.mark.tf
@pytest.mark.slow
def test_ctrl_c_in_classify_keeps_only_finished_rows_and_a_rerun_completes(kaggle_root: Path, artifacts: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    import classify.run as crun
    from classify.bundle import list_bundles, load_bundle
    from featurize.dataset import dataset_id

    frun.featurize_dataset(kaggle_root, **FAST)
    real = crun.evaluate
    calls = {"n": 0}

    def interrupted(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(crun, "evaluate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            crun.classify_dataset(kaggle_root, heads=["logreg", "svm"], progress=False, log=lambda s: None)
    report = pd.read_csv(artifacts / "report.csv")
    assert list(report["head"]) == ["logreg"]
    bundles = list_bundles(dataset_id(kaggle_root))
    assert [b.name for b in bundles] == ["mobilenetv2__logreg__random-init__32x32.joblib"]
    load_bundle(bundles[0])  # what was written is complete and verifiable
    crun.classify_dataset(kaggle_root, heads=["logreg", "svm"], progress=False, log=lambda s: None)
    report = pd.read_csv(artifacts / "report.csv")
    assert sorted(report["head"]) == ["logreg", "svm"]
