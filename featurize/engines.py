"""Execution engines for the batched forward pass: TensorFlow, or the same network exported once to ONNX.

``make_engine`` returns a callable on uint8 batches ``[n, H, W, 3]`` -> float32 features ``[n, D]`` (preprocessing
included) and the name of the engine actually used:

- ``tf``: ``featurize.pipeline.make_forward`` (one ``tf.function`` trace, batches padded to ``batch_size``).
- ``onnx``: the Keras feature model plus its ``preprocess_input``, exported with tf2onnx (opset 17) to one
  ``.onnx`` file per ``key`` (cached in ``cache_dir``, written atomically) and run with onnxruntime (CPU EP,
  intra-op threads = usable cores, graph optimisation ALL).
- ``openvino``: the same ``.onnx`` file run with OpenVINO's CPU plugin, forced to float32 (OpenVINO would
  otherwise pick bfloat16 on CPUs with AMX/AVX512-BF16, ~5e-3 relative error).
- ``auto``: TF when a GPU is visible; else the fastest CPU runtime installed (OpenVINO, then onnxruntime),
  else TF.

Every ONNX model, freshly exported or loaded from the cache, is checked against the TF path on a few fixed
inputs (``max|a - b| / max|b| <= 1e-4``); a stale or broken cached file is re-exported once, and an export that
fails or disagrees falls back to TF with a one-line message through ``log``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from featurize.atomic import atomic_path
from featurize.naming import slug
from featurize.options import choose
from featurize.pipeline import cpu_threads
from featurize.timing import phase

Forward = Callable[[np.ndarray], np.ndarray]
Log = Callable[[str], None]

ENGINES = ("auto", "tf", "onnx", "openvino")
OPSET = 17
TOLERANCE = 1e-4
INPUT_NAME = "images"
# Light networks run faster in small sub-batches on the ONNX runtimes (their activations stay in cache):
# MobileNetV2 224x224 at 4 / 8 images per call vs 32: OpenVINO 1.25x / 1.23x, onnxruntime 1.40x / 1.27x; inside
# the featurize loop, 4 vs 8 gave OpenVINO +3-9%, onnxruntime +0-4%. ResNet50 (7.7 GFLOP) is 1.2x slower at 8,
# so heavier networks keep the caller's batch. Measured by benchmarks/featurize.py and docs/benchmarks.md.
SMALL_BATCH = 4
LIGHT_GFLOP = 2.0


def gpu_visible() -> bool:
    """True when TensorFlow sees a GPU (then TF stays the engine: the ONNX runtimes here are CPU-only)."""
    try:
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    except Exception:  # noqa: BLE001 - no usable TF means no GPU to prefer
        return False


def missing_packages(engine: str) -> list[str]:
    """The pip packages an engine lacks (empty when it can run)."""
    import importlib.util

    need = {"tf": [], "onnx": ["tf2onnx", "onnxruntime"], "openvino": ["tf2onnx", "openvino"]}[engine]
    return [p for p in need if importlib.util.find_spec(p) is None]


def cpu_runtime(engine: str) -> str | None:
    """The ONNX runtime that ``engine`` means on a CPU (``auto``: OpenVINO, else onnxruntime), if installed."""
    names = ("openvino", "onnx") if engine == "auto" else (engine,) if engine in ("onnx", "openvino") else ()
    return next((r for r in names if not missing_packages(r)), None)


def engine_key(backbone: str, weights_sha256: str, image_size: str, layers: str | list[str], pooling: str,
               preprocess: str = "") -> str:
    """The export cache key: (backbone, weights checksum, input size, layers, pooling, and the preprocessing when it
    is not the architecture's own: the export contains it), file-name safe."""
    if not isinstance(layers, str):
        layers = "+".join(layers)
    raw = f"{backbone}__{weights_sha256[:16]}__{image_size}__{layers or 'last'}__{pooling}"
    if preprocess:
        raw += f"__{preprocess}"
    return _safe(raw)


def _safe(key: str) -> str:
    key = slug(key, keep="._+-", strip="._", default="model")
    if len(key) > 180:  # long layer lists: keep the name short but unique
        import hashlib

        key = f"{key[:160]}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    return key


def onnx_path(cache_dir: str | os.PathLike[str], key: str) -> Path:
    """Where the export of ``key`` is cached."""
    return Path(cache_dir) / f"{_safe(key)}.opset{OPSET}.onnx"


def make_engine(model: Any, preprocess: Callable[[Any], Any], batch_size: int, engine: str = "auto",
                cache_dir: str | os.PathLike[str] | None = None, key: str = "", log: Log = lambda s: None,
                tolerance: float = TOLERANCE, threads: int | None = None,
                on_export: Callable[[], None] = lambda: None) -> tuple[Forward, str]:
    """The batched forward pass of ``model`` (after ``preprocess``) on the chosen engine, and the engine used.

    ``key`` names the export (see ``engine_key``); with ``cache_dir`` the ``.onnx`` file is kept there and reused
    by later runs. Any ONNX problem ends in the TF engine, with one line through ``log`` (none when ``auto``
    merely finds the optional packages absent). ``threads`` (ONNX runtimes only) defaults to the usable cores.
    ``on_export`` is called just before an export starts (only when one is needed).
    """
    from featurize.pipeline import make_forward

    engine = choose("engine", (engine or "auto").lower(), ENGINES)

    def tf_engine() -> tuple[Forward, str]:
        return make_forward(model, preprocess, batch_size), "tf"

    if engine == "tf" or (engine == "auto" and gpu_visible()):
        return tf_engine()
    runtime = cpu_runtime(engine)
    if runtime is None:
        if engine != "auto":  # auto merely finding the optional packages absent is not news
            log(f"engine {engine} unavailable (pip install {' '.join(missing_packages(engine))}); using tf")
        return tf_engine()
    engine = runtime
    try:
        return _onnx_engine(model, preprocess, batch_size, engine, cache_dir, key, log, tolerance,
                            threads or cpu_threads(), on_export), engine
    except _Fallback as exc:
        log(f"engine {engine}: {exc}; using tf")
    except Exception as exc:  # noqa: BLE001 - tf2onnx / runtimes raise many types; never let them stop featurize
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        log(f"engine {engine} failed ({type(exc).__name__}: {msg}); using tf")
    return tf_engine()


class _Fallback(Exception):
    """The ONNX path is not usable for this model; the message says why."""


def _onnx_engine(model: Any, preprocess: Callable[[Any], Any], batch_size: int, runtime: str,
                 cache_dir: str | os.PathLike[str] | None, key: str, log: Log, tolerance: float, threads: int,
                 on_export: Callable[[], None]) -> Forward:
    h, w = int(model.input_shape[1]), int(model.input_shape[2])
    batch_size = inner_batch(model, batch_size)
    inputs = check_inputs(h, w)
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="alzmri-onnx-")))
        else:
            folder = Path(cache_dir)
        path = onnx_path(folder, key or model.name)
        if path.is_file():
            try:
                with phase("compile"):
                    forward = load_runtime(path, runtime, batch_size, (h, w), threads)
                with phase("check"):
                    # TF's answer on the check inputs was stored when this file was verified: no TF call on a reuse
                    ref = _stored_reference(path)
                    if ref is None:
                        ref = reference_features(model, preprocess, inputs)
                    err = relative_error(forward(inputs), ref)
                if err <= tolerance:
                    return forward
                log(f"engine {runtime}: cached export {path.name} disagrees with TF (relative error {err:.1e}); re-exporting")
            except Exception as exc:  # noqa: BLE001 - any unreadable cached file is simply re-exported
                log(f"engine {runtime}: cached export {path.name} unreadable ({type(exc).__name__}); re-exporting")
        on_export()
        with phase("check"):
            ref = reference_features(model, preprocess, inputs)
        with phase("export"):
            export_onnx(model, preprocess, path)
        with phase("compile"):
            forward = load_runtime(path, runtime, batch_size, (h, w), threads)
        with phase("check"):
            err = relative_error(forward(inputs), ref)
        if err > tolerance:
            with contextlib.suppress(OSError):
                path.unlink()
            raise _Fallback(f"export disagrees with TF (relative error {err:.1e} > {tolerance:.0e})")
        if cache_dir is not None:
            with atomic_path(_reference_path(path)) as tmp, open(tmp, "wb") as f:
                np.save(f, ref)
        return forward


