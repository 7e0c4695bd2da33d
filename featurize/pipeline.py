"""The input pipeline (parallel decode, batched, prefetched) and the compiled TF forward pass."""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from featurize.images import ImageError, load_rgb

T = TypeVar("T")


def image_batches(paths: Sequence[str], size: tuple[int, int], resize: str, batch_size: int, *,
                  threads: int | None = None, ahead: int = 2,
                  low_priority: bool = False) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Batches of (uint8 images [B,H,W,3], error strings [B]) in input order, decoded in parallel ahead of the consumer.

    Decoding goes through Pillow so that every format (16-bit, palette, CMYK, TIFF) and every broken file is handled
    the same way; a file that fails yields a black image and its reason ("" when fine) instead of stopping the run.
    At most ``ahead`` batches beyond the current one are in flight, so memory does not grow with the dataset
    (``ahead=0`` decodes each batch only when it is asked for).
    """
    w, h = size
    paths = [str(p) for p in paths]

    def decode(path: str) -> tuple[np.ndarray, str]:
        try:
            return load_rgb(path, size, resize), ""
        except ImageError as exc:
            return np.zeros((h, w, 3), np.uint8), str(exc)

    starts = range(0, len(paths), batch_size)
    # Pillow releases the GIL, so plain threads decode in parallel, ahead of the engine, at normal priority. Lowest
    # priority (nice 19, ``low_priority=True``) was the default once: it lost a third of OpenVINO's rate on an idle
    # AMD EPYC (and in one of two runs on an idle Xeon), and starved on shared machines (docs/benchmarks.md,
    # "Input schedule").
    pool = ThreadPoolExecutor(threads or cpu_threads(), thread_name_prefix="alzmri-decode",
                              initializer=_background if low_priority else None)
    try:
        pending: deque[list[Future[tuple[np.ndarray, str]]]] = deque()
        for start in starts:
            pending.append([pool.submit(decode, p) for p in paths[start:start + batch_size]])
            if len(pending) <= ahead:
                continue
            yield _collect(pending.popleft())
        while pending:
            yield _collect(pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def item_batches(tasks: Iterable[T], decode: Callable[[T], list[tuple[Any, np.ndarray]]], batch_size: int, *,
                 threads: int | None = None, ahead: int = 1,
                 low_priority: bool = False) -> Iterator[tuple[np.ndarray, list[Any]]]:
    """Batches of (uint8 images [B,H,W,3], their tags [B]) from tasks that each decode into any number of images.

    The volume path: a task is one scan, ``decode`` reads it and cuts its slices (a list of (tag, image)), and the
    slices of consecutive scans fill fixed-size batches, in task order. As in ``image_batches`` the decoding runs in
    threads ahead of the consumer, at normal priority unless ``low_priority``; at most ``threads + ahead`` tasks are
    in flight, so memory is bounded by a few scans whatever the dataset's size.
    """
    n_threads = threads or cpu_threads()
    pool = ThreadPoolExecutor(n_threads, thread_name_prefix="alzmri-decode",
                              initializer=_background if low_priority else None)
    it = iter(tasks)
    pending: deque[Future[list[tuple[Any, np.ndarray]]]] = deque()

    def fill() -> None:
        for task in it:
            pending.append(pool.submit(decode, task))
            if len(pending) >= n_threads + ahead:
                return

    try:
        fill()
        images: list[np.ndarray] = []
        tags: list[Any] = []
        while pending:
            items = pending.popleft().result()
            fill()
            for tag, img in items:
                tags.append(tag)
                images.append(img)
                if len(images) == batch_size:
                    yield np.stack(images), tags
                    images, tags = [], []
        if images:
            yield np.stack(images), tags
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _collect(futures: list[Future[tuple[np.ndarray, str]]]) -> tuple[np.ndarray, list[str]]:
    got = [f.result() for f in futures]
    return np.stack([g[0] for g in got]), [g[1] for g in got]


def _background() -> None:
    """Lower the calling thread's scheduling priority (Linux: per-thread nice); a no-op where unsupported."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def cpu_threads() -> int:
    """Cores this process may run on: ``$ALZMRI_THREADS`` when set (a cluster worker sharing its node with others,
    ``featurize.cluster``), else the affinity mask, not the machine's count."""
    env = os.environ.get("ALZMRI_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def make_forward(model: Any, preprocess: Callable[[Any], Any], batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled forward pass on uint8 batches. Short batches are padded to ``batch_size`` so one trace serves all."""
    import tensorflow as tf

    h, w = int(model.input_shape[1]), int(model.input_shape[2])

    @tf.function(input_signature=[tf.TensorSpec((batch_size, h, w, 3), tf.uint8)])
    def forward(x: Any) -> Any:
        return model(preprocess(tf.cast(x, tf.float32)), training=False)

    def run(batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, h, w, 3), np.uint8)])
        return forward(tf.constant(batch)).numpy()[:n].astype(np.float32, copy=False)

    return run
