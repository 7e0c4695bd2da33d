"""What defines a CNN and its training schedule, and the defaults calibrated for them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from featurize.backbones import Backbone

Log = Callable[[str], None]

MODELS = ("scratch", "finetune")
ARCH_VERSION = 2  # bump when a network definition changes: old checkpoints then start over
SIDECAR_FORMAT = "alzmri-baseline/1"

# Defaults, calibrated on the 5,120-slice Kaggle set (4,097 train: 3,482 fit + 615 validation) on the 2-core CPU:
# scratch 88x104 ~17 s/epoch idle (~35-90 s when the cores are shared); fine-tune 160x192 ~60 s per head epoch and
# ~75-115 s per unfrozen epoch. Budgets: scratch <= 30 epochs (~9 min idle), fine-tune 4 + 10 epochs (~15-23 min).
DEFAULT_SIZE = {"scratch": "88x104", "finetune": "160x192"}
DEFAULT_EPOCHS = {"scratch": 30, "finetune": 14}
DEFAULT_HEAD_EPOCHS = 4
# Early stopping waits this long first: a scratch CNN's validation score (subject-disjoint when subjects are known)
# is flat and noisy for the first epochs, and patience 3 alone stopped it at epoch 6, barely trained.
DEFAULT_MIN_EPOCHS = {"scratch": 10, "finetune": 0}
DEFAULT_LR = 1e-3
DEFAULT_FINE_LR = 1e-5
SCRATCH_BLOCKS = ((16, 0.1), (32, 0.1), (64, 0.1), (128, 0.2), (256, 0.2))  # (filters, dropout) per block
VAL_FRACTION = 0.15


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
    precision: str = "float32"
    devices: str = "auto"

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

    def stages(self, epochs: int) -> list[tuple[str, int, float]]:
        """(stage name, last epoch of the stage (1-based, inclusive), learning rate)."""
        if self.kind == "scratch":
            return [("train", epochs, self.lr)]
        return [("head", min(self.head_epochs, epochs), self.lr), ("fine", epochs, self.fine_lr)]

    def settings(self) -> dict[str, Any]:
        """The settings a checkpoint must match to be resumed."""
        return {"arch_version": ARCH_VERSION, "model": self.kind, "backbone": self.backbone.name if self.backbone else "scratch",
                "weights": self.weights_tag, "image_size": f"{self.size[0]}x{self.size[1]}", "channels": self.channels,
                "n_classes": self.n_classes, "seed": self.seed, "lr": self.lr,
                **({"unfreeze": self.unfreeze, "head_epochs": self.head_epochs, "fine_lr": self.fine_lr,
                    "schedule": "head-then-fine-from-last"} if self.kind == "finetune" else {}),
                # only when not the default, so that float32 checkpoints are unchanged
                **({"precision": _policy(self.precision)} if self.precision != "float32" else {})}


@dataclass(frozen=True)
class Schedule:
    """How long to train: the epoch budget, early-stopping patience (never before ``min_epochs``), batch size."""

    epochs: int
    patience: int
    min_epochs: int
    batch_size: int


def _policy(precision: str) -> str:
    from featurize.devices import policy_name

    return policy_name(precision)
