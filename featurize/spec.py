"""``FeatureSpec``: the one definition of what decides a cache's features, how a cache is named, and how its settings
are written to and read from HDF5 attributes, model cards and bundles.

A cache records its settings as plain attributes (``image_size`` as "WxH" text, as alzmri has always written them);
``FeatureSpec.from_attrs`` is the one place that reads them back, with the size as a (width, height) tuple.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

# Attributes that define a cache: a file whose values differ is never mixed with new rows. ``precision`` and
# ``preprocess`` are written only when they are not the defaults (float32, the architecture's own preprocessing),
# so the names and fingerprints of caches made before they existed do not change.
KEYS = ("backbone", "weights", "weights_sha256", "image_size", "pooling", "resize", "layers", "precision", "preprocess")
_OPTIONAL = ("precision", "preprocess", "weights_sha256")


def identity(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide a cache's features, for its fingerprint: every key (None when absent), except
    ``precision`` and ``preprocess`` when they are the defaults, so older caches keep their fingerprints."""
    return {k: settings.get(k) for k in KEYS if k not in ("precision", "preprocess") or settings.get(k)}


@dataclass(frozen=True)
class FeatureSpec:
    """What decides a cache's features: backbone, weights tag (``imagenet``, ``random-init``, ``file-<sha>``,
    ``<catalog name>-<sha>``), input size (width, height), pooling, resize mode, layer tag, precision policy ("" for
    float32), preprocessing ("" for the architecture's own) and, once the model is built, the weights checksum."""

    backbone: str
    weights: str
    size: tuple[int, int]
    pooling: str = "avg"
    resize: str = "stretch"
    layers: str = "last"
    precision: str = ""
    preprocess: str = ""
    weights_sha256: str = ""

    @property
    def image_size(self) -> str:
        """The size as alzmri writes it: ``WIDTHxHEIGHT``."""
        return f"{self.size[0]}x{self.size[1]}"

    def to_attrs(self) -> dict[str, Any]:
        """The settings as cache attributes (optional keys only when set)."""
        out = {k: v for k, v in asdict(self).items() if k != "size" and (k not in _OPTIONAL or v)}
        out["image_size"] = self.image_size
        return {k: out[k] for k in KEYS if k in out}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> FeatureSpec:
        """The spec recorded in cache attributes, a model card or a bundle's backbone settings."""
        from featurize.images import parse_size

        return cls(backbone=str(attrs["backbone"]), weights=str(attrs["weights"]),
                   size=parse_size(str(attrs["image_size"])), pooling=str(attrs.get("pooling") or "avg"),
                   resize=str(attrs.get("resize") or "stretch"), layers=str(attrs.get("layers") or "last"),
                   precision=str(attrs.get("precision") or ""), preprocess=str(attrs.get("preprocess") or ""),
                   weights_sha256=str(attrs.get("weights_sha256") or ""))

    def cache_name(self) -> str:
        """File name of the cache, e.g. ``mobilenetv2__imagenet__224x224__avg__stretch__last.h5``
        (``...__last__mixed_float16.h5`` under mixed precision)."""
        parts = [self.backbone, self.weights, self.image_size, self.pooling, self.resize, self.layers]
        if self.precision:
            parts.append(self.precision)
        return "__".join(p.replace("/", "_") for p in parts) + ".h5"

    def variant_tag(self) -> str:
        """The input settings that differ from the backbone's defaults, e.g. ``176x208`` or ``224x224-max-pad``;
        "" for the defaults. It tells apart report rows and bundles of one backbone."""
        from featurize.backbones import BACKBONES

        bb = BACKBONES.get(self.backbone)
        default = (bb.input_size, bb.input_size) if bb else self.size
        extras = [v for v, d in ((self.pooling, "avg"), (self.resize, "stretch")) if v != d]
        if self.precision:
            extras.append(self.precision)
        if self.size == default and not extras:
            return ""
        return "-".join([self.image_size, *extras])

    def with_(self, **changes: Any) -> FeatureSpec:
        """A copy with ``changes`` (e.g. another layer tag, or the checksum once the model is built)."""
        return replace(self, **changes)
