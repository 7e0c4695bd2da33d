"""The CNNs' data: decoded pixel arrays, the validation carve, class weights, tf.data input and inference."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from featurize.errors import DataError


def decode_images(paths: Sequence[str], size: tuple[int, int], resize: str, *, gray: bool, batch_size: int = 64,
                  progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """All images as uint8 [N,H,W,C] (C=1 luma when ``gray``), and the error per file ("" when it decoded)."""
    from featurize.pipeline import image_batches
    from featurize.progress import progress_bar

    w, h = size
    X = np.zeros((len(paths), h, w, 1 if gray else 3), np.uint8)
    errors: list[str] = []
    if not len(paths):
        return X, errors
    with progress_bar(len(paths), "decode", enabled=progress) as advance:
        for arr, errs in image_batches(list(paths), size, resize, batch_size):
            if gray:  # ITU-R 601 luma, rounded, in integers
                arr = ((arr[..., 0:1].astype(np.uint32) * 299 + arr[..., 1:2].astype(np.uint32) * 587
                        + arr[..., 2:3].astype(np.uint32) * 114 + 500) // 1000).astype(np.uint8)
            X[len(errors):len(errors) + len(arr)] = arr
            errors += errs
            advance(len(arr))
    return X, errors


def _stratify_ok(y: np.ndarray, n_splits: int) -> bool:
    """True when every class present has at least ``n_splits`` members."""
    counts = np.bincount(y)
    return len(y) > 0 and int(counts[counts > 0].min()) >= n_splits


def validation_split(y: np.ndarray, groups: np.ndarray | None, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, validation) for a stratified part of about ``fraction`` carved from a training part;
    group-aware when groups (subjects) are given.

    With groups: StratifiedGroupKFold with round(1/fraction) folds, first fold held out (GroupShuffleSplit when
    there are too few groups). Without: a stratified shuffle split (plain shuffle when a class is too small).
    """
    from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit, StratifiedGroupKFold, StratifiedShuffleSplit

    n = len(y)
    idx = np.arange(n)
    if n < 2:
        raise DataError(f"only {n} usable training image(s): too few to carve a validation part")
    k = max(2, int(round(1 / fraction)))
    if groups is not None:
        n_groups = len(set(groups))
        if n_groups < 2:
            raise DataError("all training images belong to one subject: cannot carve a subject-disjoint validation part; use --subjects none")
        if n_groups >= k and _stratify_ok(y, k):
            tr, te = next(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(idx, y, groups))
        else:
            tr, te = next(GroupShuffleSplit(n_splits=1, test_size=max(1, int(round(fraction * n_groups))) / n_groups,
                                            random_state=seed).split(idx, y, groups))
        return np.sort(tr), np.sort(te)
    k_present = len(set(y.tolist()))
    n_test = max(int(round(fraction * n)), k_present)
    if n - n_test >= k_present and _stratify_ok(y, 2):
        tr, te = next(StratifiedShuffleSplit(n_splits=1, test_size=n_test, random_state=seed).split(idx, y))
    else:
        tr, te = next(ShuffleSplit(n_splits=1, test_size=min(n - 1, max(1, int(round(fraction * n)))), random_state=seed).split(idx))
    return np.sort(tr), np.sort(te)


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced class weights n / (k * count) over the classes present (1.0 for absent classes)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.ones(n_classes)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return w


def train_dataset(X: np.ndarray, y: np.ndarray, w: np.ndarray, *, n_classes: int, batch_size: int, seed: int) -> Any:
    """A reshuffled-every-epoch tf.data set of (float image, one-hot label, sample weight) batches (one-hot, so
    that the loss can smooth the labels)."""
    from classify.cnn.keras_objects import tf

    n = len(y)
    Xt, yt, wt = tf.constant(X), tf.constant(y.astype(np.int32)), tf.constant(w.astype(np.float32))

    def gather(i: Any) -> tuple[Any, Any, Any]:
        return tf.cast(tf.gather(Xt, i), tf.float32), tf.one_hot(tf.gather(yt, i), n_classes), tf.gather(wt, i)

    ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def predict_proba(model: Any, X: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax outputs for uint8 images [N,H,W,C], in inference mode."""
    from classify.cnn.keras_objects import tf

    if not len(X):
        return np.zeros((0, int(model.output_shape[-1])), np.float32)
    ds = tf.data.Dataset.from_tensor_slices(X).batch(batch_size).map(lambda x: tf.cast(x, tf.float32)).prefetch(2)
    return np.asarray(model.predict(ds, verbose=0), dtype=np.float64)


class Images:
    """Decoded images ``X`` (uint8 [N,H,W,C]), their class indices ``y`` and subjects ``groups`` (None if unknown)."""

    __slots__ = ("X", "y", "groups")

    def __init__(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> None:
        self.X, self.y, self.groups = X, y, groups

    def __len__(self) -> int:
        return len(self.y)
