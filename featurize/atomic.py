"""Atomic file replacement: a partial file is never left where a complete one is expected."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from featurize.errors import CacheError


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


@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike[str], *, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (a sidecar file that is never replaced) for the block. A second
    holder is refused at once with a CacheError (exit 4) naming ``what`` and the process that holds it."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise CacheError(f"{what}: another run ({holder}) is writing it; wait for it to finish, then rerun") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}")
        fh.flush()
        yield
