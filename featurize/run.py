"""``alzmri featurize``: scan, resolve subjects, run the backbone on what is not cached yet, write the cache."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np

from featurize import store, timing
from featurize.backbones import layers_tag, resolve_layers
from featurize.config import features_dir
from featurize.dataset import Dataset, scan
from featurize.errors import AlzmriError, CacheError, interrupted
from featurize.extractor import ModelSpec, from_card, from_tf
from featurize.images import RESIZE_MODES, parse_size
from featurize.options import at_least, choose
from featurize.progress import progress_bar
from featurize.spec import FeatureSpec
from featurize.target import CacheTarget, PartWriter, Sources
from featurize.weights_catalog import WeightsChoice

Log = Callable[[str], None]


@dataclass
class FeaturizeResult:
    """What one featurize run did."""

    cache: Path
    dataset: Dataset
    n_images: int
    n_computed: int
    n_reused: int
    failed: list[tuple[str, str]]
    images_per_s: float
    seconds: float
    problems: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds per phase (``featurize.timing``)


def settings_for(backbone: str | None, weights: str, image_size: str | None, pooling: str, resize: str, layers: str,
                 precision: str = "float32", *, artifacts: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The settings that name a cache (all but the weights checksum, which needs the model), as cache attributes.

    ``weights`` resolves through the weights catalog (``featurize.weights_catalog``): its entry decides the default
    input size and the preprocessing. ``precision="mixed"`` adds the Keras policy it means here (``mixed_float16`` on
    a GPU, ``mixed_bfloat16`` on a CPU), which imports TF; float32 does not appear, so float32 caches keep their names."""
    from featurize.weights_catalog import resolve

    return feature_spec(resolve(weights, backbone, artifacts=artifacts), image_size, pooling, resize, layers,
                        precision).to_attrs()


def feature_spec(choice: WeightsChoice, image_size: str | None, pooling: str, resize: str, layers: str,
                 precision: str = "float32") -> FeatureSpec:
    """The ``FeatureSpec`` of one layer choice under resolved weights."""
    bb = choice.backbone
    resize = choose("resize mode", resize, RESIZE_MODES)
    try:
        size = parse_size(image_size) if image_size else choice.input_size
    except ValueError as exc:
        raise AlzmriError(str(exc)) from None
    policy = ""
    if precision != "float32":
        from featurize.devices import policy_name

        policy = policy_name(precision)
    return FeatureSpec(backbone=bb.name, weights=choice.tag, size=size, pooling=pooling, resize=resize,
                       layers=layers_tag(resolve_layers(bb, layers)), precision=policy, preprocess=choice.preprocess)


def cache_path(data: str | os.PathLike[str], settings: dict[str, Any], artifacts: str | os.PathLike[str] | None = None) -> Path:
    """Where the cache of ``data`` under ``settings`` lives."""
    from featurize.dataset import dataset_id

    return features_dir(dataset_id(data), artifacts) / store.cache_name(settings)


def featurize_dataset(data: str | os.PathLike[str], *, layers: str = "last", **kwargs: Any) -> FeaturizeResult:
    """Featurize ``data`` with a frozen backbone into the HDF5 cache, computing only what is not cached yet.

    Keyword arguments are those of ``featurize_layers``.
    """
    return featurize_layers(data, layer_choices=[layers], **kwargs)[0]


