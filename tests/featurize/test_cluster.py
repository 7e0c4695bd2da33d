"""--cluster: a loopback LocalCluster featurizes to the in-process cache; a worker SIGKILLed mid-run loses nothing; a
file missing on the workers and a bad address end in one line; the journal resumes a stopped run."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import featurize
from featurize import cluster as fcluster
from featurize import run as frun
from featurize.errors import ClusterError
from tests.conftest import write_images

FAST = dict(backbone="mobilenetv2", weights="none", image_size="32x32", subjects="none", progress=False,
            engine="onnx", batch_size=4)


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """80 generated slices and their in-process cache (which also leaves the export and model card)."""
    pytest.importorskip("distributed")  # before the in-process run: without Dask there is nothing to compare
    root = tmp_path_factory.mktemp("cluster") / "data"
    write_images(root, "kaggle", n_per_class=20)
    art = root.parent / "ref-artifacts"
    res = frun.featurize_dataset(root, artifacts=art, **FAST)
    return {"root": root, "art": art, "fs": featurize.load(res.cache)}


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """The test's own LocalCluster (2 processes x 1 thread, on 127.0.0.1), closed at the end."""
    pytest.importorskip("distributed")
    with fcluster.session("local:2") as c:
        assert all(a.startswith("tcp://127.0.0.1:") for a in c.nthreads())
        yield c


def _artifacts(ref: dict[str, Any], tmp_path: Path) -> Path:
    """A fresh artifacts folder holding the reference run's engines (the shared engines folder of a real cluster)."""
    art = tmp_path / "artifacts"
    shutil.copytree(ref["art"] / "engines", art / "engines")
    return art


def _same(a: featurize.FeatureSet, b: featurize.FeatureSet) -> None:
    """Equal within 1e-5 of the features' scale. A random-init MobileNetV2 gives features of about 1e-12 (its
    activations shrink layer after layer), so an absolute 1e-5 would pass any two caches."""
    assert list(a.paths) == list(b.paths)
    scale = float(np.abs(b.X).max())
    assert scale > 0 and float(b.X.std(axis=0).max()) > 1e-3 * scale  # the images do give different features
    np.testing.assert_allclose(a.X / scale, b.X / scale, atol=1e-5, rtol=0)


@pytest.mark.parametrize("text, kind", [("local", "local"), ("local:3", "local"), ("tcp://10.0.0.5:8786", "tcp"),
                                         ("scheduler-file:/shared/s.json", "file")])
def test_cluster_addresses_parse(text: str, kind: str) -> None:
    assert fcluster.parse_cluster(text).kind == kind


@pytest.mark.parametrize("text", ["local:0", "locl", "tcp://host", "tcp://h:99999", "10.0.0.5:8786", ""])
def test_bad_cluster_addresses_are_one_line(text: str) -> None:
    with pytest.raises(ClusterError, match="--cluster") as exc:
        fcluster.parse_cluster(text)
    assert "\n" not in str(exc.value)


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cluster_cache_equals_in_process(ref: dict[str, Any], client: Any, tmp_path: Path) -> None:
    res = frun.featurize_dataset(ref["root"], artifacts=_artifacts(ref, tmp_path), cluster="local:2", **FAST)
    assert res.n_computed == 80 and res.settings["engine"] == ref["fs"].meta["engine"]
    _same(featurize.load(res.cache), ref["fs"])
    assert not (res.cache.parent / (res.cache.name + ".parts")).exists()
    again = frun.featurize_dataset(ref["root"], artifacts=res.cache.parents[2], cluster="local:2", **FAST)
    assert again.n_computed == 0  # incremental: a cached rerun sends nothing


