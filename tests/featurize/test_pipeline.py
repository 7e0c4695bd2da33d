"""The input pipeline: pixels of the grayscale fast path, batch order, errors in place, bounded read-ahead."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featurize.pipeline as pipeline
from featurize.images import _fit, _to_rgb, load_rgb
from featurize.pipeline import image_batches, item_batches


def _slice(path: Path, w: int = 61, h: int = 47, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.add.outer(np.linspace(0, 200, h), np.linspace(0, 50, w)) + rng.normal(0, 30, (h, w)), 0, 255)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("resize", ["stretch", "pad"])
@pytest.mark.parametrize("size", [(224, 224), (176, 208), (40, 30)])
def test_gray_fast_path_gives_the_pixels_of_the_rgb_route(tmp_path: Path, suffix: str, resize: str,
                                                          size: tuple[int, int]) -> None:
    path = _slice(tmp_path / f"s{suffix}")
    with Image.open(path) as im:
        assert im.mode == "L"
        im.load()
        reference = np.asarray(_fit(_to_rgb(im), size, resize))
    got = load_rgb(path, size, resize)
    assert got.shape == (size[1], size[0], 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, reference)


def test_batches_keep_input_order_and_put_errors_in_place(tmp_path: Path) -> None:
    files = [_slice(tmp_path / f"{i:02d}.png", seed=i) for i in range(23)]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths = [str(p) for p in files]
    paths.insert(7, str(tmp_path / "bad.png"))
    got, errors = [], []
    for images, errs in image_batches(paths, (32, 32), "stretch", batch_size=5):
        assert len(images) == len(errs) <= 5
        got.append(images)
        errors += errs
    images = np.concatenate(got)
    assert len(images) == len(paths) == len(errors)
    for i, p in enumerate(paths):
        if i == 7:
            assert errors[i].startswith("not an image") and not images[i].any()
        else:
            assert errors[i] == ""
            np.testing.assert_array_equal(images[i], load_rgb(p, (32, 32)))


def test_read_ahead_is_bounded_and_stops_when_the_consumer_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(_slice(tmp_path / "one.png"))
    decoded: list[str] = []
    real = pipeline.load_rgb

    def counting(p: str, size: tuple[int, int], resize: str) -> np.ndarray:
        decoded.append(p)
        return real(p, size, resize)

    monkeypatch.setattr(pipeline, "load_rgb", counting)
    batches = image_batches([path] * 400, (16, 16), "stretch", batch_size=4, threads=2, ahead=2)
    next(batches)
    time.sleep(0.3)  # plenty of time to run ahead if it were unbounded
    # the batch handed over, plus at most `ahead` batches in flight (memory does not grow with the dataset)
    assert len(decoded) <= 4 * (1 + 2)
    batches.close()
    n = len(decoded)
    time.sleep(0.2)
    assert len(decoded) == n


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread priority is a Linux feature")
def test_decoding_priority_is_normal_unless_asked_low(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(_slice(tmp_path / "one.png"))
    seen: list[int] = []
    real = pipeline.load_rgb

    def record(p: str, size: tuple[int, int], resize: str) -> np.ndarray:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real(p, size, resize)

    monkeypatch.setattr(pipeline, "load_rgb", record)
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    list(image_batches([path] * 6, (16, 16), "stretch", batch_size=3))
    assert seen and all(p == caller for p in seen)  # the default: decoding competes with the engine as an equal
    seen.clear()
    list(image_batches([path] * 6, (16, 16), "stretch", batch_size=3, low_priority=True))
    assert seen and all(p == 19 for p in seen)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller  # the caller keeps its priority


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread priority is a Linux feature")
def test_scan_decoding_runs_at_normal_priority_too() -> None:
    def decode(i: int) -> list[tuple[int, np.ndarray]]:
        return [(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), np.zeros((4, 4, 3), np.uint8))]

    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    tags = [t for _, batch in item_batches(range(6), decode, batch_size=2) for t in batch]
    assert tags == [caller] * 6  # the volume path's threads compete with the engine as equals, like image_batches
    low = [t for _, batch in item_batches(range(4), decode, batch_size=2, low_priority=True) for t in batch]
    assert low == [19] * 4
