"""Backbone registry: name -> Keras constructor, preprocessing, input size, feature size, useful layers.

Adding a backbone is one line in ``_REGISTRY``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from featurize.errors import AlzmriError, WeightsError
from featurize.options import choose

POOLINGS = ("avg", "max")


@dataclass(frozen=True)
class Backbone:
    """A keras.applications model, named by module and constructor so that importing this is cheap."""

    name: str
    module: str
    constructor: str
    input_size: int
    feature_dim: int
    mid_layers: tuple[str, ...] = ()

    def build_fn(self) -> Callable[..., Any]:
        """The Keras constructor, e.g. ``keras.applications.mobilenet_v2.MobileNetV2``."""
        return getattr(importlib.import_module(f"keras.applications.{self.module}"), self.constructor)

    def preprocess_fn(self) -> Callable[[Any], Any]:
        """The matching ``preprocess_input``."""
        return importlib.import_module(f"keras.applications.{self.module}").preprocess_input


_REGISTRY = [
    Backbone("vgg16", "vgg16", "VGG16", 224, 512, ("block3_pool", "block4_pool")),
    Backbone("vgg19", "vgg19", "VGG19", 224, 512, ("block3_pool", "block4_pool")),
    Backbone("mobilenet", "mobilenet", "MobileNet", 224, 1024, ("conv_pw_5_relu", "conv_pw_11_relu")),
    Backbone("mobilenetv2", "mobilenet_v2", "MobileNetV2", 224, 1280, ("block_6_expand_relu", "block_13_expand_relu")),
    Backbone("resnet50", "resnet50", "ResNet50", 224, 2048, ("conv3_block4_out", "conv4_block6_out")),
    Backbone("resnet50v2", "resnet_v2", "ResNet50V2", 224, 2048, ("conv3_block4_out", "conv4_block6_out")),
    Backbone("resnet101", "resnet", "ResNet101", 224, 2048, ("conv3_block4_out", "conv4_block23_out")),
    Backbone("inceptionv3", "inception_v3", "InceptionV3", 299, 2048, ("mixed2", "mixed7")),
    Backbone("xception", "xception", "Xception", 299, 2048, ("block4_sepconv2_bn", "block13_sepconv2_bn")),
    Backbone("densenet121", "densenet", "DenseNet121", 224, 1024, ("pool2_relu", "pool3_relu")),
    Backbone("densenet201", "densenet", "DenseNet201", 224, 1920, ("pool2_relu", "pool3_relu")),
    Backbone("efficientnetb0", "efficientnet", "EfficientNetB0", 224, 1280, ("block3a_expand_activation", "block5a_expand_activation")),
    Backbone("efficientnetb3", "efficientnet", "EfficientNetB3", 300, 1536, ("block3a_expand_activation", "block5a_expand_activation")),
]
BACKBONES: dict[str, Backbone] = {b.name: b for b in _REGISTRY}


def get_backbone(name: str) -> Backbone:
    """Look a backbone up by name; an unknown name lists the valid ones."""
    return BACKBONES[choose("backbone", str(name).lower(), BACKBONES)]


def resolve_layers(backbone: Backbone, layers: str) -> list[str]:
    """``last`` -> [], ``mid`` -> the later mid layer, ``multi`` -> both mid layers plus last, else a comma list."""
    layers = (layers or "last").strip()
    if layers == "last":
        return []
    if layers == "mid":
        return [backbone.mid_layers[-1]]
    if layers == "multi":
        return [*backbone.mid_layers, "last"]
    return [x.strip() for x in layers.split(",") if x.strip()]


def layers_tag(names: list[str]) -> str:
    """A short, file-name-safe tag for a layer choice."""
    return "last" if not names else "+".join(names)


def weights_tag(weights: str) -> str:
    """The weights label stored everywhere: ``imagenet``, ``random-init`` or ``file-<sha256[:10]>``."""
    w = weights.strip()
    if w.lower() == "imagenet":
        return "imagenet"
    if w.lower() in ("none", "random", "random-init"):
        return "random-init"
    p = Path(w).expanduser()
    if not p.is_file():
        raise WeightsError(f"{p}: weights file not found; pass --weights imagenet, --weights none, or the path of a Keras weights file (.h5 / .weights.h5)")
    return f"file-{file_sha256(p)[:10]}"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, hashed once per (file, size, modification time) in a process: resolving weights by name,
    labelling them and rebuilding the backbone each ask for it, and weights files are tens of MB."""
    p = Path(path).resolve()
    st = p.stat()
    return _file_sha256(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Recorded with every cache: the checksum below covers the whole backbone. alzmri 0.1.0 hashed the feature model of
# one pass instead, which a mid-layer tap truncates, so its checksums depend on the layers asked for (issue 21).
CHECKSUM_SCOPE = "backbone"


def prefix_checksums(base: Any) -> list[str]:
    """SHA-256 over the weight tensors of the headless backbone ``base`` in Keras's order, after each tensor.

    The last entry is the weights checksum recorded everywhere (``weights_checksum``). Entry ``k - 1`` is what alzmri
    0.1.0 recorded for a feature model holding the first ``k`` tensors: it hashed the pass's feature model, whose
    tensors are a prefix of the backbone's (checked for every registered backbone). A cache whose features need
    ``n`` tensors may carry any entry from ``n - 1`` on (the pass's deepest tap is at or below its own)."""
    h = hashlib.sha256()
    out = []
    for w in base.weights:
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
        out.append(h.hexdigest())
    return out or [h.hexdigest()]


def weights_checksum(base: Any) -> str:
    """SHA-256 over every weight tensor of the whole headless backbone ``base``, in Keras's order.

    It identifies the weights: the same for every layer choice, engine and pass (``build_base`` output, not a
    ``feature_model`` cut at a mid layer)."""
    return prefix_checksums(base)[-1]


def build_base(backbone: Backbone, weights: str, size: tuple[int, int], *, seed: int = 0) -> Any:
    """Build the headless Keras model at ``size`` = (width, height) with the chosen weights.

    ``none`` gives a seeded random init so that ``predict`` can rebuild the very same network.
    """
    from featurize.tfquiet import import_tensorflow

    import_tensorflow()  # this can be TF's first import (predict, demo): keep its C++ start-up chatter off the terminal
    ctor = backbone.build_fn()
    shape = (size[1], size[0], 3)
    tag = weights_tag(weights)
    if tag == "imagenet":
        try:
            return ctor(include_top=False, weights="imagenet", input_shape=shape)
        except ValueError as exc:
            raise AlzmriError(f"{backbone.name} cannot take input size {size[0]}x{size[1]} with ImageNet weights ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception for "URL fetch failure"
            raise WeightsError(
                f"ImageNet weights for {backbone.name} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "put Keras's weight file in $KERAS_HOME/models (KERAS_HOME=...), or pass --weights PATH, or --weights none for random init"
            ) from None
    try:
        with _seeded(seed):  # loaded weights overwrite the init; only random init needs the seed
            model = ctor(include_top=False, weights=None, input_shape=shape)
    except ValueError as exc:
        raise AlzmriError(f"{backbone.name} cannot take input size {size[0]}x{size[1]} ({exc}); choose a larger --image-size") from None
    if tag.startswith("file-"):
        try:
            model.load_weights(str(Path(weights).expanduser()))
        except Exception as exc:  # noqa: BLE001 - h5py, Keras and ValueError alike mean "not this model's weights"
            raise WeightsError(f"{weights}: not a weights file for headless {backbone.name} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); save it with model.save_weights from the same architecture with include_top=False") from None
    return model


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Keras's global seed for a reproducible random init, with Python's and NumPy's global RNG states put back
    afterwards (``keras.utils.set_random_seed`` reseeds all three, which is not the caller's business)."""
    import random

    import keras

    py_state, np_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def feature_model(base: Any, layers: list[str], pooling: str, prefix: str = "") -> Any:
    """Wrap ``base`` so that it outputs globally pooled activations of ``layers`` (concatenated).

    ``prefix`` keeps layer names unique when several such heads share one base.
    """
    import keras

    pooling = choose("pooling", pooling, POOLINGS)
    pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
    names = layers or ["last"]
    outs = []
    for name in names:
        if name == "last":
            tensor = base.output
        else:
            try:
                tensor = base.get_layer(name).output
            except ValueError:
                raise AlzmriError(f"{base.name} has no layer {name!r}; pass --layers last|mid|multi, or layer names that "
                                 f"keras.applications' {base.name}.summary() lists") from None
        outs.append(pool(name=f"{prefix}pool_{len(outs)}")(tensor))
    out = outs[0] if len(outs) == 1 else keras.layers.Concatenate(name=f"{prefix}concat")(outs)
    return keras.Model(base.input, out, name=f"{base.name}_features")
