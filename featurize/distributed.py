"""Featurize on a Dask cluster: workers decode and infer chunks of files read from the shared filesystem, and the
driver journals every finished chunk into each target's journal exactly as the in-process path does
(``store.write_part``), so resume, incremental reruns and the cache lock behave the same.

Chunk size comes from measured per-task overhead (docs/cluster.md): a chunk's time on a worker is fitted as
``a + b * n`` (``a`` the per-task cost: dispatch, a cold decode pipeline, the result's transfer; ``b`` the time per
image), ``a`` is floored by the measured driver-worker round trip, and chunks are made just large enough that ``a``
stays under ``OVERHEAD_SHARE`` of a chunk. They shrink near the end, so that every worker finishes at about the
same time, and never exceed ``MAX_CHUNK`` (a worker killed mid-chunk loses at most that much work, which Dask
reruns elsewhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import threading
import time
from typing import Any

import numpy as np
from distributed import WorkerPlugin

from featurize.cluster import THREADS_ENV, ClusterSpec, local_threads, parse_cluster, session, workers_ready
from featurize.errors import AlzmriError, ClusterError
from featurize.progress import progress_bar
from featurize.spec import FeatureSpec
from featurize.target import PartWriter

OVERHEAD_SHARE = 0.02  # per-task cost allowed per chunk
MAX_CHUNK = 2048  # images: bounds the work a killed worker loses, and the result size (2048 x 1280 float32 = 10 MB)
RETRIES = 2  # a chunk whose task raises is run up to 1 + RETRIES times (worker deaths: distributed's allowed-failures)
STALL_TIMEOUT = 900.0  # s without any finished chunk: the run ends instead of hanging
LAST_RUN: dict[str, float] = {}  # the last run's chunk statistics (benchmarks/cluster.py reads them)


class Chunker:
    """Chunk sizes from the measured per-task overhead (see the module docstring)."""

    def __init__(self, batch_size: int, round_trip: float) -> None:
        self.batch, self.round_trip = batch_size, round_trip
        self.obs: list[tuple[int, float]] = []
        self.issued = 0

    def observe(self, n: int, seconds: float) -> None:
        self.obs.append((n, seconds))
        del self.obs[:-64]  # recent chunks only: the machine's load drifts

    def fit(self) -> tuple[float, float]:
        """(per-task seconds ``a``, per-image seconds ``b``) from the chunks seen so far."""
        n = np.array([o[0] for o in self.obs], float)
        t = np.array([o[1] for o in self.obs], float)
        if len(set(n.tolist())) >= 2:
            b, a = np.polyfit(n, t, 1)
            if b > 0:
                return max(float(a), self.round_trip), float(b)
        per = float(np.median(t / n))
        return self.round_trip, per

    def next_size(self, remaining: int, workers: int) -> int:
        if len(self.obs) < 2:
            # first wave: one and four batches, two sizes for the fit
            size = self.batch * (1 if self.issued % 2 == 0 else 4)
        else:
            a, b = self.fit()
            size = math.ceil(a / (OVERHEAD_SHARE * b)) if b > 0 else MAX_CHUNK
        size = min(size, MAX_CHUNK, math.ceil(remaining / (2 * workers)))  # the tail: every worker finishes together
        size = max(self.batch, self.batch * math.ceil(size / self.batch))
        self.issued += 1
        return min(size, remaining)


class ExtractorPlugin(WorkerPlugin):
    """Holds one worker's feature model: opened on the first chunk (model card + verified export, else TF), then
    reused by every chunk that worker runs.

    It opens lazily, in the task thread, rather than in ``setup``: building with TF can take a minute on a busy node,
    and ``setup`` runs on the worker's event loop, which must keep answering the scheduler's heartbeats. An open that
    fails is remembered and raised by every later chunk on that worker, naming it."""

    def __init__(self, spec: Any, sha: str, threads: int | None) -> None:
        self.spec, self.sha, self.threads = spec, sha, threads

    def setup(self, worker: Any) -> None:
        self.address = str(worker.address)
        self._lock = threading.Lock()
        self._model: Any = None
        self._error: str = ""
        if self.threads:
            os.environ[THREADS_ENV] = str(self.threads)

    def teardown(self, worker: Any) -> None:
        self._model = None

    def model(self) -> Any:
        """The worker's ``extractor.FeatureModel``; ClusterError naming the worker when it cannot be opened."""
        with self._lock:
            if self._model is None and not self._error:
                self._open()
            if self._error:
                raise ClusterError(self._error)
            return self._model

    def _open(self) -> None:
        from featurize.config import engines_dir
        from featurize.extractor import from_card, from_tf
        from featurize.spec import FeatureSpec

        log = logging.getLogger("alzmri.cluster").info
        try:
            got = from_card(self.spec) or from_tf(self.spec, log)
            if got.sha != self.sha:
                self._error = (f"worker {self.address}: built weights with checksum {got.sha[:12]}, the driver "
                               f"{self.sha[:12]}; every node must see the same weights file and Keras cache")
                return
            import numpy as np

            w, h = FeatureSpec.from_attrs(self.spec.settings).size
            got.forward(np.zeros((self.spec.batch_size, h, w, 3), np.uint8))  # warm-up: trace and allocate once
            self._model = got
        except Exception as exc:  # noqa: BLE001 - any failure to open becomes the one line that names this worker
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            self._error = (f"worker {self.address}: cannot open the {self.spec.settings['backbone']} feature model "
                           f"({msg}); its engines folder is {engines_dir(self.spec.artifacts)}, which every node must "
                           "see on the shared filesystem (docs/cluster.md)")


