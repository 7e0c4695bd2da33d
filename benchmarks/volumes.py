"""Benchmarks of featurize on 3-D scans (by hand, not CI); rows go to docs/benchmarks.md.

  python benchmarks/volumes.py rate [--scans 12] [--slices 32] [--engine tf] [--repeats 2]
      slices/s of the volume path against the 2-D path on the very same slices (written as PNG), same engine and
      backbone, runs alternated side by side; the target is a ratio >= 0.9.
  python benchmarks/volumes.py rss [--small 20] [--large 200]
      peak RSS of a featurize run over 20 and over 200 synthetic volumes, each in a fresh process; target <= 1.15x.
  python benchmarks/volumes.py mni [--out docs/volumes_mni_axial.png]
      a contact sheet of the axial slices featurize takes from the MNI152 template (nilearn), with default options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _write_scans(root: Path, n_scans: int, seed: int = 0) -> None:
    from featurize.synth_volumes import write_volume_dataset

    per_class = max(1, n_scans // 4)
    write_volume_dataset(root, fmt="nifti", subjects_per_class=per_class, seed=seed)


def rate(args: argparse.Namespace) -> None:
    """Volume path vs 2-D path slices/s, on the same slices, engine and backbone."""
    from PIL import Image

    from featurize.run import featurize_dataset
    from featurize.volume_dataset import scan_volumes
    from featurize.volume_featurize import VolumeOptions
    from featurize.volumes import load_scans

    tmp = Path(tempfile.mkdtemp(prefix="alzmri-volbench-"))
    vol_root, img_root = tmp / "scans", tmp / "slices"
    _write_scans(vol_root, args.scans)
    opts = VolumeOptions(n_slices=args.slices)
    vds = scan_volumes(vol_root)
    for p, label in zip(vds.table["abspath"], vds.table["label"]):  # the very slices the volume path cuts, as PNG
        (img_root / label).mkdir(parents=True, exist_ok=True)
        for view, i, arr in load_scans(p, views=opts.views, n_slices=opts.n_slices)[0].slices:
            Image.fromarray(arr).save(img_root / label / f"{Path(p).name}-{view}{i:03d}.png")
    common = dict(backbone=args.backbone, weights=args.weights, engine=args.engine, progress=False,
                  subjects="none", batch_size=args.batch_size)
    rates: dict[str, list[float]] = {"volumes": [], "images": []}
    n = {}
    for k in range(args.repeats):
        for kind, root in (("volumes", vol_root), ("images", img_root)):
            res = featurize_dataset(root, artifacts=tmp / f"art-{kind}-{k}", volumes=opts, **common)
            rates[kind].append(res.images_per_s)
            n[kind] = res.n_computed
    v, i = statistics.median(rates["volumes"]), statistics.median(rates["images"])
    pairs = [a / b for a, b in zip(rates["volumes"], rates["images"])]  # each pair ran back to back
    print(json.dumps({"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "load_avg": os.getloadavg(),
                      "backbone": args.backbone, "engine": args.engine, "slices": n, "volumes_per_s": rates["volumes"],
                      "images_per_s": rates["images"], "ratio_of_medians": round(v / i, 3),
                      "pair_ratios": [round(r, 3) for r in pairs], "median_pair_ratio": round(statistics.median(pairs), 3)},
                     indent=1))


def _rss_child(n_scans: int, slices: int) -> None:
    from featurize.run import featurize_dataset
    from featurize.volume_featurize import VolumeOptions

    tmp = Path(tempfile.mkdtemp(prefix="alzmri-volrss-"))
    _write_scans(tmp / "scans", n_scans, seed=n_scans)
    import tensorflow  # noqa: F401 - the baseline RSS includes TF, as every featurize run does

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = featurize_dataset(tmp / "scans", backbone="mobilenetv2", weights="none", image_size="64x64", engine="tf",
                            progress=False, artifacts=tmp / "art", volumes=VolumeOptions(n_slices=slices))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"scans": n_scans, "rows": res.n_images, "rss_before_mb": base / 1024, "peak_rss_mb": peak / 1024}))


def rss(args: argparse.Namespace) -> None:
    """Peak RSS at ``small`` and ``large`` volumes, each in a fresh process."""
    out = {}
    for n in (args.small, args.large):
        got = subprocess.run([sys.executable, __file__, "_rss", str(n), str(args.slices)], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        out[n] = json.loads(got.stdout.strip().splitlines()[-1])
    ratio = out[args.large]["peak_rss_mb"] / out[args.small]["peak_rss_mb"]
    growth = ((out[args.large]["peak_rss_mb"] - out[args.large]["rss_before_mb"])
              / max(1e-9, out[args.small]["peak_rss_mb"] - out[args.small]["rss_before_mb"]))
    print(json.dumps({"cpu": cpu_name(), "runs": out, "peak_ratio": round(ratio, 3),
                      "growth_above_start_ratio": round(growth, 3)}, indent=1))


def mni(args: argparse.Namespace) -> None:
    """Contact sheet of the default axial slices of the MNI152 template."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    from nilearn import datasets

    from featurize.atomic import atomic_path
    from featurize.volumes import DEFAULT_N_SLICES, load_scans

    img = datasets.load_mni152_template(resolution=1)
    tmp = Path(tempfile.mkdtemp(prefix="alzmri-mni-")) / "mni152.nii.gz"
    nib.save(nib.Nifti1Image(img.get_fdata().astype("float32"), img.affine), str(tmp))
    scan = load_scans(tmp, views=("axial",), n_slices=DEFAULT_N_SLICES)[0]
    cols = 8
    rows = -(-len(scan.slices) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (view, i, arr) in zip(axes.ravel(), scan.slices):
        ax.imshow(arr, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{view} {i}", fontsize=8)
    fig.suptitle(f"MNI152 1 mm: the {len(scan.slices)} axial slices featurize takes by default "
                 f"(shape {scan.shape}, RAS; anterior up)", fontsize=10)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".png") as p:
        fig.savefig(p, dpi=90)
    print(f"wrote {out}: slices {[i for _, i, _ in scan.slices]}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_rss":
        _rss_child(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rate")
    r.add_argument("--scans", type=int, default=12)
    r.add_argument("--slices", type=int, default=32)
    r.add_argument("--backbone", default="mobilenetv2")
    r.add_argument("--weights", default="none")
    r.add_argument("--engine", default="tf")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--repeats", type=int, default=2)
    m = sub.add_parser("rss")
    m.add_argument("--small", type=int, default=20)
    m.add_argument("--large", type=int, default=200)
    m.add_argument("--slices", type=int, default=8)
    s = sub.add_parser("mni")
    s.add_argument("--out", default=str(REPO / "docs" / "volumes_mni_axial.png"))
    args = ap.parse_args()
    {"rate": rate, "rss": rss, "mni": mni}[args.cmd](args)


if __name__ == "__main__":
    main()
