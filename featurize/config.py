"""Where outputs go. Every command writes under one artifacts folder."""

from __future__ import annotations

import os
from pathlib import Path

ARTIFACTS_ENV = "ALZMRI_ARTIFACTS"


def artifacts_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Return the artifacts folder: ``override``, else ``$ALZMRI_ARTIFACTS``, else ``./artifacts``."""
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    env = os.environ.get(ARTIFACTS_ENV)
    if env:
        return Path(env).expanduser()
    return Path("artifacts")


def features_dir(dataset_id: str, artifacts: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding the HDF5 feature caches of one dataset."""
    return artifacts_dir(artifacts) / "features" / dataset_id


def engines_dir(artifacts: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding the ONNX exports of the backbones, shared by every dataset (they depend on the model only)."""
    return artifacts_dir(artifacts) / "engines"


def models_dir(dataset_id: str, artifacts: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding the fitted models of one dataset."""
    return artifacts_dir(artifacts) / "models" / dataset_id


def dataset_dir(dataset_id: str, artifacts: str | os.PathLike[str] | None = None) -> Path:
    """Folder for per-dataset side files (subjects.csv, plots)."""
    return artifacts_dir(artifacts) / dataset_id


def report_path(artifacts: str | os.PathLike[str] | None = None) -> Path:
    """The report CSV shared by classify, baseline and sweep."""
    return artifacts_dir(artifacts) / "report.csv"
