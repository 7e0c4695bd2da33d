"""Cluster benchmark: ``featurize --cluster local:2`` vs in-process on the same engine, 1 worker vs 2, the per-task
overhead (chunk time fitted as a + b * n), the driver-worker round trip and the scheduler's task rate.

    KERAS_HOME=/work/shared/keras_home python -m benchmarks.cluster --n 1000          # about 5 min on 2 busy cores
    python -m benchmarks.cluster --n 200 --rounds 1 --weights none                    # quick

Everything compared is measured in one run, side by side, rounds alternating the order, because the machine is
shared and absolute timings drift: read the ratios. Not a test; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.featurize import SHARED_DATA, say, setup_env


def manifest(n: int, out: Path) -> Path:
    """A CSV of the first ``n`` real slices (every class, train then test), absolute paths."""
    import pandas as pd

    rows = []
    for split in ("train", "test"):
        for cls in sorted(p.name for p in (SHARED_DATA / split).iterdir() if p.is_dir()):
            for f in sorted((SHARED_DATA / split / cls).glob("*.jpg")):
                rows.append({"path": str(f), "label": cls, "split": split})
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(rows), size=min(n, len(rows)), replace=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([rows[i] for i in pick]).to_csv(out, index=False)
    return out


def run_once(data: Path, engines: Path, work: Path, cluster: str | None, kw: dict[str, Any]) -> dict[str, float]:
    """One featurize of every image into a fresh artifacts folder that shares the engines folder."""
    from featurize.run import featurize_dataset

    art = Path(tempfile.mkdtemp(dir=work))
    (art / "engines").symlink_to(engines)
    t0 = time.perf_counter()
    res = featurize_dataset(data, artifacts=art, cluster=cluster, **kw)
    wall = time.perf_counter() - t0
    shutil.rmtree(art)
    out = {"rate": res.images_per_s, "wall": wall, "n": res.n_computed, "engine": res.settings.get("engine", "")}
    if cluster:
        from featurize.distributed import LAST_RUN

        out.update(LAST_RUN)
    return out


def chunk_fit(client: Any, data: Path, engines: Path, kw: dict[str, Any], sizes: list[int], reps: int) -> dict[str, float]:
    """Time chunks of each size on the workers (worker-side seconds and driver-side wall) and fit a + b * n."""
    from distributed import wait

    from featurize import distributed as fdist
    from featurize.dataset import scan
    from featurize.extractor import ModelSpec, from_card
    from featurize.run import feature_spec
    from featurize.weights_catalog import resolve

    choice = resolve(kw["weights"], kw["backbone"], artifacts=engines.parent)
    st = feature_spec(choice, None, "avg", "stretch", "last").to_attrs()
    spec = ModelSpec(choice.backbone, choice.load, st, ["last"], [st["layers"]], 0, kw["engine"], kw["batch_size"],
                     engines.parent, "float32", "auto")
    got = from_card(spec)
    assert got is not None, "no model card: run the in-process warm-up first"
    client.register_plugin(fdist.ExtractorPlugin(spec, got.sha, 1), name="bench")
    paths = scan(data, hash_files=False).table["abspath"].tolist()
    size = (int(st["image_size"].split("x")[0]), int(st["image_size"].split("x")[1]))
    one = client.submit(fdist.featurize_chunk, "bench", paths[:kw["batch_size"]], size, "stretch", kw["batch_size"], pure=False)
    one.result()  # open the model on a worker first
    obs: list[tuple[int, float, float]] = []
    for _ in range(reps):
        for n in sizes:
            t0 = time.perf_counter()
            # two at once, one per worker: the fit sees the time a chunk occupies a worker while the other is busy too
            futs = [client.submit(fdist.featurize_chunk, "bench", paths[i * n:(i + 1) * n], size, "stretch",
                                  kw["batch_size"], pure=False) for i in range(2)]
            wait(futs)
            wall = time.perf_counter() - t0
            for f in futs:
                obs.append((n, f.result()["seconds"], wall))
    client.unregister_worker_plugin("bench")
    n_ = np.array([o[0] for o in obs], float)
    b_w, a_w = np.polyfit(n_, [o[1] for o in obs], 1)
    b_d, a_d = np.polyfit(n_, [o[2] for o in obs], 1)
    return {"a_worker_ms": a_w * 1e3, "b_worker_ms": b_w * 1e3, "a_driver_ms": a_d * 1e3, "b_driver_ms": b_d * 1e3}


def _noop(i: int) -> int:
    return i


def scheduler_rate(client: Any, n: int) -> float:
    """Tasks per second the scheduler turns around (``n`` no-op tasks submitted at once)."""
    t0 = time.perf_counter()
    futs = client.map(_noop, range(n), pure=False)
    client.gather(futs)
    return n / (time.perf_counter() - t0)


def scan_rate(data: Path) -> float:
    """Files per second the driver scans (it hashes every file: the content key of the cache)."""
    from featurize.dataset import scan

    t0 = time.perf_counter()
    ds = scan(data)
    return len(ds.table) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="real slices")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (in-process, local:2, local:1), order alternating")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--json", default="", help="also write the numbers here")
    args = ap.parse_args()
    setup_env()
    from featurize.cluster import session
    from featurize.distributed import round_trip

    work = Path(tempfile.mkdtemp(prefix="alzmri-bench-cluster-"))
    data = manifest(args.n, work / "m" / "slices.csv")
    engines = work / "engines"
    engines.mkdir()
    kw = dict(backbone="mobilenetv2", weights=args.weights, subjects="none", progress=False, engine=args.engine,
              batch_size=32)
    say(f"warm-up: export, model card, file cache ({args.n} slices)")
    run_once(data, engines, work, None, kw)
    modes = ["in-process", "local:2", "local:1"]
    got: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            if mode == "in-process":
                res = run_once(data, engines, work, None, kw)
            else:
                t0 = time.perf_counter()
                with session(mode):
                    start = time.perf_counter() - t0
                    res = run_once(data, engines, work, mode, kw)
                res["startup"] = start
            got[mode].append(res)
            say(f"round {r + 1} {mode}: {res['rate']:.1f} img/s, steady {res.get('steady_images_per_s', res['rate']):.1f} "
                f"(featurize wall {res['wall']:.1f} s, engine {res['engine']}, chunks {res.get('chunks', '-')})")
    with session("local:2") as client:
        rt = round_trip(client, 20)
        sched = statistics.median(scheduler_rate(client, 2000) for _ in range(3))
        fit = chunk_fit(client, data, engines, kw, [32, 64, 128, 256], 2)
    scan = scan_rate(data)
    med = {m: statistics.median(x["rate"] for x in got[m]) for m in modes}
    steady = {m: statistics.median(x.get("steady_images_per_s", x["rate"]) for x in got[m]) for m in modes}
    medw = {m: statistics.median(x["wall"] for x in got[m]) for m in modes}
    out = {"cpu": platform.processor() or _cpu(), "cores": os.cpu_count(), "n": args.n, "engine": got["in-process"][0]["engine"],
           "runs": got, "median_rate": med, "median_wall": medw,
           "ratio_local2_vs_inprocess": med["local:2"] / med["in-process"],
           "ratio_local2_vs_local1": med["local:2"] / med["local:1"], "median_steady_rate": steady,
           "steady_ratio_local2_vs_inprocess": steady["local:2"] / med["in-process"],
           "steady_ratio_local2_vs_local1": steady["local:2"] / steady["local:1"],
           "round_trip_ms": rt * 1e3, "scheduler_tasks_per_s": sched, "chunk_fit": fit, "scan_files_per_s": scan,
           "loadavg": os.getloadavg()}
    print(json.dumps(out, indent=1, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    shutil.rmtree(work, ignore_errors=True)


def _cpu() -> str:
    with open("/proc/cpuinfo") as f:
        return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")


if __name__ == "__main__":
    main()
