"""Issue 21: the weights checksum identifies the weights, whatever layers a pass taps, so every bundle predicts.

Through the real CLI in subprocesses, on small synthetic slices with seeded random-init weights (no download).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
SIZE = "96x96"
pytestmark = [pytest.mark.tf, pytest.mark.slow]


def cli(*args: str, artifacts: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python cli.py ARGS`` in a fresh process, as a user would."""
    env = {**os.environ, "ALZMRI_ARTIFACTS": str(artifacts), "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"alzmri {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic slices of 4 stages x 4 subjects x 4 slices, split by subject, as a manifest with subjects."""
    from featurize.synth import write_dataset

    root = tmp_path_factory.mktemp("synth")
    truth = write_dataset(root, subjects_per_class=4, slices_per_subject=4, size=(88, 104), split="subject", seed=0)
    path = root / "manifest.csv"
    truth[["path", "label", "split", "subject"]].to_csv(path, index=False)
    return path


def _predict_json(model: Path, files: list[str], artifacts: Path, *extra: str) -> pd.DataFrame:
    proc = cli("predict", "--model", str(model), *files, "--json", *extra, artifacts=artifacts)
    return pd.DataFrame(json.loads(proc.stdout[proc.stdout.index("["):]))


def _cached_probs(model: Path, cache: Path, files: list[str]) -> np.ndarray:
    """The bundle's probabilities on the features featurize cached for ``files``: what predict must reproduce."""
    from classify.bundle import load_bundle

    bundle = load_bundle(model)
    with h5py.File(cache, "r") as f:
        paths = [p.decode() for p in f["path"][()]]
        rows = [paths.index(p) for p in files]
        X = f["features"][()][rows]
    return bundle.predict_proba(X)


def test_one_pass_with_several_layer_choices_gives_bundles_that_predict(manifest: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    cli("featurize", "--data", str(manifest), "--backbone", "mobilenetv2", "--weights", "none", "--image-size", SIZE,
        "--layers", "last", "--layers", "mid", "--layers", "multi", "--no-progress", artifacts=art)
    caches = sorted((art / "features").rglob("*.h5"))
    shas = {h5py.File(c, "r").attrs["weights_sha256"] for c in caches}
    assert len(caches) == 3 and len(shas) == 1, "one weights checksum for every layer choice of one pass"

    # a mid-only pass, on the other engine, must record the very same checksum as the three-choice pass
    art_mid = tmp_path / "art_mid"
    cli("featurize", "--data", str(manifest), "--backbone", "mobilenetv2", "--weights", "none", "--image-size", SIZE,
        "--layers", "mid", "--engine", "tf", "--no-progress", artifacts=art_mid)
    (mid_only,) = (art_mid / "features").rglob("*.h5")
    assert h5py.File(mid_only, "r").attrs["weights_sha256"] in shas

    test_files = [str(manifest.parent / p) for p in pd.read_csv(manifest).query("split == 'test'")["path"][:6]]
    for layers in ("mid", "multi"):
        cli("classify", "--data", str(manifest), "--backbone", "mobilenetv2", "--head", "logreg", "--layers", layers,
            "--protocol", "official", artifacts=art)
    bundles = sorted((art / "models").rglob("mobilenetv2__logreg__*.joblib"))
    assert len(bundles) == 2, bundles
    rel = {str(manifest.parent / p): p for p in pd.read_csv(manifest)["path"]}
    for bundle in bundles:
        got = _predict_json(bundle, test_files, art)
        assert (got["error"] == "").all(), got
        from classify.bundle import load_bundle

        tag = load_bundle(bundle).backbone["layers"]
        cache = next(c for c in caches if h5py.File(c, "r").attrs["layers"] == tag)
        want = _cached_probs(bundle, cache, [rel[f] for f in test_files])
        cols = [c for c in got.columns if c.startswith("p_")]
        np.testing.assert_allclose(got[cols].to_numpy(float), want, atol=2e-3)


def test_sweep_winner_predicts(manifest: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    # mid and multi only, so the winner is a mid-layer model (the one that could not be used before)
    cli("sweep", "--data", str(manifest), "--backbones", "mobilenetv2", "--layers", "mid;multi", "--heads", "logreg",
        "--task", "stages", "--weights", "none", "--image-size", SIZE, "--no-progress", artifacts=art)
    (winner,) = (art / "models").rglob("sweep-best__*.joblib")
    files = [str(manifest.parent / p) for p in pd.read_csv(manifest)["path"][:4]]
    got = _predict_json(winner, files, art)
    assert len(got) == 4 and (got["error"] == "").all() and got["predicted"].astype(bool).all()


def _weights_files(*paths: Path) -> None:
    """Seeded random MobileNetV2 weights (seeds 1, 2, ...), saved as Keras weights files, in a subprocess."""
    code = "from featurize.backbones import build_base, get_backbone\n" + "".join(
        f"build_base(get_backbone('mobilenetv2'), 'none', (96, 96), seed={i}).save_weights({str(p)!r})\n"
        for i, p in enumerate(paths, start=1))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_predict_still_refuses_other_weights(manifest: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    a, b = tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"
    _weights_files(a, b)
    cli("featurize", "--data", str(manifest), "--backbone", "mobilenetv2", "--weights", str(a), "--image-size", SIZE,
        "--layers", "mid", "--layers", "last", "--no-progress", artifacts=art)
    cli("classify", "--data", str(manifest), "--backbone", "mobilenetv2", "--head", "logreg", "--layers", "mid",
        "--protocol", "official", artifacts=art)
    (bundle,) = (art / "models").rglob("mobilenetv2__logreg__*.joblib")
    files = [str(manifest.parent / pd.read_csv(manifest)["path"][0])]
    ok = _predict_json(bundle, files, art, "--weights", str(a))
    assert (ok["error"] == "").all()
    bad = cli("predict", "--model", str(bundle), *files, "--weights", str(b), artifacts=art, check=False)
    assert bad.returncode == 5, bad.stderr
    assert "differ from those the model was trained on" in bad.stderr


def test_caches_and_bundles_from_alzmri_0_1_0_keep_working(manifest: Path, tmp_path: Path) -> None:
    """A mid-layer cache and bundle carrying 0.1.0's truncated-model checksum: rows kept, relabelled, predict works."""
    from featurize.backbones import CHECKSUM_SCOPE

    art = tmp_path / "art"
    table = pd.read_csv(manifest)
    table["path"] = [str(manifest.parent / p) for p in table["path"]]
    first = tmp_path / "manifest.csv"  # one dataset that grows: first without its last 4 slices
    table.iloc[:-4].to_csv(first, index=False)
    cli("featurize", "--data", str(first), "--backbone", "mobilenetv2", "--weights", "none", "--image-size", SIZE,
        "--layers", "mid", "--no-progress", artifacts=art)
    (cache,) = (art / "features").rglob("*.h5")
    # what 0.1.0 recorded: the checksum of the model cut at the tap, and no scope attribute; no model card
    code = ("from featurize.backbones import *; b = get_backbone('mobilenetv2'); base = build_base(b, 'none', (96, 96)); "
            "m = feature_model(base, resolve_layers(b, 'mid'), 'avg'); import hashlib, numpy as np; h = hashlib.sha256()\n"
            "for w in m.weights: h.update(np.ascontiguousarray(w.numpy()).tobytes())\nprint(h.hexdigest())")
    old_sha = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.split()[-1]
    with h5py.File(cache, "a") as f:
        new_sha = f.attrs["weights_sha256"]
        assert old_sha != new_sha
        f.attrs["weights_sha256"] = old_sha
        del f.attrs["weights_sha256_scope"]
        before = dict(zip((p.decode() for p in f["path"][()]), f["features"][()]))
    for card in (art / "engines").glob("*.card.json"):
        card.unlink()
    cli("classify", "--data", str(first), "--backbone", "mobilenetv2", "--head", "logreg", "--layers", "mid",
        "--protocol", "official", artifacts=art)
    (bundle,) = (art / "models").rglob("mobilenetv2__logreg__*.joblib")
    proc = cli("predict", "--model", str(bundle), table["path"][0], "--json", artifacts=art)
    assert "truncated" in proc.stderr and '"error": ""' in proc.stdout

    # the dataset grows: only the new rows are computed, the old ones are kept and relabelled
    table.to_csv(first, index=False)
    proc = cli("featurize", "--data", str(first), "--backbone", "mobilenetv2", "--weights", "none", "--image-size",
               SIZE, "--layers", "mid", "--no-progress", artifacts=art)
    assert "truncated model" in proc.stderr and "recomputing all" not in proc.stderr
    assert "processed 4, reused 60" in proc.stdout, proc.stdout
    (cache2,) = (art / "features").rglob("*.h5")
    with h5py.File(cache2, "r") as f:
        assert f.attrs["weights_sha256"] == new_sha and f.attrs["weights_sha256_scope"] == CHECKSUM_SCOPE
        assert len(f["path"]) == len(table)
        after = dict(zip((p.decode() for p in f["path"][()]), f["features"][()]))
    for path, row in before.items():  # kept as they were, not recomputed
        np.testing.assert_array_equal(after[path], row)
