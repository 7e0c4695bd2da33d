"""Dask clusters for ``--cluster``: parse the address, connect (or start a loopback ``LocalCluster``), and the worker
plugin that opens the feature model once per worker process.

``--cluster`` takes ``local[:N]`` (N worker processes on this machine, 1 thread each, bound to 127.0.0.1),
``tcp://HOST:PORT`` (a running ``dask scheduler``) or ``scheduler-file:PATH`` (the file ``dask scheduler
--scheduler-file`` writes, the usual way on a batch cluster). Featurize sends chunks of files to the workers
(``featurize.distributed``); classify and sweep send their CV folds through joblib's Dask backend (``folds_on``).
Why Dask and not Ray: docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from featurize.errors import ClusterError

CONNECT_TIMEOUT = 20.0  # s: a scheduler that does not answer in this time is not there
WORKERS_TIMEOUT = 120.0  # s: waiting for the first worker to join (a batch job may still be queued)
THREADS_ENV = "ALZMRI_THREADS"  # cores one worker's engine and decoders may use (featurize.pipeline.cpu_threads)

T = TypeVar("T")
_HELP = "expected local[:N], tcp://HOST:PORT or scheduler-file:PATH"


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``--cluster`` value."""

    kind: str  # local | tcp | file
    target: str  # the address or the scheduler file ("" for local)
    n_workers: int = 0  # local only

    def __str__(self) -> str:
        return {"local": f"local:{self.n_workers}", "tcp": self.target, "file": f"scheduler-file:{self.target}"}[self.kind]


def parse_cluster(text: str) -> ClusterSpec:
    """``local[:N]``, ``tcp://HOST:PORT`` or ``scheduler-file:PATH``; one-line ClusterError otherwise."""
    from featurize.pipeline import cpu_threads

    raw = (text or "").strip()
    if raw == "local":
        return ClusterSpec("local", "", cpu_threads())
    if raw.startswith("local:"):
        n = raw.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise ClusterError(f"--cluster {raw!r}: N in local:N must be a whole number of at least 1", exit_code=2)
        return ClusterSpec("local", "", int(n))
    if raw.startswith("tcp://"):
        host, _, port = raw[len("tcp://"):].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ClusterError(f"--cluster {raw!r}: {_HELP} (a port between 1 and 65535)", exit_code=2)
        return ClusterSpec("tcp", raw)
    if raw.startswith("scheduler-file:"):
        path = os.path.expanduser(raw.split(":", 1)[1])
        if not path:
            raise ClusterError(f"--cluster {raw!r}: {_HELP}", exit_code=2)
        return ClusterSpec("file", path)
    raise ClusterError(f"--cluster {raw!r}: {_HELP}", exit_code=2)


_ACTIVE: dict[str, Any] = {}  # spec -> open Client, so that nested sessions (sweep -> featurize) share one cluster
_ACTIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def session(spec: str | ClusterSpec) -> Iterator[Any]:
    """A ``distributed.Client`` on the cluster for the duration; a ``local`` cluster is started and closed here.

    An enclosing session on the same spec is reused (sweep featurizes, then evaluates, on one cluster)."""
    cs = spec if isinstance(spec, ClusterSpec) else parse_cluster(spec)
    key = str(cs)
    if key in _ACTIVE:
        yield _ACTIVE[key]
        return
    try:
        import distributed
    except ImportError:
        raise ClusterError('--cluster needs Dask: pip install "alzmri[cluster]" (or "dask[distributed]")') from None
    with contextlib.ExitStack() as stack:
        if cs.kind == "local":
            cluster = stack.enter_context(_local_cluster(distributed, cs.n_workers))
            client = stack.enter_context(distributed.Client(cluster, timeout=CONNECT_TIMEOUT))
        else:
            client = stack.enter_context(_connect(distributed, cs))
        with _ACTIVE_LOCK:
            _ACTIVE[key] = client
        try:
            yield client
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.pop(key, None)


def _local_cluster(distributed: Any, n: int) -> Any:
    """Worker processes on this machine, every socket on loopback. The scheduler's HTTP server always starts (it
    serves /health); ``127.0.0.1:0`` keeps it on loopback at a free port (``None`` means 8787, ``:0`` all
    interfaces). Workers' and nannies' HTTP servers take the loopback host given here."""
    return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                    dashboard_address="127.0.0.1:0", scheduler_port=0, silence_logs=logging.ERROR,
                                    worker_dashboard_address=None)


def _connect(distributed: Any, cs: ClusterSpec) -> Any:
    if cs.kind == "file" and not os.path.isfile(cs.target):
        raise ClusterError(f"--cluster scheduler-file:{cs.target}: no such file; start the scheduler with "
                           f"`dask scheduler --scheduler-file {cs.target}` on the shared filesystem")
    try:
        if cs.kind == "file":
            return distributed.Client(scheduler_file=cs.target, timeout=CONNECT_TIMEOUT)
        return distributed.Client(cs.target, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"--cluster {cs}: no Dask scheduler answered within {CONNECT_TIMEOUT:.0f} s ({reason}); "
                           "start one with `dask scheduler` (docs/cluster.md) or check the address") from None


def workers_ready(client: Any, spec: str | ClusterSpec, timeout: float = WORKERS_TIMEOUT) -> int:
    """The number of worker threads once at least one worker has joined; ClusterError after ``timeout`` s."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise ClusterError(f"--cluster {spec}: the scheduler has no workers after {timeout:.0f} s; start some with "
                           "`dask worker ADDRESS` (docs/cluster.md)") from None
    return max(1, sum(client.nthreads().values()))


def local_threads(spec: ClusterSpec) -> int | None:
    """Cores per worker when ``spec`` puts N workers on this machine (they share its cores), else None (a remote
    worker uses the cores its node or batch job gives it)."""
    if spec.kind != "local":
        return None
    from featurize.pipeline import cpu_threads

    return max(1, cpu_threads() // spec.n_workers)


@contextlib.contextmanager
def folds_on(spec: str | None) -> Iterator[None]:
    """Run every joblib ``Parallel`` inside (CV folds, grid candidates, permutations) on the cluster through joblib's
    Dask backend; nothing changes when ``spec`` is None."""
    if not spec:
        yield
        return
    import joblib

    with session(spec) as client:
        workers_ready(client, spec)
        with joblib.parallel_config(backend="dask"):
            yield


def on_cluster(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` inside ``folds_on`` of its ``cluster`` keyword, so that one command uses one cluster throughout
    (sweep's featurize pass reuses the session its folds run on)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        with folds_on(kwargs.get("cluster")):
            return fn(*args, **kwargs)

    return wrapped
