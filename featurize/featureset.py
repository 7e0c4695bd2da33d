"""FeatureSet: what a feature cache holds, as arrays ready for scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FeatureSet:
    """Cached embeddings of one dataset under one backbone configuration.

    ``y`` holds integer indices into ``class_names``. ``split`` is "train", "test" or ""
    (no split given). ``subject`` is "" where unknown. ``meta`` carries the cache
    attributes (backbone, weights, weights_sha256, image_size, pooling, resize, layers,
    dataset_id, data_root, fingerprint, ...).
    """

    X: np.ndarray
    y: np.ndarray
    paths: np.ndarray
    split: np.ndarray
    subject: np.ndarray
    sha1: np.ndarray
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def has_split(self) -> bool:
        """True when the data came with a train/test split."""
        return bool(np.any(self.split == "test")) and bool(np.any(self.split == "train"))

    @property
    def has_subjects(self) -> bool:
        """True when every row has a subject id."""
        return len(self) > 0 and bool(np.all(self.subject != ""))

    def subset(self, mask: np.ndarray) -> "FeatureSet":
        """Rows selected by a boolean mask or index array, sharing class names and meta."""
        return FeatureSet(
            X=self.X[mask],
            y=self.y[mask],
            paths=self.paths[mask],
            split=self.split[mask],
            subject=self.subject[mask],
            sha1=self.sha1[mask],
            class_names=list(self.class_names),
            meta=dict(self.meta),
        )
