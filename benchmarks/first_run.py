"""First-ever and steady-state featurize against a tight TF pipeline, each in a fresh process (issue 22).

    python -m benchmarks.first_run --n 800 --rounds 2 [--before ../wt-before] [--out docs/first_run.md]

Per round, on ``n`` real slices never seen by that round's artifacts folder:

- **tight TF**: ``import tensorflow``, the Keras MobileNetV2 (ImageNet, pooled), ``tf.data`` (read, decode, resize
  in parallel, batch, prefetch) into one ``tf.function`` forward, features saved with ``np.save``;
- **first-ever**: ``featurize_layers`` into an empty artifacts folder (TF build, export, check, card, loop, write);
- **steady**: the same folder again on ``n`` other slices (model card, no TF).

Wall time is measured by the parent from spawn to exit, so interpreter start-up counts for every contender. The
rounds alternate the order; ``--before DIR`` adds the same two alzmri runs with the code of another checkout, side
by side in the same rounds. Each alzmri child reports ``FeaturizeResult.phases`` (``featurize.timing``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.featurize import data_root, fmt, image_files, machine, say, setup_env

REPO = Path(__file__).resolve().parents[1]

TIGHT = r"""
import json, sys, time
t = time.perf_counter(); ph = {}
import numpy as np
import tensorflow as tf
tf.config.list_physical_devices()
ph["import"] = time.perf_counter() - t; t = time.perf_counter()
m = tf.keras.applications.MobileNetV2(include_top=False, weights=sys.argv[2], input_shape=(224, 224, 3), pooling="avg")
pre = tf.keras.applications.mobilenet_v2.preprocess_input
ph["build"] = time.perf_counter() - t; t = time.perf_counter()

@tf.function(input_signature=[tf.TensorSpec((None, 224, 224, 3), tf.float32)])
def forward(x):
    return m(pre(x), training=False)

def load(path):
    img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return tf.image.resize(img, (224, 224))

paths = [ln for ln in open(sys.argv[1]).read().splitlines() if ln]
ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(32)
feats = [forward(b).numpy() for b in ds.prefetch(tf.data.AUTOTUNE)]
ph["loop"] = time.perf_counter() - t; t = time.perf_counter()
np.save(sys.argv[3], np.concatenate(feats))
ph["write"] = time.perf_counter() - t
print(json.dumps({"n": int(sum(len(f) for f in feats)), "phases": ph, "tf": True}))
"""

ALZMRI = r"""
import json, sys
from featurize.run import featurize_layers
res = featurize_layers(sys.argv[1], backbone="mobilenetv2", weights=sys.argv[3], artifacts=sys.argv[2], progress=False,
                       engine=sys.argv[4])[0]
print(json.dumps({"n": res.n_computed, "engine": res.settings.get("engine", "-"), "phases": getattr(res, "phases", {}),
                  "tf": "tensorflow" in sys.modules}))
"""


def spawn(code: str, args: list[str], tree: Path) -> tuple[dict[str, Any], float]:
    """Run ``python -c code args`` with ``tree`` as the code (cwd and PYTHONPATH); (its JSON line, wall s)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=str(tree), env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def draw_sets(root: Path, n: int, count: int, work: Path) -> list[Path]:
    """``count`` disjoint Kaggle-layout trees of ``n`` images each (symlinks), a fixed random draw."""
    files = image_files(root)
    if n * count > len(files):
        raise SystemExit(f"{root}: {len(files)} images, {n * count} needed; lower --n or --rounds")
    order = np.random.default_rng(22).permutation(len(files))
    out = []
    for k in range(count):
        dest = work / f"set{k}"
        for i in sorted(order[k * n:(k + 1) * n]):
            rel = files[i].relative_to(root)
            (dest / rel.parent).mkdir(parents=True, exist_ok=True)
            (dest / rel).symlink_to(files[i])
        out.append(dest)
    return out


def warm_page_cache(root: Path) -> None:
    """Read every image once, so no contender pays for the first disk read."""
    for p in image_files(root):
        p.read_bytes()


Runs = list[tuple[str, dict[str, Any], float]]