def _reference_path(onnx_file: Path) -> Path:
    return onnx_file.with_name(onnx_file.name + ".check.npy")


def _stored_reference(onnx_file: Path) -> np.ndarray | None:
    """TF's features on ``check_inputs``, saved beside a verified export; None when absent or unreadable."""
    try:
        ref = np.load(_reference_path(onnx_file), allow_pickle=False)
    except (OSError, ValueError):
        return None
    # a reference older than the export is not the one it was verified with
    if _reference_path(onnx_file).stat().st_mtime_ns < onnx_file.stat().st_mtime_ns:
        return None
    return ref


def load_verified(cache_dir: str | os.PathLike[str], key: str, runtime: str, batch_size: int, hw: tuple[int, int],
                  tolerance: float = TOLERANCE, threads: int | None = None) -> Forward | None:
    """The cached export ``key`` on ``runtime``, without TF: only when it still gives the TF answer stored when it
    was verified (else None, and the caller takes the TF path)."""
    path = onnx_path(cache_dir, key)
    ref = _stored_reference(path) if path.is_file() else None
    if ref is None:
        return None
    try:
        with phase("compile"):
            forward = load_runtime(path, runtime, batch_size, hw, threads)
        with phase("check"):
            ok = relative_error(forward(check_inputs(*hw)), ref) <= tolerance
    except Exception:  # noqa: BLE001 - any doubt means the normal, verified path
        return None
    return forward if ok else None


