"""The HDF5 feature cache: one file per (dataset, backbone, weights, size, pooling, resize, layers).

Crash safety: finished batches go to small part files in ``<cache>.parts/`` (each written atomically);
the HDF5 file itself is only ever replaced whole (temp file + rename). A kill -9 at any moment leaves
the old cache plus the parts written so far, and a rerun resumes from them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np

from featurize.atomic import atomic_path, exclusive
from featurize.errors import CacheError
from featurize.featureset import FeatureSet
from featurize.spec import KEYS, FeatureSpec, identity

FORMAT_VERSION = 1
SETTING_KEYS = KEYS  # the attributes that define a cache (featurize.spec)
_STR = h5py.string_dtype("utf-8")


def variant_tag(settings: dict[str, Any]) -> str:
    """``FeatureSpec.variant_tag`` of a cache's settings; "" for features made elsewhere (``save``) without input
    settings."""
    try:
        return FeatureSpec.from_attrs(settings).variant_tag()
    except (KeyError, ValueError):
        return ""


def cache_name(settings: dict[str, Any]) -> str:
    """``FeatureSpec.cache_name`` of ``settings``."""
    return FeatureSpec.from_attrs(settings).cache_name()


def find_caches(dataset_id: str, artifacts: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every complete cache of a dataset (sorted by name)."""
    from featurize.config import features_dir

    folder = features_dir(dataset_id, artifacts)
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.glob("*.h5")):
        try:
            with h5py.File(p, "r") as f:
                if bool(f.attrs.get("complete", False)):
                    out.append(p)
        except OSError:
            continue
    return out


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The attributes of a cache as plain Python values; CacheError if the file is unreadable."""
    try:
        with h5py.File(path, "r") as f:
            return {k: _plain(v) for k, v in f.attrs.items()}
    except (OSError, KeyError) as exc:
        raise CacheError(f"{path}: not a readable feature cache ({exc}); rerun `alzmri featurize` to rebuild it") from None


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _strs(ds: h5py.Dataset) -> np.ndarray:
    return np.array([s.decode() if isinstance(s, bytes) else s for s in ds[()]], dtype=object)


def load(path: str | os.PathLike[str]) -> FeatureSet:
    """Load a complete cache as a FeatureSet (X float32 N x D, y class indices, ...)."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{path}: no such feature cache; run `alzmri featurize --data ROOT --backbone NAME` first")
    try:
        with h5py.File(path, "r") as f:
            meta = {k: _plain(v) for k, v in f.attrs.items()}
            if int(meta.get("format_version", 0)) != FORMAT_VERSION:
                raise CacheError(f"{path}: made by another version of alzmri (format {meta.get('format_version')}); rerun `alzmri featurize` to rebuild it")
            if not meta.get("complete", False):
                raise CacheError(f"{path}: incomplete cache; rerun `alzmri featurize` to finish it")
            class_names = json.loads(meta["class_names"])
            labels = _strs(f["label"])
            lookup = {c: i for i, c in enumerate(class_names)}
            fs = FeatureSet(
                X=f["features"][()].astype(np.float32, copy=False),
                y=np.array([lookup[x] for x in labels], dtype=np.int64),
                paths=_strs(f["path"]),
                split=_strs(f["split"]),
                subject=_strs(f["subject"]),
                sha1=_strs(f["sha1"]),
                class_names=class_names,
                meta=meta,
            )
            fs.meta["failed"] = [(p, r) for p, r in zip(_strs(f["failed_path"]), _strs(f["failed_reason"]))]
    except OSError as exc:
        raise CacheError(f"{path}: cannot open the feature cache ({exc}); rerun `alzmri featurize` to rebuild it") from None
    fs.meta["cache_path"] = str(path)
    return fs


def fingerprint(settings: dict[str, Any], paths: np.ndarray, sha1: np.ndarray) -> str:
    """Identifies a cache's content: settings plus the (path, content hash) of every row."""
    h = hashlib.sha256(json.dumps(identity(settings), sort_keys=True).encode())
    for p, s in zip(paths, sha1):
        h.update(f"{p}\0{s}\n".encode())
    return h.hexdigest()[:16]


