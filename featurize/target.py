"""One cache being brought up to date (``CacheTarget``): its settings, the rows already computed (``Sources``: the old
cache file and the journal parts of an interrupted run), and the weights check that decides which of them stay."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np

from featurize import store
from featurize.backbones import CHECKSUM_SCOPE
from featurize.errors import CacheError

Log = Callable[[str], None]


def _same(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return all(str(a.get(k)) == str(b.get(k)) for k in keys)


_NO_SHA = tuple(k for k in store.SETTING_KEYS if k != "weights_sha256")


class Sources:
    """Where each already-computed (path, sha1) lives: the old cache file or a journal part."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str], tuple[int, int]] = {}
        self.failed: dict[tuple[str, str], str] = {}
        self.parts: list[store.Part] = []
        self.old: Path | None = None
        self.old_attrs: dict[str, Any] = {}

    def add_old(self, path: Path, attrs: dict[str, Any]) -> None:
        self.old, self.old_attrs = path, attrs
        with h5py.File(path, "r") as f:
            for i, key in enumerate(zip(store._strs(f["path"]), store._strs(f["sha1"]))):
                self.index[key] = (-1, i)
            for p, s, r in zip(store._strs(f["failed_path"]), store._strs(f["failed_sha1"]), store._strs(f["failed_reason"])):
                self.failed[(p, s)] = r

    def add_part(self, part: store.Part) -> None:
        k = len(self.parts)
        self.parts.append(part)
        for i, key in enumerate(zip(part.path, part.sha1)):
            self.index[(str(key[0]), str(key[1]))] = (k, i)
        for p, s, r in zip(part.failed_path, part.failed_sha1, part.failed_reason):
            self.failed[(str(p), str(s))] = str(r)

    def drop_all(self) -> None:
        """Forget every cached row (they came from other weights)."""
        self.index, self.failed, self.parts = {}, {}, []
        self.old, self.old_attrs = None, {}

    def known(self, key: tuple[str, str]) -> bool:
        return key in self.index or key in self.failed

    def blocks(self, keys: list[tuple[str, str]], block: int = 1024) -> Iterator[np.ndarray]:
        """Feature rows for ``keys`` in order, streamed in blocks (memory stays flat)."""
        f = h5py.File(self.old, "r") if self.old is not None else None
        try:
            feats = f["features"] if f is not None else None
            for start in range(0, len(keys), block):
                rows = []
                for key in keys[start:start + block]:
                    src, i = self.index[key]
                    rows.append(feats[i] if src < 0 else self.parts[src].features[i])
                yield np.stack(rows).astype(np.float32, copy=False)
        finally:
            if f is not None:
                f.close()


