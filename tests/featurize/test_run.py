"""featurize: layouts, cache equality across batch sizes, resume, weights files, bad files, incremental reruns."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import featurize
from featurize import extractor
from featurize import run as frun
from featurize.dataset import scan
from featurize.errors import AlzmriError, CacheError, DataError
from featurize.summary import featurize_summary
from tests.conftest import write_images
from tests.helpers import assert_same_features

pytestmark = [pytest.mark.tf, pytest.mark.slow]

FAST = dict(backbone="mobilenetv2", weights="none", image_size="32x32", subjects="none", progress=False, engine="tf")


def _feat(data: Path, **kw: object) -> frun.FeaturizeResult:
    return frun.featurize_dataset(data, **{**FAST, **kw})


def test_kaggle_layout_keeps_split_and_severity_order(kaggle_root: Path, artifacts: Path) -> None:
    res = _feat(kaggle_root)
    fs = featurize.load(res.cache)
    assert fs.X.shape == (20, 1280) and fs.X.dtype == np.float32
    assert fs.class_names == ["NonDemented", "MildDemented"]  # severity order, not alphabetical
    assert sorted(set(fs.split)) == ["test", "train"] and (fs.split == "test").sum() == 10
    assert all(len(s) == 40 for s in fs.sha1)
    assert fs.meta["weights"] == "random-init" and fs.meta["image_size"] == "32x32"
    assert res.cache.parent.parent == artifacts / "features"


def test_flat_folders_and_manifest(tmp_path: Path, artifacts: Path) -> None:
    flat = tmp_path / "flat"
    write_images(flat, "folders", n_per_class=4)
    fs = featurize.load(_feat(flat).cache)
    assert len(fs) == 8 and set(fs.split) == {""}
    rows = [{"path": f"flat/{p}", "label": p.split("/")[0], "split": "train" if i % 2 else "test", "subject": f"s{i // 2}"}
            for i, p in enumerate(sorted(fs.paths))]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    fm = featurize.load(frun.featurize_dataset(manifest, **{**FAST, "subjects": "column"}).cache)
    assert len(fm) == 8 and set(fm.subject) == {"s0", "s1", "s2", "s3"}
    order = np.argsort(fm.paths)
    assert_same_features(fm.X[order], fs.X[np.argsort(fs.paths)])


def test_features_identical_across_batch_sizes(kaggle_root: Path, artifacts: Path, tmp_path: Path) -> None:
    a = featurize.load(_feat(kaggle_root, batch_size=3).cache)
    b = featurize.load(_feat(kaggle_root, batch_size=16, artifacts=tmp_path / "other").cache)
    assert list(a.paths) == list(b.paths)
    assert_same_features(a.X, b.X)


def _wrapped_interrupt() -> BaseException:
    """Ctrl-C as TensorFlow surfaces it when SIGINT lands while it converts a numpy batch (seen in a real run)."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        try:
            raise SystemError("<built-in method __array__ of numpy.ndarray object> returned a result with an exception set")
        except SystemError as exc:
            return exc