def model_macs(model: Any) -> float:
    """Multiply-accumulates per image of the conv and dense layers of a functional Keras model."""
    import keras

    macs = 0.0
    for layer in model._flatten_layers(include_self=False) if hasattr(model, "_flatten_layers") else model.layers:
        try:
            out, cin = layer.output.shape, int(layer.input.shape[-1])
        except (AttributeError, ValueError, TypeError):
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            macs += out[1] * out[2] * out[3] * kh * kw
        elif isinstance(layer, keras.layers.SeparableConv2D):
            kh, kw = layer.kernel_size
            macs += out[1] * out[2] * cin * (kh * kw + out[3])
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            macs += out[1] * out[2] * out[3] * kh * kw * cin / max(1, getattr(layer, "groups", 1) or 1)
        elif isinstance(layer, keras.layers.Dense):
            macs += cin * out[-1]
    return float(macs)


def is_light(model: Any) -> bool:
    """True for networks under ``LIGHT_GFLOP`` per image (they run faster on the ONNX runtimes in small batches)."""
    try:
        return 2 * model_macs(model) / 1e9 < LIGHT_GFLOP
    except Exception:  # noqa: BLE001 - an unusual model just keeps the caller's batch
        return False


def inner_batch(model: Any, batch_size: int) -> int:
    """Images per ONNX-runtime call: ``SMALL_BATCH`` for light networks, else ``batch_size``."""
    return min(batch_size, SMALL_BATCH) if is_light(model) else batch_size


def check_inputs(h: int, w: int, n: int = 4) -> np.ndarray:
    """Fixed uint8 test images: black, uniform noise, a smooth ramp, and a noisy ramp."""
    rng = np.random.default_rng(20240611)
    ramp = np.add.outer(np.linspace(0, 180, h), np.linspace(0, 75, w))[:, :, None].repeat(3, axis=2)
    imgs = [np.zeros((h, w, 3)), rng.integers(0, 256, (h, w, 3)), ramp, ramp + rng.normal(0, 25, (h, w, 3))]
    out = np.stack([imgs[i % len(imgs)] for i in range(n)])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def reference_features(model: Any, preprocess: Callable[[Any], Any], images: np.ndarray) -> np.ndarray:
    """The TF features of ``images`` (eager: no trace to pay for a check)."""
    import tensorflow as tf

    out = model(preprocess(tf.cast(tf.constant(images), tf.float32)), training=False)
    return np.asarray(out, dtype=np.float32)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``max|a - b| / max|b|`` (absolute when ``b`` is all zeros; inf on a shape mismatch or NaN)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if not np.isfinite(diff):
        return float("inf")
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return diff / scale if scale > 0 else diff


# tf2onnx's graph passes kept on export. The transpose pass is the one that matters for speed (without it OpenVINO
# ran MobileNetV2 4x slower); onnxruntime and OpenVINO fuse and fold the rest themselves when they load the file.
# The other passes cost 2-3 s of a 7-8 s MobileNetV2 export for the same runtime speed and the same features
# (docs/benchmarks.md, "First-ever run").
LEAN_TF2ONNX_PASSES = ("optimize_transpose", "fold_constants", "remove_identity", "remove_back_to_back")