class CacheTarget:
    """One cache being brought up to date: its settings, what is already computed, and its journal."""

    def __init__(self, settings: dict[str, Any], cache: Path) -> None:
        self.settings, self.cache = settings, cache
        self.src = Sources()
        self.journal = store.parts_dir(cache)
        self.journal_sha = ""
        self.journal_scope = ""
        self.migrated = False

    def open(self, log: Log, seed: int = 0) -> None:
        """Index the old cache and any journal of an interrupted run that match these settings (and, for random-init
        weights, this seed: the checksum is only seen when the model is built, which a fully cached rerun skips)."""
        cache, settings = self.cache, self.settings
        if cache.exists():
            try:
                attrs = store.read_attrs(cache)
                if int(attrs.get("format_version", 0)) != store.FORMAT_VERSION or not attrs.get("complete"):
                    log(f"{cache}: made by another version or incomplete; rebuilding it")
                elif not _same(attrs, settings, _NO_SHA):
                    log(f"{cache}: made with other settings; rebuilding it")
                elif settings["weights"] == "random-init" and int(attrs.get("seed", 0) or 0) != seed:
                    log(f"{cache}: made with random-init seed {attrs.get('seed', 0)}, not {seed} (other weights); recomputing all")
                else:
                    self.src.add_old(cache, attrs)
            except (CacheError, OSError, KeyError) as exc:
                log(f"{cache}: unreadable ({str(exc)[:100]}); rebuilding it")
        if self.journal.is_dir():
            try:
                marker = json.loads((self.journal / "settings.json").read_text())
                if _same(marker, settings, _NO_SHA):
                    self.journal_sha = marker.get("weights_sha256", "")
                    self.journal_scope = marker.get("weights_sha256_scope", "")
                    parts = store.read_parts(self.journal, log=log)
                    for part in parts:
                        self.src.add_part(part)
                    if parts:
                        log(f"resuming: {sum(len(p.path) + len(p.failed_path) for p in parts)} images already done by an interrupted run")
            except (OSError, ValueError):
                pass

    @property
    def sha(self) -> str:
        return self.settings.get("weights_sha256") or self.src.old_attrs.get("weights_sha256", "") or self.journal_sha

    @property
    def legacy(self) -> bool:
        """True when rows cached here carry alzmri 0.1.0's checksum of a model cut at a mid layer, which only the TF
        build can check (see ``backbones.prefix_checksums``). ``last`` caches recorded the whole backbone already."""
        if self.settings["layers"] == "last":
            return False
        old = self.src.old is not None and self.src.old_attrs.get("weights_sha256_scope") != CHECKSUM_SCOPE
        return old or bool(self.journal_sha and self.journal_scope != CHECKSUM_SCOPE)

    def accept_weights(self, sha: str, log: Log, legacy: frozenset[str] = frozenset()) -> None:
        """Drop cached rows computed with other weights, then journal under ``sha``.

        Rows whose recorded checksum is in ``legacy`` (what alzmri 0.1.0 recorded for these very weights) are kept,
        and the cache is rewritten with the whole-backbone checksum."""
        old_sha = self.src.old_attrs.get("weights_sha256") if self.src.old is not None else None
        stale_old = old_sha is not None and old_sha != sha and old_sha not in legacy
        stale_journal = bool(self.journal_sha) and self.journal_sha != sha and self.journal_sha not in legacy
        if stale_old or stale_journal:
            log(f"{self.cache}: cached features came from other weights (checksum differs); recomputing all")
            self.src.drop_all()
            shutil.rmtree(self.journal, ignore_errors=True)
        elif (old_sha is not None and old_sha != sha) or (self.journal_sha and self.journal_sha != sha):
            log(f"{self.cache}: recorded the checksum of a truncated model (alzmri 0.1.0); verified the same weights, "
                "cached rows kept and relabelled with the whole backbone's checksum")
            self.migrated = True
        # rows of a journal that passed the check are kept, and its marker relabelled (an older marker lacks the scope)
        adopt = bool(self.journal_sha) and not (stale_old or stale_journal)
        self.settings = {**self.settings, "weights_sha256": sha, "weights_sha256_scope": CHECKSUM_SCOPE}
        self.journal = store.open_journal(self.cache, self.settings, adopt=adopt)


class PartWriter:
    """Finished rows, buffered and written every ``part_rows`` images as one journal part per target (its columns of
    the pass's side-by-side features, widths ``dims``), so an interrupted run loses at most one buffer. The
    in-process loop (``run._infer``) and the cluster driver (``distributed``) journal through it alike."""

    def __init__(self, targets: list[Any], dims: list[int], part_rows: int) -> None:
        self.targets, self.part_rows = targets, part_rows
        self.bounds = np.cumsum([0, *dims])
        self.buf: dict[str, list[Any]] = {k: [] for k in ("path", "sha1", "features", "failed_path", "failed_sha1", "failed_reason")}

    def add(self, paths: list[str], shas: list[str], feats: np.ndarray, errs: list[str]) -> None:
        """Buffer one batch: ``feats`` holds the rows of the readable files (``errs`` "") in order."""
        self.buf["features"].append(feats)
        for p, s, e in zip(paths, shas, errs):
            if e:
                self.buf["failed_path"].append(p)
                self.buf["failed_sha1"].append(s)
                self.buf["failed_reason"].append(e)
            else:
                self.buf["path"].append(p)
                self.buf["sha1"].append(s)
        if len(self.buf["path"]) + len(self.buf["failed_path"]) >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered (nothing when empty) and clear the buffer."""
        buf, bounds = self.buf, self.bounds
        if not buf["path"] and not buf["failed_path"]:
            return
        feats = np.concatenate(buf["features"]) if buf["features"] else np.zeros((0, int(bounds[-1])), np.float32)
        for k, t in enumerate(self.targets):
            part = store.Part(path=np.array(buf["path"], dtype=str), sha1=np.array(buf["sha1"], dtype=str),
                              features=np.ascontiguousarray(feats[:, bounds[k]:bounds[k + 1]]),
                              failed_path=np.array(buf["failed_path"], dtype=str),
                              failed_sha1=np.array(buf["failed_sha1"], dtype=str),
                              failed_reason=np.array(buf["failed_reason"], dtype=str))
            try:
                store.write_part(t.journal, part)
            except OSError as exc:
                raise CacheError(f"{t.journal}: cannot write features ({exc.strerror or exc}); free disk space and rerun: the cache and the batches already saved are intact") from None
            t.src.add_part(part)
        for v in buf.values():
            v.clear()
