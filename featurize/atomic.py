"""Atomic file replacement: a partial file is never left where a complete one is expected."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename, on any failure
    (including Ctrl-C and disk full) it is removed and ``path`` keeps its old content.

    The name is per process (several writers never share a temp file); ``suffix`` ends it, for writers that choose
    the format by the extension (``.keras``, ``.png``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_durably(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` atomically and fsync it before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
