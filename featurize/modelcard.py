"""Model cards: what a built feature model was, so that a later run can use its ONNX export without TensorFlow.

Building a backbone costs a TensorFlow import (about 5 s) and the Keras construction (1-2 s), and is only needed to learn
the weights checksum and output widths, and to export. Once a run has done that, a card beside the export records:

- the *source* of the weights, as a fingerprint computed without TF: the backbone, the weights label (a file's
  SHA-256 for ``--weights PATH``), the seed for random init, the TF and Keras versions, and for ImageNet weights
  the names, sizes and modification times of the files in Keras's cache folder;
- the checksum of the weights that this source produced, the feature widths, and the export's key.

A run whose fingerprint matches a card loads the export directly and checks it against the TF answer stored at
export time (``engines``). Any doubt (no card, another fingerprint, a possible GPU, a runtime error, a mismatch)
means the normal path: build with TF, then write a new card.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from featurize.atomic import atomic_path
from featurize.backbones import CHECKSUM_SCOPE
from featurize.naming import slug


def weights_source(backbone: str, tag: str, seed: int) -> str | None:
    """A fingerprint of where the weights come from, computed without TF; None when it cannot be known.

    ``tag`` is the weights label of ``backbones.weights_tag`` (it carries a weights file's SHA-256), as the cache
    settings hold it, so the file is not hashed again."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        versions = [version("tensorflow"), version("keras")]
    except PackageNotFoundError:
        return None
    parts: list[Any] = [backbone, tag, versions]
    if tag == "random-init":
        parts.append(seed)
    elif tag == "imagenet":
        models = keras_models_dir()
        if models is None:
            return None
        parts.append(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in models.iterdir() if p.is_file()))
    return json.dumps(parts)


def keras_models_dir() -> Path | None:
    """Where Keras keeps downloaded weights ($KERAS_HOME/models, else ~/.keras/models), if that folder exists."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    folder = Path(home) / "models"
    return folder if folder.is_dir() else None


def gpu_possible() -> bool:
    """True when this machine may have an NVIDIA GPU (then TF decides the engine, so no shortcut is taken)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def card_path(folder: str | os.PathLike[str], settings: dict[str, Any], layer_tags: list[str], seed: int) -> Path:
    """The card of a feature model: backbone, weights label, size, resolved layer tags (one per cache the model
    feeds, e.g. ``["last"]``), pooling and seed."""
    raw = "__".join([settings["backbone"], settings["weights"], settings["image_size"], ",".join(layer_tags),
                     settings["pooling"], f"seed{seed}", *([settings["preprocess"]] if settings.get("preprocess") else [])])
    return Path(folder) / (slug(raw, keep="._+-", strip="")[:200] + ".card.json")


def cached_forward(folder: str | os.PathLike[str], settings: dict[str, Any], layer_tags: list[str], seed: int,
                   engine: str, batch_size: int) -> tuple[Callable[[np.ndarray], np.ndarray], str, str, list[int]] | None:
    """(forward, runtime, weights checksum, output widths) from a matching card and its verified export, without
    TF; None when anything is in doubt (then the caller builds the model with TF)."""
    got = _card_and_source(folder, settings, seed, engine)
    if got is None:
        return None
    card = read_card(card_path(folder, settings, layer_tags, seed), got)
    return _load(folder, card, engine, batch_size) if card is not None else None


def cached_forward_for(folder: str | os.PathLike[str], settings: dict[str, Any], tag: str, seed: int, engine: str,
                       batch_size: int) -> tuple[Callable[[np.ndarray], np.ndarray], str] | None:
    """(forward, weights checksum) for the one layer choice ``tag`` (e.g. ``block_13_expand_relu``), from its own card
    or from the card of a pass that computed it beside other choices (its columns are cut out); None when in doubt."""
    for card, lo, hi in cards_for(folder, settings, tag, seed, engine):
        got = _load(folder, card, engine, batch_size)
        if got is not None:
            return _columns(got[0], lo, hi), got[2]
    return None


def cards_for(folder: str | os.PathLike[str], settings: dict[str, Any], tag: str, seed: int,
              engine: str = "auto") -> Iterator[tuple[dict[str, Any], int, int]]:
    """Every usable card whose export computes layer choice ``tag``, with that choice's columns ``lo:hi`` (its own
    card first); the caller still verifies the export (``engines.load_verified``)."""
    source = _card_and_source(folder, settings, seed, engine)
    if source is None:
        return
    exact = card_path(folder, settings, [tag], seed)
    head, tail = card_path(folder, settings, ["LAYERS-HERE"], seed).name.split("LAYERS-HERE", 1)
    for path in [exact, *sorted(p for p in Path(folder).glob(f"{head}*{tail}") if p != exact)]:
        card = read_card(path, source)
        if card is None or tag not in card.get("tags", []) or len(card["tags"]) != len(card["dims"]):
            continue
        i = card["tags"].index(tag)
        yield card, sum(card["dims"][:i]), sum(card["dims"][:i + 1])


def _columns(full: Callable[[np.ndarray], np.ndarray], lo: int, hi: int) -> Callable[[np.ndarray], np.ndarray]:
    """The forward pass restricted to output columns ``lo:hi`` (one layer choice of a multi-choice export)."""
    return lambda x: full(x)[:, lo:hi]


def _card_and_source(folder: str | os.PathLike[str], settings: dict[str, Any], seed: int, engine: str) -> str | None:
    """The weights source fingerprint when a card may be used here at all (CPU runtime, float32, no GPU), else None."""
    from featurize.engines import cpu_runtime

    if cpu_runtime(engine) is None or settings.get("precision") or gpu_possible() or not Path(folder).is_dir():
        return None
    return weights_source(settings["backbone"], settings["weights"], seed)


def _load(folder: str | os.PathLike[str], card: dict[str, Any], engine: str,
          batch_size: int) -> tuple[Callable[[np.ndarray], np.ndarray], str, str, list[int]] | None:
    from featurize.engines import SMALL_BATCH, cpu_runtime, load_verified

    runtime = cpu_runtime(engine)
    inner = min(batch_size, SMALL_BATCH) if card.get("light") else batch_size
    forward = load_verified(folder, card["key"], runtime, inner, (card["input_hw"][0], card["input_hw"][1]))
    if forward is None or runtime is None:
        return None
    return forward, runtime, str(card["weights_sha256"]), [int(d) for d in card["dims"]]


def read_card(path: Path, source: str) -> dict[str, Any] | None:
    """The card at ``path`` if it was written for this weights ``source``, else None."""
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(card, dict) or card.get("source") != source:
        return None
    if not isinstance(card.get("dims"), list) or not card.get("weights_sha256") or not card.get("key"):
        return None
    if card.get("checksum") != CHECKSUM_SCOPE:  # an alzmri 0.1.0 card: its checksum covered only the tapped layers
        return None
    return card


def write_card(path: Path, source: str, weights_sha256: str, dims: list[int], key: str, hw: tuple[int, int],
               light: bool, tags: list[str]) -> None:
    """Record a built model's whole-backbone checksum, the layer tag and width of each output block, export key,
    input (height, width) and whether it is a light network (run in small batches), under its weights ``source``
    (atomically)."""
    card = {"source": source, "weights_sha256": weights_sha256, "checksum": CHECKSUM_SCOPE, "tags": list(tags),
            "dims": [int(d) for d in dims], "key": key, "input_hw": [int(hw[0]), int(hw[1])], "light": bool(light)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(card, indent=1))