def write_cache(path: str | os.PathLike[str], attrs: dict[str, Any], rows: dict[str, np.ndarray],
                feature_blocks: Iterator[np.ndarray], dim: int,
                failed: list[tuple[str, str, str]] = ()) -> None:
    """Write a complete cache atomically, streaming features block by block.

    ``rows`` holds equal-length string arrays path, label, split, subject, sha1; ``feature_blocks``
    yields float32 blocks in row order; ``failed`` lists (path, sha1, reason) of unreadable files.
    """
    n = len(rows["path"])
    remove_stale_temps(Path(path))
    with atomic_path(path) as tmp:
        _reserve(tmp, _size_bound(n, dim, rows, failed))
        with h5py.File(tmp, "r+") as f:
            feats = f.create_dataset("features", shape=(n, dim), dtype="float32",
                                     chunks=(max(1, min(n, 1024)), dim) if n else None, maxshape=(None, dim))
            start = 0
            for block in feature_blocks:
                feats[start:start + len(block)] = block
                start += len(block)
            if start != n:
                raise RuntimeError(f"internal: wrote {start} feature rows for {n} images")
            for key in ("path", "label", "split", "subject", "sha1"):
                f.create_dataset(key, data=np.asarray(rows[key], dtype=object), dtype=_STR)
            for i, key in enumerate(("failed_path", "failed_sha1", "failed_reason")):
                f.create_dataset(key, data=np.asarray([r[i] for r in failed], dtype=object), dtype=_STR)
            meta = dict(attrs)
            meta.update(format_version=FORMAT_VERSION, n_images=n, feature_dim=dim, complete=True,
                        fingerprint=fingerprint(attrs, rows["path"], rows["sha1"]))
            for k, v in meta.items():
                f.attrs[k] = json.dumps(v) if isinstance(v, (list, dict)) else v


