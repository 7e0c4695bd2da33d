"""The end-to-end CNN baseline's historical import path, kept because saved sidecars name it.

Every ``.keras`` sidecar says "import classify.baseline and call classify.baseline.load_baseline"; the code
lives in ``classify.cnn``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from classify.cnn.predict import load_baseline, predict_files
    from classify.cnn.run import BaselineConfig, BaselineResult, train_baseline

__all__ = ["BaselineConfig", "BaselineResult", "load_baseline", "predict_files", "train_baseline"]


def __getattr__(name: str) -> Any:
    import classify.cnn

    if name not in __all__:
        raise AttributeError(f"module 'classify.baseline' has no attribute {name!r}")
    return getattr(classify.cnn, name)
