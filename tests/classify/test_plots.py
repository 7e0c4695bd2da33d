"""PNG outputs: confusion matrices and the balanced-accuracy summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from classify.plots import confusion_from_row, confusion_png, summary_png

PNG = b"\x89PNG\r\n\x1a\n"


def test_confusion_png_is_written(tmp_path: Path) -> None:
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # an empty row must not divide by zero
    p = confusion_png(tmp_path / "plots" / "cm.png", cm, ["NonDemented", "VeryMildDemented", "MildDemented"], "t")
    assert p.read_bytes()[:8] == PNG and p.stat().st_size > 1000
    row = {"backbone": "b", "weights": "imagenet", "head": "svm", "protocol": "official", "task": "stages",
           "balanced_accuracy": 0.5, "confusion": json.dumps(cm.tolist()), "class_names": json.dumps(["a", "b", "c"])}
    assert confusion_from_row(tmp_path / "r.png", row).read_bytes()[:8] == PNG
    assert confusion_from_row(tmp_path / "none.png", {**row, "confusion": float("nan")}) is None
    assert not list(tmp_path.rglob(".*tmp*"))


def test_summary_png_groups_backbones_heads_and_protocols(tmp_path: Path) -> None:
    rows = []
    for bb in ("mobilenetv2", "resnet50"):
        for head in ("logreg", "svm"):
            for proto, std in (("official", np.nan), ("subject-cv", 0.04)):
                rows.append(dict(dataset="d", backbone=bb, weights="imagenet", layers="last", task="stages", head=head,
                                 protocol=proto, balanced_accuracy=0.6, balanced_accuracy_std=std,
                                 class_names=json.dumps(["a", "b", "c", "d"])))
    rows.append(dict(dataset="d", backbone="scratch", weights="random-init", layers="", task="binary", head="cnn",
                     protocol="official", balanced_accuracy=0.7, epochs=3))
    p = summary_png(tmp_path / "summary.png", pd.DataFrame(rows), title="d")
    assert p is not None and p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    assert summary_png(tmp_path / "empty.png", pd.DataFrame({"balanced_accuracy": [np.nan]})) is None