def _size_bound(n: int, dim: int, rows: dict[str, np.ndarray], failed: list[tuple[str, str, str]]) -> int:
    """An upper bound of a cache's bytes: whole feature chunks, every string with heap overhead, 1 MiB metadata."""
    chunk = max(1, min(n, 1024))
    feats = -(-n // chunk) * chunk * dim * 4 if n else 0
    texts = sum(len(str(v).encode()) + 48 for k in ("path", "label", "split", "subject", "sha1") for v in rows[k])
    texts += sum(len(str(v).encode()) + 48 for r in failed for v in r)
    return feats + 2 * texts + (1 << 20)


def _reserve(tmp: Path, nbytes: int) -> None:
    """Make ``tmp`` an empty HDF5 file with ``nbytes`` reserved behind it, so that a full disk (ENOSPC, or EFBIG
    under a file-size limit) is a clean OSError here. HDF5 itself must never meet one: h5py turns a failed write
    into a RuntimeError at close and then crashes the interpreter (seen as SIGSEGV). HDF5 allocates from its end
    of data, inside the reserved bytes, and cuts the file to its real size on close."""
    with open(tmp, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, nbytes)  # fail before HDF5 writes a byte
    with h5py.File(tmp, "w"):  # the superblock (truncating frees the probe's bytes just before)
        pass
    with open(tmp, "r+b") as fh:
        os.posix_fallocate(fh.fileno(), 0, nbytes)


def remove_stale_temps(final: Path) -> None:
    """Delete the temp files that writers of ``final`` killed with -9 left behind (``atomic_path`` names them
    ``.<name>.tmp-<pid>``). Only called under the cache's lock, so no live writer owns one."""
    for p in final.parent.glob(f".{final.name}.tmp-*"):
        with contextlib.suppress(OSError):
            p.unlink()


def save(path: str | os.PathLike[str], fs: FeatureSet) -> None:
    """Write a FeatureSet as a complete cache (used by tests and tools that make features elsewhere)."""
    attrs = {k: v for k, v in fs.meta.items() if k not in ("failed", "cache_path", "fingerprint", "complete", "n_images", "feature_dim", "format_version")}
    attrs["class_names"] = json.dumps(list(fs.class_names))
    for key, default in (("backbone", "custom"), ("weights", "custom"), ("weights_sha256", ""), ("image_size", ""),
                         ("pooling", "avg"), ("resize", "stretch"), ("layers", "last")):
        attrs.setdefault(key, default)
    rows = {"path": fs.paths, "label": np.array([fs.class_names[i] for i in fs.y], dtype=object),
            "split": fs.split, "subject": fs.subject, "sha1": fs.sha1}
    X = np.asarray(fs.X, dtype=np.float32)
    write_cache(path, attrs, rows, iter([X]), X.shape[1])


# ---------------------------------------------------------------- parts journal

@dataclass
class Part:
    """One journal file's content."""

    path: np.ndarray
    sha1: np.ndarray
    features: np.ndarray
    failed_path: np.ndarray
    failed_sha1: np.ndarray
    failed_reason: np.ndarray


def parts_dir(cache: Path) -> Path:
    """The journal folder beside a cache."""
    return cache.with_name(cache.name + ".parts")


def open_journal(cache: Path, settings: dict[str, Any], *, adopt: bool = False) -> Path:
    """Create (or validate) the journal folder; a journal made with other settings is discarded, unless ``adopt``
    (its rows were verified to match these settings), which relabels it instead."""
    d = parts_dir(cache)
    marker = d / "settings.json"
    wanted = identity(settings)
    if settings.get("weights_sha256_scope"):  # what the checksum covers, so a resumed run knows (target.CacheTarget.legacy)
        wanted["weights_sha256_scope"] = settings["weights_sha256_scope"]
    if adopt and d.is_dir():
        with atomic_path(marker) as tmp:
            tmp.write_text(json.dumps(wanted, sort_keys=True))
    if d.is_dir():
        try:
            same = json.loads(marker.read_text()) == wanted
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(d)
    if not d.is_dir():
        d.mkdir(parents=True)
        with atomic_path(marker) as tmp:
            tmp.write_text(json.dumps(wanted, sort_keys=True))
    for p in d.glob(".*.tmp-*"):  # parts half-written by a run killed with -9 (we hold the cache's lock)
        with contextlib.suppress(OSError):
            p.unlink()
    return d


def write_part(journal: Path, part: Part) -> Path:
    """Write one part atomically; a failure (disk full) leaves no partial file."""
    seq = len(list(journal.glob("part-*.npz")))
    while (journal / f"part-{seq:06d}.npz").exists():
        seq += 1
    final = journal / f"part-{seq:06d}.npz"
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, path=part.path.astype(str), sha1=part.sha1.astype(str), features=part.features,
                 failed_path=part.failed_path.astype(str), failed_sha1=part.failed_sha1.astype(str),
                 failed_reason=part.failed_reason.astype(str))
        fh.flush()
        os.fsync(fh.fileno())
    return final


def read_parts(journal: Path, *, log: Callable[[str], None] = lambda s: None) -> list[Part]:
    """Every intact part of a journal. A damaged one (truncated, bit-flipped: the zip CRC catches it) is deleted
    with one line, and its rows are simply recomputed."""
    out = []
    for p in sorted(journal.glob("part-*.npz")):
        try:
            with np.load(p, allow_pickle=False) as z:
                part = Part(**{k: z[k] for k in ("path", "sha1", "features", "failed_path", "failed_sha1", "failed_reason")})
            if part.features.ndim != 2 or len(part.features) != len(part.path) or len(part.path) != len(part.sha1) \
                    or not (len(part.failed_path) == len(part.failed_sha1) == len(part.failed_reason)):
                raise ValueError("arrays of unequal length")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log(f"{p}: damaged journal part ({str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__}); "
                "deleted, its images are recomputed")
            with contextlib.suppress(OSError):
                p.unlink()
            continue
        out.append(part)
    return out


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
    """Hold an exclusive lock on a cache; a second writer is refused at once with a message naming the holder."""
    with exclusive(cache.with_name(cache.name + ".lock"), what=f"{cache} (featurize)"):
        yield
