"""Property-based fuzzing (Hypothesis) of everything that parses user files: the image decoder, the CSV manifest,
the subject resolver and the volume readers (NIfTI, DICOM).

The property: every input gives a decoded result or a one-line ``AlzmriError``; never another exception, never
more than 20 s, never more than 200 MB of peak memory. Real small files are made here and then truncated,
bit-flipped or have header bytes overwritten. ``HYPOTHESIS_PROFILE=long`` runs 2,000 examples per target instead
of 100; ``ALZMRI_FUZZ_COUNTS=FILE`` writes the counts (tried, decoded, clean errors) as JSON.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from featurize.errors import AlzmriError

COUNTS: dict[str, Counter[str]] = {}
MB = 1024 * 1024


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def check(target: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` once: a result, or a one-line AlzmriError (counted); bounded time and peak memory (VmHWM is
    reset first, so the peak is this call's own)."""
    c = COUNTS.setdefault(target, Counter())
    c["tried"] += 1
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_mb()
    t0 = time.perf_counter()
    try:
        out = fn()
        c["decoded"] += 1
    except AlzmriError as exc:
        assert "\n" not in str(exc).strip() and str(exc).strip(), repr(str(exc))
        c["clean_error"] += 1
        out = None
    assert time.perf_counter() - t0 < 20, f"{target}: took {time.perf_counter() - t0:.1f} s"
    grown = _hwm_mb() - base
    assert grown < 200, f"{target}: peak memory grew by {grown:.0f} MB"
    return out


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    out = os.environ.get("ALZMRI_FUZZ_COUNTS")
    if out:
        old = json.loads(Path(out).read_text()) if Path(out).is_file() else {}
        old.update({k: dict(v) for k, v in COUNTS.items()})
        Path(out).write_text(json.dumps(old, indent=1, sort_keys=True))


def mutate(data: bytes, draw: st.DrawFn) -> bytes:
    """Truncate, flip bits, or overwrite header bytes (or several of these)."""
    raw = bytearray(data)
    for op in draw(st.lists(st.sampled_from(["truncate", "flip", "header"]), min_size=1, max_size=3)):
        if not raw:
            break
        if op == "truncate":
            raw = raw[: draw(st.integers(0, len(raw) - 1))]
        elif op == "flip":
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, len(raw) - 1))
                raw[i] ^= 1 << draw(st.integers(0, 7))
        else:
            at = draw(st.integers(0, min(len(raw), 400) - 1))
            new = draw(st.binary(min_size=1, max_size=8))
            raw[at:at + len(new)] = new
    return bytes(raw)


# ------------------------------------------------------------------------------------------------ images

def _image_bytes(kind: str) -> tuple[bytes, str]:
    g = np.tile(np.arange(0, 240, 5, dtype=np.uint16), (40, 1))  # 48 x 40 ramp
    buf = io.BytesIO()
    if kind == "jpeg-L":
        Image.fromarray(g.astype(np.uint8)).save(buf, "JPEG")
    elif kind == "jpeg-RGB":
        Image.fromarray(np.dstack([g.astype(np.uint8)] * 3)).save(buf, "JPEG", progressive=True)
    elif kind == "jpeg-CMYK":
        Image.fromarray(g.astype(np.uint8)).convert("CMYK").save(buf, "JPEG")
    elif kind == "png-L":
        Image.fromarray(g.astype(np.uint8)).save(buf, "PNG")
    elif kind == "png-16":
        Image.fromarray((g * 200).astype(np.uint16)).save(buf, "PNG")
    elif kind == "png-RGBA":
        Image.fromarray(np.dstack([g.astype(np.uint8)] * 3 + [np.full(g.shape, 128, np.uint8)])).save(buf, "PNG")
    elif kind == "png-P":
        Image.fromarray(g.astype(np.uint8)).convert("P").save(buf, "PNG")
    elif kind == "tiff-16":
        Image.fromarray((g * 200).astype(np.uint16)).save(buf, "TIFF")
    elif kind == "tiff-RGB-lzw":
        Image.fromarray(np.dstack([g.astype(np.uint8)] * 3)).save(buf, "TIFF", compression="tiff_lzw")
    else:
        Image.fromarray(g.astype(np.uint8)).save(buf, "BMP")
    suffix = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "bmp": ".bmp"}[kind.split("-")[0]]
    return buf.getvalue(), suffix


