"""classify with --calibrate and --conformal end to end on a written cache: rows, reliability PNGs, bundle names,
the bundle's conformal predictor, predict's per-subject sets, and the self-contained HTML page."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classify.bundle import load_bundle
from classify.conformal import bundle_sets
from classify.html_report import embedded_images, write_html
from classify.run import classify_dataset
from featurize.dataset import dataset_id
from tests.classify.test_evaluate import synthetic
from tests.classify.test_run import _cache

PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.slow  # one classify of two configurations (~9 s on 2 busy cores), then plots


@pytest.fixture(scope="module")
def classified(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("trust")
    root, art = tmp / "data", tmp / "art"
    _cache(root, art, synthetic(subjects=8, slices=3, dim=8, sep=1.2, seed=4, n_classes=2))
    frames = [classify_dataset(root, heads=["logreg"], protocol="subject-cv", artifacts=art, n_jobs=1, progress=False,
                               log=lambda s: None, calibration=cal, conformal=0.9) for cal in ("none", "sigmoid")]
    return root, art, pd.concat(frames, ignore_index=True)


def test_calibrated_and_raw_rows_live_side_by_side(classified: tuple[Path, Path, pd.DataFrame]) -> None:
    root, art, df = classified
    report = pd.read_csv(art / "report.csv", keep_default_na=False)
    assert sorted(report["calibration"]) == ["", "sigmoid"]  # one key column apart: neither overwrites the other
    for col in ("brier", "ece", "subject_brier", "subject_ece", "coverage", "set_size", "coverage_80", "coverage_95"):
        assert pd.to_numeric(report[col]).between(0, 2).all(), col
    plots = art / dataset_id(root) / "plots"
    rel = sorted(p.name for p in plots.glob("reliability__*.png"))
    assert len(rel) == 2 and any(n.endswith("__sigmoid.png") for n in rel)
    assert all((plots / n).read_bytes()[:8] == PNG for n in rel)
    bundles = sorted((art / "models" / dataset_id(root)).glob("*.joblib"))
    assert [b.name for b in bundles] == ["mobilenetv2__logreg__subject-cv.joblib",
                                         "mobilenetv2__logreg__subject-cv__sigmoid.joblib"]
    b = load_bundle(bundles[1])
    assert b.calibration == "sigmoid" and b.conformal.level == 0.9 and b.conformal.n_calibration > 0
    # predict's hook: one set per subject from the bundle's conformal head, at the bundle's level
    fs = synthetic(subjects=8, slices=3, dim=8, sep=1.2, seed=4, n_classes=2)
    table = pd.DataFrame({"subject": fs.subject})
    subjects = pd.DataFrame({"subject": list(dict.fromkeys(fs.subject))})
    out = bundle_sets(b, subjects, table, fs.X, np.ones(len(fs), bool), lambda s: None)
    assert out["set_90"].str.len().gt(0).mean() > 0.5
    assert set("|".join(out["set_90"]).split("|")) <= set(fs.class_names) | {""}
    said: list[str] = []
    assert bundle_sets(b, None, table, fs.X, np.ones(len(fs), bool), said.append) is None and "--by-subject" in said[0]


def test_html_page_is_self_contained(classified: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    _, art, _ = classified
    page = write_html(tmp_path / "report.html", art)
    text = page.read_text()
    assert not re.search(r"(src|href)=\"(https?:|//)", text) and "<script" not in text
    images = embedded_images(text)
    # summary + 2 reliability + 2 confusion + 2 before/after (slice and subject)
    assert len(images) == 7 and all(base64.b64decode(i)[:8] == PNG for i in images)
    for phrase in ("Calibration", "Conformal prediction sets", "before and after calibration", "coverage @90%",
                   "Confusion matrices", "sigmoid", "uncalibrated"):
        assert phrase in text, phrase


PROBE = ("<script>window.addEventListener('load', () => { const im = Array.from(document.images); "
         "document.body.setAttribute('data-images', im.filter(i => i.complete && i.naturalWidth > 0).length + '/' "
         "+ im.length); });</script>")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True, timeout=120)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_html_page_renders_in_a_real_browser(classified: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    from PIL import Image

    _, art, _ = classified
    page = write_html(tmp_path / "report.html", art)
    n = len(embedded_images(page.read_text()))
    shot = tmp_path / "shot.png"
    res = _chromium(f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri())
    assert shot.is_file(), res.stderr[-2000:]
    assert "CONSOLE" not in res.stderr, res.stderr  # chromium logs page console messages as INFO:CONSOLE
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1200) and pixels.std() > 20  # text, tables and plots, not a blank page
    # every embedded image decodes: a copy of the page with a probe that counts decoded images at "load"
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    res = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert f'data-images="{n}/{n}"' in res.stdout, (re.findall(r'data-images="[^"]*"', res.stdout), res.stderr[-2000:])
    assert "CONSOLE" not in res.stderr, res.stderr
