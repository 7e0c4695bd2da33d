"""Per-epoch training checkpoints that a rerun with the same settings resumes (other settings start over)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from classify.cnn.spec import Log, digest
from featurize.atomic import write_bytes_durably


class Checkpoint:
    """``state.json`` (settings fingerprint, epoch, history, best, patience counter) pointing at per-epoch folders
    ``eNNNN/`` (weights and optimizer state). A folder is complete before the pointer moves (rename, then an
    atomic replace of state.json), so an interruption at any moment leaves the previous epoch intact."""

    def __init__(self, folder: Path, settings: dict[str, Any], log: Log) -> None:
        self.dir, self.settings, self.fingerprint, self.log = folder, settings, digest(settings), log

    def fresh(self) -> dict[str, Any]:
        """The state of a run that has trained no epoch yet."""
        return {"fingerprint": self.fingerprint, "settings": self.settings, "epoch": 0, "stage_index": 0, "wait": 0,
                "history": [], "best_epoch": 0, "best_bal_acc": -1.0, "best_loss": float("inf"), "last_dir": "",
                "best_dir": "", "train_seconds": 0.0, "diverged_epoch": None}

    def _start_over(self, why: str | None) -> None:
        if why:
            self.log(f"{self.dir}: {why}; starting over")
        shutil.rmtree(self.dir, ignore_errors=True)

    def load(self) -> dict[str, Any] | None:
        """The saved state when it matches these settings and its epoch folders are complete, else None (and the
        folder is cleared, saying why)."""
        path = self.dir / "state.json"
        if not path.is_file():
            if self.dir.exists():
                self._start_over(None)
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            self._start_over(f"unreadable checkpoint ({exc})")
            return None
        if state.get("fingerprint") != self.fingerprint:
            old = state.get("settings", {})
            changed = sorted(k for k in set(old) | set(self.settings) if str(old.get(k)) != str(self.settings.get(k)))
            self._start_over(f"checkpoint was made with other settings ({', '.join(changed) or 'format'} changed)")
            return None
        for key in ("last_dir", "best_dir"):
            if state.get(key) and not (self.dir / state[key] / "model.weights.h5").is_file():
                self._start_over(f"checkpoint is incomplete ({state[key]} missing)")
                return None
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        """Replace state.json atomically (fsynced first)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_bytes_durably(self.dir / "state.json", json.dumps(state, indent=1, default=float).encode())

    def save(self, model: Any, state: dict[str, Any], *, best: bool) -> None:
        """Save this epoch's weights (with the optimizer state), move the pointer, drop folders no longer pointed at."""
        name = f"e{int(state['epoch']):04d}"
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp, final = self.dir / f"{name}.tmp-{os.getpid()}", self.dir / name  # per process (baseline also locks)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save_weights(str(tmp / "model.weights.h5"))  # a compiled model's file holds the optimizer state too
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        state["last_dir"] = name
        if best:
            state["best_dir"] = name
        self.write_state(state)
        keep = {state["last_dir"], state["best_dir"]}
        for p in self.dir.iterdir():
            if p.is_dir() and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def restore(self, model: Any, which: str, state: dict[str, Any], *, optimizer: bool) -> None:
        """Load the weights of the ``which`` epoch; with ``optimizer`` also Adam's state (saved in the same file)."""
        folder = self.dir / state[which]
        if optimizer:
            model.optimizer.build(model.trainable_variables)
        with warnings.catch_warnings():
            # without ``optimizer`` the fresh optimizer is unbuilt and Keras says it skips the saved one: intended
            warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
            model.load_weights(str(folder / "model.weights.h5"))
