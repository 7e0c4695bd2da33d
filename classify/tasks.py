"""Tasks by label mapping: merge or reorder classes (``binary`` screening, the four ``stages``, or a custom map)."""

from __future__ import annotations

import numpy as np

from featurize.errors import AlzmriError
from featurize.featureset import FeatureSet

PRESETS = {
    "stages": "",  # the classes as scanned, in their order
    "binary": "NonDemented=healthy,*=demented",
}


def parse_label_map(spec: str, class_names: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """Parse ``A=x,B=y,*=z`` (or a preset name) into (task name, old -> new mapping, new class order).

    New classes are ordered by first appearance in the spec; ``*`` maps every class not named.
    """
    spec = (spec or "stages").strip()
    task = spec if spec in PRESETS else "custom:" + spec
    body = PRESETS.get(spec, spec)
    if not body:
        return "stages", {c: c for c in class_names}, list(class_names)
    mapping: dict[str, str] = {}
    order: list[str] = []
    star: str | None = None
    for item in body.split(","):
        if "=" not in item:
            raise AlzmriError(f"--label-map item {item!r} must look like OLD=NEW (or use a preset: {', '.join(PRESETS)})")
        old, new = (s.strip() for s in item.split("=", 1))
        if not old or not new:
            raise AlzmriError(f"--label-map item {item!r} must look like OLD=NEW")
        if new not in order:
            order.append(new)
        if old == "*":
            star = new
        elif old not in class_names:
            raise AlzmriError(f"--label-map names {old!r}, which is not a class of the data ({', '.join(class_names)})")
        else:
            mapping[old] = new
    for c in class_names:
        if c not in mapping:
            if star is None:
                raise AlzmriError(f"--label-map does not map class {c!r}; add {c}=NEW or *=NEW")
            mapping[c] = star
    order = [n for n in order if n in mapping.values()]
    if len(order) < 2:
        raise AlzmriError(f"--label-map {spec!r} leaves fewer than two classes")
    return task, mapping, order


def apply_label_map(fs: FeatureSet, spec: str) -> tuple[FeatureSet, str]:
    """A FeatureSet relabelled by ``spec``, and the task name for the report."""
    task, mapping, order = parse_label_map(spec, fs.class_names)
    lookup = {c: order.index(mapping[c]) for c in fs.class_names}
    y = np.array([lookup[fs.class_names[i]] for i in fs.y], dtype=np.int64)
    out = FeatureSet(X=fs.X, y=y, paths=fs.paths, split=fs.split, subject=fs.subject, sha1=fs.sha1,
                     class_names=order, meta={**fs.meta, "task": task})
    return out, task