IMAGE_KINDS = ["jpeg-L", "jpeg-RGB", "jpeg-CMYK", "png-L", "png-16", "png-RGBA", "png-P", "tiff-16", "tiff-RGB-lzw", "bmp"]
IMAGES = {k: _image_bytes(k) for k in IMAGE_KINDS}


@given(data=st.data(), kind=st.sampled_from(IMAGE_KINDS), resize=st.sampled_from(["stretch", "pad"]))
def test_fuzz_image_decoder(data: st.DataObject, kind: str, resize: str) -> None:
    from featurize.images import load_rgb

    raw, suffix = IMAGES[kind]
    bad = mutate(raw, data.draw)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x{suffix}"
        p.write_bytes(bad)
        out = check("image decoder", lambda: load_rgb(p, (32, 24), resize))
    if out is not None:
        assert out.shape == (24, 32, 3) and out.dtype == np.uint8


# ------------------------------------------------------------------------------------------------ manifest

_CELLS = st.sampled_from(["a.png", "b.png", "sub/c.png", "missing.png", "", " a.png ", "sub\\c.png", "../outside.png",
                          "ABS", "a.png"])
# mostly valid values, so that many manifests parse and the checks on the result run too
_LABELS = st.sampled_from(["NonDemented", "MildDemented"] * 4 + ["", " MildDemented", "x,y", '"q"'])
_SPLITS = st.sampled_from(["", "train", "test"] * 4 + ["TRAIN", " test ", "val", "nan"])


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    header = draw(st.sampled_from([["path", "label"], ["path", "label", "split"], ["Path", " LABEL ", "split", "subject"],
                                   ["label", "path", "subject"]] * 3 + [["path"], ["file", "label"]]))
    lines = [",".join(header)]
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()) and draw(st.booleans()):
            lines.append("")  # a blank row
            continue
        cells = {"path": draw(_CELLS), "label": draw(_LABELS), "split": draw(_SPLITS), "subject": draw(st.sampled_from(["", "s1", "s2"]))}
        row = [cells.get(h.strip().lower(), draw(_CELLS)) for h in header]
        if draw(st.integers(0, 19)) == 0:
            row.append("extra")  # a ragged row
        lines.append(",".join(f'"{c}"' if "," in c and not c.startswith('"') else c for c in row))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    raw = text.encode()
    if draw(st.booleans()):
        raw = b"\xef\xbb\xbf" + raw  # a UTF-8 BOM, as Excel writes
    if draw(st.integers(0, 9)) == 0:
        raw = mutate(raw, draw)
    return raw


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("manifest")
    (d / "sub").mkdir()
    for name, v in (("a.png", 10), ("b.png", 200), ("sub/c.png", 90)):
        Image.fromarray(np.full((20, 20), v, np.uint8)).save(d / name)
    Image.fromarray(np.full((20, 20), 30, np.uint8)).save(d.parent / "outside.png")
    return d


@given(raw=manifests())
def test_fuzz_manifest_parser(image_folder: Path, raw: bytes) -> None:
    from featurize.dataset import scan

    raw = raw.replace(b"ABS", str(image_folder / "b.png").encode())
    csv = image_folder / "m.csv"
    csv.write_bytes(raw)
    ds = check("manifest parser", lambda: scan(csv))
    if ds is not None:
        t = ds.table
        assert not t["path"].duplicated().any(), t
        assert set(t["split"]) <= {"", "train", "test"} and (t["label"] != "").all()
        assert all(Path(p).is_file() for p in t["abspath"])
        assert not any("\\" in p for p in t["path"])


# ------------------------------------------------------------------------------------------------ subjects

_PATHS = st.lists(st.from_regex(r"\A(train|test)/[A-Za-z]{1,8}/[a-z0-9_ ()]{1,16}\.(png|jpg)\Z", fullmatch=True),
                  min_size=1, max_size=8)


