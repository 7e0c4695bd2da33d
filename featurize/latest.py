"""What ``featurize`` ran on last, so that ``classify`` without ``--data`` can pick the same data and backbone.

The record is ``artifacts/last_featurize.json``, written atomically (with fsync) after every successful featurize
command, including a fully cached rerun. A record is used, not the newest cache file, because a cached rerun does
not rewrite its cache: "the one featurized last" is what the user ran last, not what was computed last.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from featurize.atomic import write_bytes_durably
from featurize.config import artifacts_dir
from featurize.errors import AlzmriError

LAST_FILE = "last_featurize.json"


@dataclass(frozen=True)
class LastFeaturize:
    """The data root (absolute) and backbone of the last featurize run, and the caches it left."""

    data: str
    backbone: str
    dataset_id: str
    caches: tuple[str, ...]


def last_path(artifacts: str | os.PathLike[str] | None = None) -> Path:
    """Where the record lives: ``artifacts/last_featurize.json``."""
    return artifacts_dir(artifacts) / LAST_FILE


def record_last(*, data: str | os.PathLike[str], backbone: str, dataset_id: str, caches: Sequence[str | os.PathLike[str]],
                artifacts: str | os.PathLike[str] | None = None) -> Path:
    """Record ``data`` and ``backbone`` as featurized last; returns the record's path."""
    body = {"data": str(Path(data).expanduser().resolve()), "backbone": backbone, "dataset_id": dataset_id,
            "caches": [str(Path(c).resolve()) for c in caches], "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = last_path(artifacts)
    write_bytes_durably(path, (json.dumps(body, indent=1) + "\n").encode())
    return path


def last_featurized(artifacts: str | os.PathLike[str] | None = None) -> LastFeaturize:
    """The last featurize run recorded in ``artifacts``; AlzmriError naming the fix when there is none."""
    path = last_path(artifacts)
    try:
        body = json.loads(path.read_text())
        return LastFeaturize(data=str(body["data"]), backbone=str(body["backbone"]), dataset_id=str(body["dataset_id"]),
                             caches=tuple(str(c) for c in body.get("caches", ())))
    except FileNotFoundError:
        raise AlzmriError(f"no --data given and no featurize run recorded in {artifacts_dir(artifacts)}; pass --data ROOT, "
                          f"or run `featurize --data ROOT` first") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AlzmriError(f"{path}: unreadable record of the last featurize run ({exc}); pass --data ROOT, or rerun "
                          f"`featurize --data ROOT` to rewrite it") from None
