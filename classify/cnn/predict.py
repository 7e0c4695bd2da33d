"""Using a saved CNN: load the ``.keras`` model with its JSON sidecar, predict image files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from featurize.errors import AlzmriError


def load_baseline(model_path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """Load a baseline model and its JSON sidecar (class names, size, channels, resize) for prediction."""
    import tempfile

    from classify.bundle import verified_bytes

    path = Path(model_path)
    side = path.with_suffix(".json")
    if not path.is_file():
        raise AlzmriError(f"{path}: no such model; train one with `alzmri baseline`")
    if not side.is_file():
        raise AlzmriError(f"{side}: missing sidecar; retrain with `alzmri baseline`")
    # signed like the bundles: Keras's safe_mode has had bypasses, so only this user's own files are opened
    model_bytes, side_bytes = verified_bytes(path, side, retrain="retrain it with `alzmri baseline`")
    try:
        meta = json.loads(side_bytes)
    except ValueError as exc:
        raise AlzmriError(f"{side}: unreadable sidecar ({exc}); retrain with `alzmri baseline`") from None
    from classify.cnn.keras_objects import keras  # registers alzmri>BackbonePreprocess for loading

    with tempfile.TemporaryDirectory(prefix="alzmri-keras-") as d:  # load the very bytes that were verified
        copy = Path(d) / path.name
        copy.write_bytes(model_bytes)
        return keras.models.load_model(str(copy), compile=False, safe_mode=True), meta  # safe_mode: no Lambda code


def predict_files(model_path: str | os.PathLike[str], paths: Sequence[str], *,
                  batch_size: int = 32) -> tuple[np.ndarray, list[str]]:
    """Class probabilities for image files (rows of failed files are NaN) and the error per file ("" if fine)."""
    from classify.cnn.data import decode_images, predict_proba
    from featurize.images import parse_size

    model, meta = load_baseline(model_path)
    size = parse_size(meta["image_size"])
    X, errors = decode_images(paths, size, meta["resize"], gray=meta["color"] == "grayscale", batch_size=batch_size,
                              progress=False)
    probs = predict_proba(model, X, batch_size)
    probs[[bool(e) for e in errors]] = np.nan
    return probs, errors
