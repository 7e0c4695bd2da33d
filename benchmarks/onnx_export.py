"""ONNX export on the real data: agreement with the bundle path, and ONNX predict speed next to featurize's.

    KERAS_HOME=../shared/keras_home python -m benchmarks.onnx_export --artifacts ART [--rounds 2] [--n 300]

ART must hold bundles trained on the shared Kaggle-layout slices (``alzmri featurize`` + ``alzmri classify``
there), with featurize's engines folder. For each bundle: export, then on the test split compare the ONNX
probabilities with the bundle path's (``predict.bundle_features`` + ``ModelBundle.predict_proba``, unrounded), the
slice decisions, and the subject decisions (mean of slice probabilities over the inferred subjects). Speed: the
featurize loop on each engine (a fresh cache of the test split each time) alternated with ONNX predict, side by
side in one run (read the ratios; the machine is shared). Not a test; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alzheimer-mri"


def agreement(bundle_file: Path, out: Path, files: list[str], subjects: np.ndarray) -> dict[str, float]:
    """Export ``bundle_file`` and compare the ONNX and bundle paths on ``files``."""
    from classify.bundle import load_bundle
    from classify.export import export_model
    from classify.onnx_predict import predict_files
    from classify.predict import bundle_features

    res = export_model(bundle_file, out)
    bundle = load_bundle(bundle_file)
    engines = bundle_file.resolve().parents[2] / "engines"
    X, _ = bundle_features(bundle.backbone, files, engines=engines)
    want = bundle.predict_proba(X)
    got, _, _ = predict_files(res.path, files)
    subj = list(dict.fromkeys(subjects))
    s_want = np.array([want[subjects == s].mean(axis=0).argmax() for s in subj])
    s_got = np.array([got[subjects == s].mean(axis=0).argmax() for s in subj])
    return {"max_abs_diff": float(np.abs(got - want).max()),
            "slice_decisions_equal": float((got.argmax(1) == want.argmax(1)).mean()),
            "subject_decisions_equal": float((s_got == s_want).mean()), "n_slices": len(files), "n_subjects": len(subj),
            "size_mb": res.path.stat().st_size / 1e6, "backbone_from": res.backbone_from}


def featurize_rate(data: Path, engines: Path, engine: str) -> float:
    """images/s of featurize's loop on ``engine``, into a fresh cache (the model from the card: no TF)."""
    from featurize.run import featurize_dataset

    with tempfile.TemporaryDirectory(prefix="alzmri-bench-") as tmp:
        shutil.copytree(engines, Path(tmp) / "engines")
        res = featurize_dataset(data, backbone="mobilenetv2", weights="imagenet", subjects="none", engine=engine,
                                artifacts=tmp, progress=False)
        used = res.settings.get("engine", engine)
        if used != engine:
            raise SystemExit(f"featurize ran on {used}, not {engine}")
        return float(res.images_per_s)


def onnx_rate(model: Path, files: list[str]) -> tuple[float, float]:
    """(slices/s of ONNX predict's loop, seconds to load and validate the file)."""
    from classify.onnx_predict import load_onnx, predict_files

    t0 = time.perf_counter()
    load_onnx(model)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    predict_files(model, files)
    return len(files) / (time.perf_counter() - t0 - load_s), load_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--engines", default="onnx,openvino")
    ap.add_argument("--n", type=int, default=10**9, help="test slices in the speed rounds (default: all)")
    ap.add_argument("--skip-agreement", action="store_true")
    args = ap.parse_args()
    from classify.predict import expand_inputs
    from featurize.subjects import infer_subjects, thumbnails

    art = Path(args.artifacts)
    bundles = sorted(art.glob("models/*/*.joblib"))
    test = SHARED_DATA / "test"
    files = expand_inputs([test])
    subjects = np.asarray(infer_subjects(thumbnails(files)).labels, dtype=object)
    out_dir = Path(tempfile.mkdtemp(prefix="alzmri-onnx-"))
    rows: dict[str, object] = {}
    for b in [] if args.skip_agreement else bundles:
        rows[b.name] = agreement(b, out_dir / f"{b.stem}.onnx", files, subjects)
        print(json.dumps({b.name: rows[b.name]}), flush=True)
    model = out_dir / f"{bundles[0].stem}.onnx"
    if not model.is_file():
        from classify.export import export_model

        export_model(bundles[0], model)
    speed: dict[str, list[float]] = {}
    chosen = files if args.n >= len(files) else sorted(np.random.default_rng(0).choice(files, args.n, replace=False))
    manifest = out_dir / "subset.csv"  # featurize a subset through a manifest (a fresh cache every time)
    manifest.write_text("path,label\n" + "".join(f"{f},{Path(f).parent.name}\n" for f in chosen))
    for r in range(args.rounds):
        steps = [*(f"featurize {e}" for e in args.engines.split(",")), "onnx predict (onnxruntime)"]
        for step in steps if r % 2 == 0 else steps[::-1]:  # alternate the order: the load drifts
            if step.startswith("featurize"):
                speed.setdefault(step, []).append(featurize_rate(manifest, art / "engines", step.split()[1]))
            else:
                rate, load_s = onnx_rate(model, chosen)
                speed.setdefault(step, []).append(rate)
                speed.setdefault("onnx load s", []).append(load_s)
        print(json.dumps(speed), flush=True)
    med = {k: float(np.median(v)) for k, v in speed.items()}
    ratios = {f"onnx predict / {k}": float(np.median(np.array(speed["onnx predict (onnxruntime)"]) / np.array(v)))
              for k, v in speed.items() if k.startswith("featurize")}
    print(json.dumps({"agreement": rows, "speed": speed, "median": med, "paired_ratio_median": ratios}, indent=1))


if __name__ == "__main__":
    main()
