"""``alzmri demo``: the whole product on built-in synthetic MRI slices, in a few minutes on 2 CPU cores."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from featurize.config import artifacts_dir

Log = Callable[[str], None]


@dataclass
class DemoResult:
    """Where the demo put things, and the report table it printed."""

    data: Path
    weights: str
    table: str
    report: Path


def featurize_or_fall_back(data: Path, *, backbone: str, weights: str, log: Log, **options: Any) -> tuple[Any, str]:
    """Featurize with ``weights``; when ImageNet weights cannot be had, say so in one line and use random init.

    The backbone is built once: the featurize run itself finds out whether the weights load."""
    from featurize.errors import WeightsError
    from featurize.run import featurize_dataset

    try:
        return featurize_dataset(data, backbone=backbone, weights=weights, log=log, **options), weights
    except WeightsError:
        if weights != "imagenet":
            raise
    log(f"ImageNet weights for {backbone} are not available offline (set KERAS_HOME to a Keras cache that has them); "
        "running with --weights none: every output is labelled random-init, which is NOT transfer learning")
    return featurize_dataset(data, backbone=backbone, weights="none", log=log, **options), "none"


def run_demo(artifacts: str | os.PathLike[str] | None = None, *, backbone: str = "mobilenetv2", weights: str = "imagenet",
             subjects_per_class: int = 8, slices_per_subject: int = 8, baseline_epochs: int = 4,
             permutation: int = 10, image_size: str | None = None, progress: bool = True,
             log: Log = lambda s: None, volumes: bool = False) -> DemoResult:
    """Generate the demo data, featurize, train all heads under the official and subject-cv protocols,
    train a short scratch CNN, and return the report table. ``volumes``: the same on synthetic 3-D NIfTI scans
    (``slices_per_subject`` axial slices cut from each), where a scan is a subject and the official protocol, with
    no split in the data, holds out whole scans."""
    from classify.cnn import train_baseline
    from classify.run import classify_dataset, report_command
    from featurize.config import report_path
    from featurize.summary import featurize_summary

    art = artifacts_dir(artifacts)
    extra: dict[str, Any] = {}
    if volumes:
        from featurize.synth_volumes import write_volume_dataset
        from featurize.volume_featurize import VolumeOptions

        data = art / "demo" / "synthetic-volumes"
        extra["volumes"] = VolumeOptions(views=("axial",), n_slices=slices_per_subject)
        log(f"[1/5] generating synthetic 3-D scans (NIfTI): 4 stages x {subjects_per_class} subjects -> {data}")
        write_volume_dataset(data, fmt="nifti", subjects_per_class=subjects_per_class)
        log(f"[2/5] featurizing {slices_per_subject} axial slices per scan with {backbone}")
    else:
        from featurize.synth import write_dataset

        data = art / "demo" / "synthetic-mri"
        log(f"[1/5] generating synthetic MRI slices: 4 stages x {subjects_per_class} subjects x {slices_per_subject} slices -> {data}")
        write_dataset(data, subjects_per_class=subjects_per_class, slices_per_subject=slices_per_subject, fmt="png", split="slice")
        log(f"[2/5] featurizing with {backbone} ({'ImageNet' if weights == 'imagenet' else weights} weights)")
    res, weights = featurize_or_fall_back(data, backbone=backbone, weights=weights, log=log, image_size=image_size,
                                          subjects="auto", artifacts=art, progress=progress, **extra)
    log(featurize_summary(res))
    log("[3/5] scikit-learn heads: hold-out by scan (official) and subject-cv, one subject per scan" if volumes else
        "[3/5] scikit-learn heads on the cached features: official split (leaky, like Kaggle's) and subject-cv (honest)")
    for protocol in ("official", "subject-cv"):
        classify_dataset(data, backbone=backbone, heads=["logreg", "svm", "mlp"], protocol=protocol, artifacts=art,
                         permutation=permutation if protocol == "subject-cv" else 0, progress=progress, log=log)
    log(f"[4/5] a compact CNN trained from scratch{' on the same slices' if volumes else ''} ({baseline_epochs} epochs)")
    train_baseline(data, model="scratch", epochs=baseline_epochs, protocol="official", subjects="auto",
                   artifacts=art, progress=progress, log=log, **extra)
    log("[5/5] report (also in report.csv, with plots)")
    table = report_command(art, fmt="table")
    return DemoResult(data=data, weights="imagenet" if weights == "imagenet" else "random-init", table=table, report=report_path(art))
