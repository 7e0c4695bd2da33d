"""The end-to-end CNN baseline's historical import path, kept because saved sidecars name it.

Every ``.keras`` sidecar says "import classify.baseline and call classify.baseline.load_baseline"; the code
lives in ``classify.cnn``.
"""

from __future__ import annotations

from classify.cnn.predict import load_baseline, predict_files
from classify.cnn.run import BaselineConfig, BaselineResult, train_baseline

__all__ = ["BaselineConfig", "BaselineResult", "load_baseline", "predict_files", "train_baseline"]
