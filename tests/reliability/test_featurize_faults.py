"""featurize under a real full disk (EFBIG from RLIMIT_FSIZE) and kill -9 at chosen points, in real subprocesses.

Each scenario starts from a valid cache made in-process, then reruns the real CLI over it with new images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featurize
from featurize import run as frun
from featurize import store
from tests.conftest import write_images
from tests.reliability.helpers import FAST, FEAT, error_lines, run

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def _old_cache(tmp_path: Path, n_new: int) -> tuple[Path, Path, Path, np.ndarray, list[str]]:
    data, art = tmp_path / "data", tmp_path / "art"
    write_images(data, "kaggle", n_per_class=5)  # 20 images
    first = frun.featurize_dataset(data, **FAST, artifacts=art)
    before = featurize.load(first.cache).X.copy()
    write_images(data / "train", "folders", n_per_class=n_new // 2, seed=5)  # overwrites 5 per class: n_new changed or new
    return data, art, first.cache, before, ["featurize", "--data", data, "--artifacts", art, *FEAT]


def _leftovers(cache: Path) -> list[Path]:
    return list(cache.parent.glob(f".{cache.name}.tmp-*")) + list(store.parts_dir(cache).glob(".*.tmp-*"))


def test_disk_full_on_a_journal_part_or_the_new_cache_keeps_the_old_cache(tmp_path: Path) -> None:
    data, art, cache, before, args = _old_cache(tmp_path, 4)
    old_sha1 = featurize.load(cache).sha1
    # a 4-image part is 20 kB: at 8 kB the journal write fails
    part = run(args, fsize=8192)
    assert part.returncode == 4, part.stderr
    lines = error_lines(part.stderr)
    assert len(lines) == 1 and "free disk space" in lines[0] and ".parts" in lines[0], part.stderr
    np.testing.assert_array_equal(featurize.load(cache).X, before)
    assert not _leftovers(cache) and not list(store.parts_dir(cache).glob("part-*"))
    # at 64 kB the part fits and the new 20-row cache (100 kB) does not
    full = run(args, fsize=64 * 1024)
    assert full.returncode == 4, full.stderr
    lines = error_lines(full.stderr)
    assert len(lines) == 1 and "cannot write the cache" in lines[0] and "free disk space" in lines[0], full.stderr
    np.testing.assert_array_equal(featurize.load(cache).X, before)  # the old cache, whole and valid
    assert not _leftovers(cache) and len(list(store.parts_dir(cache).glob("part-*.npz"))) == 1
    final = frun.featurize_dataset(data, **FAST, artifacts=art)
    assert final.n_computed == 0  # the 4 features computed before the failed write were journaled, not lost
    fs = featurize.load(final.cache)
    assert (fs.sha1 != old_sha1).sum() == 4 and not store.parts_dir(final.cache).exists()


def test_kill_9_in_a_rerun_and_in_the_final_cache_write_then_a_rerun_equals_a_clean_run(tmp_path: Path) -> None:
    data, art, cache, before, args = _old_cache(tmp_path, 40)
    lib = ("import sys; from featurize.run import featurize_dataset; "
           f"featurize_dataset(sys.argv[1], artifacts=sys.argv[2], part_rows=8, "
           f"log=lambda m: print(m, file=sys.stderr), **{FAST!r})")
    # 1. killed after its 2nd journal part of a rerun over the old cache
    one = run(["-c", lib, data, art], kill=["featurize.store:write_part,2,after"])
    assert one.returncode == -9, one.stderr
    np.testing.assert_array_equal(featurize.load(cache).X, before)
    assert len(list(store.parts_dir(cache).glob("part-*.npz"))) == 2
    # 2. the next rerun resumes, computes the rest, and is killed while writing the new cache (after one block)
    two = run(["-c", lib, data, art], kill=["featurize.target:Sources.blocks,1,item"])
    assert two.returncode == -9, two.stderr
    assert "resuming: 16 images" in two.stderr, two.stderr
    np.testing.assert_array_equal(featurize.load(cache).X, before)  # the half-written cache never replaced it
    assert len(list(cache.parent.glob(f".{cache.name}.tmp-*"))) == 1  # what kill -9 leaves behind
    # 3. the journal holds every new image: the last rerun computes nothing, and cleans up
    msgs: list[str] = []
    res = frun.featurize_dataset(data, **FAST, artifacts=art, log=msgs.append)
    assert res.n_computed == 0 and any("resuming: 40 images" in m for m in msgs), msgs
    assert not _leftovers(cache) and not store.parts_dir(cache).exists()
    clean = frun.featurize_dataset(data, **FAST, artifacts=tmp_path / "clean")
    a, b = featurize.load(res.cache), featurize.load(clean.cache)
    assert list(a.paths) == list(b.paths) and list(a.sha1) == list(b.sha1)
    np.testing.assert_allclose(a.X, b.X, atol=1e-6)


def test_damaged_journal_parts_truncated_or_bit_flipped_are_detected_and_recomputed_with_one_line(tmp_path: Path) -> None:
    data, art, cache, before, args = _old_cache(tmp_path, 40)
    lib = ("import sys; from featurize.run import featurize_dataset; "
           f"featurize_dataset(sys.argv[1], artifacts=sys.argv[2], part_rows=8, **{FAST!r})")
    assert run(["-c", lib, data, art], kill=["featurize.store:write_part,4,after"]).returncode == -9
    parts = sorted(store.parts_dir(cache).glob("part-*.npz"))
    assert len(parts) == 4
    raw = parts[1].read_bytes()
    parts[1].write_bytes(raw[: len(raw) // 2])  # truncated
    raw = bytearray(parts[2].read_bytes())
    raw[len(raw) // 2] ^= 0x10  # one bit in the middle of the features: the zip CRC catches it
    parts[2].write_bytes(bytes(raw))
    msgs: list[str] = []
    res = frun.featurize_dataset(data, **FAST, artifacts=art, log=msgs.append)
    said = [m for m in msgs if "damaged journal part" in m]
    assert len(said) == 2 and parts[1].name in said[0] and parts[2].name in said[1], msgs
    assert res.n_computed == 40 - 16  # the two intact parts are reused, the damaged ones recomputed
    clean = frun.featurize_dataset(data, **FAST, artifacts=tmp_path / "clean")
    np.testing.assert_allclose(featurize.load(res.cache).X, featurize.load(clean.cache).X, atol=1e-6)


def test_other_weights_behind_the_same_cache_name_recompute_everything(tmp_path: Path) -> None:
    """Random-init with another seed: the same cache name, other weights. A fully cached rerun never builds the
    model, so it goes by the recorded seed; with something new to compute, the checksum says it."""
    data, art = tmp_path / "data", tmp_path / "art"
    write_images(data, "kaggle", n_per_class=3)
    first = frun.featurize_dataset(data, **FAST, artifacts=art)
    msgs: list[str] = []
    other = frun.featurize_dataset(data, **FAST, artifacts=art, seed=7, log=msgs.append)
    assert other.cache == first.cache and other.n_computed == 12, msgs
    assert sum("recomputing all" in m for m in msgs) == 1
    assert other.settings["weights_sha256"] != first.settings["weights_sha256"]
    assert featurize.load(other.cache).meta["weights_sha256"] == other.settings["weights_sha256"]
    Image.fromarray(np.full((52, 44), 77, np.uint8)).save(data / "train" / "NonDemented" / "new.png")
    back = frun.featurize_dataset(data, **FAST, artifacts=art, seed=0, log=msgs.append)
    assert back.n_computed == 13 and back.settings["weights_sha256"] == first.settings["weights_sha256"]
