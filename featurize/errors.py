"""The one exception type users see: a one-line message that names the file and the fix."""

from __future__ import annotations


class AlzmriError(Exception):
    """A user-facing error. The CLI prints ``str(err)`` on one line and exits with ``exit_code``."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class DataError(AlzmriError):
    """Bad input data: missing folder, no images, bad manifest, label conflicts."""

    exit_code = 3


class CacheError(AlzmriError):
    """A feature cache that is missing, locked, or made with other settings."""

    exit_code = 4


class WeightsError(AlzmriError):
    """Pretrained weights that cannot be had or do not match."""

    exit_code = 5


class ClusterError(AlzmriError):
    """A ``--cluster`` that cannot be reached, or workers that keep failing (the message names the worker and file)."""

    exit_code = 6


def interrupted(exc: BaseException) -> bool:
    """True for Ctrl-C, also when a C extension wrapped it: a SIGINT that lands while TensorFlow converts a numpy
    batch surfaces as ``SystemError``/``TypeError`` with the ``KeyboardInterrupt`` in its cause or context (seen in a
    real featurize under SIGINT)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
