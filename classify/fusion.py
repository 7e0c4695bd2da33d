"""Feature fusion: the caches of several backbones (or layer choices) for the same images, side by side.

A fused FeatureSet has the columns of every part, in the order given, on the rows of the first part; the rows of the
others are matched by (path, content SHA-1), so caches written in another order still line up. Caches of different
image sets (a row missing in one, an image changed since) are refused: a fused row must be one image seen by every
backbone. The meta names the fusion ``a+b`` in backbone, weights, layers and features, and keeps each part's own
meta in ``fused_parts`` (bundles record them, so ``predict`` can recompute every part).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from featurize.errors import DataError
from featurize.featureset import FeatureSet

SEP = "+"


def _name(fs: FeatureSet) -> str:
    return str(fs.meta.get("cache_path") or fs.meta.get("backbone") or "a feature cache")


def fuse(parts: Sequence[FeatureSet]) -> FeatureSet:
    """Concatenate the columns of ``parts`` on aligned rows; DataError (one line) when their rows differ."""
    from featurize.store import variant_tag

    if len(parts) < 2:
        raise DataError("fusion needs at least two feature caches (e.g. --fuse mobilenetv2+xception)")
    base = parts[0]
    keys = [f"{p}\0{s}" for p, s in zip(base.paths, base.sha1)]
    if len(set(keys)) != len(keys):
        raise DataError(f"{_name(base)}: the same image appears twice; rerun `alzmri featurize` to rebuild it")
    where = {k: i for i, k in enumerate(keys)}
    blocks = [np.asarray(base.X, dtype=np.float32)]
    for other in parts[1:]:
        okeys = [f"{p}\0{s}" for p, s in zip(other.paths, other.sha1)]
        missing, extra = set(keys) - set(okeys), set(okeys) - set(keys)
        if missing or extra or len(okeys) != len(keys):
            raise DataError(f"{_name(other)}: {len(missing)} image(s) of {_name(base)} missing and {len(extra)} other(s); "
                            "fusion needs caches of the same images: featurize both on the same data")
        order = np.empty(len(keys), dtype=np.int64)
        for j, k in enumerate(okeys):
            order[where[k]] = j
        if not (np.array_equal(np.asarray(other.y)[order], base.y)
                and np.array_equal(np.asarray(other.subject)[order], base.subject)):
            raise DataError(f"{_name(other)}: its labels or subjects differ from {_name(base)} for the same images; "
                            "featurize both with the same --classes and --subjects")
        blocks.append(np.asarray(other.X, dtype=np.float32)[order])
    metas = [dict(p.meta) for p in parts]
    meta = dict(base.meta)
    for key in ("backbone", "weights", "layers"):
        meta[key] = SEP.join(str(m.get(key, "")) for m in metas)
    tags = [variant_tag(m) for m in metas]
    meta["fused_features"] = SEP.join(tags) if any(tags) else ""
    meta["fingerprint"] = hashlib.sha256("".join(str(m.get("fingerprint", "")) for m in metas).encode()).hexdigest()[:16]
    meta["cache_path"] = SEP.join(_name(p) for p in parts)
    meta["fused_parts"] = metas
    meta["feature_dim"] = int(sum(b.shape[1] for b in blocks))
    return FeatureSet(X=np.hstack(blocks), y=base.y.copy(), paths=base.paths.copy(), split=base.split.copy(),
                      subject=base.subject.copy(), sha1=base.sha1.copy(), class_names=list(base.class_names), meta=meta)


def parse_fuse(spec: str) -> list[list[tuple[str, str]]]:
    """``A+B;C:mid+C:last`` as [[(A, ""), (B, "")], [(C, "mid"), (C, "last")]]: a part is ``backbone`` (the first
    layer choice of the sweep) or ``backbone:layers``; fusions are separated by ``;``."""
    out = []
    for group in (g.strip() for g in spec.split(";")):
        if not group:
            continue
        parts = []
        for item in (i.strip() for i in group.split(SEP)):
            name, _, layers = item.partition(":")
            if not name.strip():
                raise DataError(f"--fuse {spec!r}: an empty part; write BACKBONE[:LAYERS]+BACKBONE[:LAYERS]")
            parts.append((name.strip(), layers.strip()))
        if len(parts) < 2:
            raise DataError(f"--fuse {group!r}: a fusion needs two parts or more, joined by '+'")
        out.append(parts)
    return out
