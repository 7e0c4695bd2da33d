"""End-to-end CNNs trained on the images themselves (``alzmri baseline``), the contrast to the frozen-feature heads.

They share the heads' protocols (``classify.protocols``), metrics (``classify.metrics``) and report rows
(``classify.report.make_row``). Importing this package does not import TensorFlow; ``keras_objects``,
``models`` and ``train`` do, and are imported only when a network is built.

  spec.py           constants, the network spec and the training schedule
  keras_objects.py  Keras, the custom layer and metric (registered for loading), the discriminative-LR Adam
  models.py         the scratch CNN, the fine-tune model, freezing stages, augmentation
  data.py           decoding, the validation carve, class weights, tf.data input, inference
  checkpoint.py     per-epoch checkpoints that a rerun resumes
  train.py          EpochControl (the per-epoch callback), fit_network and the per-stage optimizer/schedule
  run.py            BaselineConfig and train_baseline
  predict.py        load_baseline and predict_files
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from classify.cnn.predict import load_baseline, predict_files
    from classify.cnn.run import BaselineConfig, BaselineResult, train_baseline

# Names resolve on first use, so that predicting with a saved model imports neither training code nor scikit-learn.
_WHERE = {"BaselineConfig": "run", "BaselineResult": "run", "train_baseline": "run", "load_baseline": "predict",
          "predict_files": "predict"}
__all__ = ["BaselineConfig", "BaselineResult", "load_baseline", "predict_files", "train_baseline"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'classify.cnn' has no attribute {name!r}")
    return getattr(importlib.import_module(f"classify.cnn.{_WHERE[name]}"), name)
