"""Featurize benchmark: the naive loop vs the compiled model vs the whole ``featurize`` path, against the hardware.

    python -m benchmarks.featurize --backbone mobilenetv2 --n 1000          # default run, < 10 min
    python -m benchmarks.featurize --quick                                   # < 2 min
    python -m benchmarks.featurize --backbone resnet50 --n 300 --rss-sizes 0
    python -m benchmarks.featurize --explore                                 # knobs: threads, batch, XLA, oneDNN, ...

Everything that is compared is measured in the same run, side by side, on the same images (the shared
Kaggle-layout slices when present, else a generated synthetic set), because the machine is shared and absolute
timings drift: read the ratios. Not a test; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data" / "alzheimer-mri"
KERAS_HOME = SHARED / "keras_home"
SYNTH_CACHE = Path(tempfile.gettempdir()) / "alzmri-bench-synth"
HEADS = ("logreg", "svm", "mlp")
ENGINE_DEFAULT = "tf,onnx,openvino"


def setup_env() -> None:
    """Quiet TF, point Keras at the offline ImageNet weights, no OpenVINO telemetry. Call before importing TF."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("OPENVINO_TELEMETRY", "0")
    if KERAS_HOME.is_dir():
        os.environ["KERAS_HOME"] = str(KERAS_HOME)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ data


def data_root(n_needed: int) -> tuple[Path, str]:
    """The shared real slices, or a synthetic Kaggle-layout set of at least ``n_needed`` images."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA, "shared real slices (176x208 JPEG)"
    from featurize.synth import write_dataset

    spc = max(1, -(-n_needed // (4 * 32)))
    out = SYNTH_CACHE / f"spc{spc}"
    write_dataset(out, subjects_per_class=spc, slices_per_subject=32, fmt="jpg")
    return out, f"synthetic slices (featurize.synth, {spc * 128} images, 176x208 JPEG)"


def image_files(root: Path) -> list[Path]:
    """Every image under ``root/{train,test}/<class>/``, sorted."""
    from featurize.dataset import is_image_name

    return sorted(p for p in root.glob("*/*/*") if is_image_name(p.name))


def subset(root: Path, n: int, dest: Path) -> Path:
    """A Kaggle-layout tree of ``n`` images of ``root`` (a fixed random draw over all classes), as symlinks."""
    files = image_files(root)
    if n >= len(files):
        return root
    pick = sorted(np.random.default_rng(0).permutation(len(files))[:n])
    out = dest / f"subset-{n}"
    if not out.is_dir():
        for i in pick:
            rel = files[i].relative_to(root)
            (out / rel.parent).mkdir(parents=True, exist_ok=True)
            (out / rel).symlink_to(files[i])
    return out


def load_images(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    from featurize.images import load_rgb

    return np.stack([load_rgb(str(p), size) for p in paths])


# ------------------------------------------------------------------------------------------------ model


def weights_for(backbone: str) -> str:
    """Real ImageNet weights exist offline only for MobileNetV2; other backbones run at random init (same FLOPs)."""
    if backbone == "mobilenetv2" and (Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models"
                                      / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5").is_file():
        return "imagenet"
    return "none"


def build(backbone: str, weights: str, size: tuple[int, int]) -> tuple[Any, Any]:
    from featurize.backbones import build_base, feature_model, get_backbone

    bb = get_backbone(backbone)
    return feature_model(build_base(bb, weights, size), [], "avg"), bb.preprocess_fn()


def model_key(model: Any, backbone: str = "") -> str:
    """The export key featurize itself uses for this model (so that featurize finds the benchmark's export)."""
    from featurize.backbones import weights_checksum
    from featurize.engines import engine_key

    h, w = int(model.input_shape[1]), int(model.input_shape[2])
    return engine_key(backbone or model.name, weights_checksum(model), f"{w}x{h}", "last", "avg")


def flops_per_image(model: Any) -> tuple[float, str]:
    """FLOPs of one forward pass: TF's profiler on the frozen graph, else 2 x the conv/dense MACs from layer shapes."""
    try:
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        h, w = int(model.input_shape[1]), int(model.input_shape[2])
        fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec((1, h, w, 3), tf.float32))
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        with contextlib.redirect_stdout(None), contextlib.redirect_stderr(None):
            prof = tf.compat.v1.profiler.profile(graph=convert_variables_to_constants_v2(fn).graph, options=opts)
        if prof.total_float_ops > 0:
            return float(prof.total_float_ops), "TF profiler"
    except Exception:  # noqa: BLE001, S110 - the profiler is a deprecated v1 API: fall back to counting
        pass
    return 2.0 * layer_macs(model), "conv/dense MACs x 2"


def layer_macs(model: Any) -> float:
    from featurize.engines import model_macs

    return model_macs(model)


