"""CSV manifests as people write them: a BOM, blank rows, absolute and Windows paths, duplicates, bad splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurize.dataset import scan
from featurize.errors import DataError


def _images(root: Path) -> None:
    (root / "train").mkdir(parents=True)
    for i, v in enumerate((10, 60, 120, 200)):
        Image.fromarray(np.full((20, 20), v, np.uint8)).save(root / "train" / f"s{i}.png")


def test_bom_blank_rows_absolute_backslash_and_duplicate_rows(tmp_path: Path) -> None:
    _images(tmp_path)
    absolute = tmp_path / "train" / "s3.png"
    text = ("Path , LABEL,Split\r\n"
            "train/s0.png,NonDemented,train\r\n"
            "\r\n"
            "train\\s1.png,MildDemented,TEST\r\n"      # written on Windows
            f"{absolute},MildDemented,\r\n"
            "train/s0.png,NonDemented,train\r\n"       # listed twice
            "./train/s2.png,NonDemented,train\r\n")
    csv = tmp_path / "m.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + text.encode())   # Excel's UTF-8 BOM
    ds = scan(csv)
    assert sorted(ds.table["path"]) == sorted([str(absolute), "./train/s2.png", "train/s0.png", "train/s1.png"])
    assert dict(zip(ds.table["path"], ds.table["split"]))["train/s1.png"] == "test"
    assert sum("listed again (first at line 2)" in p for p in ds.problems) == 1


def test_a_bad_split_or_a_ragged_row_is_one_line(tmp_path: Path) -> None:
    _images(tmp_path)
    csv = tmp_path / "m.csv"
    csv.write_text("path,label,split\ntrain/s0.png,A,val\ntrain/s1.png,B,train\n")
    with pytest.raises(DataError, match=r"m.csv:2: split must be train, test or empty, not 'val'") as err:
        scan(csv)
    assert "\n" not in str(err.value)
    csv.write_text("path,label\ntrain/s0.png,A\ntrain/s1.png,B,extra\n")
    with pytest.raises(DataError, match="cannot read the manifest") as err:
        scan(csv)
    assert "\n" not in str(err.value)
