"""Deterministic brain-MRI-like datasets for the demo and the tests: no downloads, Kaggle folder layout.

Subjects come from the phantom of ``featurize.phantom``: slices of one subject are near-duplicates while different
subjects are clearly less alike, the same structure that makes the real Kaggle data leak between a slice-level
train/test split. This module draws subjects per stage, assigns splits, and writes the images and the truth table.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from featurize.atomic import atomic_path
from featurize.errors import DataError
from featurize.options import choose
from featurize.phantom import DEFAULT_SIZE, check_size, make_subject, render_slices

CLASS_NAMES: tuple[str, ...] = ("NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented")
# Kaggle's file stems ("nonDem12.jpg"); they name the class, never the subject.
FILE_PREFIXES: tuple[str, ...] = ("nonDem", "verymildDem", "mildDem", "moderateDem")
_SUBJECT_PREFIXES: tuple[str, ...] = ("ND", "VMD", "MD", "MOD")
FORMATS: tuple[str, ...] = ("png", "jpg")
SPLITS: tuple[str, ...] = ("slice", "subject")
TRUTH_FILE = "subjects_truth.csv"
PARAMS_FILE = "synth.json"
TRUTH_COLUMNS: tuple[str, ...] = ("path", "label", "split", "subject", "slice")
# Bump whenever the rendering changes, so a rerun never reuses images drawn by older code.
GENERATOR_VERSION = 1

def _subject_id(stage: int, index: int) -> str:
    return f"{_SUBJECT_PREFIXES[stage]}{index:03d}"


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DataError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _single_thread_blas() -> contextlib.AbstractContextManager:
    """The matrix products here are tiny: BLAS worker threads only spin (doubling CPU time on a shared machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it we merely run slower
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def generate_arrays(subjects_per_class: int = 6, slices_per_subject: int = 8, size: tuple[int, int] = DEFAULT_SIZE, *,
                    seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Images uint8 (N, H, W) and a table with columns label, subject, slice (one row per image, subject-major).

    Each subject has its own random stream keyed by (seed, stage, index), so adding subjects never changes others.
    """
    spc = _check_int("subjects_per_class", subjects_per_class, 1)
    sps = _check_int("slices_per_subject", slices_per_subject, 1)
    seed = _check_int("seed", seed, 0)
    w, h = check_size(size)
    images = np.empty((len(CLASS_NAMES) * spc * sps, h, w), dtype=np.uint8)
    rows: list[tuple[str, str, int]] = []
    with _single_thread_blas():
        for stage, label in enumerate(CLASS_NAMES):
            for j in range(spc):
                rng = np.random.default_rng([seed, stage, j])
                anatomy = make_subject(stage, rng)
                start = len(rows)
                images[start:start + sps] = render_slices(anatomy, sps, (w, h), rng)
                rows += [(label, _subject_id(stage, j), k) for k in range(sps)]
    table = pd.DataFrame(rows, columns=["label", "subject", "slice"])
    return images, table


def _assign_split(table: pd.DataFrame, split: str, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """'train'/'test' per row, stratified by class; keeps at least one train item per class."""
    out = np.full(len(table), "train", dtype=object)
    for label in CLASS_NAMES:
        idx = np.flatnonzero(table["label"].to_numpy() == label)
        if split == "subject":
            units = np.array(sorted(set(table["subject"].iloc[idx])))
        else:
            units = idx
        n_test = min(len(units) - 1, max(1, int(round(len(units) * test_fraction))))
        chosen = rng.permutation(units)[:n_test] if n_test > 0 else units[:0]
        if split == "subject":
            out[idx[np.isin(table["subject"].iloc[idx].to_numpy(), chosen)]] = "test"
        else:
            out[chosen] = "test"
    return out


def _params(spc: int, sps: int, size: tuple[int, int], fmt: str, split: str, test_fraction: float, seed: int) -> dict:
    return {"generator": "alzmri.synth", "version": GENERATOR_VERSION, "subjects_per_class": spc,
            "slices_per_subject": sps, "size": [size[0], size[1]], "fmt": fmt, "split": split,
            "test_fraction": test_fraction, "seed": seed, "classes": list(CLASS_NAMES)}


def _read_truth(out: Path) -> pd.DataFrame | None:
    """The truth table of a finished dataset in ``out``, or None when any listed image is missing."""
    try:
        truth = pd.read_csv(out / TRUTH_FILE, dtype={"path": str, "label": str, "split": str, "subject": str})
    except (OSError, ValueError):
        return None
    if list(truth.columns) != list(TRUTH_COLUMNS) or not all((out / p).is_file() for p in truth["path"]):
        return None
    return truth


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:  # readers never see a half-written marker
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_dataset(out: str | Path, *, subjects_per_class: int = 6, slices_per_subject: int = 8,
                  size: tuple[int, int] = DEFAULT_SIZE, fmt: str = "png", split: str = "slice",
                  test_fraction: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """Write ``OUT/{train,test}/<Class>/<prefix><n>.<fmt>`` plus ``subjects_truth.csv`` and return the truth table.

    ``split="slice"`` copies Kaggle's leaky split (one subject's slices on both sides); ``"subject"`` keeps
    subjects whole. Rerunning with the same parameters reuses the finished dataset instead of redrawing it.
    """
    spc = _check_int("subjects_per_class", subjects_per_class, 1)
    sps = _check_int("slices_per_subject", slices_per_subject, 1)
    seed = _check_int("seed", seed, 0)
    w, h = check_size(size)
    fmt = str(fmt).lower().lstrip(".")
    fmt = "jpg" if fmt == "jpeg" else fmt
    fmt = choose("image format", fmt, FORMATS, error=DataError)
    split = choose("split", split, SPLITS, error=DataError)
    try:
        test_fraction = float(test_fraction)
    except (TypeError, ValueError):
        raise DataError(f"test_fraction must be a number between 0 and 1, got {test_fraction!r}") from None
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")

    out = Path(out).expanduser()
    params = _params(spc, sps, (w, h), fmt, split, test_fraction, seed)
    marker = out / PARAMS_FILE
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; pick another --out folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            old = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise DataError(f"{out}: folder is not empty and holds no synthetic dataset; "
                            "pick another --out folder or delete it") from None
        old_params = {k: v for k, v in old.items() if k != "complete"} if isinstance(old, dict) else None
        if old_params != params:
            raise DataError(f"{out}: holds a synthetic dataset made with other parameters (see {PARAMS_FILE}); "
                            "pick another --out folder or delete it")
        if old.get("complete"):
            truth = _read_truth(out)
            if truth is not None:
                return truth
        # Same parameters but unfinished or damaged: the names are deterministic, so redrawing overwrites in place.

    out.mkdir(parents=True, exist_ok=True)
    # Marker first: an interrupted run leaves a folder we recognise as ours and can safely redo.
    _write_json(marker, {**params, "complete": False})

    images, table = generate_arrays(spc, sps, (w, h), seed=seed)
    rng = np.random.default_rng([seed, 1_000_003])  # split and naming stream, independent of the anatomy streams
    table["split"] = _assign_split(table, split, test_fraction, rng)
    table["path"] = ""
    from PIL import Image

    for part in ("train", "test"):
        for stage, label in enumerate(CLASS_NAMES):
            idx = np.flatnonzero((table["split"] == part).to_numpy() & (table["label"] == label).to_numpy())
            if not len(idx):
                continue  # an empty class folder would be reported as a problem by the scanner
            folder = out / part / label
            folder.mkdir(parents=True, exist_ok=True)
            # Numbered in a shuffled order so neither names nor their sort order reveal the subject.
            for number, i in enumerate(rng.permutation(idx)):
                name = f"{FILE_PREFIXES[stage]}{number}.{fmt}"
                pil = Image.fromarray(images[i])  # uint8 2-D: mode "L"
                if fmt == "png":
                    pil.save(folder / name, format="PNG", optimize=False, compress_level=6)
                else:
                    pil.save(folder / name, format="JPEG", quality=92)
                table.at[i, "path"] = f"{part}/{label}/{name}"

    order = {lab: k for k, lab in enumerate(CLASS_NAMES)}
    table["_s"] = (table["split"] != "train").astype(int)
    table["_c"] = table["label"].map(order)
    table["_n"] = table["path"].str.extract(r"(\d+)\.\w+$", expand=False).astype(int)
    truth = (table.sort_values(["_s", "_c", "_n"]).loc[:, list(TRUTH_COLUMNS)].reset_index(drop=True))
    truth.to_csv(out / TRUTH_FILE, index=False, lineterminator="\n")
    _write_json(marker, {**params, "complete": True})
    return truth