def matmul_peak(seconds: float = 1.0, n: int = 2048) -> dict[str, float]:
    """Best float32 GFLOP/s of an n x n matmul, numpy (BLAS) and TF, each run for ``seconds``."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    ta, tb = tf.constant(a), tf.constant(b)
    runs = {"numpy": lambda: a @ b, "tf": lambda: tf.linalg.matmul(ta, tb).numpy()}
    out = {}
    for name, fn in runs.items():
        fn()
        best, t_end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            fn()
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
        out[name] = best
    return out


# ------------------------------------------------------------------------------------------------ timing


def rate(forward: Callable[[np.ndarray], Any], images: np.ndarray, batch: int, min_seconds: float) -> float:
    """Images/s of ``forward`` over full batches of ``images``, repeated for at least ``min_seconds`` (warm)."""
    batches = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)] or [images]
    forward(batches[0])
    done, t0 = 0, time.perf_counter()
    while True:
        for b in batches:
            forward(b)
            done += len(b)
        if time.perf_counter() - t0 >= min_seconds:
            break
    return done / (time.perf_counter() - t0)


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of ``rounds`` alternating measurements (A B C A B C ...): drift hits every contender alike."""
    got: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            got[k].append(fn())
    return {k: statistics.median(v) for k, v in got.items()}


def naive_rate(model: Any, preprocess: Any, paths: list[Path]) -> float:
    """The tutorial loop: load_img -> img_to_array -> preprocess_input -> model.predict, one image at a time."""
    import keras

    h, w = int(model.input_shape[1]), int(model.input_shape[2])

    def one(p: Path) -> Any:
        img = keras.utils.load_img(str(p), target_size=(h, w))
        return model.predict(preprocess(keras.utils.img_to_array(img)[None]), verbose=0)

    one(paths[0])
    t0 = time.perf_counter()
    for p in paths:
        one(p)
    return len(paths) / (time.perf_counter() - t0)


def available_engines(wanted: str) -> list[str]:
    from featurize.engines import ENGINES, missing_packages

    names = [e.strip() for e in wanted.split(",") if e.strip()]
    bad = [e for e in names if e not in ENGINES]
    if bad:
        raise SystemExit(f"unknown engine(s) {bad}; choose from {ENGINES}")
    return [e for e in names if e == "auto" or not missing_packages(e)]


def tfdata_batches(paths: Any, size: tuple[int, int], resize: str, batch_size: int) -> Iterator[tuple[np.ndarray, list[str]]]:
    """The input pipeline featurize used before ``pipeline.image_batches``, kept here for comparison: tf.data ``map``
    over ``tf.numpy_function(load_rgb)`` (AUTOTUNE parallel, deterministic), batched and prefetched."""
    import tensorflow as tf

    from featurize.images import ImageError, load_rgb

    w, h = size

    def decode(path: bytes) -> tuple[np.ndarray, bytes]:
        try:
            return load_rgb(path.decode(), size, resize), b""
        except ImageError as exc:
            return np.zeros((h, w, 3), np.uint8), str(exc).encode()

    def tf_decode(path: Any) -> tuple[Any, Any]:
        img, err = tf.numpy_function(decode, [path], [tf.uint8, tf.string], stateful=False)
        img.set_shape((h, w, 3))
        err.set_shape(())
        return img, err

    ds = tf.data.Dataset.from_tensor_slices(np.asarray([str(p) for p in paths], dtype=str))
    ds = ds.map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    for imgs, errs in ds:
        yield imgs.numpy(), [e.decode() for e in errs.numpy()]


def _batches(**options: Any) -> Callable[..., Iterator[tuple[np.ndarray, list[str]]]]:
    from featurize.pipeline import image_batches  # the real one: featurize's name for it is swapped while measuring

    def make(*a: Any, **k: Any) -> Iterator[tuple[np.ndarray, list[str]]]:
        return image_batches(*a, **{**k, **options})

    return make


# The input pipelines compared: featurize's own (first), and the alternatives it was chosen over.
PIPELINES: dict[str, tuple[str, Callable[..., Iterator[tuple[np.ndarray, list[str]]]]]] = {
    "current": ("pipeline.image_batches: thread pool at normal priority, 2 batches ahead", _batches()),
    "low-priority": ("the same threads at the lowest priority (nice 19; the default until issue 22)", _batches(low_priority=True)),
    "phased": ("each batch decoded on all cores only when asked for, then inferred", _batches(ahead=0)),
    "one-thread": ("one decode thread at normal priority, 2 batches ahead", _batches(threads=1)),
    "tf.data": ("tf.data map over tf.numpy_function, AUTOTUNE, prefetch (the previous pipeline)", tfdata_batches),
}