@contextlib.contextmanager
def lean_tf2onnx(passes: tuple[str, ...] = LEAN_TF2ONNX_PASSES) -> Iterator[None]:
    """Run tf2onnx with only ``passes`` of its graph optimizers (all of them if its private hook has moved)."""
    import tf2onnx.optimizer as opt

    full = getattr(opt, "_get_optimizers", None)
    if full is None:  # another tf2onnx layout: its full pass list is slower, never wrong
        yield
        return
    opt._get_optimizers = lambda: {k: v for k, v in full().items() if k in passes}
    try:
        yield
    finally:
        opt._get_optimizers = full


def export_onnx(model: Any, preprocess: Callable[[Any], Any], path: str | os.PathLike[str]) -> Path:
    """Export preprocessing + model (uint8 NHWC input named ``images``, any batch) to ``path``, atomically."""
    import tensorflow as tf
    import tf2onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = int(model.input_shape[1]), int(model.input_shape[2])
    spec = [tf.TensorSpec((None, h, w, 3), tf.uint8, name=INPUT_NAME)]

    @tf.function(input_signature=spec)
    def features(x: Any) -> Any:
        return model(preprocess(tf.cast(x, tf.float32)), training=False)

    level = logging.getLogger("tf2onnx").level
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    try:
        with atomic_path(path) as tmp, lean_tf2onnx():
            tf2onnx.convert.from_function(features, input_signature=spec, opset=OPSET, output_path=str(tmp))
    finally:
        logging.getLogger("tf2onnx").setLevel(level)
    return path


def load_runtime(path: str | os.PathLike[str], runtime: str, batch_size: int, hw: tuple[int, int],
                 threads: int | None = None) -> Forward:
    """A forward callable running the exported ``path`` with ``runtime`` (``onnx`` = onnxruntime, or ``openvino``).

    Any batch length is accepted; it is run in calls of at most ``batch_size`` images."""
    if runtime == "openvino":
        return _openvino(path, batch_size, hw, threads or cpu_threads())
    return _onnxruntime(path, batch_size, threads or cpu_threads())


def ort_session_options(threads: int | None = None) -> Any:
    """onnxruntime session options of every alzmri session: ``threads`` intra-op threads (default: the usable
    cores), sequential, all graph optimisations, quiet, no spinning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or cpu_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # No busy-waiting between ops: on a shared or small machine spinning threads steal the cores that the
    # decode threads and the other worker need (measured 1.25-1.34x faster under load, equal when idle).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _onnxruntime(path: str | os.PathLike[str], batch_size: int, threads: int) -> Forward:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), ort_session_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def one(batch: np.ndarray) -> np.ndarray:
        out = session.run(None, {name: np.ascontiguousarray(batch, dtype=np.uint8)})[0]
        return np.asarray(out, dtype=np.float32)

    def run(batch: np.ndarray) -> np.ndarray:
        if len(batch) <= batch_size:
            return one(batch)
        return np.concatenate([one(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)])

    return run


def _openvino(path: str | os.PathLike[str], batch_size: int, hw: tuple[int, int], threads: int) -> Forward:
    os.environ.setdefault("OPENVINO_TELEMETRY", "0")  # no usage reporting from a library call
    import openvino as ov

    h, w = hw
    core = ov.Core()
    net = core.read_model(str(path))
    net.reshape({net.inputs[0]: ov.PartialShape([batch_size, h, w, 3])})  # static shape: faster kernels
    compiled = core.compile_model(net, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": str(threads),
        "ENABLE_CPU_PINNING": False,  # pinned threads cannot dodge other processes on a shared machine
    })
    request = compiled.create_infer_request()

    def one(batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, h, w, 3), np.uint8)])
        out = request.infer({0: np.ascontiguousarray(batch, dtype=np.uint8)})
        return np.array(next(iter(out.values()))[:n], dtype=np.float32)

    def run(batch: np.ndarray) -> np.ndarray:
        if len(batch) <= batch_size:
            return one(batch)
        return np.concatenate([one(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)])

    return run