def tight_run(listing: Path, weights: str, out: Path) -> Runs:
    """The tight TF pipeline on the files listed in ``listing``."""
    return [("tight TF", *spawn(TIGHT, [str(listing), weights, str(out)], REPO))]


def alzmri_runs(name: str, tree: Path, first_set: Path, steady_set: Path, art: Path, weights: str, engine: str) -> Runs:
    """alzmri (the code in ``tree``): a first-ever run into the empty ``art``, then a steady one on other images."""
    first = spawn(ALZMRI, [str(first_set), str(art), weights, engine], tree)
    steady = spawn(ALZMRI, [str(steady_set), str(art), weights, engine], tree)
    return [(f"first-ever ({name})", *first), (f"steady ({name})", *steady)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    setup_env()
    root, source = data_root(args.n * 2 * args.rounds)
    work = Path(tempfile.mkdtemp(prefix="alzmri-first-"))
    sets = draw_sets(root, args.n, 2 * args.rounds, work)
    warm_page_cache(root)
    weights = "imagenet" if os.environ.get("KERAS_HOME") else "none"
    trees = {"after": REPO, **({"before": Path(args.before).resolve()} if args.before else {})}
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        a, b = sets[2 * r], sets[2 * r + 1]
        listing = work / f"files{r}.txt"
        listing.write_text("\n".join(str(p) for p in image_files(a)) + "\n")
        jobs: list[Any] = [partial(tight_run, listing, weights, work / f"tight{r}.npy")]
        jobs += [partial(alzmri_runs, name, tree, a, b, work / f"art-{name}-{r}", weights, args.engine)
                 for name, tree in trees.items()]
        if r % 2:
            jobs.reverse()
        for job in jobs:
            for label, res, wall in job():
                rows.append({"round": r, "what": label, "wall": wall, **res})
                say(f"round {r}: {label}: {wall:.1f} s, {res.get('n')} images, phases {res.get('phases')}")
    shutil.rmtree(work, ignore_errors=True)
    return {"machine": machine(), "source": source, "n": args.n, "rounds": args.rounds, "engine": args.engine,
            "weights": weights, "rows": rows}


def report(res: dict[str, Any]) -> str:
    """The markdown tables: wall per contender and its ratio to tight TF in the same round, and the phases."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in res["rows"]:
        by.setdefault(row["what"], []).append(row)
    tight = {row["round"]: row["wall"] for row in by["tight TF"]}
    lines = [f"Machine: {res['machine']}", f"Data: {res['source']}, {res['n']} new slices per run, MobileNetV2 "
             f"({res['weights']}) 224x224, alzmri engine `{res['engine']}`, {res['rounds']} rounds (order alternating)", "",
             "| run (fresh process) | wall s per round | / tight TF, per round | TF imported |", "|---|---|---|---|"]
    for what, rs in by.items():
        walls = " / ".join(fmt(x["wall"]) for x in rs)
        ratios = " / ".join(fmt(x["wall"] / tight[x["round"]], 2) for x in rs)
        lines.append(f"| {what} | {walls} | {ratios} | {'yes' if rs[0].get('tf') else 'no'} |")
    phases = list(dict.fromkeys(k for rs in by.values() for x in rs for k in x.get("phases", {})))
    lines += ["", "Phases (seconds, round 0; `other` = wall - phases: interpreter start-up, module imports, exit)", "",
              "| run | " + " | ".join(phases) + " | other |", "|---|" + "---:|" * (len(phases) + 1)]
    for what, rs in by.items():
        ph = rs[0].get("phases", {})
        other = rs[0]["wall"] - sum(ph.values())
        lines.append(f"| {what} | " + " | ".join(fmt(ph.get(k), 2) if k in ph else "" for k in phases) + f" | {fmt(other, 2)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.first_run", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=800, help="new slices per run (default 800)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--before", help="another checkout of alzmri, run side by side (e.g. the commit before a change)")
    ap.add_argument("--out", help="also write the markdown here")
    ap.add_argument("--json", help="also write the raw numbers here")
    args = ap.parse_args(argv)
    res = run(args)
    md = report(res)
    print(md)
    if args.out:
        Path(args.out).write_text(md + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