@contextlib.contextmanager
def engine_in_featurize(cache_dir: Path, info: dict[str, Any], pipeline: str = "current") -> Iterator[None]:
    """Inside, ``featurize`` keeps its ONNX exports and model cards in ``cache_dir`` (shared by every run of the
    benchmark, as ``artifacts/engines`` is by every dataset), times every forward call (``info["infer_s"]``, warm-up
    excluded), notes whether the model was built with TF or came from a card (``info["path"]``), and reads its
    images through ``PIPELINES[pipeline]``."""
    import featurize.pipeline as pl
    from featurize import engines
    from featurize import extractor as fext

    info.update(infer_s=0.0, engine="-", path="-")
    real = (engines.make_engine, engines.load_verified, pl.image_batches, fext.engines_dir)

    def timed(fwd: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        calls = [0]

        def run(batch: np.ndarray) -> np.ndarray:
            t = time.perf_counter()
            try:
                return fwd(batch)
            finally:
                calls[0] += 1
                if calls[0] > 1:  # the first call is run._infer's warm-up, outside its timed loop
                    info["infer_s"] += time.perf_counter() - t

        return run

    def timed_engine(*a: Any, **k: Any) -> Any:
        fwd, used = real[0](*a, **k)
        info.update(engine=used, path="TF build")
        return timed(fwd), used

    def timed_verified(*a: Any, **k: Any) -> Any:
        fwd = real[1](*a, **k)
        if fwd is None:
            return None
        info["path"] = "model card"
        return timed(fwd)

    engines.make_engine, engines.load_verified = timed_engine, timed_verified
    pl.image_batches = PIPELINES[pipeline][1]
    fext.engines_dir = lambda artifacts=None: cache_dir
    try:
        yield
    finally:
        engines.make_engine, engines.load_verified, pl.image_batches, fext.engines_dir = real


def featurize_once(data: Path, artifacts: Path, backbone: str, weights: str, engine: str, batch: int,
                   cache_dir: Path, subjects: str = "none", pipeline: str = "current") -> dict[str, Any]:
    """One featurize run into ``artifacts`` (fresh: computes every image); loop rate, wall, engine, inference share."""
    from featurize import run as frun

    info: dict[str, Any] = {}
    with engine_in_featurize(cache_dir, info, pipeline):
        res = frun.featurize_dataset(data, backbone=backbone, weights=weights, batch_size=batch, subjects=subjects,
                                     artifacts=artifacts, progress=False, log=say, engine=engine)
    loop_s = res.n_computed / res.images_per_s if res.images_per_s else float("nan")
    return {"n": res.n_computed, "rate": res.images_per_s, "seconds": res.seconds, "engine": res.settings.get("engine", "-"),
            "path": info["path"],
            "infer_share": info["infer_s"] / loop_s if loop_s else float("nan"), "cache": str(res.cache)}


# ------------------------------------------------------------------------------------------------ children


def child_main(args: argparse.Namespace) -> None:
    """Subprocess entry points: a featurize run (peak RSS, cached rerun), a bare import, a TF model-only rate."""
    if args.child == "import":
        from featurize.tfquiet import import_tensorflow

        import_tensorflow()
        import featurize.run  # noqa: F401
        print(json.dumps({"ok": True}))
        return
    if args.child == "featurize":
        out = featurize_once(Path(args.data), Path(args.artifacts), args.backbone, args.weights, args.engine,
                             args.batch_size, Path(args.engine_cache), subjects="auto")
        out["tf_imported"] = "tensorflow" in sys.modules
        out["vmhwm_mib"] = vm_hwm()
        print(json.dumps(out))
        return
    if args.child == "python":
        print(json.dumps({"ok": True}))
        return
    if args.child == "modelonly":
        import tensorflow as tf

        if args.intra or args.inter:
            tf.config.threading.set_intra_op_parallelism_threads(args.intra)
            tf.config.threading.set_inter_op_parallelism_threads(args.inter)
        from featurize.pipeline import make_forward

        model, pre = build(args.backbone, "none", (224, 224))
        x = np.random.default_rng(0).integers(0, 256, (args.batch_size * 2, 224, 224, 3), dtype=np.uint8)
        r = rate(make_forward(model, pre, args.batch_size), x, args.batch_size, args.seconds)
        print(json.dumps({"rate": r}))
        return
    raise SystemExit(f"unknown child {args.child}")


def vm_hwm() -> float:
    """This process's own peak RSS in MiB (``VmHWM``: the high-water mark of the current address space)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024.0
    return float("nan")


def spawn_rss(argv: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], float, float]:
    """Run ``python -m benchmarks.featurize ARGV`` fresh; (its last JSON line, wall s, its own peak RSS MiB via wait4)."""
    cmd = [sys.executable, "-m", "benchmarks.featurize", *argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})},
                                cwd=str(Path(__file__).resolve().parents[1]))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"child {' '.join(argv)} failed ({proc.returncode}): {err.read().decode()[-600:]}")
        text = out.read().decode().strip().splitlines()
    return json.loads(text[-1]), wall, usage.ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------------ main run


def fmt(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:,.{digits}f}"


def main_run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="alzmri-bench-"))
    cache_dir = work / "engines"
    rss_sizes = [int(s) for s in args.rss_sizes.split(",") if s.strip() and int(s) > 0]
    root, source = data_root(max([args.n, *rss_sizes]))
    weights = weights_for(args.backbone)
    names = available_engines(args.engine)
    result: dict[str, Any] = {"source": source, "backbone": args.backbone, "weights": weights}
    # Fresh-process rows first, while this process is still small: on Linux a child's ru_maxrss starts from the
    # parent's RSS at fork (the high-water mark survives exec), so a 2.5 GB parent would mask the child's peak.
    if rss_sizes:
        result.update(rss_and_rerun(root, work, rss_sizes, args, weights, names))
        if args.no_heads or args.quick:
            result["heads"] = {"skipped": "--quick" if args.quick else "--no-heads"}
        elif args.backbone == "mobilenetv2":
            result["heads"] = heads(result["heads_data"], result["heads_artifacts"])
    from featurize import engines
    from featurize.tfquiet import import_tensorflow

    import_tensorflow()
    data = subset(root, args.n, work)
    files = image_files(data)
    bb_size = (224, 224) if args.image_size is None else tuple(int(v) for v in args.image_size.split("x"))
    say(f"data: {source}, {len(files)} images; backbone {args.backbone} weights={weights} at {bb_size[0]}x{bb_size[1]}")
    model, pre = build(args.backbone, weights, bb_size)
    flops, flops_how = flops_per_image(model)
    peak = matmul_peak(1.0)
    say(f"{flops / 1e9:.2f} GFLOP/image ({flops_how}); matmul peak {peak}")
    n_model = min(len(files), args.model_images)
    x = load_images(files[:n_model], bb_size)
    forwards: dict[str, Any] = {}
    export_s: dict[str, float] = {}
    for e in names:
        t0 = time.perf_counter()
        fwd, used = engines.make_engine(model, pre, args.batch_size, e, cache_dir, model_key(model, args.backbone), say)
        export_s[e] = time.perf_counter() - t0
        forwards[e] = fwd
        if used != e:
            say(f"engine {e} resolved to {used}")
    # every ONNX engine's first featurize builds the model with TF and leaves a model card; the measured runs then
    # start as a second dataset would (card + cached export, no build). The fresh-process rows show the first time.
    for e in names:
        featurize_once(subset(root, 32, work), work / f"card-{e}", args.backbone, weights, e, args.batch_size, cache_dir)
    # (1) naive loop
    naive = naive_rate(model, pre, files[:args.naive])
    # (2)+(3): for each engine, model-only right before and right after its featurize run (brackets the drift)
    rows: dict[str, dict[str, Any]] = {}
    for e in names:
        before = rate(forwards[e], x, args.batch_size, args.model_seconds)
        fz = featurize_once(data, work / f"art-{e}", args.backbone, weights, e, args.batch_size, cache_dir)
        protos = {p: featurize_once(data, work / f"art-{e}-{p}", args.backbone, weights, e, args.batch_size, cache_dir,
                                    pipeline=p) for p in list(PIPELINES)[1:]}
        after = rate(forwards[e], x, args.batch_size, args.model_seconds)
        rows[e] = {"model_only": (before + after) / 2, "model_before": before, "model_after": after, **fz,
                   "wall_rate": fz["n"] / fz["seconds"], "setup_s": export_s[e], "protos": protos}
        say(f"{e}: model-only {before:.1f}/{after:.1f} img/s, featurize loop {fz['rate']:.1f} img/s, other inputs: "
            + ", ".join(f"{v['rate']:.1f} ({k})" for k, v in protos.items())
            + f"; {fz['n'] / fz['seconds']:.1f} img/s wall; engine {fz['engine']}")
    late = matmul_peak(1.0)  # again at the end: the best of both is the least disturbed estimate of the peak
    peak = {k: max(v, late[k]) for k, v in peak.items()}
    result.update({"machine": machine(), "n": len(files), "batch": args.batch_size, "flops": flops,
                   "flops_how": flops_how, "peak": peak, "naive": naive, "naive_n": args.naive, "engines": rows})
    result["total_s"] = time.perf_counter() - t_start
    print(report(result))
    return result


def rss_and_rerun(root: Path, work: Path, sizes: list[int], args: argparse.Namespace, weights: str,
                  names: list[str]) -> dict[str, Any]:
    engine = "auto" if "auto" in names or len(names) > 1 else names[0]
    # the fast engine (after one export: model card, no TF import) and, for contrast, the TF engine
    rss_engines = [engine] + (["tf"] if engine != "tf" and not args.quick else [])
    out: dict[str, Any] = {"rss": [], "rss_engine": engine}

    def common(e: str) -> list[str]:
        return ["--backbone", args.backbone, "--weights", weights, "--engine", e, "--batch-size", str(args.batch_size),
                "--engine-cache", str(work / "engines")]

    # first-ever run: builds the model with TF, exports to ONNX, writes the model card (and warms the page cache)
    data = subset(root, min(sizes[0], 64), work)
    res, wall, rss = spawn_rss(["--child", "featurize", "--data", str(data), "--artifacts", str(work / "warm"), *common(engine)])
    out["first"] = {"n": res["n"], "wall": wall, "rss_mib": rss, "engine": res["engine"], "path": res["path"]}
    say(f"first-ever featurize ({res['n']} images, {res['path']}): {wall:.1f} s, peak RSS {rss:.0f} MiB")
    art = work / "rss"
    for e in rss_engines:
        for n in sizes:
            art = work / f"rss-{e}-{n}"
            res, wall, rss = spawn_rss(["--child", "featurize", "--data", str(subset(root, n, work)), "--artifacts", str(art),
                                        *common(e)])
            out["rss"].append({"n": res["n"], "rss_mib": rss, "hwm_mib": res["vmhwm_mib"], "wall": wall, "rate": res["rate"],
                               "engine": res["engine"], "path": res["path"], "tf_imported": res["tf_imported"]})
            say(f"featurize {res['n']} images in a fresh process, engine {res['engine']} ({res['path']}): "
                f"peak RSS {rss:.0f} MiB (VmHWM {res['vmhwm_mib']:.0f}), {wall:.1f} s")
    art = work / f"rss-{engine}-{sizes[-1]}"
    last = subset(root, sizes[-1], work)
    rerun, tf_import, bare = [], [], []
    for _ in range(1 if args.quick else 2):  # alternate: bare python, python + TF import, cached rerun
        bare.append(spawn_rss(["--child", "python"])[1])
        tf_import.append(spawn_rss(["--child", "import"])[1])
        res, w1, rss = spawn_rss(["--child", "featurize", "--data", str(last), "--artifacts", str(art), *common(engine)])
        rerun.append(w1)
    out["rerun"] = {"n": sizes[-1], "wall": min(rerun), "import": min(tf_import), "bare": min(bare), "computed": res["n"],
                    "rss_mib": rss, "tf_imported": res["tf_imported"]}
    say(f"cached rerun {min(rerun):.2f} s; python alone {min(bare):.2f} s, python + TF import {min(tf_import):.2f} s")
    out["heads_data"], out["heads_artifacts"] = str(last), str(art)
    return out


def heads(data: str, artifacts: str) -> dict[str, Any]:
    try:
        from classify.run import classify_dataset
    except ImportError as exc:
        return {"skipped": f"classify.run.classify_dataset not available ({exc})"}
    out: dict[str, Any] = {}
    for h in HEADS:
        t0 = time.perf_counter()
        try:
            df = classify_dataset(data, backbone="mobilenetv2", heads=[h], artifacts=artifacts, progress=False,
                                  log=lambda s: None)
        except Exception as exc:  # noqa: BLE001 - a failing head is a row of the table, not the end of the benchmark
            out[h] = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
            continue
        wall = time.perf_counter() - t0
        row = df.iloc[0].to_dict() if len(df) else {}
        out[h] = {"wall": wall, "fit_seconds": row.get("fit_seconds"), "balanced_accuracy": row.get("balanced_accuracy"),
                  "n": row.get("n_train")}
        say(f"head {h}: {wall:.1f} s")
    return out


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        fl = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
        flags = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in fl)
    import tensorflow as tf

    vers = [f"TF {tf.__version__}"]
    for mod in ("onnxruntime", "tf2onnx", "openvino"):
        with contextlib.suppress(Exception):
            vers.append(f"{mod} {__import__(mod).__version__}")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{cpu} ({flags}), {len(os.sched_getaffinity(0))} usable cores, {ram:.0f} GiB RAM, "
            f"load avg at start {load:.1f}; " + ", ".join(vers))


def report(r: dict[str, Any]) -> str:
    gf = r["flops"] / 1e9
    peak = max(r["peak"].values())
    lines = [f"## featurize benchmark: {r['backbone']} ({r['weights']} weights), {r['n']} images, batch {r['batch']}", "",
             f"Machine: {r['machine']}", f"Data: {r['source']}",
             (f"Model: {gf:.2f} GFLOP/image ({r['flops_how']}); float32 matmul peak {peak:.0f} GFLOP/s "
              f"(numpy {r['peak']['numpy']:.0f}, TF {r['peak']['tf']:.0f}; 2048x2048, best single product over 1 s "
              "at the start and 1 s at the end)."), ""]
    if r["weights"] != "imagenet":
        lines += [("Weights: random init (`weights=\"none\"`): only MobileNetV2 has ImageNet weights offline; "
                   "the FLOPs and speed are the same as with ImageNet weights."), ""]
    lines += ["| path | engine | images/s | GFLOP/s | % of peak | featurize / model-only | vs naive |",
              "|---|---|---:|---:|---:|---:|---:|"]
    lines.append(f"| (1) naive loop: load_img + model.predict per image ({r['naive_n']} images) | tf | {fmt(r['naive'])} "
                 f"| {fmt(r['naive'] * gf)} | {fmt(100 * r['naive'] * gf / peak)} | | 1.00 |")
    for row in r["engines"].values():
        lines.append(f"| (2) model only: preloaded uint8 batches | {row['engine']} | {fmt(row['model_only'])} | {fmt(row['model_only'] * gf)} "
                     f"| {fmt(100 * row['model_only'] * gf / peak)} | | {fmt(row['model_only'] / r['naive'], 2)} |")
    for row in r["engines"].values():
        lines.append(f"| (3) featurize: decode+resize+infer+journal (loop) | {row['engine']} | {fmt(row['rate'])} "
                     f"| {fmt(row['rate'] * gf)} | {fmt(100 * row['rate'] * gf / peak)} | {fmt(row['rate'] / row['model_only'], 2)} "
                     f"| {fmt(row['rate'] / r['naive'], 2)} |")
    for k, (label, _) in list(PIPELINES.items())[1:]:
        for row in r["engines"].values():
            p = row["protos"][k]
            lines.append(f"| (3-{k}) featurize loop, input: {label} | {p['engine']} | {fmt(p['rate'])} "
                         f"| {fmt(p['rate'] * gf)} | {fmt(100 * p['rate'] * gf / peak)} | {fmt(p['rate'] / row['model_only'], 2)} "
                         f"| {fmt(p['rate'] / r['naive'], 2)} |")
    for row in r["engines"].values():
        lines.append(f"| (3') featurize wall: scan + model ({row['path']}) + loop + HDF5 write | {row['engine']} | {fmt(row['wall_rate'])} "
                     f"| | | {fmt(row['wall_rate'] / row['model_only'], 2)} | {fmt(row['wall_rate'] / r['naive'], 2)} |")
    if "tf" in r["engines"]:
        tf_m = r["engines"]["tf"]["model_only"]
        ks = list(PIPELINES)
        lines += ["", "| engine | model-only vs TF model-only | featurize loop vs TF model-only (" + " / ".join(ks) + ") "
                  "| share of the loop inside the engine (" + " / ".join(ks) + ") | engine set-up s (export+check) |",
                  "|---|---:|---:|---:|---:|"]
        for e, row in r["engines"].items():
            runs = [row, *[row["protos"][k] for k in ks[1:]]]
            lines.append(f"| {e} | {fmt(row['model_only'] / tf_m, 2)} | " + " / ".join(fmt(v["rate"] / tf_m, 2) for v in runs)
                         + " | " + " / ".join(fmt(v["infer_share"], 2) for v in runs) + f" | {fmt(row['setup_s'])} |")
    if r.get("rss"):
        first = r["first"]
        lines += ["", "| featurize in a fresh process (subjects auto) | engine | model from | TF imported | images | peak RSS MiB | wall s |",
                  "|---|---|---|---|---:|---:|---:|",
                  f"| first-ever run (export + card written) | {first['engine']} | {first['path']} | yes | {first['n']} "
                  f"| {fmt(first['rss_mib'], 0)} | {fmt(first['wall'])} |"]
        for row in r["rss"]:
            lines.append(f"| first run on these images | {row['engine']} | {row['path']} | {'yes' if row['tf_imported'] else 'no'} "
                         f"| {row['n']} | {fmt(row['rss_mib'], 0)} (VmHWM {fmt(row['hwm_mib'], 0)}) | {fmt(row['wall'])} |")
        for e in dict.fromkeys(row["engine"] for row in r["rss"]):
            same = [row for row in r["rss"] if row["engine"] == e]
            if len(same) > 1:
                lines.append(f"| peak RSS ratio, {same[-1]['n']} / {same[0]['n']} images | {e} | | | | "
                             f"**{fmt(same[-1]['rss_mib'] / same[0]['rss_mib'], 3)}** | |")
        rr = r["rerun"]
        lines.append(f"| fully cached rerun ({rr['computed']} computed) | | | {'yes' if rr['tf_imported'] else 'no'} | {rr['n']} "
                     f"| {fmt(rr['rss_mib'], 0)} | {fmt(rr['wall'], 2)} |")
        lines.append(f"| `python -m benchmarks.featurize` doing nothing (interpreter + numpy) | | | | | | {fmt(rr['bare'], 2)} |")
        lines.append(f"| the same + `import tensorflow, featurize.run` | | | | | | {fmt(rr['import'], 2)} |")
        lines.append(f"| cached rerun beyond interpreter start-up | | | | | | {fmt(rr['wall'] - rr['bare'], 2)} |")
    if r.get("heads"):
        h = r["heads"]
        lines += [""]
        if "skipped" in h:
            lines.append(f"Heads: skipped: {h['skipped']}")
        else:
            lines += ["| head (classify_dataset, protocol official, grid-search CV on train) | wall s | fit s | balanced acc |",
                      "|---|---:|---:|---:|"]
            for name, v in h.items():
                if "error" in v:
                    lines.append(f"| {name} | error: {v['error']} | | |")
                else:
                    fs, ba = v.get("fit_seconds"), v.get("balanced_accuracy")
                    lines.append(f"| {name} | {fmt(v['wall'])} | {fmt(float(fs)) if fs is not None else '-'} "
                                 f"| {fmt(float(ba), 3) if ba is not None else '-'} |")
    lines += ["", f"Benchmark wall time: {r['total_s']:.0f} s."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ explore


def explore(args: argparse.Namespace) -> dict[str, Any]:
    """The knobs, each compared side by side in one run: prints one markdown table per knob."""
    import tensorflow as tf

    from featurize import engines
    from featurize.pipeline import make_forward

    work = Path(tempfile.mkdtemp(prefix="alzmri-explore-"))
    root, source = data_root(args.n)
    files = image_files(subset(root, args.n, work))
    weights = weights_for(args.backbone)
    model, pre = build(args.backbone, weights, (224, 224))
    x = load_images(files[:args.model_images], (224, 224))
    names = [e for e in available_engines("tf,onnx,openvino")]
    fast = [e for e in names if e != "tf"]
    best_onnx = "openvino" if "openvino" in fast else (fast[0] if fast else "tf")
    out: dict[str, Any] = {"machine": machine(), "source": source}
    sec, rounds = args.model_seconds, 3
    md: list[str] = [f"## explore: {args.backbone} ({weights}), {len(files)} images, {source}", "", f"Machine: {out['machine']}"]

    def table(title: str, res: dict[str, float], ref: str, extra: dict[str, str] | None = None) -> None:
        md.extend(["", f"### {title}", "", "| setting | images/s | ratio |" + (" note |" if extra else ""),
                   "|---|---:|---:|" + ("---|" if extra else "")])
        for k, v in res.items():
            md.append(f"| {k} | {v:.1f} | {v / res[ref]:.2f} |" + (f" {extra.get(k, '')} |" if extra else ""))
        print("\n".join(md[-(len(res) + 4):]), flush=True)

    # batch size, per engine
    runs = {}
    for e in ["tf", best_onnx] if best_onnx != "tf" else ["tf"]:
        for b in (8, 32, 64):
            f, _ = engines.make_engine(model, pre, b, e, work / "engines", model_key(model), say)
            runs[f"{e} batch {b}"] = (lambda f=f, b=b: rate(f, x, b, sec))
    res = interleaved(runs, rounds)
    table("batch size (model only)", res, "tf batch 32")
    out["batch"] = res
    # XLA
    h, w = 224, 224
    spec = [tf.TensorSpec((args.batch_size, h, w, 3), tf.uint8)]
    xla = tf.function(lambda t: model(pre(tf.cast(t, tf.float32)), training=False), input_signature=spec, jit_compile=True)
    plain = make_forward(model, pre, args.batch_size)
    t0 = time.perf_counter()
    xla(tf.constant(x[:args.batch_size]))
    compile_s = time.perf_counter() - t0
    xla_err = engines.relative_error(xla(tf.constant(x[:args.batch_size])).numpy(), plain(x[:args.batch_size]))
    res = interleaved({"tf.function": lambda: rate(plain, x, args.batch_size, sec),
                       "tf.function(jit_compile=True)": lambda: rate(lambda b: xla(tf.constant(b)).numpy(), x, args.batch_size, sec)}, rounds)
    table("XLA (model only, TF)", res, "tf.function", {"tf.function(jit_compile=True)": f"compile {compile_s:.1f} s, rel. error {xla_err:.1e}"})
    out["xla"] = res
    # native 176x208 vs 224x224
    m2, p2 = build(args.backbone, weights, (176, 208))
    x2 = load_images(files[:args.model_images], (176, 208))
    runs = {}
    for e in ["tf", best_onnx] if best_onnx != "tf" else ["tf"]:
        fa, _ = engines.make_engine(model, pre, args.batch_size, e, work / "engines", model_key(model), say)
        fb, _ = engines.make_engine(m2, p2, args.batch_size, e, work / "engines", model_key(m2), say)
        runs[f"{e} 224x224"] = (lambda f=fa: rate(f, x, args.batch_size, sec))
        runs[f"{e} 176x208 (native)"] = (lambda f=fb: rate(f, x2, args.batch_size, sec))
    res = interleaved(runs, rounds)
    f2, _ = flops_per_image(m2)
    f1, _ = flops_per_image(model)
    table("input size (model only)", res, "tf 224x224", {k: f"{(f2 if '176' in k else f1) / 1e9:.2f} GFLOP/img" for k in res})
    out["size"] = res
    # OpenVINO bf16 (AMX) vs f32, ORT threads / spinning
    if "openvino" in names or "onnx" in names:
        path = engines.onnx_path(work / "engines", model_key(model))
        runs, notes = {}, {}
        ref = plain(x[:args.batch_size])
        if "onnx" in names:
            import onnxruntime as ort

            for threads, spin in ((engines.cpu_threads(), True), (engines.cpu_threads(), False), (1, True)):
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                if not spin:
                    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                runs[f"onnxruntime {threads} threads{'' if spin else ', no spinning'}"] = (lambda s=s: rate(lambda b: s.run(None, {"images": b})[0], x, args.batch_size, sec))
        if "openvino" in names:
            import openvino as ov

            core = ov.Core()
            for prec in ("f32", "bf16"):
                net = core.read_model(str(path))
                net.reshape({net.inputs[0]: ov.PartialShape([args.batch_size, h, w, 3])})
                c = core.compile_model(net, "CPU", {"INFERENCE_PRECISION_HINT": prec, "PERFORMANCE_HINT": "LATENCY"})
                req = c.create_infer_request()
                def fn(b: np.ndarray, req: Any = req) -> np.ndarray:
                    return next(iter(req.infer({0: b}).values())).copy()
                runs[f"openvino {prec}"] = (lambda fn=fn: rate(fn, x, args.batch_size, sec))
                notes[f"openvino {prec}"] = f"rel. error vs TF {engines.relative_error(fn(x[:args.batch_size]), ref):.1e}"
        runs["tf"] = lambda: rate(plain, x, args.batch_size, sec)
        res = interleaved(runs, rounds)
        table("runtimes on the same exported ONNX graph (model only)", res, "tf", notes)
        out["runtimes"] = res
    # float16 storage
    feats = np.concatenate([plain(x[i:i + args.batch_size]) for i in range(0, len(x) - args.batch_size + 1, args.batch_size)])
    f16 = feats.astype(np.float16).astype(np.float32)
    import h5py

    sizes = {}
    for dt in ("float32", "float16"):
        p = work / f"feat-{dt}.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset("features", data=feats.astype(dt), chunks=(min(len(feats), 1024), feats.shape[1]))
        sizes[dt] = p.stat().st_size
    err_abs = float(np.max(np.abs(f16 - feats)))
    err_rel = err_abs / float(np.max(np.abs(feats)))
    row_rel = float(np.max(np.abs(f16 - feats).max(axis=1) / np.maximum(np.abs(feats).max(axis=1), 1e-30)))
    md += ["", "### float16 storage of features", "", "| dtype | bytes/image | HDF5 file (N images) | max abs error | max abs error / max abs |",
           "|---|---:|---:|---:|---:|",
           f"| float32 | {feats.shape[1] * 4} | {sizes['float32']:,} ({len(feats)}) | 0 | 0 |",
           f"| float16 | {feats.shape[1] * 2} | {sizes['float16']:,} ({len(feats)}) | {err_abs:.2e} | {err_rel:.2e} (worst row {row_rel:.2e}) |"]
    print("\n".join(md[-6:]), flush=True)
    out["float16"] = {"abs": err_abs, "rel": err_rel, "sizes": sizes, "max": float(np.abs(feats).max())}
    # input pipeline: decode only, and decode+infer, tf.data vs a thread pool
    out["pipeline"] = pipeline_explore(files, model, pre, args, md, work, best_onnx)
    # TF threads and oneDNN, in fresh processes (both are fixed at TF start-up)
    configs = {"TF default threads": ({}, []), "intra 2, inter 1": ({}, ["--intra", "2", "--inter", "1"]),
               "intra 1, inter 1": ({}, ["--intra", "1", "--inter", "1"]), "intra 2, inter 2": ({}, ["--intra", "2", "--inter", "2"]),
               "intra 4, inter 1 (oversubscribed)": ({}, ["--intra", "4", "--inter", "1"]),
               "TF_ENABLE_ONEDNN_OPTS=0": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, []),
               "TF_ENABLE_ONEDNN_OPTS=1": ({"TF_ENABLE_ONEDNN_OPTS": "1"}, [])}
    got: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(2):
        for k, (env, extra) in configs.items():
            res_, _, _ = spawn_rss(["--child", "modelonly", "--backbone", args.backbone, "--batch-size", str(args.batch_size),
                                    "--seconds", str(sec), *extra], env)
            got[k].append(res_["rate"])
    res = {k: statistics.median(v) for k, v in got.items()}
    table("TF threads and oneDNN (model only, fresh process each, 2 alternating rounds)", res, "TF default threads")
    out["threads"] = res
    text = "\n".join(md)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return out


def pipeline_explore(files: list[Path], model: Any, pre: Any, args: argparse.Namespace, md: list[str], work: Path,
                     engine: str) -> dict[str, float]:
    """Decode throughput of each of ``PIPELINES``, alone and feeding the engine, against the engine alone."""

    from featurize import engines

    paths = [str(p) for p in files]
    size, bs = (224, 224), args.batch_size
    fwd, used = engines.make_engine(model, pre, bs, engine, work / "engines", model_key(model), say)

    def via(kind: str, infer: bool) -> float:
        t0 = time.perf_counter()
        for imgs, _ in PIPELINES[kind][1](paths, size, "stretch", bs):
            if infer:
                fwd(imgs)
        return len(paths) / (time.perf_counter() - t0)

    via("tf.data", False)  # warm the page cache and tf.data
    runs = {f"decode only: {k}": (lambda k=k: via(k, False)) for k in PIPELINES}
    runs.update({f"decode + infer ({used}): {k}": (lambda k=k: via(k, True)) for k in PIPELINES})
    xs = load_images(files[:args.model_images], size)
    runs[f"infer only ({used}), preloaded"] = lambda: rate(fwd, xs, bs, args.model_seconds)
    res = interleaved(runs, 3)
    md += ["", "### input pipeline", "", "| path | images/s | ratio to infer only |", "|---|---:|---:|"]
    ref = res[f"infer only ({used}), preloaded"]
    for k, v in res.items():
        md.append(f"| {k} | {v:.1f} | {v / ref:.2f} |")
    print("\n".join(md[-(len(res) + 4):]), flush=True)
    return res


# ------------------------------------------------------------------------------------------------ cli


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.featurize", description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--n", type=int, default=None, help="images for the featurize rows (default 1000; --quick 200)")
    p.add_argument("--quick", action="store_true", help="small sizes: under 2 minutes for mobilenetv2")
    p.add_argument("--engine", default=ENGINE_DEFAULT, help="comma list of engines to compare (installed ones are kept; --quick: tf,auto)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", default=None, help="WxH (default 224x224)")
    p.add_argument("--naive", type=int, default=None, help="images for the naive loop (default 30; --quick 10)")
    p.add_argument("--model-images", type=int, default=128, help="preloaded images for the model-only rows")
    p.add_argument("--model-seconds", type=float, default=None, help="seconds per model-only measurement (default 4; --quick 2)")
    p.add_argument("--rss-sizes", default=None, help="dataset sizes for the peak-RSS rows, e.g. 1000,5000 (0 = skip; "
                                                      "default 1000,5120 for mobilenetv2, 200,600 with --quick, skipped for others)")
    p.add_argument("--no-heads", action="store_true", help="skip the classify head timings")
    p.add_argument("--explore", action="store_true", help="compare the knobs (threads, batch, XLA, oneDNN, input size, runtimes, float16, input pipeline)")
    p.add_argument("--out", default=None, help="also write the markdown here")
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    # child processes
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--artifacts", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", default="none", help=argparse.SUPPRESS)
    p.add_argument("--engine-cache", default=None, help=argparse.SUPPRESS)
    p.add_argument("--intra", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--inter", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=4.0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.n = a.n or (200 if a.quick else (256 if a.explore else 1000))
    if a.quick and a.engine == ENGINE_DEFAULT:
        a.engine = "tf,auto"
    a.naive = a.naive or (10 if a.quick else 30)
    a.model_seconds = a.model_seconds or (2.0 if a.quick else 4.0)
    if a.quick:
        a.model_images = min(a.model_images, 64)
    if a.rss_sizes is None:
        a.rss_sizes = ("200,600" if a.quick else "1000,5120") if a.backbone == "mobilenetv2" else "0"
    return a


def main(argv: list[str] | None = None) -> None:
    setup_env()
    args = parse(argv)
    if args.child:
        child_main(args)
        return
    from featurize.tfquiet import import_tensorflow

    if args.explore:
        import_tensorflow()
    res = explore(args) if args.explore else main_run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    if args.out and not args.explore:
        Path(args.out).write_text(report(res) + "\n")


if __name__ == "__main__":
    main()