def featurize_chunk(plugin: str, paths: list[str], size: tuple[int, int], resize: str, batch_size: int) -> dict[str, Any]:
    """On a worker: decode and infer ``paths`` with the worker's model. Features of readable files, one error
    string per file ("" when fine), the seconds it took. A file missing on this node raises (Dask retries the chunk;
    if that repeats the run ends naming this worker and the file)."""
    from distributed import get_worker

    from featurize.pipeline import image_batches

    worker = get_worker()
    for p in paths:
        if not os.path.exists(p):
            raise ClusterError(f"worker {worker.address}: {p}: no such file on this node; the data must be on a "
                               "filesystem every worker mounts at the same path (docs/cluster.md)")
    model = worker.plugins[plugin].model()
    t0 = time.perf_counter()
    feats, errs = [], []
    try:
        # normal priority here: each chunk starts with an empty pipeline, and a lowest-priority decoder on a loaded node
        # leaves the engine waiting for its first batch (the per-task cost, docs/cluster.md)
        with contextlib.closing(image_batches(paths, size, resize, batch_size, low_priority=False)) as batches:
            for images, e in batches:
                out = model.forward(images)
                feats.append(out[np.array([x == "" for x in e])])
                errs.extend(e)
    except Exception as exc:  # noqa: BLE001 - whatever broke, the driver's one line names the worker and the chunk
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ClusterError(f"worker {worker.address}: chunk starting at {paths[0]}: {type(exc).__name__}: {msg}") from None
    width = int(sum(model.dims))
    return {"features": np.concatenate(feats) if feats else np.zeros((0, width), np.float32), "errors": errs,
            "seconds": time.perf_counter() - t0, "engine": model.engine, "worker": worker.address}


def _noop() -> float:
    return time.perf_counter()