def featurize_layers(
    data: str | os.PathLike[str],
    *,
    backbone: str | None = None,
    weights: str = "imagenet",
    image_size: str | None = None,
    pooling: str = "avg",
    resize: str = "stretch",
    layer_choices: list[str] = ("last",),  # type: ignore[assignment]
    batch_size: int = 32,
    classes: str | list[str] | None = None,
    subjects: str = "auto",
    artifacts: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Log = lambda s: None,
    part_rows: int = 512,
    seed: int = 0,
    engine: str = "auto",
    precision: str = "float32",
    devices: str = "auto",
    volumes: Any = None,
    cluster: str | None = None,
) -> list[FeaturizeResult]:
    """Featurize ``data`` once into one cache per layer choice (``last``, ``mid``, ``multi``, ``NAME,...``).

    A single pass of the backbone serves every choice; each cache computes only its missing images. ``backbone``
    None takes the weights entry's (``--weights vgg16-brainmri``), else mobilenetv2. ``engine``
    is ``auto|tf|onnx|openvino``; ``precision`` (``float32|mixed``) and ``devices`` (``auto|one|mirrored``) are the
    TF engine's GPU options (``featurize.devices``): mixed precision or several replicas imply the TF engine.
    When ``data`` holds 3-D scans, ``volumes`` (a ``volume_featurize.VolumeOptions``; default: its defaults) says
    how they become slices, one cache row per (scan, view, slice index).
    ``cluster`` (``local[:N]``, ``tcp://HOST:PORT``, ``scheduler-file:PATH``) runs the images on Dask workers
    (``featurize.distributed``); the journal, resume and the lock are the same.
    """
    from featurize.devices import DEVICE_MODES, PRECISIONS
    from featurize.engines import ENGINES

    # before the scan: a typo should not cost a pass over the files
    batch_size = at_least("--batch-size", batch_size, 1)
    engine = choose("engine", (engine or "auto").lower(), ENGINES)
    precision, devices = choose("precision", precision, PRECISIONS), choose("devices", devices, DEVICE_MODES)
    choices = list(dict.fromkeys(layer_choices or ["last"]))
    if cluster:
        from featurize.cluster import parse_cluster

        cluster = parse_cluster(cluster)  # type: ignore[assignment]
    from featurize.volume_featurize import VolumeOptions, holds_volumes, volume_job
    from featurize.weights_catalog import resolve

    choice = resolve(weights, backbone, artifacts=artifacts)
    settings_list = [feature_spec(choice, image_size, pooling, resize, c, precision).to_attrs() for c in choices]
    bb = choice.backbone
    vopts = volumes if volumes is not None else VolumeOptions()
    t0 = time.perf_counter()
    timing.start()
    with timing.phase("scan"):
        job = volume_job(data, vopts, classes=classes, subjects=subjects, artifacts=artifacts) if holds_volumes(data) else None
        if job is not None and cluster:
            raise AlzmriError(f"{data}: --cluster runs 2-D image files; 3-D scans are featurized in-process (drop --cluster)")
        if job is None:
            ds = scan(data, classes)
            from featurize.grouping import resolve_subjects

            ds.table["subject"] = resolve_subjects(ds, subjects, artifacts=artifacts, log=log)
            table = ds.table
            keys = list(zip(table["path"], table["sha1"]))
    ds_id = job.dataset_id if job else ds.dataset_id
    targets = [CacheTarget(st, features_dir(ds_id, artifacts) / store.cache_name(st)) for st in settings_list]

    def pending() -> list[int]:
        if job is not None:
            return job.todo(targets)
        return [i for i, k in enumerate(keys) if any(not t.src.known(k) for t in targets)]

    with contextlib.ExitStack() as stack:
        for t in targets:
            stack.enter_context(store.locked(t.cache))
            t.open(log, seed)
        todo = pending()
        n_computed, rate = 0, 0.0
        if todo:
            if cluster:  # connect before building anything: a bad address is one line at once
                from featurize.cluster import session

                stack.enter_context(session(cluster))
            st = settings_list[0]
            spec = ModelSpec(bb, choice.load, st, choices, [x["layers"] for x in settings_list], seed, engine,
                             batch_size, artifacts, precision, devices)
            # a legacy checksum can only be checked against the TF build, so such a cache skips the card once
            got = None if any(t.legacy for t in targets) else from_card(spec)
            forward, engine_used, sha, dims, legacy = got or from_tf(spec, log)
            for t, tag in zip(targets, spec.layer_tags):
                t.accept_weights(sha, log, legacy.get(tag, frozenset()))
            todo = pending()
            extra: dict[str, Any] = {}
            if job is not None:  # slices cut from the scans, in the decode threads
                size = FeatureSpec.from_attrs(st).size

                def wanted(key: tuple[str, str]) -> bool:
                    return any(not t.src.known(key) for t in targets)

                extra = {"batches": lambda: job.batches(todo, wanted, size, st["resize"], batch_size),
                         "total": job.total(todo, targets)}
            try:
                if cluster:
                    from featurize.distributed import infer_on_cluster

                    n_computed, rate, engine_used = infer_on_cluster(cluster, spec, sha, table, todo, st, targets,
                                                                     dims, part_rows, progress, log)
                else:
                    n_computed, rate = _infer(forward, None if job else table, todo, st, batch_size, targets, dims,
                                              part_rows, progress, **extra)
            finally:
                if job is not None:
                    job.plan.save()  # an interrupted run keeps the plans of the scans it read
            for t in targets:
                t.settings["engine"] = engine_used
        if job is not None:
            ds = job.dataset(targets)
            keys = list(zip(ds.table["path"], ds.table["sha1"]))
        results = []
        with timing.phase("write"):
            for t in targets:
                results.append(_finish(t, ds, data, keys, n_computed, rate, seed, t0, vopts.attrs() if job else None))
    phases = timing.taken()
    for r in results:
        r.phases = phases
    return results


