"""The two networks: a compact CNN from scratch, and a pretrained backbone with a new head to fine-tune.

Both take float pixel values in 0..255 at a fixed size; augmentation (active only in training) and the
preprocessing (x/255, or the backbone's ``preprocess_input``) live inside the model, so a saved model needs only
its JSON sidecar to be used. Importing this module imports TensorFlow.
"""

from __future__ import annotations

import warnings
from typing import Any

from classify.cnn.keras_objects import BackbonePreprocess, keras
from classify.cnn.spec import SCRATCH_BLOCKS
from featurize.backbones import Backbone, build_base


def augmentation(seed: int) -> Any:
    """Augmentation for axial MRI slices on 0..255 pixels, active only in training (Keras preprocessing layers
    inside the model's training path): left-right mirroring, shifts up to 6%, rotations up to +-10 degrees, zoom
    up to 10%, and intensity jitter (brightness +-10% of the range, contrast +-20%).

    Never a vertical flip: an upside-down axial slice (frontal lobe at the bottom) is no brain a scanner produces,
    whereas the hemispheres are near mirror images, so a left-right flip is plausible; the black background fills
    what shifts and rotations uncover, as in the scans."""
    L = keras.layers
    return keras.Sequential([
        L.RandomFlip("horizontal", seed=seed),
        L.RandomTranslation(0.06, 0.06, fill_mode="constant", fill_value=0.0, seed=seed + 1),
        L.RandomRotation(10 / 360, fill_mode="constant", fill_value=0.0, seed=seed + 2),
        L.RandomZoom(0.1, fill_mode="constant", fill_value=0.0, seed=seed + 3),
        L.RandomBrightness(0.1, value_range=(0.0, 255.0), seed=seed + 4),
        L.RandomContrast(0.2, value_range=(0.0, 255.0), seed=seed + 5),
    ], name="augment")


def build_scratch(size: tuple[int, int], n_classes: int, *, seed: int = 0) -> Any:
    """The compact CNN: 5 blocks of 3x3 Conv-BN-ReLU, 2x2 max-pool and dropout (16..256 filters), GAP, dropout, softmax.

    About 0.4 M parameters and ~20 CPU-seconds per epoch of the 5,120-slice set at 88x104.
    """
    L = keras.layers
    keras.utils.set_random_seed(seed)
    w, h = size
    inp = keras.Input((h, w, 1), name="image")
    x = augmentation(seed)(inp)
    x = L.Rescaling(1.0 / 255, name="rescale")(x)
    for b, (filters, drop) in enumerate(SCRATCH_BLOCKS, start=1):
        x = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{b}_conv")(x)
        x = L.BatchNormalization(name=f"block{b}_bn")(x)
        x = L.ReLU(name=f"block{b}_relu")(x)
        x = L.MaxPooling2D(name=f"block{b}_pool")(x)
        x = L.Dropout(drop, seed=seed + b, name=f"block{b}_drop")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.3, seed=seed, name="head_drop")(x)
    out = L.Dense(n_classes, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inp, out, name="scratch_cnn")


def quiet_build_base(backbone: Backbone, weights: str, size: tuple[int, int], *, seed: int) -> Any:
    """``featurize.backbones.build_base`` without Keras's note that 224x224 ImageNet weights serve other sizes."""
    with warnings.catch_warnings():
        # Keras notes that ImageNet weights made at 224x224 serve other sizes too: expected here, not news
        warnings.filterwarnings("ignore", message=".*input_shape. is undefined or non-square.*")
        return build_base(backbone, weights, size, seed=seed)


def build_finetune(backbone: Backbone, weights: str, size: tuple[int, int], n_classes: int, *,
                   seed: int = 0, preprocess: str = "") -> tuple[Any, Any]:
    """Pretrained base (frozen) plus a new GAP-dropout-softmax head. Returns (model, base).

    ``preprocess`` is the weights catalog's preprocessing of ``weights`` ("": the architecture's own).
    Whether BatchNorm runs in inference mode is ``set_stage``'s choice, not this graph's: Keras runs a non-trainable
    BatchNorm in inference mode, and a trainable one in training mode even under ``training=False`` here (measured
    with Keras 3: its moving statistics move). By default BatchNorm stays frozen for good, also once the base is
    unfrozen: its moving statistics are ImageNet's, and re-estimating them from batches of 32 near-identical grey
    slices would shift every unfrozen layer's input at the first step and undo the warm-up."""
    L = keras.layers
    base = quiet_build_base(backbone, weights, size, seed=seed)
    base.trainable = False
    keras.utils.set_random_seed(seed)
    w, h = size
    inp = keras.Input((h, w, 3), name="image")
    x = augmentation(seed)(inp)
    x = BackbonePreprocess(backbone.name, preprocess, name="preprocess")(x)
    x = base(x, training=False)  # kept for models saved before; set_stage decides BatchNorm's mode
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.2, seed=seed, name="head_drop")(x)
    out = L.Dense(n_classes, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inp, out, name=f"{backbone.name}_finetune"), base


def set_stage(base: Any, stage: str, unfreeze: int, *, batchnorm: str = "frozen") -> list[str]:
    """Freeze the base (``head``), or unfreeze its top ``unfreeze`` layers except BatchNorm (``fine``).

    With ``batchnorm="train"`` every BatchNorm layer of the base runs in training mode in both stages, so its
    statistics adapt to the slices (``batchnorm.reestimate_base_batchnorm`` sets its averages after each epoch); its
    scale and offset train only where the layers are unfrozen (the top
    ``unfreeze`` in ``fine``). Gradients then stop at the lowest unfrozen layer, as with frozen BatchNorm: training
    every scale and offset made a warm-up step 3.5x slower (the whole base's backward pass).
    "Top N layers" counts every layer of ``base.layers`` from the end (as in Keras's transfer-learning guide);
    returns the names of the base layers left trainable that carry weights.
    """
    if base is None:
        return []
    train_bn = batchnorm == "train"
    if not train_bn and (stage != "fine" or unfreeze <= 0):
        base.trainable = False
        return []
    base.trainable = True
    cut = len(base.layers) if stage != "fine" else max(0, len(base.layers) - unfreeze)
    for i, layer in enumerate(base.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = (i >= cut and not is_bn) or (is_bn and train_bn)
        if is_bn and train_bn:  # after the layer's flag, which sets its variables' flags too
            for v in (layer.gamma, layer.beta):
                if v is not None:
                    v.trainable = i >= cut
    return [layer.name for layer in base.layers if layer.trainable_weights]
