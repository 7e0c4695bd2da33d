"""Training curves of an end-to-end CNN: loss and balanced accuracy per epoch, train and validation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from featurize.atomic import atomic_path


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = "",
                         best_epoch: int | None = None) -> Path:
    """Write a two-panel PNG (loss | balanced accuracy) from per-epoch records.

    Each record has ``epoch`` (1-based), ``stage`` and ``loss``, ``bal_acc``, ``val_loss``, ``val_bal_acc``.
    A dotted line marks where a new stage starts (fine-tuning after the head), a star the best epoch.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [int(h["epoch"]) for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels = (("loss", "loss (train: class-weighted)"), ("bal_acc", "balanced accuracy"))
    for ax, (key, label) in zip(axes, panels):
        ax.plot(epochs, [h.get(key, float("nan")) for h in history], "o-", ms=3, label="train (augmented)")
        ax.plot(epochs, [h.get(f"val_{key}", float("nan")) for h in history], "s-", ms=3, label="validation")
        for prev, cur in zip(history, history[1:]):
            if cur.get("stage") != prev.get("stage"):
                ax.axvline(int(cur["epoch"]) - 0.5, color="grey", ls=":", lw=1)
                ax.text(int(cur["epoch"]) - 0.45, 0.98, str(cur.get("stage")), va="top", fontsize=8, color="grey",
                        transform=ax.get_xaxis_transform())
        if best_epoch is not None and best_epoch in epochs:
            b = history[epochs.index(best_epoch)]
            ax.plot([best_epoch], [b.get(f"val_{key}", float("nan"))], "*", ms=12, color="tab:red", label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if key == "bal_acc":
            ax.set_ylim(0, 1.02)
    axes[1].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