@pytest.mark.parametrize("how", ["bare", "wrapped by a C extension"])
def test_resume_after_interruption_equals_clean_run(kaggle_root: Path, artifacts: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    clean = featurize.load(_feat(kaggle_root, artifacts=tmp_path / "clean", batch_size=4).cache)
    import featurize.pipeline as pipe

    real = pipe.make_forward
    calls = {"n": 0}

    def flaky(model, preprocess, batch_size):  # type: ignore[no-untyped-def]
        fwd = real(model, preprocess, batch_size)

        def run(batch):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 4:  # warm-up + 2 batches done, then Ctrl-C
                raise KeyboardInterrupt if how == "bare" else _wrapped_interrupt()
            return fwd(batch)
        return run

    monkeypatch.setattr(pipe, "make_forward", flaky)
    with pytest.raises(AlzmriError, match="rerun the same command to resume"):
        _feat(kaggle_root, batch_size=4, part_rows=4)
    monkeypatch.setattr(pipe, "make_forward", real)
    res = _feat(kaggle_root, batch_size=4)
    assert res.n_computed == 12  # 8 of 20 survived the interruption
    resumed = featurize.load(res.cache)
    assert list(resumed.paths) == list(clean.paths)
    assert_same_features(resumed.X, clean.X)
    assert not (res.cache.parent / (res.cache.name + ".parts")).exists()


def test_weights_path_round_trip(kaggle_root: Path, artifacts: Path, tmp_path: Path) -> None:
    from featurize.backbones import build_base, get_backbone

    base = build_base(get_backbone("mobilenetv2"), "none", (32, 32), seed=7)
    wfile = tmp_path / "mine.weights.h5"
    base.save_weights(str(wfile))
    from_file = _feat(kaggle_root, weights=str(wfile))
    assert from_file.settings["weights"].startswith("file-")
    seeded = _feat(kaggle_root, seed=7, artifacts=tmp_path / "seeded")
    assert_same_features(featurize.load(from_file.cache).X, featurize.load(seeded.cache).X)
    assert from_file.settings["weights_sha256"] == seeded.settings["weights_sha256"]
    with pytest.raises(AlzmriError, match="weights file not found"):
        _feat(kaggle_root, weights=str(tmp_path / "missing.h5"))


def test_corrupt_files_are_skipped_listed_and_recorded(kaggle_root: Path, artifacts: Path) -> None:
    cls = kaggle_root / "train" / "NonDemented"
    (cls / "zero.png").write_bytes(b"")
    (cls / "text.jpg").write_text("not an image")
    good = (cls / "img0.png").read_bytes()
    (cls / "trunc.png").write_bytes(good[: len(good) // 2])
    res = _feat(kaggle_root)
    reasons = dict(res.failed)
    assert set(reasons) == {"train/NonDemented/zero.png", "train/NonDemented/text.jpg", "train/NonDemented/trunc.png"}
    assert "zero-byte" in reasons["train/NonDemented/zero.png"]
    fs = featurize.load(res.cache)
    assert len(fs) == 20 and len(fs.meta["failed"]) == 3
    again = _feat(kaggle_root)
    assert again.n_computed == 0 and len(again.failed) == 3  # known-bad files are not retried


def test_incremental_rerun_computes_nothing_then_only_new(kaggle_root: Path, artifacts: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = _feat(kaggle_root)
    before = first.cache.stat().st_mtime_ns
    # the first run says where its time went: TF, the build, the warm-up trace, the loop and the write
    assert {"scan", "import", "build", "checksum", "compile", "loop", "write"} <= set(first.phases)
    assert all(v >= 0 for v in first.phases.values()) and first.phases["loop"] > 0
    assert "time (model built with TensorFlow this run): " in featurize_summary(first)

    def no_model(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("a fully cached rerun must not build the model")

    with monkeypatch.context() as m:
        m.setattr(extractor, "build_base", no_model)
        again = _feat(kaggle_root)
    assert again.n_computed == 0 and first.cache.stat().st_mtime_ns == before
    assert set(again.phases) == {"scan", "write"}  # nothing built, nothing run: no phases from the run before
    assert "time (model built" not in featurize_summary(again)
    shutil.copy(kaggle_root / "train" / "MildDemented" / "img0.png", kaggle_root / "train" / "MildDemented" / "new.png")
    (kaggle_root / "test" / "NonDemented" / "img1.png").unlink()
    third = _feat(kaggle_root)
    assert third.n_computed == 1
    fs = featurize.load(third.cache)
    assert len(fs) == 20 and "test/NonDemented/img1.png" not in set(fs.paths)
    assert "train/MildDemented/new.png" in set(fs.paths)


def test_unreadable_cache_is_rebuilt(kaggle_root: Path, artifacts: Path) -> None:
    res = _feat(kaggle_root)
    ref = featurize.load(res.cache).X
    res.cache.write_bytes(res.cache.read_bytes()[:500])  # as if truncated
    msgs: list[str] = []
    again = _feat(kaggle_root, log=msgs.append)
    assert again.n_computed == 20 and any("rebuilding" in m for m in msgs)
    assert_same_features(featurize.load(again.cache).X, ref)


def test_settings_are_never_mixed(kaggle_root: Path, artifacts: Path) -> None:
    a = _feat(kaggle_root)
    b = _feat(kaggle_root, pooling="max")
    c = _feat(kaggle_root, image_size="40x48")
    assert len({a.cache, b.cache, c.cache}) == 3
    with h5py.File(b.cache) as f:
        assert f.attrs["pooling"] == "max"


@pytest.mark.parametrize("make, match", [
    (lambda root: None, "no such folder"),
    (lambda root: root.mkdir(), "no images found"),
    (lambda root: write_images(root, "folders") and shutil.rmtree(root / "MildDemented"), "only one class"),
])
def test_bad_data_roots_give_one_line_errors(tmp_path: Path, make, match: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DataError, match=match) as info:
        scan(root)
    assert "\n" not in str(info.value)


def test_manifest_missing_column_and_missing_file(tmp_path: Path) -> None:
    write_images(tmp_path / "d", "folders", n_per_class=2)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nd/NonDemented/img0.png,NonDemented\n")
    with pytest.raises(DataError, match="lacks column"):
        scan(bad)
    m = tmp_path / "m.csv"
    m.write_text("path,label\nd/NonDemented/img0.png,NonDemented\nd/MildDemented/img0.png,MildDemented\nd/gone.png,MildDemented\n")
    ds = scan(m)
    assert len(ds.table) == 2 and any("gone.png" in p and "missing" in p for p in ds.problems)


def test_load_refuses_incomplete_cache(tmp_path: Path) -> None:
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f.attrs["format_version"] = 1
        f.attrs["complete"] = False
    with pytest.raises(CacheError, match="incomplete"):
        featurize.load(p)


def test_one_pass_writes_one_cache_per_layer_choice(kaggle_root: Path, artifacts: Path) -> None:
    many = frun.featurize_layers(kaggle_root, layer_choices=["last", "mid", "multi"], **{k: v for k, v in FAST.items()})
    assert len({r.cache for r in many}) == 3 and all(r.n_computed == 20 for r in many)
    last, mid, multi = (featurize.load(r.cache) for r in many)
    assert last.X.shape[1] == 1280 and mid.meta["layers"] == "block_13_expand_relu"
    assert multi.X.shape[1] == 192 + 576 + 1280  # block_6_expand, block_13_expand, last
    alone = featurize.load(_feat(kaggle_root, layers="mid", artifacts=artifacts / "alone").cache)
    assert_same_features(mid.X, alone.X)
    assert_same_features(multi.X[:, -1280:], last.X)
    assert all(r.n_computed == 0 for r in frun.featurize_layers(kaggle_root, layer_choices=["last", "mid"], **FAST))


def test_unknown_engine_is_refused_before_any_file_is_read(kaggle_root: Path, artifacts: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frun, "scan", lambda *a, **k: pytest.fail("scanned the data before checking --engine"))
    with pytest.raises(AlzmriError, match="unknown engine 'onxx'; choose one of: auto, tf, onnx, openvino"):
        frun.featurize_dataset(kaggle_root, engine="onxx", artifacts=artifacts)
