"""Feature fusion: columns side by side on rows matched by (path, sha1); mismatched caches refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from classify.fusion import fuse, parse_fuse
from featurize.errors import DataError
from tests.classify.test_evaluate import synthetic


def _pair() -> tuple:
    a = synthetic(subjects=3, slices=2, dim=4, seed=0)
    a.sha1 = np.array([f"h{i}" for i in range(len(a))], dtype=object)
    a.meta.update(backbone="mobilenetv2", weights="imagenet", layers="last", fingerprint="fa", cache_path="a.h5",
                  image_size="224x224")
    b = a.subset(np.arange(len(a))[::-1])  # the same images, written in another order, other features
    b.X = np.asarray(b.X[:, :3] * 10, dtype=np.float32)
    b.meta.update(backbone="xception", weights="random-init", layers="block13_sepconv2_bn", fingerprint="fb",
                  cache_path="b.h5", image_size="224x224")
    return a, b


def test_fuse_aligns_rows_by_path_and_sha1() -> None:
    a, b = _pair()
    f = fuse([a, b])
    assert f.X.shape == (len(a), 7)
    by_path = {p: i for i, p in enumerate(b.paths)}
    for i, p in enumerate(a.paths):
        assert np.array_equal(f.X[i, :4], a.X[i]) and np.array_equal(f.X[i, 4:], b.X[by_path[p]])
    assert f.meta["backbone"] == "mobilenetv2+xception" and f.meta["weights"] == "imagenet+random-init"
    assert f.meta["layers"] == "last+block13_sepconv2_bn" and len(f.meta["fused_parts"]) == 2
    assert f.meta["fingerprint"] != fuse([b, a]).meta["fingerprint"]
    assert np.array_equal(f.y, a.y) and np.array_equal(f.subject, a.subject)


def test_mismatched_image_sets_are_refused_in_one_line() -> None:
    a, b = _pair()
    with pytest.raises(DataError, match="1 image\\(s\\) of a.h5 missing") as exc:
        fuse([a, b.subset(np.arange(1, len(b)))])
    assert "\n" not in str(exc.value)
    changed = b.subset(np.arange(len(b)))
    changed.sha1 = changed.sha1.copy()
    changed.sha1[0] = "other"  # an image changed since one of the caches was written
    with pytest.raises(DataError, match="same images"):
        fuse([a, changed])
    relabelled = b.subset(np.arange(len(b)))
    relabelled.y = (relabelled.y + 1) % 4
    with pytest.raises(DataError, match="labels or subjects differ"):
        fuse([a, relabelled])
    with pytest.raises(DataError, match="at least two"):
        fuse([a])


def test_parse_fuse() -> None:
    assert parse_fuse("a+b; c:mid+c:last") == [[("a", ""), ("b", "")], [("c", "mid"), ("c", "last")]]
    with pytest.raises(DataError, match="two parts"):
        parse_fuse("a")
