"""featurize on the GPU code path, run on CPU: mixed precision and a mirrored strategy over logical CPU devices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import featurize
from featurize import run as frun
from featurize.errors import AlzmriError
from tests.conftest import cpu_only

pytestmark = [pytest.mark.tf, pytest.mark.slow]

FAST = {"weights": "none", "image_size": "32x32", "subjects": "none", "progress": False}
REPO = Path(__file__).resolve().parents[2]


@cpu_only
def test_mixed_precision_gets_its_own_cache_and_close_but_different_features(kaggle_root: Path, artifacts: Path) -> None:
    full = frun.featurize_dataset(kaggle_root, engine="tf", **FAST)
    logs: list[str] = []
    mixed = frun.featurize_dataset(kaggle_root, engine="onnx", precision="mixed", log=logs.append, **FAST)
    assert mixed.cache != full.cache and mixed.cache.name.endswith("__mixed_bfloat16.h5")  # no GPU here
    assert any("using tf" in m for m in logs) and mixed.settings["engine"] == "tf"
    with h5py.File(mixed.cache) as f:
        assert f.attrs["precision"] == "mixed_bfloat16" and f.attrs["engine"] == "tf"
    with h5py.File(full.cache) as f:
        assert "precision" not in f.attrs  # float32 caches keep their names and attributes
    a, b = featurize.load(full.cache), featurize.load(mixed.cache)
    assert a.X.dtype == b.X.dtype == np.float32 and a.meta["weights_sha256"] == b.meta["weights_sha256"]
    rel = float(np.abs(a.X - b.X).max() / np.abs(a.X).max())
    assert 0 < rel < 0.05
    assert frun.featurize_dataset(kaggle_root, precision="mixed", **FAST).n_computed == 0  # cached like any other


def test_unknown_precision_or_devices_are_refused_before_the_scan(kaggle_root: Path, artifacts: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frun, "scan", lambda *a, **k: pytest.fail("scanned the data first"))
    with pytest.raises(AlzmriError, match="unknown precision 'half'; choose one of: float32, mixed"):
        frun.featurize_dataset(kaggle_root, precision="half", **FAST)
    with pytest.raises(AlzmriError, match="unknown devices 'all'; choose one of: auto, one, mirrored"):
        frun.featurize_dataset(kaggle_root, devices="all", **FAST)


def test_mirrored_over_two_logical_cpus_gives_the_single_device_features(kaggle_root: Path, tmp_path: Path) -> None:
    script = f"""
import json, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import featurize
from featurize import run as frun
kw = dict(weights="none", image_size="32x32", subjects="none", progress=False, batch_size=3, engine="tf")
one = frun.featurize_dataset({str(kaggle_root)!r}, artifacts={str(tmp_path / "one")!r}, devices="one", **kw)
two = frun.featurize_dataset({str(kaggle_root)!r}, artifacts={str(tmp_path / "two")!r}, devices="mirrored", **kw)
from featurize.devices import make_strategy, replicas
a, b = featurize.load(one.cache), featurize.load(two.cache)
print(json.dumps({{"replicas": replicas(make_strategy("mirrored")), "same_rows": list(a.paths) == list(b.paths),
                  "err": float(abs(a.X - b.X).max() / abs(a.X).max()), "n": len(b)}}))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["replicas"] == 2 and got["same_rows"] and got["n"] == 20
    assert got["err"] < 1e-5  # batch 3 over 2 replicas: padding and re-ordering are exercised


@cpu_only
def test_baseline_trains_mixed_and_mirrored_over_two_logical_cpus(kaggle_root: Path, tmp_path: Path) -> None:
    script = f"""
import json, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from classify import baseline as bl
import keras
seen = {{}}
class Probe(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        seen["replicas"] = tf.distribute.get_strategy().num_replicas_in_sync
        seen["kernel"] = type(next(w for w in self.model.weights if "kernel" in w.path).value).__name__
res = bl.train_baseline({str(kaggle_root)!r}, model="scratch", weights="none", image_size="32x32", epochs=1,
                        subjects="none", progress=False, batch_size=4, artifacts={str(tmp_path / "art")!r},
                        precision="mixed", devices="mirrored", callbacks=[Probe()])
model, meta = bl.load_baseline(res.model_path)
probs, errors = bl.predict_files(res.model_path, [str(p) for p in sorted(__import__("pathlib").Path({str(kaggle_root)!r}).rglob("*.png"))[:3]])
print(json.dumps({{"precision": meta.get("precision"), "out_dtype": str(model.layers[-1].compute_dtype),
                  **seen, "finite": bool(abs(probs.sum(1) - 1).max() < 1e-3),
                  "loss": res.history[0]["loss"]}}))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["precision"] == "mixed_bfloat16" and got["out_dtype"] == "float32" and got["finite"]
    assert got["replicas"] == 2 and "Mirrored" in got["kernel"]
    assert np.isfinite(got["loss"])
