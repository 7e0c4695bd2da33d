"""int8 post-training quantization of a backbone export (ONNX Runtime static quantization): speed and subject-cv.

    python -m benchmarks.int8 --artifacts ART [--calibration 256] [--n 256] [--rounds 3] [--evaluate]

ART holds a float32 MobileNetV2 cache of the shared slices and its export in ``engines/`` (``alzmri featurize``).
The export is quantized (QDQ, per-channel int8 weights, uint8 activations) with calibration on ``--calibration``
training slices of the data itself, then both graphs run on the same ``--n`` test slices, alternating, model
only (decoded beforehand), in featurize's calls of 4 images. With ``--evaluate``: every slice is featurized in
int8 and logreg / svm are scored under subject-cv on both feature sets (same folds, same seed). Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alzheimer-mri"


def decode(files: list[str]) -> np.ndarray:
    from featurize.pipeline import image_batches

    return np.concatenate([b for b, _ in image_batches(files, (224, 224), "stretch", 32)])


def quantize(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([calib[i:i + 16] for i in range(0, len(calib), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.batches, None)
            return None if b is None else {"images": b}

    prep = out.with_name("prep.onnx")
    quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
    quantize_static(str(prep), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def rate(path: Path, images: np.ndarray) -> float:
    from featurize.engines import load_runtime

    forward = load_runtime(path, "onnx", 4, (224, 224))
    forward(images[:8])
    t0 = time.perf_counter()
    forward(images)
    return len(images) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--calibration", type=int, default=256)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--evaluate", action="store_true")
    args = ap.parse_args()
    import featurize
    from classify.predict import expand_inputs
    from featurize.engines import load_runtime

    art = Path(args.artifacts)
    (fp32,) = [p for p in (art / "engines").glob("mobilenetv2__*__224x224__last__avg.opset17.onnx")]
    rng = np.random.default_rng(0)
    train = expand_inputs([SHARED_DATA / "train"])
    test = expand_inputs([SHARED_DATA / "test"])
    calib = decode(list(rng.choice(train, args.calibration, replace=False)))
    tmp = Path(tempfile.mkdtemp(prefix="alzmri-int8-"))
    int8 = quantize(fp32, tmp / "int8.onnx", calib)
    images = decode(list(rng.choice(test, args.n, replace=False)))
    a = load_runtime(fp32, "onnx", 4, (224, 224))(images[:64])
    b = load_runtime(int8, "onnx", 4, (224, 224))(images[:64])
    cos = float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
    speed: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(0 if args.evaluate else args.rounds):
        speed["fp32"].append(rate(fp32, images))
        speed["int8"].append(rate(int8, images))
    out: dict[str, object] = {"speed": speed, "ratio_median": float(np.median(np.array(speed["int8"]) / np.array(speed["fp32"]))) if speed["fp32"] else None,
                              "feature_cosine": cos, "rel_error": float(np.abs(a - b).max() / np.abs(a).max()),
                              "size_mb": {"fp32": fp32.stat().st_size / 1e6, "int8": int8.stat().st_size / 1e6}}
    print(json.dumps(out), flush=True)
    if args.evaluate:
        from classify.evaluate import evaluate

        fs = featurize.load(next((art / "features").glob("*/mobilenetv2__imagenet__224x224__avg__stretch__last.h5")))
        root = Path(fs.meta.get("data_root") or SHARED_DATA)
        forward = load_runtime(int8, "onnx", 4, (224, 224))
        files = [str(p) if Path(p).is_absolute() else str(root / p) for p in fs.paths]
        X8 = np.concatenate([forward(decode(files[i:i + 256])) for i in range(0, len(files), 256)])
        q = dataclasses.replace(fs, X=X8)
        scores = {}
        for head in ("logreg", "svm"):
            for name, f in (("fp32", fs), ("int8", q)):
                r = evaluate(f, head, protocol="subject-cv")
                scores[f"{head} {name}"] = {k: round(float(r.metrics[k]), 4) for k in ("balanced_accuracy", "subject_balanced_accuracy")}
                print(json.dumps(scores), flush=True)
        out["subject_cv"] = scores
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