class _Lost:
    """Scheduler plugin (the LocalCluster's scheduler runs in this process): tasks taken back from a lost worker."""

    name = "alzmri-test-lost"

    def __init__(self) -> None:
        self.keys: list[str] = []

    def transition(self, key: Any, start: str, finish: str, *args: Any, stimulus_id: str = "", **kw: Any) -> None:
        # running or finished-but-not-fetched chunks that the lost worker held: the scheduler runs them again
        if start in ("processing", "memory") and "worker" in stimulus_id and "featurize_chunk" in str(key):
            self.keys.append(str(key))


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_killed_mid_run_loses_nothing(ref: dict[str, Any], client: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed.diagnostics.plugin import SchedulerPlugin

    from featurize import distributed as fdist

    lost = type("Lost", (_Lost, SchedulerPlugin), {})()
    client.cluster.scheduler.add_plugin(lost, name=lost.name)  # this very object (register_plugin would send a copy)
    pids = client.run(os.getpid)
    killed: list[str] = []
    real_add = fdist.PartWriter.add

    def add_then_kill(self: Any, *a: Any) -> None:
        real_add(self, *a)
        if not killed:  # after the first chunk: SIGKILL a worker that holds chunks right now
            busy = [w for w, keys in client.processing().items() if keys]
            assert busy, "no worker was running a chunk"
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])

    monkeypatch.setattr(fdist.PartWriter, "add", add_then_kill)
    t0 = time.monotonic()
    res = frun.featurize_dataset(ref["root"], artifacts=_artifacts(ref, tmp_path), cluster="local:2", **FAST)
    client.cluster.scheduler.remove_plugin(lost.name)
    assert killed and lost.keys, "the killed worker had no chunk to lose"
    assert res.n_computed == 80 and not res.failed
    _same(featurize.load(res.cache), ref["fs"])
    assert time.monotonic() - t0 < 240
    client.wait_for_workers(2, timeout=120)  # the nanny restarted it; later tests get two workers again


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_missing_file_on_workers_is_one_line_then_resumes(ref: dict[str, Any], client: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    art = _artifacts(ref, tmp_path)
    real_scan = frun.scan
    gone = sorted(ref["root"].rglob("*.png"))[-1]
    kept = tmp_path / "kept.png"

    def scan_then_unmount(*a: Any, **kw: Any) -> Any:  # the driver saw the file; the workers will not
        ds = real_scan(*a, **kw)
        shutil.move(gone, kept)
        return ds

    monkeypatch.setattr(frun, "scan", scan_then_unmount)
    try:
        with pytest.raises(ClusterError) as exc:
            frun.featurize_dataset(ref["root"], artifacts=art, cluster="local:2", part_rows=4, **FAST)
    finally:
        shutil.move(kept, gone)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("worker tcp://127.0.0.1:") and str(gone) in msg and "no such file" in msg
    monkeypatch.setattr(frun, "scan", real_scan)
    res = frun.featurize_dataset(ref["root"], artifacts=art, cluster="local:2", **FAST)
    assert 0 < res.n_computed < 80  # the chunks finished before the failure were journaled and kept
    _same(featurize.load(res.cache), ref["fs"])


@pytest.mark.timeout(120)
def test_no_scheduler_is_one_line_within_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    monkeypatch.setattr(fcluster, "CONNECT_TIMEOUT", 3.0)
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match="no Dask scheduler answered") as exc:
        with fcluster.session("tcp://127.0.0.1:9"):  # loopback, a port nothing listens on
            pass
    assert "\n" not in str(exc.value) and time.monotonic() - t0 < 60
    with pytest.raises(ClusterError, match="no such file"):
        with fcluster.session(f"scheduler-file:{tmp_path / 'nope.json'}"):
            pass


class _Keys:
    """Scheduler plugin: the keys of every task that finished."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kw: Any) -> None:
        if finish == "memory":
            self.keys.append(str(key))


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_classify_folds_run_on_the_cluster_through_joblib(ref: dict[str, Any], client: Any) -> None:
    from distributed.diagnostics.plugin import SchedulerPlugin

    from classify.evaluate import evaluate
    from classify.run import classify_dataset

    seen = type("Keys", (_Keys, SchedulerPlugin), {})()
    client.cluster.scheduler.add_plugin(seen, name="alzmri-test-keys")
    try:
        df = classify_dataset(ref["root"], backbone="mobilenetv2", heads=["logreg"], protocol="slice-cv",
                              artifacts=ref["art"], progress=False, cluster="local:2", log=lambda s: None)
    finally:
        client.cluster.scheduler.remove_plugin("alzmri-test-keys")
    folds = [k for k in seen.keys if "_fold" in k]
    assert folds, f"no CV fold ran on the cluster: {seen.keys[:5]}"
    local = evaluate(ref["fs"], "logreg", protocol="slice-cv", n_jobs=1, seed=0)
    assert df["balanced_accuracy"].iloc[0] == pytest.approx(local.metrics["balanced_accuracy"], abs=1e-9)