def _finish(t: CacheTarget, ds: Dataset, data: Any, keys: list[tuple[str, str]], n_computed: int, rate: float,
            seed: int, t0: float, extra_attrs: dict[str, Any] | None = None) -> FeaturizeResult:
    """Write the cache if anything changed, clear the journal, and describe the outcome."""
    src, cache = t.src, t.cache
    table = ds.table
    ok = [k for k in keys if k in src.index]
    failed = [(p, s, src.failed[(p, s)]) for p, s in keys if (p, s) in src.failed and (p, s) not in src.index]
    ok_rows = table[[k in src.index for k in keys]]
    if not n_computed:
        rate = float(src.old_attrs.get("featurize_images_per_s", 0.0) or 0.0)
    changed = n_computed > 0 or t.migrated or src.old is None or bool(src.parts) or _rows_changed(src.old, ok_rows, ds.class_names, failed)
    if changed:
        if not ok:
            what = "scan" if extra_attrs else "image"
            raise AlzmriError(f"{data}: no {what} could be read ({len(failed)} failed, e.g. {failed[0][0]}: {failed[0][2]})")
        scope = t.settings.get("weights_sha256_scope") or src.old_attrs.get("weights_sha256_scope")
        attrs = {**t.settings, "weights_sha256": t.sha, **({"weights_sha256_scope": scope} if scope else {}),
                 "class_names": json.dumps(ds.class_names),
                 "data_root": str(ds.root), "dataset_id": ds.dataset_id, "source": ds.source,
                 "engine": _engines_of(t, n_computed, len(ok)), "featurize_images_per_s": rate, "seed": seed,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **_versions(), **(extra_attrs or {})}
        rows = {k: ok_rows[k].to_numpy(dtype=object) for k in ("path", "label", "split", "subject", "sha1")}
        try:
            store.write_cache(cache, attrs, rows, src.blocks(ok), _dim(src), failed)
        except OSError as exc:
            raise CacheError(f"{cache}: cannot write the cache ({exc.strerror or exc}); free disk space and rerun: the previous cache and all computed features are intact") from None
    shutil.rmtree(t.journal, ignore_errors=True)
    return FeaturizeResult(cache=cache, dataset=ds, n_images=len(ok), n_computed=n_computed,
                           n_reused=len(ok) - min(n_computed, len(ok)), failed=[(p, r) for p, _, r in failed],
                           images_per_s=rate if n_computed else 0.0, seconds=time.perf_counter() - t0,
                           problems=list(ds.problems), settings={**t.settings, "weights_sha256": t.sha})


def _engines_of(t: CacheTarget, n_computed: int, n_rows: int) -> str:
    """The engines that computed the cache's rows, e.g. ``openvino+tf`` when new rows join rows of an older run."""
    old = str(t.src.old_attrs.get("engine", "tf")) if t.src.old is not None else ""
    new = str(t.settings.get("engine") or "")
    used = set(new.split("+")) if n_computed and new else set()
    if old and (not n_computed or n_computed < n_rows):
        used |= set(old.split("+"))
    return "+".join(sorted(used)) or "tf"


