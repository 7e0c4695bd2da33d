"""featurize: scan an image collection, run a frozen backbone once, cache embeddings in HDF5."""

from __future__ import annotations

from featurize.errors import AlzmriError, CacheError, DataError, WeightsError
from featurize.featureset import FeatureSet

__all__ = ["AlzmriError", "CacheError", "DataError", "WeightsError", "FeatureSet", "load"]


def load(path: str) -> FeatureSet:
    """Load a feature cache written by ``alzmri featurize`` (see ``featurize.store.load``)."""
    from featurize.store import load as _load

    return _load(path)

__version__ = "0.1.0"
