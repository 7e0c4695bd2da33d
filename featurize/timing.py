"""Wall time per phase of a featurize run (scan, import, build, checksum, export, compile, check, loop, write).

A first-ever run pays for TensorFlow, the Keras build, the ONNX export and its check before the first image; this
breakdown says where that time goes (``FeaturizeResult.phases``, and one summary line when TF was built).
Phases are not meant to nest: each ``phase`` adds its wall time to its name. The recorder is per process, reset by
``start`` at the beginning of each featurize run.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

_seconds: dict[str, float] = {}

# the order phases are reported in: the order a first-ever run goes through them
ORDER = ("scan", "import", "build", "checksum", "export", "compile", "check", "loop", "write")


def start() -> None:
    """Forget the phases of an earlier run in this process."""
    _seconds.clear()


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` body to phase ``name``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _seconds[name] = _seconds.get(name, 0.0) + time.perf_counter() - t0


def taken() -> dict[str, float]:
    """The phases recorded since ``start``, in ``ORDER`` (others after), in seconds."""
    known = {k: _seconds[k] for k in ORDER if k in _seconds}
    return {**known, **{k: v for k, v in _seconds.items() if k not in known}}


def describe(phases: dict[str, float]) -> str:
    """One line: ``import 5.1 s, build 1.4 s, ...`` (phases under 0.05 s left out)."""
    return ", ".join(f"{k} {v:.1f} s" for k, v in phases.items() if v >= 0.05)