def round_trip(client: Any, n: int = 5) -> float:
    """Median driver -> scheduler -> worker -> driver time of a task that does nothing."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.submit(_noop, pure=False).result(timeout=60)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def infer_on_cluster(cluster: str | ClusterSpec, spec: Any, sha: str, table: Any, todo: list[int],
                     settings: dict[str, Any], targets: list[Any], dims: list[int], part_rows: int, progress: bool,
                     log: Any = lambda s: None, *, stall_timeout: float = STALL_TIMEOUT) -> tuple[int, float, str]:
    """Run ``todo`` rows on the cluster's workers, journaling finished chunks; (count, images/s, engines used).

    ``spec`` is the ``extractor.ModelSpec`` the driver opened and ``sha`` its verified weights checksum: each worker
    opens the same model (card + export, else TF) and must arrive at the same checksum."""
    from distributed import wait
    from distributed.scheduler import KilledWorker

    cs = cluster if isinstance(cluster, ClusterSpec) else parse_cluster(cluster)
    size = FeatureSpec.from_attrs(settings).size
    sub = table.iloc[todo]
    paths, shas, absps = sub["path"].tolist(), sub["sha1"].tolist(), sub["abspath"].tolist()
    journal = PartWriter(targets, dims, part_rows)
    name = "alzmri-extractor-" + hashlib.sha1(f"{sha}{spec.layer_tags}{settings}{spec.engine}".encode()).hexdigest()[:12]
    with session(cs) as client:
        threads = workers_ready(client, cs)
        client.register_plugin(ExtractorPlugin(spec, sha, local_threads(cs)), name=name)
        chunker = Chunker(spec.batch_size, round_trip(client))
        pending: dict[Any, tuple[int, int]] = {}
        engines: set[str] = set()
        start, done, t0, seen = 0, 0, time.perf_counter(), time.monotonic()
        t_first = t0
        try:
            with progress_bar(len(todo), f"featurize {settings['backbone']} on {cs}", enabled=progress) as advance:
                while start < len(todo) or pending:
                    if time.monotonic() - seen > 5:
                        threads, seen = max(1, sum(client.nthreads().values())), time.monotonic()
                    while start < len(todo) and len(pending) < 2 * threads:  # one running and one queued per thread
                        n = chunker.next_size(len(todo) - start, threads)
                        fut = client.submit(featurize_chunk, name, absps[start:start + n], size, settings["resize"],
                                            spec.batch_size, retries=RETRIES, pure=False)
                        pending[fut] = (start, start + n)
                        start += n
                    try:
                        finished = wait(list(pending), timeout=stall_timeout, return_when="FIRST_COMPLETED").done
                    except TimeoutError:
                        raise ClusterError(f"--cluster {cs}: no chunk finished in {stall_timeout:.0f} s "
                                           f"({len(client.nthreads())} workers connected); rerun to resume") from None
                    for fut in finished:
                        if not done:
                            t_first = time.perf_counter()  # every later chunk: workers already hold their model
                        lo, hi = pending.pop(fut)
                        got = _result(fut, absps[lo], KilledWorker)
                        journal.add(paths[lo:hi], shas[lo:hi], got["features"], got["errors"])
                        chunker.observe(hi - lo, got["seconds"])
                        engines.add(got["engine"])
                        done += hi - lo
                        advance(hi - lo)
        except KeyboardInterrupt:
            journal.flush()
            raise AlzmriError(f"interrupted after {done} of {len(todo)} images; they are kept, rerun the same command to resume", exit_code=130) from None
        finally:
            for fut in pending:
                fut.cancel()
            journal.flush()  # whatever finished is kept, also when a chunk failed for good
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(name)
        a, b = chunker.fit() if chunker.obs else (chunker.round_trip, 0.0)
        first = chunker.obs[0][0] if chunker.obs else 0
        LAST_RUN.clear()
        LAST_RUN.update(chunks=len(chunker.obs), overhead_s=a, per_image_s=b, round_trip_s=chunker.round_trip,
                        steady_images_per_s=(done - first) / max(time.perf_counter() - t_first, 1e-9) if done > first else 0.0,
                        sizes_min=min((o[0] for o in chunker.obs), default=0), sizes_max=max((o[0] for o in chunker.obs), default=0))
        log(f"cluster {cs}: {threads} worker threads, per-task overhead {a * 1e3:.0f} ms, "
            f"{b * 1e3:.1f} ms per image per worker, chunk size on a long run {chunker.next_size(10**9, threads)}")
    elapsed = time.perf_counter() - t0
    return done, done / elapsed if elapsed > 0 else 0.0, "+".join(sorted(engines))


def _result(fut: Any, first: str, killed: type) -> dict[str, Any]:
    """A chunk's result, or the one line that ends the run."""
    try:
        return fut.result()
    except ClusterError:
        raise
    except killed as exc:
        last = getattr(getattr(exc, "last_worker", None), "address", "?")
        raise ClusterError(f"worker {last}: died repeatedly while running the chunk starting at {first} (each worker "
                           "that ran it was lost); check the workers' memory and logs") from None
    except AlzmriError:
        raise
    except Exception as exc:  # noqa: BLE001 - a chunk that failed for good ends the run in one line
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ClusterError(f"chunk starting at {first}: {type(exc).__name__}: {msg}") from None
