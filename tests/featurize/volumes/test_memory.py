"""Memory stays bounded: slicing a 512x512x400 int16 volume grows peak RSS by less than 3x the volume's size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[3]
SHAPE = (512, 512, 400)
# Peak RSS is measured in a fresh interpreter after the imports, so only the reading and slicing count.
_PROBE = """
import json, resource, sys
import nibabel, scipy.ndimage
from featurize.volumes import load_scans
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
scans = load_scans(sys.argv[1], views=("axial", "coronal", "sagittal"), n_slices=32)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": after - before, "slices": len(scans[0].slices), "shape": scans[0].shape}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_big_volume_peak_rss_growth_under_3x(tmp_path: Path, suffix: str) -> None:
    data = np.zeros(SHAPE, dtype=np.int16, order="F")
    rng = np.random.default_rng(0)
    data[100:412, 80:430, 60:340] = rng.integers(200, 1200, size=(312, 350, 280), dtype=np.int16)
    path = tmp_path / f"big{suffix}"
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 0.5, 1.0])), str(path))
    size = data.nbytes
    del data
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["slices"] == 96 and res["shape"] == list(SHAPE)
    ratio = res["grew_kib"] * 1024 / size
    print(f"{suffix}: peak RSS grew {ratio:.2f}x the volume's {size / 2**20:.0f} MiB")
    assert ratio < 3.0
