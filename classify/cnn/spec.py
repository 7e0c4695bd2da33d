"""What defines a CNN and its training schedule, and the defaults calibrated for them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from featurize.backbones import Backbone

Log = Callable[[str], None]

MODELS = ("scratch", "finetune")
# a fine-tuned backbone's BatchNorm: "frozen" (inference mode, ImageNet statistics) or "train" (training mode in every
# layer, its averages re-estimated on training slices after each epoch; scale and offset train where layers unfreeze)
BATCHNORM_MODES = ("frozen", "train")
ARCH_VERSION = 4  # bump when a network or its training changes: old checkpoints then start over (3: issue 20's recipe;
#                  4: BatchNorm statistics re-estimated after each epoch)
SIDECAR_FORMAT = "alzmri-baseline/1"

# The recipe (issue 20). Budgets measured on the 5,120-slice Kaggle set on the shared 2-core CPU: see docs/benchmarks.md.
# Fine-tune input: the weights' native size from featurize.weights_catalog (224x224 for ImageNet MobileNetV2); the
# scratch CNN keeps half the slices' native 176x208.
DEFAULT_SIZE = {"scratch": "88x104"}
DEFAULT_EPOCHS = {"scratch": 30, "finetune": 12}
DEFAULT_HEAD_EPOCHS = 2  # warm-up of the new head on the frozen base, so that its random init does not send large
#                         gradients into the pretrained layers once they are unfrozen
# Early stopping waits this long first: a scratch CNN's validation score (subject-disjoint when subjects are known)
# is flat and noisy for the first epochs, and patience 3 alone stopped it at epoch 6, barely trained.
DEFAULT_MIN_EPOCHS = {"scratch": 10, "finetune": 0}
DEFAULT_LR = 1e-3  # the head's peak learning rate (both stages), and the scratch CNN's
DEFAULT_FINE_LR = 1e-4  # the unfrozen base's peak learning rate: discriminative, 10x below the head's
DEFAULT_LABEL_SMOOTHING = 0.1
WARMUP_FRACTION = 0.1  # of each stage's steps: linear warm-up from lr/10 to the peak, then cosine decay to lr/100
SCRATCH_BLOCKS = ((16, 0.1), (32, 0.1), (64, 0.1), (128, 0.2), (256, 0.2))  # (filters, dropout) per block
VAL_FRACTION = 0.15
# training images over which a scratch CNN's BatchNorm statistics are re-estimated after each epoch
# (classify.cnn.batchnorm); 512 slices give >= 3,000 values per channel even in the last 3x2 block
BN_IMAGES = 512


def digest(obj: Any) -> str:
    """A short, stable hash of a JSON-able object (checkpoint fingerprints, file lists)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fmt_secs(s: float) -> str:
    """``1m05s`` or ``1h02m``."""
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@dataclass(frozen=True)
class NetSpec:
    """Everything that defines the network and its learning rates (its ``settings`` fingerprint checkpoints)."""

    kind: str
    size: tuple[int, int]
    n_classes: int
    seed: int
    backbone: Backbone | None
    weights: str
    weights_tag: str
    unfreeze: int
    head_epochs: int
    lr: float
    fine_lr: float
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING
    preprocess: str = ""  # featurize.weights_catalog preprocessing of the weights ("": the architecture's own)
    precision: str = "float32"
    devices: str = "auto"
    batchnorm: str = "frozen"  # BATCHNORM_MODES; finetune only

    @property
    def channels(self) -> int:
        """1 (luma) for the scratch CNN, 3 (RGB) for a pretrained backbone."""
        return 1 if self.kind == "scratch" else 3

    @property
    def name(self) -> str:
        """File stem of the model: ``scratch__end-to-end`` or ``<backbone>__fine-tune``."""
        return "scratch__end-to-end" if self.kind == "scratch" else f"{self.backbone.name}__fine-tune"

    @property
    def head(self) -> str:
        """The report's ``head`` column."""
        return "end-to-end" if self.kind == "scratch" else "fine-tune"

    def stages(self, epochs: int) -> list[tuple[str, int, float, float]]:
        """(stage name, last epoch of the stage (1-based, inclusive), the head's peak learning rate, the base's).

        ``head``: the new head alone on the frozen base; ``fine``: the top ``unfreeze`` base layers too, at the
        lower base rate (discriminative learning rates). Each stage has its own warm-up + cosine schedule."""
        if self.kind == "scratch":
            return [("train", epochs, self.lr, self.lr)]
        return [("head", min(self.head_epochs, epochs), self.lr, 0.0), ("fine", epochs, self.lr, self.fine_lr)]

    def settings(self) -> dict[str, Any]:
        """The settings a checkpoint must match to be resumed."""
        return {"arch_version": ARCH_VERSION, "model": self.kind, "backbone": self.backbone.name if self.backbone else "scratch",
                "weights": self.weights_tag, "image_size": f"{self.size[0]}x{self.size[1]}", "channels": self.channels,
                "n_classes": self.n_classes, "seed": self.seed, "lr": self.lr, "label_smoothing": self.label_smoothing,
                "schedule": f"warmup{WARMUP_FRACTION:g}-cosine",
                **({"unfreeze": self.unfreeze, "head_epochs": self.head_epochs, "fine_lr": self.fine_lr,
                    "preprocess": self.preprocess or "keras", "stages": "head-then-fine-from-last"}
                   if self.kind == "finetune" else {}),
                # fine-tunes of weights with their own preprocessing trained with the architecture's until session 7:
                # a key of their own starts those checkpoints over and leaves every other one resumable
                **({"catalog_preprocess_in_model": True} if self.kind == "finetune" and self.preprocess else {}),
                **({"batchnorm": self.batchnorm} if self.kind == "finetune" and self.batchnorm != "frozen" else {}),
                # session 8: a trained BatchNorm's averages are re-estimated after each epoch (momentum 0.999 before)
                **({"batchnorm_stats": "reestimated"} if self.kind == "finetune" and self.batchnorm == "train" else {}),
                # only when not the default, so that float32 checkpoints are unchanged
                **({"precision": _policy(self.precision)} if self.precision != "float32" else {})}


@dataclass(frozen=True)
class Schedule:
    """How long to train: the epoch budget, early-stopping patience (never before ``min_epochs``), batch size, and a
    wall-clock budget (the checkpoint stays; a rerun continues)."""

    epochs: int
    patience: int
    min_epochs: int
    batch_size: int
    max_train_minutes: float | None = None  # per network and run: stop after the epoch that would overrun it


def _policy(precision: str) -> str:
    from featurize.devices import policy_name

    return policy_name(precision)