@given(paths=_PATHS, mode=st.one_of(
    st.sampled_from(["none", "column", "regex:", "regex:(", r"regex:(\d+)", r"regex:_(\d+)_", "regex:[a-z]+", "regex:(x)?",
                     "bogus", " column ", "REGEX:(a)", "regex:(?P<s>[a-z])", "regex:(a)(b)", "regex:\\"]),
    st.text(alphabet="()[]{}?*+|^$\\.ad0_-", max_size=10).map(lambda r: "regex:" + r)))
def test_fuzz_subject_resolver(paths: list[str], mode: str) -> None:
    import pandas as pd

    from featurize.dataset import Dataset
    from featurize.grouping import resolve_subjects

    table = pd.DataFrame({"path": paths, "label": "a", "split": "", "subject": "", "sha1": "", "abspath": paths})
    ds = Dataset(root=Path("/nowhere"), source="manifest", table=table, class_names=["a", "b"], dataset_id="fuzz",
                 problems=[])
    out = check("subject resolver", lambda: resolve_subjects(ds, mode, artifacts=tempfile.gettempdir()))
    if out is not None:
        assert len(out) == len(paths)


@given(raw=st.data())
def test_fuzz_subjects_csv(raw: st.DataObject) -> None:
    from featurize.subjects import read_subjects_csv

    good = b"path,label,split,subject,sha1\ntrain/A/x.png,A,train,s1,ab\ntrain/B/y.png,B,train,s2,cd\n"
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "subjects.csv"
        p.write_bytes(mutate(good, raw.draw))
        check("subjects.csv reader", lambda: read_subjects_csv(p))


# ------------------------------------------------------------------------------------------------ volumes

def _nifti_bytes(gz: bool) -> bytes:
    import nibabel as nib

    data = np.random.default_rng(0).integers(0, 1000, (12, 14, 6)).astype(np.int16)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("v.nii.gz" if gz else "v.nii")
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(p))
        return p.read_bytes()


NIFTI = {".nii": _nifti_bytes(False), ".nii.gz": _nifti_bytes(True)}


@given(data=st.data(), suffix=st.sampled_from([".nii", ".nii.gz"]))
def test_fuzz_nifti_reader(data: st.DataObject, suffix: str) -> None:
    from featurize.volumes.io import read_nibabel

    raw = NIFTI[suffix]
    if suffix == ".nii.gz" and data.draw(st.booleans()):
        import gzip

        raw = gzip.compress(mutate(gzip.decompress(raw), data.draw))  # damage inside the stream too
    else:
        raw = mutate(raw, data.draw)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"v{suffix}"
        p.write_bytes(raw)
        vol = check("NIfTI reader", lambda: read_nibabel(p))
    if vol is not None:
        assert vol.data.ndim == 3 and np.isfinite(vol.data).all()


def _dicom_series() -> list[bytes]:
    from featurize.synth_volumes import write_dicom_series

    data = np.random.default_rng(1).integers(0, 1000, (12, 14, 4)).astype(np.int16)
    with tempfile.TemporaryDirectory() as d:
        files = write_dicom_series(Path(d), data, np.diag([2.0, 2.0, 3.0, 1.0]), patient_id="P1",
                                   rng=np.random.default_rng(2))
        return [f.read_bytes() for f in sorted(files)]


DICOM = _dicom_series()


@given(data=st.data(), which=st.lists(st.integers(0, len(DICOM) - 1), min_size=1, max_size=2, unique=True))
def test_fuzz_dicom_reader(data: st.DataObject, which: list[int]) -> None:
    from featurize.volumes.dicom import list_series, read_series

    def read(folder: Path) -> list[Any]:
        series, _notes = list_series(folder)
        return [read_series(s) for s in series if not s.skip]

    with tempfile.TemporaryDirectory() as d:
        for i, raw in enumerate(DICOM):
            (Path(d) / f"IM{i:03d}.dcm").write_bytes(mutate(raw, data.draw) if i in which else raw)
        vols = check("DICOM reader", lambda: read(Path(d)))
    for v in vols or []:
        assert v.data.ndim == 3