def _versions() -> dict[str, str]:
    """Package versions, read from metadata so that a metadata-only rewrite does not import TensorFlow."""
    from importlib.metadata import PackageNotFoundError, version

    from featurize import __version__

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return ""

    return {"tf_version": v("tensorflow"), "keras_version": v("keras"), "alzmri_version": __version__}


def _dim(src: Sources) -> int:
    if src.parts and src.parts[0].features.ndim == 2 and len(src.parts[0].features):
        return int(src.parts[0].features.shape[1])
    for part in src.parts:
        if len(part.features):
            return int(part.features.shape[1])
    return int(src.old_attrs.get("feature_dim", 0))


def _rows_changed(old: Path | None, ok_rows: Any, class_names: list[str], failed: list[tuple[str, str, str]]) -> bool:
    """True when the cache's row metadata differ from the current scan (so it must be rewritten)."""
    if old is None:
        return True
    with h5py.File(old, "r") as f:
        if json.loads(store._plain(f.attrs["class_names"])) != class_names or len(f["path"]) != len(ok_rows):
            return True
        if len(f["failed_path"]) != len(failed):
            return True
        return any(not np.array_equal(store._strs(f[k]), ok_rows[k].to_numpy(dtype=object)) for k in ("path", "label", "split", "subject", "sha1"))


def _file_batches(table: Any, todo: list[int], size: tuple[int, int], resize: str,
                  batch_size: int) -> Iterator[tuple[np.ndarray, list[tuple[str, str, str]]]]:
    """The 2-D path's batches: decoded image files, each tagged (path, sha1, error)."""
    from featurize.pipeline import image_batches

    sub = table.iloc[todo]
    paths, shas, absps = sub["path"].tolist(), sub["sha1"].tolist(), sub["abspath"].tolist()
    done = 0
    with contextlib.closing(image_batches(absps, size, resize, batch_size)) as batches:
        for images, errs in batches:
            yield images, [(paths[j], shas[j], e) for j, e in zip(range(done, done + len(errs)), errs)]
            done += len(errs)


Batches = Iterator[tuple[np.ndarray, list[tuple[str, str, str]]]]


def _infer(forward: Callable[[np.ndarray], np.ndarray], table: Any, todo: list[int], settings: dict[str, Any], batch_size: int,
           targets: list[CacheTarget], dims: list[int], part_rows: int, progress: bool,
           batches: Callable[[], Batches] | None = None, total: int | None = None) -> tuple[int, float]:
    """Run the model over ``todo`` rows, journaling every ``part_rows`` images into each target's journal.

    The model's output columns are the targets' features side by side (widths ``dims``). ``batches`` makes the
    (images, [(path, sha1, error)]) batches instead of the files of ``todo`` (the volume path: slices cut from
    scans, about ``total`` of them). Returns (count, images/s).
    """
    size = FeatureSpec.from_attrs(settings).size
    with timing.phase("compile"):  # warm-up: trace (TF) and allocate once, outside the loop's rate
        forward(np.zeros((batch_size, size[1], size[0], 3), np.uint8))
    if batches is None:
        total = len(todo)
        batches = lambda: _file_batches(table, todo, size, settings["resize"], batch_size)  # noqa: E731
    total = int(total or 0)
    writer = PartWriter(targets, dims, part_rows)
    done = 0
    t0 = time.perf_counter()
    with timing.phase("loop"), contextlib.ExitStack() as stack:
        advance = stack.enter_context(progress_bar(total, f"featurize {settings['backbone']}", enabled=progress))
        try:
            source = stack.enter_context(contextlib.closing(batches()))
            for images, rows in source:
                feats = forward(images)
                errs = [e for _, _, e in rows]
                writer.add([p for p, _, _ in rows], [h for _, h, _ in rows], feats[np.array([e == "" for e in errs])], errs)
                done += len(rows)
                advance(len(rows))
        except BaseException as exc:
            if not interrupted(exc):
                raise
            writer.flush()
            raise AlzmriError(f"interrupted after {done} of {total} images; they are kept, rerun the same command to resume", exit_code=130) from None
        writer.flush()
    elapsed = time.perf_counter() - t0
    return done, done / elapsed if elapsed > 0 else 0.0
